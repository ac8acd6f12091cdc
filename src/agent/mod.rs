//! Agents: the [`Agent`] trait every kind implements, and the registry of
//! the agents this node can run.
//!
//! An agent gets a [`Job`] and a [`Context`]: it streams output through
//! [`Context::output`], may ask for approval through [`Context::wait`], and
//! must stop promptly when [`Context::cancelled`] fires. The engine owns
//! every state transition; agents only return a result or an error.

pub mod anthropic;
pub mod coalesce;
pub mod command;
mod defaults;
pub mod echo;
pub mod fair;
pub mod gate;
pub mod health;
pub mod http;
pub mod ollama;
pub mod openai;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::rbac::{Permission, Role};
pub use fair::FairQueue;

/// How discovery lists an agent.
#[derive(
    Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema, schemars::JsonSchema,
)]
pub struct AgentInfo {
    /// What clients submit to.
    pub agent_type: String,
    /// A display name.
    pub name: String,
    /// What it does.
    pub description: String,
    /// Whether it can run now; when false, `metadata.reason` says why.
    pub available: bool,
    /// Skills it offers.
    pub capabilities: Vec<String>,
    /// Kind, reason when unavailable, and the like.
    pub metadata: Value,
}

/// What an agent is asked to do.
#[derive(Debug, Clone)]
pub struct Job {
    /// The task.
    pub task_id: Uuid,
    /// The prompt.
    pub prompt: String,
    /// The submitter's parameters, already validated by [`Agent::validate`].
    pub params: Value,
    /// The submitter's context.
    pub context: Value,
}

/// A person's answer to a waiting task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// Go on (true) or stop (false).
    pub approve: bool,
    /// Optional text for the agent.
    pub input: Option<String>,
}

/// The task cannot go on: it was cancelled, denied or the node is stopping.
/// The engine has already recorded why; the agent only has to return.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the task was stopped")]
pub struct Stopped;

/// How an agent run ends when it does not complete.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgentError {
    /// The agent failed; the message becomes the task's `error`.
    #[error("{0}")]
    Failed(String),
    /// The task was stopped from outside.
    #[error("stopped")]
    Stopped,
}

impl From<Stopped> for AgentError {
    fn from(_: Stopped) -> Self {
        AgentError::Stopped
    }
}

/// The engine's side of a running task, as agents see it.
#[async_trait]
pub trait TaskIo: Send + Sync {
    /// Store and publish one output chunk; returns when it is stored.
    async fn output(&self, chunk: String) -> Result<(), Stopped>;
    /// Enter `waiting` with `message` and return the answer once it comes.
    async fn wait(&self, message: String) -> Result<Answer, Stopped>;
}

/// Everything an agent may use while it runs.
#[derive(Clone)]
pub struct Context {
    io: Arc<dyn TaskIo>,
    cancel: CancellationToken,
}

impl Context {
    /// A context over the engine's `io` and a cancellation token.
    pub fn new(io: Arc<dyn TaskIo>, cancel: CancellationToken) -> Self {
        Context { io, cancel }
    }

    /// Send one output chunk. Waits while the store catches up.
    pub async fn output(&self, chunk: impl Into<String>) -> Result<(), Stopped> {
        if self.cancel.is_cancelled() {
            return Err(Stopped);
        }
        self.io.output(chunk.into()).await
    }

    /// Ask a person and wait for the answer (or the task being stopped).
    pub async fn wait(&self, message: impl Into<String>) -> Result<Answer, Stopped> {
        let message = message.into();
        tokio::select! {
            answer = self.io.wait(message) => answer,
            _ = self.cancel.cancelled() => Err(Stopped),
        }
    }

    /// Resolves when the task must stop: select on it around every await
    /// that can take long.
    pub async fn cancelled(&self) {
        self.cancel.cancelled().await
    }

    /// Whether the task must stop.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// The token itself, for agents that hand it to child work.
    pub fn token(&self) -> &CancellationToken {
        &self.cancel
    }
}

/// One kind of agent.
#[async_trait]
pub trait Agent: Send + Sync + 'static {
    /// How discovery lists it.
    fn info(&self) -> AgentInfo;

    /// Check a submit's params before the task is stored.
    fn validate(&self, _params: &Value) -> Result<(), String> {
        Ok(())
    }

    /// Do the work: return the result text, or why it failed. Must return
    /// promptly after the context is cancelled.
    async fn run(&self, job: Job, ctx: Context) -> Result<String, AgentError>;
}

