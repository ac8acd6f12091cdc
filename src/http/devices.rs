//! `/api/devices/*`.

use axum::extract::State;
use axum::http::StatusCode;

use crate::app::AppState;
use crate::auth::Principal;
use crate::device::Device;
use crate::error::Result;
use crate::http::extract::{Json, Path};
use crate::http::responses::{BadRequest, Forbidden, NotFound, TooLarge, Unauthorized};
use crate::runtime::devices::{Challenge, RegisterDevice};

/// `POST /api/devices`: register one of the caller's devices.
#[utoipa::path(
    post,
    operation_id = "register_device",
    path = "/devices",
    tag = "devices",
    request_body = crate::runtime::devices::RegisterDevice,
    responses(
        (status = 201, description = "Registered (or renamed); a new device is `pending`", body = crate::device::Device),
        (status = 400, description = "Bad request: a malformed body, device id or public key", body = crate::error::ErrorResponse),
        Unauthorized, Forbidden,
        (status = 409, description = "The device belongs to another user, was revoked, or had another key", body = crate::error::ErrorResponse),
        TooLarge
    )
)]
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
#[utoipa::path(
    get,
    operation_id = "list_devices",
    path = "/devices",
    tag = "devices",
    responses(
        (status = 200, description = "The caller's devices; everyone's with `admin:users`", body = Vec<crate::device::Device>),
        Unauthorized, Forbidden
    )
)]
pub async fn list(State(s): State<AppState>, p: Principal) -> Result<Json<Vec<Device>>> {
    Ok(Json(s.runtime.list_devices(&p).await?))
}

/// `POST /api/devices/challenge`: a single-use nonce to sign.
#[utoipa::path(
    post,
    operation_id = "device_challenge",
    path = "/devices/challenge",
    tag = "devices",
    responses(
        (status = 200, description = "A nonce to sign, valid for five minutes", body = crate::runtime::devices::Challenge),
        Unauthorized, Forbidden
    )
)]
pub async fn challenge(State(s): State<AppState>, p: Principal) -> Result<Json<Challenge>> {
    Ok(Json(s.runtime.device_challenge(&p).await?))
}

/// `POST /api/devices/{device_id}/approve`.
#[utoipa::path(
    post,
    operation_id = "approve_device",
    path = "/devices/{device_id}/approve",
    tag = "devices",
    params(("device_id" = String, Path)),
    responses(
        (status = 200, description = "The device, now `trusted`", body = crate::device::Device),
        BadRequest, Unauthorized, Forbidden, NotFound,
        (status = 409, description = "The device was revoked, or its request expired", body = crate::error::ErrorResponse)
    )
)]
pub async fn approve(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<Json<Device>> {
    Ok(Json(s.runtime.approve_device(&p, &id).await?))
}

/// `POST /api/devices/{device_id}/revoke`.
#[utoipa::path(
    post,
    operation_id = "revoke_device",
    path = "/devices/{device_id}/revoke",
    tag = "devices",
    params(("device_id" = String, Path)),
    responses(
        (status = 200, description = "The device, now `revoked`; its sessions ended", body = crate::device::Device),
        BadRequest, Unauthorized, Forbidden, NotFound
    )
)]
pub async fn revoke(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<Json<Device>> {
    Ok(Json(s.runtime.revoke_device(&p, &id).await?))
}
