//! The shared store: PostgreSQL, for several nodes over one database.
//!
//! Same semantics as [`super::sqlite`]: compare-and-set task changes, a
//! session's `seq` bumped inside the writing transaction (the row lock on
//! `sessions` serializes writers of one stream across nodes), and the audit
//! chain extended under a lock on its single head row, so that writers on
//! every node chain one after another.
//!
//! Appends come in batches from the node's committer
//! ([`crate::store::writer`]), and each batch is one transaction of a fixed
//! number of statements ([`append`]): row locks in one order, every row
//! written through `UNNEST` arrays, one `NOTIFY` carrying the streams and
//! seq ranges it stored, delivered by PostgreSQL only if it commits.
//! Each node's listener ([`listen`]) turns those into local bus publishes by
//! reading the stored events back; the node that wrote them publishes them
//! directly and the [`fanout::Fanout`] skips what was already published.
//! Work distribution and leases live in [`cluster`].
//!
//! The [`Store`] methods below hand over to the file of their concern:
//! [`users`] (users, tokens), [`sessions`] (sessions, devices, nonces),
//! [`tasks`] (reading tasks and events), [`audit`] (the audit log).

/// The SQL condition that an event `e` is one of task `$t`'s: in its
/// session's stream from the task's `first_seq` on (migration 0007: events
/// have no index by task). Callers add the upper bound they need.
macro_rules! events_of {
    ($t:literal) => {
        concat!(
            "e.session_id = ",
            $t,
            ".session_id AND e.seq >= ",
            $t,
            ".first_seq AND e.task_id = ",
            $t,
            ".task_id"
        )
    };
}

mod append;
mod audit;
mod claims;
mod cluster;
mod counts;
mod fanout;
mod listen;
mod lock;
mod notify;
mod pipeline;
mod plan;
mod projects;
mod prune;
mod rows;
mod sessions;
mod storage;
mod tasks;
mod users;
mod write;

pub use listen::listener_application_name;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres, Transaction};
use tokio::sync::broadcast;
use uuid::Uuid;

use crate::audit::checkpoint::Checkpoint;
use crate::audit::{AuditRecord, NewAudit};
use crate::auth::User;
use crate::bus::Bus;
use crate::device::Device;
use crate::error::Result;
use crate::event::StoredEvent;
use crate::session::Session;
use crate::store::{Append, AuditQuery, Rejected, Signal, Stats, Store, TaskFilter};
use crate::task::Task;
use fanout::Fanout;
pub(crate) use rows::task_from;
use write::write_audit;

/// Channel of stored-event notifications: `s <session> <from> <to>` or `a <from> <to>`.
pub const EVENTS_CHANNEL: &str = "switchboard_events";
/// Channel of new pending tasks: the payload is the agent_type.
pub const TASKS_CHANNEL: &str = "switchboard_tasks";
/// Channel of task control (stop, answer): a JSON [`Signal`].
pub const CONTROL_CHANNEL: &str = "switchboard_control";

/// The PostgreSQL store. Cheap to clone: every field is shared.
#[derive(Clone)]
pub struct PostgresStore {
    /// Connections for queries and transactions.
    pool: PgPool,
    /// How to open the listener's own connection.
    options: PgConnectOptions,
    /// Local publishing, shared with the listener.
    fanout: Arc<Fanout>,
    /// Signals from every node (pending work, control), for the engine.
    signals: broadcast::Sender<Signal>,
    /// This node and its lease, once known: the claim of the new tasks a
    /// batch also starts ([`crate::store::Cluster::claim_own_starts`]).
    /// Shared by every clone (the committer runs on one).
    claimant: Arc<std::sync::OnceLock<(String, f64)>>,
    /// Claims of single submitted tasks, committed together.
    claims: claims::Claims,
}

/// A pooled connection idle this long is pinged before it is used again.
const PING_IDLE: Duration = Duration::from_secs(1);

