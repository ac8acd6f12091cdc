//! Row mapping shared by both backends: one function per kind of row, from
//! a fetched row to the domain type, written once against [`Columns`].
//!
//! Where the shared store code lives, and why there: the two backends agree
//! on the tables' column names and on what each means, and differ in how a
//! value is held (SQLite: text for ids, times and JSON, integers for flags
//! and event times; PostgreSQL: `uuid`, `timestamptz`, `jsonb`, `boolean`)
//! and in the driver (rusqlite, sqlx). So each backend implements
//! [`Columns`] for its row type (`sqlite/rows.rs`, `postgres/rows.rs`), and
//! everything above that (which columns make a user, a task, an event, and
//! how a stored string becomes a state) lives here. The other shared
//! parts of the store are the append rules ([`super::rules`]) and the query
//! shapes the dialects agree on ([`super::query`]).
//!
//! Columns are read by name, so a select may list them in any order.

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::audit::AuditRecord;
use crate::audit::checkpoint::Checkpoint;
use crate::auth::User;
use crate::device::Device;
use crate::error::Result;
use crate::event::{EventBody, StoredEvent};
use crate::project::{Project, ProjectTask};
use crate::session::{Session, SessionState};
use crate::store::corrupt;
use crate::task::Task;

/// The values of one fetched row, by column name, in domain types.
pub(crate) trait Columns {
    /// A text column.
    fn text(&self, col: &str) -> Result<String>;
    /// A nullable text column.
    fn opt_text(&self, col: &str) -> Result<Option<String>>;
    /// An integer column.
    fn int(&self, col: &str) -> Result<i64>;
    /// A nullable floating point column.
    fn opt_float(&self, col: &str) -> Result<Option<f64>>;
    /// A boolean column.
    fn flag(&self, col: &str) -> Result<bool>;
    /// A uuid column.
    fn uuid(&self, col: &str) -> Result<Uuid>;
    /// A nullable uuid column.
    fn opt_uuid(&self, col: &str) -> Result<Option<Uuid>>;
    /// A point in time.
    fn time(&self, col: &str) -> Result<DateTime<Utc>>;
    /// A JSON column, decoded.
    fn json<T: DeserializeOwned>(&self, col: &str) -> Result<T>;
    /// The `type` of an event row (`task.state`, `task.output`).
    fn event_type(&self) -> Result<&'static str>;
}

/// A text column holding a value of `T` (a state, a status).
fn parsed<T: std::str::FromStr>(r: &impl Columns, col: &str) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    r.text(col)?.parse().map_err(corrupt)
}

/// The `type` of an event of a stored `kind` (SQLite keeps the kind as a
/// small integer: 0 for a state change, 1 for output).
pub(crate) fn kind_name(kind: i64) -> &'static str {
    if kind == 0 {
        "task.state"
    } else {
        "task.output"
    }
}

/// The `event_type` column as PostgreSQL keeps it, checked.
pub(crate) fn type_name(text: &str) -> Result<&'static str> {
    match text {
        "task.state" => Ok("task.state"),
        "task.output" => Ok("task.output"),
        other => Err(corrupt(format!("unknown event type `{other}`"))),
    }
}

/// A user row.
pub(crate) fn user(r: &impl Columns) -> Result<User> {
    Ok(User {
        user_id: r.text("user_id")?,
        roles: r.json("roles")?,
        grants: r.json("grants")?,
        revokes: r.json("revokes")?,
        created_at: r.time("created_at")?,
    })
}

/// A session row with its `last_seq`.
pub(crate) fn session(r: &impl Columns) -> Result<Session> {
    Ok(Session {
        session_id: r.uuid("session_id")?,
        user_id: r.text("user_id")?,
        device_id: r.opt_text("device_id")?,
        created_at: r.time("created_at")?,
        last_activity: r.time("last_activity")?,
        permissions: r.json("permissions")?,
        state: if r.text("state")? == "active" {
            SessionState::Active
        } else {
            SessionState::Ended
        },
        is_default: r.flag("is_default")?,
        last_seq: r.int("last_seq")?,
    })
}

