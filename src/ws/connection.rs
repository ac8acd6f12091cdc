//! One WebSocket connection: the `hello` handshake, then a loop that reads
//! client frames, runs ops concurrently (bounded), and writes replies and
//! stream events, feeding every frame that is ready and flushing once.
//!
//! Memory per connection is bounded: the socket buffers are set explicitly,
//! at most `max_inflight_ops` ops run at once (reading stops while they do),
//! and stream events come from [`Cursor`]s, which fall back to the store
//! rather than queueing when this client is slow.

use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::stream::{BoxStream, SplitSink, SplitStream};
use futures_util::{FutureExt, SinkExt, StreamExt, stream};
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;
use tokio_stream::StreamMap;
use tracing::Instrument;
use uuid::Uuid;

use crate::app::AppState;
use crate::bus::{Cursor, Delivery};
use crate::error::{Error, Result};
use crate::event::{StreamKey, now};
use crate::presence::{CloseReason, Registration};
use crate::protocol::CreateSessionRequest;
use crate::protocol::ws::{
    ClientOp, FrameId, HelloReply, PROTOCOL_VERSION, SubscribeReply, parse_frame, reply_err,
    reply_ok,
};
use crate::ws::close;
use crate::ws::dispatch::dispatch;

type Tx = SplitSink<WebSocket, Message>;
type Rx = SplitStream<WebSocket>;

/// Most frames written before one flush.
const MAX_BATCH: usize = 64;

/// Serve one upgraded socket until it closes.
pub async fn run(
    socket: WebSocket,
    state: AppState,
    header_token: Option<String>,
    peer: SocketAddr,
) {
    let (mut tx, mut rx) = socket.split();
    let Some(attached) = handshake(&state, &mut tx, &mut rx, header_token, peer).await else {
        return;
    };
    let p = attached.reg.principal.borrow().clone();
    let span = tracing::info_span!(
        "ws",
        conn = attached.reg.id,
        user = %p.user_id,
        session = %attached.session_id,
        device = p.device_id.as_deref().unwrap_or("-"),
    );
    let id = attached.reg.id;
    let (replies_tx, replies_rx) = mpsc::channel(state.runtime.limits().max_inflight_ops);
    let mut subs = StreamMap::new();
    subs.insert(
        StreamKey::Session(attached.session_id),
        cursor_stream(attached.cursor),
    );
    let conn = Connection {
        frames: state.runtime.throttle().frame_limiter(),
        expires_at: attached.expires_at,
        inflight: Arc::new(Semaphore::new(state.runtime.limits().max_inflight_ops)),
        state: state.clone(),
        reg: attached.reg,
        session_id: attached.session_id,
        subs,
        replies_tx,
        replies_rx,
        tx,
        rx,
        last_seen: Instant::now(),
    };
    conn.serve().instrument(span).await;
    state.runtime.presence().unregister(id);
}

/// What a successful `hello` yields.
struct Attached {
    reg: Registration,
    session_id: Uuid,
    cursor: Cursor,
    /// When the token used in `hello` expires.
    expires_at: Option<chrono::DateTime<chrono::Utc>>,
}

async fn send_close(tx: &mut Tx, code: u16, reason: &str) {
    let frame = CloseFrame {
        code,
        reason: Utf8Bytes::from(reason.chars().take(100).collect::<String>()),
    };
    let _ = tx.send(Message::Close(Some(frame))).await;
    let _ = tx.close().await;
}

/// Refuse the connection: an error reply, then close 4401.
async fn refuse(tx: &mut Tx, id: &FrameId, error: Error) {
    let _ = tx.send(Message::Text(reply_err(id, &error).into())).await;
    send_close(tx, close::UNAUTHORIZED, "hello failed").await;
}

