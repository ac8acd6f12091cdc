//! The engine: drives each task through the state machine by running its
//! agent, and records every transition and output chunk as a stored event.
//!
//! Transitions are compare-and-set in the store (see
//! [`crate::store::TaskChange::Transition`]), so the engine, a user cancelling
//! and a user approving can race without ever applying a transition the
//! state machine forbids: the loser is told the task's current state.

mod append;
mod drive;
mod io;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use dashmap::DashMap;
use serde_json::json;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::agent::{AgentRegistry, Answer};
use crate::error::{Error, Result};
use crate::store::writer::{Ack, Receipt};
use crate::store::{Append, EventWriter};
use crate::task::{Task, TaskState};

use append::start_appends;

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

/// Metadata every new task carries.
pub fn task_metadata(node_id: &str, agent_kind: &serde_json::Value) -> serde_json::Value {
    json!({ "node_id": node_id, "agent_kind": agent_kind })
}
