//! Phase 1's tables in the SQLite store.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::Row;
use sqlx::sqlite::SqliteRow;

use super::{SqliteStore, time, write_audit};
use crate::audit::NewAudit;
use crate::error::Result;
use crate::event::rfc3339;
use crate::project::{Execution, Project, ProjectTask, WorkStatus};
use crate::store::{ProjectStore, corrupt};
use crate::task::TaskState;

/// Columns of a project task with its project's key.
const TASK_SELECT: &str = "SELECT t.*, p.key AS project_key FROM project_tasks t \
                           JOIN projects p ON p.id = t.project_id";

fn project_from(row: &SqliteRow) -> Result<Project> {
    let status: &str = row.try_get("status")?;
    Ok(Project {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        key: row.try_get("key")?,
        description: row.try_get("description")?,
        status: status.parse().map_err(corrupt)?,
        github_repo_url: row.try_get("github_repo_url")?,
        telegram_chat_id: row.try_get("telegram_chat_id")?,
        created_at: time(row.try_get("created_at")?)?,
        updated_at: time(row.try_get("updated_at")?)?,
    })
}

fn task_from(row: &SqliteRow) -> Result<ProjectTask> {
    let status: &str = row.try_get("status")?;
    let priority: &str = row.try_get("priority")?;
    Ok(ProjectTask {
        id: row.try_get("id")?,
        project_id: row.try_get("project_id")?,
        project_key: row.try_get("project_key")?,
        number: row.try_get("number")?,
        title: row.try_get("title")?,
        description: row.try_get("description")?,
        status: status.parse().map_err(corrupt)?,
        priority: priority.parse().map_err(corrupt)?,
        assigned_agent_type: row.try_get("assigned_agent_type")?,
        agent_execution_status: row.try_get("agent_execution_status")?,
        created_at: time(row.try_get("created_at")?)?,
        updated_at: time(row.try_get("updated_at")?)?,
    })
}

impl SqliteStore {
    async fn read_project_task(&self, id: i64) -> Result<Option<ProjectTask>> {
        sqlx::query(&format!("{TASK_SELECT} WHERE t.id = ?"))
            .bind(id)
            .fetch_optional(&self.reader)
            .await?
            .as_ref()
            .map(task_from)
            .transpose()
    }

    /// Run one statement and its audit records in a transaction; whether it
    /// touched a row (audit is written only if it did).
    async fn change_one<'q>(
        &self,
        query: sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>>,
        audit: Vec<NewAudit>,
    ) -> Result<bool> {
        let mut tx = self.writer.begin().await?;
        let done = query.execute(&mut *tx).await?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        let audit = write_audit(&mut tx, audit).await?;
        tx.commit().await?;
        self.publish(&[], &audit);
        Ok(true)
    }
}