async fn handshake(
    state: &AppState,
    tx: &mut Tx,
    rx: &mut Rx,
    header_token: Option<String>,
    peer: SocketAddr,
) -> Option<Attached> {
    let rt = &state.runtime;
    let deadline = Instant::now() + Duration::from_millis(rt.limits().hello_timeout_ms);
    let text = loop {
        match tokio::time::timeout_at(deadline, rx.next()).await {
            Err(_) => {
                send_close(tx, close::HELLO_TIMEOUT, "no hello in time").await;
                return None;
            }
            Ok(None | Some(Ok(Message::Close(_)))) => return None,
            Ok(Some(Err(e))) => {
                let (code, reason) = classify(e);
                if code != 0 {
                    send_close(tx, code, reason).await;
                }
                return None;
            }
            Ok(Some(Ok(Message::Text(t)))) => break t,
            Ok(Some(Ok(Message::Binary(_)))) => {
                refuse(
                    tx,
                    &None,
                    Error::BadRequest("send a JSON text `hello` frame first".into()),
                )
                .await;
                return None;
            }
            Ok(Some(Ok(_))) => continue,
        }
    };
    let (id, op) = parse_frame(text.as_str());
    let hello = match op {
        Ok(ClientOp::Hello(h)) => h,
        Ok(other) => {
            let e = Error::Unauthorized(format!(
                "`{}` before `hello`: say hello first",
                other.name()
            ));
            refuse(tx, &id, e).await;
            return None;
        }
        Err(e) => {
            refuse(tx, &id, e).await;
            return None;
        }
    };
    let token = hello.token.or(header_token);
    let attach = async {
        let mut p = rt
            .authenticate(token.as_deref(), Some(peer.to_string()))
            .await?;
        let max = rt.security().max_connections_per_user;
        if rt.presence().count_user(&p.user_id) >= max {
            return Err(Error::RateLimited {
                message: format!("at most {max} open connections per user"),
                retry_after: 1,
            });
        }
        let expires_at = match token.as_deref() {
            Some(t) => rt
                .store()
                .token_expiry(&crate::auth::hash_token(t.trim()))
                .await?
                .flatten(),
            None => None,
        };
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
        let session_id = match hello.session_id {
            Some(sid) => rt.attach_session(&p, sid).await?.session_id,
            None => {
                let req = CreateSessionRequest {
                    user_id: None,
                    device_id: hello.device_id.clone(),
                };
                rt.create_session(&p, req).await?.session_id
            }
        };
        let (cursor, last_seq) = rt
            .subscribe(&p, StreamKey::Session(session_id), hello.after_seq)
            .await?;
        Ok((p, session_id, cursor, last_seq, expires_at))
    };
    let (p, session_id, cursor, last_seq, expires_at) = match attach.await {
        Ok(ok) => ok,
        Err(e @ Error::RateLimited { .. }) => {
            let _ = tx.send(Message::Text(reply_err(&id, &e).into())).await;
            send_close(tx, close::TOO_MANY, "too many connections").await;
            return None;
        }
        Err(e) => {
            refuse(tx, &id, e).await;
            return None;
        }
    };
    let reply = HelloReply {
        session_id,
        user_id: p.user_id.clone(),
        roles: p.roles.clone(),
        permissions: p.permissions.clone(),
        last_seq,
        heartbeat_ms: rt.limits().heartbeat_ms,
        max_message_bytes: rt.limits().max_message_bytes,
        protocol: PROTOCOL_VERSION,
    };
    if tx
        .send(Message::Text(reply_ok(&id, &reply).into()))
        .await
        .is_err()
    {
        return None;
    }
    let reg = rt.presence().register(p, session_id, now());
    Some(Attached {
        reg,
        session_id,
        cursor,
        expires_at,
    })
}

/// A cursor as a stream; a store error ends it with that error.
fn cursor_stream(cursor: Cursor) -> BoxStream<'static, Result<Delivery>> {
    stream::unfold(Some(cursor), |cursor| async move {
        let mut cursor = cursor?;
        match cursor.next().await {
            Ok(Some(d)) => Some((Ok(d), Some(cursor))),
            Ok(None) => None,
            Err(e) => Some((Err(e), None)),
        }
    })
    .boxed()
}

