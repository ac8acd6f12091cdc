//! Wire types: every JSON shape the node sends or accepts, over REST, SSE and
//! WebSocket. Handlers convert domain records into these and nothing else
//! goes on the wire. `protocol/README.md` documents them for people.

pub mod link;
pub mod phase1;
pub mod storage;
pub mod ws;

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::agent::AgentInfo;
use crate::auth::User;
use crate::event::{EventBody, StoredEvent};
use crate::rbac::{Permission, Role};
use crate::session::Session;
use crate::task::{Task, TaskState};

/// Timestamps as RFC 3339 UTC with microseconds.
pub mod micros {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    /// Serialize.
    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&crate::event::rfc3339(t))
    }

    /// Deserialize.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let text = String::deserialize(d)?;
        DateTime::parse_from_rfc3339(&text)
            .map(|t| t.with_timezone(&Utc))
            .map_err(serde::de::Error::custom)
    }
}

/// Optional timestamps as RFC 3339 UTC with microseconds, or `null`.
pub mod micros_opt {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    /// Serialize.
    pub fn serialize<S: Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.serialize_str(&crate::event::rfc3339(t)),
            None => s.serialize_none(),
        }
    }

    /// Deserialize.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|text| {
                DateTime::parse_from_rfc3339(&text)
                    .map(|t| t.with_timezone(&Utc))
                    .map_err(serde::de::Error::custom)
            })
            .transpose()
    }
}

/// `GET /api/me` and the user parts of admin replies.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema, schemars::JsonSchema)]
pub struct UserView {
    pub user_id: String,
    pub roles: BTreeSet<Role>,
    pub permissions: BTreeSet<Permission>,
    /// Permissions granted on top of the roles.
    #[serde(default)]
    pub grants: BTreeSet<Permission>,
    /// Permissions taken away from the roles.
    #[serde(default)]
    pub revokes: BTreeSet<Permission>,
}

impl From<&User> for UserView {
    fn from(u: &User) -> Self {
        UserView {
            user_id: u.user_id.clone(),
            roles: u.roles.clone(),
            permissions: u.permissions(),
            grants: u.grants.clone(),
            revokes: u.revokes.clone(),
        }
    }
}

/// `POST /api/admin/users` body.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema, schemars::JsonSchema)]
pub struct CreateUserRequest {
    pub user_id: String,
    #[serde(default)]
    pub roles: Vec<String>,
}

/// `POST /api/admin/users` reply: the user and their first token, shown once.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema, schemars::JsonSchema)]
pub struct CreatedUser {
    pub user_id: String,
    pub roles: BTreeSet<Role>,
    pub token: String,
}

/// `POST /api/admin/users/{id}/roles` body.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema, schemars::JsonSchema)]
pub struct RoleRequest {
    pub role: String,
}

/// `POST /api/admin/users/{id}/permissions` body: exactly one of the two.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema, schemars::JsonSchema)]
pub struct PermissionRequest {
    pub grant: Option<String>,
    pub revoke: Option<String>,
}

/// A newly issued token, shown once.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema, schemars::JsonSchema)]
pub struct TokenView {
    pub token: String,
    /// When it stops working; `null`: never (until revoked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
}

/// `POST /api/admin/users/{id}/tokens` body (optional).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct TokenRequest {
    /// Lifetime in seconds; absent: until revoked.
    pub expires_in_secs: Option<u64>,
}

/// `DELETE /api/admin/users/{id}/tokens` reply.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema, schemars::JsonSchema)]
pub struct TokensRevoked {
    pub user_id: String,
    pub revoked: u64,
}

/// `POST /api/runtime/sessions` body or query.
#[derive(
    Debug, Clone, Default, Deserialize, utoipa::ToSchema, schemars::JsonSchema, utoipa::IntoParams,
)]
#[into_params(parameter_in = Query)]
pub struct CreateSessionRequest {
    pub user_id: Option<String>,
    pub device_id: Option<String>,
}

