//! Reading tasks and their events.

use uuid::Uuid;

use super::PostgresStore;
use super::rows::{TASK_COLUMNS, bind, event_from, task_from};
use crate::error::Result;
use crate::event::StoredEvent;
use crate::store::query::{self, Arg, Dialect, Filtered};
use crate::store::{Stats, TaskFilter};
use crate::task::Task;

impl PostgresStore {
    pub(super) async fn get_task(&self, task_id: Uuid) -> Result<Option<Task>> {
        sqlx::query("SELECT * FROM tasks WHERE task_id = $1")
            .bind(task_id)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(task_from)
            .transpose()
    }

    pub(super) async fn task_by_idempotency_key(
        &self,
        user_id: &str,
        key: &str,
    ) -> Result<Option<Task>> {
        sqlx::query("SELECT * FROM tasks WHERE user_id = $1 AND idempotency_key = $2")
            .bind(user_id)
            .bind(key)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(task_from)
            .transpose()
    }

    pub(super) async fn list_tasks(&self, f: &TaskFilter) -> Result<Vec<Task>> {
        let mut q = Filtered::new(Dialect::Postgres, "SELECT * FROM tasks");
        query::tasks(&mut q, &TASK_COLUMNS, f, true);
        if let Some((at, id)) = f.before {
            q.push(" AND (created_at, task_id) < (?", Some(Arg::Time(at)))
                .push(", ?)", Some(Arg::Uuid(id)));
        }
        q.push(
            " ORDER BY created_at DESC, task_id DESC LIMIT ?",
            Some(Arg::Int(f.limit)),
        );
        bind(sqlx::query(&q.sql), q.args)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(task_from)
            .collect()
    }

    pub(super) async fn unfinished_tasks(&self) -> Result<Vec<Task>> {
        sqlx::query(
            "SELECT * FROM tasks WHERE state NOT IN ('completed', 'failed', 'cancelled') ORDER BY created_at",
        )
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(task_from)
        .collect()
    }

    pub(super) async fn task_events(&self, task_id: Uuid) -> Result<Vec<StoredEvent>> {
        // Through its session's stream, between the bounds its row keeps
        // (migration 0007): a range of the primary key.
        sqlx::query(concat!(
            "SELECT e.* FROM tasks t JOIN events e ON ",
            events_of!("t"),
            " AND e.seq <= COALESCE(t.last_seq, 9223372036854775807) \
             WHERE t.task_id = $1 ORDER BY e.seq",
        ))
        .bind(task_id)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(event_from)
        .collect()
    }

    pub(super) async fn events_after(
        &self,
        session_id: Uuid,
        after_seq: i64,
        limit: i64,
    ) -> Result<Vec<StoredEvent>> {
        sqlx::query("SELECT * FROM events WHERE session_id = $1 AND seq > $2 ORDER BY seq LIMIT $3")
            .bind(session_id)
            .bind(after_seq)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(event_from)
            .collect()
    }

    pub(super) async fn stats(&self) -> Result<Stats> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT state, COUNT(*) FROM tasks GROUP BY state")
                .fetch_all(&self.pool)
                .await?;
        let active_sessions =
            sqlx::query_scalar("SELECT COUNT(*) FROM sessions WHERE state = 'active'")
                .fetch_one(&self.pool)
                .await?;
        Ok(Stats {
            tasks_by_state: query::by_state(rows),
            active_sessions,
        })
    }

    pub(super) async fn count_active_tasks(&self, user_id: &str) -> Result<i64> {
        Ok(sqlx::query_scalar(
            "SELECT COUNT(*) FROM tasks WHERE user_id = $1 AND state NOT IN ('completed', 'failed', 'cancelled')",
        )
        .bind(user_id)
        .fetch_one(&self.pool)
        .await?)
    }
}
