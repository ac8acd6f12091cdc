//! A connection's client messages: decoding them into ops, the ones
//! answered at once, and the ones that run on a task of their own and
//! answer through the connection's inbox.

use std::panic::AssertUnwindSafe;

use futures_util::FutureExt;
use tracing::Instrument;

use super::{Exit, Session};
use crate::bus::Item;
use crate::error::{Error, Result};
use crate::event::StreamKey;
use crate::protocol::ws::{ClientOp, FrameId, SubscribeReply, parse_frame, reply_err, reply_ok};
use crate::runtime::AckTo;
use crate::ws::dispatch::dispatch;
use crate::ws::frame::{Frame, Incoming, OpCode};

impl Session {
    /// Handle one client message; false to stop reading.
    pub(super) fn message(&mut self, m: Incoming<'_>) -> bool {
        match m {
            Incoming::Text(text) => self.text(text),
            Incoming::Binary(_) => {
                let e = Error::BadRequest("binary frames are not supported; send JSON text".into());
                self.outgoing.push(reply_err(&None, &e));
            }
            Incoming::Ping(p) => self.outgoing.push(Frame::control(OpCode::Pong, p)),
            Incoming::Pong => {}
            Incoming::Close(code) => {
                self.exit.get_or_insert(Exit::Echo(code));
            }
        }
        self.exit.is_none() && self.inflight < self.max_inflight
    }

    fn text(&mut self, text: &str) {
        let (id, op) = parse_frame(text);
        if !self.frames.allow() {
            metrics::counter!("switchboard_rate_limited_total", "what" => "frames").increment(1);
            let e = Error::RateLimited {
                message: format!(
                    "at most {} frames a second per connection",
                    self.state.runtime.security().frames_per_second
                ),
                retry_after: 1,
            };
            return self.outgoing.push(reply_err(&id, &e));
        }
        let op = match op {
            Ok(op) => op,
            Err(e) => return self.outgoing.push(reply_err(&id, &e)),
        };
        metrics::counter!("switchboard_ws_ops_total", "op" => op.name()).increment(1);
        match op {
            ClientOp::Hello(_) => {
                let e = Error::BadRequest("this connection already said hello".into());
                self.outgoing.push(reply_err(&id, &e));
            }
            ClientOp::Ping {} => self
                .outgoing
                .push(reply_ok(&id, &serde_json::json!({"pong": true}))),
            ClientOp::Subscribe { stream, after_seq } => self.subscribe(id, &stream, after_seq),
            ClientOp::Unsubscribe { stream } => {
                if let Ok(key) = stream.parse::<StreamKey>() {
                    self.follower.remove(key);
                    self.state.runtime.bus().unsubscribe(key, &self.inbox);
                }
                self.outgoing.push(reply_ok(&id, &serde_json::json!({})));
            }
            op => self.spawn_op(id, op),
        }
    }

    /// Start a `subscribe`: checked and registered on the bus by an op,
    /// whose [`Item::Subscribed`] then sets the stream's position here.
    fn subscribe(&mut self, id: FrameId, stream: &str, after_seq: Option<i64>) {
        let key: StreamKey = match stream.parse() {
            Ok(k) => k,
            Err(e) => return self.outgoing.push(reply_err(&id, &Error::BadRequest(e))),
        };
        if !self.follower.contains(key) && self.follower.len() + self.pending_subs >= self.max_subs
        {
            let e = Error::BadRequest(format!(
                "at most {} subscriptions per connection",
                self.max_subs
            ));
            return self.outgoing.push(reply_err(&id, &e));
        }
        self.inflight += 1;
        self.pending_subs += 1;
        let (rt, p, inbox) = (
            self.state.runtime.clone(),
            self.principal.clone(),
            self.inbox.clone(),
        );
        self.state.connections.spawn(async move {
            let item = match rt.subscribe_inbox(&p, key, after_seq, &inbox).await {
                Ok((after, last_seq, earliest_seq)) => {
                    let reply = SubscribeReply {
                        stream: key.to_string(),
                        last_seq,
                        earliest_seq,
                    };
                    Item::Subscribed {
                        key,
                        after: Some(after),
                        reply: reply_ok(&id, &reply),
                    }
                }
                // Nothing was registered: the stream stays unfollowed.
                Err(e) => Item::Subscribed {
                    key,
                    after: None,
                    reply: reply_err(&id, &e),
                },
            };
            inbox.push(item);
        });
    }

    /// Run an op on its own task; its reply comes back through the inbox.
    fn spawn_op(&mut self, id: FrameId, op: ClientOp) {
        self.inflight += 1;
        let (rt, p, inbox) = (
            self.state.runtime.clone(),
            self.principal.clone(),
            self.inbox.clone(),
        );
        let session_id = self.session_id;
        let name = op.name();
        let span = tracing::debug_span!("op", op = name, id = ?id, session = %session_id);
        self.state.connections.spawn(
            async move {
                let ack = AckTo {
                    inbox: inbox.clone(),
                    id: id.clone(),
                };
                let handler = dispatch(&rt, &p, session_id, op, ack);
                if let Some(frame) = answer(&id, name, handler).await {
                    inbox.push(Item::Reply(frame));
                }
            }
            .instrument(span),
        );
    }
}

/// The one reply to a request: its result, its error, or `internal` when
/// the handler panicked (the panic stays in this task; the connection and
/// the node go on). `None` when the handler replied itself.
async fn answer(
    id: &FrameId,
    op: &str,
    handler: impl std::future::Future<Output = Result<Option<serde_json::Value>>>,
) -> Option<Frame> {
    match AssertUnwindSafe(handler).catch_unwind().await {
        Ok(Ok(v)) => v.map(|v| reply_ok(id, &v)),
        Ok(Err(e)) => Some(reply_err(id, &e)),
        Err(_) => {
            tracing::error!(op, id = ?id, "op handler panicked");
            Some(reply_err(id, &Error::Internal))
        }
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
        let frame = answer(&id, "test", async { panic!("secret detail") })
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(frame.payload_str()).unwrap();
        assert_eq!(v["id"], "req-7");
        assert_eq!(v["ok"], false);
        assert_eq!(v["error"]["code"], "internal");
        assert!(!frame.payload_str().contains("secret detail"));
        let ok = answer(&id, "test", async { Ok(Some(serde_json::json!({"x": 1}))) }).await;
        assert!(ok.unwrap().payload_str().contains(r#""ok":true"#));
        assert!(answer(&id, "test", async { Ok(None) }).await.is_none());
    }
}
