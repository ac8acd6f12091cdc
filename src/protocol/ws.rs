//! WebSocket protocol v1 frames.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::error::{Error, ErrorBody};
use crate::protocol::{RespondRequest, SubmitRequest};
use crate::rbac::{Permission, Role};
use crate::ws::frame::Frame;

mod events;

pub use events::{
    audit_event_frame, event_data, event_frame, publish_session_event, session_event_frame,
    stream_pruned_frame, tasks_event_frame, tasks_lagged_frame,
};

/// The protocol version `hello` answers with.
pub const PROTOCOL_VERSION: u32 = 1;

/// A client frame: an op and its fields. The optional `id` is read separately
/// by [`parse_frame`] so that even a frame with a bad op gets its id echoed.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(tag = "op")]
pub enum ClientOp {
    /// Authenticate and attach to (or open) a session.
    #[serde(rename = "hello")]
    Hello(Hello),
    #[serde(rename = "task.submit")]
    TaskSubmit(SubmitRequest),
    #[serde(rename = "task.cancel")]
    TaskCancel { task_id: Uuid },
    #[serde(rename = "task.respond")]
    TaskRespond {
        task_id: Uuid,
        #[serde(flatten)]
        respond: RespondRequest,
    },
    #[serde(rename = "task.get")]
    TaskGet { task_id: Uuid },
    #[serde(rename = "task.list")]
    TaskList {
        state: Option<String>,
        limit: Option<i64>,
        agent_type: Option<String>,
        session_id: Option<Uuid>,
        after: Option<Uuid>,
    },
    #[serde(rename = "subscribe")]
    Subscribe {
        stream: String,
        after_seq: Option<i64>,
    },
    #[serde(rename = "unsubscribe")]
    Unsubscribe { stream: String },
    #[serde(rename = "agents.list")]
    AgentsList {},
    #[serde(rename = "skills.list")]
    SkillsList {},
    #[serde(rename = "ping")]
    Ping {},
    #[serde(rename = "devices.list")]
    DevicesList {},
    #[serde(rename = "device.approve")]
    DeviceApprove { device_id: String },
    #[serde(rename = "device.revoke")]
    DeviceRevoke { device_id: String },
    #[serde(rename = "presence.list")]
    PresenceList {},
}

impl ClientOp {
    /// The op name, for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            ClientOp::Hello(_) => "hello",
            ClientOp::TaskSubmit(_) => "task.submit",
            ClientOp::TaskCancel { .. } => "task.cancel",
            ClientOp::TaskRespond { .. } => "task.respond",
            ClientOp::TaskGet { .. } => "task.get",
            ClientOp::TaskList { .. } => "task.list",
            ClientOp::Subscribe { .. } => "subscribe",
            ClientOp::Unsubscribe { .. } => "unsubscribe",
            ClientOp::AgentsList {} => "agents.list",
            ClientOp::SkillsList {} => "skills.list",
            ClientOp::Ping {} => "ping",
            ClientOp::DevicesList {} => "devices.list",
            ClientOp::DeviceApprove { .. } => "device.approve",
            ClientOp::DeviceRevoke { .. } => "device.revoke",
            ClientOp::PresenceList {} => "presence.list",
        }
    }
}

/// `hello` fields.
#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
pub struct Hello {
    pub token: Option<String>,
    pub session_id: Option<Uuid>,
    pub device_id: Option<String>,
    pub after_seq: Option<i64>,
    /// A nonce from `POST /api/devices/challenge` (devices with a key).
    pub device_nonce: Option<String>,
    /// Hex Ed25519 signature of the device proof message.
    pub device_signature: Option<String>,
}

/// `hello` reply.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema, schemars::JsonSchema)]
pub struct HelloReply {
    pub session_id: Uuid,
    pub user_id: String,
    pub roles: BTreeSet<Role>,
    pub permissions: BTreeSet<Permission>,
    pub last_seq: i64,
    pub heartbeat_ms: u64,
    pub max_message_bytes: usize,
    pub protocol: u32,
    /// The oldest seq still stored in the session's stream, present only
    /// when the hello's `after_seq` asked for events that were pruned
    /// (`after_seq < earliest_seq - 1`): reload state, then go on from
    /// here (the replay starts at this seq).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub earliest_seq: Option<i64>,
}

/// `subscribe` reply.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema, schemars::JsonSchema)]
pub struct SubscribeReply {
    pub stream: String,
    pub last_seq: i64,
    /// The oldest seq still stored in the stream, present only when
    /// `after_seq` asked for events that were pruned (see `hello`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub earliest_seq: Option<i64>,
}

/// A frame's `id`, echoed in its reply: a string or a number.
pub type FrameId = Option<Value>;

