//! Phase 1's tables in the SQLite store.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::types::Value;
use rusqlite::{OptionalExtension, Row, params};

use super::SqliteStore;
use super::rows::{all, one};
use crate::audit::NewAudit;
use crate::error::Result;
use crate::event::rfc3339;
use crate::project::{Execution, Project, ProjectTask, WorkStatus};
use crate::store::ProjectStore;
use crate::task::TaskState;

/// A project.
const PROJECT_SELECT: &str = "SELECT id, name, key, description, status, github_repo_url, \
     telegram_chat_id, created_at, updated_at FROM projects";

/// Columns of a project task with its project's key.
const TASK_SELECT: &str = "SELECT t.id, t.project_id, p.key AS project_key, t.number, t.title, t.description, \
     t.status, t.priority, t.assigned_agent_type, t.agent_execution_status, t.created_at, \
     t.updated_at FROM project_tasks t JOIN projects p ON p.id = t.project_id";

fn project_from(row: &Row<'_>) -> Result<Project> {
    crate::store::rows::project(row)
}

fn task_from(row: &Row<'_>) -> Result<ProjectTask> {
    crate::store::rows::project_task(row)
}

fn text(s: &str) -> Value {
    Value::Text(s.to_owned())
}

fn opt(s: &Option<String>) -> Value {
    s.as_deref().map_or(Value::Null, text)
}

impl SqliteStore {
    async fn read_project_task(&self, id: i64) -> Result<Option<ProjectTask>> {
        self.read(move |c| one(c, &format!("{TASK_SELECT} WHERE t.id = ?"), [id], task_from))
            .await
    }
}

#[async_trait]
impl ProjectStore for SqliteStore {
    async fn create_project(&self, p: &Project, audit: Vec<NewAudit>) -> Result<Project> {
        let project = p.clone();
        let id = self
            .write(move |w| {
                w.conn.execute(
                    "INSERT INTO projects (name, key, description, status, github_repo_url, \
                     telegram_chat_id, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?)",
                    params![
                        project.name,
                        project.key,
                        project.description,
                        project.status.as_str(),
                        project.github_repo_url,
                        project.telegram_chat_id,
                        rfc3339(&project.created_at),
                        rfc3339(&project.updated_at)
                    ],
                )?;
                let id = w.conn.last_insert_rowid();
                w.audit(
                    audit
                        .into_iter()
                        .map(|a| a.resource("project", id))
                        .collect(),
                )?;
                Ok(id)
            })
            .await?;
        Ok(Project { id, ..p.clone() })
    }

    async fn get_project(&self, id: i64) -> Result<Option<Project>> {
        self.read(move |c| {
            one(
                c,
                &format!("{PROJECT_SELECT} WHERE id = ?"),
                [id],
                project_from,
            )
        })
        .await
    }

    async fn list_projects(&self, skip: i64, limit: i64) -> Result<Vec<Project>> {
        let sql = format!("{PROJECT_SELECT} ORDER BY id LIMIT ? OFFSET ?");
        self.read(move |c| all(c, &sql, [limit, skip], project_from))
            .await
    }

    async fn update_project(&self, p: &Project, audit: Vec<NewAudit>) -> Result<bool> {
        let args = vec![
            text(&p.name),
            text(&p.key),
            opt(&p.description),
            text(p.status.as_str()),
            opt(&p.github_repo_url),
            opt(&p.telegram_chat_id),
            text(&rfc3339(&p.updated_at)),
            Value::Integer(p.id),
        ];
        self.change_one(
            "UPDATE projects SET name = ?, key = ?, description = ?, status = ?, github_repo_url = ?, \
             telegram_chat_id = ?, updated_at = ? WHERE id = ?",
            args,
            audit,
        )
        .await
    }

    async fn delete_project(&self, id: i64, audit: Vec<NewAudit>) -> Result<bool> {
        // Foreign keys are on: the tasks and executions go with it.
        self.change_one(
            "DELETE FROM projects WHERE id = ?",
            vec![Value::Integer(id)],
            audit,
        )
        .await
    }

    async fn create_project_task(
        &self,
        t: &ProjectTask,
        audit: Vec<NewAudit>,
    ) -> Result<Option<ProjectTask>> {
        let task = t.clone();
        let id = self
            .write(move |w| {
                let number: Option<i64> = w
                    .conn
                    .query_row(
                        "UPDATE projects SET task_count = task_count + 1 WHERE id = ? RETURNING task_count",
                        [task.project_id],
                        |r| r.get(0),
                    )
                    .optional()?;
                let Some(number) = number else {
                    return Ok(None);
                };
                w.conn.execute(
                    "INSERT INTO project_tasks (project_id, number, title, description, status, priority, \
                     assigned_agent_type, agent_execution_status, created_at, updated_at) \
                     VALUES (?,?,?,?,?,?,?,?,?,?)",
                    params![task.project_id, number, task.title, task.description, task.status.as_str(),
                            task.priority.as_str(), task.assigned_agent_type, task.agent_execution_status,
                            rfc3339(&task.created_at), rfc3339(&task.updated_at)],
                )?;
                let id = w.conn.last_insert_rowid();
                w.audit(audit.into_iter().map(|a| a.resource("project_task", id)).collect())?;
                Ok(Some(id))
            })
            .await?;
        match id {
            Some(id) => self.read_project_task(id).await,
            None => Ok(None),
        }
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
        let sql = format!(
            "{TASK_SELECT} WHERE (?1 IS NULL OR t.project_id = ?1) ORDER BY t.id LIMIT ?2 OFFSET ?3"
        );
        self.read(move |c| all(c, &sql, params![project_id, limit, skip], task_from))
            .await
    }

    async fn update_project_task(&self, t: &ProjectTask, audit: Vec<NewAudit>) -> Result<bool> {
        let args = vec![
            text(&t.title),
            opt(&t.description),
            text(t.status.as_str()),
            text(t.priority.as_str()),
            opt(&t.assigned_agent_type),
            text(&rfc3339(&t.updated_at)),
            Value::Integer(t.id),
        ];
        self.change_one(
            "UPDATE project_tasks SET title = ?, description = ?, status = ?, priority = ?, \
             assigned_agent_type = ?, updated_at = ? WHERE id = ?",
            args,
            audit,
        )
        .await
    }

    async fn delete_project_task(&self, id: i64, audit: Vec<NewAudit>) -> Result<bool> {
        self.change_one(
            "DELETE FROM project_tasks WHERE id = ?",
            vec![Value::Integer(id)],
            audit,
        )
        .await
    }

    async fn follow_project_task(
        &self,
        id: i64,
        status: WorkStatus,
        state: TaskState,
        at: DateTime<Utc>,
    ) -> Result<bool> {
        self.write(move |w| {
            let n = w.conn.execute(
                "UPDATE project_tasks SET status = ?, agent_execution_status = ?, updated_at = ? WHERE id = ?",
                params![status.as_str(), state.as_str(), rfc3339(&at), id],
            )?;
            Ok(n == 1)
        })
        .await
    }

    async fn create_execution(&self, e: &Execution) -> Result<i64> {
        let e = e.clone();
        self.write(move |w| {
            w.conn.execute(
                "INSERT INTO project_task_executions (task_id, engine_task_id, execution_uuid, user_id, \
                 agent_type, prompt, started_at) VALUES (?,?,?,?,?,?,?)",
                params![e.task_id, e.engine_task_id.to_string(), e.execution_uuid.to_string(),
                        e.user_id, e.agent_type, e.prompt, rfc3339(&e.started_at)],
            )?;
            Ok(w.conn.last_insert_rowid())
        })
        .await
    }
}
