//! The runtime: every operation of the node, behind every transport.
//!
//! Each method takes an authenticated [`Principal`], checks the permission
//! through [`Runtime::authorize`] (the one place where that happens), reads
//! or writes the store (with the audit record in the same transaction) and
//! lets the store publish. REST handlers, the WebSocket dispatcher and SSE
//! only decode, call one method here, and encode.

mod admin;
pub mod audit;
pub mod cluster;
pub mod devices;
mod drain;
mod failover;
pub mod hosts;
mod projects;
pub mod retention;
mod sessions;
mod storage;
mod tasks;
pub mod tokens;

use std::sync::Arc;

use serde_json::json;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::agent::AgentRegistry;
use crate::audit::{AuditStatus, NewAudit, kind};
use crate::auth::{Principal, User, hash_token, new_token};
use crate::bus::Bus;
use crate::config::{Config, Limits};
use crate::error::{Error, Result};
use crate::event::now;
use crate::presence::Presence;
use crate::protocol::SkillView;
use crate::protocol::UserView;
use crate::rbac::{Action, Role};
use crate::session::{Session, SessionState};
use crate::store::{EventWriter, Store};
use crate::task::engine::Engine;
use crate::task::{Task, TaskEvent, TaskState};

pub use tasks::{AckTo, TaskQuery};

/// The operations layer. Cheap to share behind an `Arc`.
pub struct Runtime {
    /// Where everything is kept.
    store: Arc<dyn Store>,
    /// Live fan-out on this node.
    bus: Arc<Bus>,
    /// Runs tasks.
    engine: Arc<Engine>,
    /// Who is connected.
    presence: Presence,
    /// Limits in force.
    limits: Limits,
    /// This node.
    node_id: String,
    /// The audit checkpoint key and file, for verification.
    checkpoints: Option<crate::audit::checkpoint::CheckpointConfig>,
    /// Device trust and abuse limits.
    security: crate::config::SecurityConfig,
    /// Rate limiters.
    throttle: crate::throttle::Throttle,
    /// Recently resolved tokens.
    tokens: tokens::TokenCache,
    /// Remote agent hosts linked to this node; their agents are in the
    /// engine's registry through it.
    hosts: Arc<crate::link::Hosts>,
    /// `[link]`: remote agent hosts.
    link: crate::config::LinkConfig,
    /// `[retention]` and the pruner's last run.
    pruner: retention::Pruner,
}