/// Parse a text frame into its id and op. A frame that is not JSON, has no
/// `op`, an unknown op, or bad fields is a `bad_request` that still carries
/// the id when one could be read.
pub fn parse_frame(text: &str) -> (FrameId, Result<ClientOp, Error>) {
    let value: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            return (
                None,
                Err(Error::BadRequest(format!("frame is not valid JSON: {e}"))),
            );
        }
    };
    let Value::Object(map) = &value else {
        return (
            None,
            Err(Error::BadRequest("frame must be a JSON object".into())),
        );
    };
    let id = match map.get("id") {
        None | Some(Value::Null) => None,
        Some(v @ (Value::String(_) | Value::Number(_))) => Some(v.clone()),
        Some(_) => {
            return (
                None,
                Err(Error::BadRequest(
                    "`id` must be a string or a number".into(),
                )),
            );
        }
    };
    let op = match map.get("op") {
        Some(Value::String(op)) => op.clone(),
        _ => {
            return (
                id,
                Err(Error::BadRequest("frame has no `op` string".into())),
            );
        }
    };
    let parsed = serde_json::from_value::<ClientOp>(value).map_err(|e| {
        let msg = e.to_string();
        if msg.starts_with("unknown variant") {
            Error::BadRequest(format!("unknown op `{op}`"))
        } else {
            Error::BadRequest(format!("bad `{op}` frame: {msg}"))
        }
    });
    (id, parsed)
}

#[derive(Serialize)]
struct ReplyOk<'a, T: Serialize> {
    op: &'static str,
    id: &'a FrameId,
    ok: bool,
    result: &'a T,
}

#[derive(Serialize)]
struct ReplyErr<'a> {
    op: &'static str,
    id: &'a FrameId,
    ok: bool,
    error: ErrorBody,
}

/// `{"op":"reply","id":..,"ok":true,"result":..}`.
pub fn reply_ok<T: Serialize>(id: &FrameId, result: &T) -> Frame {
    let body = ReplyOk {
        op: "reply",
        id,
        ok: true,
        result,
    };
    let mut failed = false;
    let frame = Frame::text_with(|buf| failed = serde_json::to_writer(buf, &body).is_err());
    if failed {
        return reply_err(id, &Error::Internal);
    }
    frame
}

/// `{"op":"reply","id":..,"ok":false,"error":{"code","message"}}`.
pub fn reply_err(id: &FrameId, error: &Error) -> Frame {
    let body = ReplyErr {
        op: "reply",
        id,
        ok: false,
        error: error.body(),
    };
    let mut failed = false;
    let frame = Frame::text_with(|buf| failed = serde_json::to_writer(buf, &body).is_err());
    if failed {
        return Frame::text(
            r#"{"op":"reply","ok":false,"error":{"code":"internal","message":"internal error"}}"#,
        );
    }
    frame
}

/// Schema-only descriptions of the frames, for `protocol/schema/`. The
/// frames themselves are written by [`reply_ok`], [`reply_err`],
/// [`session_event_frame`] and [`audit_event_frame`]; the `schemas` test
/// checks real frames against these.
pub mod schema;

#[cfg(test)]
mod tests {
    use super::*;

    /// Known ops parse with their fields; the id is kept for replies.
    #[test]
    fn ops_parse() {
        let (id, op) = parse_frame(
            r#"{"op":"task.cancel","id":7,"task_id":"6f1c1a0e-7d7e-4c1e-9f43-2a4d8f7f0e11"}"#,
        );
        assert_eq!(id, Some(serde_json::json!(7)));
        assert!(matches!(op, Ok(ClientOp::TaskCancel { .. })));
        let (_, op) = parse_frame(r#"{"op":"ping"}"#);
        assert!(matches!(op, Ok(ClientOp::Ping {})));
    }

    /// Junk never panics and is a bad_request; the id survives when readable.
    #[test]
    fn junk_is_bad_request() {
        for text in [
            "",
            "nope",
            "[]",
            "{}",
            r#"{"op":1}"#,
            r#"{"op":"fly","id":"a"}"#,
            r#"{"op":"task.cancel","id":"b"}"#,
            r#"{"op":"task.cancel","task_id":"x"}"#,
        ] {
            let (_, op) = parse_frame(text);
            assert_eq!(op.unwrap_err().code(), "bad_request", "{text}");
        }
        let (id, op) = parse_frame(r#"{"op":"fly","id":"a"}"#);
        assert_eq!(id, Some(serde_json::json!("a")));
        assert!(op.unwrap_err().to_string().contains("unknown op `fly`"));
    }

    proptest::proptest! {
        /// Arbitrary text never panics the parser.
        #[test]
        fn parse_never_panics(text in ".{0,200}") {
            let _ = parse_frame(&text);
        }
    }
}
