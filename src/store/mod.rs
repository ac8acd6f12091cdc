//! Persistence: the [`Store`] trait and its backends, chosen by URL scheme.
//!
//! Every write that belongs together commits in one transaction: a task
//! transition, the event that records it, its `seq` and its audit records.
//! After a commit the store publishes what it wrote to the [`Bus`], so that
//! nothing is ever published that was not stored.
//!
//! Stream `seq` numbers are assigned inside the writing transaction by
//! bumping the session's `last_seq`, which keeps them gapless even with
//! several writers.
//!
//! One design, two dialects: what the backends do alike lives once, in
//! `rows.rs` (row to domain type), `rules.rs` (whether an append applies)
//! and `query.rs` (filters); [`sqlite`] and [`postgres`] keep their driver,
//! locking, notifications and SQL (`rows.rs` says why the line is there).
//!
//! The store depends on the bus, not the other way: it publishes to
//! [`Bus`] after each commit, and serves the bus's catch-up reads as its
//! [`Backlog`].

mod cluster;
pub mod postgres;
pub(crate) mod query;
pub mod retention;
pub(crate) mod rows;
mod rules;
pub mod sqlite;
pub mod writer;

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::audit::checkpoint::Checkpoint;
use crate::audit::{AuditRecord, NewAudit};
use crate::auth::User;
use crate::bus::{Backlog, Bus, Delivery};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::event::{EventBody, StoredEvent, StreamKey};
use crate::project::{Execution, Project, ProjectTask, WorkStatus};
use crate::protocol::storage::StorageReport;
use crate::session::Session;
use crate::task::{Task, TaskState};

pub use cluster::{Cluster, NodeAgent, Signal};
pub use writer::EventWriter;

/// One event to append to a session stream, with the task change it records.
#[derive(Debug, Clone)]
pub struct Append {
    /// The stream.
    pub session_id: Uuid,
    /// The task it concerns.
    pub task_id: Uuid,
    /// When it happened.
    pub at: DateTime<Utc>,
    /// What happened.
    pub body: EventBody,
    /// The change to the task row, applied only if its condition holds.
    pub change: TaskChange,
    /// Audit records written in the same transaction.
    pub audit: Vec<NewAudit>,
}

/// The task-row side of an [`Append`].
#[derive(Debug, Clone)]
pub enum TaskChange {
    /// A new task; refused as [`Rejected::Duplicate`] when its idempotency key is taken.
    Insert(Box<Task>),
    /// A state change, applied only if the task is still in `from`
    /// (compare-and-set, so concurrent writers cannot both win).
    Transition(Transition),
    /// No change, but only while the task is in this state (output).
    Require(TaskState),
}

/// A compare-and-set state change.
#[derive(Debug, Clone)]
pub struct Transition {
    /// The state the writer believes the task is in.
    pub from: TaskState,
    /// The new state.
    pub to: TaskState,
    /// The result, when completing.
    pub result: Option<String>,
    /// The error, when failing or cancelling.
    pub error: Option<String>,
    /// Seconds from submission, when terminal.
    pub execution_time: Option<f64>,
}

/// Why one [`Append`] of a batch was not applied (the others still are).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    /// The idempotency key is already used by this user.
    #[error("idempotency key already used")]
    Duplicate,
    /// The task is no longer in the expected state.
    #[error("task is {0}")]
    StateIs(TaskState),
    /// No such task.
    #[error("no such task")]
    NoTask,
    /// The session does not exist, has ended, or (for a new task) is not
    /// the task owner's.
    #[error("no such active session")]
    NoSession,
}

/// Filters of a task listing, newest first.
#[derive(Debug, Clone, Default)]
pub struct TaskFilter {
    /// Only this owner's tasks (`None`: everyone's).
    pub user_id: Option<String>,
    /// Only this session's.
    pub session_id: Option<Uuid>,
    /// Only in this state.
    pub state: Option<TaskState>,
    /// Only of this agent.
    pub agent_type: Option<String>,
    /// Only tasks older than this one (cursor).
    pub before: Option<(DateTime<Utc>, Uuid)>,
    /// At most this many.
    pub limit: i64,
}

/// Filters of an audit query, newest first.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    pub session_id: Option<Uuid>,
    pub user_id: Option<String>,
    pub event_type: Option<String>,
    pub resource_type: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    /// Only records with a smaller seq (cursor).
    pub before_seq: Option<i64>,
    pub limit: i64,
}

