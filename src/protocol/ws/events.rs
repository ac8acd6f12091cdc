//! The `event` frames pushed to subscribers: session, `tasks` and `audit`
//! streams, written straight into the frame's buffer where it is hot.

use serde::Serialize;
use uuid::Uuid;

use crate::audit::AuditRecord;
use crate::event::{StoredEvent, rfc3339};
use crate::ws::frame::Frame;

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
        buf.extend_from_slice(br#"{"op":"event","stream":"session:"#);
        push_uuid(buf, session_id);
        buf.extend_from_slice(br#"","seq":"#);
        push_int(buf, seq);
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
    buf.extend_from_slice(br#","data":"#);
    buf.extend_from_slice(data.as_bytes());
    buf.extend_from_slice(br#","task_id":""#);
    push_uuid(buf, task_id);
    buf.extend_from_slice(br#"","at":""#);
    buf.extend_from_slice(&crate::event::rfc3339_bytes(at));
    buf.extend_from_slice(br#""}"#);
}

/// Append `id`, hyphenated and lowercase, without allocating.
fn push_uuid(buf: &mut Vec<u8>, id: Uuid) {
    let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
    buf.extend_from_slice(id.hyphenated().encode_lower(&mut text).as_bytes());
}

/// Append `n` in decimal, without allocating.
fn push_int(buf: &mut Vec<u8>, n: i64) {
    buf.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
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
        buf.extend_from_slice(
            br#"{"op":"event","stream":"tasks","type":"task.state","session_id":""#,
        );
        push_uuid(buf, session_id);
        buf.extend_from_slice(br#"","session_seq":"#);
        push_int(buf, seq);
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
