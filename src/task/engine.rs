//! The engine: drives each task through the state machine by running its
//! agent, and records every transition and output chunk as a stored event.
//!
//! Transitions are compare-and-set in the store (see
//! [`crate::store::TaskChange::Transition`]), so the engine, a user cancelling
//! and a user approving can race without ever applying a transition the
//! state machine forbids: the loser is told the task's current state.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use async_trait::async_trait;
use dashmap::DashMap;
use futures_util::FutureExt;
use serde_json::json;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::agent::{AgentError, AgentRegistry, Answer, Context, Job, Stopped, TaskIo};
use crate::audit::{NewAudit, kind};
use crate::error::{Error, Result};
use crate::event::{EventBody, OutputChunk, StateChange, StoredEvent, now};
use crate::store::writer::{Ack, Pipe, Receipt};
use crate::store::{Append, EventWriter, Rejected, TaskChange, Transition};
use crate::task::{Task, TaskEvent, TaskState};

/// What the engine knows of a task it is running.
struct Live {
    /// Fired to stop the agent.
    cancel: CancellationToken,
    /// Where an answer to a waiting task goes. A std mutex is right here: it
    /// is only held to swap the sender, never across an await.
    answer: Mutex<Option<oneshot::Sender<Answer>>>,
    /// Its `planning` and `running` are stored: from here on, a task found
    /// back in `pending` was queued again elsewhere (its node was lost).
    started: AtomicBool,
    /// Another node holds the task now: stop without recording anything.
    abandoned: AtomicBool,
}

/// The identity of a task, enough to write its events.
#[derive(Debug, Clone)]
pub struct TaskRef {
    /// The task.
    pub task_id: Uuid,
    /// Its stream.
    pub session_id: Uuid,
    /// Its owner.
    pub user_id: String,
    /// When it was submitted, for `execution_time`.
    pub created_at: chrono::DateTime<chrono::Utc>,
}

impl From<&Task> for TaskRef {
    fn from(t: &Task) -> Self {
        TaskRef {
            task_id: t.task_id,
            session_id: t.session_id,
            user_id: t.user_id.clone(),
            created_at: t.created_at,
        }
    }
}

/// Runs tasks on this node.
pub struct Engine {
    writer: EventWriter,
    agents: Arc<AgentRegistry>,
    live: DashMap<Uuid, Arc<Live>>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
    /// Fired when a cluster node starts draining: tasks still waiting for
    /// an agent slot give up their claim instead of starting here.
    draining: CancellationToken,
    /// Tasks given up while draining whose claim is not yet released in
    /// the store, with their agent. A std mutex: held only to push or take.
    handed_back: Mutex<Vec<(Uuid, String)>>,
    /// Why drivers were stopped, when it is more than the plain shutdown
    /// (a drain that ran out of time).
    stop_reason: OnceLock<String>,
}

impl Engine {
    /// An engine writing through `writer`. Drivers stop when `shutdown` fires.
    pub fn new(
        writer: EventWriter,
        agents: Arc<AgentRegistry>,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        Arc::new(Engine {
            writer,
            agents,
            live: DashMap::new(),
            tracker: TaskTracker::new(),
            shutdown,
            draining: CancellationToken::new(),
            handed_back: Mutex::new(Vec::new()),
            stop_reason: OnceLock::new(),
        })
    }

    /// The event writer (for submits, which write the first event).
    pub fn writer(&self) -> &EventWriter {
        &self.writer
    }

    /// The agents.
    pub fn agents(&self) -> &AgentRegistry {
        &self.agents
    }

    /// How many tasks run (or queue) on this node now.
    pub fn live_count(&self) -> usize {
        self.live.len()
    }

    /// The tasks this node is driving now (for lease renewal).
    pub fn live_ids(&self) -> Vec<Uuid> {
        self.live.iter().map(|e| *e.key()).collect()
    }

    /// Start driving a stored `pending` task.
    pub fn start(self: &Arc<Self>, task: Task) {
        self.start_begun(task, None);
    }

    /// Submit `insert` (a new task's first append) and, when the task's
    /// agent has a free slot now, take it and queue the task's `planning`
    /// and `running` transitions with it, in one commit. Returns the
    /// insert's receipt, and the started task for [`Engine::start_begun`]
    /// (`None` when it has to wait for a slot: its driver will). `ack` is
    /// pushed when the insert is stored.
    pub async fn submit(
        &self,
        task: &Task,
        insert: Append,
        ack: Option<Ack>,
    ) -> Result<(Receipt, Option<Begun>)> {
        let slot = self
            .agents
            .get(&task.agent_type)
            .and_then(|r| r.slots.try_acquire());
        let Some(slot) = slot else {
            return Ok((self.writer.queue_acked(insert, ack).await?, None));
        };
        let mut appends = vec![insert];
        appends.extend(start_appends(&task.into(), &task.agent_type)?);
        let receipts = self.writer.queue_all_acked(appends, ack).await?;
        let mut receipts = receipts.into_iter();
        let insert = receipts.next().ok_or(Error::Internal)?;
        let begun = Begun {
            slot,
            receipts: receipts.collect(),
        };
        Ok((insert, Some(begun)))
    }

