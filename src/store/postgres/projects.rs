//! Phase 1 projects on PostgreSQL: not built yet.
//!
//! The Phase 1 API (`/api/projects`, `/api/tasks`) runs on the embedded
//! SQLite store (`src/store/sqlite/projects.rs` is the reference). A
//! PostgreSQL node answers those routes with `503 unavailable` and says so,
//! rather than pretending; the runtime, audit and device APIs are complete.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::audit::NewAudit;
use crate::error::{Error, Result};
use crate::project::{Execution, Project, ProjectTask, WorkStatus};
use crate::store::ProjectStore;
use crate::store::postgres::PostgresStore;
use crate::task::TaskState;

fn not_yet<T>() -> Result<T> {
    Err(Error::Unavailable(
        "the Phase 1 project API is not available on PostgreSQL yet; use a SQLite node for it"
            .into(),
    ))
}

#[async_trait]
impl ProjectStore for PostgresStore {
    async fn create_project(&self, _: &Project, _: Vec<NewAudit>) -> Result<Project> {
        not_yet()
    }
    async fn get_project(&self, _: i64) -> Result<Option<Project>> {
        not_yet()
    }
    async fn list_projects(&self, _: i64, _: i64) -> Result<Vec<Project>> {
        not_yet()
    }
    async fn update_project(&self, _: &Project, _: Vec<NewAudit>) -> Result<bool> {
        not_yet()
    }
    async fn delete_project(&self, _: i64, _: Vec<NewAudit>) -> Result<bool> {
        not_yet()
    }
    async fn create_project_task(
        &self,
        _: &ProjectTask,
        _: Vec<NewAudit>,
    ) -> Result<Option<ProjectTask>> {
        not_yet()
    }
    async fn get_project_task(&self, _: i64) -> Result<Option<ProjectTask>> {
        not_yet()
    }
    async fn list_project_tasks(&self, _: Option<i64>, _: i64, _: i64) -> Result<Vec<ProjectTask>> {
        not_yet()
    }
    async fn update_project_task(&self, _: &ProjectTask, _: Vec<NewAudit>) -> Result<bool> {
        not_yet()
    }
    async fn delete_project_task(&self, _: i64, _: Vec<NewAudit>) -> Result<bool> {
        not_yet()
    }
    async fn follow_project_task(
        &self,
        _: i64,
        _: WorkStatus,
        _: TaskState,
        _: DateTime<Utc>,
    ) -> Result<bool> {
        not_yet()
    }
    async fn create_execution(&self, _: &Execution) -> Result<i64> {
        not_yet()
    }
}