impl PostgresStore {
    /// Connect to `url` and migrate the database.
    pub async fn open(url: &str, bus: Arc<Bus>) -> Result<Self, anyhow::Error> {
        let options = PgConnectOptions::from_str(url)?.application_name("switchboard");
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .min_connections(1)
            // Fail fast when the database is gone: callers answer
            // `unavailable` instead of hanging.
            .acquire_timeout(Duration::from_secs(3))
            // A connection in steady use is known to work: ping only one
            // that sat idle, instead of a round trip before every acquire
            // (sqlx's default), which was on the committer's path once per
            // batch. A connection that died in use fails its statement and
            // leaves the pool; the caller answers `unavailable` or retries.
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    if meta.idle_for >= PING_IDLE {
                        sqlx::Connection::ping(conn).await?;
                    }
                    Ok(true)
                })
            })
            .connect_with(options.clone())
            .await?;
        sqlx::migrate!("src/store/migrations/postgres")
            .run(&pool)
            .await?;
        Ok(PostgresStore {
            options,
            fanout: Arc::new(Fanout::new(bus)),
            signals: broadcast::channel(1024).0,
            claimant: Arc::new(std::sync::OnceLock::new()),
            claims: claims::Claims::spawn(pool.clone()),
            pool,
        })
    }

    /// The connection pool (for tests and tools).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

/// How the node's write transactions begin. Their statements look rows up
/// by key (`= ANY($1)`, `UPDATE ... FROM UNNEST(...)`), and their plans are
/// kept per connection once made: made while a table is small, a plan
/// chose a sequential scan (or a hash join over one) and kept it as the
/// table grew, until the next `ANALYZE` of the table (measured: 23.7
/// million rows read by 6,044 scans of `tasks` in one 10-second submit
/// run of 10,000 tasks). Inside these transactions scans and hash joins
/// cost more than any index path, so every plan made there uses the
/// indexes whatever the tables' size, and is made once.
const BEGIN_WRITE: &str = "BEGIN; SET LOCAL enable_seqscan = off; SET LOCAL enable_hashjoin = off";

impl PostgresStore {
    /// A write transaction (see [`BEGIN_WRITE`]).
    async fn begin(&self) -> Result<Transaction<'static, Postgres>> {
        Ok(self.pool.begin_with(BEGIN_WRITE).await?)
    }

    /// Finish a write: chain `audit` into `tx`, commit both together, then
    /// publish the audit records (never before they are stored).
    async fn commit_audited(
        &self,
        mut tx: Transaction<'_, Postgres>,
        audit: Vec<NewAudit>,
    ) -> Result<()> {
        let audit = write_audit(&mut tx, audit).await?;
        tx.commit().await?;
        self.fanout.publish(&[], &audit);
        Ok(())
    }
}

#[async_trait]
impl Store for PostgresStore {
    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn user_count(&self) -> Result<i64> {
        self.user_count().await
    }

    async fn create_user(&self, user: &User, token_hash: &str, audit: Vec<NewAudit>) -> Result<()> {
        self.create_user(user, token_hash, audit).await
    }

    async fn get_user(&self, user_id: &str) -> Result<Option<User>> {
        self.get_user(user_id).await
    }

    async fn list_users(&self) -> Result<Vec<User>> {
        self.list_users().await
    }

    async fn update_user(&self, user: &User, audit: Vec<NewAudit>) -> Result<()> {
        self.update_user(user, audit).await
    }

    async fn add_token(
        &self,
        user_id: &str,
        token_hash: &str,
        at: DateTime<Utc>,
        expires_at: Option<DateTime<Utc>>,
        audit: Vec<NewAudit>,
    ) -> Result<()> {
        self.add_token(user_id, token_hash, at, expires_at, audit)
            .await
    }

    async fn revoke_tokens(
        &self,
        user_id: &str,
        at: DateTime<Utc>,
        audit: Vec<NewAudit>,
    ) -> Result<u64> {
        self.revoke_tokens(user_id, at, audit).await
    }

    async fn user_by_token(&self, token_hash: &str, now: DateTime<Utc>) -> Result<Option<User>> {
        self.user_by_token(token_hash, now).await
    }