    /// Queue `planning` and `running`; when the first is refused
    /// (cancelled meanwhile), so is the second.
    async fn queue_start(&self, tref: &TaskRef, agent_type: &str) -> Result<Vec<Receipt>> {
        self.writer
            .queue_all(start_appends(tref, agent_type)?)
            .await
    }

    /// Start driving a stored `pending` task, perhaps already [`Engine::begin`]-ed.
    pub fn start_begun(self: &Arc<Self>, task: Task, begun: Option<Begun>) {
        let live = Arc::new(Live {
            cancel: self.shutdown.child_token(),
            answer: Mutex::new(None),
            started: AtomicBool::new(false),
            abandoned: AtomicBool::new(false),
        });
        if self.live.contains_key(&task.task_id) {
            return;
        }
        self.live.insert(task.task_id, live.clone());
        let engine = self.clone();
        self.tracker.spawn(async move {
            let id = task.task_id;
            let span = tracing::info_span!("task", task_id = %id, agent = %task.agent_type);
            let tref = TaskRef::from(&task);
            let driven = engine.clone().drive(task, live.clone(), begun);
            if let Err(e) = tracing::Instrument::instrument(driven, span).await {
                if !live.abandoned.load(Ordering::Relaxed) {
                    tracing::warn!(task_id = %id, error = %e, "the task's driver failed");
                    let believed = if live.started.load(Ordering::Relaxed) {
                        TaskState::Running
                    } else {
                        TaskState::Pending
                    };
                    engine.fail_when_stored(&tref, believed, &e).await;
                }
            }
            engine.live.remove(&id);
        });
    }

    /// Stop the agent of a task (after its terminal state was recorded).
    pub fn stop(&self, task_id: Uuid) {
        if let Some(live) = self.live.get(&task_id) {
            live.cancel.cancel();
        }
    }

    /// Stop the agent of a task another node holds now (its lease was lost
    /// and it was claimed again), recording nothing: the task is not this
    /// node's to end.
    pub fn abandon(&self, task_id: Uuid) {
        if let Some(live) = self.live.get(&task_id) {
            live.abandoned.store(true, Ordering::Relaxed);
            live.cancel.cancel();
        }
    }

    /// Hand an answer to a task waiting on this node. Returns false when no
    /// agent here is waiting for it.
    pub fn answer(&self, task_id: Uuid, answer: Answer) -> bool {
        let Some(live) = self.live.get(&task_id).map(|l| l.clone()) else {
            return false;
        };
        let sender = live.answer.lock().map(|mut a| a.take()).unwrap_or(None);
        sender.is_some_and(|tx| tx.send(answer).is_ok())
    }

    /// Start draining: from now on, tasks waiting for an agent slot on this
    /// node give up instead of starting (see [`Engine::take_handed_back`]).
    pub fn begin_drain(&self) {
        self.draining.cancel();
    }

    /// Whether the node is draining (it claims no new work).
    pub fn is_draining(&self) -> bool {
        self.draining.is_cancelled()
    }

    /// The tasks given up since the last call, with their agent: still
    /// `pending` and claimed by this node in the store, for the caller to
    /// release.
    pub fn take_handed_back(&self) -> Vec<(Uuid, String)> {
        self.handed_back
            .lock()
            .map(|mut h| std::mem::take(&mut *h))
            .unwrap_or_default()
    }

    /// Record why the drivers are about to be stopped, for the failures of
    /// their tasks (the first reason set stays).
    pub fn set_stop_reason(&self, reason: String) {
        let _ = self.stop_reason.set(reason);
    }

    /// Wait until every driver has finished (after `shutdown` fired).
    pub async fn wait(&self) {
        self.tracker.close();
        self.tracker.wait().await;
    }

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

