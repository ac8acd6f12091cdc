//! The accept loop: every connection is served by hyper (HTTP/1.1, with
//! upgrades) over the plain `TcpStream`, so that a WebSocket upgrade can
//! take the socket back from hyper (see [`crate::ws`]).
//!
//! What `axum::serve` does, plus: `TCP_NODELAY` on every accepted socket
//! (a small reply must not wait for Nagle's algorithm and a delayed ACK,
//! which cost 40 ms per submit), and the peer address for `ConnectInfo`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::app::AppState;

/// How long a client has to send a request's headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// Serve `app` on `listener` until `stop` fires, then let every HTTP
/// connection finish its request in flight and return. `GET /ws` goes
/// straight to [`crate::ws::upgrade_request`] when hyper serves it.
pub async fn run(listener: TcpListener, app: Router, state: AppState, stop: CancellationToken) {
    // The loop runs as a task of the runtime, not on the thread that
    // awaits `run` (the binary's main thread, outside the worker pool):
    // there, each accepted socket cost two cross-thread wake-ups (the
    // worker that polls the sockets waking the main thread, the spawn
    // waking the worker back).
    let accepting = tokio::spawn(accept_loop(listener, app, state, stop));
    if let Err(e) = accepting.await {
        tracing::error!(error = %e, "the accept loop failed");
    }
}

/// Accept and spawn each connection until `stop`; then wait for them.
async fn accept_loop(listener: TcpListener, app: Router, state: AppState, stop: CancellationToken) {
    let tracker = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.cancelled() => break,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors, most likely: back off a little
                // rather than spin.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        tracker.spawn(serve_connection(
            stream,
            peer,
            app.clone(),
            state.clone(),
            stop.clone(),
        ));
    }
    tracker.close();
    tracker.wait().await;
}

/// One HTTP connection, until it closes, upgrades, or the node stops. A
/// connection that opens with a WebSocket upgrade of `/ws` is answered
/// without hyper (see [`crate::ws::upgrade`]).
async fn serve_connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    app: Router,
    state: AppState,
    stop: CancellationToken,
) {
    let Some(stream) =
        crate::ws::upgrade::serve_fresh(stream, peer, &state, HEADER_TIMEOUT, &stop).await
    else {
        return;
    };
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        let fast = (req.uri().path() == "/ws").then(|| state.clone());
        req.extensions_mut().insert(ConnectInfo(peer));
        let app = app.clone();
        async move {
            let req = req.map(axum::body::Body::new);
            if let Some(state) = fast {
                return Ok(crate::ws::upgrade_request(&state, peer, req));
            }
            let res = app.oneshot(req).await;
            Ok::<_, Infallible>(res.unwrap_or_else(|e| match e {}))
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = stop.cancelled() => {}
    }
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}