/// What woke the loop.
enum Step {
    Close(u16, &'static str),
    Incoming(Option<std::result::Result<Message, axum::Error>>),
    Reply(String),
    Event(Result<Delivery>),
    Tick,
}

struct Connection {
    state: AppState,
    reg: Registration,
    session_id: Uuid,
    subs: StreamMap<StreamKey, BoxStream<'static, Result<Delivery>>>,
    replies_tx: mpsc::Sender<String>,
    replies_rx: mpsc::Receiver<String>,
    inflight: Arc<Semaphore>,
    frames: crate::throttle::FrameLimiter,
    expires_at: Option<chrono::DateTime<chrono::Utc>>,
    tx: Tx,
    rx: Rx,
    last_seen: Instant,
}

impl Connection {
    async fn serve(mut self) {
        let period = Duration::from_millis(self.state.runtime.limits().heartbeat_ms.max(10));
        let mut heartbeat = tokio::time::interval_at(Instant::now() + period, period);
        let shutdown = self.state.shutdown.clone();
        let close_token = self.reg.close.clone();
        // A token that expires ends the connection at that moment.
        let expiry = self.expires_at.map(|at| {
            let left = (at - chrono::Utc::now()).to_std().unwrap_or_default();
            Instant::now() + left
        });
        let token_expired = async move {
            match expiry {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(token_expired);
        loop {
            let step = tokio::select! {
                _ = close_token.cancelled() => match *self.reg.reason.borrow() {
                    Some(CloseReason::Revoked) => Step::Close(close::UNAUTHORIZED, "token revoked"),
                    _ => Step::Close(close::GOING_AWAY, "closing"),
                },
                _ = shutdown.cancelled() => Step::Close(close::GOING_AWAY, "server shutting down"),
                _ = &mut token_expired => Step::Close(close::UNAUTHORIZED, "token expired"),
                Some(frame) = self.replies_rx.recv() => Step::Reply(frame),
                Some((_, event)) = self.subs.next(), if !self.subs.is_empty() => Step::Event(event),
                msg = self.rx.next() => Step::Incoming(msg),
                _ = heartbeat.tick() => Step::Tick,
            };
            let outcome = match step {
                Step::Close(code, reason) => Err((code, reason)),
                Step::Reply(frame) => self.write(Message::Text(frame.into())).await,
                Step::Event(event) => self.write_event(event).await,
                Step::Incoming(msg) => self.incoming(msg).await,
                Step::Tick => {
                    if self.last_seen.elapsed() > 2 * period {
                        tracing::info!("peer silent for two heartbeats; dropping it");
                        Err((close::GOING_AWAY, "heartbeat timeout"))
                    } else {
                        self.write(Message::Ping(Default::default())).await
                    }
                }
            };
            if let Err((code, reason)) = outcome {
                if code != 0 {
                    send_close(&mut self.tx, code, reason).await;
                }
                break;
            }
        }
        // Let in-flight ops finish writing; their replies have nowhere to go.
        self.replies_rx.close();
    }

    /// Feed `first` and whatever else is ready, then flush once.
    async fn write(&mut self, first: Message) -> Result<(), (u16, &'static str)> {
        let gone = (0, "peer gone");
        self.tx.feed(first).await.map_err(|_| gone)?;
        for _ in 0..MAX_BATCH {
            let next = if let Ok(frame) = self.replies_rx.try_recv() {
                Message::Text(frame.into())
            } else if let Some(Some((_, Ok(d)))) = self.subs.next().now_or_never() {
                metrics::counter!("switchboard_events_delivered_total", "transport" => "ws")
                    .increment(1);
                Message::Text(d.frame)
            } else {
                break;
            };
            self.tx.feed(next).await.map_err(|_| gone)?;
        }
        self.tx.flush().await.map_err(|_| gone)
    }

    async fn write_event(&mut self, event: Result<Delivery>) -> Result<(), (u16, &'static str)> {
        match event {
            Ok(d) => {
                metrics::counter!("switchboard_events_delivered_total", "transport" => "ws")
                    .increment(1);
                self.write(Message::Text(d.frame)).await
            }
            // The store could not catch this client up: let it resume.
            Err(e) => {
                tracing::warn!(error = %e, "stream catch-up failed; asking the client to resume");
                Err((close::TOO_SLOW, "resume with after_seq"))
            }
        }
    }

    async fn reply(
        &mut self,
        id: &FrameId,
        result: Result<serde_json::Value>,
    ) -> Result<(), (u16, &'static str)> {
        let frame = match result {
            Ok(v) => reply_ok(id, &v),
            Err(e) => reply_err(id, &e),
        };
        self.write(Message::Text(frame.into())).await
    }

    async fn incoming(
        &mut self,
        msg: Option<std::result::Result<Message, axum::Error>>,
    ) -> Result<(), (u16, &'static str)> {
        self.last_seen = Instant::now();
        let text = match msg {
            None | Some(Ok(Message::Close(_))) => return Err((0, "closed by peer")),
            Some(Err(e)) => return Err(classify(e)),
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Binary(_))) => {
                let e = Error::BadRequest("binary frames are not supported; send JSON text".into());
                return self.reply(&None, Err(e)).await;
            }
            Some(Ok(_)) => return Ok(()),
        };
        let (id, op) = parse_frame(text.as_str());
        if !self.frames.allow() {
            metrics::counter!("switchboard_rate_limited_total", "what" => "frames").increment(1);
            let e = Error::RateLimited {
                message: format!(
                    "at most {} frames a second per connection",
                    self.state.runtime.security().frames_per_second
                ),
                retry_after: 1,
            };
            return self.reply(&id, Err(e)).await;
        }
        let op = match op {
            Ok(op) => op,
            Err(e) => return self.reply(&id, Err(e)).await,
        };
        metrics::counter!("switchboard_ws_ops_total", "op" => op.name()).increment(1);
        match op {
            ClientOp::Hello(_) => {
                let e = Error::BadRequest("this connection already said hello".into());
                self.reply(&id, Err(e)).await
            }
            ClientOp::Ping {} => self.reply(&id, Ok(serde_json::json!({"pong": true}))).await,
            ClientOp::Subscribe { stream, after_seq } => {
                let result = self.subscribe(&stream, after_seq).await;
                self.reply(&id, result).await
            }
            ClientOp::Unsubscribe { stream } => {
                if let Ok(key) = stream.parse::<StreamKey>() {
                    self.subs.remove(&key);
                }
                self.reply(&id, Ok(serde_json::json!({}))).await
            }
            op => {
                self.spawn_op(id, op).await;
                Ok(())
            }
        }
    }

