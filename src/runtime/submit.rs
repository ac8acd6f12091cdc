//! Submitting a task: checks, per-user limits, the stored insert and the
//! start of its driver (here, or on the node that claims it).

use std::sync::Arc;

use serde_json::{Value, json};

use crate::agent::Registered;
use crate::audit::{AuditStatus, NewAudit, kind};
use crate::auth::Principal;
use crate::error::{Error, Result};
use crate::event::{EventBody, StateChange};
use crate::protocol::{SubmitRequest, TaskView};
use crate::rbac::Action;
use crate::runtime::Runtime;
use crate::store::{Append, Rejected, TaskChange};
use crate::task::engine::task_metadata;
use crate::task::{Task, TaskState};

/// Where a submit over a WebSocket is acknowledged: the committer pushes
/// the reply into the connection's inbox as it stores the task, so that it
/// leaves with the task's first events ([`crate::store::writer::Ack`]).
pub struct AckTo {
    /// The connection's inbox.
    pub inbox: Arc<crate::bus::Inbox>,
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
        mut req: SubmitRequest,
        ack_to: Option<AckTo>,
    ) -> Result<Option<TaskView>> {
        self.authorize(p, Action::TaskSubmit).await?;
        self.check_prompt(&req.prompt)?;
        if let Some(key) = &req.idempotency_key {
            if let Some(first) = self.first_with_key(p, key).await? {
                return Ok(Some(first));
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
        let params = submit_params(req.params.take(), local.as_deref())?;
        // Submitting into someone else's session is never allowed, not even
        // for admins: it would write to their stream. The store checks that
        // the session is active and the caller's as it stores the task
        // (`Rejected::NoSession`), which saves a read per submit.
        let session_id = match req.session_id {
            Some(id) => id,
            None => self.default_session(p).await?.session_id,
        };
        let mut metadata = task_metadata(
            &self.node_id,
            info.metadata.get("kind").unwrap_or(&Value::Null),
        );
        if let Some(skill) = &skill {
            metadata["skill"] = json!(skill);
        }
        let task = Task {
            context: req.context.unwrap_or_else(|| json!({})),
            params,
            metadata,
            idempotency_key: req.idempotency_key,
            ..Task::pending(session_id, &p.user_id, &agent_type, req.prompt)
        };
        self.store_submitted(p, task, local.is_some(), ack_to).await
    }

    /// Refuse a prompt past the configured size.
    fn check_prompt(&self, prompt: &str) -> Result<()> {
        if prompt.len() > self.limits.max_prompt_bytes {
            return Err(Error::PayloadTooLarge(format!(
                "the prompt is {} bytes; at most {} are accepted",
                prompt.len(),
                self.limits.max_prompt_bytes
            )));
        }
        Ok(())
    }

    /// The task `p` already submitted with idempotency `key`, if any (a key
    /// of the wrong length is a `bad_request`).
    async fn first_with_key(&self, p: &Principal, key: &str) -> Result<Option<TaskView>> {
        if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY {
            return Err(Error::BadRequest(format!(
                "idempotency_key must be 1 to {MAX_IDEMPOTENCY_KEY} characters"
            )));
        }
        let first = self.store.task_by_idempotency_key(&p.user_id, key).await?;
        Ok(first.map(|t| (&t).into()))
    }

    /// Store a new pending `task` and start it. When the agent is here
    /// (`agent_here`), the driver starts now: its first transitions go with
    /// the task's insert and share its commit (on a cluster the insert is
    /// stored claimed by this node). If the insert is refused, so are they:
    /// the task does not exist. A draining node starts nothing.
    async fn store_submitted(
        &self,
        p: &Principal,
        task: Task,
        agent_here: bool,
        ack_to: Option<AckTo>,
    ) -> Result<Option<TaskView>> {
        let append = submitted(p, &task);
        let here = agent_here && !self.engine.is_draining();
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
                    self.start_or_hand_over(task, agent_here).await;
                }
                Ok((!acked).then_some(view))
            }
            Err(rejected) => self.refused_submit(p, &task, rejected).await.map(Some),
        }
    }

    /// The answer to a submit whose insert the store refused: the first
    /// task of a repeated idempotency key (stored meanwhile by a concurrent
    /// submit), or the error saying why.
    async fn refused_submit(
        &self,
        p: &Principal,
        task: &Task,
        rejected: Rejected,
    ) -> Result<TaskView> {
        match rejected {
            Rejected::Duplicate => {
                let key = task.idempotency_key.as_deref().unwrap_or_default();
                let first = self.store.task_by_idempotency_key(&p.user_id, key).await?;
                first.map(|t| (&t).into()).ok_or(Error::Internal)
            }
            Rejected::NoSession => Err(Error::not_found(format!(
                "active session {}",
                task.session_id
            ))),
            other => Err(Error::internal(format!("submit refused: {other}"))),
        }
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
        let Some((retry_after, why)) = self.over_limit(p).await? else {
            return Ok(());
        };
        metrics::counter!("switchboard_rate_limited_total", "what" => "submit").increment(1);
        let record = NewAudit::by(Some(p), kind::RATE_LIMITED, "submit")
            .status(AuditStatus::Denied)
            .detail("reason", &why);
        self.audit_or_warn(record, "a rate limit").await;
        Err(Error::RateLimited {
            message: format!("slow down: {why}"),
            retry_after,
        })
    }

    /// The per-user limit a submit of `p` would break now, if any: when to
    /// retry (seconds) and which limit.
    async fn over_limit(&self, p: &Principal) -> Result<Option<(u64, String)>> {
        if let Err(retry_after) = self.throttle.submit(&p.user_id) {
            let why = format!(
                "at most {} submits a minute",
                self.security.submits_per_minute
            );
            return Ok(Some((retry_after, why)));
        }
        let max = self.security.max_active_tasks_per_user;
        if self.store.count_active_tasks(&p.user_id).await? >= max {
            return Ok(Some((
                1,
                format!("at most {max} unfinished tasks per user"),
            )));
        }
        Ok(None)
    }
}

/// A submit's `params` (an empty object when absent), which must be a JSON
/// object the agent accepts when it runs here (`local`).
fn submit_params(params: Option<Value>, local: Option<&Registered>) -> Result<Value> {
    let params = params.unwrap_or_else(|| json!({}));
    if !params.is_object() {
        return Err(Error::BadRequest("params must be a JSON object".into()));
    }
    if let Some(registered) = local {
        registered
            .agent
            .validate(&params)
            .map_err(Error::BadRequest)?;
    }
    Ok(params)
}

/// The stored insert of a submitted `task`: its `pending` event and its
/// `task.submitted` audit record.
fn submitted(p: &Principal, task: &Task) -> Append {
    let audit = NewAudit::by(Some(p), kind::TASK_SUBMITTED, "submit")
        .resource("task", task.task_id)
        .session(task.session_id)
        .detail("agent_type", &task.agent_type);
    Append {
        session_id: task.session_id,
        task_id: task.task_id,
        at: task.created_at,
        body: EventBody::State(StateChange {
            state: TaskState::Pending,
            prev_state: None,
            message: "submitted".into(),
            agent_type: Some(task.agent_type.clone()),
        }),
        change: TaskChange::Insert(Box::new(task.clone())),
        audit: vec![audit],
    }
}
