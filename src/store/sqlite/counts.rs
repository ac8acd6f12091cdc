//! Task counts per state in the SQLite store (the board's totals).

use async_trait::async_trait;

use super::SqliteStore;
use super::rows::{TASK_COLUMNS, all, values};
use crate::error::Result;
use crate::store::query::{self, Dialect, Filtered};
use crate::store::{TaskCounts, TaskFilter};
use crate::task::TaskState;

#[async_trait]
impl TaskCounts for SqliteStore {
    async fn count_tasks(&self, f: &TaskFilter) -> Result<Vec<(TaskState, i64)>> {
        let mut q = Filtered::new(
            Dialect::Sqlite,
            "SELECT s.state, COUNT(*) FROM tasks t JOIN task_state s ON s.tid = t.tid",
        );
        query::tasks(&mut q, &TASK_COLUMNS, f, false);
        q.push(" GROUP BY s.state", None);
        let (sql, args) = (q.sql, values(q.args));
        let rows = self
            .read(move |c| {
                all(c, &sql, rusqlite::params_from_iter(args), |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
                })
            })
            .await?;
        Ok(query::by_state(rows))
    }
}
