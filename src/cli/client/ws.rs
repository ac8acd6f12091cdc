//! [`Ws`]: a WebSocket session with the node that reconnects and resumes
//! by itself (see the parent module for how).

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use futures_util::SinkExt;
use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

use super::frame::{Lost, Socket, read_frame, reply_result};
use super::{Event, ws_url};
use crate::cli::CliError;
use crate::cli::config::{self, Target};
use crate::protocol::ws::HelloReply;

/// Longest pause between reconnect attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long a dropped connection is retried before giving up.
const RETRY_FOR: Duration = Duration::from_secs(300);

/// A WebSocket session with the node that reconnects and resumes by itself.
pub struct Ws {
    target: Target,
    url: String,
    socket: Option<Socket>,
    /// The session `hello` attaches to (learned on the first connect).
    session_id: Option<Uuid>,
    /// Streams subscribed beyond the session's own, in subscription order.
    extra: Vec<String>,
    /// The last seq delivered per stream.
    cursors: BTreeMap<String, i64>,
    /// Events read while waiting for a reply.
    events: VecDeque<Event>,
    next_id: u64,
    hello: Option<HelloReply>,
    /// Whether the session is the user's reusable one, remembered in the
    /// config file (and replaced there when it is renewed).
    reusable: bool,
    /// Say on stderr when the connection drops and comes back.
    pub notices: bool,
}

impl Ws {
    /// Connect and say hello: attach to `session` (from `after_seq` when
    /// given), or open a new session. A first connection that fails is an
    /// error at once; only later drops are retried.
    pub async fn connect(
        target: &Target,
        session: Option<Uuid>,
        after_seq: Option<i64>,
    ) -> Result<Self, CliError> {
        let mut ws = Ws {
            target: target.clone(),
            url: ws_url(&target.url),
            socket: None,
            session_id: session,
            extra: Vec::new(),
            cursors: BTreeMap::new(),
            events: VecDeque::new(),
            next_id: 0,
            hello: None,
            reusable: false,
            notices: true,
        };
        if let (Some(s), Some(after)) = (session, after_seq) {
            ws.cursors.insert(format!("session:{s}"), after);
        }
        ws.open().await?;
        Ok(ws)
    }

    /// Connect in the user's reusable session on this node: the one the
    /// config file remembers for (node, `user_id`), else a new one, which is
    /// then remembered. A remembered session the node no longer knows, that
    /// has ended, or that is not this user's is replaced by a new one.
    pub async fn connect_reusing(target: &Target, user_id: &str) -> Result<Self, CliError> {
        if let Some(sid) = config::remembered_session(&target.url, user_id) {
            match Ws::connect(target, Some(sid), None).await {
                Ok(mut ws) => {
                    ws.reusable = true;
                    return Ok(ws);
                }
                // The node closes the socket after a failed hello; a new
                // connection opens a new session below (`conflict`: the
                // session has ended).
                Err(e) if matches!(e.code(), "not_found" | "conflict") => {}
                Err(e) => return Err(e),
            }
        }
        let mut ws = Ws::connect(target, None, None).await?;
        ws.reusable = true;
        ws.remember();
        Ok(ws)
    }

    /// `task.submit` in this connection's session. A remembered session
    /// that was ended since (the node answers `not_found`: submits need an
    /// active session) is replaced by a new one, and the op sent again.
    pub async fn submit(&mut self, op: Value) -> Result<Value, CliError> {
        match self.call(op.clone()).await {
            Err(e) if e.code() == "not_found" && self.reusable => {
                if self.notices {
                    eprintln!("switchboard: the remembered session has ended; opening a new one");
                }
                self.renew_session().await?;
                self.call(op).await
            }
            other => other,
        }
    }

    /// Move to a new session (remembered in place of the old one).
    async fn renew_session(&mut self) -> Result<(), CliError> {
        if let Some(mut s) = self.socket.take() {
            let _ = s.close(None).await;
        }
        if let Some(old) = self.session_id.take() {
            self.cursors.remove(&format!("session:{old}"));
        }
        self.open().await?;
        self.remember();
        Ok(())
    }

    /// Write the session into the config file for the next command. Reuse
    /// is an economy, not a must: a file that cannot be written costs a
    /// warning, not the command.
    fn remember(&self) {
        let hello = self.hello();
        if let Err(e) =
            config::remember_session(&self.target.url, &hello.user_id, Some(hello.session_id))
        {
            eprintln!("switchboard: warning: cannot remember the session for reuse: {e}");
        }
    }

