//! The [`Store`] operations of the SQLite store: reads on the pool, writes
//! as jobs for the writer thread.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, params};
use tokio::sync::oneshot;
use uuid::Uuid;

use super::SqliteStore;
use super::rows::{
    self, AUDIT, DEVICE, EVENT, SESSION, TASK, TASK_COLUMNS, USER, all, one, to_json,
};
use super::writer::Job;
use crate::audit::checkpoint::Checkpoint;
use crate::audit::{AuditRecord, NewAudit};
use crate::auth::User;
use crate::bus::Delivery;
use crate::device::Device;
use crate::error::{Error, Result};
use crate::event::{StoredEvent, rfc3339};
use crate::protocol::ws::event_frame;
use crate::session::Session;
use crate::store::query::{self, Arg, Dialect, Filtered};
use crate::store::writer::Reply;
use crate::store::{Append, AuditQuery, Rejected, Stats, Store, TaskFilter};
use crate::task::Task;

fn gone() -> Error {
    Error::Unavailable("the node is shutting down".into())
}

#[async_trait]
impl Store for SqliteStore {
    async fn ping(&self) -> Result<()> {
        self.read(|c| Ok(c.query_row("SELECT 1", [], |_| Ok(()))?))
            .await
    }

    async fn user_count(&self) -> Result<i64> {
        self.read(|c| Ok(c.query_row("SELECT COUNT(*) FROM users", [], |r| r.get(0))?))
            .await
    }

    async fn create_user(&self, user: &User, token_hash: &str, audit: Vec<NewAudit>) -> Result<()> {
        let (user, hash) = (user.clone(), token_hash.to_owned());
        self.write(move |w| {
            let at = rfc3339(&user.created_at);
            w.conn.execute(
                "INSERT INTO users (user_id, roles, grants, revokes, created_at) VALUES (?,?,?,?,?)",
                params![user.user_id, to_json(&user.roles), to_json(&user.grants), to_json(&user.revokes), at],
            )?;
            w.conn.execute(
                "INSERT INTO tokens (token_hash, user_id, created_at) VALUES (?,?,?)",
                params![hash, user.user_id, at],
            )?;
            w.audit(audit)
        })
        .await
    }

    async fn get_user(&self, user_id: &str) -> Result<Option<User>> {
        let id = user_id.to_owned();
        self.read(move |c| one(c, &format!("{USER} WHERE user_id = ?"), [id], rows::user))
            .await
    }

    async fn list_users(&self) -> Result<Vec<User>> {
        self.read(|c| all(c, &format!("{USER} ORDER BY user_id"), [], rows::user))
            .await
    }

    async fn update_user(&self, user: &User, audit: Vec<NewAudit>) -> Result<()> {
        let user = user.clone();
        self.write(move |w| {
            w.conn.execute(
                "UPDATE users SET roles = ?, grants = ?, revokes = ? WHERE user_id = ?",
                params![
                    to_json(&user.roles),
                    to_json(&user.grants),
                    to_json(&user.revokes),
                    user.user_id
                ],
            )?;
            w.audit(audit)
        })
        .await
    }

    async fn add_token(
        &self,
        user_id: &str,
        token_hash: &str,
        at: DateTime<Utc>,
        expires_at: Option<DateTime<Utc>>,
        audit: Vec<NewAudit>,
    ) -> Result<()> {
        let (user, hash) = (user_id.to_owned(), token_hash.to_owned());
        self.write(move |w| {
            w.conn.execute(
                "INSERT INTO tokens (token_hash, user_id, created_at, expires_at) VALUES (?,?,?,?)",
                params![hash, user, rfc3339(&at), expires_at.as_ref().map(rfc3339)],
            )?;
            w.audit(audit)
        })
        .await
    }

    async fn token_expiry(&self, token_hash: &str) -> Result<Option<Option<DateTime<Utc>>>> {
        let hash = token_hash.to_owned();
        let row: Option<Option<String>> = self
            .read(move |c| {
                Ok(c.prepare_cached(
                    "SELECT expires_at FROM tokens WHERE token_hash = ? AND revoked_at IS NULL",
                )?
                .query_row([hash], |r| r.get(0))
                .optional()?)
            })
            .await?;
        row.map(|e| e.as_deref().map(rows::time).transpose())
            .transpose()
    }