    async fn subscribe(
        &mut self,
        stream: &str,
        after_seq: Option<i64>,
    ) -> Result<serde_json::Value> {
        let key: StreamKey = stream.parse().map_err(Error::BadRequest)?;
        let limit = self.state.runtime.limits().max_subscriptions;
        if !self.subs.contains_key(&key) && self.subs.len() >= limit {
            return Err(Error::BadRequest(format!(
                "at most {limit} subscriptions per connection"
            )));
        }
        let p = self.reg.principal.borrow().clone();
        let (cursor, last_seq) = self.state.runtime.subscribe(&p, key, after_seq).await?;
        // Re-subscribing replaces the old cursor with one at the new position.
        self.subs.insert(key, cursor_stream(cursor));
        serde_json::to_value(SubscribeReply {
            stream: key.to_string(),
            last_seq,
        })
        .map_err(Error::internal)
    }

    /// Run an op on its own task. Waits for a free slot first, which stops
    /// reading from this client while it has too much in flight.
    async fn spawn_op(&mut self, id: FrameId, op: ClientOp) {
        let Ok(permit) = self.inflight.clone().acquire_owned().await else {
            return;
        };
        let rt = self.state.runtime.clone();
        let p = self.reg.principal.borrow().clone();
        let session_id = self.session_id;
        let replies = self.replies_tx.clone();
        let span = tracing::info_span!("op", op = op.name(), id = ?id);
        self.state.connections.spawn(
            async move {
                let frame = answer(&id, dispatch(&rt, &p, session_id, op)).await;
                let _ = replies.send(frame).await;
                drop(permit);
            }
            .instrument(span),
        );
    }
}

/// The one reply to a request: its result, its error, or `internal` when
/// the handler panicked (the panic stays in this task; the connection and
/// the node go on).
async fn answer(
    id: &FrameId,
    handler: impl std::future::Future<Output = Result<serde_json::Value>>,
) -> String {
    match AssertUnwindSafe(handler).catch_unwind().await {
        Ok(Ok(v)) => reply_ok(id, &v),
        Ok(Err(e)) => reply_err(id, &e),
        Err(_) => {
            tracing::error!("op handler panicked");
            reply_err(id, &Error::Internal)
        }
    }
}

/// The close code for a read error.
fn classify(e: axum::Error) -> (u16, &'static str) {
    let inner = e.into_inner();
    match inner.downcast_ref::<tungstenite::Error>() {
        Some(tungstenite::Error::Capacity(_)) => (close::TOO_BIG, "message too big"),
        Some(tungstenite::Error::Utf8(_)) => (close::INVALID_DATA, "invalid UTF-8"),
        Some(tungstenite::Error::Protocol(_)) => (1002, "protocol error"),
        _ => (0, "read error"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A handler that panics still gets exactly one reply, an `internal`
    /// error carrying the request's id and nothing of the panic.
    #[tokio::test]
    async fn a_panicking_handler_gets_an_internal_error_reply() {
        let id = Some(serde_json::json!("req-7"));
        let frame = answer(&id, async { panic!("secret detail") }).await;
        let v: serde_json::Value = serde_json::from_str(&frame).unwrap();
        assert_eq!(v["id"], "req-7");
        assert_eq!(v["ok"], false);
        assert_eq!(v["error"]["code"], "internal");
        assert!(!frame.contains("secret detail"));
        let ok = answer(&id, async { Ok(serde_json::json!({"x": 1})) }).await;
        assert!(ok.contains(r#""ok":true"#));
    }
}