    /// The `hello` reply of the current connection.
    pub fn hello(&self) -> &HelloReply {
        self.hello.as_ref().expect("connected")
    }

    /// The session this connection is attached to.
    pub fn session_id(&self) -> Uuid {
        self.hello().session_id
    }

    /// Subscribe to another stream, from `after_seq` (else from now), and
    /// keep it subscribed across reconnects. Returns the stream's last seq.
    pub async fn subscribe(
        &mut self,
        stream: &str,
        after_seq: Option<i64>,
    ) -> Result<i64, CliError> {
        if let Some(after) = after_seq {
            self.cursors.insert(stream.to_owned(), after);
        }
        let mut op = json!({"op": "subscribe", "stream": stream});
        if let Some(after) = after_seq {
            op["after_seq"] = json!(after);
        }
        let reply = self.call(op).await?;
        self.pruned(stream, reply["earliest_seq"].as_i64());
        let last = reply["last_seq"].as_i64().unwrap_or(0);
        self.cursors.entry(stream.to_owned()).or_insert(last);
        if !self.extra.iter().any(|s| s == stream) {
            self.extra.push(stream.to_owned());
        }
        Ok(last)
    }

    /// Send an op and wait for its result. If the connection drops first,
    /// reconnect and send it again: callers only use this for ops that are
    /// safe to repeat (submits carry an idempotency key).
    pub async fn call(&mut self, op: Value) -> Result<Value, CliError> {
        loop {
            self.ensure_open().await?;
            match self.try_call(op.clone()).await {
                Ok(reply) => return reply_result(reply, &self.target.url),
                Err(Lost::Fatal(e)) => return Err(e),
                Err(Lost::Dropped(why)) => self.reconnect(&why).await?,
            }
        }
    }

    /// The next event of any subscribed stream, each exactly once and in
    /// order, across reconnects. Cancel-safe: a dropped future loses nothing.
    pub async fn next_event(&mut self) -> Result<Event, CliError> {
        loop {
            if let Some(e) = self.events.pop_front() {
                return Ok(e);
            }
            self.ensure_open().await?;
            let socket = self.socket.as_mut().expect("open");
            match read_frame(socket).await {
                Ok(frame) => self.route(frame),
                Err(Lost::Fatal(e)) => return Err(e),
                Err(Lost::Dropped(why)) => self.reconnect(&why).await?,
            }
        }
    }

    /// Close politely.
    pub async fn close(mut self) {
        if let Some(mut s) = self.socket.take() {
            let _ = s.close(None).await;
        }
    }

    async fn ensure_open(&mut self) -> Result<(), CliError> {
        if self.socket.is_none() {
            self.reconnect("not connected").await?;
        }
        Ok(())
    }

    async fn try_call(&mut self, mut op: Value) -> Result<Value, Lost> {
        self.next_id += 1;
        let id = self.next_id;
        op["id"] = json!(id);
        let socket = self.socket.as_mut().expect("open");
        socket
            .send(Message::text(op.to_string()))
            .await
            .map_err(|e| Lost::Dropped(e.to_string()))?;
        loop {
            let socket = self.socket.as_mut().expect("open");
            let frame = read_frame(socket).await?;
            if frame["op"] == "reply" && frame["id"] == json!(id) {
                return Ok(frame);
            }
            self.route(frame);
        }
    }

    /// Keep an event unless it was already delivered.
    fn route(&mut self, frame: Value) {
        if frame["op"] != "event" {
            return;
        }
        if frame["type"] == "stream.pruned" {
            let stream = frame["stream"].as_str().unwrap_or_default().to_owned();
            return self.pruned(&stream, frame["data"]["earliest_seq"].as_i64());
        }
        let Some(event) = Event::parse(frame) else {
            return;
        };
        let cursor = self.cursors.entry(event.stream.clone()).or_insert(0);
        if event.seq <= *cursor {
            return; // a replayed duplicate
        }
        if event.seq > *cursor + 1 && *cursor > 0 && self.notices {
            eprintln!(
                "switchboard: warning: {} jumped from seq {} to {}",
                event.stream, cursor, event.seq
            );
        }
        *cursor = event.seq;
        self.events.push_back(event);
    }