    async fn revoke_tokens(
        &self,
        user_id: &str,
        at: DateTime<Utc>,
        audit: Vec<NewAudit>,
    ) -> Result<u64> {
        let user = user_id.to_owned();
        self.write(move |w| {
            let n = w.conn.execute(
                "UPDATE tokens SET revoked_at = ? WHERE user_id = ? AND revoked_at IS NULL",
                params![rfc3339(&at), user],
            )?;
            w.audit(audit)?;
            Ok(n as u64)
        })
        .await
    }

    async fn user_by_token(&self, token_hash: &str, now: DateTime<Utc>) -> Result<Option<User>> {
        let hash = token_hash.to_owned();
        self.read(move |c| {
            one(
                c,
                "SELECT u.user_id, u.roles, u.grants, u.revokes, u.created_at FROM tokens t \
                 JOIN users u ON u.user_id = t.user_id WHERE t.token_hash = ? \
                 AND t.revoked_at IS NULL AND (t.expires_at IS NULL OR t.expires_at > ?)",
                params![hash, rfc3339(&now)],
                rows::user,
            )
        })
        .await
    }

    async fn token_owner(
        &self,
        token_hash: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<(User, Option<DateTime<Utc>>)>> {
        let hash = token_hash.to_owned();
        self.read(move |c| {
            one(
                c,
                "SELECT u.user_id, u.roles, u.grants, u.revokes, u.created_at, t.expires_at \
                 FROM tokens t JOIN users u ON u.user_id = t.user_id WHERE t.token_hash = ? \
                 AND t.revoked_at IS NULL AND (t.expires_at IS NULL OR t.expires_at > ?)",
                params![hash, rfc3339(&now)],
                |r| {
                    let expires: Option<String> = r.get("expires_at")?;
                    Ok((
                        rows::user(r)?,
                        expires.as_deref().map(rows::time).transpose()?,
                    ))
                },
            )
        })
        .await
    }

    async fn create_session(&self, session: &Session, audit: Vec<NewAudit>) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.send(Job::Session(Box::new(session.clone()), audit, tx))
            .await?;
        rx.await.map_err(|_| gone())?
    }

    async fn get_session(&self, session_id: Uuid) -> Result<Option<Session>> {
        let id = session_id.to_string();
        self.read(move |c| {
            one(
                c,
                &format!("{SESSION} WHERE s.session_id = ?"),
                [id],
                rows::session,
            )
        })
        .await
    }

    async fn default_session(&self, user_id: &str) -> Result<Option<Session>> {
        let user = user_id.to_owned();
        let sql =
            format!("{SESSION} WHERE s.user_id = ? AND s.is_default = 1 AND s.state = 'active'");
        self.read(move |c| one(c, &sql, [user], rows::session))
            .await
    }

    async fn list_sessions(&self, user_id: Option<&str>) -> Result<Vec<Session>> {
        let order = " ORDER BY s.sid DESC";
        let q = query::of_user(Dialect::Sqlite, SESSION, "s.user_id = ?", user_id, order);
        let (sql, args) = (q.sql, rows::values(q.args));
        self.read(move |c| all(c, &sql, rusqlite::params_from_iter(args), rows::session))
            .await
    }

    async fn end_session(
        &self,
        session_id: Uuid,
        at: DateTime<Utc>,
        audit: Vec<NewAudit>,
    ) -> Result<()> {
        self.write(move |w| {
            w.conn.execute(
                "UPDATE sessions SET state = 'ended', last_activity = ? WHERE session_id = ?",
                params![rfc3339(&at), session_id.to_string()],
            )?;
            w.drop_session(session_id);
            w.audit(audit)
        })
        .await
    }

    async fn append(&self, batch: Vec<Append>) -> Result<Vec<Result<StoredEvent, Rejected>>> {
        let mut answers = Vec::with_capacity(batch.len());
        for a in batch {
            let (tx, rx) = oneshot::channel();
            self.send(Job::Append(a, Reply::Wait(tx))).await?;
            answers.push(rx);
        }
        let mut out = Vec::with_capacity(answers.len());
        for rx in answers {
            out.push(rx.await.map_err(|_| gone())??);
        }
        Ok(out)
    }

    async fn get_task(&self, task_id: Uuid) -> Result<Option<Task>> {
        let id = task_id.to_string();
        self.read(move |c| one(c, &format!("{TASK} WHERE t.task_id = ?"), [id], rows::task))
            .await
    }

    async fn task_by_idempotency_key(&self, user_id: &str, key: &str) -> Result<Option<Task>> {
        let (user, key) = (user_id.to_owned(), key.to_owned());
        let sql = format!("{TASK} WHERE t.user_id = ? AND t.idempotency_key = ?");
        self.read(move |c| one(c, &sql, [user, key], rows::task))
            .await
    }

