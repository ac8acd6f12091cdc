//! The registry of the agents this node can run, and the skills they
//! provide.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use serde_json::Value;

use super::build::{Unavailable, build_agent};
use super::{Agent, AgentInfo, FairQueue, Registered, defaults, echo, gate, ollama};
use crate::rbac::Permission;

/// A skill from the config, resolved against the agents.
#[derive(Debug, Clone)]
pub struct Skill {
    /// What a submit's `skill` names.
    pub skill_id: String,
    /// A display name.
    pub name: String,
    /// What it does.
    pub description: String,
    /// Permissions a submit through it needs.
    pub required_permissions: Vec<Permission>,
    /// The agents providing it: those the skill names, then those that list
    /// it in their capabilities.
    pub agents: Vec<String>,
}

impl Skill {
    /// Whether the agent `info` provides this skill: the skill names it, or
    /// it lists the skill among its capabilities.
    pub fn offered_by(&self, info: &AgentInfo) -> bool {
        self.agents.contains(&info.agent_type) || info.capabilities.contains(&self.skill_id)
    }

    /// Add to `names` each agent of `infos` that provides this skill and is
    /// not there yet, in order.
    pub fn add_providers<'a>(
        &self,
        names: &mut Vec<String>,
        infos: impl IntoIterator<Item = &'a AgentInfo>,
    ) {
        for info in infos {
            if self.offered_by(info) && !names.contains(&info.agent_type) {
                names.push(info.agent_type.clone());
            }
        }
    }
}

/// Agents that come and go while the node runs (those of linked remote
/// hosts, see [`crate::link`]), consulted by [`AgentRegistry`] after its
/// own.
pub trait AgentSource: Send + Sync {
    /// Every agent's listing now.
    fn list(&self) -> Vec<AgentInfo>;
    /// The agent a submit to `name` runs on now, if this source has one.
    fn get(&self, name: &str) -> Option<Arc<Registered>>;
    /// Names this source can run now besides the listed `agent_type`s
    /// (such as `agent@host`), for claiming work on a cluster.
    fn addresses(&self) -> Vec<String> {
        Vec::new()
    }
}

/// The agents of this node, by `agent_type`, and the skills they provide.
///
/// The configured agents are fixed at start; an [`AgentSource`] attached
/// with [`AgentRegistry::attach`] adds agents that come and go. A name
/// resolves to the node's own agent when it can run, else to the source's,
/// else to the node's own (unavailable) one.
pub struct AgentRegistry {
    agents: BTreeMap<String, Arc<Registered>>,
    skills: Vec<Skill>,
    extra: OnceLock<Arc<dyn AgentSource>>,
}

/// Default concurrency per agent when the config does not say.
pub const DEFAULT_MAX_CONCURRENT: usize = 64;
/// How long startup waits for an Ollama server to answer.
pub const OLLAMA_PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(800);

impl AgentRegistry {
    /// The built-in agents only.
    pub fn builtin() -> Self {
        let mut r = AgentRegistry {
            agents: BTreeMap::new(),
            skills: Vec::new(),
            extra: OnceLock::new(),
        };
        r.add(Arc::new(echo::Echo::default()), DEFAULT_MAX_CONCURRENT);
        r
    }

    /// The agents of a node with this config file and the process
    /// environment: `echo`, the original's agent names (made available by
    /// `ANTHROPIC_API_KEY`, `OPENAI_API_KEY` or an Ollama server answering
    /// at `OLLAMA_HOST`), then the configured agents, which replace
    /// defaults of the same name.
    pub async fn from_config(file: &crate::config::FileConfig) -> Self {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let configured = |n: &str| file.agents.iter().any(|a| a.name == n);
        let ollama = if configured("ollama") {
            None
        } else {
            let url = ollama::host_url(
                env("OLLAMA_HOST")
                    .as_deref()
                    .unwrap_or(ollama::DEFAULT_HOST),
            );
            let up = ollama::probe(&url, OLLAMA_PROBE_TIMEOUT).await;
            Some((url, up))
        };
        Self::build(file, &env, ollama)
    }

    /// [`AgentRegistry::from_config`] with the environment and the Ollama
    /// probe's outcome given (`(url, answered)`), for tests.
    pub fn build(
        file: &crate::config::FileConfig,
        env: &dyn Fn(&str) -> Option<String>,
        ollama: Option<(String, bool)>,
    ) -> Self {
        let mut r = Self::builtin();
        for agent in defaults::agents(env, ollama) {
            r.add(agent, DEFAULT_MAX_CONCURRENT);
        }
        for a in &file.agents {
            let agent: Arc<dyn Agent> = match build_agent(a) {
                Ok(agent) => agent,
                Err(reason) => {
                    tracing::warn!(agent = %a.name, %reason, "agent unavailable");
                    Arc::new(Unavailable::new(a, reason))
                }
            };
            let gated = Arc::new(
                gate::Gated::new(agent, a.approval, a.timeout_ms)
                    .rerun_on_node_loss(a.rerun_on_node_loss),
            );
            let allowed_roles = a
                .allowed_roles
                .as_ref()
                .map(|roles| roles.iter().filter_map(|r| r.parse().ok()).collect());
            r.agents.insert(
                a.name.clone(),
                Arc::new(Registered {
                    agent: gated,
                    slots: FairQueue::new(a.max_concurrent.unwrap_or(DEFAULT_MAX_CONCURRENT)),
                    allowed_roles,
                }),
            );
        }
        r.skills = file
            .skills
            .iter()
            .map(|s| resolve_skill(s, &r.agents))
            .collect();
        r
    }