impl Runtime {
    /// Build the runtime over an opened store. `checkpoints` are the audit
    /// key and file resolved at start (for verification); `shutdown` stops
    /// the engine's drivers; the writer runs until `writer_stop` fires.
    pub fn new(
        config: &Config,
        store: Arc<dyn Store>,
        bus: Arc<Bus>,
        writer: EventWriter,
        agents: AgentRegistry,
        checkpoints: Option<crate::audit::checkpoint::CheckpointConfig>,
        shutdown: CancellationToken,
    ) -> Self {
        let grace = std::time::Duration::from_millis(config.file.link.grace_ms);
        let hosts = crate::link::Hosts::new(&config.node_id, grace);
        agents.attach(hosts.clone());
        let runtime = Runtime {
            hosts,
            link: config.file.link.clone(),
            engine: Engine::new(writer, Arc::new(agents), shutdown),
            store,
            bus,
            presence: Presence::new(),
            limits: config.limits().clone(),
            node_id: config.node_id.clone(),
            checkpoints,
            security: config.file.security.clone(),
            throttle: crate::throttle::Throttle::new(&config.file.security),
            tokens: tokens::TokenCache::default(),
            pruner: retention::Pruner::new(config.file.retention.clone()),
        };
        if let Some(cluster) = runtime.store.cluster() {
            cluster.claim_own_starts(&runtime.node_id, runtime.lease());
        }
        runtime
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The bus.
    pub fn bus(&self) -> &Arc<Bus> {
        &self.bus
    }

    /// The engine.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// Who is connected.
    pub fn presence(&self) -> &Presence {
        &self.presence
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Device trust and abuse limits.
    pub fn security(&self) -> &crate::config::SecurityConfig {
        &self.security
    }

    /// Rate limiters.
    pub fn throttle(&self) -> &crate::throttle::Throttle {
        &self.throttle
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Resolve a bearer token. A bad one is audited as `auth.failed` with
    /// the peer address.
    pub async fn authenticate(
        &self,
        token: Option<&str>,
        peer: Option<String>,
    ) -> Result<Principal> {
        Ok(self.authenticate_until(token, peer).await?.0)
    }

    /// [`Runtime::authenticate`], with when the token expires (`None`:
    /// never), from the same lookup.
    pub async fn authenticate_until(
        &self,
        token: Option<&str>,
        peer: Option<String>,
    ) -> Result<(Principal, Option<chrono::DateTime<chrono::Utc>>)> {
        let ip = peer
            .as_deref()
            .and_then(|p| p.parse::<std::net::SocketAddr>().ok())
            .map(|a| a.ip());
        if let Err(retry_after) = self.throttle.auth_allowed(ip) {
            metrics::counter!("switchboard_rate_limited_total", "what" => "auth").increment(1);
            return Err(Error::RateLimited {
                message: "too many failed authentications from this address; try again later"
                    .into(),
                retry_after,
            });
        }
        let Some(token) = token.map(str::trim).filter(|t| !t.is_empty()) else {
            return Err(Error::Unauthorized("a bearer token is required".into()));
        };
        match self.resolve_token(token).await? {
            Some((user, expires_at)) => {
                let mut p = Principal::of(&user);
                p.peer = peer;
                Ok((p, expires_at))
            }
            None => {
                self.throttle.auth_failed(ip);
                metrics::counter!("switchboard_auth_failures_total").increment(1);
                let record = NewAudit::by(None, kind::AUTH_FAILED, "authenticate")
                    .status(AuditStatus::Failure)
                    .detail("peer", peer.as_deref().unwrap_or("unknown"))
                    .detail("reason", "unknown, expired or revoked token");
                if let Err(e) = self.store.audit(vec![record]).await {
                    tracing::warn!(error = %e, "could not audit a failed authentication");
                }
                Err(Error::Unauthorized(
                    "the token is unknown, expired or revoked".into(),
                ))
            }
        }
    }

    /// The user of a live token and its expiry, from the cache or the store.
    async fn resolve_token(
        &self,
        token: &str,
    ) -> Result<Option<(User, Option<chrono::DateTime<chrono::Utc>>)>> {
        let hash = hash_token(token);
        if let Some(hit) = self.tokens.get(&hash) {
            return Ok(Some(hit));
        }
        let Some((user, expires_at)) = self.store.token_owner(&hash, now()).await? else {
            return Ok(None);
        };
        self.tokens.put(&hash, &user, expires_at);
        Ok(Some((user, expires_at)))
    }

    /// The one permission check. A denial is audited as `permission.denied`.
    pub async fn authorize(&self, p: &Principal, action: Action) -> Result<()> {
        match action.missing(&p.permissions) {
            None => Ok(()),
            Some(missing) => Err(self
                .deny(p, action, &format!("missing permission {missing}"))
                .await),
        }
    }

    /// Record a denial and return the `forbidden` error for it.
    async fn deny(&self, p: &Principal, action: Action, why: &str) -> Error {
        metrics::counter!("switchboard_denied_total", "action" => action.as_str()).increment(1);
        let record = NewAudit::by(Some(p), kind::PERMISSION_DENIED, action.as_str())
            .status(AuditStatus::Denied)
            .detail("reason", why);
        if let Err(e) = self.store.audit(vec![record]).await {
            tracing::warn!(error = %e, "could not audit a denial");
        }
        Error::Forbidden(format!("{} is not allowed: {why}", action.as_str()))
    }

    /// `GET /api/me`.
    pub async fn me(&self, p: &Principal) -> Result<UserView> {
        self.authorize(p, Action::WhoAmI).await?;
        Ok(UserView {
            user_id: p.user_id.clone(),
            roles: p.roles.clone(),
            permissions: p.permissions.clone(),
            grants: Default::default(),
            revokes: Default::default(),
        })
    }

    /// Agents this node can run.
    pub async fn agents(&self, p: &Principal) -> Result<Vec<crate::agent::AgentInfo>> {
        self.authorize(p, Action::AgentList).await?;
        match self.store.cluster() {
            Some(cluster) => self.cluster_agents(cluster).await,
            None => Ok(self.engine.agents().list()),
        }
    }

    /// Skills from the config, each with the agents that provide it and,
    /// in `metadata.available_agents`, those that can run now.
    pub async fn skills(&self, p: &Principal) -> Result<Vec<SkillView>> {
        self.authorize(p, Action::SkillList).await?;
        let agents = self.engine.agents();
        // On a cluster, agents of other nodes (hosted ones included) count.
        let remote = match self.store.cluster() {
            Some(c) => c.live_agents(self.lease()).await?,
            None => Vec::new(),
        };
        Ok(agents
            .skills()
            .iter()
            .map(|s| {
                let (mut all, mut available) = (agents.providers(s), agents.available_providers(s));
                for a in remote.iter().map(|a| &a.info) {
                    let provides =
                        s.agents.contains(&a.agent_type) || a.capabilities.contains(&s.skill_id);
                    if provides && !all.contains(&a.agent_type) {
                        all.push(a.agent_type.clone());
                    }
                    if provides && a.available && !available.contains(&a.agent_type) {
                        available.push(a.agent_type.clone());
                    }
                }
                SkillView {
                    skill_id: s.skill_id.clone(),
                    name: s.name.clone(),
                    description: s.description.clone(),
                    required_permissions: s
                        .required_permissions
                        .iter()
                        .map(|p| p.as_str().to_owned())
                        .collect(),
                    agents: all,
                    metadata: json!({ "available_agents": available }),
                }
            })
            .collect())
    }

    /// First start on an empty database: create `admin`. Returns the token
    /// when it was generated (so the caller can show it once).
    pub async fn bootstrap(&self, admin_token: Option<&str>) -> anyhow::Result<Option<String>> {
        if self.store.user_count().await? > 0 {
            return Ok(None);
        }
        let (token, generated) = match admin_token {
            Some(t) => (t.to_owned(), false),
            None => (new_token().0, true),
        };
        let user = User::new("admin", [Role::Admin].into(), now());
        let audit = vec![
            NewAudit::by(None, kind::USER_CREATED, "bootstrap")
                .for_user("admin")
                .resource("user", "admin")
                .detail("roles", ["admin"]),
            NewAudit::by(None, kind::TOKEN_ISSUED, "bootstrap")
                .for_user("admin")
                .resource("user", "admin"),
        ];
        match self
            .store
            .create_user(&user, &hash_token(&token), audit)
            .await
        {
            Ok(()) => Ok(generated.then_some(token)),
            // Another node sharing this empty database bootstrapped it at
            // the same moment: its admin stands.
            Err(Error::Conflict(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// After a restart: tasks that were in flight when the node died are
    /// failed with a clear reason (they are not resumed: an agent's side
    /// effects cannot be assumed repeatable).
    ///
    /// With a shared store only this node's own tasks and those whose node
    /// stopped renewing its lease are settled (see `failover`: not started
    /// ones go back to the pool, re-runnable ones start over, the rest
    /// fail); other nodes' tasks run on.
    pub async fn recover(&self) -> anyhow::Result<usize> {
        let stale: Vec<(Task, String)> = match self.store.cluster() {
            None => self
                .store
                .unfinished_tasks()
                .await?
                .into_iter()
                .map(|t| {
                    let reason = format!(
                        "the node restarted while this task was {}; it was not resumed",
                        t.state
                    );
                    (t, reason)
                })
                .collect(),
            Some(cluster) => return self.recover_cluster(cluster).await,
        };
        for (task, reason) in &stale {
            self.engine.fail(&task.into(), task.state, reason).await?;
        }
        Ok(stale.len())
    }

    /// Tell every node to stop a task's agent (it runs on one of them).
    async fn stop_everywhere(&self, task_id: Uuid) {
        self.engine.stop(task_id);
        if let Some(cluster) = self.store.cluster() {
            if let Err(e) = cluster
                .signal(&crate::store::Signal::Stop { task_id })
                .await
            {
                tracing::warn!(error = %e, %task_id, "could not signal the task's node to stop it");
            }
        }
    }

    /// A session the principal may see, or `not_found`.
    async fn visible_session(&self, p: &Principal, id: Uuid) -> Result<Session> {
        match self.store.get_session(id).await? {
            Some(s) if p.can_see(&s.user_id) => Ok(s),
            _ => Err(Error::not_found(format!("session {id}"))),
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
    async fn cancel_task(&self, p: &Principal, task: &Task, reason: &str) -> Result<()> {
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
            let outcome = crate::task::engine::Outcome::error(reason);
            match self
                .engine
                .transition(&tref, from, TaskEvent::Cancel, reason, outcome, audit)
                .await?
            {
                Ok(_) => {
                    self.stop_everywhere(task.task_id).await;
                    return Ok(());
                }
                Err(crate::store::Rejected::StateIs(now)) => from = now,
                Err(_) => return Err(Error::not_found(format!("task {}", task.task_id))),
            }
        }
        Err(Error::Conflict(
            "the task kept changing state; try again".into(),
        ))
    }
}

/// Whether a session can take new tasks.
fn is_active(s: &Session) -> bool {
    s.state == SessionState::Active
}

/// Parse a `state` filter.
fn parse_state(s: Option<&str>) -> Result<Option<TaskState>> {
    s.filter(|s| !s.is_empty())
        .map(|s| s.parse::<TaskState>().map_err(Error::BadRequest))
        .transpose()
}
