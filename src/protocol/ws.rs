//! WebSocket protocol v1 frames.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::audit::AuditRecord;
use crate::error::{Error, ErrorBody};
use crate::event::{StoredEvent, rfc3339};
use crate::protocol::{RespondRequest, SubmitRequest};
use crate::rbac::{Permission, Role};
use crate::ws::frame::Frame;

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

#[derive(Serialize)]
struct EventFrame<'a, B: Serialize> {
    op: &'static str,
    stream: &'a str,
    seq: i64,
    #[serde(flatten)]
    body: B,
    #[serde(skip_serializing_if = "Option::is_none")]
    task_id: Option<Uuid>,
    at: String,
}

/// `{"op":"event","stream":"session:<id>","seq",..,"type","task_id","at","data"}`.
pub fn session_event_frame(e: &StoredEvent) -> Frame {
    let data = event_data(e);
    event_frame(
        e.session_id,
        e.seq,
        e.body.type_name(),
        &data,
        e.task_id,
        &e.at,
    )
}

/// The `event` frame of a session stream's event whose `data` object is
/// already serialized: what the writer publishes and catch-ups read back.
/// Field for field what [`EventFrame`] writes.
pub fn event_frame(
    session_id: Uuid,
    seq: i64,
    kind: &str,
    data: &str,
    task_id: Uuid,
    at: &chrono::DateTime<chrono::Utc>,
) -> Frame {
    Frame::text_with(|buf| {
        let mut ids = [0u8; uuid::fmt::Hyphenated::LENGTH];
        buf.extend_from_slice(br#"{"op":"event","stream":"session:"#);
        buf.extend_from_slice(session_id.hyphenated().encode_lower(&mut ids).as_bytes());
        buf.extend_from_slice(br#"","seq":"#);
        buf.extend_from_slice(itoa::Buffer::new().format(seq).as_bytes());
        buf.extend_from_slice(br#","type":""#);
        buf.extend_from_slice(kind.as_bytes());
        buf.push(b'"');
        write_event_tail(buf, data, task_id, at);
    })
}

/// `,"data":<data>,"task_id":"<id>","at":"<time>"}`: how every task event
/// frame ends.
fn write_event_tail(
    buf: &mut Vec<u8>,
    data: &str,
    task_id: Uuid,
    at: &chrono::DateTime<chrono::Utc>,
) {
    let mut ids = [0u8; uuid::fmt::Hyphenated::LENGTH];
    buf.extend_from_slice(br#","data":"#);
    buf.extend_from_slice(data.as_bytes());
    buf.extend_from_slice(br#","task_id":""#);
    buf.extend_from_slice(task_id.hyphenated().encode_lower(&mut ids).as_bytes());
    buf.extend_from_slice(br#"","at":""#);
    buf.extend_from_slice(&crate::event::rfc3339_bytes(at));
    buf.extend_from_slice(br#""}"#);
}

/// An event's `data` object, serialized.
pub fn event_data(e: &StoredEvent) -> String {
    match &e.body {
        crate::event::EventBody::State(s) => serde_json::to_string(s),
        crate::event::EventBody::Output(o) => serde_json::to_string(o),
    }
    .unwrap_or_else(|_| "null".into())
}

/// The `tasks` stream's copy of a `task.state` event: the session's event
/// with `"stream":"tasks"`, its session named in `session_id` and its seq
/// in `session_seq` (the stream itself has no seq, so clients that order
/// events by `seq` pass it through).
pub fn tasks_event_frame(
    session_id: Uuid,
    seq: i64,
    data: &str,
    task_id: Uuid,
    at: &chrono::DateTime<chrono::Utc>,
) -> Frame {
    Frame::text_with(|buf| {
        let mut ids = [0u8; uuid::fmt::Hyphenated::LENGTH];
        buf.extend_from_slice(
            br#"{"op":"event","stream":"tasks","type":"task.state","session_id":""#,
        );
        buf.extend_from_slice(session_id.hyphenated().encode_lower(&mut ids).as_bytes());
        buf.extend_from_slice(br#"","session_seq":"#);
        buf.extend_from_slice(itoa::Buffer::new().format(seq).as_bytes());
        write_event_tail(buf, data, task_id, at);
    })
}

/// The `tasks` stream's event for "some state changes were dropped because
/// this subscriber fell behind": reload the task list.
pub fn tasks_lagged_frame() -> Frame {
    Frame::text(r#"{"op":"event","stream":"tasks","type":"tasks.lagged","data":{}}"#)
}

/// A stream's event for "the events you were about to get were pruned
/// (data retention)": what is still stored starts at `earliest_seq`, and
/// comes next. Reload state (the task list, a task's state), then keep
/// applying events. Carries no `seq` of its own.
pub fn stream_pruned_frame(key: crate::event::StreamKey, earliest_seq: i64) -> Frame {
    Frame::text(&format!(
        r#"{{"op":"event","stream":"{key}","type":"stream.pruned","data":{{"earliest_seq":{earliest_seq}}}}}"#
    ))
}

/// Publish a stored session event on the bus: to its session's
/// subscribers, and a state change also to the `tasks` stream. `data` is
/// the event's serialized `data` object.
pub fn publish_session_event(bus: &crate::bus::Bus, e: &StoredEvent, data: &str) {
    let key = crate::event::StreamKey::Session(e.session_id);
    let kind = e.body.type_name();
    bus.publish(key, e.seq, || {
        event_frame(e.session_id, e.seq, kind, data, e.task_id, &e.at)
    });
    if matches!(e.body, crate::event::EventBody::State(_)) {
        bus.publish(crate::event::StreamKey::Tasks, 0, || {
            tasks_event_frame(e.session_id, e.seq, data, e.task_id, &e.at)
        });
    }
}

#[derive(Serialize)]
struct AuditBody<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    data: &'a AuditRecord,
}

/// `{"op":"event","stream":"audit","seq",..,"type":"audit","at","data":<record>}`.
pub fn audit_event_frame(r: &AuditRecord) -> Frame {
    Frame::text_with(|buf| {
        let _ = serde_json::to_writer(
            buf,
            &EventFrame {
                op: "event",
                stream: "audit",
                seq: r.seq,
                body: AuditBody {
                    kind: "audit",
                    data: r,
                },
                task_id: None,
                at: rfc3339(&r.timestamp),
            },
        );
    })
}

/// Schema-only descriptions of the frames, for `protocol/schema/`. The
/// frames themselves are written by [`reply_ok`], [`reply_err`],
/// [`session_event_frame`] and [`audit_event_frame`]; the `schemas` test
/// checks real frames against these.
pub mod schema {
    use chrono::{DateTime, Utc};
    use schemars::JsonSchema;
    use uuid::Uuid;

    use super::{ClientOp, HelloReply, SubscribeReply};
    use crate::audit::AuditRecord;
    use crate::error::ErrorBody;
    use crate::event::{OutputChunk, StateChange};

    /// A frame's `id`: a string or a number, echoed by its reply.
    #[derive(JsonSchema)]
    #[serde(untagged)]
    pub enum FrameId {
        Text(String),
        Number(f64),
    }

    /// Any client frame: an op, its fields, and an optional `id`.
    #[derive(JsonSchema)]
    pub struct ClientFrame {
        #[serde(default)]
        pub id: Option<FrameId>,
        #[serde(flatten)]
        pub op: ClientOp,
    }

    /// `"reply"`.
    #[derive(JsonSchema)]
    pub enum ReplyOp {
        #[serde(rename = "reply")]
        Reply,
    }

    /// `"event"`.
    #[derive(JsonSchema)]
    pub enum EventOp {
        #[serde(rename = "event")]
        Event,
    }

    /// The one reply to a client frame: a result or an error.
    #[derive(JsonSchema)]
    #[serde(untagged)]
    pub enum Reply {
        Ok(ReplyOk),
        Err(ReplyErr),
    }

    /// `{"op":"reply","id":..,"ok":true,"result":..}`.
    #[derive(JsonSchema)]
    pub struct ReplyOk {
        pub op: ReplyOp,
        /// The request's `id`, or `null` when it had none.
        pub id: Option<FrameId>,
        #[schemars(extend("const" = true))]
        pub ok: bool,
        /// The op's result (see the per-op reply schemas).
        pub result: serde_json::Value,
    }

    /// `{"op":"reply","id":..,"ok":false,"error":{"code","message"}}`.
    #[derive(JsonSchema)]
    pub struct ReplyErr {
        pub op: ReplyOp,
        /// The request's `id`, or `null` when it had none or it could not be read.
        pub id: Option<FrameId>,
        #[schemars(extend("const" = false))]
        pub ok: bool,
        pub error: ErrorBody,
    }

    /// What an event carries, by `type`.
    #[derive(JsonSchema)]
    #[serde(tag = "type", content = "data")]
    pub enum EventData {
        /// A task changed state.
        #[serde(rename = "task.state")]
        State(StateChange),
        /// A task produced output.
        #[serde(rename = "task.output")]
        Output(OutputChunk),
        /// An audit record (on the `audit` stream).
        #[serde(rename = "audit")]
        Audit(Box<AuditRecord>),
    }

    /// A pushed event: never an `id`, always a `seq`.
    #[derive(JsonSchema)]
    pub struct Event {
        pub op: EventOp,
        /// `session:<uuid>` or `audit` (the `tasks` stream's events are
        /// described by `tasks-event.json`).
        pub stream: String,
        /// Position in the stream: rises by exactly 1 per event.
        pub seq: i64,
        /// The task, on session streams.
        #[serde(default)]
        pub task_id: Option<Uuid>,
        pub at: DateTime<Utc>,
        #[serde(flatten)]
        pub data: EventData,
    }

    /// What a `tasks` stream event carries, by `type`.
    #[derive(JsonSchema)]
    #[serde(tag = "type", content = "data")]
    pub enum TasksEventData {
        /// A task changed state (the session's event, as stored).
        #[serde(rename = "task.state")]
        State(StateChange),
        /// This subscriber fell behind and state changes were dropped:
        /// reload the task list.
        #[serde(rename = "tasks.lagged")]
        Lagged(Empty),
    }

    /// An empty object.
    #[derive(JsonSchema)]
    pub struct Empty {}

    /// An event of the `tasks` stream (`admin:system`): every task's state
    /// changes, live only. No `seq` of its own: `session_id` and
    /// `session_seq` say where the event is stored.
    #[derive(JsonSchema)]
    pub struct TasksEvent {
        pub op: EventOp,
        #[schemars(extend("const" = "tasks"))]
        pub stream: String,
        /// The session whose stream holds the event (not on `tasks.lagged`).
        #[serde(default)]
        pub session_id: Option<Uuid>,
        /// The event's seq in that session's stream.
        #[serde(default)]
        pub session_seq: Option<i64>,
        /// The task.
        #[serde(default)]
        pub task_id: Option<Uuid>,
        /// When it was stored.
        #[serde(default)]
        pub at: Option<DateTime<Utc>>,
        #[serde(flatten)]
        pub data: TasksEventData,
    }

    /// Every frame schema, by file name under `protocol/schema/`.
    pub fn all() -> Vec<(&'static str, serde_json::Value)> {
        fn of<T: JsonSchema>() -> serde_json::Value {
            serde_json::to_value(schemars::schema_for!(T)).unwrap_or_default()
        }
        vec![
            ("client-op.json", of::<ClientFrame>()),
            ("reply.json", of::<Reply>()),
            ("event.json", of::<Event>()),
            ("tasks-event.json", of::<TasksEvent>()),
            ("hello-reply.json", of::<HelloReply>()),
            ("subscribe-reply.json", of::<SubscribeReply>()),
        ]
    }
}

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
