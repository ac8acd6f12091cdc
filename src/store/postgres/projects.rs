//! Phase 1's tables in the PostgreSQL store.
//!
//! The same semantics as the SQLite reference (`src/store/sqlite/projects.rs`):
//! a taken project key is a unique violation, hence `conflict`; a task's
//! number is its project's `task_count` bumped in the transaction that
//! inserts it, and the row lock that `UPDATE` takes makes writers on every
//! node take numbers one after another (`UNIQUE (project_id, number)` backs
//! that up); audit records commit with the change they describe; deleting a
//! project or a task cascades to what hangs off it.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::Postgres;
use sqlx::postgres::PgArguments;

use super::rows::{project_from, project_task_from as task_from};
use super::{PostgresStore, write_audit};
use crate::audit::NewAudit;
use crate::error::Result;
use crate::project::{Execution, Project, ProjectTask, WorkStatus};
use crate::store::ProjectStore;
use crate::task::TaskState;

/// Columns of a project task with its project's key.
const TASK_SELECT: &str = "SELECT t.*, p.key AS project_key FROM project_tasks t \
                           JOIN projects p ON p.id = t.project_id";

impl PostgresStore {
    async fn read_project_task(&self, id: i64) -> Result<Option<ProjectTask>> {
        sqlx::query(&format!("{TASK_SELECT} WHERE t.id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(task_from)
            .transpose()
    }

    /// Run one statement and its audit records in a transaction; whether it
    /// touched a row (audit is written only if it did).
    async fn change_one<'q>(
        &self,
        query: sqlx::query::Query<'q, Postgres, PgArguments>,
        audit: Vec<NewAudit>,
    ) -> Result<bool> {
        let mut tx = self.begin().await?;
        let done = query.execute(&mut *tx).await?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        self.commit_audited(tx, audit).await?;
        Ok(true)
    }
}

#[async_trait]
impl ProjectStore for PostgresStore {
    async fn create_project(&self, p: &Project, audit: Vec<NewAudit>) -> Result<Project> {
        let mut tx = self.begin().await?;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO projects (name, key, description, status, github_repo_url, telegram_chat_id, \
             created_at, updated_at) VALUES ($1,$2,$3,$4,$5,$6,$7,$8) RETURNING id",
        )
        .bind(&p.name)
        .bind(&p.key)
        .bind(&p.description)
        .bind(p.status.as_str())
        .bind(&p.github_repo_url)
        .bind(&p.telegram_chat_id)
        .bind(p.created_at)
        .bind(p.updated_at)
        .fetch_one(&mut *tx)
        .await?;
        let audit: Vec<NewAudit> = audit
            .into_iter()
            .map(|a| a.resource("project", id))
            .collect();
        self.commit_audited(tx, audit).await?;
        Ok(Project { id, ..p.clone() })
    }

