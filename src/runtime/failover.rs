//! Tasks whose node was lost (it stopped renewing their leases, or it
//! restarted), settled by another node or by the node itself on its start:
//!
//! - a task still `pending` never started: its claim is released and the
//!   nodes that have its agent are woken to claim it;
//! - a started task of an agent marked `rerun_on_node_loss` (on any live node
//!   that offers it) goes back to `pending` with a `task.state` event saying
//!   why, and runs again from the start wherever its agent is free (at most
//!   [`MAX_RERUNS`] times);
//! - any other task fails with an error naming the node.

use crate::audit::{NewAudit, kind};
use crate::event::EventBody;
use crate::runtime::Runtime;
use crate::runtime::drain::wake;
use crate::store::{Cluster, Rejected};
use crate::task::engine::Outcome;
use crate::task::{Task, TaskEvent, TaskState};

/// How many times one task is re-run after the loss of its node before it
/// is failed instead (an agent that brings its node down every time should
/// not take the cluster down one node after another).
pub const MAX_RERUNS: usize = 3;

/// How a task's node was lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lost {
    /// It stopped renewing the task's lease.
    Expired,
    /// It is this node, started again with the same id.
    Restarted,
}

impl Lost {
    /// The failure of a task that is not re-run.
    fn failure(self, node: &str, state: TaskState) -> String {
        match self {
            Lost::Expired => {
                format!("node {node} stopped renewing its lease while the task was {state}")
            }
            Lost::Restarted => {
                format!("node {node} restarted while this task was {state}; it was not resumed")
            }
        }
    }

    /// The message of the `pending` event of a re-run.
    fn rerun(self, node: &str, state: TaskState) -> String {
        let what = match self {
            Lost::Expired => "was lost (it stopped renewing its lease)",
            Lost::Restarted => "restarted",
        };
        format!("re-run: node {node} {what} while the task was {state}; it starts over")
    }
}

impl Runtime {
    /// Settle one task of a lost node (see the module's doc). Errors are
    /// logged: the next round finds the task again.
    pub(crate) async fn settle_lost(
        &self,
        cluster: &dyn Cluster,
        task: &Task,
        node: &str,
        lost: Lost,
    ) {
        let settled = if task.state == TaskState::Pending {
            self.release_lost(cluster, task, node, lost).await
        } else {
            match self.reruns_left(cluster, task).await {
                Ok(true) => self.rerun(cluster, task, node, lost).await,
                Ok(false) => self.fail_lost(task, lost.failure(node, task.state)).await,
                Err(e) => Err(e),
            }
        };
        if let Err(e) = settled {
            tracing::warn!(task_id = %task.task_id, error = %e, "could not settle a task of a lost node");
        }
    }

    /// Give a lost node's claim on a task back to the pool.
    async fn release_lost(
        &self,
        cluster: &dyn Cluster,
        task: &Task,
        node: &str,
        lost: Lost,
    ) -> crate::error::Result<()> {
        let released = match lost {
            Lost::Expired => cluster.release_expired(task.task_id).await?,
            Lost::Restarted => cluster.release(node, &[task.task_id]).await?.pop(),
        };
        if let Some(agent) = released {
            tracing::info!(task_id = %task.task_id, %node, "released a pending task of a lost node");
            wake(cluster, vec![agent]).await;
        }
        Ok(())
    }

    async fn fail_lost(&self, task: &Task, reason: String) -> crate::error::Result<()> {
        tracing::warn!(task_id = %task.task_id, %reason, "failing a task of a lost node");
        self.engine.fail(&task.into(), task.state, &reason).await?;
        self.engine.stop(task.task_id);
        Ok(())
    }

    /// Whether `task` is to be re-run: its agent is re-runnable and it was
    /// not re-run [`MAX_RERUNS`] times already.
    async fn reruns_left(&self, cluster: &dyn Cluster, task: &Task) -> crate::error::Result<bool> {
        if !self.rerunnable(cluster, &task.agent_type).await? {
            return Ok(false);
        }
        let events = self.store().task_events(task.task_id).await?;
        let reruns = events
            .iter()
            .filter(|e| match &e.body {
                EventBody::State(s) => s.state == TaskState::Pending && s.prev_state.is_some(),
                EventBody::Output(_) => false,
            })
            .count();
        Ok(reruns < MAX_RERUNS)
    }

