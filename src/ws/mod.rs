//! WebSocket protocol v1 at `GET /ws`: the upgrade ([`upgrade`]), the
//! framing ([`frame`]), the first message ([`hello`]), the per-connection
//! loop ([`connection`] over [`io`]) and the op dispatcher ([`dispatch`]).
//!
//! A fresh connection that opens with the upgrade is answered by the node
//! itself ([`upgrade`]); otherwise hyper parses the upgrade request, and
//! after the `101` the node takes the TCP socket back from hyper. Either
//! way it runs its own framing on the socket (see [`frame`] for why).

mod connection;
mod dispatch;
pub mod echo;
pub mod frame;
mod heartbeat;
mod hello;
mod io;
pub mod upgrade;

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
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
    let valid = match upgrade::check(req.headers(), &state.runtime.security().allowed_origins) {
        Ok(valid) => valid,
        Err(upgrade::Refused::Origin) => {
            metrics::counter!("switchboard_ws_origin_refused_total").increment(1);
            tracing::warn!(%peer, origin = ?req.headers().get(header::ORIGIN), "WebSocket upgrade from a foreign origin refused");
            return Error::Forbidden("this origin may not open a WebSocket to this node".into())
                .into_response();
        }
        Err(upgrade::Refused::Bad(e)) => return e.into_response(),
    };
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
                connection::run(stream, parts.read_buf, state, valid.token, peer).await;
            }
            Err(_) => tracing::error!("upgraded connection is not a TCP stream"),
        }
    };
    tracker.spawn(outer);
    switching_protocols(&valid.accept)
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