/// A session as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema, schemars::JsonSchema)]
pub struct SessionView {
    pub session_id: Uuid,
    pub user_id: String,
    pub device_id: Option<String>,
    #[serde(with = "micros")]
    #[schemars(with = "chrono::DateTime<chrono::Utc>")]
    pub created_at: DateTime<Utc>,
    #[serde(with = "micros")]
    #[schemars(with = "chrono::DateTime<chrono::Utc>")]
    pub last_activity: DateTime<Utc>,
    pub permissions: BTreeSet<Permission>,
    /// `active` or `ended`.
    pub state: String,
    /// The seq of the session's newest event.
    pub last_seq: i64,
}

impl From<&Session> for SessionView {
    fn from(s: &Session) -> Self {
        SessionView {
            session_id: s.session_id,
            user_id: s.user_id.clone(),
            device_id: s.device_id.clone(),
            created_at: s.created_at,
            last_activity: s.last_activity,
            permissions: s.permissions.clone(),
            state: s.state.as_str().to_owned(),
            last_seq: s.last_seq,
        }
    }
}

/// `POST /api/runtime/tasks/submit` body and the `task.submit` op.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema, schemars::JsonSchema)]
pub struct SubmitRequest {
    /// The agent to run; exactly one of `agent_type` and `skill` is given.
    pub agent_type: Option<String>,
    /// A skill: the node picks an available agent that provides it.
    pub skill: Option<String>,
    pub prompt: String,
    /// One of the caller's active sessions; without it, the default one.
    // Documented as not nullable (a `null` is taken as absent all the
    // same): schemathesis 4.1's generator breaks on a nullable `uuid`.
    #[schema(nullable = false)]
    pub session_id: Option<Uuid>,
    #[serde(default)]
    pub context: Option<Value>,
    #[serde(default)]
    pub params: Option<Value>,
    pub idempotency_key: Option<String>,
}

/// `POST /api/runtime/tasks/{id}/respond` body and the `task.respond` op.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema, schemars::JsonSchema)]
pub struct RespondRequest {
    pub approve: bool,
    pub input: Option<String>,
}

/// A task's state, as submit, state, list and get return it (get adds `events`).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema, schemars::JsonSchema)]
pub struct TaskView {
    pub task_id: Uuid,
    pub execution_uuid: Uuid,
    pub state: TaskState,
    pub success: bool,
    pub result: Option<String>,
    pub error: Option<String>,
    /// Seconds from submission to the end, once terminal.
    pub execution_time: Option<f64>,
    pub metadata: Value,
    pub session_id: Uuid,
    pub user_id: String,
    pub agent_type: String,
    /// The start of the prompt (at most 200 characters, ending in `…` when
    /// cut), so that lists say what each task is; `task.get` has all of it.
    pub prompt_preview: String,
    #[serde(with = "micros")]
    #[schemars(with = "chrono::DateTime<chrono::Utc>")]
    pub created_at: DateTime<Utc>,
    #[serde(with = "micros")]
    #[schemars(with = "chrono::DateTime<chrono::Utc>")]
    pub updated_at: DateTime<Utc>,
}

/// Characters of the prompt in [`TaskView::prompt_preview`].
const PROMPT_PREVIEW_CHARS: usize = 200;

/// The first [`PROMPT_PREVIEW_CHARS`] characters of a prompt, `…` when cut.
fn prompt_preview(prompt: &str) -> String {
    match prompt.char_indices().nth(PROMPT_PREVIEW_CHARS) {
        Some((cut, _)) => format!("{}…", &prompt[..cut]),
        None => prompt.to_owned(),
    }
}

impl From<&Task> for TaskView {
    fn from(t: &Task) -> Self {
        TaskView {
            task_id: t.task_id,
            execution_uuid: t.execution_uuid,
            state: t.state,
            success: t.state == TaskState::Completed,
            result: t.result.clone(),
            error: t.error.clone(),
            execution_time: t.execution_time,
            metadata: t.metadata.clone(),
            session_id: t.session_id,
            user_id: t.user_id.clone(),
            agent_type: t.agent_type.clone(),
            prompt_preview: prompt_preview(&t.prompt),
            created_at: t.created_at,
            updated_at: t.updated_at,
        }
    }
}

