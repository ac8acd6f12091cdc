//! Task operations after submit: read, list, cancel, respond.

use uuid::Uuid;

use crate::agent::Answer;
use crate::audit::{NewAudit, kind};
use crate::auth::Principal;
use crate::error::{Error, Result};
use crate::protocol::{CancelReply, RespondRequest, TaskDetail, TaskView};
use crate::rbac::{Action, Permission};
use crate::runtime::Runtime;
use crate::store::{Rejected, Signal, TaskFilter};
use crate::task::engine::Outcome;
use crate::task::{Task, TaskEvent, TaskState};

/// Filters of a task listing (REST query or `task.list` fields).
#[derive(Debug, Clone, Default)]
pub struct TaskQuery {
    pub session_id: Option<Uuid>,
    pub state: Option<String>,
    pub agent_type: Option<String>,
    pub limit: Option<i64>,
    pub after: Option<Uuid>,
}

impl Runtime {
    /// A task's state.
    pub async fn task_state(&self, p: &Principal, id: Uuid) -> Result<TaskView> {
        self.authorize(p, Action::TaskView).await?;
        Ok((&self.visible_task(p, id).await?).into())
    }

    /// A task's state and its events.
    pub async fn task_detail(&self, p: &Principal, id: Uuid) -> Result<TaskDetail> {
        self.authorize(p, Action::TaskView).await?;
        let task = self.visible_task(p, id).await?;
        let events = self.store.task_events(id).await?;
        Ok(TaskDetail {
            task: (&task).into(),
            prompt: task.prompt.clone(),
            events: events.iter().map(Into::into).collect(),
        })
    }

    /// Tasks, newest first: the caller's, or everyone's with `admin:system`.
    pub async fn list_tasks(&self, p: &Principal, q: TaskQuery) -> Result<Vec<TaskView>> {
        self.authorize(p, Action::TaskView).await?;
        let before = match q.after {
            Some(id) => {
                let t = self.visible_task(p, id).await.map_err(|_| {
                    Error::BadRequest(format!("`after` names no task of yours: {id}"))
                })?;
                Some((t.created_at, t.task_id))
            }
            None => None,
        };
        let filter = TaskFilter {
            user_id: (!p.sees_all()).then(|| p.user_id.clone()),
            session_id: q.session_id,
            state: parse_state(q.state.as_deref())?,
            agent_type: q.agent_type,
            before,
            limit: self.page_limit(q.limit, 50)?,
        };
        Ok(self
            .store
            .list_tasks(&filter)
            .await?
            .iter()
            .map(Into::into)
            .collect())
    }

    /// Cancel a task: it ends `cancelled` and its agent stops.
    pub async fn cancel(&self, p: &Principal, id: Uuid) -> Result<CancelReply> {
        self.authorize(p, Action::TaskCancel).await?;
        let task = self.visible_task(p, id).await?;
        self.cancel_task(p, &task, &format!("cancelled by {}", p.user_id))
            .await?;
        metrics::counter!("switchboard_tasks_cancelled_total").increment(1);
        Ok(CancelReply {
            success: true,
            task_id: id,
            state: TaskState::Cancelled,
        })
    }

    /// Answer a waiting task: approve lets it run on, deny fails it. Who may
    /// answer: the task's owner, or a holder of `admin:users`.
    pub async fn respond(&self, p: &Principal, id: Uuid, req: RespondRequest) -> Result<TaskView> {
        self.authorize(p, Action::TaskRespond).await?;
        let task = self.visible_task(p, id).await?;
        if task.user_id != p.user_id && !p.permissions.contains(&Permission::AdminUsers) {
            return Err(self
                .deny(
                    p,
                    Action::TaskRespond,
                    "only the task's owner or an admin:users holder may answer",
                )
                .await);
        }
        if task.state != TaskState::Waiting {
            return Err(Error::InvalidTransition(format!(
                "task {id} is {} and only a waiting task takes an answer",
                task.state
            )));
        }
        self.answer_waiting(p, &task, req).await?;
        Ok((&self.visible_task(p, id).await?).into())
    }

