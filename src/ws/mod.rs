//! WebSocket protocol v1 at `GET /ws`: the upgrade ([`upgrade`]), the
//! per-connection loop ([`connection`]) and the op dispatcher ([`dispatch`]).

mod connection;
mod dispatch;

use std::net::SocketAddr;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, State};
use axum::http::HeaderMap;
use axum::response::Response;

use crate::app::AppState;

/// Read buffer per connection. tungstenite's default of 128 KiB costs about
/// 137 KB per idle session; 4 KiB costs about 6 KB.
const READ_BUFFER: usize = 4 * 1024;
/// Bytes buffered before a write goes to the socket.
const WRITE_BUFFER: usize = 4 * 1024;

/// WebSocket close codes of protocol v1.
pub mod close {
    /// The node is going away.
    pub const GOING_AWAY: u16 = 1001;
    /// A text frame was not UTF-8.
    pub const INVALID_DATA: u16 = 1007;
    /// A message was larger than `max_message_bytes`.
    pub const TOO_BIG: u16 = 1009;
    /// Unexpected server error.
    pub const INTERNAL: u16 = 1011;
    /// No valid `hello`, or the token was revoked.
    pub const UNAUTHORIZED: u16 = 4401;
    /// No `hello` in time.
    pub const HELLO_TIMEOUT: u16 = 4408;
    /// The client fell too far behind; resume with `after_seq`.
    pub const TOO_SLOW: u16 = 4409;
    /// The user has too many open connections.
    pub const TOO_MANY: u16 = 4429;
}

/// Whether a browser `Origin` may open a socket: the node's own origin
/// (same host as the `Host` header) or one listed in
/// `[security] allowed_origins`, compared exactly. Clients that send no
/// `Origin` (non-browsers) are allowed and authenticate by token as usual.
fn origin_allowed(headers: &HeaderMap, allowed: &[String]) -> bool {
    let Some(origin) = headers.get(axum::http::header::ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    if allowed.iter().any(|a| a == origin) {
        return true;
    }
    let host = headers
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    !host.is_empty() && (origin == format!("http://{host}") || origin == format!("https://{host}"))
}

/// `GET /ws`.
pub async fn upgrade(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    if !origin_allowed(&headers, &state.runtime.security().allowed_origins) {
        metrics::counter!("switchboard_ws_origin_refused_total").increment(1);
        tracing::warn!(%peer, origin = ?headers.get(axum::http::header::ORIGIN), "WebSocket upgrade from a foreign origin refused");
        let e = crate::error::Error::Forbidden(
            "this origin may not open a WebSocket to this node".into(),
        );
        return axum::response::IntoResponse::into_response(e);
    }
    let max = state.runtime.limits().max_message_bytes;
    let header_token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    ws.read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        // The library's default is unbounded; a stuck peer must not grow us.
        .max_write_buffer_size(WRITE_BUFFER + 2 * max)
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| {
            let tracker = state.connections.clone();
            tracker.track_future(connection::run(socket, state, header_token, peer))
        })
}
