//! Agents: the [`Agent`] trait every kind implements, and the registry of
//! the agents this node can run.
//!
//! An agent gets a [`Job`] and a [`Context`]: it streams output through
//! [`Context::output`], may ask for approval through [`Context::wait`], and
//! must stop promptly when [`Context::cancelled`] fires. The engine owns
//! every state transition; agents only return a result or an error.

pub mod anthropic;
mod build;
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
mod registry;

use std::collections::BTreeSet;
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::rbac::Role;
pub use build::Unavailable;
pub use fair::FairQueue;
pub use registry::{
    AgentRegistry, AgentSource, DEFAULT_MAX_CONCURRENT, OLLAMA_PROBE_TIMEOUT, Skill,
};

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

impl AgentInfo {
    /// The listing of an agent configured as `name` (its `agent_type` and
    /// display name both), available to run.
    pub fn configured(
        name: &str,
        description: &str,
        capabilities: &[String],
        metadata: Value,
    ) -> Self {
        AgentInfo {
            agent_type: name.to_owned(),
            name: name.to_owned(),
            description: description.to_owned(),
            available: true,
            capabilities: capabilities.to_vec(),
            metadata,
        }
    }

    /// Whether a submit to `name` runs on this agent: its `agent_type`, or
    /// the `agent@host` address of a hosted one (`metadata.address`).
    pub fn answers_to(&self, name: &str) -> bool {
        self.agent_type == name || self.metadata["address"] == name
    }
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
