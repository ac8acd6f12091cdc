//! The embedded store: one SQLite file in WAL mode.
//!
//! Writes go through a pool of exactly one connection, so they never fight
//! over SQLite's single write lock (no `SQLITE_BUSY` under load); reads use a
//! separate pool and proceed concurrently thanks to WAL.

mod counts;
mod projects;

use std::collections::HashSet;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row, Sqlite, SqlitePool, Transaction};
use uuid::Uuid;

use crate::audit::checkpoint::Checkpoint;
use crate::audit::{AuditRecord, GENESIS, NewAudit};
use crate::auth::User;
use crate::bus::Bus;
use crate::device::Device;
use crate::error::{Error, Result};
use crate::event::{EventBody, StoredEvent, StreamKey, rfc3339};
use crate::protocol::ws::{audit_event_frame, session_event_frame};
use crate::session::{Session, SessionState};
use crate::store::batch::BatchPlan;
use crate::store::{Append, AuditQuery, Rejected, Stats, Store, TaskChange, TaskFilter, corrupt};
use crate::task::{Task, TaskState};

/// The SQLite store.
pub struct SqliteStore {
    /// The only connection that writes.
    writer: SqlitePool,
    /// Connections that read.
    reader: SqlitePool,
    /// Where committed events are published.
    bus: Arc<Bus>,
}

impl SqliteStore {
    /// Open (creating if missing) the database file at `path` and migrate it.
    pub async fn open(path: &str, bus: Arc<Bus>) -> Result<Self, anyhow::Error> {
        let options = SqliteConnectOptions::from_str(&format!("sqlite://{path}"))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // NORMAL in WAL mode survives a process crash; only an OS crash
            // can lose the last commits.
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        // The writer commits batches of hundreds of rows: statement journals
        // in memory rather than temp files, and a page cache (32 MiB) that
        // holds the hot ends of the events and tasks indexes.
        let writer_options = options
            .clone()
            .pragma("temp_store", "memory")
            .pragma("cache_size", "-32768");
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(writer_options)
            .await?;
        sqlx::migrate!("src/store/migrations/sqlite")
            .run(&writer)
            .await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options.read_only(true))
            .await?;
        Ok(SqliteStore {
            writer,
            reader,
            bus,
        })
    }

    /// Finish a write: chain `audit` into `tx`, commit both together, then
    /// publish the audit records (never before they are stored).
    async fn commit_audited(
        &self,
        mut tx: Transaction<'_, Sqlite>,
        audit: Vec<NewAudit>,
    ) -> Result<()> {
        let audit = write_audit(&mut tx, audit).await?;
        tx.commit().await?;
        self.publish(&[], &audit);
        Ok(())
    }

    /// Publish what a committed transaction wrote.
    fn publish(&self, events: &[StoredEvent], audit: &[AuditRecord]) {
        for e in events {
            self.bus
                .publish(StreamKey::Session(e.session_id), e.seq, || {
                    session_event_frame(e)
                });
        }
        for r in audit {
            self.bus
                .publish(StreamKey::Audit, r.seq, || audit_event_frame(r));
        }
    }
}

fn to_json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".into())
}

/// The `data` object of an event, as stored.
fn event_data(body: &EventBody) -> String {
    match body {
        EventBody::State(s) => to_json(s),
        EventBody::Output(o) => to_json(o),
    }
}

fn from_json<T: DeserializeOwned>(text: &str) -> Result<T> {
    serde_json::from_str(text).map_err(corrupt)
}

fn time(text: &str) -> Result<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(corrupt)
}

fn uuid(text: &str) -> Result<Uuid> {
    Uuid::parse_str(text).map_err(corrupt)
}

fn user_from(row: &SqliteRow) -> Result<User> {
    Ok(User {
        user_id: row.try_get("user_id")?,
        roles: from_json(row.try_get("roles")?)?,
        grants: from_json(row.try_get("grants")?)?,
        revokes: from_json(row.try_get("revokes")?)?,
        created_at: time(row.try_get("created_at")?)?,
    })
}