    async fn list_tasks(&self, f: &TaskFilter) -> Result<Vec<Task>> {
        let mut q = Filtered::new(Dialect::Sqlite, TASK);
        query::tasks(&mut q, &TASK_COLUMNS, f, true);
        q.and(
            "t.tid < (SELECT tid FROM tasks WHERE task_id = ?)",
            f.before.map(|(_, id)| Arg::Uuid(id)),
        )
        .push(" ORDER BY t.tid DESC LIMIT ?", Some(Arg::Int(f.limit)));
        let (sql, args) = (q.sql, rows::values(q.args));
        self.read(move |c| all(c, &sql, rusqlite::params_from_iter(args), rows::task))
            .await
    }

    async fn count_active_tasks(&self, user_id: &str) -> Result<i64> {
        Ok(self.active.get(user_id).map_or(0, |n| *n))
    }

    async fn unfinished_tasks(&self) -> Result<Vec<Task>> {
        let sql = format!(
            "{TASK} WHERE s.state NOT IN ('completed', 'failed', 'cancelled') ORDER BY t.tid"
        );
        self.read(move |c| all(c, &sql, [], rows::task)).await
    }

    async fn task_events(&self, task_id: Uuid) -> Result<Vec<StoredEvent>> {
        let id = task_id.to_string();
        // Through its session's stream (`events_by_stream`), between the
        // bounds its rows keep (migration 0008).
        let sql = format!(
            "{EVENT} WHERE e.sid = (SELECT sid FROM tasks WHERE task_id = ?1) \
             AND e.seq >= (SELECT first_seq FROM tasks WHERE task_id = ?1) \
             AND e.seq <= COALESCE((SELECT st.last_seq FROM tasks k \
                 JOIN task_state st ON st.tid = k.tid WHERE k.task_id = ?1), 9223372036854775807) \
             AND e.tid = (SELECT tid FROM tasks WHERE task_id = ?1) ORDER BY e.seq"
        );
        self.read(move |c| all(c, &sql, [id], rows::event)).await
    }

    async fn events_after(
        &self,
        session_id: Uuid,
        after_seq: i64,
        limit: i64,
    ) -> Result<Vec<StoredEvent>> {
        let sql = format!(
            "{EVENT} WHERE e.sid = (SELECT sid FROM sessions WHERE session_id = ?) \
             AND e.seq > ? ORDER BY e.seq LIMIT ?"
        );
        self.read(move |c| {
            all(
                c,
                &sql,
                params![session_id.to_string(), after_seq, limit],
                rows::event,
            )
        })
        .await
    }

    async fn event_frames_after(
        &self,
        session_id: Uuid,
        after_seq: i64,
        limit: i64,
    ) -> Result<Vec<Delivery>> {
        self.read(move |c| {
            all(
                c,
                "SELECT e.seq, t.task_id, e.at, e.kind, e.data FROM events e \
                 JOIN tasks t ON t.tid = e.tid \
                 WHERE e.sid = (SELECT sid FROM sessions WHERE session_id = ?) \
                 AND e.seq > ? ORDER BY e.seq LIMIT ?",
                params![session_id.to_string(), after_seq, limit],
                |r| {
                    let seq: i64 = r.get(0)?;
                    let task = rows::uuid(&r.get::<_, String>(1)?)?;
                    let at = rows::from_micros(r.get(2)?)?;
                    let data: String = r.get(4)?;
                    let kind = rows::kind_name(r.get(3)?);
                    Ok(Delivery {
                        seq,
                        frame: event_frame(session_id, seq, kind, &data, task, &at),
                    })
                },
            )
        })
        .await
    }

