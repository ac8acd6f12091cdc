//! Rows to values and back in the SQLite store: the SQL text of the common
//! selects, how this store holds a value ([`Columns`] for a rusqlite row:
//! ids and times as text, event times as microseconds, JSON as text), and
//! the encodings the writer uses. Which columns make a user, a task or an
//! event is in the shared [`crate::store::rows`].

use chrono::{DateTime, Utc};
use rusqlite::Row;
use rusqlite::types::ValueRef;
use serde::Serialize;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::audit::AuditRecord;
use crate::auth::User;
use crate::device::Device;
use crate::error::Result;
use crate::event::{EventBody, StoredEvent};
use crate::session::Session;
use crate::store::corrupt;
use crate::store::query::{Arg, TaskColumns};
use crate::store::rows::{self as shared, Columns};
use crate::task::Task;

pub(crate) use crate::store::rows::kind_name;

/// A task with its state and its session's id.
pub const TASK: &str = "SELECT t.task_id, t.execution_uuid, ss.session_id, t.user_id, t.agent_type, \
     t.prompt, t.context, t.params, s.state, s.result, s.error, t.metadata, t.idempotency_key, \
     t.created_at, s.updated_at, s.execution_time, t.tid \
     FROM tasks t JOIN task_state s ON s.tid = t.tid JOIN sessions ss ON ss.sid = t.sid";

/// A session with its newest seq.
pub const SESSION: &str = "SELECT s.session_id, s.user_id, s.device_id, s.created_at, \
     s.last_activity, s.permissions, s.state, s.is_default, \
     COALESCE((SELECT MAX(e.seq) FROM events e WHERE e.sid = s.sid), \
     (SELECT f.pruned_through FROM stream_floor f WHERE f.sid = s.sid), 0) AS last_seq \
     FROM sessions s";

/// What a task filter compares in [`TASK`] (and in counts over `tasks t`
/// joined to `task_state s`).
pub const TASK_COLUMNS: TaskColumns = TaskColumns {
    user_id: "t.user_id = ?",
    session_id: "t.sid = (SELECT sid FROM sessions WHERE session_id = ?)",
    state: "s.state = ?",
    agent_type: "t.agent_type = ?",
};

/// An event with its session's and task's ids.
pub const EVENT: &str = "SELECT ss.session_id, e.seq, t.task_id, e.at, e.kind, e.data \
     FROM events e JOIN tasks t ON t.tid = e.tid JOIN sessions ss ON ss.sid = e.sid";

/// The `kind` column of an event.
pub fn event_kind(body: &EventBody) -> i64 {
    match body {
        EventBody::State(_) => 0,
        EventBody::Output(_) => 1,
    }
}

pub fn to_json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".into())
}

/// The `data` object of an event, as stored.
pub fn event_data(body: &EventBody) -> String {
    match body {
        EventBody::State(s) => to_json(s),
        EventBody::Output(o) => to_json(o),
    }
}

pub fn from_json<T: DeserializeOwned>(text: &str) -> Result<T> {
    serde_json::from_str(text).map_err(corrupt)
}

pub fn time(text: &str) -> Result<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(corrupt)
}

pub fn micros(at: &DateTime<Utc>) -> i64 {
    at.timestamp_micros()
}

pub fn from_micros(us: i64) -> Result<DateTime<Utc>> {
    DateTime::from_timestamp_micros(us).ok_or_else(|| corrupt(format!("bad time {us}")))
}

pub fn uuid(text: &str) -> Result<Uuid> {
    Uuid::parse_str(text).map_err(corrupt)
}

/// Columns of `users`.
pub const USER: &str = "SELECT user_id, roles, grants, revokes, created_at FROM users";

macro_rules! audit_columns {
    () => {
        "event_id, event_type, timestamp, user_id, session_id, resource_type, resource_id, \
         action, status, details, seq, hash, prev_hash"
    };
}

