//! Rows to values and back: the SQL text of the common selects and the
//! mapping of their rows.

use chrono::{DateTime, Utc};
use rusqlite::Row;
use serde::Serialize;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::audit::AuditRecord;
use crate::auth::User;
use crate::device::Device;
use crate::error::Result;
use crate::event::{EventBody, StoredEvent};
use crate::session::{Session, SessionState};
use crate::store::corrupt;
use crate::task::Task;

/// A task with its state and its session's id.
pub const TASK: &str = "SELECT t.task_id, t.execution_uuid, ss.session_id, t.user_id, t.agent_type, \
     t.prompt, t.context, t.params, s.state, s.result, s.error, t.metadata, t.idempotency_key, \
     t.created_at, s.updated_at, s.execution_time, t.tid \
     FROM tasks t JOIN task_state s ON s.tid = t.tid JOIN sessions ss ON ss.sid = t.sid";

/// A session with its newest seq.
pub const SESSION: &str = "SELECT s.session_id, s.user_id, s.device_id, s.created_at, \
     s.last_activity, s.permissions, s.state, s.is_default, \
     COALESCE((SELECT MAX(e.seq) FROM events e WHERE e.sid = s.sid), \
     (SELECT f.pruned_through FROM stream_floor f WHERE f.sid = s.sid), 0) AS last_seq \
     FROM sessions s";

/// An event with its session's and task's ids.
pub const EVENT: &str = "SELECT ss.session_id, e.seq, t.task_id, e.at, e.kind, e.data \
     FROM events e JOIN tasks t ON t.tid = e.tid JOIN sessions ss ON ss.sid = e.sid";

/// The `kind` column of an event.
pub fn event_kind(body: &EventBody) -> i64 {
    match body {
        EventBody::State(_) => 0,
        EventBody::Output(_) => 1,
    }
}

/// The `type` of an event of `kind`.
pub fn kind_name(kind: i64) -> &'static str {
    if kind == 0 {
        "task.state"
    } else {
        "task.output"
    }
}

pub fn to_json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".into())
}

/// The `data` object of an event, as stored.
pub fn event_data(body: &EventBody) -> String {
    match body {
        EventBody::State(s) => to_json(s),
        EventBody::Output(o) => to_json(o),
    }
}

pub fn from_json<T: DeserializeOwned>(text: &str) -> Result<T> {
    serde_json::from_str(text).map_err(corrupt)
}

pub fn time(text: &str) -> Result<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(corrupt)
}

pub fn micros(at: &DateTime<Utc>) -> i64 {
    at.timestamp_micros()
}

pub fn from_micros(us: i64) -> Result<DateTime<Utc>> {
    DateTime::from_timestamp_micros(us).ok_or_else(|| corrupt(format!("bad time {us}")))
}

pub fn uuid(text: &str) -> Result<Uuid> {
    Uuid::parse_str(text).map_err(corrupt)
}

fn text(row: &Row<'_>, i: usize) -> Result<String> {
    Ok(row.get::<_, String>(i)?)
}

pub fn user(row: &Row<'_>) -> Result<User> {
    Ok(User {
        user_id: text(row, 0)?,
        roles: from_json(&text(row, 1)?)?,
        grants: from_json(&text(row, 2)?)?,
        revokes: from_json(&text(row, 3)?)?,
        created_at: time(&text(row, 4)?)?,
    })
}

/// Columns of `users`, in the order [`user`] reads them.
pub const USER: &str = "SELECT user_id, roles, grants, revokes, created_at FROM users";

pub fn session(row: &Row<'_>) -> Result<Session> {
    let state: String = row.get(6)?;
    Ok(Session {
        session_id: uuid(&text(row, 0)?)?,
        user_id: text(row, 1)?,
        device_id: row.get(2)?,
        created_at: time(&text(row, 3)?)?,
        last_activity: time(&text(row, 4)?)?,
        permissions: from_json(&text(row, 5)?)?,
        state: if state == "active" {
            SessionState::Active
        } else {
            SessionState::Ended
        },
        is_default: row.get(7)?,
        last_seq: row.get(8)?,
    })
}

