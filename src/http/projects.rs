//! `/api/projects` (Phase 1).

use axum::extract::State;
use axum::http::StatusCode;

use crate::app::AppState;
use crate::auth::Principal;
use crate::error::Result;
use crate::http::extract::{Json, Path, Query};
use crate::http::responses::{BadRequest, Conflict, Forbidden, NotFound, TooLarge, Unauthorized};
use crate::protocol::phase1::{ProjectCreate, ProjectListQuery, ProjectUpdate, ProjectView};

/// `GET /api/projects`.
#[utoipa::path(
    get,
    operation_id = "list_projects",
    path = "/projects",
    tag = "phase1",
    params(crate::protocol::phase1::ProjectListQuery),
    responses(
        (status = 200, description = "Projects by id", body = Vec<crate::protocol::phase1::ProjectView>),
        BadRequest, Unauthorized, Forbidden
    )
)]
pub async fn list(
    State(s): State<AppState>,
    p: Principal,
    Query(q): Query<ProjectListQuery>,
) -> Result<Json<Vec<ProjectView>>> {
    Ok(Json(s.runtime.list_projects(&p, q.skip, q.limit).await?))
}

/// `POST /api/projects`.
#[utoipa::path(
    post,
    operation_id = "create_project",
    path = "/projects",
    tag = "phase1",
    request_body = crate::protocol::phase1::ProjectCreate,
    responses(
        (status = 201, description = "Created", body = crate::protocol::phase1::ProjectView),
        BadRequest, Unauthorized, Forbidden, Conflict, TooLarge
    )
)]
pub async fn create(
    State(s): State<AppState>,
    p: Principal,
    Json(req): Json<ProjectCreate>,
) -> Result<(StatusCode, Json<ProjectView>)> {
    Ok((
        StatusCode::CREATED,
        Json(s.runtime.create_project(&p, req).await?),
    ))
}

/// `GET /api/projects/{id}`.
#[utoipa::path(
    get,
    operation_id = "get_project",
    path = "/projects/{id}",
    tag = "phase1",
    params(("id" = i64, Path)),
    responses(
        (status = 200, description = "The project", body = crate::protocol::phase1::ProjectView),
        BadRequest, Unauthorized, Forbidden, NotFound
    )
)]
pub async fn get(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<i64>,
) -> Result<Json<ProjectView>> {
    Ok(Json(s.runtime.get_project(&p, id).await?))
}

/// `PATCH /api/projects/{id}`.
#[utoipa::path(
    patch,
    operation_id = "update_project",
    path = "/projects/{id}",
    tag = "phase1",
    params(("id" = i64, Path)), request_body = crate::protocol::phase1::ProjectUpdate,
    responses(
        (status = 200, description = "The changed project", body = crate::protocol::phase1::ProjectView),
        BadRequest, Unauthorized, Forbidden, NotFound, Conflict, TooLarge
    )
)]
pub async fn update(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<i64>,
    Json(req): Json<ProjectUpdate>,
) -> Result<Json<ProjectView>> {
    Ok(Json(s.runtime.update_project(&p, id, req).await?))
}

/// `DELETE /api/projects/{id}`.
#[utoipa::path(
    delete,
    operation_id = "delete_project",
    path = "/projects/{id}",
    tag = "phase1",
    params(("id" = i64, Path)),
    responses(
        (status = 204, description = "Deleted, with its tasks"),
        BadRequest, Unauthorized, Forbidden, NotFound
    )
)]
pub async fn delete(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<i64>,
) -> Result<StatusCode> {
    s.runtime.delete_project(&p, id).await?;
    Ok(StatusCode::NO_CONTENT)
}
