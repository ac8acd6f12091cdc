//! `/api/devices/*`.

use axum::extract::State;
use axum::http::StatusCode;

use crate::app::AppState;
use crate::auth::Principal;
use crate::device::Device;
use crate::error::Result;
use crate::http::extract::{Json, Path};
use crate::runtime::devices::{Challenge, RegisterDevice};

/// `POST /api/devices`: register one of the caller's devices.
pub async fn register(
    State(s): State<AppState>,
    p: Principal,
    Json(req): Json<RegisterDevice>,
) -> Result<(StatusCode, Json<Device>)> {
    Ok((
        StatusCode::CREATED,
        Json(s.runtime.register_device(&p, req).await?),
    ))
}

/// `GET /api/devices`.
pub async fn list(State(s): State<AppState>, p: Principal) -> Result<Json<Vec<Device>>> {
    Ok(Json(s.runtime.list_devices(&p).await?))
}

/// `POST /api/devices/challenge`: a single-use nonce to sign.
pub async fn challenge(State(s): State<AppState>, p: Principal) -> Result<Json<Challenge>> {
    Ok(Json(s.runtime.device_challenge(&p).await?))
}

/// `POST /api/devices/{device_id}/approve`.
pub async fn approve(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<Json<Device>> {
    Ok(Json(s.runtime.approve_device(&p, &id).await?))
}

/// `POST /api/devices/{device_id}/revoke`.
pub async fn revoke(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<Json<Device>> {
    Ok(Json(s.runtime.revoke_device(&p, &id).await?))
}
