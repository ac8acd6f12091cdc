//! How the PostgreSQL store holds a value: [`Columns`] for an sqlx row
//! (native `uuid`, `timestamptz`, `jsonb` and `boolean` columns), and JSON
//! for binding. Which columns make a user, a task or an event is in the
//! shared [`crate::store::rows`], re-exported here under this store's names.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use sqlx::Row;
use sqlx::postgres::PgRow;

use crate::error::Result;
use crate::store::corrupt;
use crate::store::query::{Arg, TaskColumns};
use crate::store::rows::{Columns, type_name};

pub(crate) use crate::store::rows::task as task_from;
pub(super) use crate::store::rows::{
    audit as audit_from, checkpoint as checkpoint_from, device as device_from, event as event_from,
    project as project_from, project_task as project_task_from, session as session_from,
    user as user_from,
};

/// What a task filter compares in `tasks`.
pub(super) const TASK_COLUMNS: TaskColumns = TaskColumns {
    user_id: "user_id = ?",
    session_id: "session_id = ?",
    state: "state = ?",
    agent_type: "agent_type = ?",
};

type Query<'q> = sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>;

/// Bind the values of a shared query, in order.
pub(super) fn bind(q: Query<'_>, args: Vec<Arg>) -> Query<'_> {
    args.into_iter().fold(q, |q, a| match a {
        Arg::Text(s) => q.bind(s),
        Arg::Int(n) => q.bind(n),
        Arg::Uuid(id) => q.bind(id),
        Arg::Time(t) => q.bind(t),
    })
}

pub(super) fn json<T: Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

impl Columns for PgRow {
    fn text(&self, col: &str) -> Result<String> {
        Ok(self.try_get(col)?)
    }

    fn opt_text(&self, col: &str) -> Result<Option<String>> {
        Ok(self.try_get(col)?)
    }

    fn int(&self, col: &str) -> Result<i64> {
        Ok(self.try_get(col)?)
    }

    fn opt_float(&self, col: &str) -> Result<Option<f64>> {
        Ok(self.try_get(col)?)
    }

    fn flag(&self, col: &str) -> Result<bool> {
        Ok(self.try_get(col)?)
    }

    fn uuid(&self, col: &str) -> Result<uuid::Uuid> {
        Ok(self.try_get(col)?)
    }

    fn opt_uuid(&self, col: &str) -> Result<Option<uuid::Uuid>> {
        Ok(self.try_get(col)?)
    }

    fn time(&self, col: &str) -> Result<chrono::DateTime<chrono::Utc>> {
        Ok(self.try_get(col)?)
    }

    fn json<T: DeserializeOwned>(&self, col: &str) -> Result<T> {
        let v: Value = self.try_get(col)?;
        serde_json::from_value(v).map_err(corrupt)
    }

    fn event_type(&self) -> Result<&'static str> {
        type_name(self.try_get::<&str, _>("event_type")?)
    }
}
