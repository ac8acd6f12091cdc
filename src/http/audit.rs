//! `/api/audit/*`.

use axum::extract::State;
use serde::Deserialize;
use uuid::Uuid;

use crate::app::AppState;
use crate::audit::{AuditRecord, Verification};
use crate::auth::Principal;
use crate::error::Result;
use crate::http::extract::{Json, Path, Query};
use crate::http::responses::{BadRequest, Forbidden, NotFound, Unauthorized};
use crate::runtime::audit::AuditFilter;

/// `?limit=`.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Limit {
    pub limit: Option<i64>,
}

/// `GET /api/audit/events`.
#[utoipa::path(
    get,
    operation_id = "audit_events",
    path = "/audit/events",
    tag = "audit",
    params(crate::runtime::audit::AuditFilter),
    responses(
        (status = 200, description = "Audit records, newest first", body = Vec<crate::audit::AuditRecord>),
        BadRequest, Unauthorized, Forbidden
    )
)]
pub async fn events(
    State(s): State<AppState>,
    p: Principal,
    Query(f): Query<AuditFilter>,
) -> Result<Json<Vec<AuditRecord>>> {
    Ok(Json(s.runtime.audit_events(&p, f).await?))
}

/// `GET /api/audit/users/{user_id}/activity`.
#[utoipa::path(
    get,
    path = "/audit/users/{user_id}/activity",
    tag = "audit",
    params(("user_id" = String, Path), Limit),
    responses(
        (status = 200, description = "Audit records, newest first", body = Vec<crate::audit::AuditRecord>),
        BadRequest, Unauthorized, Forbidden, NotFound
    )
)]
pub async fn user_activity(
    State(s): State<AppState>,
    p: Principal,
    Path(user_id): Path<String>,
    Query(q): Query<Limit>,
) -> Result<Json<Vec<AuditRecord>>> {
    Ok(Json(s.runtime.user_activity(&p, &user_id, q.limit).await?))
}

/// `GET /api/audit/sessions/{session_id}/activity`.
#[utoipa::path(
    get,
    path = "/audit/sessions/{session_id}/activity",
    tag = "audit",
    params(("session_id" = uuid::Uuid, Path), Limit),
    responses(
        (status = 200, description = "Audit records, newest first", body = Vec<crate::audit::AuditRecord>),
        BadRequest, Unauthorized, Forbidden, NotFound
    )
)]
pub async fn session_activity(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<Uuid>,
    Query(q): Query<Limit>,
) -> Result<Json<Vec<AuditRecord>>> {
    Ok(Json(s.runtime.session_activity(&p, id, q.limit).await?))
}

/// `GET /api/audit/verify`.
#[utoipa::path(
    get,
    operation_id = "verify_audit",
    path = "/audit/verify",
    tag = "audit",
    responses(
        (status = 200, description = "The chain check", body = crate::audit::Verification),
        Unauthorized, Forbidden
    )
)]
pub async fn verify(State(s): State<AppState>, p: Principal) -> Result<Json<Verification>> {
    Ok(Json(s.runtime.verify_audit(&p).await?))
}
