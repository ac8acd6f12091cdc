//! Sessions, devices and device nonces: rows owned by a user.

use chrono::{DateTime, Utc};
use sqlx::postgres::PgRow;
use uuid::Uuid;

use super::PostgresStore;
use super::rows::{bind, device_from, json, session_from};
use crate::audit::NewAudit;
use crate::device::Device;
use crate::error::Result;
use crate::session::Session;
use crate::store::query::{self, Dialect};

impl PostgresStore {
    pub(super) async fn create_session(&self, s: &Session, audit: Vec<NewAudit>) -> Result<()> {
        let mut tx = self.begin().await?;
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

    pub(super) async fn get_session(&self, session_id: Uuid) -> Result<Option<Session>> {
        sqlx::query("SELECT * FROM sessions WHERE session_id = $1")
            .bind(session_id)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(session_from)
            .transpose()
    }

    pub(super) async fn default_session(&self, user_id: &str) -> Result<Option<Session>> {
        sqlx::query("SELECT * FROM sessions WHERE user_id = $1 AND is_default AND state = 'active'")
            .bind(user_id)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(session_from)
            .transpose()
    }

    pub(super) async fn list_sessions(&self, user_id: Option<&str>) -> Result<Vec<Session>> {
        self.list_of_user("sessions", "created_at DESC", user_id, session_from)
            .await
    }

    pub(super) async fn end_session(
        &self,
        session_id: Uuid,
        at: DateTime<Utc>,
        audit: Vec<NewAudit>,
    ) -> Result<()> {
        let mut tx = self.begin().await?;
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

    pub(super) async fn put_device(&self, d: &Device, audit: Vec<NewAudit>) -> Result<()> {
        let mut tx = self.begin().await?;
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

    pub(super) async fn get_device(&self, device_id: &str) -> Result<Option<Device>> {
        sqlx::query("SELECT * FROM devices WHERE device_id = $1")
            .bind(device_id)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(device_from)
            .transpose()
    }

    pub(super) async fn list_devices(&self, user_id: Option<&str>) -> Result<Vec<Device>> {
        self.list_of_user("devices", "first_seen", user_id, device_from)
            .await
    }

    pub(super) async fn add_nonce(
        &self,
        nonce: &str,
        user_id: &str,
        expires_at: DateTime<Utc>,
    ) -> Result<()> {
        sqlx::query("INSERT INTO device_nonces (nonce, user_id, expires_at) VALUES ($1,$2,$3)")
            .bind(nonce)
            .bind(user_id)
            .bind(expires_at)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub(super) async fn use_nonce(
        &self,
        nonce: &str,
        user_id: &str,
        now: DateTime<Utc>,
    ) -> Result<bool> {
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

    /// The rows of `table` owned by `user_id` (every user's when `None`),
    /// ordered by `order`, each made by `from`.
    async fn list_of_user<T>(
        &self,
        table: &str,
        order: &str,
        user_id: Option<&str>,
        from: fn(&PgRow) -> Result<T>,
    ) -> Result<Vec<T>> {
        let select = format!("SELECT * FROM {table}");
        let order = format!(" ORDER BY {order}");
        let q = query::of_user(Dialect::Postgres, &select, "user_id = ?", user_id, &order);
        bind(sqlx::query(&q.sql), q.args)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(from)
            .collect()
    }
}
