//! The cluster side of a node, when the store is shared (PostgreSQL): one
//! background loop that heartbeats this node's agents, claims pending work
//! for them, renews the leases of the tasks it runs, fails tasks whose node
//! stopped renewing, and applies control signals (stop, answer) sent by
//! other nodes.
//!
//! A node that dies stops renewing; within one lease plus one tick another
//! node settles its tasks (see `failover`): not started ones go back to the
//! pool, those of re-runnable agents start over, the rest fail with a reason
//! naming it. A draining node (see `drain`) claims nothing.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use crate::agent::{AgentInfo, Answer};
use crate::runtime::Runtime;
use crate::runtime::failover::Lost;
use crate::store::{Cluster, NodeAgent, Signal};

impl Runtime {
    /// The lease of a running task (`[limits] lease_ms`).
    pub fn lease(&self) -> Duration {
        Duration::from_millis(self.limits.lease_ms.max(100))
    }

    /// How often leases are renewed and expiries looked for.
    fn tick(&self) -> Duration {
        self.lease() / 3
    }

    /// Every live node's agents, each with `metadata.node_id` and
    /// `metadata.health`.
    pub(crate) async fn cluster_agents(
        &self,
        cluster: &dyn Cluster,
    ) -> crate::error::Result<Vec<AgentInfo>> {
        let mut live = cluster.live_agents(self.lease()).await?;
        // This node is live by definition: until its first heartbeat is
        // stored (just after start) its own agents come from memory, so
        // that a fresh node never lists none of them.
        if !live.iter().any(|na| na.node_id == self.node_id) {
            let at = crate::event::now();
            live.extend(
                self.engine
                    .agents()
                    .list()
                    .into_iter()
                    .map(|info| NodeAgent {
                        node_id: self.node_id.clone(),
                        info,
                        heartbeat_at: at,
                    }),
            );
        }
        Ok(live
            .into_iter()
            .map(|na| {
                let mut info = na.info;
                if !info.metadata.is_object() {
                    info.metadata = json!({});
                }
                info.metadata["node_id"] = json!(na.node_id);
                info.metadata["health"] = json!("ok");
                info.metadata["heartbeat_at"] = json!(crate::event::rfc3339(&na.heartbeat_at));
                info
            })
            .collect())
    }

    /// Agents of this node that can run, by name.
    /// (Hosted agents count: tasks claimed for them run on this node's
    /// engine, which places them on the host linked here.)
    fn runnable_here(&self) -> Vec<String> {
        self.engine.agents().runnable_names()
    }

    /// Claim what this node can run now and start it.
    async fn claim_work(&self, cluster: &dyn Cluster, only: Option<&str>) {
        if self.engine.is_draining() {
            return;
        }
        for agent in self.runnable_here() {
            if only.is_some_and(|o| o != agent) {
                continue;
            }
            let free = self.engine.agents().get(&agent).map_or(0, |r| {
                let (running, queued) = r.slots.load();
                r.slots.max().saturating_sub(running + queued)
            }) as i64;
            match cluster
                .claim_pending(
                    &self.node_id,
                    std::slice::from_ref(&agent),
                    self.lease(),
                    free.min(64),
                )
                .await
            {
                Ok(tasks) => {
                    for task in tasks {
                        tracing::info!(task_id = %task.task_id, agent = %agent, "claimed a pending task");
                        self.engine.start(task);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "claiming pending tasks failed"),
            }
        }
    }

    /// One periodic round: heartbeat, renew, reap, claim.
    async fn cluster_tick(&self, cluster: &dyn Cluster) {
        // Renew first: it is what keeps this node's tasks alive.
        let live = self.engine.live_ids();
        if let Err(e) = cluster.renew(&self.node_id, &live, self.lease()).await {
            tracing::warn!(error = %e, "renewing leases failed");
        }
        self.abandon_lost(cluster, &live).await;
        let agents = self.engine.agents().list();
        if let Err(e) = cluster.heartbeat(&self.node_id, &agents).await {
            tracing::warn!(error = %e, "heartbeat failed");
            return;
        }
        match cluster.expired().await {
            Ok(expired) => {
                for (task, node) in expired {
                    // This node's own, still driven here: it is alive and
                    // renews it next round (its renewal lagged, say while
                    // the store was away); settling it would run it twice.
                    if node == self.node_id && live.contains(&task.task_id) {
                        continue;
                    }
                    tracing::warn!(task_id = %task.task_id, %node, "lease expired");
                    self.settle_lost(cluster, &task, &node, Lost::Expired).await;
                }
            }
            Err(e) => tracing::warn!(error = %e, "looking for expired leases failed"),
        }
        self.claim_work(cluster, None).await;
    }

    /// Apply a signal from any node.
    async fn on_signal(&self, cluster: &dyn Cluster, signal: Signal) {
        match signal {
            Signal::Pending { agent_type } => self.claim_work(cluster, Some(&agent_type)).await,
            Signal::Stop { task_id } => self.engine.stop(task_id),
            Signal::Answer {
                task_id,
                approve,
                input,
            } => {
                self.engine.answer(task_id, Answer { approve, input });
            }
            Signal::Reconnected => self.claim_work(cluster, None).await,
        }
    }
}

/// Run the cluster loop of `runtime` until `stop` fires, then leave the
/// cluster. Returns at once when the store is not shared.
pub async fn run(runtime: Arc<Runtime>, stop: CancellationToken) {
    let store = runtime.store().clone();
    let Some(cluster) = store.cluster() else {
        return;
    };
    let listener = cluster.spawn_listener(runtime.node_id(), stop.clone());
    let mut signals = cluster.signals();
    let mut ticks = tokio::time::interval(runtime.tick());
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = ticks.tick() => runtime.cluster_tick(cluster).await,
            signal = signals.recv() => match signal {
                Ok(s) => runtime.on_signal(cluster, s).await,
                Err(RecvError::Lagged(_)) => runtime.claim_work(cluster, None).await,
                Err(RecvError::Closed) => break,
            },
        }
    }
    let _ = listener.await;
    if let Err(e) = cluster.leave(runtime.node_id()).await {
        tracing::warn!(error = %e, "could not leave the cluster");
    }
}
