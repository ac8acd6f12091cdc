//! The built-in `echo` agent: streams the prompt back and completes with it.
//!
//! Params: `delay_ms` (pause before each chunk, default 0), `chunk_size`
//! (characters per chunk, default 16), `fail` (end `failed`), `wait` (enter
//! `waiting` once; go on when approved, fail when denied).

use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::agent::{Agent, AgentError, AgentInfo, Context, Job};

/// Longest pause accepted per chunk.
const MAX_DELAY_MS: u64 = 60_000;
/// Largest chunk accepted.
const MAX_CHUNK: usize = 1 << 20;

/// The echo agent, under its own name or one from the config.
pub struct Echo {
    info: AgentInfo,
}

impl Default for Echo {
    fn default() -> Self {
        Echo {
            info: AgentInfo {
                agent_type: "echo".into(),
                name: "Echo".into(),
                description: "Streams the prompt back; for trying the node out and for tests"
                    .into(),
                available: true,
                capabilities: vec!["echo".into()],
                metadata: json!({"kind": "echo", "builtin": true}),
            },
        }
    }
}

impl Echo {
    /// An echo agent configured under another name.
    pub fn named(name: &str, description: &str, capabilities: &[String]) -> Self {
        Echo {
            info: AgentInfo::configured(
                name,
                description,
                capabilities,
                json!({"kind": "echo", "builtin": false}),
            ),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    #[serde(default)]
    delay_ms: u64,
    #[serde(default = "default_chunk")]
    chunk_size: usize,
    #[serde(default)]
    fail: bool,
    #[serde(default)]
    wait: bool,
    /// Accepted for every agent (issue: per-task timeouts); echo ignores it.
    #[serde(default)]
    #[expect(dead_code, reason = "accepted so that generic clients can send it")]
    timeout_ms: Option<u64>,
}

fn default_chunk() -> usize {
    16
}

fn parse(params: &Value) -> Result<Params, String> {
    let p: Params = if params.is_null() {
        serde_json::from_value(json!({}))
    } else {
        serde_json::from_value(params.clone())
    }
    .map_err(|e| format!("bad echo params: {e}"))?;
    if p.chunk_size == 0 || p.chunk_size > MAX_CHUNK {
        return Err(format!("chunk_size must be 1 to {MAX_CHUNK}"));
    }
    if p.delay_ms > MAX_DELAY_MS {
        return Err(format!("delay_ms must be at most {MAX_DELAY_MS}"));
    }
    Ok(p)
}

#[async_trait]
impl Agent for Echo {
    fn info(&self) -> AgentInfo {
        self.info.clone()
    }

    fn validate(&self, params: &Value) -> Result<(), String> {
        parse(params).map(|_| ())
    }

    async fn run(&self, job: Job, ctx: Context) -> Result<String, AgentError> {
        let p = parse(&job.params).map_err(AgentError::Failed)?;
        if p.wait {
            let answer = ctx.wait("echo is waiting for approval").await?;
            if !answer.approve {
                return Err(AgentError::Failed("denied".into()));
            }
        }
        for piece in chunks(&job.prompt, p.chunk_size) {
            if p.delay_ms > 0 {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(p.delay_ms)) => {}
                    _ = ctx.cancelled() => return Err(AgentError::Stopped),
                }
            }
            ctx.output(piece).await?;
        }
        if p.fail {
            return Err(AgentError::Failed(
                "echo was asked to fail (params.fail = true)".into(),
            ));
        }
        Ok(job.prompt)
    }
}

/// `text` in pieces of `size` characters, without copying it first.
fn chunks(text: &str, size: usize) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let end = rest.char_indices().nth(size).map_or(rest.len(), |(i, _)| i);
        let (piece, tail) = rest.split_at(end);
        rest = tail;
        Some(piece)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pieces have `size` characters (not bytes) and cover the text.
    #[test]
    fn chunks_split_on_characters() {
        assert_eq!(
            chunks("abcdefg", 3).collect::<Vec<_>>(),
            ["abc", "def", "g"]
        );
        assert_eq!(chunks("ééé", 2).collect::<Vec<_>>(), ["éé", "é"]);
        assert_eq!(chunks("", 2).count(), 0);
    }

    /// Params are checked and defaulted.
    #[test]
    fn params_are_validated() {
        assert!(parse(&Value::Null).is_ok());
        assert_eq!(parse(&json!({})).unwrap().chunk_size, 16);
        assert!(parse(&json!({"chunk_size": 0})).is_err());
        assert!(parse(&json!({"delay_ms": -1})).is_err());
        assert!(parse(&json!({"delay_ms": 999_999})).is_err());
        assert!(parse(&json!({"bogus": 1})).is_err());
        assert!(parse(&json!("text")).is_err());
    }
}
