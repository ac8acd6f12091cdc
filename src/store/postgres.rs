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

mod append;
mod cluster;
mod counts;
mod fanout;
mod listen;
mod lock;
mod notify;
mod plan;
mod projects;
mod prune;
mod rows;
mod storage;
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
use crate::store::query::{self, Arg, Dialect, Filtered};
use crate::store::{Append, AuditQuery, Rejected, Signal, Stats, Store, TaskFilter};
use crate::task::Task;
use fanout::Fanout;
pub(crate) use rows::task_from;
use rows::{
    TASK_COLUMNS, audit_from, bind, checkpoint_from, device_from, event_from, json, session_from,
    user_from,
};
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
    claimant: std::sync::OnceLock<(String, f64)>,
}

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
            .connect_with(options.clone())
            .await?;
        sqlx::migrate!("src/store/migrations/postgres")
            .run(&pool)
            .await?;
        Ok(PostgresStore {
            pool,
            options,
            fanout: Arc::new(Fanout::new(bus)),
            signals: broadcast::channel(1024).0,
            claimant: std::sync::OnceLock::new(),
        })
    }

    /// The connection pool (for tests and tools).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

impl PostgresStore {
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
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM users")
            .fetch_one(&self.pool)
            .await?)
    }

    async fn create_user(&self, user: &User, token_hash: &str, audit: Vec<NewAudit>) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO users (user_id, roles, grants, revokes, created_at) VALUES ($1,$2,$3,$4,$5)",
        )
        .bind(&user.user_id)
        .bind(json(&user.roles))
        .bind(json(&user.grants))
        .bind(json(&user.revokes))
        .bind(user.created_at)
        .execute(&mut *tx)
        .await?;
        sqlx::query("INSERT INTO tokens (token_hash, user_id, created_at) VALUES ($1,$2,$3)")
            .bind(token_hash)
            .bind(&user.user_id)
            .bind(user.created_at)
            .execute(&mut *tx)
            .await?;
        self.commit_audited(tx, audit).await?;
        Ok(())
    }

    async fn get_user(&self, user_id: &str) -> Result<Option<User>> {
        sqlx::query("SELECT * FROM users WHERE user_id = $1")
            .bind(user_id)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(user_from)
            .transpose()
    }

    async fn list_users(&self) -> Result<Vec<User>> {
        sqlx::query("SELECT * FROM users ORDER BY user_id")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(user_from)
            .collect()
    }

    async fn update_user(&self, user: &User, audit: Vec<NewAudit>) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("UPDATE users SET roles = $1, grants = $2, revokes = $3 WHERE user_id = $4")
            .bind(json(&user.roles))
            .bind(json(&user.grants))
            .bind(json(&user.revokes))
            .bind(&user.user_id)
            .execute(&mut *tx)
            .await?;
        self.commit_audited(tx, audit).await?;
        Ok(())
    }

    async fn add_token(
        &self,
        user_id: &str,
        token_hash: &str,
        at: DateTime<Utc>,
        expires_at: Option<DateTime<Utc>>,
        audit: Vec<NewAudit>,
    ) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO tokens (token_hash, user_id, created_at, expires_at) VALUES ($1,$2,$3,$4)",
        )
        .bind(token_hash)
        .bind(user_id)
        .bind(at)
        .bind(expires_at)
        .execute(&mut *tx)
        .await?;
        self.commit_audited(tx, audit).await?;
        Ok(())
    }

    async fn revoke_tokens(
        &self,
        user_id: &str,
        at: DateTime<Utc>,
        audit: Vec<NewAudit>,
    ) -> Result<u64> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "UPDATE tokens SET revoked_at = $1 WHERE user_id = $2 AND revoked_at IS NULL",
        )
        .bind(at)
        .bind(user_id)
        .execute(&mut *tx)
        .await?;
        self.commit_audited(tx, audit).await?;
        Ok(done.rows_affected())
    }

    async fn user_by_token(&self, token_hash: &str, now: DateTime<Utc>) -> Result<Option<User>> {
        sqlx::query(
            "SELECT u.* FROM tokens t JOIN users u ON u.user_id = t.user_id \
             WHERE t.token_hash = $1 AND t.revoked_at IS NULL AND (t.expires_at IS NULL OR t.expires_at > $2)",
        )
        .bind(token_hash)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(user_from)
        .transpose()
    }

    async fn create_session(&self, s: &Session, audit: Vec<NewAudit>) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO sessions (session_id, user_id, device_id, created_at, last_activity, permissions, state, \
             last_seq, is_default) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9)",
        )
        .bind(s.session_id)
        .bind(&s.user_id)
        .bind(&s.device_id)
        .bind(s.created_at)
        .bind(s.last_activity)
        .bind(json(&s.permissions))
        .bind(s.state.as_str())
        .bind(s.last_seq)
        .bind(s.is_default)
        .execute(&mut *tx)
        .await?;
        self.commit_audited(tx, audit).await?;
        Ok(())
    }

    async fn get_session(&self, session_id: Uuid) -> Result<Option<Session>> {
        sqlx::query("SELECT * FROM sessions WHERE session_id = $1")
            .bind(session_id)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(session_from)
            .transpose()
    }

    async fn default_session(&self, user_id: &str) -> Result<Option<Session>> {
        sqlx::query("SELECT * FROM sessions WHERE user_id = $1 AND is_default AND state = 'active'")
            .bind(user_id)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(session_from)
            .transpose()
    }

    async fn list_sessions(&self, user_id: Option<&str>) -> Result<Vec<Session>> {
        let order = " ORDER BY created_at DESC";
        let q = query::of_user(
            Dialect::Postgres,
            "SELECT * FROM sessions",
            "user_id = ?",
            user_id,
            order,
        );
        bind(sqlx::query(&q.sql), q.args)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(session_from)
            .collect()
    }

    async fn end_session(
        &self,
        session_id: Uuid,
        at: DateTime<Utc>,
        audit: Vec<NewAudit>,
    ) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE sessions SET state = 'ended', last_activity = $1 WHERE session_id = $2",
        )
        .bind(at)
        .bind(session_id)
        .execute(&mut *tx)
        .await?;
        self.commit_audited(tx, audit).await?;
        Ok(())
    }

    async fn append(&self, batch: Vec<Append>) -> Result<Vec<Result<StoredEvent, Rejected>>> {
        self.append_batch(batch).await
    }

    async fn get_task(&self, task_id: Uuid) -> Result<Option<Task>> {
        sqlx::query("SELECT * FROM tasks WHERE task_id = $1")
            .bind(task_id)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(task_from)
            .transpose()
    }

    async fn task_by_idempotency_key(&self, user_id: &str, key: &str) -> Result<Option<Task>> {
        sqlx::query("SELECT * FROM tasks WHERE user_id = $1 AND idempotency_key = $2")
            .bind(user_id)
            .bind(key)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(task_from)
            .transpose()
    }

    async fn list_tasks(&self, f: &TaskFilter) -> Result<Vec<Task>> {
        let mut q = Filtered::new(Dialect::Postgres, "SELECT * FROM tasks");
        query::tasks(&mut q, &TASK_COLUMNS, f, true);
        if let Some((at, id)) = f.before {
            q.push(" AND (created_at, task_id) < (?", Some(Arg::Time(at)))
                .push(", ?)", Some(Arg::Uuid(id)));
        }
        q.push(
            " ORDER BY created_at DESC, task_id DESC LIMIT ?",
            Some(Arg::Int(f.limit)),
        );
        bind(sqlx::query(&q.sql), q.args)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(task_from)
            .collect()
    }

    async fn unfinished_tasks(&self) -> Result<Vec<Task>> {
        sqlx::query(
            "SELECT * FROM tasks WHERE state NOT IN ('completed', 'failed', 'cancelled') ORDER BY created_at",
        )
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(task_from)
        .collect()
    }

    async fn task_events(&self, task_id: Uuid) -> Result<Vec<StoredEvent>> {
        sqlx::query("SELECT * FROM events WHERE task_id = $1 ORDER BY seq")
            .bind(task_id)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(event_from)
            .collect()
    }

    async fn events_after(
        &self,
        session_id: Uuid,
        after_seq: i64,
        limit: i64,
    ) -> Result<Vec<StoredEvent>> {
        sqlx::query("SELECT * FROM events WHERE session_id = $1 AND seq > $2 ORDER BY seq LIMIT $3")
            .bind(session_id)
            .bind(after_seq)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(event_from)
            .collect()
    }

    async fn audit(&self, records: Vec<NewAudit>) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let audit = write_audit(&mut tx, records).await?;
        tx.commit().await?;
        self.fanout.publish(&[], &audit);
        Ok(())
    }

    async fn audit_query(&self, f: &AuditQuery) -> Result<Vec<AuditRecord>> {
        let q = query::audit(Dialect::Postgres, "SELECT * FROM audit", f);
        bind(sqlx::query(&q.sql), q.args)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(audit_from)
            .collect()
    }

    async fn audit_after(&self, after_seq: i64, limit: i64) -> Result<Vec<AuditRecord>> {
        sqlx::query("SELECT * FROM audit WHERE seq > $1 ORDER BY seq LIMIT $2")
            .bind(after_seq)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(audit_from)
            .collect()
    }

    async fn audit_last_seq(&self) -> Result<i64> {
        Ok(
            sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0)::BIGINT FROM audit")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    async fn stats(&self) -> Result<Stats> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT state, COUNT(*) FROM tasks GROUP BY state")
                .fetch_all(&self.pool)
                .await?;
        let active_sessions =
            sqlx::query_scalar("SELECT COUNT(*) FROM sessions WHERE state = 'active'")
                .fetch_one(&self.pool)
                .await?;
        Ok(Stats {
            tasks_by_state: query::by_state(rows),
            active_sessions,
        })
    }

    fn cluster(&self) -> Option<&dyn crate::store::Cluster> {
        Some(self)
    }

    async fn token_expiry(&self, token_hash: &str) -> Result<Option<Option<DateTime<Utc>>>> {
        let row: Option<(Option<DateTime<Utc>>,)> = sqlx::query_as(
            "SELECT expires_at FROM tokens WHERE token_hash = $1 AND revoked_at IS NULL",
        )
        .bind(token_hash)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|(e,)| e))
    }

    async fn count_active_tasks(&self, user_id: &str) -> Result<i64> {
        Ok(sqlx::query_scalar(
            "SELECT COUNT(*) FROM tasks WHERE user_id = $1 AND state NOT IN ('completed', 'failed', 'cancelled')",
        )
        .bind(user_id)
        .fetch_one(&self.pool)
        .await?)
    }

    async fn add_checkpoint(&self, cp: &Checkpoint) -> Result<()> {
        sqlx::query(
            "INSERT INTO audit_checkpoints (seq, head, at, key_id, signature) VALUES ($1,$2,$3,$4,$5) \
             ON CONFLICT (seq) DO NOTHING",
        )
        .bind(cp.seq)
        .bind(&cp.head)
        .bind(cp.at)
        .bind(&cp.key_id)
        .bind(&cp.signature)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn checkpoints(&self) -> Result<Vec<Checkpoint>> {
        sqlx::query("SELECT seq, head, at, key_id, signature FROM audit_checkpoints ORDER BY seq")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(checkpoint_from)
            .collect()
    }

    async fn put_device(&self, d: &Device, audit: Vec<NewAudit>) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO devices (device_id, user_id, name, public_key, state, first_seen, last_seen, decided_by) \
             VALUES ($1,$2,$3,$4,$5,$6,$7,$8) ON CONFLICT (device_id) DO UPDATE SET name = excluded.name, \
             public_key = excluded.public_key, state = excluded.state, last_seen = excluded.last_seen, \
             first_seen = excluded.first_seen, decided_by = excluded.decided_by",
        )
        .bind(&d.device_id)
        .bind(&d.user_id)
        .bind(&d.name)
        .bind(&d.public_key)
        .bind(d.state.as_str())
        .bind(d.first_seen)
        .bind(d.last_seen)
        .bind(&d.decided_by)
        .execute(&mut *tx)
        .await?;
        self.commit_audited(tx, audit).await?;
        Ok(())
    }

    async fn get_device(&self, device_id: &str) -> Result<Option<Device>> {
        sqlx::query("SELECT * FROM devices WHERE device_id = $1")
            .bind(device_id)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(device_from)
            .transpose()
    }

    async fn list_devices(&self, user_id: Option<&str>) -> Result<Vec<Device>> {
        let order = " ORDER BY first_seen";
        let q = query::of_user(
            Dialect::Postgres,
            "SELECT * FROM devices",
            "user_id = ?",
            user_id,
            order,
        );
        bind(sqlx::query(&q.sql), q.args)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(device_from)
            .collect()
    }

    async fn add_nonce(&self, nonce: &str, user_id: &str, expires_at: DateTime<Utc>) -> Result<()> {
        sqlx::query("INSERT INTO device_nonces (nonce, user_id, expires_at) VALUES ($1,$2,$3)")
            .bind(nonce)
            .bind(user_id)
            .bind(expires_at)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn use_nonce(&self, nonce: &str, user_id: &str, now: DateTime<Utc>) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE device_nonces SET used = TRUE WHERE nonce = $1 AND user_id = $2 AND NOT used AND expires_at > $3",
        )
        .bind(nonce)
        .bind(user_id)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }
}