    /// Events of `stream` before `earliest` were pruned by the node's
    /// retention (a reply's `earliest_seq`, or a `stream.pruned` event): go
    /// on from there, and hand the reader a `stream.pruned` event (seq 0)
    /// to say so, rather than a silent jump.
    fn pruned(&mut self, stream: &str, earliest: Option<i64>) {
        let Some(earliest) = earliest else { return };
        let cursor = self.cursors.entry(stream.to_owned()).or_insert(0);
        if *cursor >= earliest - 1 {
            return;
        }
        *cursor = earliest - 1;
        let raw = json!({"op": "event", "stream": stream, "type": "stream.pruned",
                         "data": {"earliest_seq": earliest}});
        self.events.push_back(Event {
            raw,
            stream: stream.to_owned(),
            seq: 0,
            kind: "stream.pruned".into(),
            task_id: None,
        });
    }

    /// Connect, hello, and re-subscribe; no retries.
    async fn open(&mut self) -> Result<(), CliError> {
        let connector = self
            .target
            .tls
            .clone()
            .map(tokio_tungstenite::Connector::Rustls);
        let (mut socket, _) =
            tokio_tungstenite::connect_async_tls_with_config(&self.url, None, false, connector)
                .await
                .map_err(|e| CliError::unreachable(&self.target.url, &e))?;
        let hello = self.handshake(&mut socket).await?;
        let stream = format!("session:{}", hello.session_id);
        self.pruned(&stream, hello.earliest_seq);
        self.cursors.entry(stream).or_insert(hello.last_seq);
        self.session_id = Some(hello.session_id);
        self.hello = Some(hello);
        self.socket = Some(socket);
        self.resubscribe().await
    }

    /// Say `hello` on a new socket: attach to the session from its cursor,
    /// or open a new one.
    async fn handshake(&self, socket: &mut Socket) -> Result<HelloReply, CliError> {
        let mut hello = json!({"op": "hello", "id": 0, "token": self.target.token});
        if let Some(sid) = self.session_id {
            hello["session_id"] = json!(sid);
            if let Some(after) = self.cursors.get(&format!("session:{sid}")) {
                hello["after_seq"] = json!(after);
            }
        }
        let lost = |l: Lost| match l {
            Lost::Fatal(e) => e,
            Lost::Dropped(why) => CliError::Unreachable {
                url: self.target.url.clone(),
                reason: why,
            },
        };
        socket
            .send(Message::text(hello.to_string()))
            .await
            .map_err(|e| CliError::unreachable(&self.target.url, &e))?;
        let reply = loop {
            let frame = read_frame(socket).await.map_err(lost)?;
            if frame["op"] == "reply" && frame["id"] == json!(0) {
                break frame;
            }
        };
        let result = reply_result(reply, &self.target.url)?;
        serde_json::from_value(result)
            .map_err(|e| CliError::Other(format!("unexpected hello reply: {e}")))
    }

    /// Subscribe again, each from its cursor, to the streams beyond the
    /// session's own.
    async fn resubscribe(&mut self) -> Result<(), CliError> {
        for stream in self.extra.clone() {
            let after = self.cursors.get(&stream).copied();
            let mut op = json!({"op": "subscribe", "stream": stream});
            if let Some(a) = after {
                op["after_seq"] = json!(a);
            }
            match self.try_call(op).await {
                Ok(reply) => {
                    let r = reply_result(reply, &self.target.url)?;
                    self.pruned(&stream, r["earliest_seq"].as_i64());
                }
                Err(Lost::Fatal(e)) => return Err(e),
                Err(Lost::Dropped(why)) => {
                    self.socket = None;
                    return Err(CliError::Unreachable {
                        url: self.target.url.clone(),
                        reason: why,
                    });
                }
            }
        }
        Ok(())
    }

    /// Reconnect with exponential backoff until it works, the error cannot
    /// be fixed by waiting, or [`RETRY_FOR`] has passed.
    async fn reconnect(&mut self, why: &str) -> Result<(), CliError> {
        self.socket = None;
        if self.notices {
            eprintln!("switchboard: connection lost ({why}); reconnecting");
        }
        let deadline = Instant::now() + RETRY_FOR;
        let mut delay = Duration::from_millis(100);
        loop {
            match self.open().await {
                Ok(()) => {
                    if self.notices {
                        eprintln!("switchboard: reconnected; resuming");
                    }
                    return Ok(());
                }
                Err(e) if e.is_transient() && Instant::now() + delay < deadline => {
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(MAX_BACKOFF);
                }
                Err(e) => return Err(e),
            }
        }
    }
}
