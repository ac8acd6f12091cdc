//! One WebSocket connection after `hello`: a single poll loop that reads
//! and decodes client frames, starts ops (bounded), moves events and
//! replies from the connection's [`Inbox`] to the socket, catches streams
//! up from the store when live delivery skipped, and sends heartbeats.
//!
//! Reading never waits for writing: a client that reads slowly still has
//! its frames (and pongs) read, and a socket whose full send buffer drains
//! counts as a live peer. Memory is bounded: at most `max_inflight_ops` ops
//! run at once (reading pauses while they do), the write queue stops taking
//! events past [`OUT_HIGH`] bytes, after which the inbox drops them and the
//! [`Follower`] reads them back from the store once the client has caught up.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::Instrument;
use uuid::Uuid;

use crate::app::AppState;
use crate::auth::Principal;
use crate::bus::{Follower, Inbox, Item};
use crate::event::{StreamKey, now};
use crate::ws::close;
use crate::ws::frame::{Frame, Incoming, OpCode};
use crate::ws::heartbeat::{Beat, Heartbeat};
use crate::ws::hello::{self, send_close};
use crate::ws::io::{Io, ReadEnd};

/// Stop taking events from the inbox past this many queued bytes.
const OUT_HIGH: usize = 256 * 1024;
/// Read from the store (catch-up) only below this many queued bytes.
const OUT_LOW: usize = 64 * 1024;

/// Serve one upgraded socket until it closes: the handshake here, then
/// the connection on a task of its own, whose state is only the
/// connection's (the handshake's futures are large and needed once).
pub async fn run(
    stream: TcpStream,
    leftover: Bytes,
    state: AppState,
    header_token: Option<String>,
    peer: SocketAddr,
) {
    let attached = Box::pin(attach(stream, leftover, &state, header_token, peer)).await;
    if let Some(conn) = attached {
        state.connections.spawn(conn.serve());
    }
}

/// `hello`, then everything the connection's loop needs.
async fn attach(
    stream: TcpStream,
    leftover: Bytes,
    state: &AppState,
    header_token: Option<String>,
    peer: SocketAddr,
) -> Option<Conn> {
    let limits = state.runtime.limits();
    let mut io = Io::new(stream, leftover, limits.max_message_bytes);
    let attached = hello::handshake(&mut io, state, header_token, peer).await?;
    let inbox = Arc::new(Inbox::new(limits.stream_ring));
    let key = StreamKey::Session(attached.session_id);
    state.runtime.bus().subscribe(key, &inbox);
    let mut follower = Follower::new(state.runtime.store().clone());
    match attached.after_seq {
        Some(after) => follower.add(key, after),
        None => follower.add_live(key, attached.last_seq),
    }
    let principal = Arc::new(attached.principal);
    let id = state.runtime.presence().register(
        principal.clone(),
        attached.session_id,
        now(),
        inbox.clone(),
    );
    if state.shutdown.is_cancelled() {
        // The node began to stop while this hello was answered.
        inbox.close(close::GOING_AWAY, "server shutting down");
    }
    let period = Duration::from_millis(limits.heartbeat_ms.max(10));
    let expires = attached
        .expires_at
        .map(|at| Instant::now() + (at - chrono::Utc::now()).to_std().unwrap_or_default());
    Some(Conn {
        io,
        s: Session {
            frames: state.runtime.throttle().frame_limiter(),
            max_inflight: limits.max_inflight_ops,
            max_subs: limits.max_subscriptions,
            state: state.clone(),
            inbox,
            follower,
            principal,
            session_id: attached.session_id,
            id,
            items: VecDeque::new(),
            outgoing: Vec::new(),
            inflight: 0,
            pending_subs: 0,
            heartbeat: Heartbeat::new(period, expires),
            exit: None,
        },
    })
}

