//! Which agent a submit runs on: the named one or a skill's least busy
//! provider, here or on another live node, and whether the caller may use
//! it.

use serde_json::Value;

use crate::agent::{AgentInfo, AgentRegistry, Registered, Skill};
use crate::auth::Principal;
use crate::error::{Error, Result};
use crate::protocol::SubmitRequest;
use crate::rbac::Action;
use crate::runtime::Runtime;

impl Runtime {
    /// The agent a submit runs on, and the skill it came through: checks
    /// that exactly one of `agent_type` and `skill` is given, the skill's
    /// `required_permissions`, the agent's availability and its
    /// `allowed_roles` (admins are not exempt: an agent restricted to
    /// `["developer"]` refuses an admin who is not also a developer).
    pub(super) async fn choose_agent(
        &self,
        p: &Principal,
        req: &SubmitRequest,
    ) -> Result<(String, Option<String>)> {
        let (name, skill) = match (&req.agent_type, &req.skill) {
            (Some(a), None) => (a.clone(), None),
            (None, Some(id)) => (self.skill_provider(p, id).await?, Some(id.clone())),
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
        self.check_agent(p, &name).await?;
        Ok((name, skill))
    }

    /// The agent a submit through skill `id` runs on: this node's least
    /// busy provider, else one of another live node. Checks the skill's
    /// `required_permissions`.
    async fn skill_provider(&self, p: &Principal, id: &str) -> Result<String> {
        let agents = self.engine.agents();
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
            let why = format!("skill `{id}` needs the permission {missing}");
            return Err(self.deny(p, Action::TaskSubmit, &why).await);
        }
        let best = match least_busy(agents, skill, p) {
            Some(a) => Some(a),
            None => self.remote_provider(skill).await?,
        };
        best.ok_or_else(|| {
            let providers = if skill.agents.is_empty() {
                String::new()
            } else {
                format!(" (providers: {})", skill.agents.join(", "))
            };
            Error::UnknownAgent(format!(
                "no agent that provides skill `{id}` can run now{providers}"
            ))
        })
    }

    /// Check that agent `name` can run (here or on another live node) and,
    /// when it is this node's, that `p` holds one of its `allowed_roles`.
    async fn check_agent(&self, p: &Principal, name: &str) -> Result<()> {
        let here = self.engine.agents().get(name);
        let runs_here = here.as_ref().is_some_and(|r| r.agent.info().available);
        if !runs_here && self.store.cluster().is_some() {
            if let Ok(info) = self.remote_agent(name).await {
                if info.available {
                    return Ok(()); // another node runs it
                }
            }
        }
        let Some(registered) = here else {
            // Not here: another live node of the cluster may have it (its
            // own checks run there); `remote_agent` says why when none does.
            let info = self.remote_agent(name).await?;
            if !info.available {
                return Err(Error::UnknownAgent(format!(
                    "agent `{name}` cannot run now"
                )));
            }
            return Ok(());
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
            let why = format!("agent `{name}` is for the roles {}", roles.join(", "));
            return Err(self.deny(p, Action::TaskSubmit, &why).await);
        }
        Ok(())
    }

    /// An agent another live node runs, for a submit on this node.
    pub(super) async fn remote_agent(&self, agent_type: &str) -> Result<AgentInfo> {
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
            .filter(|a| a.info.answers_to(agent_type))
            .map(|a| a.info)
            .collect();
        found.sort_by_key(|a| !a.available);
        found.into_iter().next().ok_or_else(unknown)
    }

    /// On a cluster, an agent of another live node (a hosted one included)
    /// that provides `skill` and can run now: declared for it, or listing it
    /// among its capabilities. Its own checks run on that node.
    async fn remote_provider(&self, skill: &Skill) -> Result<Option<String>> {
        let Some(cluster) = self.store.cluster() else {
            return Ok(None);
        };
        let live = cluster.live_agents(self.lease()).await?;
        Ok(live
            .into_iter()
            .map(|a| a.info)
            .find(|a| a.available && skill.offered_by(a))
            .map(|a| a.agent_type))
    }
}

/// The least busy provider of `skill` here that `p` may use: fewest
/// running plus queued. When the caller's roles allow none, the first
/// available one is taken so that the role check answers (and audits)
/// `forbidden`.
fn least_busy(agents: &AgentRegistry, skill: &Skill, p: &Principal) -> Option<String> {
    let available = agents.available_providers(skill);
    available
        .iter()
        .filter(|a| agents.get(a).is_some_and(|r| role_allows(&r, p)))
        .min_by_key(|a| {
            let (running, queued) = agents.get(a).map(|r| r.slots.load()).unwrap_or_default();
            running + queued
        })
        .or(available.first())
        .cloned()
}

/// Whether `p` holds one of the agent's `allowed_roles` (or it has none).
fn role_allows(r: &Registered, p: &Principal) -> bool {
    r.allowed_roles
        .as_ref()
        .is_none_or(|allowed| p.roles.iter().any(|role| allowed.contains(role)))
}
