//! Phase 1 wire types: `/api/projects`, `/api/tasks`, `/api/agents`, in the
//! original FastAPI service's shapes (extended, never renamed).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};
use uuid::Uuid;

use crate::project::{Execution, Project, ProjectTask, parse_github_repo};
pub use crate::project::{Priority, ProjectStatus, WorkStatus};
use crate::protocol::{micros, micros_opt};
use crate::task::{Task, TaskState};

/// A field that distinguishes "absent" (`None`) from "set to null"
/// (`Some(None)`), for PATCH bodies.
fn nullable<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// `POST /api/projects` body.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema, schemars::JsonSchema)]
pub struct ProjectCreate {
    /// 1 to 255 characters.
    #[schema(min_length = 1, max_length = 255)]
    #[schemars(length(min = 1, max = 255))]
    pub name: String,
    /// 1 to 50 characters, unique among projects.
    #[schema(min_length = 1, max_length = 50)]
    #[schemars(length(min = 1, max = 50))]
    pub key: String,
    #[serde(default)]
    pub description: Option<String>,
    /// Default `active`.
    #[serde(default)]
    pub status: ProjectStatus,
    #[serde(default)]
    pub github_repo_url: Option<String>,
    #[serde(default)]
    pub telegram_chat_id: Option<String>,
}

/// `PATCH /api/projects/{id}` body: only the fields present change; `null`
/// clears an optional field.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema, schemars::JsonSchema)]
pub struct ProjectUpdate {
    #[schema(min_length = 1, max_length = 255)]
    #[schemars(length(min = 1, max = 255))]
    #[serde(default)]
    pub name: Option<String>,
    #[schema(min_length = 1, max_length = 50)]
    #[schemars(length(min = 1, max = 50))]
    #[serde(default)]
    pub key: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>)]
    pub description: Option<Option<String>>,
    #[serde(default)]
    pub status: Option<ProjectStatus>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>)]
    pub github_repo_url: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>)]
    pub telegram_chat_id: Option<Option<String>>,
}

/// A project as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema, schemars::JsonSchema)]
pub struct ProjectView {
    pub id: i64,
    pub name: String,
    pub key: String,
    pub description: Option<String>,
    pub status: ProjectStatus,
    pub github_repo_url: Option<String>,
    /// Parsed from `github_repo_url`; `null` when it does not name a repository.
    pub github_repo_owner: Option<String>,
    /// Parsed from `github_repo_url`; `null` when it does not name a repository.
    pub github_repo_name: Option<String>,
    pub telegram_chat_id: Option<String>,
    #[serde(with = "micros")]
    #[schemars(with = "chrono::DateTime<chrono::Utc>")]
    pub created_at: DateTime<Utc>,
    #[serde(with = "micros")]
    #[schemars(with = "chrono::DateTime<chrono::Utc>")]
    pub updated_at: DateTime<Utc>,
}

impl From<&Project> for ProjectView {
    fn from(p: &Project) -> Self {
        let repo = p.github_repo_url.as_deref().and_then(parse_github_repo);
        let (owner, name) = repo.map_or((None, None), |(o, n)| (Some(o), Some(n)));
        ProjectView {
            id: p.id,
            name: p.name.clone(),
            key: p.key.clone(),
            description: p.description.clone(),
            status: p.status,
            github_repo_url: p.github_repo_url.clone(),
            github_repo_owner: owner,
            github_repo_name: name,
            telegram_chat_id: p.telegram_chat_id.clone(),
            created_at: p.created_at,
            updated_at: p.updated_at,
        }
    }
}

/// Paging of `GET /api/projects`.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams, schemars::JsonSchema)]
#[into_params(parameter_in = Query)]
pub struct ProjectListQuery {
    /// How many to skip (default 0).
    #[param(minimum = 0)]
    pub skip: Option<i64>,
    /// At most this many (default 100, at most 1000).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
}

/// `POST /api/tasks` body.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema, schemars::JsonSchema)]
pub struct ProjectTaskCreate {
    pub project_id: i64,
    /// 1 to 500 characters.
    #[schema(min_length = 1, max_length = 500)]
    #[schemars(length(min = 1, max = 500))]
    pub title: String,
    #[serde(default)]
    pub description: Option<String>,
    /// Default `todo`.
    #[serde(default)]
    pub status: WorkStatus,
    /// Default `medium`.
    #[serde(default)]
    pub priority: Priority,
    #[serde(default)]
    pub assigned_agent_type: Option<String>,
}