/// How the loop ended.
#[derive(Debug)]
enum Exit {
    /// Close with this code and reason.
    Close(u16, &'static str),
    /// The peer sent a close frame (with this code): echo it.
    Echo(Option<u16>),
    /// The peer is gone.
    Gone,
}

struct Conn {
    io: Io,
    s: Session,
}

/// Everything of a connection but its socket.
struct Session {
    state: AppState,
    inbox: Arc<Inbox>,
    follower: Follower,
    principal: Arc<Principal>,
    session_id: Uuid,
    /// The connection's id in presence.
    id: u64,
    /// Drained from the inbox, being handled.
    items: VecDeque<Item>,
    /// Frames produced while decoding (pongs, immediate replies).
    outgoing: Vec<Frame>,
    /// Ops running; their replies are due.
    inflight: usize,
    /// `subscribe` ops running.
    pending_subs: usize,
    max_inflight: usize,
    max_subs: usize,
    frames: crate::throttle::FrameLimiter,
    heartbeat: Heartbeat,
    exit: Option<Exit>,
}

impl Conn {
    /// Run the connection until it closes. (Not an `async fn`: its
    /// argument would be stored twice in the future, once as the argument
    /// and once as the local it is moved into.)
    fn serve(self) -> impl std::future::Future<Output = ()> + Send {
        // Debug level: at the default level a span per socket would cost
        // each idle session about 300 bytes of formatted fields. The few
        // log lines of a connection name its session themselves.
        let span = tracing::debug_span!(
            "ws",
            conn = self.s.id,
            user = %self.s.principal.user_id,
            session = %self.s.session_id,
            device = self.s.principal.device_id.as_deref().unwrap_or("-"),
        );
        let mut conn = self;
        async move {
            let exit = std::future::poll_fn(|cx| conn.poll(cx)).await;
            // Boxed: the goodbye's timers are needed only once.
            Box::pin(conn.finish(exit)).await;
            conn.s.state.runtime.presence().unregister(conn.s.id);
        }
        .instrument(span)
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Exit> {
        for _ in 0..32 {
            let mut busy = self.inbox(cx);
            busy |= self.read(cx);
            busy |= self.fill(cx);
            if let Poll::Ready(Err(_)) = self.io.poll_flush(cx) {
                self.s.exit.get_or_insert(Exit::Gone);
            }
            busy |= self.beat(cx);
            if let Some(exit) = self.s.exit.take() {
                return Poll::Ready(exit);
            }
            if !busy {
                return Poll::Pending;
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Move inbox items to the socket; true when there were any.
    fn inbox(&mut self, cx: &mut Context<'_>) -> bool {
        if self.io.out_bytes >= OUT_HIGH {
            // Backlogged: leave events in the inbox (it drops and flags
            // lag past its bound), but still hear a close request.
            if let Some((code, reason)) = self.s.inbox.close_requested(cx) {
                self.s.exit.get_or_insert(Exit::Close(code, reason));
            }
            return false;
        }
        let drained = self.s.inbox.drain(cx, &mut self.s.items);
        if drained.lagged {
            self.s.follower.lagged();
        }
        if let Some((code, reason)) = drained.close {
            self.s.exit.get_or_insert(Exit::Close(code, reason));
        }
        let busy = !self.s.items.is_empty();
        let mut events = 0u64;
        let io = &mut self.io;
        for item in self.s.items.drain(..) {
            match item {
                Item::Event(key, d) => self.s.follower.live(key, d, &mut |d| {
                    events += 1;
                    io.queue(&d.frame)
                }),
                Item::Reply(frame) => {
                    self.s.inflight -= 1;
                    io.queue(&frame);
                }
                Item::Subscribed { key, after, reply } => {
                    self.s.inflight -= 1;
                    self.s.pending_subs -= 1;
                    if let Some(after) = after {
                        self.s.follower.add(key, after);
                    }
                    io.queue(&reply);
                }
                Item::Principal(p) => self.s.principal = p,
            }
        }
        // An idle connection keeps no buffer.
        self.s.items = VecDeque::new();
        if events > 0 {
            metrics::counter!("switchboard_events_delivered_total", "transport" => "ws")
                .increment(events);
        }
        busy
    }

    /// Read and handle client frames; true when something was read.
    fn read(&mut self, cx: &mut Context<'_>) -> bool {
        if self.s.inflight >= self.s.max_inflight || self.s.exit.is_some() {
            return false;
        }
        let s = &mut self.s;
        // Messages that came with an earlier read but waited for a free
        // op slot go first.
        if let Err(e) = self.io.decode_buffered(&mut |m| s.message(m)) {
            return self.read_ended(Err(e));
        }
        if s.inflight >= s.max_inflight || s.exit.is_some() {
            return true;
        }
        let read = self.io.poll_read(cx, &mut |m| s.message(m));
        for frame in self.s.outgoing.drain(..) {
            self.io.queue(&frame);
        }
        match read {
            Poll::Pending => false,
            Poll::Ready(r) => self.read_ended(r),
        }
    }

    /// Note how a read ended; true (something happened).
    fn read_ended(&mut self, r: std::result::Result<(), ReadEnd>) -> bool {
        for frame in self.s.outgoing.drain(..) {
            self.io.queue(&frame);
        }
        match r {
            Ok(()) => true,
            Err(ReadEnd::Gone) => {
                self.s.exit.get_or_insert(Exit::Gone);
                true
            }
            Err(ReadEnd::Decode(e)) => {
                let (code, reason) = e.close();
                self.s.exit.get_or_insert(Exit::Close(code, reason));
                true
            }
        }
    }

    /// Catch streams up from the store; true when events were queued.
    fn fill(&mut self, cx: &mut Context<'_>) -> bool {
        let start = self.s.follower.needs_fill() && self.io.out_bytes < OUT_LOW;
        if !start && !self.s.follower.is_filling() {
            return false;
        }
        let before = self.io.out_bytes;
        let io = &mut self.io;
        match self.s.follower.poll_fill(cx, &mut |d| io.queue(&d.frame)) {
            Poll::Ready(Err(e)) => {
                tracing::warn!(session = %self.s.session_id, error = %e,
                    "stream catch-up failed; asking the client to resume");
                self.s
                    .exit
                    .get_or_insert(Exit::Close(close::TOO_SLOW, "resume with after_seq"));
                true
            }
            _ => self.io.out_bytes != before,
        }
    }

    /// Heartbeats, the silence deadline and token expiry; true when
    /// something was due.
    fn beat(&mut self, cx: &mut Context<'_>) -> bool {
        let Poll::Ready(beat) = self.s.heartbeat.poll(cx, self.io.last_seen) else {
            return false;
        };
        let exit = match beat {
            Beat::Expired => Exit::Close(close::UNAUTHORIZED, "token expired"),
            Beat::Silent => {
                tracing::info!(session = %self.s.session_id, user = %self.s.principal.user_id,
                    peer = %self.s.principal.peer.as_deref().unwrap_or("-"),
                    "peer silent for two heartbeats; dropping it");
                Exit::Close(close::GOING_AWAY, "heartbeat timeout")
            }
            Beat::Ping => {
                // Ahead of queued events: its pong should not wait for them.
                self.io.queue_first(&Frame::control(OpCode::Ping, b""));
                return true;
            }
        };
        self.s.exit.get_or_insert(exit);
        true
    }

    /// Say goodbye, then forget every subscription.
    async fn finish(&mut self, exit: Exit) {
        match exit {
            Exit::Gone => {}
            Exit::Echo(code) => {
                let frame = match code {
                    Some(c) => Frame::close(c, ""),
                    None => Frame::control(OpCode::Close, b""),
                };
                self.io.queue(&frame);
                let _ = tokio::time::timeout(Duration::from_secs(1), self.io.flush()).await;
                self.io.shutdown().await;
            }
            Exit::Close(code, reason) => {
                if !self.io.mid_write() {
                    self.io.discard_queue();
                }
                send_close(&mut self.io, code, reason).await;
                self.await_peer_close().await;
            }
        }
        self.forget().await;
    }

    /// After our close frame: read (and drop) until the peer's close or EOF.
    async fn await_peer_close(&mut self) {
        let read = async {
            let mut closed = false;
            while !closed {
                let mut on = |m: Incoming<'_>| {
                    closed = matches!(m, Incoming::Close(_));
                    !closed
                };
                if self.io.read(&mut on).await.is_err() {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), read).await;
    }

    /// Unsubscribe everything, including subscriptions still being set up.
    async fn forget(&mut self) {
        let bus = self.s.state.runtime.bus().clone();
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.s.pending_subs > 0 && Instant::now() < deadline {
            let got = tokio::time::timeout_at(
                deadline,
                std::future::poll_fn(|cx| {
                    self.s.inbox.drain(cx, &mut self.s.items);
                    if self.s.items.is_empty() {
                        Poll::Pending
                    } else {
                        Poll::Ready(())
                    }
                }),
            );
            if got.await.is_err() {
                break;
            }
            for item in self.s.items.drain(..) {
                if let Item::Subscribed { key, .. } = item {
                    self.s.pending_subs -= 1;
                    bus.unsubscribe(key, &self.s.inbox);
                }
            }
        }
        for key in self.s.follower.keys() {
            bus.unsubscribe(key, &self.s.inbox);
        }
    }
}

mod ops;
