//! Task operations: submit, read, list, cancel, respond.

use serde_json::{Value, json};
use uuid::Uuid;

use crate::agent::Answer;
use crate::audit::{NewAudit, kind};
use crate::auth::Principal;
use crate::error::{Error, Result};
use crate::event::{EventBody, StateChange, now};
use crate::protocol::{CancelReply, RespondRequest, SubmitRequest, TaskDetail, TaskView};
use crate::rbac::{Action, Permission};
use crate::runtime::{Runtime, parse_state};
use crate::store::{Append, Rejected, TaskChange, TaskFilter};
use crate::task::engine::{Outcome, task_metadata};
use crate::task::{Task, TaskEvent, TaskState};

/// Whether `p` holds one of the agent's `allowed_roles` (or it has none).
fn role_allows(r: &crate::agent::Registered, p: &Principal) -> bool {
    r.allowed_roles
        .as_ref()
        .is_none_or(|allowed| p.roles.iter().any(|role| allowed.contains(role)))
}

/// Where a submit over a WebSocket is acknowledged: the committer pushes
/// the reply into the connection's inbox as it stores the task, so that it
/// leaves with the task's first events ([`crate::store::writer::Ack`]).
pub struct AckTo {
    /// The connection's inbox.
    pub inbox: std::sync::Arc<crate::bus::Inbox>,
    /// The request's id.
    pub id: crate::protocol::ws::FrameId,
}

impl AckTo {
    fn ack(self, view: &TaskView) -> crate::store::writer::Ack {
        crate::store::writer::Ack {
            inbox: self.inbox,
            frame: crate::protocol::ws::reply_ok(&self.id, view),
        }
    }
}

