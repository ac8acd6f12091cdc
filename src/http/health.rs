//! Health, readiness and metrics.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;

use crate::app::AppState;
use crate::error::Error;
use crate::protocol::Health;

/// `GET /healthz`, `GET /health`: the process is up.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "health",
    security(()),
    responses(
        (status = 200, description = "The process is up", body = crate::protocol::Health)
    )
)]
pub async fn health() -> axum::Json<Health> {
    axum::Json(Health {
        status: "ok".into(),
    })
}

/// `GET /health`: the same as `/healthz`, the original's path.
#[utoipa::path(
    get,
    path = "/health",
    tag = "health",
    security(()),
    responses(
        (status = 200, description = "The process is up", body = crate::protocol::Health)
    )
)]
pub async fn health_alias() -> axum::Json<Health> {
    health().await
}

/// `GET /readyz`: 200 only while the store answers.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "health",
    security(()),
    responses(
        (status = 200, description = "The store answers", body = crate::protocol::Health),
        (status = 503, description = "Store unavailable", body = crate::error::ErrorResponse)
    )
)]
pub async fn ready(State(state): State<AppState>) -> Result<axum::Json<Health>, Error> {
    state
        .runtime
        .store()
        .ping()
        .await
        .map_err(|_| Error::Unavailable("the store is not answering".into()))?;
    Ok(axum::Json(Health {
        status: "ok".into(),
    }))
}

/// `GET /metrics`: Prometheus text.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "health",
    security(()),
    responses(
        (status = 200, description = "Prometheus text", body = String, content_type = "text/plain")
    )
)]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    crate::metrics::refresh(&state.runtime).await;
    (
        StatusCode::OK,
        [("content-type", "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}
