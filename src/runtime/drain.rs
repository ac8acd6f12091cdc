//! Draining a cluster node on SIGTERM, so that a rolling restart fails no
//! task that could run elsewhere:
//!
//! 1. the node stops claiming work;
//! 2. tasks it claimed but has not started (queued in `pending` for an agent
//!    slot) are handed back at once: their claim is released in the store
//!    and the nodes that have their agent are woken to claim them;
//! 3. its running tasks may finish for up to `[limits] drain_ms`, their
//!    leases renewed as usual (the cluster loop runs on);
//! 4. what still runs then is stopped and failed, saying that the drain ran
//!    out of time.
//!
//! Its WebSockets were already closed with 1001 (the shutdown does that
//! first): clients resume on another node with `after_seq`, and the events
//! of the tasks still running here reach them there, stored and notified
//! like any other node's.
//!
//! With SQLite (one node) there is nowhere to hand work to and nobody can
//! connect while the node waits, so there is no drain: the shutdown stops
//! and fails in-flight tasks at once, as it always did.

use std::time::Duration;

use tokio::time::Instant;

use crate::runtime::Runtime;
use crate::store::{Cluster, Signal};

/// How often a draining node looks for handed-back tasks and finished ones.
const POLL: Duration = Duration::from_millis(50);

impl Runtime {
    /// `[limits] drain_ms`.
    pub fn drain_time(&self) -> Duration {
        Duration::from_millis(self.limits.drain_ms)
    }

    /// Drain this node (see the module's doc). Returns at once when the
    /// store is not shared; otherwise when nothing runs here any more or
    /// the drain time is over, having told the engine why the tasks left
    /// are about to be stopped.
    pub async fn drain(&self) {
        let Some(cluster) = self.store().cluster() else {
            return;
        };
        let deadline = Instant::now() + self.drain_time();
        self.engine().begin_drain();
        tracing::info!(
            live = self.engine().live_count(),
            drain_ms = self.limits.drain_ms,
            "draining: handing queued tasks to other nodes, letting running ones finish"
        );
        loop {
            self.hand_back(cluster).await;
            if self.engine().live_count() == 0 {
                tracing::info!("drained: nothing runs here any more");
                break;
            }
            let now = Instant::now();
            if now >= deadline {
                self.drain_ran_out();
                break;
            }
            tokio::time::sleep(POLL.min(deadline - now)).await;
        }
        // Drivers that gave up in the last moment.
        self.hand_back(cluster).await;
    }

    /// The drain time is over: say so in the failure of every task left.
    fn drain_ran_out(&self) {
        let left = self.engine().live_count();
        tracing::warn!(
            left,
            drain_ms = self.limits.drain_ms,
            "drain time over; failing the tasks still running"
        );
        self.engine().set_stop_reason(format!(
            "the node shut down while the task was in progress: it ran out of its drain time \
             ([limits] drain_ms = {}) before the task finished",
            self.limits.drain_ms
        ));
    }

    /// Release the claims of the tasks the engine gave up, and wake the
    /// nodes that can run them. When the store cannot be reached now, their
    /// leases lapse and another node releases them (see `failover`).
    async fn hand_back(&self, cluster: &dyn Cluster) {
        let given = self.engine().take_handed_back();
        if given.is_empty() {
            return;
        }
        let ids: Vec<_> = given.iter().map(|(id, _)| *id).collect();
        match cluster.release(self.node_id(), &ids).await {
            Ok(agents) => {
                tracing::info!(count = agents.len(), "handed queued tasks back to the pool");
                wake(cluster, agents).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, count = ids.len(), "could not hand queued tasks back; their leases will lapse");
            }
        }
    }
}

/// Tell the nodes that have these agents that pending work is waiting.
pub(crate) async fn wake(cluster: &dyn Cluster, mut agents: Vec<String>) {
    agents.sort();
    agents.dedup();
    for agent_type in agents {
        if let Err(e) = cluster.signal(&Signal::Pending { agent_type }).await {
            // Their polls (every third of the lease) find the work anyway.
            tracing::warn!(error = %e, "could not wake the nodes for released tasks");
        }
    }
}
