//! Coordination of several nodes over PostgreSQL: the node and agent
//! registry (heartbeats), claiming pending tasks with `FOR UPDATE SKIP
//! LOCKED`, leases, and control signals through `NOTIFY`.
//!
//! Lease times are compared with the database's clock only (`now()`), so
//! nodes with skewed clocks still agree on who holds what.

use std::time::Duration;

use async_trait::async_trait;
use sqlx::Row;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{CONTROL_CHANNEL, PostgresStore, TASKS_CHANNEL, task_from};
use crate::agent::AgentInfo;
use crate::error::Result;
use crate::store::{Cluster, NodeAgent, Signal, corrupt};
use crate::task::Task;

const UNFINISHED: &str = "state NOT IN ('completed', 'failed', 'cancelled')";

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

#[async_trait]
impl Cluster for PostgresStore {
    async fn heartbeat(&self, node_id: &str, agents: &[AgentInfo]) -> Result<()> {
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO nodes (node_id, started_at, heartbeat_at) VALUES ($1, now(), now()) \
             ON CONFLICT (node_id) DO UPDATE SET heartbeat_at = now()",
        )
        .bind(node_id)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM node_agents WHERE node_id = $1")
            .bind(node_id)
            .execute(&mut *tx)
            .await?;
        for a in agents {
            // A remote host's agent may share its name with one of the
            // node's own (every host offers `echo`): its key is its address,
            // `agent@host`, unique per node.
            let key = a.metadata["address"].as_str().unwrap_or(&a.agent_type);
            sqlx::query("INSERT INTO node_agents (node_id, agent_type, info) VALUES ($1, $2, $3)")
                .bind(node_id)
                .bind(key)
                .bind(serde_json::to_value(a).map_err(corrupt)?)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn leave(&self, node_id: &str) -> Result<()> {
        sqlx::query("DELETE FROM nodes WHERE node_id = $1")
            .bind(node_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn live_agents(&self, within: Duration) -> Result<Vec<NodeAgent>> {
        let rows = sqlx::query(
            "SELECT n.node_id, n.heartbeat_at, a.info FROM nodes n JOIN node_agents a USING (node_id) \
             WHERE n.heartbeat_at > now() - make_interval(secs => $1) ORDER BY a.agent_type, n.node_id",
        )
        .bind(within.as_secs_f64())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(NodeAgent {
                    node_id: r.try_get("node_id")?,
                    heartbeat_at: r.try_get("heartbeat_at")?,
                    info: serde_json::from_value(r.try_get("info")?).map_err(corrupt)?,
                })
            })
            .collect()
    }

    async fn claim_task(&self, task_id: Uuid, node_id: &str, lease: Duration) -> Result<bool> {
        self.claims.claim(task_id, node_id, lease).await
    }

    fn claim_own_starts(&self, node_id: &str, lease: Duration) {
        let _ = self.claimant.set((node_id.to_owned(), secs(lease)));
    }

    async fn claim_pending(
        &self,
        node_id: &str,
        agent_types: &[String],
        lease: Duration,
        limit: i64,
    ) -> Result<Vec<Task>> {
        if agent_types.is_empty() || limit <= 0 {
            return Ok(Vec::new());
        }
        sqlx::query(
            "UPDATE tasks SET node_id = $1, lease_until = now() + make_interval(secs => $3) \
             WHERE task_id IN (SELECT task_id FROM tasks WHERE state = 'pending' AND node_id IS NULL \
             AND agent_type = ANY($2) ORDER BY created_at LIMIT $4 FOR UPDATE SKIP LOCKED) RETURNING *",
        )
        .bind(node_id)
        .bind(agent_types)
        .bind(secs(lease))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(task_from)
        .collect()
    }

    async fn renew(&self, node_id: &str, task_ids: &[Uuid], lease: Duration) -> Result<()> {
        if task_ids.is_empty() {
            return Ok(());
        }
        // SKIP LOCKED: a row locked right now is being written by one of
        // this node's own appends; renewing it on the next tick is fine, and
        // waiting for it could deadlock against a batch that locks tasks in
        // another order.
        sqlx::query(&format!(
            "UPDATE tasks SET lease_until = now() + make_interval(secs => $3) \
             WHERE task_id IN (SELECT task_id FROM tasks WHERE node_id = $1 AND task_id = ANY($2) \
             AND {UNFINISHED} FOR UPDATE SKIP LOCKED)"
        ))
        .bind(node_id)
        .bind(task_ids)
        .bind(secs(lease))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn expired(&self) -> Result<Vec<(Task, String)>> {
        sqlx::query(&format!(
            "SELECT * FROM tasks WHERE node_id IS NOT NULL AND lease_until < now() AND {UNFINISHED} \
             ORDER BY created_at LIMIT 500"
        ))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| Ok((task_from(r)?, r.try_get("node_id")?)))
        .collect()
    }

    async fn owned_by(&self, node_id: &str) -> Result<Vec<Task>> {
        sqlx::query(&format!(
            "SELECT * FROM tasks WHERE node_id = $1 AND {UNFINISHED} ORDER BY created_at"
        ))
        .bind(node_id)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(task_from)
        .collect()
    }

    async fn release(&self, node_id: &str, task_ids: &[Uuid]) -> Result<Vec<String>> {
        if task_ids.is_empty() {
            return Ok(Vec::new());
        }
        Ok(sqlx::query_scalar(
            "UPDATE tasks SET node_id = NULL, lease_until = NULL \
             WHERE node_id = $1 AND task_id = ANY($2) AND state = 'pending' RETURNING agent_type",
        )
        .bind(node_id)
        .bind(task_ids)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn release_expired(&self, task_id: Uuid) -> Result<Option<String>> {
        Ok(sqlx::query_scalar(
            "UPDATE tasks SET node_id = NULL, lease_until = NULL \
             WHERE task_id = $1 AND state = 'pending' AND lease_until < now() RETURNING agent_type",
        )
        .bind(task_id)
        .fetch_optional(&self.pool)
        .await?)
    }

    async fn claimed_elsewhere(&self, node_id: &str, task_ids: &[Uuid]) -> Result<Vec<Uuid>> {
        if task_ids.is_empty() {
            return Ok(Vec::new());
        }
        Ok(sqlx::query_scalar(
            "SELECT task_id FROM tasks WHERE task_id = ANY($2) AND node_id IS NOT NULL AND node_id <> $1",
        )
        .bind(node_id)
        .bind(task_ids)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn signal(&self, signal: &Signal) -> Result<()> {
        let (channel, payload) = match signal {
            Signal::Pending { agent_type } => (TASKS_CHANNEL, agent_type.clone()),
            other => (
                CONTROL_CHANNEL,
                serde_json::to_string(other).map_err(corrupt)?,
            ),
        };
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(channel)
            .bind(payload)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    fn signals(&self) -> tokio::sync::broadcast::Receiver<Signal> {
        self.signals.subscribe()
    }

    fn spawn_listener(
        &self,
        node_id: &str,
        stop: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(self.clone().listen(node_id.to_owned(), stop))
    }
}
