//! `/api/runtime/hosts`, `/api/runtime/tasks/counts`, and the `/link`
//! upgrade of remote agent hosts (its frames are in `protocol/link.md`).

use std::net::SocketAddr;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, State};
use axum::http::HeaderMap;
use axum::response::Response;

use crate::app::AppState;
use crate::auth::Principal;
use crate::error::Result;
use crate::http::extract::{Json, Query};
use crate::http::responses::{BadRequest, Forbidden, Unauthorized};
use crate::link::HostView;
use crate::runtime::hosts::{CountQuery, TaskCountsView};

/// Bytes buffered before a write to a host goes to the socket.
const WRITE_BUFFER: usize = 16 * 1024;

/// `GET /api/runtime/hosts`.
#[utoipa::path(
    get,
    operation_id = "list_hosts",
    path = "/runtime/hosts",
    tag = "agents",
    responses(
        (status = 200, description = "Remote agent hosts linked to any live node, with the agents each offers", body = Vec<crate::link::HostView>),
        Unauthorized, Forbidden
    )
)]
pub async fn list(State(s): State<AppState>, p: Principal) -> Result<Json<Vec<HostView>>> {
    Ok(Json(s.runtime.hosts(&p).await?))
}

/// `GET /api/runtime/tasks/counts`.
#[utoipa::path(
    get,
    operation_id = "count_tasks",
    path = "/runtime/tasks/counts",
    tag = "tasks",
    params(crate::runtime::hosts::CountQuery),
    responses(
        (status = 200, description = "The caller's visible tasks (everyone's with admin:system) per state", body = crate::runtime::hosts::TaskCountsView),
        BadRequest, Unauthorized, Forbidden
    )
)]
pub async fn counts(
    State(s): State<AppState>,
    p: Principal,
    Query(q): Query<CountQuery>,
) -> Result<Json<TaskCountsView>> {
    Ok(Json(s.runtime.task_counts(&p, q).await?))
}

/// `GET /link`: a remote agent host's WebSocket.
pub async fn upgrade(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let limits = state.runtime.limits();
    let max = limits.max_message_bytes;
    // Room for a `run` frame with the largest prompt, escaped.
    let max_write = WRITE_BUFFER + 2 * (max + limits.max_prompt_bytes);
    let header_token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    ws.max_message_size(max)
        .max_frame_size(max)
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(max_write)
        .on_upgrade(move |socket| {
            let tracker = state.connections.clone();
            tracker.track_future(crate::link::conn::run(socket, state, header_token, peer))
        })
}