/// An agent with the limits the node applies to it.
pub struct Registered {
    /// The agent, behind its [`gate::Gated`] (approval, timeout).
    pub agent: Arc<dyn Agent>,
    /// At most this many of its tasks run at once; the rest wait in
    /// `pending`, served round-robin across users.
    pub slots: Arc<FairQueue>,
    /// When set, only principals with one of these roles may submit to it.
    pub allowed_roles: Option<BTreeSet<Role>>,
}

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
            .map(|s| {
                let mut agents = s.agents.clone();
                for (name, reg) in &r.agents {
                    let offers = reg.agent.info().capabilities.contains(&s.skill_id);
                    if offers && !agents.contains(name) {
                        agents.push(name.clone());
                    }
                }
                Skill {
                    skill_id: s.skill_id.clone(),
                    name: s.name.clone(),
                    description: s.description.clone(),
                    required_permissions: s
                        .required_permissions
                        .iter()
                        .filter_map(|p| p.parse().ok())
                        .collect(),
                    agents,
                }
            })
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
            for info in s.list() {
                let offers = info.capabilities.contains(&skill.skill_id);
                if offers && !agents.contains(&info.agent_type) {
                    agents.push(info.agent_type);
                }
            }
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
}

/// An agent of a kind this build runs, from its config entry, or the reason
/// it cannot run here.
fn build_agent(a: &crate::config::AgentConfig) -> Result<Arc<dyn Agent>, String> {
    use self::http::{HttpAgent, HttpSettings};
    let (name, desc, caps) = (&a.name, &a.description, &a.capabilities);
    Ok(match a.kind.as_str() {
        "echo" => Arc::new(echo::Echo::named(name, desc, caps)),
        "command" => Arc::new(command::CommandAgent::new(a)?),
        "openai" => {
            let s = HttpSettings::from_config(a, None, None, None, false)?;
            let wire = openai::OpenAi::new(&s.base_url, &s.model, s.max_tokens);
            Arc::new(HttpAgent::new(name, desc, caps, wire, s))
        }
        "anthropic" => {
            let s = HttpSettings::from_config(
                a,
                Some(anthropic::DEFAULT_BASE_URL),
                Some(anthropic::DEFAULT_MODEL),
                Some("ANTHROPIC_API_KEY"),
                true,
            )?;
            let wire = anthropic::Anthropic::new(&s.base_url, &s.model, s.max_tokens);
            Arc::new(HttpAgent::new(name, desc, caps, wire, s))
        }
        "ollama" => {
            let s = HttpSettings::from_config(a, None, None, None, false)?;
            let wire = ollama::Ollama::new(&s.base_url, &s.model);
            Arc::new(HttpAgent::new(name, desc, caps, wire, s))
        }
        other => {
            return Err(format!(
                "agent kind `{other}` is not supported by this build"
            ));
        }
    })
}

/// A configured agent this node cannot run; listed with the reason.
pub struct Unavailable {
    info: AgentInfo,
}

impl Unavailable {
    /// An agent from `config` that cannot run because of `reason`.
    pub fn new(config: &crate::config::AgentConfig, reason: String) -> Self {
        Self::named(
            &config.name,
            &config.description,
            &config.capabilities,
            &config.kind,
            reason,
        )
    }

    /// An agent `name` of `kind` that cannot run because of `reason`.
    pub fn named(
        name: &str,
        description: &str,
        capabilities: &[String],
        kind: &str,
        reason: String,
    ) -> Self {
        Unavailable {
            info: AgentInfo {
                agent_type: name.to_owned(),
                name: name.to_owned(),
                description: description.to_owned(),
                available: false,
                capabilities: capabilities.to_vec(),
                metadata: serde_json::json!({"kind": kind, "reason": reason}),
            },
        }
    }
}

#[async_trait]
impl Agent for Unavailable {
    fn info(&self) -> AgentInfo {
        self.info.clone()
    }

    async fn run(&self, _job: Job, _ctx: Context) -> Result<String, AgentError> {
        let reason = self.info.metadata["reason"]
            .as_str()
            .unwrap_or("unavailable");
        Err(AgentError::Failed(reason.to_owned()))
    }
}