    async fn create_session(&self, s: &Session, audit: Vec<NewAudit>) -> Result<()> {
        self.create_session(s, audit).await
    }

    async fn get_session(&self, session_id: Uuid) -> Result<Option<Session>> {
        self.get_session(session_id).await
    }

    async fn default_session(&self, user_id: &str) -> Result<Option<Session>> {
        self.default_session(user_id).await
    }

    async fn list_sessions(&self, user_id: Option<&str>) -> Result<Vec<Session>> {
        self.list_sessions(user_id).await
    }

    async fn end_session(
        &self,
        session_id: Uuid,
        at: DateTime<Utc>,
        audit: Vec<NewAudit>,
    ) -> Result<()> {
        self.end_session(session_id, at, audit).await
    }

    async fn append(&self, batch: Vec<Append>) -> Result<Vec<Result<StoredEvent, Rejected>>> {
        self.append_batch(batch).await
    }

    async fn get_task(&self, task_id: Uuid) -> Result<Option<Task>> {
        self.get_task(task_id).await
    }

    async fn task_by_idempotency_key(&self, user_id: &str, key: &str) -> Result<Option<Task>> {
        self.task_by_idempotency_key(user_id, key).await
    }

    async fn list_tasks(&self, f: &TaskFilter) -> Result<Vec<Task>> {
        self.list_tasks(f).await
    }

    async fn unfinished_tasks(&self) -> Result<Vec<Task>> {
        self.unfinished_tasks().await
    }

    async fn task_events(&self, task_id: Uuid) -> Result<Vec<StoredEvent>> {
        self.task_events(task_id).await
    }

    async fn events_after(
        &self,
        session_id: Uuid,
        after_seq: i64,
        limit: i64,
    ) -> Result<Vec<StoredEvent>> {
        self.events_after(session_id, after_seq, limit).await
    }

    async fn audit(&self, records: Vec<NewAudit>) -> Result<()> {
        self.audit(records).await
    }

    async fn audit_query(&self, f: &AuditQuery) -> Result<Vec<AuditRecord>> {
        self.audit_query(f).await
    }

    async fn audit_after(&self, after_seq: i64, limit: i64) -> Result<Vec<AuditRecord>> {
        self.audit_after(after_seq, limit).await
    }

    async fn audit_last_seq(&self) -> Result<i64> {
        self.audit_last_seq().await
    }

    async fn stats(&self) -> Result<Stats> {
        self.stats().await
    }

    fn cluster(&self) -> Option<&dyn crate::store::Cluster> {
        Some(self)
    }

    fn own_writer(
        &self,
        stop: tokio_util::sync::CancellationToken,
    ) -> Option<(crate::store::EventWriter, tokio::task::JoinHandle<()>)> {
        Some(pipeline::spawn(self.clone(), stop))
    }

    async fn token_expiry(&self, token_hash: &str) -> Result<Option<Option<DateTime<Utc>>>> {
        self.token_expiry(token_hash).await
    }

    async fn count_active_tasks(&self, user_id: &str) -> Result<i64> {
        self.count_active_tasks(user_id).await
    }

    async fn add_checkpoint(&self, cp: &Checkpoint) -> Result<()> {
        self.add_checkpoint(cp).await
    }

    async fn checkpoints(&self) -> Result<Vec<Checkpoint>> {
        self.checkpoints().await
    }

    async fn put_device(&self, d: &Device, audit: Vec<NewAudit>) -> Result<()> {
        self.put_device(d, audit).await
    }

    async fn get_device(&self, device_id: &str) -> Result<Option<Device>> {
        self.get_device(device_id).await
    }

    async fn list_devices(&self, user_id: Option<&str>) -> Result<Vec<Device>> {
        self.list_devices(user_id).await
    }

    async fn add_nonce(&self, nonce: &str, user_id: &str, expires_at: DateTime<Utc>) -> Result<()> {
        self.add_nonce(nonce, user_id, expires_at).await
    }

    async fn use_nonce(&self, nonce: &str, user_id: &str, now: DateTime<Utc>) -> Result<bool> {
        self.use_nonce(nonce, user_id, now).await
    }
}