    /// Record `p`'s answer to waiting `task` (resumed, or failed on a
    /// deny) and hand it to the task's driver, here or on its node.
    async fn answer_waiting(&self, p: &Principal, task: &Task, req: RespondRequest) -> Result<()> {
        let id = task.task_id;
        let verb = if req.approve { "approved" } else { "denied" };
        let message = format!("{verb} by {}", p.user_id);
        let audit = vec![
            NewAudit::by(Some(p), kind::TASK_RESPONDED, "respond")
                .resource("task", id)
                .session(task.session_id)
                .detail("approve", req.approve),
        ];
        let (event, outcome) = if req.approve {
            (TaskEvent::Resume, Outcome::default())
        } else {
            (TaskEvent::Fail, Outcome::error(message.clone()))
        };
        let tref = task.into();
        let done = self
            .engine
            .transition(&tref, TaskState::Waiting, event, message, outcome, audit)
            .await?;
        if let Err(Rejected::StateIs(now)) = done {
            return Err(Error::InvalidTransition(format!(
                "task {id} is {now} and only a waiting task takes an answer"
            )));
        }
        let answer = Answer {
            approve: req.approve,
            input: req.input,
        };
        if !self.engine.answer(id, answer.clone()) {
            // The task runs on another node: its engine answers it.
            let signal = Signal::Answer {
                task_id: id,
                approve: answer.approve,
                input: answer.input,
            };
            self.signal_nodes(id, &signal, "the answer to the task's node")
                .await;
        }
        if !req.approve {
            self.stop_everywhere(id).await;
        }
        Ok(())
    }

    /// Tell every node to stop a task's agent (it runs on one of them).
    async fn stop_everywhere(&self, task_id: Uuid) {
        self.engine.stop(task_id);
        self.signal_nodes(
            task_id,
            &Signal::Stop { task_id },
            "the task's node to stop it",
        )
        .await;
    }

    /// On a cluster, signal every node about `task_id`; a failure is
    /// logged (`what` says what was signalled to whom).
    async fn signal_nodes(&self, task_id: Uuid, signal: &Signal, what: &str) {
        if let Some(cluster) = self.store.cluster() {
            if let Err(e) = cluster.signal(signal).await {
                tracing::warn!(error = %e, %task_id, "could not signal {what}");
            }
        }
    }

    /// A task the principal may see, or `not_found`.
    async fn visible_task(&self, p: &Principal, id: Uuid) -> Result<Task> {
        match self.store.get_task(id).await? {
            Some(t) if p.can_see(&t.user_id) => Ok(t),
            _ => Err(Error::not_found(format!("task {id}"))),
        }
    }

    /// Cancel `task` as `p` (already authorized), following concurrent
    /// changes. `invalid_transition` once it is terminal.
    pub(super) async fn cancel_task(&self, p: &Principal, task: &Task, reason: &str) -> Result<()> {
        let tref = task.into();
        let mut from = task.state;
        for _ in 0..4 {
            if from.is_terminal() {
                return Err(Error::InvalidTransition(format!(
                    "task {} is already {from} and cannot be cancelled",
                    task.task_id
                )));
            }
            let audit = vec![
                NewAudit::by(Some(p), kind::TASK_CANCELLED, "cancel")
                    .resource("task", task.task_id)
                    .session(task.session_id)
                    .detail("owner", &task.user_id),
            ];
            let outcome = Outcome::error(reason);
            match self
                .engine
                .transition(&tref, from, TaskEvent::Cancel, reason, outcome, audit)
                .await?
            {
                Ok(_) => {
                    self.stop_everywhere(task.task_id).await;
                    return Ok(());
                }
                Err(Rejected::StateIs(now)) => from = now,
                Err(_) => return Err(Error::not_found(format!("task {}", task.task_id))),
            }
        }
        Err(Error::Conflict(
            "the task kept changing state; try again".into(),
        ))
    }
}

/// Parse a `state` filter.
fn parse_state(s: Option<&str>) -> Result<Option<TaskState>> {
    s.filter(|s| !s.is_empty())
        .map(|s| s.parse::<TaskState>().map_err(Error::BadRequest))
        .transpose()
}
