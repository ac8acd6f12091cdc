//! Task counts per state in the PostgreSQL store (the board's totals).

use async_trait::async_trait;
use sqlx::Row;

use super::PostgresStore;
use super::rows::{TASK_COLUMNS, bind};
use crate::error::Result;
use crate::store::query::{self, Dialect, Filtered};
use crate::store::{TaskCounts, TaskFilter};
use crate::task::TaskState;

#[async_trait]
impl TaskCounts for PostgresStore {
    async fn count_tasks(&self, f: &TaskFilter) -> Result<Vec<(TaskState, i64)>> {
        let mut q = Filtered::new(Dialect::Postgres, "SELECT state, COUNT(*) FROM tasks");
        query::tasks(&mut q, &TASK_COLUMNS, f, false);
        q.push(" GROUP BY state", None);
        let rows = bind(sqlx::query(&q.sql), q.args)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect::<Result<Vec<(String, i64)>>>()?;
        Ok(query::by_state(rows))
    }
}