/// `PATCH /api/tasks/{id}` body: only the fields present change; `null`
/// clears an optional field.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema, schemars::JsonSchema)]
pub struct ProjectTaskUpdate {
    #[schema(min_length = 1, max_length = 500)]
    #[schemars(length(min = 1, max = 500))]
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>)]
    pub description: Option<Option<String>>,
    #[serde(default)]
    pub status: Option<WorkStatus>,
    #[serde(default)]
    pub priority: Option<Priority>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>)]
    pub assigned_agent_type: Option<Option<String>>,
}

/// A project task as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema, schemars::JsonSchema)]
pub struct ProjectTaskView {
    pub id: i64,
    pub project_id: i64,
    /// `{PROJECT_KEY}-{n}`, numbered per project from 1.
    pub key: String,
    pub title: String,
    pub description: Option<String>,
    pub status: WorkStatus,
    pub priority: Priority,
    pub assigned_agent_type: Option<String>,
    /// The engine state of the latest execution (`pending` ... `completed`),
    /// `null` if it never ran.
    pub agent_execution_status: Option<String>,
    #[serde(with = "micros")]
    #[schemars(with = "chrono::DateTime<chrono::Utc>")]
    pub created_at: DateTime<Utc>,
    #[serde(with = "micros")]
    #[schemars(with = "chrono::DateTime<chrono::Utc>")]
    pub updated_at: DateTime<Utc>,
}

impl From<&ProjectTask> for ProjectTaskView {
    fn from(t: &ProjectTask) -> Self {
        ProjectTaskView {
            id: t.id,
            project_id: t.project_id,
            key: t.key(),
            title: t.title.clone(),
            description: t.description.clone(),
            status: t.status,
            priority: t.priority,
            assigned_agent_type: t.assigned_agent_type.clone(),
            agent_execution_status: t.agent_execution_status.clone(),
            created_at: t.created_at,
            updated_at: t.updated_at,
        }
    }
}

/// Filters of `GET /api/tasks`.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams, schemars::JsonSchema)]
#[into_params(parameter_in = Query)]
pub struct ProjectTaskListQuery {
    /// Only this project's tasks.
    pub project_id: Option<i64>,
    /// How many to skip (default 0).
    #[param(minimum = 0)]
    pub skip: Option<i64>,
    /// At most this many (default 100, at most 1000).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
}

/// `POST /api/tasks/execute` body.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema, schemars::JsonSchema)]
pub struct ExecuteRequest {
    /// The project task to work on.
    pub task_id: i64,
    /// The agent to run.
    pub agent_type: String,
    /// What the agent is asked.
    pub prompt: String,
    /// Agent parameters, as on `/api/runtime/tasks/submit` (an addition).
    #[serde(default)]
    pub params: Option<serde_json::Value>,
}

/// `POST /api/tasks/execute` reply: the execution once its engine task ended.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema, schemars::JsonSchema)]
pub struct ExecutionView {
    pub id: i64,
    /// The project task.
    pub task_id: i64,
    pub agent_type: String,
    pub prompt: String,
    /// The agent's answer, when it completed.
    pub response: Option<String>,
    /// The engine task's state: `completed`, `failed` or `cancelled` once it ended.
    pub status: TaskState,
    pub error_message: Option<String>,
    #[serde(with = "micros")]
    #[schemars(with = "chrono::DateTime<chrono::Utc>")]
    pub started_at: DateTime<Utc>,
    #[serde(with = "micros_opt")]
    #[schema(value_type = Option<DateTime<Utc>>)]
    #[schemars(with = "Option<DateTime<Utc>>")]
    pub completed_at: Option<DateTime<Utc>>,
    /// The engine task's execution id.
    pub execution_uuid: Uuid,
    /// The engine task (`/api/runtime/tasks/{task_id}`).
    pub engine_task_id: Uuid,
    /// The session whose stream carried it.
    pub session_id: Uuid,
}

impl ExecutionView {
    /// The view of `e`, whose engine task is now `t`.
    pub fn of(e: &Execution, t: &Task) -> Self {
        ExecutionView {
            id: e.id,
            task_id: e.task_id,
            agent_type: e.agent_type.clone(),
            prompt: e.prompt.clone(),
            response: t.result.clone(),
            status: t.state,
            error_message: t.error.clone(),
            started_at: e.started_at,
            completed_at: t.state.is_terminal().then_some(t.updated_at),
            execution_uuid: t.execution_uuid,
            engine_task_id: t.task_id,
            session_id: t.session_id,
        }
    }
}
