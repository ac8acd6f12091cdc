//! Driving one task: waiting for an agent slot, running the agent, and
//! recording how it ended.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures_util::FutureExt;

use super::append::transition_append;
use super::io::DriverIo;
use super::{Begun, Engine, Live, Outcome, TaskRef};
use crate::agent::{AgentError, Context, Job};
use crate::audit::{NewAudit, kind};
use crate::error::{Error, Result};
use crate::event::StoredEvent;
use crate::store::Rejected;
use crate::store::writer::Pipe;
use crate::task::{Task, TaskEvent, TaskState};

/// How an agent's run ended: its own answer, or a panic caught.
type RunOutcome = std::thread::Result<std::result::Result<String, AgentError>>;

impl Engine {
    /// Record one state change of `task`, if it is still in `from`.
    pub async fn transition(
        &self,
        task: &TaskRef,
        from: TaskState,
        event: TaskEvent,
        message: impl Into<String>,
        outcome: Outcome,
        audit: Vec<NewAudit>,
    ) -> Result<Result<StoredEvent, Rejected>> {
        let append = transition_append(task, from, event, message, outcome, audit)?;
        self.writer.append(append).await
    }

    /// Move `task` to `failed` from whatever non-terminal state it is in.
    /// Returns the stored event, or `None` when it had already ended.
    pub async fn fail(
        &self,
        task: &TaskRef,
        from: TaskState,
        reason: &str,
    ) -> Result<Option<StoredEvent>> {
        let mut from = from;
        // A concurrent writer may move the task on; follow it a few times.
        for _ in 0..4 {
            if from.is_terminal() {
                return Ok(None);
            }
            let audit = vec![
                NewAudit::by(None, kind::TASK_FAILED, "fail")
                    .for_user(&task.user_id)
                    .resource("task", task.task_id)
                    .session(task.session_id)
                    .status(crate::audit::AuditStatus::Failure)
                    .detail("error", reason),
            ];
            match self
                .transition(
                    task,
                    from,
                    TaskEvent::Fail,
                    reason,
                    Outcome::error(reason),
                    audit,
                )
                .await?
            {
                Ok(e) => return Ok(Some(e)),
                // Back in `pending` after it had started: its node was
                // lost and it was queued to run again elsewhere; it is no
                // longer this caller's to fail.
                Err(Rejected::StateIs(TaskState::Pending)) if from != TaskState::Pending => {
                    return Ok(None);
                }
                Err(Rejected::StateIs(now)) => from = now,
                Err(Rejected::NoTask | Rejected::Duplicate | Rejected::NoSession) => {
                    return Ok(None);
                }
            }
        }
        Err(Error::Conflict("the task kept changing state".into()))
    }

    /// Run `task` to its end: wait for a slot unless `begun`, store its
    /// start, run its agent and record the outcome.
    pub(super) async fn drive(
        self: Arc<Self>,
        task: Task,
        live: Arc<Live>,
        begun: Option<Begun>,
    ) -> Result<()> {
        let tref = TaskRef::from(&task);
        let Some(registered) = self.agents.get(&task.agent_type) else {
            self.fail(
                &tref,
                TaskState::Pending,
                "the agent is not configured on this node",
            )
            .await?;
            return Ok(());
        };
        let begun = match begun {
            Some(b) => b,
            None => match self.wait_for_slot(&task, &tref, &live, &registered).await? {
                Some(b) => b,
                None => return Ok(()),
            },
        };
        let _slot = begun.slot;
        for receipt in begun.receipts {
            if receipt.wait().await?.is_err() {
                return Ok(()); // cancelled meanwhile; the canceller recorded it
            }
        }
        live.started.store(true, Ordering::Relaxed);
        let io = Arc::new(DriverIo {
            engine: self.clone(),
            task: tref.clone(),
            live: live.clone(),
            pipe: Arc::new(Pipe::default()),
        });
        let job = Job {
            task_id: task.task_id,
            prompt: task.prompt.clone(),
            params: task.params.clone(),
            context: task.context.clone(),
        };
        let ctx = Context::new(io, live.cancel.clone());
        let run = AssertUnwindSafe(registered.agent.run(job, ctx)).catch_unwind();
        // Dropping the agent's future on cancel is what makes a stop real
        // even for an agent that forgets to watch its token.
        let outcome = tokio::select! {
            outcome = run => outcome,
            _ = live.cancel.cancelled() => Ok(Err(AgentError::Stopped)),
        };
        self.record_outcome(&tref, &live, outcome).await
    }

