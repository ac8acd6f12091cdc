//! What several nodes share through one store: the [`Cluster`] trait (the
//! PostgreSQL store implements it), the signals between nodes and the
//! registry of their agents.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::error::Result;
use crate::task::Task;

/// What a node asks of the others, delivered through the shared store.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Signal {
    /// A task for this agent waits to be claimed.
    Pending {
        /// The agent it needs.
        agent_type: String,
    },
    /// Stop the agent of a task (it was cancelled or denied).
    Stop {
        /// The task.
        task_id: Uuid,
    },
    /// Hand an answer to a waiting task.
    Answer {
        /// The task.
        task_id: Uuid,
        /// Approve or deny.
        approve: bool,
        /// Text for the agent.
        input: Option<String>,
    },
    /// The notification connection was re-established: notifications may
    /// have been missed, so look for work now.
    Reconnected,
}

/// One agent of one live node.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeAgent {
    /// The node that can run it.
    pub node_id: String,
    /// Its listing on that node.
    pub info: crate::agent::AgentInfo,
    /// The node's last heartbeat.
    pub heartbeat_at: DateTime<Utc>,
}

/// Coordination of several nodes over one shared store: agent registry,
/// claiming of pending work, leases, and signals between nodes.
#[async_trait]
pub trait Cluster: Send + Sync {
    /// Register (or refresh) this node and the agents it can run.
    async fn heartbeat(&self, node_id: &str, agents: &[crate::agent::AgentInfo]) -> Result<()>;
    /// Forget this node (graceful shutdown).
    async fn leave(&self, node_id: &str) -> Result<()>;
    /// The agents of every node that sent a heartbeat within `within`.
    async fn live_agents(&self, within: std::time::Duration) -> Result<Vec<NodeAgent>>;
    /// Claim one pending, unclaimed task for `node_id` (the submitting node,
    /// when it has the agent). False when someone else was faster.
    async fn claim_task(
        &self,
        task_id: Uuid,
        node_id: &str,
        lease: std::time::Duration,
    ) -> Result<bool>;
    /// From now on, store a new task claimed by `node_id` (leased for
    /// `lease`) when the batch inserting it also starts it: the submitting
    /// node runs it, and its insert, `planning` and `running` share one
    /// commit, as on a single node.
    fn claim_own_starts(&self, node_id: &str, lease: std::time::Duration);
    /// Claim up to `limit` pending, unclaimed tasks of these agents, oldest
    /// first, skipping tasks another node is claiming right now.
    async fn claim_pending(
        &self,
        node_id: &str,
        agent_types: &[String],
        lease: std::time::Duration,
        limit: i64,
    ) -> Result<Vec<Task>>;
    /// Extend the leases of these tasks, which `node_id` is running.
    async fn renew(
        &self,
        node_id: &str,
        task_ids: &[Uuid],
        lease: std::time::Duration,
    ) -> Result<()>;
    /// Unfinished tasks whose lease has expired, with the node that held it.
    async fn expired(&self) -> Result<Vec<(Task, String)>>;
    /// Unfinished tasks claimed by `node_id`.
    async fn owned_by(&self, node_id: &str) -> Result<Vec<Task>>;
    /// Give back the claims of `node_id` on these tasks, those still
    /// `pending` (not started), so that any node may claim them. Returns
    /// the agent of each task released.
    async fn release(&self, node_id: &str, task_ids: &[Uuid]) -> Result<Vec<String>>;
    /// Give back the claim on a `pending` task whose lease has expired (its
    /// node was lost). Returns its agent when it was released.
    async fn release_expired(&self, task_id: Uuid) -> Result<Option<String>>;
    /// Of these tasks, which `node_id` drives, those another node has
    /// claimed since (this node lost their lease).
    async fn claimed_elsewhere(&self, node_id: &str, task_ids: &[Uuid]) -> Result<Vec<Uuid>>;
    /// Send a signal to every node.
    async fn signal(&self, signal: &Signal) -> Result<()>;
    /// Signals from every node (including this one).
    fn signals(&self) -> tokio::sync::broadcast::Receiver<Signal>;
    /// Run the notification listener of this node until `stop` fires:
    /// stored events of other nodes reach the local bus, and signals reach
    /// [`Cluster::signals`]. Reconnects by itself.
    fn spawn_listener(
        &self,
        node_id: &str,
        stop: tokio_util::sync::CancellationToken,
    ) -> tokio::task::JoinHandle<()>;
}