/// Phase 1's projects, project tasks and their executions. A part of
/// [`Store`] kept apart because it is a separate product surface.
///
/// Writes take the audit records to commit with them. Methods that change
/// one row answer `false` (or `None`) when the row does not exist; a taken
/// project key is a `conflict`. Task numbers are handed out one by one per
/// project even to several nodes writing at once.
#[async_trait]
pub trait ProjectStore: Send + Sync + 'static {
    /// Store a new project (its `id` is ignored) and return it with its id.
    async fn create_project(&self, project: &Project, audit: Vec<NewAudit>) -> Result<Project>;
    /// One project.
    async fn get_project(&self, id: i64) -> Result<Option<Project>>;
    /// Projects by id, paged.
    async fn list_projects(&self, skip: i64, limit: i64) -> Result<Vec<Project>>;
    /// Replace a project's fields.
    async fn update_project(&self, project: &Project, audit: Vec<NewAudit>) -> Result<bool>;
    /// Delete a project with its tasks and their executions.
    async fn delete_project(&self, id: i64, audit: Vec<NewAudit>) -> Result<bool>;
    /// Store a new task (its `id`, `number` and `project_key` are ignored:
    /// the number is the project's next), or `None` when the project is gone.
    async fn create_project_task(
        &self,
        task: &ProjectTask,
        audit: Vec<NewAudit>,
    ) -> Result<Option<ProjectTask>>;
    /// One project task.
    async fn get_project_task(&self, id: i64) -> Result<Option<ProjectTask>>;
    /// Project tasks by id, one project's or all, paged.
    async fn list_project_tasks(
        &self,
        project_id: Option<i64>,
        skip: i64,
        limit: i64,
    ) -> Result<Vec<ProjectTask>>;
    /// Replace a task's editable fields (title, description, status,
    /// priority, assigned agent).
    async fn update_project_task(&self, task: &ProjectTask, audit: Vec<NewAudit>) -> Result<bool>;
    /// Delete a task and its executions.
    async fn delete_project_task(&self, id: i64, audit: Vec<NewAudit>) -> Result<bool>;
    /// Record that a task's execution is in engine state `state`: sets its
    /// `status` and `agent_execution_status`.
    async fn follow_project_task(
        &self,
        id: i64,
        status: WorkStatus,
        state: TaskState,
        at: DateTime<Utc>,
    ) -> Result<bool>;
    /// Store an execution (its `id` is ignored) and return its id.
    async fn create_execution(&self, execution: &Execution) -> Result<i64>;
}

/// Task counts per state, for totals that do not depend on how many rows
/// a client has loaded. Kept apart from [`Store`] so that each backend
/// implements it in a file of its own.
#[async_trait]
pub trait TaskCounts: Send + Sync + 'static {
    /// How many tasks match `filter`, per state (its `state`, `before` and
    /// `limit` are ignored). States with none are left out.
    async fn count_tasks(&self, filter: &TaskFilter) -> Result<Vec<(TaskState, i64)>>;
}

/// The figures of `GET /api/admin/storage` and of the `switchboard_storage_*`
/// metrics: rows, bytes and oldest item per kind of data, and the size of
/// the database. Cheap enough for every `/metrics` scrape: big tables are
/// estimated, never counted row by row (which figures are estimates, and
/// how, is written in [`crate::protocol::storage`]). Kept apart from
/// [`Store`] so that each backend implements it in a file of its own.
#[async_trait]
pub trait StorageStats: Send + Sync + 'static {
    /// The report, with `last_prune` null: the pruner, not the store,
    /// knows when it ran.
    async fn storage(&self) -> Result<StorageReport>;
}

