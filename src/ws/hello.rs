//! The first message of a connection: `hello`, which authenticates,
//! admits the device and opens (or attaches to) a session.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Instant;
use uuid::Uuid;

use crate::app::AppState;
use crate::auth::Principal;
use crate::error::{Error, Result};
use crate::protocol::CreateSessionRequest;
use crate::protocol::ws::{ClientOp, FrameId, Hello, HelloReply, PROTOCOL_VERSION, parse_frame};
use crate::protocol::ws::{reply_err, reply_ok};
use crate::ws::close;
use crate::ws::frame::{Frame, Incoming, OpCode};
use crate::ws::io::{Io, ReadEnd};

/// What a successful `hello` yields.
pub(super) struct Attached {
    pub principal: Principal,
    pub session_id: Uuid,
    /// The stream's newest seq at attach time.
    pub last_seq: i64,
    /// Where the client asked to resume, if it did.
    pub after_seq: Option<i64>,
    /// When the token used in `hello` expires.
    pub expires_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// How the first message ended, when it was not a usable `hello`.
enum First {
    Text(String),
    Binary,
    Closed(Option<(u16, &'static str)>),
}

/// Wait for `hello`, answer it, and return the attached session; `None`
/// when the connection ended instead (it has been told why).
pub(super) async fn handshake(
    io: &mut Io,
    state: &AppState,
    header_token: Option<String>,
    peer: SocketAddr,
) -> Option<Attached> {
    let rt = &state.runtime;
    let deadline = Instant::now() + Duration::from_millis(rt.limits().hello_timeout_ms);
    let first = tokio::select! {
        first = first_message(io) => first,
        _ = tokio::time::sleep_until(deadline) => First::Closed(Some((close::HELLO_TIMEOUT, "no hello in time"))),
        _ = state.shutdown.cancelled() => First::Closed(Some((close::GOING_AWAY, "server shutting down"))),
    };
    let text = match first {
        First::Text(t) => t,
        First::Closed(why) => {
            if let Some((code, reason)) = why {
                send_close(io, code, reason).await;
            }
            return None;
        }
        First::Binary => {
            let e = Error::BadRequest("send a JSON text `hello` frame first".into());
            refuse(io, &None, e).await;
            return None;
        }
    };
    let (id, op) = parse_frame(&text);
    let hello = match op {
        Ok(ClientOp::Hello(h)) => h,
        Ok(other) => {
            let e = Error::Unauthorized(format!(
                "`{}` before `hello`: say hello first",
                other.name()
            ));
            refuse(io, &id, e).await;
            return None;
        }
        Err(e) => {
            refuse(io, &id, e).await;
            return None;
        }
    };
    let after_seq = hello.after_seq;
    let attached = match attach(state, hello, header_token, peer).await {
        Ok(a) => a,
        Err(e @ Error::RateLimited { .. }) => {
            io.queue(&reply_err(&id, &e));
            send_close(io, close::TOO_MANY, "too many connections").await;
            return None;
        }
        Err(e) => {
            refuse(io, &id, e).await;
            return None;
        }
    };
    let key = crate::event::StreamKey::Session(attached.session_id);
    let earliest_seq = match rt.earliest_seq(key, after_seq).await {
        Ok(e) => e,
        Err(e) => {
            refuse(io, &id, e).await;
            return None;
        }
    };
    let p = &attached.principal;
    let reply = HelloReply {
        session_id: attached.session_id,
        user_id: p.user_id.clone(),
        roles: p.roles.clone(),
        permissions: p.permissions.clone(),
        last_seq: attached.last_seq,
        heartbeat_ms: rt.limits().heartbeat_ms,
        max_message_bytes: rt.limits().max_message_bytes,
        protocol: PROTOCOL_VERSION,
        earliest_seq,
    };
    io.queue(&reply_ok(&id, &reply));
    io.flush().await.ok()?;
    Some(Attached {
        after_seq: crate::runtime::retention::resume_from(after_seq, earliest_seq),
        ..attached
    })
}

/// Read until the first data message (answering pings meanwhile).
async fn first_message(io: &mut Io) -> First {
    let mut first = None;
    let mut pongs = Vec::new();
    loop {
        let read = io
            .read(&mut |m| {
                match m {
                    Incoming::Text(t) => first = Some(First::Text(t.to_owned())),
                    Incoming::Binary(_) => first = Some(First::Binary),
                    Incoming::Close(_) => first = Some(First::Closed(None)),
                    Incoming::Ping(p) => pongs.push(Frame::control(OpCode::Pong, p)),
                    Incoming::Pong => {}
                }
                first.is_none()
            })
            .await;
        for pong in pongs.drain(..) {
            io.queue(&pong);
        }
        if let Some(first) = first.take() {
            return first;
        }
        match read {
            Ok(()) => {
                if io.flush().await.is_err() {
                    return First::Closed(None);
                }
            }
            Err(ReadEnd::Gone) => return First::Closed(None),
            Err(ReadEnd::Decode(e)) => return First::Closed(Some(e.close())),
        }
    }
}

/// Authenticate, admit the device, and open or attach the session.
async fn attach(
    state: &AppState,
    hello: Hello,
    header_token: Option<String>,
    peer: SocketAddr,
) -> Result<Attached> {
    let rt = &state.runtime;
    let token = hello.token.or(header_token);
    let (mut p, expires_at) = rt
        .authenticate_until(token.as_deref(), Some(peer.to_string()))
        .await?;
    let max = rt.security().max_connections_per_user;
    if rt.presence().count_user(&p.user_id) >= max {
        return Err(Error::RateLimited {
            message: format!("at most {max} open connections per user"),
            retry_after: 1,
        });
    }
    if let Some(d) = &hello.device_id {
        if d.is_empty() || d.len() > 128 {
            return Err(Error::BadRequest(
                "device_id must be 1 to 128 characters".into(),
            ));
        }
    }
    p.device_id = hello.device_id.clone();
    let proof = crate::runtime::devices::Proof {
        nonce: hello.device_nonce.clone(),
        signature: hello.device_signature.clone(),
    };
    let p = rt.admit_device(p, proof).await?;
    let (session_id, last_seq) = match hello.session_id {
        Some(sid) => {
            let s = rt.attach_session(&p, sid).await?;
            (s.session_id, s.last_seq)
        }
        None => {
            let req = CreateSessionRequest {
                user_id: None,
                device_id: hello.device_id.clone(),
            };
            (rt.create_session(&p, req).await?.session_id, 0)
        }
    };
    Ok(Attached {
        principal: p,
        session_id,
        last_seq,
        after_seq: None,
        expires_at,
    })
}

/// Send a close frame and wait (briefly) for it to leave.
pub(super) async fn send_close(io: &mut Io, code: u16, reason: &str) {
    io.queue(&Frame::close(code, reason));
    let _ = tokio::time::timeout(Duration::from_secs(2), io.flush()).await;
    io.shutdown().await;
}

/// Refuse the connection: an error reply, then close 4401.
async fn refuse(io: &mut Io, id: &FrameId, error: Error) {
    io.queue(&reply_err(id, &error));
    send_close(io, close::UNAUTHORIZED, "hello failed").await;
}