    /// Add (or replace) an agent with no approval, timeout or role rule.
    pub fn add(&mut self, agent: Arc<dyn Agent>, max_concurrent: usize) {
        let name = agent.info().agent_type;
        self.agents.insert(
            name,
            Arc::new(Registered {
                agent: Arc::new(gate::Gated::new(agent, false, None)),
                slots: FairQueue::new(max_concurrent),
                allowed_roles: None,
            }),
        );
    }

    /// Attach the source of agents that come and go (once; later calls are
    /// ignored).
    pub fn attach(&self, source: Arc<dyn AgentSource>) {
        let _ = self.extra.set(source);
    }

    /// The agent a submit to `agent_type` runs on: this node's own when it
    /// can run, else one of the attached source's, else this node's own
    /// unavailable one.
    pub fn get(&self, agent_type: &str) -> Option<Arc<Registered>> {
        let own = self.agents.get(agent_type);
        if own.is_some_and(|r| r.agent.info().available) {
            return own.cloned();
        }
        self.extra
            .get()
            .and_then(|s| s.get(agent_type))
            .or_else(|| own.cloned())
    }

    /// Names of agents that can run now, the source's addresses included.
    pub fn runnable_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .list()
            .into_iter()
            .filter(|a| a.available)
            .map(|a| a.agent_type)
            .collect();
        if let Some(s) = self.extra.get() {
            names.extend(s.addresses());
        }
        names.sort();
        names.dedup();
        names
    }

    /// Every agent's listing: this node's own, then the source's.
    pub fn list(&self) -> Vec<AgentInfo> {
        let mut out = self.own_list();
        if let Some(s) = self.extra.get() {
            out.extend(s.list());
        }
        out
    }

    fn own_list(&self) -> Vec<AgentInfo> {
        self.agents
            .iter()
            .map(|(name, r)| {
                let mut info = r.agent.info();
                if let Value::Object(m) = &mut info.metadata {
                    let (running, queued) = r.slots.load();
                    m.insert("max_concurrent".into(), r.slots.max().into());
                    m.insert("running".into(), running.into());
                    m.insert("queued".into(), queued.into());
                    if let Some(roles) = &r.allowed_roles {
                        m.insert("allowed_roles".into(), serde_json::json!(roles));
                    }
                }
                debug_assert_eq!(&info.agent_type, name);
                info
            })
            .collect()
    }

    /// The configured skills.
    pub fn skills(&self) -> &[Skill] {
        &self.skills
    }

    /// One skill.
    pub fn skill(&self, skill_id: &str) -> Option<&Skill> {
        self.skills.iter().find(|s| s.skill_id == skill_id)
    }

    /// The providers of `skill`: those resolved at start, then agents of
    /// the attached source that list it in their capabilities.
    pub fn providers(&self, skill: &Skill) -> Vec<String> {
        let mut agents = skill.agents.clone();
        if let Some(s) = self.extra.get() {
            skill.add_providers(&mut agents, &s.list());
        }
        agents
    }

    /// The providers of `skill` that can run now.
    pub fn available_providers(&self, skill: &Skill) -> Vec<String> {
        self.providers(skill)
            .into_iter()
            .filter(|a| self.get(a).is_some_and(|r| r.agent.info().available))
            .collect()
    }

    /// The providers of `skill` ([`AgentRegistry::providers`]) and those
    /// that can run now, each with the agents of `others` (such as other
    /// nodes' live ones) that provide it.
    pub fn providers_with(
        &self,
        skill: &Skill,
        others: &[AgentInfo],
    ) -> (Vec<String>, Vec<String>) {
        let (mut all, mut available) = (self.providers(skill), self.available_providers(skill));
        skill.add_providers(&mut all, others);
        skill.add_providers(&mut available, others.iter().filter(|a| a.available));
        (all, available)
    }
}

/// A configured skill, with the agents providing it: those it names, then
/// those listing it in their capabilities.
fn resolve_skill(s: &crate::config::SkillConfig, all: &BTreeMap<String, Arc<Registered>>) -> Skill {
    let mut skill = Skill {
        skill_id: s.skill_id.clone(),
        name: s.name.clone(),
        description: s.description.clone(),
        required_permissions: s
            .required_permissions
            .iter()
            .filter_map(|p| p.parse().ok())
            .collect(),
        agents: s.agents.clone(),
    };
    let infos: Vec<AgentInfo> = all.values().map(|r| r.agent.info()).collect();
    let mut agents = skill.agents.clone();
    skill.add_providers(&mut agents, &infos);
    skill.agents = agents;
    skill
}
