//! Task counts per state in the PostgreSQL store (the board's totals).

use async_trait::async_trait;
use sqlx::{Postgres, QueryBuilder};

use super::PostgresStore;
use crate::error::Result;
use crate::store::{TaskCounts, TaskFilter};
use crate::task::TaskState;

#[async_trait]
impl TaskCounts for PostgresStore {
    async fn count_tasks(&self, f: &TaskFilter) -> Result<Vec<(TaskState, i64)>> {
        let mut q = QueryBuilder::<Postgres>::new("SELECT state, COUNT(*) FROM tasks WHERE TRUE");
        if let Some(u) = &f.user_id {
            q.push(" AND user_id = ").push_bind(u.clone());
        }
        if let Some(s) = f.session_id {
            q.push(" AND session_id = ").push_bind(s);
        }
        if let Some(a) = &f.agent_type {
            q.push(" AND agent_type = ").push_bind(a.clone());
        }
        q.push(" GROUP BY state");
        let rows: Vec<(String, i64)> = q.build_query_as().fetch_all(&self.pool).await?;
        Ok(rows
            .into_iter()
            .filter_map(|(s, n)| s.parse().ok().map(|s| (s, n)))
            .collect())
    }
}
