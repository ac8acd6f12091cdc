//! Building an agent from its config entry, and the stand-in for one this
//! node cannot run.

use std::sync::Arc;

use async_trait::async_trait;

use super::{Agent, AgentError, AgentInfo, Context, Job, anthropic, command, echo, ollama, openai};

/// An agent of a kind this build runs, from its config entry, or the reason
/// it cannot run here.
pub(super) fn build_agent(a: &crate::config::AgentConfig) -> Result<Arc<dyn Agent>, String> {
    use super::http::{HttpAgent, HttpSettings};
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
                available: false,
                ..AgentInfo::configured(
                    name,
                    description,
                    capabilities,
                    serde_json::json!({"kind": kind, "reason": reason}),
                )
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
