//! Retention on PostgreSQL: plain `DELETE`s in small batches, each its own
//! short transaction of a few round trips (a batch of stream cuts spans
//! many streams through `UNNEST` arrays); autovacuum makes the space
//! reusable. One node of a
//! cluster prunes at a time (a session advisory lock held for the run);
//! were two to run anyway, each removal is keyed and re-checked, and the
//! stream floor only moves forward, so they would only repeat each other.

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{Acquire, Row};
use uuid::Uuid;

use super::PostgresStore;
use crate::error::Result;
use crate::protocol::storage::PruneRun;
use crate::store::retention::{
    CutBatch, PruneLock, Retention, StreamCut, TERMINAL, plan_batch, run_from_json, run_json,
};

/// The advisory lock key of the pruner (`switchboard.prune` in ASCII).
const PRUNE_LOCK: i64 = 0x7377_6272_7072_6e65;

#[async_trait]
impl Retention for PostgresStore {
    async fn stream_floor(&self, session_id: Uuid) -> Result<i64> {
        let floor: Option<i64> =
            sqlx::query_scalar("SELECT pruned_through FROM stream_floor WHERE session_id = $1")
                .bind(session_id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(floor.unwrap_or(0))
    }

    async fn prune_lock(&self) -> Result<Option<PruneLock>> {
        // A connection of its own, out of the pool: the lock lives as long
        // as its session, and closing the connection (dropping the lock)
        // releases it even if this node dies mid-run.
        let mut conn = self.pool.acquire().await?.detach();
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(PRUNE_LOCK)
            .fetch_one(&mut conn)
            .await?;
        Ok(got.then(|| PruneLock::holding(std::sync::Mutex::new(conn))))
    }

    async fn prunable_streams(&self, horizon: DateTime<Utc>, limit: i64) -> Result<Vec<StreamCut>> {
        // One statement, one snapshot, one round trip: the streams whose
        // first event belongs to a task that ended before the horizon, and
        // for each the first event of its tasks that have not, else past
        // its last seq.
        let of_n = events_of!("n");
        let rows: Vec<(Uuid, i64)> = sqlx::query_as(&format!(
            "SELECT s.session_id, COALESCE( \
               (SELECT MIN(fe.seq) FROM tasks n \
                CROSS JOIN LATERAL (SELECT e.seq FROM events e \
                    WHERE {of_n} ORDER BY e.seq LIMIT 1) fe \
                WHERE n.session_id = s.session_id \
                AND NOT (n.state IN {TERMINAL} AND n.updated_at < $1)), \
               s.last_seq + 1) \
             FROM sessions s \
             CROSS JOIN LATERAL (SELECT e.task_id FROM events e \
                 WHERE e.session_id = s.session_id ORDER BY e.seq LIMIT 1) f \
             JOIN tasks t ON t.task_id = f.task_id \
             WHERE t.state IN {TERMINAL} AND t.updated_at < $1 LIMIT $2"
        ))
        .bind(horizon)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(session_id, cut)| StreamCut { session_id, cut })
            .collect())
    }

    async fn cut_streams(&self, cuts: Vec<StreamCut>, max: i64) -> Result<CutBatch> {
        let ids: Vec<Uuid> = cuts.iter().map(|c| c.session_id).collect();
        let mut conn = self.pool.acquire().await?;
        let mut tx = conn.begin().await?;
        // Floors locked in key order, read in one round trip.
        let floors: HashMap<Uuid, i64> = sqlx::query_as::<_, (Uuid, i64)>(
            "SELECT session_id, pruned_through FROM stream_floor \
             WHERE session_id = ANY($1) ORDER BY session_id FOR UPDATE",
        )
        .bind(&ids)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .collect();
        let streams: Vec<_> = cuts
            .iter()
            .map(|c| {
                let floor = floors.get(&c.session_id).copied().unwrap_or(0);
                (c.session_id, floor, c.cut)
            })
            .collect();
        let (steps, done) = plan_batch(&streams, max);
        if steps.is_empty() {
            return Ok(CutBatch { removed: 0, done });
        }
        let keys: Vec<Uuid> = steps.iter().map(|s| s.key).collect();
        let lo: Vec<i64> = steps.iter().map(|s| s.floor).collect();
        let hi: Vec<i64> = steps.iter().map(|s| s.through).collect();
        let removed = sqlx::query(
            "DELETE FROM events e \
             USING UNNEST($1::uuid[], $2::bigint[], $3::bigint[]) AS c(session_id, lo, hi) \
             WHERE e.session_id = c.session_id AND e.seq > c.lo AND e.seq <= c.hi",
        )
        .bind(&keys)
        .bind(&lo)
        .bind(&hi)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        sqlx::query(
            "INSERT INTO stream_floor (session_id, pruned_through) \
             SELECT * FROM UNNEST($1::uuid[], $2::bigint[]) \
             ON CONFLICT (session_id) DO UPDATE SET \
             pruned_through = GREATEST(stream_floor.pruned_through, EXCLUDED.pruned_through)",
        )
        .bind(&keys)
        .bind(&hi)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(CutBatch { removed, done })
    }

    async fn prune_tasks(&self, horizon: DateTime<Utc>, max: i64) -> Result<u64> {
        let of_t = events_of!("t");
        let n = sqlx::query(&format!(
            "DELETE FROM tasks WHERE task_id IN ( \
               SELECT t.task_id FROM tasks t WHERE t.state IN {TERMINAL} \
               AND t.updated_at < $1 \
               AND NOT EXISTS (SELECT 1 FROM events e WHERE {of_t} AND e.seq <= t.last_seq) \
               LIMIT $2 FOR UPDATE SKIP LOCKED)"
        ))
        .bind(horizon)
        .bind(max)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n)
    }

    async fn idle_sessions(&self, horizon: DateTime<Utc>, limit: i64) -> Result<Vec<Uuid>> {
        Ok(sqlx::query_scalar(
            "SELECT s.session_id FROM sessions s WHERE s.last_activity < $1 \
             AND NOT EXISTS (SELECT 1 FROM tasks t WHERE t.session_id = s.session_id) LIMIT $2",
        )
        .bind(horizon)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn prune_sessions(&self, ids: Vec<Uuid>, horizon: DateTime<Utc>) -> Result<u64> {
        let mut conn = self.pool.acquire().await?;
        let mut tx = conn.begin().await?;
        let gone: Vec<Uuid> = sqlx::query_scalar(
            "DELETE FROM sessions s WHERE s.session_id = ANY($1) AND s.last_activity < $2 \
             AND NOT EXISTS (SELECT 1 FROM tasks t WHERE t.session_id = s.session_id) \
             RETURNING s.session_id",
        )
        .bind(&ids)
        .bind(horizon)
        .fetch_all(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM stream_floor WHERE session_id = ANY($1)")
            .bind(&gone)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(gone.len() as u64)
    }

    async fn audit_prune_point(&self, horizon: DateTime<Utc>) -> Result<Option<i64>> {
        let row = sqlx::query(
            "SELECT c.seq, c.head, (SELECT a.hash FROM audit a WHERE a.seq = c.seq) AS hash \
             FROM audit_checkpoints c WHERE c.at < $1 ORDER BY c.seq DESC LIMIT 1",
        )
        .bind(horizon)
        .fetch_optional(&self.pool)
        .await?;
        let row = row
            .map(|r| -> Result<_> {
                Ok((r.try_get("seq")?, r.try_get("head")?, r.try_get("hash")?))
            })
            .transpose()?;
        Ok(crate::store::sqlite::usable_checkpoint(row))
    }

    async fn prune_audit(&self, before: i64, max: i64) -> Result<u64> {
        let n = sqlx::query(
            "DELETE FROM audit WHERE seq >= (SELECT MIN(seq) FROM audit) \
             AND seq < LEAST($1, (SELECT MIN(seq) FROM audit) + $2)",
        )
        .bind(before)
        .bind(max)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n)
    }
    async fn record_prune(&self, run: &PruneRun) -> Result<()> {
        sqlx::query(
            "INSERT INTO prune_runs (id, run) VALUES (1, $1) \
             ON CONFLICT (id) DO UPDATE SET run = EXCLUDED.run",
        )
        .bind(run_json(run)?)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn last_prune(&self) -> Result<Option<PruneRun>> {
        let text: Option<String> = sqlx::query_scalar("SELECT run FROM prune_runs WHERE id = 1")
            .fetch_optional(&self.pool)
            .await?;
        text.as_deref().map(run_from_json).transpose()
    }
}
