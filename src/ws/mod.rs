//! WebSocket protocol v1 at `GET /ws`: the upgrade ([`upgrade`]), the
//! framing ([`frame`]), the first message ([`hello`]), the per-connection
//! loop ([`connection`] over [`io`]) and the op dispatcher ([`dispatch`]).
//!
//! hyper parses the upgrade request; after the `101` the node takes the
//! TCP socket back from hyper and runs its own framing on it (see
//! [`frame`] for why).

mod connection;
mod dispatch;
pub mod echo;
pub mod frame;
mod heartbeat;
mod hello;
mod io;

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::app::AppState;
use crate::error::Error;

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

/// Whether a header holds `token` in its comma-separated list (any case).
fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

/// The `Sec-WebSocket-Key` of a valid upgrade request.
fn upgrade_key(headers: &HeaderMap) -> Result<&HeaderValue, Error> {
    if !has_token(headers, header::CONNECTION, "upgrade")
        || !has_token(headers, header::UPGRADE, "websocket")
    {
        return Err(Error::BadRequest(
            "this is the WebSocket endpoint: send an Upgrade: websocket request".into(),
        ));
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v != "13")
    {
        return Err(Error::BadRequest(
            "only WebSocket version 13 is supported".into(),
        ));
    }
    headers
        .get(header::SEC_WEBSOCKET_KEY)
        .ok_or_else(|| Error::BadRequest("Sec-WebSocket-Key is missing".into()))
}

/// `GET /ws`.
pub async fn upgrade(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    upgrade_request(&state, peer, req)
}

/// Answer a WebSocket upgrade request and, once hyper hands the socket
/// over, serve the connection. (The accept loop calls this directly for
/// `GET /ws`, without the router's layers: a dashboard wall reconnecting
/// opens thousands at once.)
pub fn upgrade_request(state: &AppState, peer: SocketAddr, mut req: Request) -> Response {
    if req.method() != axum::http::Method::GET {
        let mut res = Error::BadRequest("open a WebSocket with GET /ws".into()).into_response();
        *res.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
        return res;
    }
    let headers = req.headers();
    if !origin_allowed(headers, &state.runtime.security().allowed_origins) {
        metrics::counter!("switchboard_ws_origin_refused_total").increment(1);
        tracing::warn!(%peer, origin = ?headers.get(header::ORIGIN), "WebSocket upgrade from a foreign origin refused");
        return Error::Forbidden("this origin may not open a WebSocket to this node".into())
            .into_response();
    }
    let accept = match upgrade_key(headers) {
        Ok(key) => tungstenite::handshake::derive_accept_key(key.as_bytes()),
        Err(e) => return e.into_response(),
    };
    let header_token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let Some(on_upgrade) = req.extensions_mut().remove::<hyper::upgrade::OnUpgrade>() else {
        return Error::BadRequest("this connection cannot be upgraded".into()).into_response();
    };
    let tracker = state.connections.clone();
    let state = state.clone();
    let outer = async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => return tracing::debug!(error = %e, "upgrade failed"),
        };
        // The node serves every connection over a plain `TcpStream`, so
        // this gives the socket back (and what hyper read past the request).
        match upgraded.downcast::<TokioIo<TcpStream>>() {
            Ok(parts) => {
                let stream = parts.io.into_inner();
                connection::run(stream, parts.read_buf, state, header_token, peer).await;
            }
            Err(_) => tracing::error!("upgraded connection is not a TCP stream"),
        }
    };
    tracker.spawn(outer);
    switching_protocols(&accept)
}

/// The `101` answering an upgrade whose key gave `accept`.
fn switching_protocols(accept: &str) -> Response {
    let mut res = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let h = res.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    if let Ok(v) = HeaderValue::from_str(accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    res
}