/// Longest idempotency key accepted.
const MAX_IDEMPOTENCY_KEY: usize = 255;

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
    /// Submit a task. With an `idempotency_key` the caller already used, the
    /// first task is returned instead of a new one.
    pub async fn submit(&self, p: &Principal, req: SubmitRequest) -> Result<TaskView> {
        self.submit_acked(p, req, None)
            .await?
            .ok_or(Error::Internal)
    }

    /// [`Runtime::submit`], acknowledged through `ack_to` when given: the
    /// committer pushes the reply as it stores the task, and this returns
    /// `None`. (A repeated idempotency key is answered here, with the first
    /// task.)
    pub async fn submit_acked(
        &self,
        p: &Principal,
        req: SubmitRequest,
        ack_to: Option<AckTo>,
    ) -> Result<Option<TaskView>> {
        self.authorize(p, Action::TaskSubmit).await?;
        if req.prompt.len() > self.limits.max_prompt_bytes {
            return Err(Error::PayloadTooLarge(format!(
                "the prompt is {} bytes; at most {} are accepted",
                req.prompt.len(),
                self.limits.max_prompt_bytes
            )));
        }
        if let Some(key) = &req.idempotency_key {
            if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY {
                return Err(Error::BadRequest(format!(
                    "idempotency_key must be 1 to {MAX_IDEMPOTENCY_KEY} characters"
                )));
            }
            if let Some(first) = self.store.task_by_idempotency_key(&p.user_id, key).await? {
                return Ok(Some((&first).into()));
            }
        }
        let (agent_type, skill) = self.choose_agent(p, &req).await?;
        self.admit(p).await?;
        // Unavailable here means it runs on another node (choose_agent checked).
        let local = self.engine.agents().get(&agent_type);
        let local = local.filter(|r| r.agent.info().available);
        let info = match &local {
            Some(registered) => registered.agent.info(),
            None => self.remote_agent(&agent_type).await?,
        };
        let params = req.params.unwrap_or_else(|| json!({}));
        if !params.is_object() {
            return Err(Error::BadRequest("params must be a JSON object".into()));
        }
        if let Some(registered) = &local {
            registered
                .agent
                .validate(&params)
                .map_err(Error::BadRequest)?;
        }
        // Submitting into someone else's session is never allowed, not even
        // for admins: it would write to their stream. The store checks that
        // the session is active and the caller's as it stores the task
        // (`Rejected::NoSession`), which saves a read per submit.
        let session_id = match req.session_id {
            Some(id) => id,
            None => self.default_session(p).await?.session_id,
        };
        let at = now();
        let task = Task {
            task_id: Uuid::now_v7(),
            execution_uuid: Uuid::new_v4(),
            session_id,
            user_id: p.user_id.clone(),
            agent_type: agent_type.clone(),
            prompt: req.prompt,
            context: req.context.unwrap_or_else(|| json!({})),
            params,
            state: TaskState::Pending,
            result: None,
            error: None,
            metadata: {
                let mut m = task_metadata(
                    &self.node_id,
                    info.metadata.get("kind").unwrap_or(&Value::Null),
                );
                if let Some(skill) = &skill {
                    m["skill"] = json!(skill);
                }
                m
            },
            idempotency_key: req.idempotency_key.clone(),
            created_at: at,
            updated_at: at,
            execution_time: None,
        };
        let audit = NewAudit::by(Some(p), kind::TASK_SUBMITTED, "submit")
            .resource("task", task.task_id)
            .session(task.session_id)
            .detail("agent_type", &task.agent_type);
        let append = Append {
            session_id: task.session_id,
            task_id: task.task_id,
            at,
            body: EventBody::State(StateChange {
                state: TaskState::Pending,
                prev_state: None,
                message: "submitted".into(),
                agent_type: Some(task.agent_type.clone()),
            }),
            change: TaskChange::Insert(Box::new(task.clone())),
            audit: vec![audit],
        };
        // When the agent is here, the driver starts now: its first
        // transitions go with the task's insert and share its commit (on a
        // cluster the insert is stored claimed by this node). If the insert
        // is refused, so are they: the task does not exist. A draining node
        // starts nothing.
        let here = local.is_some() && !self.engine.is_draining();
        let view: TaskView = (&task).into();
        let acked = ack_to.is_some();
        let ack = ack_to.map(|to| to.ack(&view));
        let (receipt, begun) = if here {
            self.engine.submit(&task, append, ack).await?
        } else {
            (self.engine.writer().queue_acked(append, ack).await?, None)
        };
        let started = begun.is_some() || (here && self.store.cluster().is_none());
        if started {
            self.engine.start_begun(task.clone(), begun);
        }
        match receipt.wait().await? {
            Ok(_) => {
                metrics::counter!("switchboard_tasks_submitted_total").increment(1);
                if !started {
                    self.start_or_hand_over(task, local.is_some()).await;
                }
                Ok((!acked).then_some(view))
            }
            Err(Rejected::Duplicate) => {
                let key = req.idempotency_key.unwrap_or_default();
                let first = self.store.task_by_idempotency_key(&p.user_id, &key).await?;
                first.map(|t| Some((&t).into())).ok_or(Error::Internal)
            }
            Err(Rejected::NoSession) => {
                Err(Error::not_found(format!("active session {session_id}")))
            }
            Err(other) => Err(Error::internal(format!("submit refused: {other}"))),
        }
    }

    /// An agent another live node runs, for a submit on this node.
    async fn remote_agent(&self, agent_type: &str) -> Result<crate::agent::AgentInfo> {
        let unknown = || {
            Error::UnknownAgent(format!(
                "there is no agent `{agent_type}`; GET /api/runtime/agents lists them"
            ))
        };
        let Some(cluster) = self.store.cluster() else {
            return Err(unknown());
        };
        let live = cluster.live_agents(self.lease()).await?;
        let mut found: Vec<_> = live
            .into_iter()
            .filter(|a| a.info.agent_type == agent_type || a.info.metadata["address"] == agent_type)
            .map(|a| a.info)
            .collect();
        found.sort_by_key(|a| !a.available);
        found.into_iter().next().ok_or_else(unknown)
    }

    /// On a cluster, an agent of another live node (a hosted one included)
    /// that provides `skill` and can run now: declared for it, or listing it
    /// among its capabilities. Its own checks run on that node.
    async fn remote_provider(&self, skill: &crate::agent::Skill) -> Result<Option<String>> {
        let Some(cluster) = self.store.cluster() else {
            return Ok(None);
        };
        let live = cluster.live_agents(self.lease()).await?;
        Ok(live
            .into_iter()
            .map(|a| a.info)
            .find(|a| {
                a.available
                    && (skill.agents.contains(&a.agent_type)
                        || a.capabilities.contains(&skill.skill_id))
            })
            .map(|a| a.agent_type))
    }

    /// A stored pending task: run it here, or (with a shared store and the
    /// agent elsewhere) leave it for the node that claims it.
    async fn start_or_hand_over(&self, task: Task, agent_here: bool) {
        let Some(cluster) = self.store.cluster() else {
            self.engine.start(task);
            return;
        };
        if !agent_here || self.engine.is_draining() {
            return; // the insert's NOTIFY wakes the nodes that have it
        }
        match cluster
            .claim_task(task.task_id, &self.node_id, self.lease())
            .await
        {
            Ok(true) => self.engine.start(task),
            Ok(false) => {} // another node with the agent claimed it first
            Err(e) => {
                // Stored but not claimed: any node's poll picks it up.
                tracing::warn!(error = %e, task_id = %task.task_id, "could not claim a submitted task");
            }
        }
    }

    /// Per-user limits on submits: a rate, and a ceiling on unfinished tasks.
    async fn admit(&self, p: &Principal) -> Result<()> {
        let refused = if let Err(retry_after) = self.throttle.submit(&p.user_id) {
            Some((
                retry_after,
                format!(
                    "at most {} submits a minute",
                    self.security.submits_per_minute
                ),
            ))
        } else if self.store.count_active_tasks(&p.user_id).await?
            >= self.security.max_active_tasks_per_user
        {
            Some((
                1,
                format!(
                    "at most {} unfinished tasks per user",
                    self.security.max_active_tasks_per_user
                ),
            ))
        } else {
            None
        };
        let Some((retry_after, why)) = refused else {
            return Ok(());
        };
        metrics::counter!("switchboard_rate_limited_total", "what" => "submit").increment(1);
        let record = NewAudit::by(Some(p), kind::RATE_LIMITED, "submit")
            .status(crate::audit::AuditStatus::Denied)
            .detail("reason", &why);
        if let Err(e) = self.store.audit(vec![record]).await {
            tracing::warn!(error = %e, "could not audit a rate limit");
        }
        Err(Error::RateLimited {
            message: format!("slow down: {why}"),
            retry_after,
        })
    }

    /// The agent a submit runs on, and the skill it came through: checks
    /// that exactly one of `agent_type` and `skill` is given, the skill's
    /// `required_permissions`, the agent's availability and its
    /// `allowed_roles` (admins are not exempt: an agent restricted to
    /// `["developer"]` refuses an admin who is not also a developer).
    async fn choose_agent(
        &self,
        p: &Principal,
        req: &SubmitRequest,
    ) -> Result<(String, Option<String>)> {
        let agents = self.engine.agents();
        let (name, skill) = match (&req.agent_type, &req.skill) {
            (Some(a), None) => (a.clone(), None),
            (None, Some(id)) => {
                let skill = agents.skill(id).ok_or_else(|| {
                    Error::BadRequest(format!(
                        "there is no skill `{id}`; GET /api/runtime/skills lists them"
                    ))
                })?;
                if let Some(missing) = skill
                    .required_permissions
                    .iter()
                    .find(|perm| !p.permissions.contains(perm))
                {
                    return Err(self
                        .deny(
                            p,
                            Action::TaskSubmit,
                            &format!("skill `{id}` needs the permission {missing}"),
                        )
                        .await);
                }
                let available = agents.available_providers(skill);
                // The least busy provider the caller may use: fewest running
                // plus queued. When the caller's roles allow none, the first
                // available one is taken so that the role check below
                // answers (and audits) `forbidden`.
                let best = available
                    .iter()
                    .filter(|a| agents.get(a).is_some_and(|r| role_allows(&r, p)))
                    .min_by_key(|a| {
                        let (running, queued) =
                            agents.get(a).map(|r| r.slots.load()).unwrap_or_default();
                        running + queued
                    })
                    .or(available.first())
                    .cloned();
                let best = match best {
                    Some(a) => Some(a),
                    None => self.remote_provider(skill).await?,
                };
                match best {
                    Some(a) => (a, Some(id.clone())),
                    None => {
                        return Err(Error::UnknownAgent(format!(
                            "no agent that provides skill `{id}` can run now{}",
                            if skill.agents.is_empty() {
                                String::new()
                            } else {
                                format!(" (providers: {})", skill.agents.join(", "))
                            }
                        )));
                    }
                }
            }
            (Some(_), Some(_)) => {
                return Err(Error::BadRequest(
                    "give either agent_type or skill, not both".into(),
                ));
            }
            (None, None) => {
                return Err(Error::BadRequest(
                    "agent_type (or skill) is required".into(),
                ));
            }
        };
        let here = agents.get(&name);
        let runs_here = here.as_ref().is_some_and(|r| r.agent.info().available);
        if !runs_here && self.store.cluster().is_some() {
            if let Ok(info) = self.remote_agent(&name).await {
                if info.available {
                    return Ok((name, skill)); // another node runs it
                }
            }
        }
        let Some(registered) = here else {
            // Not here: another live node of the cluster may have it (its
            // own checks run there); `remote_agent` says why when none does.
            let info = self.remote_agent(&name).await?;
            if !info.available {
                return Err(Error::UnknownAgent(format!(
                    "agent `{name}` cannot run now"
                )));
            }
            return Ok((name, skill));
        };
        let info = registered.agent.info();
        if !info.available {
            let reason = info
                .metadata
                .get("reason")
                .and_then(Value::as_str)
                .unwrap_or("it is not available");
            return Err(Error::UnknownAgent(format!(
                "agent `{name}` cannot run: {reason}"
            )));
        }
        if !role_allows(&registered, p) {
            let roles: Vec<&str> = registered
                .allowed_roles
                .iter()
                .flatten()
                .map(|r| r.as_str())
                .collect();
            return Err(self
                .deny(
                    p,
                    Action::TaskSubmit,
                    &format!("agent `{name}` is for the roles {}", roles.join(", ")),
                )
                .await);
        }
        Ok((name, skill))
    }

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
        let done = self
            .engine
            .transition(
                &(&task).into(),
                TaskState::Waiting,
                event,
                message,
                outcome,
                audit,
            )
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
            if let Some(cluster) = self.store.cluster() {
                // The task runs on another node: its engine answers it.
                let signal = crate::store::Signal::Answer {
                    task_id: id,
                    approve: answer.approve,
                    input: answer.input,
                };
                if let Err(e) = cluster.signal(&signal).await {
                    tracing::warn!(error = %e, task_id = %id, "could not signal the answer to the task's node");
                }
            }
        }
        if !req.approve {
            self.stop_everywhere(id).await;
        }
        Ok((&self.visible_task(p, id).await?).into())
    }
}
