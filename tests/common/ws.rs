//! A WebSocket client for tests that keeps events apart from replies.

use std::collections::VecDeque;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::WAIT;

/// A WebSocket client that buffers events while waiting for replies.
pub struct WsClient {
    stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    events: VecDeque<Value>,
}

/// How a connection ended.
#[derive(Debug, PartialEq)]
pub enum Closed {
    /// A close frame with this code.
    Code(u16),
    /// The stream ended without one.
    Eof,
}

impl WsClient {
    /// Connect (no hello).
    pub async fn connect(url: &str) -> Self {
        let (stream, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("ws connect");
        WsClient {
            stream,
            next_id: 0,
            events: VecDeque::new(),
        }
    }

    /// Connect and say hello with `token` (and `extra` fields): the client
    /// and the hello's `result`.
    pub async fn hello(url: &str, token: &str, extra: Value) -> (Self, Value) {
        let mut ws = WsClient::connect(url).await;
        let mut hello = json!({"op": "hello", "token": token});
        if let Value::Object(m) = extra {
            for (k, v) in m {
                hello[k] = v;
            }
        }
        let reply = ws.call(hello).await;
        assert_eq!(reply["ok"], true, "hello failed: {reply}");
        (ws, reply["result"].clone())
    }

    /// Send raw text.
    pub async fn send_text(&mut self, text: &str) {
        self.stream
            .send(Message::text(text))
            .await
            .expect("ws send");
    }

    /// Send raw text; an error once the server has closed.
    pub async fn try_send_text(&mut self, text: &str) -> Result<(), String> {
        self.stream
            .send(Message::text(text))
            .await
            .map_err(|e| e.to_string())
    }

    /// Send a raw message.
    pub async fn send_raw(&mut self, msg: Message) {
        self.stream.send(msg).await.expect("ws send");
    }

    /// Read the next JSON frame (any kind).
    pub async fn read(&mut self) -> Value {
        loop {
            let msg = tokio::time::timeout(WAIT, self.stream.next())
                .await
                .expect("timed out waiting for a frame")
                .expect("connection ended")
                .expect("ws error");
            match msg {
                Message::Text(t) => {
                    return serde_json::from_str(t.as_str()).expect("frame is JSON");
                }
                Message::Close(c) => panic!("closed unexpectedly: {c:?}"),
                _ => continue,
            }
        }
    }

    /// Send an op with a fresh id and return its reply (buffering events).
    pub async fn call(&mut self, mut op: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        op["id"] = json!(id);
        self.send_text(&op.to_string()).await;
        self.reply_to(json!(id)).await
    }

    /// Wait for the reply with this id.
    pub async fn reply_to(&mut self, id: Value) -> Value {
        loop {
            let frame = self.read().await;
            match frame["op"].as_str() {
                Some("reply") if frame["id"] == id => return frame,
                Some("event") => self.events.push_back(frame),
                _ => panic!("unexpected frame while waiting for reply {id}: {frame}"),
            }
        }
    }

    /// Send an op and return its `result`, panicking on an error reply.
    pub async fn ok(&mut self, op: Value) -> Value {
        let reply = self.call(op.clone()).await;
        assert_eq!(reply["ok"], true, "{op} failed: {reply}");
        reply["result"].clone()
    }

    /// Events read while waiting for replies, not yet taken.
    pub fn buffered(&self) -> &VecDeque<Value> {
        &self.events
    }

    /// The next event (buffered first).
    pub async fn event(&mut self) -> Value {
        if let Some(e) = self.events.pop_front() {
            return e;
        }
        let frame = self.read().await;
        assert_eq!(
            frame["op"], "event",
            "unexpected frame while waiting for an event: {frame}"
        );
        frame
    }

    /// Events until one matches `done` (inclusive).
    pub async fn events_until(&mut self, mut done: impl FnMut(&Value) -> bool) -> Vec<Value> {
        let mut out = Vec::new();
        loop {
            let e = self.event().await;
            let stop = done(&e);
            out.push(e);
            if stop {
                return out;
            }
        }
    }

    /// Events of one task until it is terminal.
    pub async fn until_terminal(&mut self, task_id: &str) -> Vec<Value> {
        self.events_until(|e| {
            e["task_id"] == task_id
                && e["type"] == "task.state"
                && ["completed", "failed", "cancelled"]
                    .contains(&e["data"]["state"].as_str().unwrap_or(""))
        })
        .await
    }

    /// Wait for the server to close; returns the close code.
    pub async fn closed(&mut self) -> Closed {
        loop {
            match tokio::time::timeout(WAIT, self.stream.next())
                .await
                .expect("timed out waiting for close")
            {
                None | Some(Err(_)) => return Closed::Eof,
                Some(Ok(Message::Close(Some(frame)))) => return Closed::Code(frame.code.into()),
                Some(Ok(Message::Close(None))) => return Closed::Eof,
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(t.as_str()).unwrap_or(Value::Null);
                    if v["op"] == "event" {
                        self.events.push_back(v);
                    }
                }
                Some(Ok(_)) => {}
            }
        }
    }
}

/// The seqs of a list of events.
pub fn seqs(events: &[Value]) -> Vec<i64> {
    events.iter().map(|e| e["seq"].as_i64().unwrap()).collect()
}

/// Assert that `events` are a whole stream from its start: seqs 1 to N.
pub fn assert_gapless(events: &[Value]) {
    let expected: Vec<i64> = (1..=events.len() as i64).collect();
    assert_eq!(seqs(events), expected, "seqs are not 1..=N");
}

/// The states of the `task.state` events among `events`, in order.
pub fn state_names<'a>(events: impl IntoIterator<Item = &'a Value>) -> Vec<&'a str> {
    events
        .into_iter()
        .filter(|e| e["type"] == "task.state")
        .map(|e| e["data"]["state"].as_str().unwrap())
        .collect()
}

/// The chunks of the `task.output` events among `events`, joined.
pub fn output_text<'a>(events: impl IntoIterator<Item = &'a Value>) -> String {
    events
        .into_iter()
        .filter(|e| e["type"] == "task.output")
        .map(|e| e["data"]["chunk"].as_str().unwrap())
        .collect()
}