#[async_trait]
impl ProjectStore for SqliteStore {
    async fn create_project(&self, p: &Project, audit: Vec<NewAudit>) -> Result<Project> {
        let mut tx = self.writer.begin().await?;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO projects (name, key, description, status, github_repo_url, telegram_chat_id, \
             created_at, updated_at) VALUES (?,?,?,?,?,?,?,?) RETURNING id",
        )
        .bind(&p.name)
        .bind(&p.key)
        .bind(&p.description)
        .bind(p.status.as_str())
        .bind(&p.github_repo_url)
        .bind(&p.telegram_chat_id)
        .bind(rfc3339(&p.created_at))
        .bind(rfc3339(&p.updated_at))
        .fetch_one(&mut *tx)
        .await?;
        let audit: Vec<NewAudit> = audit
            .into_iter()
            .map(|a| a.resource("project", id))
            .collect();
        let audit = write_audit(&mut tx, audit).await?;
        tx.commit().await?;
        self.publish(&[], &audit);
        Ok(Project { id, ..p.clone() })
    }

    async fn get_project(&self, id: i64) -> Result<Option<Project>> {
        sqlx::query("SELECT * FROM projects WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.reader)
            .await?
            .as_ref()
            .map(project_from)
            .transpose()
    }

    async fn list_projects(&self, skip: i64, limit: i64) -> Result<Vec<Project>> {
        sqlx::query("SELECT * FROM projects ORDER BY id LIMIT ? OFFSET ?")
            .bind(limit)
            .bind(skip)
            .fetch_all(&self.reader)
            .await?
            .iter()
            .map(project_from)
            .collect()
    }

    async fn update_project(&self, p: &Project, audit: Vec<NewAudit>) -> Result<bool> {
        let q = sqlx::query(
            "UPDATE projects SET name = ?, key = ?, description = ?, status = ?, github_repo_url = ?, \
             telegram_chat_id = ?, updated_at = ? WHERE id = ?",
        )
        .bind(&p.name)
        .bind(&p.key)
        .bind(&p.description)
        .bind(p.status.as_str())
        .bind(&p.github_repo_url)
        .bind(&p.telegram_chat_id)
        .bind(rfc3339(&p.updated_at))
        .bind(p.id);
        self.change_one(q, audit).await
    }

    async fn delete_project(&self, id: i64, audit: Vec<NewAudit>) -> Result<bool> {
        // Foreign keys are on: the tasks and executions go with it.
        let q = sqlx::query("DELETE FROM projects WHERE id = ?").bind(id);
        self.change_one(q, audit).await
    }

    async fn create_project_task(
        &self,
        t: &ProjectTask,
        audit: Vec<NewAudit>,
    ) -> Result<Option<ProjectTask>> {
        let mut tx = self.writer.begin().await?;
        let number: Option<i64> = sqlx::query_scalar(
            "UPDATE projects SET task_count = task_count + 1 WHERE id = ? RETURNING task_count",
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
             VALUES (?,?,?,?,?,?,?,?,?,?) RETURNING id",
        )
        .bind(t.project_id)
        .bind(number)
        .bind(&t.title)
        .bind(&t.description)
        .bind(t.status.as_str())
        .bind(t.priority.as_str())
        .bind(&t.assigned_agent_type)
        .bind(&t.agent_execution_status)
        .bind(rfc3339(&t.created_at))
        .bind(rfc3339(&t.updated_at))
        .fetch_one(&mut *tx)
        .await?;
        let audit: Vec<NewAudit> = audit
            .into_iter()
            .map(|a| a.resource("project_task", id))
            .collect();
        let audit = write_audit(&mut tx, audit).await?;
        tx.commit().await?;
        self.publish(&[], &audit);
        self.read_project_task(id).await
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
            "{TASK_SELECT} WHERE (?1 IS NULL OR t.project_id = ?1) ORDER BY t.id LIMIT ?2 OFFSET ?3"
        ))
        .bind(project_id)
        .bind(limit)
        .bind(skip)
        .fetch_all(&self.reader)
        .await?
        .iter()
        .map(task_from)
        .collect()
    }

    async fn update_project_task(&self, t: &ProjectTask, audit: Vec<NewAudit>) -> Result<bool> {
        let q = sqlx::query(
            "UPDATE project_tasks SET title = ?, description = ?, status = ?, priority = ?, \
             assigned_agent_type = ?, updated_at = ? WHERE id = ?",
        )
        .bind(&t.title)
        .bind(&t.description)
        .bind(t.status.as_str())
        .bind(t.priority.as_str())
        .bind(&t.assigned_agent_type)
        .bind(rfc3339(&t.updated_at))
        .bind(t.id);
        self.change_one(q, audit).await
    }

    async fn delete_project_task(&self, id: i64, audit: Vec<NewAudit>) -> Result<bool> {
        let q = sqlx::query("DELETE FROM project_tasks WHERE id = ?").bind(id);
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
            "UPDATE project_tasks SET status = ?, agent_execution_status = ?, updated_at = ? WHERE id = ?",
        )
        .bind(status.as_str())
        .bind(state.as_str())
        .bind(rfc3339(&at))
        .bind(id)
        .execute(&self.writer)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn create_execution(&self, e: &Execution) -> Result<i64> {
        Ok(sqlx::query_scalar(
            "INSERT INTO project_task_executions (task_id, engine_task_id, execution_uuid, user_id, \
             agent_type, prompt, started_at) VALUES (?,?,?,?,?,?,?) RETURNING id",
        )
        .bind(e.task_id)
        .bind(e.engine_task_id.to_string())
        .bind(e.execution_uuid.to_string())
        .bind(&e.user_id)
        .bind(&e.agent_type)
        .bind(&e.prompt)
        .bind(rfc3339(&e.started_at))
        .fetch_one(&self.writer)
        .await?)
    }
}
