//! One remote host's WebSocket at `GET /link`: the `hello` handshake, then
//! a loop that forwards the host's reports to the drivers of its tasks and
//! writes the node's frames (`run`, `cancel`, `answer`, `ack`).
//!
//! Reports are read one at a time and handed to their task's driver over a
//! bounded queue, so a host that produces faster than the store commits is
//! slowed down by TCP, not buffered without bound.

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{LinkTx, Linking, OUTBOX};
use crate::app::AppState;
use crate::audit::kind;
use crate::auth::Principal;
use crate::error::Error;
use crate::protocol::link::{
    HostFrame, LINK_PROTOCOL, LinkError, LinkHello, NodeFrame, UNTRUSTED_CODE, Welcome, close,
    parse_host_frame,
};
use crate::rbac::Permission;
use crate::runtime::hosts::Admission;

type Tx = SplitSink<WebSocket, Message>;
type Rx = SplitStream<WebSocket>;

/// Why the loop ended: a close code (0: none to send) and a reason.
type End = (u16, &'static str);

async fn send_frame(tx: &mut Tx, frame: &NodeFrame) -> Result<(), End> {
    let text = serde_json::to_string(frame).map_err(|_| (1011, "cannot encode"))?;
    tx.send(Message::Text(text.into()))
        .await
        .map_err(|_| (0, "peer gone"))
}

async fn send_close(tx: &mut Tx, code: u16, reason: &str) {
    let frame = CloseFrame {
        code,
        reason: Utf8Bytes::from(reason.chars().take(100).collect::<String>()),
    };
    let _ = tx.send(Message::Close(Some(frame))).await;
    let _ = tx.close().await;
}

/// Send an `error` frame, then close with `code`.
async fn refuse(tx: &mut Tx, error: LinkError, code: u16) {
    let reason = error.code.clone();
    let _ = send_frame(
        tx,
        &NodeFrame::Error {
            task_id: None,
            error,
        },
    )
    .await;
    send_close(tx, code, &reason).await;
}

/// The close code for a refused `hello`.
fn close_code(e: &Error) -> u16 {
    match e.code() {
        "unauthorized" | "device_proof_failed" => close::UNAUTHORIZED,
        "forbidden" => close::FORBIDDEN,
        "conflict" => close::REPLACED,
        "rate_limited" => close::FLOOD,
        _ => close::BAD_HELLO,
    }
}

/// Read the `hello`, within the hello timeout.
async fn read_hello(state: &AppState, tx: &mut Tx, rx: &mut Rx) -> Option<LinkHello> {
    let wait = Duration::from_millis(state.runtime.limits().hello_timeout_ms);
    let deadline = Instant::now() + wait;
    loop {
        let msg = match tokio::time::timeout_at(deadline, rx.next()).await {
            Err(_) => {
                send_close(tx, close::HELLO_TIMEOUT, "no hello in time").await;
                return None;
            }
            Ok(None | Some(Err(_)) | Some(Ok(Message::Close(_)))) => return None,
            Ok(Some(Ok(m))) => m,
        };
        let Message::Text(text) = msg else {
            if matches!(msg, Message::Binary(_)) {
                let e = Error::BadRequest("send a JSON text `hello` frame first".into());
                refuse(tx, (&e).into(), close::BAD_HELLO).await;
                return None;
            }
            continue;
        };
        let e = match parse_host_frame(text.as_str()) {
            Ok(HostFrame::Hello(h)) => return Some(h),
            Ok(_) => Error::BadRequest("say `hello` first".into()),
            Err(e) => e,
        };
        refuse(tx, (&e).into(), close::BAD_HELLO).await;
        return None;
    }
}

/// Serve one upgraded `/link` socket until it closes.
pub async fn run(
    socket: WebSocket,
    state: AppState,
    header_token: Option<String>,
    peer: SocketAddr,
) {
    let (mut tx, mut rx) = socket.split();
    let Some(hello) = read_hello(&state, &mut tx, &mut rx).await else {
        return;
    };
    let token = hello.token.clone().or(header_token);
    let Some(p) = admit(&state, &mut tx, token.as_deref(), peer, &hello).await else {
        return;
    };
    let span = tracing::info_span!("link", host = %hello.name, user = %p.user_id);
    let Some((mut conn, welcome)) = attach(&state, tx, rx, p, token, &hello).await else {
        return;
    };
    tracing::Instrument::instrument(
        async move {
            let end = match send_frame(&mut conn.tx, &welcome).await {
                Ok(()) => conn.serve().await,
                Err(end) => end,
            };
            conn.finish(end).await;
        },
        span,
    )
    .await;
}

/// Check the token, the permission and the device; refuse (and close) when
/// any fails.
async fn admit(
    state: &AppState,
    tx: &mut Tx,
    token: Option<&str>,
    peer: SocketAddr,
    hello: &LinkHello,
) -> Option<Principal> {
    let admitted = state
        .runtime
        .admit_host(token, Some(peer.to_string()), hello)
        .await;
    match admitted {
        Ok(Admission::Admitted(p)) => Some(p),
        Ok(Admission::Untrusted(p)) => {
            let device = p.device_id.clone().unwrap_or_default();
            let error = LinkError {
                code: UNTRUSTED_CODE.into(),
                message: format!(
                    "device `{device}` waits for approval: an admin runs `switchboard device approve {device}`"
                ),
            };
            refuse(tx, error, close::UNTRUSTED).await;
            None
        }
        Err(e) => {
            refuse(tx, (&e).into(), close_code(&e)).await;
            None
        }
    }
}

/// Register the host (audited) and build its connection and `welcome`.
async fn attach(
    state: &AppState,
    mut tx: Tx,
    rx: Rx,
    p: Principal,
    token: Option<String>,
    hello: &LinkHello,
) -> Option<(Conn, NodeFrame)> {
    let rt = &state.runtime;
    let hosts = rt.host_registry();
    let conn_id = hosts.next_conn_id();
    let (out_tx, out_rx) = mpsc::channel(OUTBOX);
    let link = LinkTx::new(conn_id, out_tx);
    let closer = link.close.clone();
    let linking = Linking {
        name: hello.name.clone(),
        user_id: p.user_id.clone(),
        device_id: p.device_id.clone(),
        offers: hello.agents.clone(),
        running: hello.running.clone(),
    };
    let resume = match hosts.link(linking, link) {
        Ok(r) => r,
        Err(e) => {
            refuse(&mut tx, (&e).into(), close_code(&e)).await;
            return None;
        }
    };
    let agents: Vec<&str> = hello.agents.iter().map(|o| o.agent_type.as_str()).collect();
    let details = [("agents", json!(agents)), ("resumed", json!(resume.len()))];
    rt.audit_host(&p, kind::HOST_LINKED, &hello.name, &details)
        .await;
    tracing::info!(host = %hello.name, user = %p.user_id, "host linked");
    let welcome = NodeFrame::Welcome(Welcome {
        host: hello.name.clone(),
        user_id: p.user_id.clone(),
        node_id: rt.node_id().to_owned(),
        grace_ms: hosts.grace().as_millis() as u64,
        heartbeat_ms: rt.limits().heartbeat_ms,
        max_message_bytes: rt.limits().max_message_bytes,
        resume,
        protocol: LINK_PROTOCOL,
    });
    let conn = Conn {
        state: state.clone(),
        p,
        name: hello.name.clone(),
        conn_id,
        token,
        frames: rt.throttle().frame_limiter(),
        pace: pace(rt.link_config().frames_per_second),
        out_rx,
        closer,
        tx,
        rx,
        leaving: false,
        last_seen: Instant::now(),
    };
    Some((conn, welcome))
}

struct Conn {
    state: AppState,
    p: Principal,
    name: String,
    conn_id: u64,
    token: Option<String>,
    /// Refused frames; past this budget the link is closed.
    frames: crate::throttle::FrameLimiter,
    /// Every frame; past this rate reading slows down.
    pace: governor::DefaultDirectRateLimiter,
    out_rx: mpsc::Receiver<NodeFrame>,
    closer: tokio_util::sync::CancellationToken,
    tx: Tx,
    rx: Rx,
    /// The host said `bye`.
    leaving: bool,
    last_seen: Instant,
}

impl Conn {
    /// Close with the end's code, unlink the host (it stays for the grace
    /// period unless it said `bye`), and audit it.
    async fn finish(mut self, end: End) {
        if end.0 != 0 {
            send_close(&mut self.tx, end.0, end.1).await;
        }
        let rt = self.state.runtime.clone();
        let current = rt
            .host_registry()
            .unlink(&self.name, self.conn_id, self.leaving);
        let details = [
            ("reason", json!(end.1)),
            ("leaving", json!(self.leaving)),
            ("replaced", json!(!current)),
        ];
        rt.audit_host(&self.p, kind::HOST_UNLINKED, &self.name, &details)
            .await;
        tracing::info!(reason = end.1, "host unlinked");
    }

    async fn serve(&mut self) -> End {
        let period = Duration::from_millis(self.state.runtime.limits().heartbeat_ms.max(10));
        let mut heartbeat = tokio::time::interval_at(Instant::now() + period, period);
        let shutdown = self.state.shutdown.clone();
        let closer = self.closer.clone();
        loop {
            let step = tokio::select! {
                _ = shutdown.cancelled() => Err((close::GOING_AWAY, "node shutting down")),
                _ = closer.cancelled() => Err((close::REPLACED, "replaced by a newer link, or too slow")),
                Some(frame) = self.out_rx.recv() => send_frame(&mut self.tx, &frame).await,
                msg = self.rx.next() => self.incoming(msg).await,
                _ = heartbeat.tick() => self.tick(period).await,
            };
            if let Err(end) = step {
                return end;
            }
        }
    }

    async fn tick(&mut self, period: Duration) -> Result<(), End> {
        if self.last_seen.elapsed() > 2 * period {
            return Err((close::GOING_AWAY, "heartbeat timeout"));
        }
        // A revoked or expired token, a user who lost `agent:configure` or
        // a revoked device ends the link at the next beat.
        if let Some(t) = self.token.as_deref() {
            let hash = crate::auth::hash_token(t.trim());
            let now = crate::event::now();
            match self.state.runtime.store().user_by_token(&hash, now).await {
                Ok(None) => return Err((close::UNAUTHORIZED, "token revoked or expired")),
                Ok(Some(user)) if !user.permissions().contains(&Permission::AgentConfigure) => {
                    return Err((close::FORBIDDEN, "agent:configure was taken away"));
                }
                // A store hiccup is no reason to drop a host.
                Ok(Some(_)) | Err(_) => {}
            }
        }
        if let Some(device) = self.p.device_id.as_deref() {
            let found = self.state.runtime.store().get_device(device).await;
            if let Ok(Some(d)) = found {
                if d.state == crate::device::DeviceState::Revoked {
                    return Err((close::FORBIDDEN, "the host's device was revoked"));
                }
            }
        }
        self.tx
            .send(Message::Ping(Default::default()))
            .await
            .map_err(|_| (0, "peer gone"))
    }

    async fn incoming(&mut self, msg: Option<Result<Message, axum::Error>>) -> Result<(), End> {
        self.last_seen = Instant::now();
        let text = match msg {
            None | Some(Ok(Message::Close(_))) => return Err((0, "closed by the host")),
            Some(Err(e)) => return Err(read_error(e)),
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Binary(_))) => {
                let e = Error::BadRequest("binary frames are not supported; send JSON text".into());
                return self.error(None, &e).await;
            }
            Some(Ok(_)) => return Ok(()),
        };
        if self.pace.check().is_err() {
            metrics::counter!("switchboard_rate_limited_total", "what" => "link_pace").increment(1);
            self.pace.until_ready().await;
        }
        match parse_host_frame(text.as_str()) {
            Err(e) => self.error(None, &e).await,
            Ok(HostFrame::Hello(_)) => {
                let e = Error::BadRequest("this link already said hello".into());
                self.error(None, &e).await
            }
            Ok(HostFrame::Bye {}) => {
                self.leaving = true;
                Ok(())
            }
            Ok(HostFrame::Report(report)) => self.report(report).await,
        }
    }

    async fn report(&mut self, report: crate::protocol::link::Report) -> Result<(), End> {
        let hosts = self.state.runtime.host_registry().clone();
        match hosts.accept(&self.name, self.conn_id, &report) {
            Ok(Some(driver)) => {
                // A driver that has ended (the task was cancelled) drops it.
                let _ = driver.send((report.n, report.body)).await;
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(e) => {
                if matches!(e, Error::Forbidden(_)) {
                    let rt = self.state.runtime.clone();
                    rt.audit_foreign_report(&self.p, &self.name, report.task_id)
                        .await;
                }
                self.error(Some(report.task_id), &e).await
            }
        }
    }

    /// Refuse a frame with an `error`; a host that keeps sending refused
    /// frames faster than `[security] frames_per_second` is cut off.
    async fn error(&mut self, task_id: Option<uuid::Uuid>, e: &Error) -> Result<(), End> {
        if !self.frames.allow() {
            metrics::counter!("switchboard_rate_limited_total", "what" => "link_frames")
                .increment(1);
            return Err((close::FLOOD, "too many refused frames a second"));
        }
        let frame = NodeFrame::Error {
            task_id,
            error: e.into(),
        };
        send_frame(&mut self.tx, &frame).await
    }
}

/// A limiter letting `per_second` frames through a second, in bursts of
/// up to a second's worth.
fn pace(per_second: u32) -> governor::DefaultDirectRateLimiter {
    let rate = std::num::NonZeroU32::new(per_second.max(1)).unwrap_or(std::num::NonZeroU32::MIN);
    governor::RateLimiter::direct(governor::Quota::per_second(rate))
}

/// The close code for a read error.
fn read_error(e: axum::Error) -> End {
    let inner = e.into_inner();
    match inner.downcast_ref::<tungstenite::Error>() {
        Some(tungstenite::Error::Capacity(_)) => (1009, "message too big"),
        Some(tungstenite::Error::Utf8(_)) => (1007, "invalid UTF-8"),
        Some(tungstenite::Error::Protocol(_)) => (1002, "protocol error"),
        _ => (0, "read error"),
    }
}