fn session_from(row: &SqliteRow) -> Result<Session> {
    let state: &str = row.try_get("state")?;
    Ok(Session {
        session_id: uuid(row.try_get("session_id")?)?,
        user_id: row.try_get("user_id")?,
        device_id: row.try_get("device_id")?,
        created_at: time(row.try_get("created_at")?)?,
        last_activity: time(row.try_get("last_activity")?)?,
        permissions: from_json(row.try_get("permissions")?)?,
        state: if state == "active" {
            SessionState::Active
        } else {
            SessionState::Ended
        },
        last_seq: row.try_get("last_seq")?,
        is_default: row.try_get("is_default")?,
    })
}

fn task_from(row: &SqliteRow) -> Result<Task> {
    let state: &str = row.try_get("state")?;
    Ok(Task {
        task_id: uuid(row.try_get("task_id")?)?,
        execution_uuid: uuid(row.try_get("execution_uuid")?)?,
        session_id: uuid(row.try_get("session_id")?)?,
        user_id: row.try_get("user_id")?,
        agent_type: row.try_get("agent_type")?,
        prompt: row.try_get("prompt")?,
        context: from_json(row.try_get("context")?)?,
        params: from_json(row.try_get("params")?)?,
        state: state.parse().map_err(corrupt)?,
        result: row.try_get("result")?,
        error: row.try_get("error")?,
        metadata: from_json(row.try_get("metadata")?)?,
        idempotency_key: row.try_get("idempotency_key")?,
        created_at: time(row.try_get("created_at")?)?,
        updated_at: time(row.try_get("updated_at")?)?,
        execution_time: row.try_get("execution_time")?,
    })
}

fn event_from(row: &SqliteRow) -> Result<StoredEvent> {
    let kind: String = row.try_get("event_type")?;
    let data: String = row.try_get("data")?;
    let body: EventBody = serde_json::from_value(serde_json::json!({
        "type": kind,
        "data": serde_json::from_str::<serde_json::Value>(&data).map_err(corrupt)?,
    }))
    .map_err(corrupt)?;
    Ok(StoredEvent {
        session_id: uuid(row.try_get("session_id")?)?,
        seq: row.try_get("seq")?,
        task_id: uuid(row.try_get("task_id")?)?,
        at: time(row.try_get("at")?)?,
        body,
    })
}

fn audit_from(row: &SqliteRow) -> Result<AuditRecord> {
    let session: Option<String> = row.try_get("session_id")?;
    Ok(AuditRecord {
        event_id: uuid(row.try_get("event_id")?)?,
        event_type: row.try_get("event_type")?,
        timestamp: time(row.try_get("timestamp")?)?,
        user_id: row.try_get("user_id")?,
        session_id: session.as_deref().map(uuid).transpose()?,
        resource_type: row.try_get("resource_type")?,
        resource_id: row.try_get("resource_id")?,
        action: row.try_get("action")?,
        status: row.try_get("status")?,
        details: from_json(row.try_get("details")?)?,
        seq: row.try_get("seq")?,
        hash: row.try_get("hash")?,
        prev_hash: row.try_get("prev_hash")?,
    })
}