/// Columns of `audit`, without the `SELECT`.
pub const AUDIT_COLUMNS: &str = audit_columns!();

/// Columns of `audit`.
pub const AUDIT: &str = concat!("SELECT ", audit_columns!(), " FROM audit");

/// Columns of `devices`.
pub const DEVICE: &str = "SELECT device_id, user_id, name, public_key, state, first_seen, \
     last_seen, decided_by FROM devices";

impl Columns for Row<'_> {
    fn text(&self, col: &str) -> Result<String> {
        Ok(self.get(col)?)
    }

    fn opt_text(&self, col: &str) -> Result<Option<String>> {
        Ok(self.get(col)?)
    }

    fn int(&self, col: &str) -> Result<i64> {
        Ok(self.get(col)?)
    }

    fn opt_float(&self, col: &str) -> Result<Option<f64>> {
        Ok(self.get(col)?)
    }

    fn flag(&self, col: &str) -> Result<bool> {
        Ok(self.get(col)?)
    }

    fn uuid(&self, col: &str) -> Result<Uuid> {
        uuid(self.get_ref(col)?.as_str().map_err(corrupt)?)
    }

    fn opt_uuid(&self, col: &str) -> Result<Option<Uuid>> {
        let text = self.get_ref(col)?.as_str_or_null().map_err(corrupt)?;
        text.map(uuid).transpose()
    }

    /// Times are RFC 3339 text, except event times: microseconds.
    fn time(&self, col: &str) -> Result<DateTime<Utc>> {
        match self.get_ref(col)? {
            ValueRef::Integer(us) => from_micros(us),
            ValueRef::Text(t) => time(std::str::from_utf8(t).map_err(corrupt)?),
            other => Err(corrupt(format!("{col} is not a time: {other:?}"))),
        }
    }

    fn json<T: DeserializeOwned>(&self, col: &str) -> Result<T> {
        from_json(self.get_ref(col)?.as_str().map_err(corrupt)?)
    }

    fn event_type(&self) -> Result<&'static str> {
        Ok(kind_name(self.get("kind")?))
    }
}

// The shared mappings, for a rusqlite row of any statement's lifetime.

pub fn user(row: &Row<'_>) -> Result<User> {
    shared::user(row)
}

pub fn session(row: &Row<'_>) -> Result<Session> {
    shared::session(row)
}

pub fn task(row: &Row<'_>) -> Result<Task> {
    shared::task(row)
}

pub fn event(row: &Row<'_>) -> Result<StoredEvent> {
    shared::event(row)
}

pub fn audit(row: &Row<'_>) -> Result<AuditRecord> {
    shared::audit(row)
}

pub fn device(row: &Row<'_>) -> Result<Device> {
    shared::device(row)
}

/// The values of a shared query as this store holds them.
pub fn values(args: Vec<Arg>) -> Vec<rusqlite::types::Value> {
    use rusqlite::types::Value;
    args.into_iter()
        .map(|a| match a {
            Arg::Text(s) => Value::Text(s),
            Arg::Int(n) => Value::Integer(n),
            Arg::Uuid(id) => Value::Text(id.to_string()),
            Arg::Time(t) => Value::Text(crate::event::rfc3339(&t)),
        })
        .collect()
}

/// Run `sql` with `params` and map every row.
pub fn all<T>(
    conn: &rusqlite::Connection,
    sql: &str,
    params: impl rusqlite::Params,
    map: impl Fn(&Row<'_>) -> Result<T>,
) -> Result<Vec<T>> {
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query(params)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(map(row)?);
    }
    Ok(out)
}

/// Run `sql` with `params` and map the first row, if any.
pub fn one<T>(
    conn: &rusqlite::Connection,
    sql: &str,
    params: impl rusqlite::Params,
    map: impl Fn(&Row<'_>) -> Result<T>,
) -> Result<Option<T>> {
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query(params)?;
    rows.next()?.map(map).transpose()
}