/// A task row with its state and its session's id.
pub(crate) fn task(r: &impl Columns) -> Result<Task> {
    Ok(Task {
        task_id: r.uuid("task_id")?,
        execution_uuid: r.uuid("execution_uuid")?,
        session_id: r.uuid("session_id")?,
        user_id: r.text("user_id")?,
        agent_type: r.text("agent_type")?,
        prompt: r.text("prompt")?,
        context: r.json("context")?,
        params: r.json("params")?,
        state: parsed(r, "state")?,
        result: r.opt_text("result")?,
        error: r.opt_text("error")?,
        metadata: r.json("metadata")?,
        idempotency_key: r.opt_text("idempotency_key")?,
        created_at: r.time("created_at")?,
        updated_at: r.time("updated_at")?,
        execution_time: r.opt_float("execution_time")?,
    })
}

/// An event row with its session's and task's ids.
pub(crate) fn event(r: &impl Columns) -> Result<StoredEvent> {
    let data: serde_json::Value = r.json("data")?;
    let body: EventBody =
        serde_json::from_value(serde_json::json!({"type": r.event_type()?, "data": data}))
            .map_err(corrupt)?;
    Ok(StoredEvent {
        session_id: r.uuid("session_id")?,
        seq: r.int("seq")?,
        task_id: r.uuid("task_id")?,
        at: r.time("at")?,
        body,
    })
}

/// An audit record.
pub(crate) fn audit(r: &impl Columns) -> Result<AuditRecord> {
    Ok(AuditRecord {
        event_id: r.uuid("event_id")?,
        event_type: r.text("event_type")?,
        timestamp: r.time("timestamp")?,
        user_id: r.opt_text("user_id")?,
        session_id: r.opt_uuid("session_id")?,
        resource_type: r.opt_text("resource_type")?,
        resource_id: r.opt_text("resource_id")?,
        action: r.text("action")?,
        status: r.text("status")?,
        details: r.json("details")?,
        seq: r.int("seq")?,
        hash: r.text("hash")?,
        prev_hash: r.text("prev_hash")?,
    })
}

/// A device row.
pub(crate) fn device(r: &impl Columns) -> Result<Device> {
    Ok(Device {
        device_id: r.text("device_id")?,
        user_id: r.text("user_id")?,
        name: r.text("name")?,
        public_key: r.opt_text("public_key")?,
        state: parsed(r, "state")?,
        first_seen: r.time("first_seen")?,
        last_seen: r.time("last_seen")?,
        decided_by: r.opt_text("decided_by")?,
    })
}

/// A signed audit checkpoint.
pub(crate) fn checkpoint(r: &impl Columns) -> Result<Checkpoint> {
    Ok(Checkpoint {
        seq: r.int("seq")?,
        head: r.text("head")?,
        at: r.time("at")?,
        key_id: r.text("key_id")?,
        signature: r.text("signature")?,
    })
}

/// A Phase 1 project.
pub(crate) fn project(r: &impl Columns) -> Result<Project> {
    Ok(Project {
        id: r.int("id")?,
        name: r.text("name")?,
        key: r.text("key")?,
        description: r.opt_text("description")?,
        status: parsed(r, "status")?,
        github_repo_url: r.opt_text("github_repo_url")?,
        telegram_chat_id: r.opt_text("telegram_chat_id")?,
        created_at: r.time("created_at")?,
        updated_at: r.time("updated_at")?,
    })
}

/// A Phase 1 project task with its project's key (`project_key`).
pub(crate) fn project_task(r: &impl Columns) -> Result<ProjectTask> {
    Ok(ProjectTask {
        id: r.int("id")?,
        project_id: r.int("project_id")?,
        project_key: r.text("project_key")?,
        number: r.int("number")?,
        title: r.text("title")?,
        description: r.opt_text("description")?,
        status: parsed(r, "status")?,
        priority: parsed(r, "priority")?,
        assigned_agent_type: r.opt_text("assigned_agent_type")?,
        agent_execution_status: r.opt_text("agent_execution_status")?,
        created_at: r.time("created_at")?,
        updated_at: r.time("updated_at")?,
    })
}
