//! `/api/runtime/tasks/*`, `/api/runtime/agents`, `/api/runtime/skills`.

use axum::extract::State;
use uuid::Uuid;

use crate::agent::AgentInfo;
use crate::app::AppState;
use crate::auth::Principal;
use crate::error::Result;
use crate::http::extract::{Json, Path, Query};
use crate::http::responses::{
    BadRequest, Conflict, Forbidden, NotFound, RateLimited, TooLarge, Unauthorized,
};
use crate::protocol::{
    CancelReply, RespondRequest, SkillView, SubmitRequest, TaskDetail, TaskListQuery, TaskView,
};
use crate::runtime::TaskQuery;

/// `POST /api/runtime/tasks/submit`.
#[utoipa::path(
    post,
    operation_id = "submit_task",
    path = "/runtime/tasks/submit",
    tag = "tasks",
    request_body = crate::protocol::SubmitRequest,
    responses(
        (status = 200, description = "The new task (or the first one with this idempotency key)", body = crate::protocol::TaskView),
        BadRequest, Unauthorized, Forbidden, NotFound, TooLarge, RateLimited
    )
)]
pub async fn submit(
    State(s): State<AppState>,
    p: Principal,
    Json(req): Json<SubmitRequest>,
) -> Result<Json<TaskView>> {
    Ok(Json(s.runtime.submit(&p, req).await?))
}

/// `GET /api/runtime/tasks`.
#[utoipa::path(
    get,
    operation_id = "list_tasks",
    path = "/runtime/tasks",
    tag = "tasks",
    params(crate::protocol::TaskListQuery),
    responses(
        (status = 200, description = "Tasks, newest first", body = Vec<crate::protocol::TaskView>),
        BadRequest, Unauthorized, Forbidden
    )
)]
pub async fn list(
    State(s): State<AppState>,
    p: Principal,
    Query(q): Query<TaskListQuery>,
) -> Result<Json<Vec<TaskView>>> {
    let query = TaskQuery {
        session_id: q.session_id,
        state: q.state,
        agent_type: q.agent_type,
        limit: q.limit,
        after: q.after,
    };
    Ok(Json(s.runtime.list_tasks(&p, query).await?))
}

/// `GET /api/runtime/tasks/{id}`.
#[utoipa::path(
    get,
    operation_id = "get_task",
    path = "/runtime/tasks/{task_id}",
    tag = "tasks",
    params(("task_id" = uuid::Uuid, Path)),
    responses(
        (status = 200, description = "The task and its events", body = crate::protocol::TaskDetail),
        BadRequest, Unauthorized, Forbidden, NotFound
    )
)]
pub async fn detail(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<Uuid>,
) -> Result<Json<TaskDetail>> {
    Ok(Json(s.runtime.task_detail(&p, id).await?))
}

/// `GET /api/runtime/tasks/{id}/state`.
#[utoipa::path(
    get,
    operation_id = "get_task_state",
    path = "/runtime/tasks/{task_id}/state",
    tag = "tasks",
    params(("task_id" = uuid::Uuid, Path)),
    responses(
        (status = 200, description = "The task state", body = crate::protocol::TaskView),
        BadRequest, Unauthorized, Forbidden, NotFound
    )
)]
pub async fn state(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<Uuid>,
) -> Result<Json<TaskView>> {
    Ok(Json(s.runtime.task_state(&p, id).await?))
}

/// `POST /api/runtime/tasks/{id}/cancel`.
#[utoipa::path(
    post,
    operation_id = "cancel_task",
    path = "/runtime/tasks/{task_id}/cancel",
    tag = "tasks",
    params(("task_id" = uuid::Uuid, Path)),
    responses(
        (status = 200, description = "Cancelled", body = crate::protocol::CancelReply),
        BadRequest, Unauthorized, Forbidden, NotFound, Conflict
    )
)]
pub async fn cancel(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<Uuid>,
) -> Result<Json<CancelReply>> {
    Ok(Json(s.runtime.cancel(&p, id).await?))
}

/// `POST /api/runtime/tasks/{id}/respond`.
#[utoipa::path(
    post,
    operation_id = "respond_task",
    path = "/runtime/tasks/{task_id}/respond",
    tag = "tasks",
    params(("task_id" = uuid::Uuid, Path)), request_body = crate::protocol::RespondRequest,
    responses(
        (status = 200, description = "The task state", body = crate::protocol::TaskView),
        BadRequest, Unauthorized, Forbidden, NotFound, Conflict, TooLarge
    )
)]
pub async fn respond(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<Uuid>,
    Json(req): Json<RespondRequest>,
) -> Result<Json<TaskView>> {
    Ok(Json(s.runtime.respond(&p, id, req).await?))
}

/// `GET /api/runtime/agents`.
#[utoipa::path(
    get,
    operation_id = "list_agents",
    path = "/runtime/agents",
    tag = "agents",
    responses(
        (status = 200, description = "Agents", body = Vec<crate::agent::AgentInfo>),
        Unauthorized, Forbidden
    )
)]
pub async fn agents(State(s): State<AppState>, p: Principal) -> Result<Json<Vec<AgentInfo>>> {
    Ok(Json(s.runtime.agents(&p).await?))
}

/// `GET /api/runtime/skills`.
#[utoipa::path(
    get,
    operation_id = "list_skills",
    path = "/runtime/skills",
    tag = "agents",
    responses(
        (status = 200, description = "Skills", body = Vec<crate::protocol::SkillView>),
        Unauthorized, Forbidden
    )
)]
pub async fn skills(State(s): State<AppState>, p: Principal) -> Result<Json<Vec<SkillView>>> {
    Ok(Json(s.runtime.skills(&p).await?))
}