/// `GET /api/runtime/tasks/{id}` and `task.get`: the state plus its events.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema, schemars::JsonSchema)]
pub struct TaskDetail {
    #[serde(flatten)]
    pub task: TaskView,
    pub prompt: String,
    pub events: Vec<TaskEventView>,
}

/// One event in a task's history, in the original's shape.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema, schemars::JsonSchema)]
pub struct TaskEventView {
    pub seq: i64,
    /// `state_change` or `output`.
    pub event_type: String,
    pub state: Option<TaskState>,
    pub message: Option<String>,
    pub chunk: Option<String>,
    #[serde(with = "micros")]
    #[schemars(with = "chrono::DateTime<chrono::Utc>")]
    pub timestamp: DateTime<Utc>,
}

impl From<&StoredEvent> for TaskEventView {
    fn from(e: &StoredEvent) -> Self {
        let (event_type, state, message, chunk) = match &e.body {
            EventBody::State(s) => ("state_change", Some(s.state), Some(s.message.clone()), None),
            EventBody::Output(o) => ("output", None, None, Some(o.chunk.clone())),
        };
        TaskEventView {
            seq: e.seq,
            event_type: event_type.to_owned(),
            state,
            message,
            chunk,
            timestamp: e.at,
        }
    }
}

/// `POST /api/runtime/tasks/{id}/cancel` reply.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema, schemars::JsonSchema)]
pub struct CancelReply {
    pub success: bool,
    pub task_id: Uuid,
    pub state: TaskState,
}

/// Query of `GET /api/runtime/tasks` and fields of `task.list`.
#[derive(
    Debug, Clone, Default, Deserialize, utoipa::ToSchema, schemars::JsonSchema, utoipa::IntoParams,
)]
#[into_params(parameter_in = Query)]
pub struct TaskListQuery {
    pub session_id: Option<Uuid>,
    pub state: Option<String>,
    pub agent_type: Option<String>,
    pub limit: Option<i64>,
    /// A task id: list the tasks older than it (cursor pagination).
    pub after: Option<Uuid>,
}

/// Query of the session events path.
#[derive(
    Debug, Clone, Default, Deserialize, utoipa::ToSchema, schemars::JsonSchema, utoipa::IntoParams,
)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    pub after_seq: Option<i64>,
    pub limit: Option<i64>,
}

/// `{"events":[..]}`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema, schemars::JsonSchema)]
pub struct EventList {
    pub events: Vec<Value>,
    /// The oldest seq still stored in the stream, present only when
    /// `after_seq` asked for events that were pruned (data retention):
    /// `events` starts there, not right after `after_seq`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub earliest_seq: Option<i64>,
}

/// An agent as discovery lists it.
pub type AgentView = AgentInfo;

/// A skill as discovery lists it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema, schemars::JsonSchema)]
pub struct SkillView {
    pub skill_id: String,
    pub name: String,
    pub description: String,
    pub required_permissions: Vec<String>,
    /// The agents that provide it.
    pub agents: Vec<String>,
    pub metadata: Value,
}

/// `{"status":"ok"}`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema, schemars::JsonSchema)]
pub struct Health {
    pub status: String,
}

/// The seq in an SSE `Last-Event-ID` header (what the node sent as `id:`).
pub fn parse_last_event_id(raw: &[u8]) -> crate::error::Result<i64> {
    std::str::from_utf8(raw)
        .ok()
        .and_then(|v| v.trim().parse::<i64>().ok())
        .ok_or_else(|| crate::error::Error::BadRequest("Last-Event-ID must be a seq number".into()))
}

#[cfg(test)]
mod tests {
    use super::prompt_preview;

    /// A preview keeps short prompts whole and cuts long ones on a character
    /// boundary, never inside a multi-byte character.
    #[test]
    fn prompt_preview_cuts_on_a_character_boundary() {
        assert_eq!(prompt_preview("short"), "short");
        assert_eq!(prompt_preview(&"x".repeat(200)), "x".repeat(200));
        let cut = prompt_preview(&"é".repeat(250));
        assert_eq!(cut.chars().count(), 201);
        assert_eq!(cut, format!("{}…", "é".repeat(200)));
    }
}