    async fn audit(&self, records: Vec<NewAudit>) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let (tx, rx) = oneshot::channel();
        self.send(Job::Audit(records, tx)).await?;
        rx.await.map_err(|_| gone())?
    }

    async fn audit_query(&self, f: &AuditQuery) -> Result<Vec<AuditRecord>> {
        let f = f.clone();
        self.read(move |c| super::audit_keys::query(c, &f)).await
    }

    async fn audit_after(&self, after_seq: i64, limit: i64) -> Result<Vec<AuditRecord>> {
        let sql = format!("{AUDIT} WHERE seq > ? ORDER BY seq LIMIT ?");
        self.read(move |c| all(c, &sql, params![after_seq, limit], rows::audit))
            .await
    }

    async fn audit_last_seq(&self) -> Result<i64> {
        self.read(|c| Ok(c.query_row("SELECT COALESCE(MAX(seq), 0) FROM audit", [], |r| r.get(0))?))
            .await
    }

    async fn add_checkpoint(&self, cp: &Checkpoint) -> Result<()> {
        let cp = cp.clone();
        self.write(move |w| {
            w.conn.execute(
                "INSERT OR IGNORE INTO audit_checkpoints (seq, head, at, key_id, signature) VALUES (?,?,?,?,?)",
                params![cp.seq, cp.head, rfc3339(&cp.at), cp.key_id, cp.signature],
            )?;
            Ok(())
        })
        .await
    }

    async fn checkpoints(&self) -> Result<Vec<Checkpoint>> {
        self.read(|c| {
            all(
                c,
                "SELECT seq, head, at, key_id, signature FROM audit_checkpoints ORDER BY seq",
                [],
                |r| crate::store::rows::checkpoint(r),
            )
        })
        .await
    }

    async fn put_device(&self, d: &Device, audit: Vec<NewAudit>) -> Result<()> {
        let d = d.clone();
        self.write(move |w| {
            w.conn.execute(
                "INSERT INTO devices (device_id, user_id, name, public_key, state, first_seen, last_seen, decided_by) \
                 VALUES (?,?,?,?,?,?,?,?) ON CONFLICT (device_id) DO UPDATE SET name = excluded.name, \
                 public_key = excluded.public_key, state = excluded.state, last_seen = excluded.last_seen, \
                 decided_by = excluded.decided_by",
                params![d.device_id, d.user_id, d.name, d.public_key, d.state.as_str(),
                        rfc3339(&d.first_seen), rfc3339(&d.last_seen), d.decided_by],
            )?;
            w.audit(audit)
        })
        .await
    }

    async fn get_device(&self, device_id: &str) -> Result<Option<Device>> {
        let id = device_id.to_owned();
        self.read(move |c| {
            one(
                c,
                &format!("{DEVICE} WHERE device_id = ?"),
                [id],
                rows::device,
            )
        })
        .await
    }

    async fn list_devices(&self, user_id: Option<&str>) -> Result<Vec<Device>> {
        let order = " ORDER BY first_seen";
        let q = query::of_user(Dialect::Sqlite, DEVICE, "user_id = ?", user_id, order);
        let (sql, args) = (q.sql, rows::values(q.args));
        self.read(move |c| all(c, &sql, rusqlite::params_from_iter(args), rows::device))
            .await
    }

    async fn add_nonce(&self, nonce: &str, user_id: &str, expires_at: DateTime<Utc>) -> Result<()> {
        let (nonce, user) = (nonce.to_owned(), user_id.to_owned());
        self.write(move |w| {
            w.conn.execute(
                "INSERT INTO device_nonces (nonce, user_id, expires_at) VALUES (?,?,?)",
                params![nonce, user, rfc3339(&expires_at)],
            )?;
            Ok(())
        })
        .await
    }

    async fn use_nonce(&self, nonce: &str, user_id: &str, now: DateTime<Utc>) -> Result<bool> {
        let (nonce, user) = (nonce.to_owned(), user_id.to_owned());
        self.write(move |w| {
            let n = w.conn.execute(
                "UPDATE device_nonces SET used = 1 WHERE nonce = ? AND user_id = ? AND used = 0 AND expires_at > ?",
                params![nonce, user, rfc3339(&now)],
            )?;
            Ok(n == 1)
        })
        .await
    }

    async fn stats(&self) -> Result<Stats> {
        self.read(|c| {
            let by_state = all(
                c,
                "SELECT state, COUNT(*) FROM task_state GROUP BY state",
                [],
                |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)),
            )?;
            let active_sessions = c.query_row(
                "SELECT COUNT(*) FROM sessions WHERE state = 'active'",
                [],
                |r| r.get(0),
            )?;
            Ok(Stats {
                tasks_by_state: query::by_state(by_state),
                active_sessions,
            })
        })
        .await
    }

    async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        if self.send(Job::Close(tx)).await.is_ok() {
            let _ = rx.await;
        }
        self.readers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    fn own_writer(
        &self,
        stop: tokio_util::sync::CancellationToken,
    ) -> Option<(crate::store::EventWriter, tokio::task::JoinHandle<()>)> {
        Some(self.event_writer(stop))
    }
}
