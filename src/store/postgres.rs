//! The shared store: PostgreSQL, for several nodes over one database.
//!
//! Same semantics as [`super::sqlite`]: compare-and-set task changes, a
//! session's `seq` bumped inside the writing transaction (the row lock on
//! `sessions` serializes writers of one stream across nodes), and the audit
//! chain extended under a lock on its single head row, so that writers on
//! every node chain one after another.
//!
//! Every transaction that stores events or audit records also sends a small
//! `NOTIFY` (stream, seq range), delivered by PostgreSQL only if it commits.
//! Each node's listener ([`listen`]) turns those into local bus publishes by
//! reading the stored events back; the node that wrote them publishes them
//! directly and the [`Fanout`] skips what was already published.
//! Work distribution and leases live in [`cluster`].

mod cluster;
mod counts;
mod listen;
mod projects;
mod prune;
mod storage;

pub use listen::listener_application_name;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use dashmap::DashMap;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::{PgPool, Postgres, QueryBuilder, Row, Transaction};
use tokio::sync::broadcast;
use uuid::Uuid;

use crate::audit::checkpoint::Checkpoint;
use crate::audit::{AuditRecord, NewAudit};
use crate::auth::User;
use crate::bus::Bus;
use crate::device::Device;
use crate::error::Result;
use crate::event::{EventBody, StoredEvent, StreamKey};
use crate::protocol::ws::{audit_event_frame, event_data, publish_session_event};
use crate::session::{Session, SessionState};
use crate::store::{
    Append, AuditQuery, Rejected, Signal, Stats, Store, TaskChange, TaskFilter, corrupt,
};
use crate::task::{Task, TaskState};

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
            fanout: Arc::new(Fanout {
                bus,
                published: DashMap::new(),
            }),
            signals: broadcast::channel(1024).0,
        })
    }

    /// The connection pool (for tests and tools).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

/// Publishes stored events to the local bus at most once per seq, whether
/// they come from this node's commits or from another node's notification.
pub(crate) struct Fanout {
    bus: Arc<Bus>,
    /// The highest seq published per stream.
    published: DashMap<StreamKey, i64>,
}

impl Fanout {
    /// Claim `seq` of `key` for publishing; false when it already was.
    fn claim(&self, key: StreamKey, seq: i64) -> bool {
        let mut last = self.published.entry(key).or_insert(0);
        if seq <= *last {
            return false;
        }
        *last = seq;
        true
    }

    /// Whether anyone on this node listens to `key`'s events: its own
    /// subscribers, or for a session those of the `tasks` stream.
    fn listened(&self, key: StreamKey) -> bool {
        self.bus.has_subscribers(&key)
            || (matches!(key, StreamKey::Session(_)) && self.bus.has_subscribers(&StreamKey::Tasks))
    }

    /// The highest seq published for `key`, if any.
    fn last(&self, key: &StreamKey) -> Option<i64> {
        self.published.get(key).map(|s| *s)
    }

    /// Publish committed events and audit records not yet published.
    fn publish(&self, events: &[StoredEvent], audit: &[AuditRecord]) {
        let tasks = self.bus.has_subscribers(&StreamKey::Tasks);
        for e in events {
            let key = StreamKey::Session(e.session_id);
            let state = tasks && matches!(e.body, EventBody::State(_));
            if (state || self.bus.has_subscribers(&key)) && self.claim(key, e.seq) {
                publish_session_event(&self.bus, e, &event_data(e));
            }
        }
        for r in audit {
            if self.bus.has_subscribers(&StreamKey::Audit) && self.claim(StreamKey::Audit, r.seq) {
                self.bus
                    .publish(StreamKey::Audit, r.seq, || audit_event_frame(r));
            }
        }
    }
}

fn json<T: Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

fn from_json<T: DeserializeOwned>(row: &PgRow, column: &str) -> Result<T> {
    let v: Value = row.try_get(column)?;
    serde_json::from_value(v).map_err(corrupt)
}