    /// Queue in `pending` until the agent has a free slot (the queue serves
    /// users round-robin, see `agent::fair`), then queue the task's start.
    /// `None` when the task is not to start here: stopped, or handed back
    /// because the node drains.
    async fn wait_for_slot(
        &self,
        task: &Task,
        tref: &TaskRef,
        live: &Live,
        registered: &crate::agent::Registered,
    ) -> Result<Option<Begun>> {
        let slot = tokio::select! {
            biased;
            _ = live.cancel.cancelled() => {
                self.after_stop(tref, TaskState::Pending, live).await?;
                return Ok(None);
            }
            _ = self.draining.cancelled() => {
                // Not started: another node runs it (the caller of
                // `take_handed_back` releases the claim).
                if let Ok(mut h) = self.handed_back.lock() {
                    h.push((task.task_id, task.agent_type.clone()));
                }
                return Ok(None);
            }
            slot = registered.slots.acquire(&task.user_id) => slot,
        };
        let receipts = self.queue_start(tref, &task.agent_type).await?;
        Ok(Some(Begun { slot, receipts }))
    }

    /// Record how the agent's run ended.
    async fn record_outcome(&self, tref: &TaskRef, live: &Live, outcome: RunOutcome) -> Result<()> {
        match outcome {
            Ok(Ok(result)) => {
                let audit = vec![
                    NewAudit::by(None, kind::TASK_COMPLETED, "complete")
                        .for_user(&tref.user_id)
                        .resource("task", tref.task_id)
                        .session(tref.session_id),
                ];
                let done = self
                    .transition(
                        tref,
                        TaskState::Running,
                        TaskEvent::Complete,
                        "completed",
                        Outcome::result(result),
                        audit,
                    )
                    .await?;
                if let Err(Rejected::StateIs(state)) = done {
                    tracing::debug!(%state, "finished after the task had moved on");
                }
            }
            Ok(Err(AgentError::Failed(reason))) => {
                self.fail(tref, TaskState::Running, &reason).await?;
            }
            Ok(Err(AgentError::Stopped)) => {
                return self.after_stop(tref, TaskState::Running, live).await;
            }
            Err(_panic) => {
                tracing::error!("agent panicked");
                self.fail(tref, TaskState::Running, "the agent crashed")
                    .await?;
            }
        }
        Ok(())
    }

    /// The agent stopped: when the node is shutting down nobody recorded why,
    /// so record it; when nobody stopped it, its output could not be stored
    /// (an error, so that the driver records the failure once it can);
    /// otherwise the canceller or denier already did.
    async fn after_stop(&self, task: &TaskRef, believed: TaskState, live: &Live) -> Result<()> {
        if live.abandoned.load(Ordering::Relaxed) {
            return Ok(());
        }
        if self.shutdown.is_cancelled() {
            let reason = self
                .stop_reason
                .get()
                .map_or("the node shut down while the task was in progress", |r| {
                    r.as_str()
                });
            self.fail(task, believed, reason).await?;
        } else if !live.cancel.is_cancelled() {
            return Err(Error::Unavailable("its output could not be stored".into()));
        }
        Ok(())
    }

    /// The driver of `task` gave up on an error of the store (a full disk,
    /// a lost database): fail the task, trying again until the store takes
    /// it or the node shuts down, so that no task is left hanging.
    pub(super) async fn fail_when_stored(
        &self,
        task: &TaskRef,
        believed: TaskState,
        error: &Error,
    ) {
        let reason = format!("the node could not store this task's progress: {error}");
        let mut pause = std::time::Duration::from_millis(200);
        loop {
            match self.fail(task, believed, &reason).await {
                Ok(_) => return,
                Err(e) => tracing::warn!(error = %e, "could not record the failure yet"),
            }
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = self.shutdown.cancelled() => return,
            }
            pause = (pause * 2).min(std::time::Duration::from_secs(5));
        }
    }
}