/// Chain and insert audit records inside `tx`.
async fn write_audit(
    tx: &mut Transaction<'_, Sqlite>,
    records: Vec<NewAudit>,
) -> Result<Vec<AuditRecord>> {
    if records.is_empty() {
        return Ok(Vec::new());
    }
    let head: Option<(i64, String)> =
        sqlx::query_as("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&mut **tx)
            .await?;
    let (mut seq, mut prev) = head.unwrap_or((0, GENESIS.to_owned()));
    let out: Vec<AuditRecord> = records
        .into_iter()
        .map(|new| {
            seq += 1;
            let r = new.chain(seq, &prev);
            prev = r.hash.clone();
            r
        })
        .collect();
    // Thirteen parameters a row, well under SQLite's limit of 32,766.
    for chunk in out.chunks(1024) {
        QueryBuilder::<Sqlite>::new(
            "INSERT INTO audit (seq, event_id, event_type, timestamp, user_id, session_id, \
             resource_type, resource_id, action, status, details, hash, prev_hash) ",
        )
        .push_values(chunk, |mut row, r| {
            row.push_bind(r.seq)
                .push_bind(r.event_id.to_string())
                .push_bind(r.event_type.clone())
                .push_bind(rfc3339(&r.timestamp))
                .push_bind(r.user_id.clone())
                .push_bind(r.session_id.map(|s| s.to_string()))
                .push_bind(r.resource_type.clone())
                .push_bind(r.resource_id.clone())
                .push_bind(r.action.clone())
                .push_bind(r.status.clone())
                .push_bind(to_json(&r.details))
                .push_bind(r.hash.clone())
                .push_bind(r.prev_hash.clone());
        })
        .build()
        .execute(&mut **tx)
        .await?;
    }
    Ok(out)
}

/// Insert a batch's new task rows in one statement and return the ids of
/// those inserted; the others' id or idempotency key is taken.
async fn insert_tasks(tx: &mut Transaction<'_, Sqlite>, tasks: &[&Task]) -> Result<HashSet<Uuid>> {
    let mut inserted = HashSet::with_capacity(tasks.len());
    // Sixteen parameters a row, under SQLite's limit of 32,766 a statement.
    for chunk in tasks.chunks(1024) {
        let ids: Vec<String> = QueryBuilder::<Sqlite>::new(
            "INSERT INTO tasks (task_id, execution_uuid, session_id, user_id, agent_type, prompt, \
             context, params, state, result, error, metadata, idempotency_key, created_at, \
             updated_at, execution_time) ",
        )
        .push_values(chunk, |mut row, t| {
            row.push_bind(t.task_id.to_string())
                .push_bind(t.execution_uuid.to_string())
                .push_bind(t.session_id.to_string())
                .push_bind(&t.user_id)
                .push_bind(&t.agent_type)
                .push_bind(&t.prompt)
                .push_bind(to_json(&t.context))
                .push_bind(to_json(&t.params))
                .push_bind(t.state.as_str())
                .push_bind(&t.result)
                .push_bind(&t.error)
                .push_bind(to_json(&t.metadata))
                .push_bind(&t.idempotency_key)
                .push_bind(rfc3339(&t.created_at))
                .push_bind(rfc3339(&t.updated_at))
                .push_bind(t.execution_time);
        })
        .push(" ON CONFLICT DO NOTHING RETURNING task_id")
        .build_query_scalar()
        .fetch_all(&mut **tx)
        .await?;
        for id in ids {
            inserted.insert(uuid(&id)?);
        }
    }
    Ok(inserted)
}

/// Read, inside `tx`, what a batch needs to plan: the stored state of each
/// task it names and the last sequence number of each session.
async fn plan_batch(tx: &mut Transaction<'_, Sqlite>, batch: &[Append]) -> Result<BatchPlan> {
    let tasks = select_in(
        tx,
        "SELECT task_id, state FROM tasks WHERE task_id IN (",
        batch.iter().map(|a| a.task_id),
    )
    .await?
    .into_iter()
    .map(|(id, state): (String, String)| {
        Ok((uuid(&id)?, state.parse::<TaskState>().map_err(corrupt)?))
    })
    .collect::<Result<Vec<_>>>()?;
    let sessions = select_in(
        tx,
        "SELECT session_id, last_seq FROM sessions WHERE session_id IN (",
        batch.iter().map(|a| a.session_id),
    )
    .await?
    .into_iter()
    .map(|(id, seq): (String, i64)| Ok((uuid(&id)?, seq)))
    .collect::<Result<Vec<_>>>()?;
    Ok(BatchPlan::new(tasks, sessions))
}

/// Run `select` (ending in `IN (`) over the distinct `ids`.
async fn select_in<T>(
    tx: &mut Transaction<'_, Sqlite>,
    select: &str,
    ids: impl Iterator<Item = Uuid>,
) -> Result<Vec<T>>
where
    T: for<'r> sqlx::FromRow<'r, SqliteRow> + Send + Unpin,
{
    let mut ids: Vec<String> = ids.map(|id| id.to_string()).collect();
    ids.sort_unstable();
    ids.dedup();
    let mut q = QueryBuilder::<Sqlite>::new(select);
    let mut list = q.separated(", ");
    for id in ids {
        list.push_bind(id);
    }
    list.push_unseparated(")");
    Ok(q.build_query_as::<T>().fetch_all(&mut **tx).await?)
}

/// Write back what a planned batch changed: each task and session row once,
/// and the events in multi-row inserts.
async fn write_batch(
    tx: &mut Transaction<'_, Sqlite>,
    plan: &BatchPlan,
    events: &[StoredEvent],
) -> Result<()> {
    let tasks: Vec<_> = plan.task_updates().collect();
    for chunk in tasks.chunks(1024) {
        let mut q = QueryBuilder::<Sqlite>::new(
            "WITH v (task_id, state, result, error, execution_time, updated_at) AS (",
        );
        q.push_values(chunk, |mut row, (task_id, u)| {
            row.push_bind(task_id.to_string())
                .push_bind(u.state.as_str())
                .push_bind(u.result.as_deref())
                .push_bind(u.error.as_deref())
                .push_bind(u.execution_time)
                .push_bind(rfc3339(&u.updated_at));
        });
        q.push(
            ") UPDATE tasks SET state = v.state, result = COALESCE(v.result, tasks.result), \
             error = COALESCE(v.error, tasks.error), \
             execution_time = COALESCE(v.execution_time, tasks.execution_time), \
             updated_at = v.updated_at FROM v WHERE tasks.task_id = v.task_id",
        );
        q.build().execute(&mut **tx).await?;
    }
    let sessions: Vec<_> = plan.session_updates().collect();
    for chunk in sessions.chunks(1024) {
        let mut q =
            QueryBuilder::<Sqlite>::new("WITH v (session_id, last_seq, last_activity) AS (");
        q.push_values(chunk, |mut row, (session_id, last_seq, at)| {
            row.push_bind(session_id.to_string())
                .push_bind(*last_seq)
                .push_bind(rfc3339(at));
        });
        q.push(
            ") UPDATE sessions SET last_seq = v.last_seq, last_activity = v.last_activity \
             FROM v WHERE sessions.session_id = v.session_id",
        );
        q.build().execute(&mut **tx).await?;
    }
    // Six parameters a row, well under SQLite's limit of 32,766 a statement.
    for chunk in events.chunks(1024) {
        QueryBuilder::<Sqlite>::new(
            "INSERT INTO events (session_id, seq, task_id, event_type, data, at) ",
        )
        .push_values(chunk, |mut row, e| {
            row.push_bind(e.session_id.to_string())
                .push_bind(e.seq)
                .push_bind(e.task_id.to_string())
                .push_bind(e.body.type_name())
                .push_bind(event_data(&e.body))
                .push_bind(rfc3339(&e.at));
        })
        .build()
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

#[async_trait]
impl Store for SqliteStore {
    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.reader).await?;
        Ok(())
    }

    async fn user_count(&self) -> Result<i64> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM users")
            .fetch_one(&self.reader)
            .await?)
    }

    async fn create_user(&self, user: &User, token_hash: &str, audit: Vec<NewAudit>) -> Result<()> {
        let mut tx = self.writer.begin().await?;
        sqlx::query(
            "INSERT INTO users (user_id, roles, grants, revokes, created_at) VALUES (?,?,?,?,?)",
        )
        .bind(&user.user_id)
        .bind(to_json(&user.roles))
        .bind(to_json(&user.grants))
        .bind(to_json(&user.revokes))
        .bind(rfc3339(&user.created_at))
        .execute(&mut *tx)
        .await?;
        sqlx::query("INSERT INTO tokens (token_hash, user_id, created_at) VALUES (?,?,?)")
            .bind(token_hash)
            .bind(&user.user_id)
            .bind(rfc3339(&user.created_at))
            .execute(&mut *tx)
            .await?;
        self.commit_audited(tx, audit).await?;
        Ok(())
    }

    async fn get_user(&self, user_id: &str) -> Result<Option<User>> {
        sqlx::query("SELECT * FROM users WHERE user_id = ?")
            .bind(user_id)
            .fetch_optional(&self.reader)
            .await?
            .as_ref()
            .map(user_from)
            .transpose()
    }

    async fn list_users(&self) -> Result<Vec<User>> {
        sqlx::query("SELECT * FROM users ORDER BY user_id")
            .fetch_all(&self.reader)
            .await?
            .iter()
            .map(user_from)
            .collect()
    }

    async fn update_user(&self, user: &User, audit: Vec<NewAudit>) -> Result<()> {
        let mut tx = self.writer.begin().await?;
        sqlx::query("UPDATE users SET roles = ?, grants = ?, revokes = ? WHERE user_id = ?")
            .bind(to_json(&user.roles))
            .bind(to_json(&user.grants))
            .bind(to_json(&user.revokes))
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
        let mut tx = self.writer.begin().await?;
        sqlx::query(
            "INSERT INTO tokens (token_hash, user_id, created_at, expires_at) VALUES (?,?,?,?)",
        )
        .bind(token_hash)
        .bind(user_id)
        .bind(rfc3339(&at))
        .bind(expires_at.as_ref().map(rfc3339))
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
        let mut tx = self.writer.begin().await?;
        let done = sqlx::query(
            "UPDATE tokens SET revoked_at = ? WHERE user_id = ? AND revoked_at IS NULL",
        )
        .bind(rfc3339(&at))
        .bind(user_id)
        .execute(&mut *tx)
        .await?;
        self.commit_audited(tx, audit).await?;
        Ok(done.rows_affected())
    }

    async fn token_expiry(&self, token_hash: &str) -> Result<Option<Option<DateTime<Utc>>>> {
        let row: Option<(Option<String>,)> = sqlx::query_as(
            "SELECT expires_at FROM tokens WHERE token_hash = ? AND revoked_at IS NULL",
        )
        .bind(token_hash)
        .fetch_optional(&self.reader)
        .await?;
        row.map(|(e,)| e.as_deref().map(time).transpose())
            .transpose()
    }

    async fn user_by_token(&self, token_hash: &str, now: DateTime<Utc>) -> Result<Option<User>> {
        sqlx::query(
            "SELECT u.* FROM tokens t JOIN users u ON u.user_id = t.user_id \
             WHERE t.token_hash = ? AND t.revoked_at IS NULL AND (t.expires_at IS NULL OR t.expires_at > ?)",
        )
        .bind(token_hash)
        .bind(rfc3339(&now))
        .fetch_optional(&self.reader)
        .await?
        .as_ref()
        .map(user_from)
        .transpose()
    }

    async fn create_session(&self, s: &Session, audit: Vec<NewAudit>) -> Result<()> {
        let mut tx = self.writer.begin().await?;
        sqlx::query(
            "INSERT INTO sessions (session_id, user_id, device_id, created_at, last_activity, permissions, state, \
             last_seq, is_default) VALUES (?,?,?,?,?,?,?,?,?)",
        )
        .bind(s.session_id.to_string())
        .bind(&s.user_id)
        .bind(&s.device_id)
        .bind(rfc3339(&s.created_at))
        .bind(rfc3339(&s.last_activity))
        .bind(to_json(&s.permissions))
        .bind(s.state.as_str())
        .bind(s.last_seq)
        .bind(s.is_default)
        .execute(&mut *tx)
        .await?;
        self.commit_audited(tx, audit).await?;
        Ok(())
    }

    async fn get_session(&self, session_id: Uuid) -> Result<Option<Session>> {
        sqlx::query("SELECT * FROM sessions WHERE session_id = ?")
            .bind(session_id.to_string())
            .fetch_optional(&self.reader)
            .await?
            .as_ref()
            .map(session_from)
            .transpose()
    }

    async fn default_session(&self, user_id: &str) -> Result<Option<Session>> {
        // Read through the writer so that a default created a moment ago is seen.
        sqlx::query(
            "SELECT * FROM sessions WHERE user_id = ? AND is_default = 1 AND state = 'active'",
        )
        .bind(user_id)
        .fetch_optional(&self.writer)
        .await?
        .as_ref()
        .map(session_from)
        .transpose()
    }

    async fn list_sessions(&self, user_id: Option<&str>) -> Result<Vec<Session>> {
        let rows = match user_id {
            Some(u) => {
                sqlx::query("SELECT * FROM sessions WHERE user_id = ? ORDER BY created_at DESC")
                    .bind(u)
                    .fetch_all(&self.reader)
                    .await?
            }
            None => {
                sqlx::query("SELECT * FROM sessions ORDER BY created_at DESC")
                    .fetch_all(&self.reader)
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
        let mut tx = self.writer.begin().await?;
        sqlx::query("UPDATE sessions SET state = 'ended', last_activity = ? WHERE session_id = ?")
            .bind(rfc3339(&at))
            .bind(session_id.to_string())
            .execute(&mut *tx)
            .await?;
        self.commit_audited(tx, audit).await?;
        Ok(())
    }

    async fn append(&self, batch: Vec<Append>) -> Result<Vec<Result<StoredEvent, Rejected>>> {
        let mut tx = self.writer.begin().await?;
        // The one writer connection holds the write lock for the whole
        // batch, so each row is read once here and written once at the end.
        let mut plan = plan_batch(&mut tx, &batch).await?;
        let new_tasks: Vec<&Task> = batch
            .iter()
            .filter_map(|a| match &a.change {
                TaskChange::Insert(t) => Some(&**t),
                _ => None,
            })
            .collect();
        let mut inserted = insert_tasks(&mut tx, &new_tasks).await?;
        let mut results = Vec::with_capacity(batch.len());
        let mut stored = Vec::with_capacity(batch.len());
        let mut audit_new = Vec::new();
        for a in batch {
            // The condition first: a refused change must not consume a seq.
            let verdict = match &a.change {
                TaskChange::Insert(t) if inserted.remove(&t.task_id) => {
                    plan.inserted(t.task_id, t.state);
                    Ok(())
                }
                TaskChange::Insert(_) => Err(Rejected::Duplicate),
                change => plan.apply(a.task_id, change, a.at),
            };
            if let Err(rejected) = verdict {
                results.push(Err(rejected));
                continue;
            }
            let seq = plan
                .next_seq(a.session_id, a.at)
                .ok_or_else(|| Error::NotFound(format!("session {}", a.session_id)))?;
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
        write_batch(&mut tx, &plan, &stored).await?;
        let audit = write_audit(&mut tx, audit_new).await?;
        tx.commit().await?;
        metrics::counter!("switchboard_events_stored_total").increment(stored.len() as u64);
        self.publish(&stored, &audit);
        Ok(results)
    }

    async fn get_task(&self, task_id: Uuid) -> Result<Option<Task>> {
        sqlx::query("SELECT * FROM tasks WHERE task_id = ?")
            .bind(task_id.to_string())
            .fetch_optional(&self.reader)
            .await?
            .as_ref()
            .map(task_from)
            .transpose()
    }

    async fn task_by_idempotency_key(&self, user_id: &str, key: &str) -> Result<Option<Task>> {
        sqlx::query("SELECT * FROM tasks WHERE user_id = ? AND idempotency_key = ?")
            .bind(user_id)
            .bind(key)
            .fetch_optional(&self.writer)
            .await?
            .as_ref()
            .map(task_from)
            .transpose()
    }

    async fn list_tasks(&self, f: &TaskFilter) -> Result<Vec<Task>> {
        let mut q = QueryBuilder::<Sqlite>::new("SELECT * FROM tasks WHERE 1 = 1");
        if let Some(u) = &f.user_id {
            q.push(" AND user_id = ").push_bind(u.clone());
        }
        if let Some(s) = f.session_id {
            q.push(" AND session_id = ").push_bind(s.to_string());
        }
        if let Some(s) = f.state {
            q.push(" AND state = ").push_bind(s.as_str());
        }
        if let Some(a) = &f.agent_type {
            q.push(" AND agent_type = ").push_bind(a.clone());
        }
        if let Some((at, id)) = &f.before {
            q.push(" AND (created_at < ")
                .push_bind(rfc3339(at))
                .push(" OR (created_at = ")
                .push_bind(rfc3339(at))
                .push(" AND task_id < ")
                .push_bind(id.to_string())
                .push("))");
        }
        q.push(" ORDER BY created_at DESC, task_id DESC LIMIT ")
            .push_bind(f.limit);
        q.build()
            .fetch_all(&self.reader)
            .await?
            .iter()
            .map(task_from)
            .collect()
    }

    async fn count_active_tasks(&self, user_id: &str) -> Result<i64> {
        Ok(sqlx::query_scalar(
            "SELECT COUNT(*) FROM tasks WHERE user_id = ? AND state NOT IN ('completed', 'failed', 'cancelled')",
        )
        .bind(user_id)
        .fetch_one(&self.writer)
        .await?)
    }

    async fn unfinished_tasks(&self) -> Result<Vec<Task>> {
        sqlx::query("SELECT * FROM tasks WHERE state NOT IN ('completed', 'failed', 'cancelled') ORDER BY created_at")
            .fetch_all(&self.writer)
            .await?
            .iter()
            .map(task_from)
            .collect()
    }

    async fn task_events(&self, task_id: Uuid) -> Result<Vec<StoredEvent>> {
        sqlx::query("SELECT * FROM events WHERE task_id = ? ORDER BY seq")
            .bind(task_id.to_string())
            .fetch_all(&self.reader)
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
        sqlx::query("SELECT * FROM events WHERE session_id = ? AND seq > ? ORDER BY seq LIMIT ?")
            .bind(session_id.to_string())
            .bind(after_seq)
            .bind(limit)
            .fetch_all(&self.reader)
            .await?
            .iter()
            .map(event_from)
            .collect()
    }

    async fn audit(&self, records: Vec<NewAudit>) -> Result<()> {
        let mut tx = self.writer.begin().await?;
        let audit = write_audit(&mut tx, records).await?;
        tx.commit().await?;
        self.publish(&[], &audit);
        Ok(())
    }

    async fn audit_query(&self, f: &AuditQuery) -> Result<Vec<AuditRecord>> {
        let mut q = QueryBuilder::<Sqlite>::new("SELECT * FROM audit WHERE 1 = 1");
        if let Some(s) = f.session_id {
            q.push(" AND session_id = ").push_bind(s.to_string());
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
            q.push(" AND timestamp >= ").push_bind(rfc3339(t));
        }
        if let Some(t) = &f.until {
            q.push(" AND timestamp < ").push_bind(rfc3339(t));
        }
        if let Some(s) = f.before_seq {
            q.push(" AND seq < ").push_bind(s);
        }
        q.push(" ORDER BY seq DESC LIMIT ").push_bind(f.limit);
        q.build()
            .fetch_all(&self.reader)
            .await?
            .iter()
            .map(audit_from)
            .collect()
    }

    async fn audit_after(&self, after_seq: i64, limit: i64) -> Result<Vec<AuditRecord>> {
        sqlx::query("SELECT * FROM audit WHERE seq > ? ORDER BY seq LIMIT ?")
            .bind(after_seq)
            .bind(limit)
            .fetch_all(&self.reader)
            .await?
            .iter()
            .map(audit_from)
            .collect()
    }

    async fn audit_last_seq(&self) -> Result<i64> {
        Ok(
            sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM audit")
                .fetch_one(&self.reader)
                .await?,
        )
    }

    async fn stats(&self) -> Result<Stats> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT state, COUNT(*) FROM tasks GROUP BY state")
                .fetch_all(&self.reader)
                .await?;
        let active_sessions =
            sqlx::query_scalar("SELECT COUNT(*) FROM sessions WHERE state = 'active'")
                .fetch_one(&self.reader)
                .await?;
        Ok(Stats {
            tasks_by_state: rows
                .into_iter()
                .filter_map(|(s, n)| s.parse().ok().map(|s| (s, n)))
                .collect(),
            active_sessions,
        })
    }

    async fn add_checkpoint(&self, cp: &Checkpoint) -> Result<()> {
        sqlx::query("INSERT OR IGNORE INTO audit_checkpoints (seq, head, at, key_id, signature) VALUES (?,?,?,?,?)")
            .bind(cp.seq)
            .bind(&cp.head)
            .bind(rfc3339(&cp.at))
            .bind(&cp.key_id)
            .bind(&cp.signature)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    async fn checkpoints(&self) -> Result<Vec<Checkpoint>> {
        let rows: Vec<(i64, String, String, String, String)> = sqlx::query_as(
            "SELECT seq, head, at, key_id, signature FROM audit_checkpoints ORDER BY seq",
        )
        .fetch_all(&self.reader)
        .await?;
        rows.into_iter()
            .map(|(seq, head, at, key_id, signature)| {
                Ok(Checkpoint {
                    seq,
                    head,
                    at: time(&at)?,
                    key_id,
                    signature,
                })
            })
            .collect()
    }

    async fn put_device(&self, d: &Device, audit: Vec<NewAudit>) -> Result<()> {
        let mut tx = self.writer.begin().await?;
        sqlx::query(
            "INSERT INTO devices (device_id, user_id, name, public_key, state, first_seen, last_seen, decided_by) \
             VALUES (?,?,?,?,?,?,?,?) ON CONFLICT (device_id) DO UPDATE SET name = excluded.name, \
             public_key = excluded.public_key, state = excluded.state, last_seen = excluded.last_seen, \
             decided_by = excluded.decided_by",
        )
        .bind(&d.device_id)
        .bind(&d.user_id)
        .bind(&d.name)
        .bind(&d.public_key)
        .bind(d.state.as_str())
        .bind(rfc3339(&d.first_seen))
        .bind(rfc3339(&d.last_seen))
        .bind(&d.decided_by)
        .execute(&mut *tx)
        .await?;
        self.commit_audited(tx, audit).await?;
        Ok(())
    }

    async fn get_device(&self, device_id: &str) -> Result<Option<Device>> {
        sqlx::query("SELECT * FROM devices WHERE device_id = ?")
            .bind(device_id)
            .fetch_optional(&self.writer)
            .await?
            .as_ref()
            .map(device_from)
            .transpose()
    }

    async fn list_devices(&self, user_id: Option<&str>) -> Result<Vec<Device>> {
        let rows = match user_id {
            Some(u) => {
                sqlx::query("SELECT * FROM devices WHERE user_id = ? ORDER BY first_seen")
                    .bind(u)
                    .fetch_all(&self.reader)
                    .await?
            }
            None => {
                sqlx::query("SELECT * FROM devices ORDER BY first_seen")
                    .fetch_all(&self.reader)
                    .await?
            }
        };
        rows.iter().map(device_from).collect()
    }

    async fn add_nonce(&self, nonce: &str, user_id: &str, expires_at: DateTime<Utc>) -> Result<()> {
        sqlx::query("INSERT INTO device_nonces (nonce, user_id, expires_at) VALUES (?,?,?)")
            .bind(nonce)
            .bind(user_id)
            .bind(rfc3339(&expires_at))
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    async fn use_nonce(&self, nonce: &str, user_id: &str, now: DateTime<Utc>) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE device_nonces SET used = 1 WHERE nonce = ? AND user_id = ? AND used = 0 AND expires_at > ?",
        )
        .bind(nonce)
        .bind(user_id)
        .bind(rfc3339(&now))
        .execute(&self.writer)
        .await?;
        Ok(done.rows_affected() == 1)
    }
}

fn device_from(row: &SqliteRow) -> Result<Device> {
    let state: &str = row.try_get("state")?;
    Ok(Device {
        device_id: row.try_get("device_id")?,
        user_id: row.try_get("user_id")?,
        name: row.try_get("name")?,
        public_key: row.try_get("public_key")?,
        state: state.parse().map_err(corrupt)?,
        first_seen: time(row.try_get("first_seen")?)?,
        last_seen: time(row.try_get("last_seen")?)?,
        decided_by: row.try_get("decided_by")?,
    })
}