    async fn drive(
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
            None => {
                // Queue in `pending` until the agent has a free slot; the
                // queue serves users round-robin (see `agent::fair`).
                let slot = tokio::select! {
                    biased;
                    _ = live.cancel.cancelled() => return self.after_stop(&tref, TaskState::Pending, &live).await,
                    _ = self.draining.cancelled() => {
                        // Not started: another node runs it (the caller of
                        // `take_handed_back` releases the claim).
                        if let Ok(mut h) = self.handed_back.lock() {
                            h.push((task.task_id, task.agent_type.clone()));
                        }
                        return Ok(());
                    }
                    slot = registered.slots.acquire(&task.user_id) => slot,
                };
                let receipts = self.queue_start(&tref, &task.agent_type).await?;
                Begun { slot, receipts }
            }
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
                        &tref,
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
                self.fail(&tref, TaskState::Running, &reason).await?;
            }
            Ok(Err(AgentError::Stopped)) => {
                return self.after_stop(&tref, TaskState::Running, &live).await;
            }
            Err(_panic) => {
                tracing::error!("agent panicked");
                self.fail(&tref, TaskState::Running, "the agent crashed")
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
    async fn fail_when_stored(&self, task: &TaskRef, believed: TaskState, error: &Error) {
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

/// What a terminal transition records besides the state.
#[derive(Debug, Default, Clone)]
pub struct Outcome {
    /// The result, when completing.
    pub result: Option<String>,
    /// The error, when failing or cancelling.
    pub error: Option<String>,
}

impl Outcome {
    /// A completion result.
    pub fn result(r: impl Into<String>) -> Self {
        Outcome {
            result: Some(r.into()),
            error: None,
        }
    }

    /// A failure or cancellation reason.
    pub fn error(e: impl Into<String>) -> Self {
        Outcome {
            result: None,
            error: Some(e.into()),
        }
    }
}

/// A task whose agent slot is taken and whose first transitions are queued.
pub struct Begun {
    slot: crate::agent::fair::Permit,
    receipts: Vec<Receipt>,
}

/// The engine's [`TaskIo`] for one running task.
struct DriverIo {
    engine: Arc<Engine>,
    task: TaskRef,
    live: Arc<Live>,
    /// Output chunks on their way to the store.
    pipe: Arc<Pipe>,
}

#[async_trait]
impl TaskIo for DriverIo {
    async fn output(&self, chunk: String) -> Result<(), Stopped> {
        let append = Append {
            session_id: self.task.session_id,
            task_id: self.task.task_id,
            at: now(),
            body: EventBody::Output(OutputChunk { chunk }),
            change: TaskChange::Require(TaskState::Running),
            audit: Vec::new(),
        };
        // Not waiting for the commit: the writer keeps the order, and the
        // transition that ends the task queues behind every chunk. A chunk
        // refused (the task moved on) or lost stops the pipe.
        self.engine.writer.pipeline(append, &self.pipe).await
    }

    async fn wait(&self, message: String) -> Result<Answer, Stopped> {
        let (tx, rx) = oneshot::channel();
        if let Ok(mut slot) = self.live.answer.lock() {
            *slot = Some(tx);
        }
        // The person answering should see every chunk before the question.
        self.pipe.drained().await;
        match self
            .engine
            .transition(
                &self.task,
                TaskState::Running,
                TaskEvent::Wait,
                message,
                Outcome::default(),
                Vec::new(),
            )
            .await
        {
            Ok(Ok(_)) => {}
            _ => return Err(Stopped),
        }
        rx.await.map_err(|_| Stopped)
    }
}

/// The appends of `planning` and `running`.
fn start_appends(tref: &TaskRef, agent_type: &str) -> Result<Vec<Append>> {
    let steps = [
        (TaskState::Pending, TaskEvent::Plan, "planning", None),
        (
            TaskState::Planning,
            TaskEvent::Run,
            "running",
            Some(kind::TASK_STARTED),
        ),
    ];
    let mut appends = Vec::with_capacity(steps.len());
    for (from, event, message, audit_kind) in steps {
        let audit = audit_kind
            .map(|k| {
                NewAudit::by(None, k, "start")
                    .for_user(&tref.user_id)
                    .resource("task", tref.task_id)
                    .session(tref.session_id)
                    .detail("agent_type", agent_type)
            })
            .into_iter()
            .collect();
        appends.push(transition_append(
            tref,
            from,
            event,
            message,
            Outcome::default(),
            audit,
        )?);
    }
    Ok(appends)
}

/// The append that records one state change of `task`, if it is still in
/// `from`.
fn transition_append(
    task: &TaskRef,
    from: TaskState,
    event: TaskEvent,
    message: impl Into<String>,
    outcome: Outcome,
    audit: Vec<NewAudit>,
) -> Result<Append> {
    let to = from.apply(event)?;
    let at = now();
    let execution_time = to
        .is_terminal()
        .then(|| (at - task.created_at).num_microseconds().unwrap_or(0) as f64 / 1e6);
    Ok(Append {
        session_id: task.session_id,
        task_id: task.task_id,
        at,
        body: EventBody::State(StateChange {
            state: to,
            prev_state: Some(from),
            message: message.into(),
            agent_type: None,
        }),
        change: TaskChange::Transition(Transition {
            from,
            to,
            result: outcome.result,
            error: outcome.error,
            execution_time,
        }),
        audit,
    })
}

/// Metadata every new task carries.
pub fn task_metadata(node_id: &str, agent_kind: &serde_json::Value) -> serde_json::Value {
    json!({ "node_id": node_id, "agent_kind": agent_kind })
}
