//! Task counts per state in the SQLite store (the board's totals).

use async_trait::async_trait;
use rusqlite::types::Value;

use super::SqliteStore;
use super::rows::all;
use crate::error::Result;
use crate::store::{TaskCounts, TaskFilter};
use crate::task::TaskState;

#[async_trait]
impl TaskCounts for SqliteStore {
    async fn count_tasks(&self, f: &TaskFilter) -> Result<Vec<(TaskState, i64)>> {
        let mut sql = String::from(
            "SELECT s.state, COUNT(*) FROM tasks t JOIN task_state s ON s.tid = t.tid WHERE 1 = 1",
        );
        let mut args: Vec<Value> = Vec::new();
        if let Some(u) = &f.user_id {
            sql.push_str(" AND t.user_id = ?");
            args.push(Value::Text(u.clone()));
        }
        if let Some(s) = f.session_id {
            sql.push_str(" AND t.sid = (SELECT sid FROM sessions WHERE session_id = ?)");
            args.push(Value::Text(s.to_string()));
        }
        if let Some(a) = &f.agent_type {
            sql.push_str(" AND t.agent_type = ?");
            args.push(Value::Text(a.clone()));
        }
        sql.push_str(" GROUP BY s.state");
        let rows = self
            .read(move |c| {
                all(c, &sql, rusqlite::params_from_iter(args), |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
                })
            })
            .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(s, n)| s.parse().ok().map(|s| (s, n)))
            .collect())
    }
}
