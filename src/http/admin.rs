//! `/api/me`, `/api/admin/users/*`, `/api/admin/storage`, `/api/presence`.

use axum::extract::State;
use axum::http::StatusCode;

use crate::app::AppState;
use crate::auth::Principal;
use crate::error::Result;
use crate::http::extract::{Json, OptionalJson, Path};
use crate::http::responses::{BadRequest, Conflict, Forbidden, NotFound, TooLarge, Unauthorized};
use crate::presence::PresenceView;
use crate::protocol::storage::StorageReport;
use crate::protocol::{
    CreateUserRequest, CreatedUser, PermissionRequest, RoleRequest, TokenRequest, TokenView,
    TokensRevoked, UserView,
};

/// `GET /api/me`.
#[utoipa::path(
    get,
    path = "/me",
    tag = "users",
    responses(
        (status = 200, description = "The caller", body = crate::protocol::UserView),
        Unauthorized
    )
)]
pub async fn me(State(s): State<AppState>, p: Principal) -> Result<Json<UserView>> {
    Ok(Json(s.runtime.me(&p).await?))
}

/// `POST /api/admin/users`.
#[utoipa::path(
    post,
    path = "/admin/users",
    tag = "users",
    request_body = crate::protocol::CreateUserRequest,
    responses(
        (status = 201, description = "Created, with a first token", body = crate::protocol::CreatedUser),
        BadRequest, Unauthorized, Forbidden, Conflict, TooLarge
    )
)]
pub async fn create_user(
    State(s): State<AppState>,
    p: Principal,
    Json(req): Json<CreateUserRequest>,
) -> Result<(StatusCode, Json<CreatedUser>)> {
    Ok((
        StatusCode::CREATED,
        Json(s.runtime.create_user(&p, req).await?),
    ))
}

/// `GET /api/admin/users`.
#[utoipa::path(
    get,
    path = "/admin/users",
    tag = "users",
    responses(
        (status = 200, description = "Every user", body = Vec<crate::protocol::UserView>),
        Unauthorized, Forbidden
    )
)]
pub async fn list_users(State(s): State<AppState>, p: Principal) -> Result<Json<Vec<UserView>>> {
    Ok(Json(s.runtime.list_users(&p).await?))
}

/// `POST /api/admin/users/{user_id}/roles`.
#[utoipa::path(
    post,
    path = "/admin/users/{user_id}/roles",
    tag = "users",
    params(("user_id" = String, Path)), request_body = crate::protocol::RoleRequest,
    responses(
        (status = 200, description = "The user", body = crate::protocol::UserView),
        BadRequest, Unauthorized, Forbidden, NotFound, TooLarge
    )
)]
pub async fn assign_role(
    State(s): State<AppState>,
    p: Principal,
    Path(user_id): Path<String>,
    Json(req): Json<RoleRequest>,
) -> Result<Json<UserView>> {
    Ok(Json(s.runtime.assign_role(&p, &user_id, &req.role).await?))
}

/// `DELETE /api/admin/users/{user_id}/roles/{role}`.
#[utoipa::path(
    delete,
    path = "/admin/users/{user_id}/roles/{role}",
    tag = "users",
    params(("user_id" = String, Path), ("role" = String, Path)),
    responses(
        (status = 200, description = "The user", body = crate::protocol::UserView),
        BadRequest, Unauthorized, Forbidden, NotFound
    )
)]
pub async fn revoke_role(
    State(s): State<AppState>,
    p: Principal,
    Path((user_id, role)): Path<(String, String)>,
) -> Result<Json<UserView>> {
    Ok(Json(s.runtime.revoke_role(&p, &user_id, &role).await?))
}

/// `POST /api/admin/users/{user_id}/permissions`.
#[utoipa::path(
    post,
    path = "/admin/users/{user_id}/permissions",
    tag = "users",
    params(("user_id" = String, Path)), request_body = crate::protocol::PermissionRequest,
    responses(
        (status = 200, description = "The user", body = crate::protocol::UserView),
        BadRequest, Unauthorized, Forbidden, NotFound, TooLarge
    )
)]
pub async fn adjust_permission(
    State(s): State<AppState>,
    p: Principal,
    Path(user_id): Path<String>,
    Json(req): Json<PermissionRequest>,
) -> Result<Json<UserView>> {
    Ok(Json(s.runtime.adjust_permission(&p, &user_id, req).await?))
}

/// `POST /api/admin/users/{user_id}/tokens`.
#[utoipa::path(
    post,
    path = "/admin/users/{user_id}/tokens",
    tag = "users",
    params(("user_id" = String, Path)),
    responses(
        (status = 201, description = "A new token, shown once", body = crate::protocol::TokenView),
        BadRequest, Unauthorized, Forbidden, NotFound
    )
)]
pub async fn issue_token(
    State(s): State<AppState>,
    p: Principal,
    Path(user_id): Path<String>,
    OptionalJson(req): OptionalJson<TokenRequest>,
) -> Result<(StatusCode, Json<TokenView>)> {
    Ok((
        StatusCode::CREATED,
        Json(s.runtime.issue_token(&p, &user_id, req).await?),
    ))
}

/// `DELETE /api/admin/users/{user_id}/tokens`.
#[utoipa::path(
    delete,
    path = "/admin/users/{user_id}/tokens",
    tag = "users",
    params(("user_id" = String, Path)),
    responses(
        (status = 200, description = "How many were revoked", body = crate::protocol::TokensRevoked),
        BadRequest, Unauthorized, Forbidden, NotFound
    )
)]
pub async fn revoke_tokens(
    State(s): State<AppState>,
    p: Principal,
    Path(user_id): Path<String>,
) -> Result<Json<TokensRevoked>> {
    Ok(Json(s.runtime.revoke_tokens(&p, &user_id).await?))
}

/// `GET /api/presence`: who is connected (one's own connections; everyone's
/// with `admin:system`).
#[utoipa::path(
    get,
    path = "/presence",
    tag = "users",
    responses(
        (status = 200, description = "Open connections", body = Vec<crate::presence::PresenceView>),
        Unauthorized, Forbidden
    )
)]
pub async fn presence(State(s): State<AppState>, p: Principal) -> Result<Json<Vec<PresenceView>>> {
    Ok(Json(s.runtime.presence_list(&p).await?))
}

/// `GET /api/admin/storage`: rows, bytes and oldest item per kind of data,
/// the database's size, and the last prune (`admin:system`).
#[utoipa::path(
    get,
    operation_id = "get_storage",
    path = "/admin/storage",
    tag = "admin",
    responses(
        (status = 200, description = "The storage figures; `rows_estimated` marks the row counts that are estimates (big tables)", body = crate::protocol::storage::StorageReport),
        Unauthorized, Forbidden
    )
)]
pub async fn storage(State(s): State<AppState>, p: Principal) -> Result<Json<StorageReport>> {
    Ok(Json(s.runtime.storage(&p).await?))
}
