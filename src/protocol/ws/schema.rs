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