pub fn task(row: &Row<'_>) -> Result<Task> {
    let state: String = row.get(8)?;
    Ok(Task {
        task_id: uuid(&text(row, 0)?)?,
        execution_uuid: uuid(&text(row, 1)?)?,
        session_id: uuid(&text(row, 2)?)?,
        user_id: text(row, 3)?,
        agent_type: text(row, 4)?,
        prompt: text(row, 5)?,
        context: from_json(&text(row, 6)?)?,
        params: from_json(&text(row, 7)?)?,
        state: state.parse().map_err(corrupt)?,
        result: row.get(9)?,
        error: row.get(10)?,
        metadata: from_json(&text(row, 11)?)?,
        idempotency_key: row.get(12)?,
        created_at: time(&text(row, 13)?)?,
        updated_at: time(&text(row, 14)?)?,
        execution_time: row.get(15)?,
    })
}

pub fn event(row: &Row<'_>) -> Result<StoredEvent> {
    let kind: i64 = row.get(4)?;
    let data: String = row.get(5)?;
    let body: EventBody = serde_json::from_value(serde_json::json!({
        "type": kind_name(kind),
        "data": serde_json::from_str::<serde_json::Value>(&data).map_err(corrupt)?,
    }))
    .map_err(corrupt)?;
    Ok(StoredEvent {
        session_id: uuid(&text(row, 0)?)?,
        seq: row.get(1)?,
        task_id: uuid(&text(row, 2)?)?,
        at: from_micros(row.get(3)?)?,
        body,
    })
}

/// Columns of `audit`, in the order [`audit`] reads them.
pub const AUDIT: &str = "SELECT event_id, event_type, timestamp, user_id, session_id, resource_type, \
     resource_id, action, status, details, seq, hash, prev_hash FROM audit";

pub fn audit(row: &Row<'_>) -> Result<AuditRecord> {
    let session: Option<String> = row.get(4)?;
    Ok(AuditRecord {
        event_id: uuid(&text(row, 0)?)?,
        event_type: text(row, 1)?,
        timestamp: time(&text(row, 2)?)?,
        user_id: row.get(3)?,
        session_id: session.as_deref().map(uuid).transpose()?,
        resource_type: row.get(5)?,
        resource_id: row.get(6)?,
        action: text(row, 7)?,
        status: text(row, 8)?,
        details: from_json(&text(row, 9)?)?,
        seq: row.get(10)?,
        hash: text(row, 11)?,
        prev_hash: text(row, 12)?,
    })
}

/// Columns of `devices`, in the order [`device`] reads them.
pub const DEVICE: &str = "SELECT device_id, user_id, name, public_key, state, first_seen, \
     last_seen, decided_by FROM devices";

pub fn device(row: &Row<'_>) -> Result<Device> {
    let state: String = row.get(4)?;
    Ok(Device {
        device_id: text(row, 0)?,
        user_id: text(row, 1)?,
        name: text(row, 2)?,
        public_key: row.get(3)?,
        state: state.parse().map_err(corrupt)?,
        first_seen: time(&text(row, 5)?)?,
        last_seen: time(&text(row, 6)?)?,
        decided_by: row.get(7)?,
    })
}

/// Run `sql` with `params` and map every row.
pub fn all<T>(
    conn: &rusqlite::Connection,
    sql: &str,
    params: impl rusqlite::Params,
    map: impl Fn(&Row<'_>) -> Result<T>,
) -> Result<Vec<T>> {
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query(params)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(map(row)?);
    }
    Ok(out)
}

/// Run `sql` with `params` and map the first row, if any.
pub fn one<T>(
    conn: &rusqlite::Connection,
    sql: &str,
    params: impl rusqlite::Params,
    map: impl Fn(&Row<'_>) -> Result<T>,
) -> Result<Option<T>> {
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query(params)?;
    rows.next()?.map(map).transpose()
}