/// Everything the node keeps. Implementations: [`sqlite::SqliteStore`] and
/// [`postgres::PostgresStore`], which run the same test suite
/// (`tests/store.rs`, with the Phase 1 part in `tests/store/projects.rs`).
#[async_trait]
pub trait Store:
    ProjectStore + TaskCounts + StorageStats + retention::Retention + Backlog + Send + Sync + 'static
{
    /// Whether the store answers (for `/readyz`).
    async fn ping(&self) -> Result<()>;

    // ---- users and tokens ----

    /// How many users exist (0 on a fresh database).
    async fn user_count(&self) -> Result<i64>;
    /// Create a user with a first token (`conflict` if the id is taken).
    async fn create_user(&self, user: &User, token_hash: &str, audit: Vec<NewAudit>) -> Result<()>;
    /// One user.
    async fn get_user(&self, user_id: &str) -> Result<Option<User>>;
    /// Every user, by id.
    async fn list_users(&self) -> Result<Vec<User>>;
    /// Replace a user's roles, grants and revokes.
    async fn update_user(&self, user: &User, audit: Vec<NewAudit>) -> Result<()>;
    /// Add a token to an existing user, valid until `expires_at` if given.
    async fn add_token(
        &self,
        user_id: &str,
        token_hash: &str,
        at: DateTime<Utc>,
        expires_at: Option<DateTime<Utc>>,
        audit: Vec<NewAudit>,
    ) -> Result<()>;
    /// When a live token expires (`Some(None)`: never; `None`: not live).
    async fn token_expiry(&self, token_hash: &str) -> Result<Option<Option<DateTime<Utc>>>>;
    /// Revoke every token of a user; returns how many were live.
    async fn revoke_tokens(
        &self,
        user_id: &str,
        at: DateTime<Utc>,
        audit: Vec<NewAudit>,
    ) -> Result<u64>;
    /// The user owning a live token.
    async fn user_by_token(&self, token_hash: &str, now: DateTime<Utc>) -> Result<Option<User>>;
    /// The user owning a live token and when the token expires (`None`:
    /// never). One read where the backend overrides it (a burst of new
    /// connections resolves many tokens at once).
    async fn token_owner(
        &self,
        token_hash: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<(User, Option<DateTime<Utc>>)>> {
        let Some(user) = self.user_by_token(token_hash, now).await? else {
            return Ok(None);
        };
        Ok(Some((user, self.token_expiry(token_hash).await?.flatten())))
    }

    // ---- sessions ----

    /// Store a new session.
    async fn create_session(&self, session: &Session, audit: Vec<NewAudit>) -> Result<()>;
    /// One session.
    async fn get_session(&self, session_id: Uuid) -> Result<Option<Session>>;
    /// The user's active default session.
    async fn default_session(&self, user_id: &str) -> Result<Option<Session>>;
    /// Sessions, newest first; one user's, or everyone's.
    async fn list_sessions(&self, user_id: Option<&str>) -> Result<Vec<Session>>;
    /// Mark a session ended.
    async fn end_session(
        &self,
        session_id: Uuid,
        at: DateTime<Utc>,
        audit: Vec<NewAudit>,
    ) -> Result<()>;

    // ---- tasks and events ----

    /// Apply a batch in one transaction, each item on its own condition, and
    /// publish what was stored.
    async fn append(&self, batch: Vec<Append>) -> Result<Vec<Result<StoredEvent, Rejected>>>;
    /// One task.
    async fn get_task(&self, task_id: Uuid) -> Result<Option<Task>>;
    /// A user's task by idempotency key.
    async fn task_by_idempotency_key(&self, user_id: &str, key: &str) -> Result<Option<Task>>;
    /// Tasks matching a filter, newest first.
    async fn list_tasks(&self, filter: &TaskFilter) -> Result<Vec<Task>>;
    /// How many of a user's tasks are not terminal.
    async fn count_active_tasks(&self, user_id: &str) -> Result<i64>;
    /// Every task that is not terminal.
    async fn unfinished_tasks(&self) -> Result<Vec<Task>>;
    /// A task's events in order.
    async fn task_events(&self, task_id: Uuid) -> Result<Vec<StoredEvent>>;
    /// Up to `limit` events of a session stream after `after_seq`, in order.
    async fn events_after(
        &self,
        session_id: Uuid,
        after_seq: i64,
        limit: i64,
    ) -> Result<Vec<StoredEvent>>;

    /// The same events as [`Store::events_after`], as `event` frames (a
    /// store may build them without decoding each event first).
    async fn event_frames_after(
        &self,
        session_id: Uuid,
        after_seq: i64,
        limit: i64,
    ) -> Result<Vec<Delivery>> {
        Ok(self
            .events_after(session_id, after_seq, limit)
            .await?
            .iter()
            .map(|e| Delivery {
                seq: e.seq,
                frame: crate::protocol::ws::session_event_frame(e),
            })
            .collect())
    }

    // ---- audit ----

    /// Append audit records on their own (denials, failed logins).
    async fn audit(&self, records: Vec<NewAudit>) -> Result<()>;
    /// Audit records matching a query, newest first.
    async fn audit_query(&self, query: &AuditQuery) -> Result<Vec<AuditRecord>>;
    /// Up to `limit` audit records after `after_seq`, in order.
    async fn audit_after(&self, after_seq: i64, limit: i64) -> Result<Vec<AuditRecord>>;
    /// The seq of the newest audit record.
    async fn audit_last_seq(&self) -> Result<i64>;

    /// Store a signed audit checkpoint.
    async fn add_checkpoint(&self, cp: &Checkpoint) -> Result<()>;
    /// Every stored checkpoint, by seq.
    async fn checkpoints(&self) -> Result<Vec<Checkpoint>>;

    // ---- devices ----

    /// Insert or replace a device.
    async fn put_device(&self, device: &Device, audit: Vec<NewAudit>) -> Result<()>;
    /// One device.
    async fn get_device(&self, device_id: &str) -> Result<Option<Device>>;
    /// Devices: one user's, or everyone's.
    async fn list_devices(&self, user_id: Option<&str>) -> Result<Vec<Device>>;
    /// Store a challenge nonce for `user_id`.
    async fn add_nonce(&self, nonce: &str, user_id: &str, expires_at: DateTime<Utc>) -> Result<()>;
    /// Use a nonce once: true only the first time, for its user, before it expires.
    async fn use_nonce(&self, nonce: &str, user_id: &str, now: DateTime<Utc>) -> Result<bool>;

    // ---- metrics ----

    /// Tasks per state, and active sessions.
    async fn stats(&self) -> Result<Stats>;

    // ---- several nodes ----

    /// The coordination of several nodes over this store, when it is shared
    /// (PostgreSQL). `None` for a single-node store (SQLite): the node runs
    /// every task it accepts itself.
    fn cluster(&self) -> Option<&dyn Cluster> {
        None
    }

    /// Close the store at shutdown: what is queued is written, files are
    /// closed, and later calls fail with `unavailable`.
    async fn close(&self) {}

    /// A committer of the store's own for [`EventWriter`] (SQLite's writer
    /// thread), and a task that stops it once `stop` fires; `None` when
    /// batches should go through [`Store::append`].
    fn own_writer(
        &self,
        _stop: tokio_util::sync::CancellationToken,
    ) -> Option<(EventWriter, tokio::task::JoinHandle<()>)> {
        None
    }
}

/// Every store is the bus's backlog: a session stream's stored events, or
/// the audit chain's, as frames.
#[async_trait]
impl<S: Store> Backlog for S {
    async fn stored_after(&self, key: StreamKey, after: i64, limit: i64) -> Result<Vec<Delivery>> {
        Ok(match key {
            StreamKey::Session(id) => self.event_frames_after(id, after, limit).await?,
            StreamKey::Audit => self
                .audit_after(after, limit)
                .await?
                .iter()
                .map(|r| Delivery {
                    seq: r.seq,
                    frame: crate::protocol::ws::audit_event_frame(r),
                })
                .collect(),
            StreamKey::Tasks => Vec::new(),
        })
    }
}

/// Counts for `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// How many tasks are in each state.
    pub tasks_by_state: Vec<(TaskState, i64)>,
    /// How many sessions are active.
    pub active_sessions: i64,
}

/// Open the store a URL names: `sqlite://PATH` or `postgres://...`.
pub async fn open(url: &str, bus: Arc<Bus>) -> Result<Arc<dyn Store>, anyhow::Error> {
    if let Some(rest) = url.strip_prefix("sqlite:") {
        let path = rest.trim_start_matches("//");
        Ok(Arc::new(sqlite::SqliteStore::open(path, bus).await?))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(postgres::PostgresStore::open(url, bus).await?))
    } else {
        anyhow::bail!("unsupported database URL `{url}`: expected sqlite://PATH or postgres://...")
    }
}

/// The SQLite file a `sqlite://` URL names, if it is one.
pub fn sqlite_path(url: &str) -> Option<&str> {
    url.strip_prefix("sqlite:")
        .map(|r| r.trim_start_matches("//"))
}

/// Turn a store-level decoding problem into an internal error.
pub(crate) fn corrupt(what: impl std::fmt::Display) -> Error {
    Error::internal(format!("stored data could not be read: {what}"))
}
