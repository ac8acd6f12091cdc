//! The audit log: chaining records outside append batches, queries and
//! signed checkpoints.

use super::PostgresStore;
use super::rows::{audit_from, bind, checkpoint_from};
use super::write::write_audit;
use crate::audit::AuditRecord;
use crate::audit::NewAudit;
use crate::audit::checkpoint::Checkpoint;
use crate::error::Result;
use crate::store::AuditQuery;
use crate::store::query::{self, Dialect};

impl PostgresStore {
    pub(super) async fn audit(&self, records: Vec<NewAudit>) -> Result<()> {
        let mut tx = self.begin().await?;
        let audit = write_audit(&mut tx, records).await?;
        tx.commit().await?;
        self.fanout.publish(&[], &audit);
        Ok(())
    }

    pub(super) async fn audit_query(&self, f: &AuditQuery) -> Result<Vec<AuditRecord>> {
        let q = query::audit(Dialect::Postgres, "SELECT * FROM audit", f);
        bind(sqlx::query(&q.sql), q.args)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(audit_from)
            .collect()
    }

    pub(super) async fn audit_after(&self, after_seq: i64, limit: i64) -> Result<Vec<AuditRecord>> {
        sqlx::query("SELECT * FROM audit WHERE seq > $1 ORDER BY seq LIMIT $2")
            .bind(after_seq)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(audit_from)
            .collect()
    }

    pub(super) async fn audit_last_seq(&self) -> Result<i64> {
        Ok(
            sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0)::BIGINT FROM audit")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    pub(super) async fn add_checkpoint(&self, cp: &Checkpoint) -> Result<()> {
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

    pub(super) async fn checkpoints(&self) -> Result<Vec<Checkpoint>> {
        sqlx::query("SELECT seq, head, at, key_id, signature FROM audit_checkpoints ORDER BY seq")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(checkpoint_from)
            .collect()
    }
}
