//! Row mapping of the PostgreSQL store: one function per table, from a
//! fetched row to the domain type.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use sqlx::Row;
use sqlx::postgres::PgRow;

use crate::audit::AuditRecord;
use crate::auth::User;
use crate::device::Device;
use crate::error::Result;
use crate::event::{EventBody, StoredEvent};
use crate::session::{Session, SessionState};
use crate::store::corrupt;
use crate::task::Task;

pub(super) fn json<T: Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

pub(super) fn from_json<T: DeserializeOwned>(row: &PgRow, column: &str) -> Result<T> {
    let v: Value = row.try_get(column)?;
    serde_json::from_value(v).map_err(corrupt)
}

pub(super) fn user_from(row: &PgRow) -> Result<User> {
    Ok(User {
        user_id: row.try_get("user_id")?,
        roles: from_json(row, "roles")?,
        grants: from_json(row, "grants")?,
        revokes: from_json(row, "revokes")?,
        created_at: row.try_get("created_at")?,
    })
}

pub(super) fn session_from(row: &PgRow) -> Result<Session> {
    let state: &str = row.try_get("state")?;
    Ok(Session {
        session_id: row.try_get("session_id")?,
        user_id: row.try_get("user_id")?,
        device_id: row.try_get("device_id")?,
        created_at: row.try_get("created_at")?,
        last_activity: row.try_get("last_activity")?,
        permissions: from_json(row, "permissions")?,
        state: if state == "active" {
            SessionState::Active
        } else {
            SessionState::Ended
        },
        last_seq: row.try_get("last_seq")?,
        is_default: row.try_get("is_default")?,
    })
}

pub(crate) fn task_from(row: &PgRow) -> Result<Task> {
    let state: &str = row.try_get("state")?;
    Ok(Task {
        task_id: row.try_get("task_id")?,
        execution_uuid: row.try_get("execution_uuid")?,
        session_id: row.try_get("session_id")?,
        user_id: row.try_get("user_id")?,
        agent_type: row.try_get("agent_type")?,
        prompt: row.try_get("prompt")?,
        context: row.try_get("context")?,
        params: row.try_get("params")?,
        state: state.parse().map_err(corrupt)?,
        result: row.try_get("result")?,
        error: row.try_get("error")?,
        metadata: row.try_get("metadata")?,
        idempotency_key: row.try_get("idempotency_key")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        execution_time: row.try_get("execution_time")?,
    })
}

pub(super) fn event_from(row: &PgRow) -> Result<StoredEvent> {
    let kind: String = row.try_get("event_type")?;
    let data: Value = row.try_get("data")?;
    let body: EventBody =
        serde_json::from_value(serde_json::json!({"type": kind, "data": data})).map_err(corrupt)?;
    Ok(StoredEvent {
        session_id: row.try_get("session_id")?,
        seq: row.try_get("seq")?,
        task_id: row.try_get("task_id")?,
        at: row.try_get("at")?,
        body,
    })
}

pub(super) fn audit_from(row: &PgRow) -> Result<AuditRecord> {
    Ok(AuditRecord {
        event_id: row.try_get("event_id")?,
        event_type: row.try_get("event_type")?,
        timestamp: row.try_get("timestamp")?,
        user_id: row.try_get("user_id")?,
        session_id: row.try_get("session_id")?,
        resource_type: row.try_get("resource_type")?,
        resource_id: row.try_get("resource_id")?,
        action: row.try_get("action")?,
        status: row.try_get("status")?,
        details: row.try_get("details")?,
        seq: row.try_get("seq")?,
        hash: row.try_get("hash")?,
        prev_hash: row.try_get("prev_hash")?,
    })
}

pub(super) fn device_from(row: &PgRow) -> Result<Device> {
    let state: String = row.try_get("state")?;
    Ok(Device {
        device_id: row.try_get("device_id")?,
        user_id: row.try_get("user_id")?,
        name: row.try_get("name")?,
        public_key: row.try_get("public_key")?,
        state: state.parse().map_err(corrupt)?,
        first_seen: row.try_get("first_seen")?,
        last_seen: row.try_get("last_seen")?,
        decided_by: row.try_get("decided_by")?,
    })
}