fn user_from(row: &PgRow) -> Result<User> {
    Ok(User {
        user_id: row.try_get("user_id")?,
        roles: from_json(row, "roles")?,
        grants: from_json(row, "grants")?,
        revokes: from_json(row, "revokes")?,
        created_at: row.try_get("created_at")?,
    })
}

fn session_from(row: &PgRow) -> Result<Session> {
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

fn event_from(row: &PgRow) -> Result<StoredEvent> {
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

fn audit_from(row: &PgRow) -> Result<AuditRecord> {
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

/// Send a notification that is delivered only if `tx` commits.
async fn notify(tx: &mut Transaction<'_, Postgres>, channel: &str, payload: &str) -> Result<()> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(channel)
        .bind(payload)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Chain and insert audit records inside `tx`, holding the chain's head row
/// until commit so that writers on every node take turns.
async fn write_audit(
    tx: &mut Transaction<'_, Postgres>,
    records: Vec<NewAudit>,
) -> Result<Vec<AuditRecord>> {
    if records.is_empty() {
        return Ok(Vec::new());
    }
    let (mut seq, mut prev): (i64, String) =
        sqlx::query_as("SELECT seq, hash FROM audit_head WHERE id = 1 FOR UPDATE")
            .fetch_one(&mut **tx)
            .await?;
    let first = seq + 1;
    let mut out = Vec::with_capacity(records.len());
    for new in records {
        seq += 1;
        let r = new.chain(seq, &prev);
        sqlx::query(
            "INSERT INTO audit (seq, event_id, event_type, timestamp, user_id, session_id, resource_type, \
             resource_id, action, status, details, hash, prev_hash) \
             VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13)",
        )
        .bind(r.seq)
        .bind(r.event_id)
        .bind(&r.event_type)
        .bind(r.timestamp)
        .bind(&r.user_id)
        .bind(r.session_id)
        .bind(&r.resource_type)
        .bind(&r.resource_id)
        .bind(&r.action)
        .bind(&r.status)
        .bind(&r.details)
        .bind(&r.hash)
        .bind(&r.prev_hash)
        .execute(&mut **tx)
        .await?;
        prev = r.hash.clone();
        out.push(r);
    }
    sqlx::query("UPDATE audit_head SET seq = $1, hash = $2 WHERE id = 1")
        .bind(seq)
        .bind(&prev)
        .execute(&mut **tx)
        .await?;
    notify(tx, EVENTS_CHANNEL, &format!("a {first} {seq}")).await?;
    Ok(out)
}

/// The state of a task, or `NoTask`.
async fn current_state(
    tx: &mut Transaction<'_, Postgres>,
    task_id: Uuid,
) -> Result<Result<TaskState, Rejected>> {
    let state: Option<String> = sqlx::query_scalar("SELECT state FROM tasks WHERE task_id = $1")
        .bind(task_id)
        .fetch_optional(&mut **tx)
        .await?;
    Ok(match state {
        None => Err(Rejected::NoTask),
        Some(s) => Ok(s.parse::<TaskState>().map_err(corrupt)?),
    })
}

/// Apply one append's task change; `Err` means it is refused.
async fn apply_change(
    tx: &mut Transaction<'_, Postgres>,
    a: &Append,
) -> Result<Result<(), Rejected>> {
    match &a.change {
        TaskChange::Insert(t) => {
            let owner: Option<(String, String)> =
                sqlx::query_as("SELECT user_id, state FROM sessions WHERE session_id = $1")
                    .bind(a.session_id)
                    .fetch_optional(&mut **tx)
                    .await?;
            if owner.is_none_or(|(user, state)| user != t.user_id || state != "active") {
                return Ok(Err(Rejected::NoSession));
            }
            let done = sqlx::query(
                "INSERT INTO tasks (task_id, execution_uuid, session_id, user_id, agent_type, prompt, context, \
                 params, state, result, error, metadata, idempotency_key, created_at, updated_at, execution_time) \
                 VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16) ON CONFLICT DO NOTHING",
            )
            .bind(t.task_id)
            .bind(t.execution_uuid)
            .bind(t.session_id)
            .bind(&t.user_id)
            .bind(&t.agent_type)
            .bind(&t.prompt)
            .bind(&t.context)
            .bind(&t.params)
            .bind(t.state.as_str())
            .bind(&t.result)
            .bind(&t.error)
            .bind(&t.metadata)
            .bind(&t.idempotency_key)
            .bind(t.created_at)
            .bind(t.updated_at)
            .bind(t.execution_time)
            .execute(&mut **tx)
            .await?;
            if done.rows_affected() != 1 {
                return Ok(Err(Rejected::Duplicate));
            }
            if t.state == TaskState::Pending {
                // Wakes the nodes that could claim it, once committed.
                notify(tx, super::postgres::TASKS_CHANNEL, &t.agent_type).await?;
            }
            Ok(Ok(()))
        }
        TaskChange::Transition(t) => {
            let done = sqlx::query(
                "UPDATE tasks SET state = $1, result = COALESCE($2, result), error = COALESCE($3, error), \
                 execution_time = COALESCE($4, execution_time), updated_at = $5 WHERE task_id = $6 AND state = $7",
            )
            .bind(t.to.as_str())
            .bind(&t.result)
            .bind(&t.error)
            .bind(t.execution_time)
            .bind(a.at)
            .bind(a.task_id)
            .bind(t.from.as_str())
            .execute(&mut **tx)
            .await?;
            if done.rows_affected() == 1 {
                return Ok(Ok(()));
            }
            Ok(Err(match current_state(tx, a.task_id).await? {
                Ok(state) => Rejected::StateIs(state),
                Err(r) => r,
            }))
        }
        TaskChange::Require(want) => Ok(match current_state(tx, a.task_id).await? {
            Ok(state) if state == *want => Ok(()),
            Ok(state) => Err(Rejected::StateIs(state)),
            Err(r) => Err(r),
        }),
    }
}

/// Store one event after its change was applied: bump the stream's seq and
/// insert the row.
async fn insert_event(tx: &mut Transaction<'_, Postgres>, a: &Append) -> Result<i64> {
    let seq: i64 = sqlx::query_scalar(
        "UPDATE sessions SET last_seq = last_seq + 1, last_activity = $1 WHERE session_id = $2 RETURNING last_seq",
    )
    .bind(a.at)
    .bind(a.session_id)
    .fetch_one(&mut **tx)
    .await?;
    let data = serde_json::to_value(&a.body).map_err(corrupt)?;
    sqlx::query(
        "INSERT INTO events (session_id, seq, task_id, event_type, data, at) VALUES ($1,$2,$3,$4,$5,$6)",
    )
    .bind(a.session_id)
    .bind(seq)
    .bind(a.task_id)
    .bind(a.body.type_name())
    .bind(&data["data"])
    .bind(a.at)
    .execute(&mut **tx)
    .await?;
    Ok(seq)
}

/// Notify one `s <session> <from> <to>` per stream touched by `stored`.
async fn notify_events(tx: &mut Transaction<'_, Postgres>, stored: &[StoredEvent]) -> Result<()> {
    let mut ranges: Vec<(Uuid, i64, i64)> = Vec::new();
    for e in stored {
        match ranges.iter_mut().find(|r| r.0 == e.session_id) {
            Some(r) => r.2 = e.seq,
            None => ranges.push((e.session_id, e.seq, e.seq)),
        }
    }
    for (session, from, to) in ranges {
        notify(tx, EVENTS_CHANNEL, &format!("s {session} {from} {to}")).await?;
    }
    Ok(())
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
        let rows = match user_id {
            Some(u) => {
                sqlx::query("SELECT * FROM sessions WHERE user_id = $1 ORDER BY created_at DESC")
                    .bind(u)
                    .fetch_all(&self.pool)
                    .await?
            }
            None => {
                sqlx::query("SELECT * FROM sessions ORDER BY created_at DESC")
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        rows.iter().map(session_from).collect()
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
        let mut tx = self.pool.begin().await?;
        // Lock every stream of the batch in one order, so that two nodes'
        // batches over the same sessions cannot deadlock.
        let mut sessions: Vec<Uuid> = batch.iter().map(|a| a.session_id).collect();
        sessions.sort();
        sessions.dedup();
        sqlx::query(
            "SELECT 1 FROM sessions WHERE session_id = ANY($1) ORDER BY session_id FOR UPDATE",
        )
        .bind(&sessions)
        .execute(&mut *tx)
        .await?;
        let mut results = Vec::with_capacity(batch.len());
        let mut stored = Vec::with_capacity(batch.len());
        let mut audit_new = Vec::new();
        for a in batch {
            // The condition first: a refused change must not consume a seq.
            if let Err(rejected) = apply_change(&mut tx, &a).await? {
                results.push(Err(rejected));
                continue;
            }
            let seq = insert_event(&mut tx, &a).await?;
            audit_new.extend(a.audit);
            let event = StoredEvent {
                session_id: a.session_id,
                seq,
                task_id: a.task_id,
                at: a.at,
                body: a.body,
            };
            stored.push(event.clone());
            results.push(Ok(event));
        }
        notify_events(&mut tx, &stored).await?;
        let audit = write_audit(&mut tx, audit_new).await?;
        tx.commit().await?;
        metrics::counter!("switchboard_events_stored_total").increment(stored.len() as u64);
        self.fanout.publish(&stored, &audit);
        Ok(results)
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
        let mut q = QueryBuilder::<Postgres>::new("SELECT * FROM tasks WHERE TRUE");
        if let Some(u) = &f.user_id {
            q.push(" AND user_id = ").push_bind(u.clone());
        }
        if let Some(s) = f.session_id {
            q.push(" AND session_id = ").push_bind(s);
        }
        if let Some(s) = f.state {
            q.push(" AND state = ").push_bind(s.as_str());
        }
        if let Some(a) = &f.agent_type {
            q.push(" AND agent_type = ").push_bind(a.clone());
        }
        if let Some((at, id)) = &f.before {
            q.push(" AND (created_at, task_id) < (")
                .push_bind(*at)
                .push(", ")
                .push_bind(*id)
                .push(")");
        }
        q.push(" ORDER BY created_at DESC, task_id DESC LIMIT ")
            .push_bind(f.limit);
        q.build()
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
        let mut q = QueryBuilder::<Postgres>::new("SELECT * FROM audit WHERE TRUE");
        if let Some(s) = f.session_id {
            q.push(" AND session_id = ").push_bind(s);
        }
        if let Some(u) = &f.user_id {
            q.push(" AND user_id = ").push_bind(u.clone());
        }
        if let Some(t) = &f.event_type {
            q.push(" AND event_type = ").push_bind(t.clone());
        }
        if let Some(t) = &f.resource_type {
            q.push(" AND resource_type = ").push_bind(t.clone());
        }
        if let Some(t) = &f.since {
            q.push(" AND timestamp >= ").push_bind(*t);
        }
        if let Some(t) = &f.until {
            q.push(" AND timestamp < ").push_bind(*t);
        }
        if let Some(s) = f.before_seq {
            q.push(" AND seq < ").push_bind(s);
        }
        q.push(" ORDER BY seq DESC LIMIT ").push_bind(f.limit);
        q.build()
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
            tasks_by_state: rows
                .into_iter()
                .filter_map(|(s, n)| s.parse().ok().map(|s| (s, n)))
                .collect(),
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
        let rows: Vec<(i64, String, DateTime<Utc>, String, String)> = sqlx::query_as(
            "SELECT seq, head, at, key_id, signature FROM audit_checkpoints ORDER BY seq",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(seq, head, at, key_id, signature)| Checkpoint {
                seq,
                head,
                at,
                key_id,
                signature,
            })
            .collect())
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
        let rows = sqlx::query(
            "SELECT * FROM devices WHERE ($1::TEXT IS NULL OR user_id = $1) ORDER BY first_seen",
        )
        .bind(user_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(device_from).collect()
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

fn device_from(row: &PgRow) -> Result<Device> {
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
