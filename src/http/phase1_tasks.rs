//! `/api/tasks` and `/api/agents` (Phase 1).

use axum::extract::State;
use axum::http::StatusCode;

use crate::app::AppState;
use crate::auth::Principal;
use crate::error::Result;
use crate::http::extract::{Json, Path, Query};
use crate::http::responses::{
    BadRequest, Forbidden, NotFound, RateLimited, TooLarge, Unauthorized,
};
use crate::protocol::phase1::{
    ExecuteRequest, ExecutionView, ProjectTaskCreate, ProjectTaskListQuery, ProjectTaskUpdate,
    ProjectTaskView,
};

/// `GET /api/tasks`.
#[utoipa::path(
    get,
    operation_id = "list_project_tasks",
    path = "/tasks",
    tag = "phase1",
    params(crate::protocol::phase1::ProjectTaskListQuery),
    responses(
        (status = 200, description = "Project tasks by id", body = Vec<crate::protocol::phase1::ProjectTaskView>),
        BadRequest, Unauthorized, Forbidden
    )
)]
pub async fn list(
    State(s): State<AppState>,
    p: Principal,
    Query(q): Query<ProjectTaskListQuery>,
) -> Result<Json<Vec<ProjectTaskView>>> {
    let list = s
        .runtime
        .list_project_tasks(&p, q.project_id, q.skip, q.limit)
        .await?;
    Ok(Json(list))
}

/// `POST /api/tasks`.
#[utoipa::path(
    post,
    operation_id = "create_project_task",
    path = "/tasks",
    tag = "phase1",
    request_body = crate::protocol::phase1::ProjectTaskCreate,
    responses(
        (status = 201, description = "Created", body = crate::protocol::phase1::ProjectTaskView),
        BadRequest, Unauthorized, Forbidden, NotFound, TooLarge
    )
)]
pub async fn create(
    State(s): State<AppState>,
    p: Principal,
    Json(req): Json<ProjectTaskCreate>,
) -> Result<(StatusCode, Json<ProjectTaskView>)> {
    Ok((
        StatusCode::CREATED,
        Json(s.runtime.create_project_task(&p, req).await?),
    ))
}

/// `GET /api/tasks/{id}`.
#[utoipa::path(
    get,
    operation_id = "get_project_task",
    path = "/tasks/{id}",
    tag = "phase1",
    params(("id" = i64, Path)),
    responses(
        (status = 200, description = "The project task", body = crate::protocol::phase1::ProjectTaskView),
        BadRequest, Unauthorized, Forbidden, NotFound
    )
)]
pub async fn get(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<i64>,
) -> Result<Json<ProjectTaskView>> {
    Ok(Json(s.runtime.get_project_task(&p, id).await?))
}

/// `PATCH /api/tasks/{id}`.
#[utoipa::path(
    patch,
    operation_id = "update_project_task",
    path = "/tasks/{id}",
    tag = "phase1",
    params(("id" = i64, Path)), request_body = crate::protocol::phase1::ProjectTaskUpdate,
    responses(
        (status = 200, description = "The changed project task", body = crate::protocol::phase1::ProjectTaskView),
        BadRequest, Unauthorized, Forbidden, NotFound, TooLarge
    )
)]
pub async fn update(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<i64>,
    Json(req): Json<ProjectTaskUpdate>,
) -> Result<Json<ProjectTaskView>> {
    Ok(Json(s.runtime.update_project_task(&p, id, req).await?))
}

/// `DELETE /api/tasks/{id}`.
#[utoipa::path(
    delete,
    operation_id = "delete_project_task",
    path = "/tasks/{id}",
    tag = "phase1",
    params(("id" = i64, Path)),
    responses(
        (status = 204, description = "Deleted"),
        BadRequest, Unauthorized, Forbidden, NotFound
    )
)]
pub async fn delete(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<i64>,
) -> Result<StatusCode> {
    s.runtime.delete_project_task(&p, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/tasks/execute`: synchronous; the execution goes on if the
/// client goes away.
#[utoipa::path(
    post,
    operation_id = "execute_project_task",
    path = "/tasks/execute",
    tag = "phase1",
    request_body = crate::protocol::phase1::ExecuteRequest,
    responses(
        (status = 200, description = "The execution, once its engine task ended", body = crate::protocol::phase1::ExecutionView),
        BadRequest, Unauthorized, Forbidden, NotFound, TooLarge, RateLimited
    )
)]
pub async fn execute(
    State(s): State<AppState>,
    p: Principal,
    Json(req): Json<ExecuteRequest>,
) -> Result<Json<ExecutionView>> {
    Ok(Json(s.runtime.execute(&p, req).await?))
}

/// `GET /api/agents/available`: names of the agents that can run.
#[utoipa::path(
    get,
    path = "/agents/available",
    tag = "phase1",
    responses(
        (status = 200, description = "Names of the agents that can run", body = Vec<String>),
        Unauthorized, Forbidden
    )
)]
pub async fn agents_available(
    State(s): State<AppState>,
    p: Principal,
) -> Result<Json<Vec<String>>> {
    Ok(Json(s.runtime.agent_names(&p, true).await?))
}

/// `GET /api/agents/types`: names of every configured agent.
#[utoipa::path(
    get,
    path = "/agents/types",
    tag = "phase1",
    responses(
        (status = 200, description = "Names of every agent", body = Vec<String>),
        Unauthorized, Forbidden
    )
)]
pub async fn agent_types(State(s): State<AppState>, p: Principal) -> Result<Json<Vec<String>>> {
    Ok(Json(s.runtime.agent_names(&p, false).await?))
}
