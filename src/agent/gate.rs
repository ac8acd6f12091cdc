//! The gate every agent runs behind: approval first (when the config asks
//! for it), then the run under a timeout.
//!
//! - `approval = true`: the task enters `waiting` with a message saying
//!   which agent wants to run; an approve lets it go on, a deny fails it
//!   (the runtime records the deny; see `Runtime::respond` for who may
//!   answer: the task's owner or an `admin:users` holder).
//! - The timeout is the task's `params.timeout_ms` capped by the agent's
//!   `timeout_ms`. It counts from the moment the agent starts running, so
//!   time queued in `pending` or waiting for approval does not count. Past
//!   it, the agent's future is dropped (which stops its work: a command's
//!   process group is killed, an HTTP connection is closed) and the task
//!   fails with "timed out after N ms".

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;

use crate::agent::{Agent, AgentError, AgentInfo, Context, Job};

/// An agent with its approval and timeout rules.
pub struct Gated {
    inner: Arc<dyn Agent>,
    approval: bool,
    timeout_ms: Option<u64>,
    /// `rerun_on_node_loss`, shown in `metadata` so that every node of a
    /// cluster knows it from the heartbeats.
    rerun: bool,
}

impl Gated {
    /// Gate `inner`.
    pub fn new(inner: Arc<dyn Agent>, approval: bool, timeout_ms: Option<u64>) -> Self {
        Gated {
            inner,
            approval,
            timeout_ms,
            rerun: false,
        }
    }

    /// Mark the agent re-runnable after the loss of its node.
    pub fn rerun_on_node_loss(mut self, on: bool) -> Self {
        self.rerun = on;
        self
    }

    /// The timeout of a task with these params: its own, capped by the agent's.
    pub fn effective_timeout(&self, params: &Value) -> Option<u64> {
        let own = params.get("timeout_ms").and_then(Value::as_u64);
        match (own, self.timeout_ms) {
            (Some(t), Some(cap)) => Some(t.min(cap)),
            (t, cap) => t.or(cap),
        }
    }
}

#[async_trait]
impl Agent for Gated {
    fn info(&self) -> AgentInfo {
        let mut info = self.inner.info();
        if let Value::Object(m) = &mut info.metadata {
            m.insert("approval".into(), self.approval.into());
            if let Some(t) = self.timeout_ms {
                m.insert("timeout_ms".into(), t.into());
            }
            if self.rerun {
                m.insert("rerun_on_node_loss".into(), true.into());
            }
        }
        info
    }

    fn validate(&self, params: &Value) -> Result<(), String> {
        if let Some(t) = params.get("timeout_ms") {
            if t.as_u64().is_none_or(|t| t == 0) {
                return Err(
                    "params.timeout_ms must be a positive whole number of milliseconds".into(),
                );
            }
        }
        self.inner.validate(params)
    }

    async fn run(&self, job: Job, ctx: Context) -> Result<String, AgentError> {
        if self.approval {
            let name = self.inner.info().agent_type;
            let answer = ctx
                .wait(format!(
                    "approval required: agent `{name}` will run this task; approve or deny"
                ))
                .await?;
            if !answer.approve {
                return Err(AgentError::Failed("denied".into()));
            }
        }
        match self.effective_timeout(&job.params) {
            None => self.inner.run(job, ctx).await,
            Some(ms) => {
                match tokio::time::timeout(Duration::from_millis(ms), self.inner.run(job, ctx))
                    .await
                {
                    Ok(done) => done,
                    Err(_) => Err(AgentError::Failed(format!("timed out after {ms} ms"))),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A task's own timeout is capped by the agent's.
    #[test]
    fn task_timeouts_are_capped() {
        let echo: Arc<dyn Agent> = Arc::new(crate::agent::echo::Echo::default());
        let capped = Gated::new(echo.clone(), false, Some(1000));
        assert_eq!(capped.effective_timeout(&json!({})), Some(1000));
        assert_eq!(
            capped.effective_timeout(&json!({"timeout_ms": 10})),
            Some(10)
        );
        assert_eq!(
            capped.effective_timeout(&json!({"timeout_ms": 5000})),
            Some(1000)
        );
        let free = Gated::new(echo, false, None);
        assert_eq!(free.effective_timeout(&json!({})), None);
        assert_eq!(free.effective_timeout(&json!({"timeout_ms": 7})), Some(7));
        assert!(free.validate(&json!({"timeout_ms": 0})).is_err());
        assert!(free.validate(&json!({"timeout_ms": "soon"})).is_err());
        assert!(free.validate(&json!({"timeout_ms": 5})).is_ok());
    }
}