    async fn get_project(&self, id: i64) -> Result<Option<Project>> {
        sqlx::query("SELECT * FROM projects WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(project_from)
            .transpose()
    }

    async fn list_projects(&self, skip: i64, limit: i64) -> Result<Vec<Project>> {
        sqlx::query("SELECT * FROM projects ORDER BY id LIMIT $1 OFFSET $2")
            .bind(limit)
            .bind(skip)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(project_from)
            .collect()
    }

    async fn update_project(&self, p: &Project, audit: Vec<NewAudit>) -> Result<bool> {
        let q = sqlx::query(
            "UPDATE projects SET name = $1, key = $2, description = $3, status = $4, \
             github_repo_url = $5, telegram_chat_id = $6, updated_at = $7 WHERE id = $8",
        )
        .bind(&p.name)
        .bind(&p.key)
        .bind(&p.description)
        .bind(p.status.as_str())
        .bind(&p.github_repo_url)
        .bind(&p.telegram_chat_id)
        .bind(p.updated_at)
        .bind(p.id);
        self.change_one(q, audit).await
    }

    async fn delete_project(&self, id: i64, audit: Vec<NewAudit>) -> Result<bool> {
        // ON DELETE CASCADE: the tasks and executions go with it.
        let q = sqlx::query("DELETE FROM projects WHERE id = $1").bind(id);
        self.change_one(q, audit).await
    }

    async fn create_project_task(
        &self,
        t: &ProjectTask,
        audit: Vec<NewAudit>,
    ) -> Result<Option<ProjectTask>> {
        let mut tx = self.begin().await?;
        // Locks the project row until commit: concurrent creators in the
        // same project, on any node, wait here and get the next number.
        let number: Option<i64> = sqlx::query_scalar(
            "UPDATE projects SET task_count = task_count + 1 WHERE id = $1 RETURNING task_count",
        )
        .bind(t.project_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(number) = number else {
            return Ok(None);
        };
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO project_tasks (project_id, number, title, description, status, priority, \
             assigned_agent_type, agent_execution_status, created_at, updated_at) \
             VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10) RETURNING id",
        )
        .bind(t.project_id)
        .bind(number)
        .bind(&t.title)
        .bind(&t.description)
        .bind(t.status.as_str())
        .bind(t.priority.as_str())
        .bind(&t.assigned_agent_type)
        .bind(&t.agent_execution_status)
        .bind(t.created_at)
        .bind(t.updated_at)
        .fetch_one(&mut *tx)
        .await?;
        let audit: Vec<NewAudit> = audit
            .into_iter()
            .map(|a| a.resource("project_task", id))
            .collect();
        let audit = write_audit(&mut tx, audit).await?;
        // Read back inside the transaction: a project deleted right after
        // the commit must not turn a created task into a `None`.
        let created = sqlx::query(&format!("{TASK_SELECT} WHERE t.id = $1"))
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
        let created = task_from(&created)?;
        tx.commit().await?;
        self.fanout.publish(&[], &audit);
        Ok(Some(created))
    }

    async fn get_project_task(&self, id: i64) -> Result<Option<ProjectTask>> {
        self.read_project_task(id).await
    }

    async fn list_project_tasks(
        &self,
        project_id: Option<i64>,
        skip: i64,
        limit: i64,
    ) -> Result<Vec<ProjectTask>> {
        sqlx::query(&format!(
            "{TASK_SELECT} WHERE ($1::BIGINT IS NULL OR t.project_id = $1) ORDER BY t.id LIMIT $2 OFFSET $3"
        ))
        .bind(project_id)
        .bind(limit)
        .bind(skip)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(task_from)
        .collect()
    }

    async fn update_project_task(&self, t: &ProjectTask, audit: Vec<NewAudit>) -> Result<bool> {
        let q = sqlx::query(
            "UPDATE project_tasks SET title = $1, description = $2, status = $3, priority = $4, \
             assigned_agent_type = $5, updated_at = $6 WHERE id = $7",
        )
        .bind(&t.title)
        .bind(&t.description)
        .bind(t.status.as_str())
        .bind(t.priority.as_str())
        .bind(&t.assigned_agent_type)
        .bind(t.updated_at)
        .bind(t.id);
        self.change_one(q, audit).await
    }

    async fn delete_project_task(&self, id: i64, audit: Vec<NewAudit>) -> Result<bool> {
        let q = sqlx::query("DELETE FROM project_tasks WHERE id = $1").bind(id);
        self.change_one(q, audit).await
    }

    async fn follow_project_task(
        &self,
        id: i64,
        status: WorkStatus,
        state: TaskState,
        at: DateTime<Utc>,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE project_tasks SET status = $1, agent_execution_status = $2, updated_at = $3 \
             WHERE id = $4",
        )
        .bind(status.as_str())
        .bind(state.as_str())
        .bind(at)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn create_execution(&self, e: &Execution) -> Result<i64> {
        Ok(sqlx::query_scalar(
            "INSERT INTO project_task_executions (task_id, engine_task_id, execution_uuid, user_id, \
             agent_type, prompt, started_at) VALUES ($1,$2,$3,$4,$5,$6,$7) RETURNING id",
        )
        .bind(e.task_id)
        .bind(e.engine_task_id)
        .bind(e.execution_uuid)
        .bind(&e.user_id)
        .bind(&e.agent_type)
        .bind(&e.prompt)
        .bind(e.started_at)
        .fetch_one(&self.pool)
        .await?)
    }
}
