//! An echo endpoint over the node's own WebSocket layer: the same upgrade
//! answer, frame decoder, limits, ping and close handling as `GET /ws`,
//! without `hello` or ops. It exists for the Autobahn TestSuite
//! (`examples/autobahn_echo.rs`, `.ci/autobahn`), which needs an endpoint
//! that sends every message back.

use std::convert::Infallible;
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use hyper::body::Incoming as Body;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};

use super::frame::{Frame, Incoming, OpCode};
use super::hello::send_close;
use super::io::{Io, ReadEnd};

/// Serve echo connections on `listener` with messages up to `max_message`
/// bytes, until the process ends.
pub async fn serve(listener: TcpListener, max_message: usize) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(connection(stream, max_message));
    }
}

/// One HTTP connection: the upgrade, then the echo loop.
async fn connection(stream: TcpStream, max_message: usize) {
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Body>| async move {
        Ok::<_, Infallible>(upgrade(&mut req, max_message))
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades()
        .await;
}

/// Answer the upgrade as the node does and echo on the upgraded socket.
fn upgrade(req: &mut hyper::Request<Body>, max_message: usize) -> Response {
    let accept = match super::upgrade::upgrade_key(req.headers()) {
        Ok(key) => tungstenite::handshake::derive_accept_key(key),
        Err(e) => return e.into_response(),
    };
    let Some(on_upgrade) = req.extensions_mut().remove::<hyper::upgrade::OnUpgrade>() else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        if let Ok(parts) = upgraded.downcast::<TokioIo<TcpStream>>() {
            let io = Io::new(parts.io.into_inner(), parts.read_buf, max_message);
            echo(io).await;
        }
    });
    super::switching_protocols(&accept)
}

/// Send every message back until the peer closes or breaks the protocol.
async fn echo(mut io: Io) {
    loop {
        let mut closed = None;
        let mut replies = Vec::new();
        let read = io
            .read(&mut |m| {
                match m {
                    Incoming::Text(t) => replies.push(Frame::text(t)),
                    Incoming::Binary(b) => replies.push(Frame::binary(b)),
                    Incoming::Ping(p) => replies.push(Frame::control(OpCode::Pong, p)),
                    Incoming::Pong => {}
                    Incoming::Close(code) => closed = Some(code),
                }
                closed.is_none()
            })
            .await;
        for frame in &replies {
            io.queue(frame);
        }
        if let Some(code) = closed {
            // Echo the peer's close, as the node does.
            let frame = match code {
                Some(c) => Frame::close(c, ""),
                None => Frame::control(OpCode::Close, b""),
            };
            io.queue(&frame);
            let _ = tokio::time::timeout(Duration::from_secs(1), io.flush()).await;
            io.shutdown().await;
            return;
        }
        match read {
            Ok(()) => {
                if io.flush().await.is_err() {
                    return;
                }
            }
            Err(ReadEnd::Gone) => return,
            Err(ReadEnd::Decode(e)) => {
                let (code, reason) = e.close();
                send_close(&mut io, code, reason).await;
                return;
            }
        }
    }
}
