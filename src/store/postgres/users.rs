//! Users and their tokens.

use chrono::{DateTime, Utc};

use super::PostgresStore;
use super::rows::{json, user_from};
use crate::audit::NewAudit;
use crate::auth::User;
use crate::error::Result;

impl PostgresStore {
    pub(super) async fn user_count(&self) -> Result<i64> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM users")
            .fetch_one(&self.pool)
            .await?)
    }

    pub(super) async fn create_user(
        &self,
        user: &User,
        token_hash: &str,
        audit: Vec<NewAudit>,
    ) -> Result<()> {
        let mut tx = self.begin().await?;
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

    pub(super) async fn get_user(&self, user_id: &str) -> Result<Option<User>> {
        sqlx::query("SELECT * FROM users WHERE user_id = $1")
            .bind(user_id)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(user_from)
            .transpose()
    }

    pub(super) async fn list_users(&self) -> Result<Vec<User>> {
        sqlx::query("SELECT * FROM users ORDER BY user_id")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(user_from)
            .collect()
    }

    pub(super) async fn update_user(&self, user: &User, audit: Vec<NewAudit>) -> Result<()> {
        let mut tx = self.begin().await?;
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

    pub(super) async fn add_token(
        &self,
        user_id: &str,
        token_hash: &str,
        at: DateTime<Utc>,
        expires_at: Option<DateTime<Utc>>,
        audit: Vec<NewAudit>,
    ) -> Result<()> {
        let mut tx = self.begin().await?;
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

    pub(super) async fn revoke_tokens(
        &self,
        user_id: &str,
        at: DateTime<Utc>,
        audit: Vec<NewAudit>,
    ) -> Result<u64> {
        let mut tx = self.begin().await?;
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

    pub(super) async fn user_by_token(
        &self,
        token_hash: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<User>> {
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

    pub(super) async fn token_expiry(
        &self,
        token_hash: &str,
    ) -> Result<Option<Option<DateTime<Utc>>>> {
        let row: Option<(Option<DateTime<Utc>>,)> = sqlx::query_as(
            "SELECT expires_at FROM tokens WHERE token_hash = $1 AND revoked_at IS NULL",
        )
        .bind(token_hash)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|(e,)| e))
    }
}