    /// Whether this node, or any live node, offers `agent_type` with
    /// `rerun_on_node_loss = true`.
    async fn rerunnable(
        &self,
        cluster: &dyn Cluster,
        agent_type: &str,
    ) -> crate::error::Result<bool> {
        let marked = |info: &crate::agent::AgentInfo| info.metadata["rerun_on_node_loss"] == true;
        if let Some(r) = self.engine.agents().get(agent_type) {
            if marked(&r.agent.info()) {
                return Ok(true);
            }
        }
        let live = cluster.live_agents(self.lease()).await?;
        Ok(live
            .iter()
            .any(|na| na.info.answers_to(agent_type) && marked(&na.info)))
    }

    /// Move a started task back to `pending`, visibly, and give it to the
    /// pool. Two nodes settling it at once: one event, as the store's
    /// compare-and-set lets only one of them move it.
    async fn rerun(
        &self,
        cluster: &dyn Cluster,
        task: &Task,
        node: &str,
        lost: Lost,
    ) -> crate::error::Result<()> {
        let tref = task.into();
        let mut from = task.state;
        for _ in 0..4 {
            let audit = vec![
                NewAudit::by(None, kind::TASK_RERUN, "rerun")
                    .for_user(&task.user_id)
                    .resource("task", task.task_id)
                    .session(task.session_id)
                    .detail("node_id", node),
            ];
            let message = lost.rerun(node, from);
            let done = self
                .engine
                .transition(
                    &tref,
                    from,
                    TaskEvent::Rerun,
                    message,
                    Outcome::default(),
                    audit,
                )
                .await?;
            match done {
                Ok(_) => {
                    tracing::warn!(task_id = %task.task_id, %node, "re-running a task of a lost node");
                    break;
                }
                Err(Rejected::StateIs(now)) if now.is_terminal() => return Ok(()),
                Err(Rejected::StateIs(TaskState::Pending)) => break, // another node did it
                Err(Rejected::StateIs(now)) => from = now,
                Err(_) => return Ok(()),
            }
        }
        self.engine.abandon(task.task_id);
        self.release_lost(cluster, task, node, lost).await
    }

    /// After a restart: tasks that were in flight when the node died are
    /// failed with a clear reason (they are not resumed: an agent's side
    /// effects cannot be assumed repeatable).
    ///
    /// With a shared store only this node's own tasks and those whose node
    /// stopped renewing its lease are settled (see the top of this file:
    /// not started ones go back to the pool, re-runnable ones start over,
    /// the rest fail); other nodes' tasks run on.
    pub async fn recover(&self) -> anyhow::Result<usize> {
        if let Some(cluster) = self.store.cluster() {
            return self.recover_cluster(cluster).await;
        }
        let stale = self.store.unfinished_tasks().await?;
        for task in &stale {
            let reason = format!(
                "the node restarted while this task was {}; it was not resumed",
                task.state
            );
            self.engine.fail(&task.into(), task.state, &reason).await?;
        }
        Ok(stale.len())
    }

    /// With a shared store, on start: settle this node's own unfinished
    /// tasks (it restarted) and those whose lease expired. Returns how many.
    async fn recover_cluster(&self, cluster: &dyn Cluster) -> anyhow::Result<usize> {
        let mine = cluster.owned_by(self.node_id()).await?;
        let expired = cluster.expired().await?;
        let node = self.node_id().to_owned();
        for task in &mine {
            self.settle_lost(cluster, task, &node, Lost::Restarted)
                .await;
        }
        let mut count = mine.len();
        for (task, owner) in expired.iter().filter(|(_, n)| *n != node) {
            self.settle_lost(cluster, task, owner, Lost::Expired).await;
            count += 1;
        }
        Ok(count)
    }

    /// Stop, without recording anything, the drivers of tasks another node
    /// has claimed since: this node lost their leases (it could not renew
    /// them in time), and they were settled as a lost node's.
    pub(crate) async fn abandon_lost(&self, cluster: &dyn Cluster, live: &[uuid::Uuid]) {
        match cluster.claimed_elsewhere(self.node_id(), live).await {
            Ok(lost) => {
                for id in lost {
                    tracing::warn!(task_id = %id, "another node holds this task now; stopping it here");
                    self.engine.abandon(id);
                }
            }
            Err(e) => tracing::warn!(error = %e, "checking the claims of running tasks failed"),
        }
    }
}
