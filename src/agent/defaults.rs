//! The original service's agent names, listed on every node: `claude`,
//! `auggie`, `ollama`, `opendevin` and `goose`. Each is unavailable, with
//! the reason in `metadata.reason`, until the config file defines it or the
//! environment makes the obvious one work:
//!
//! - `ANTHROPIC_API_KEY` makes `claude` an `anthropic` agent
//!   (`ANTHROPIC_MODEL`, `ANTHROPIC_BASE_URL` optional);
//! - `OPENAI_API_KEY` makes `auggie` an `openai` agent (`OPENAI_MODEL`,
//!   `OPENAI_BASE_URL` optional);
//! - an Ollama server answering at `OLLAMA_HOST` (default
//!   `127.0.0.1:11434`) makes `ollama` an `ollama` agent (`OLLAMA_MODEL`).

use std::sync::Arc;

use crate::agent::http::{DEFAULT_RETRY_BASE, HttpAgent, HttpSettings};
use crate::agent::{Agent, Unavailable, anthropic, ollama, openai};
use crate::config::Secret;

/// The model of the default `auggie` unless `OPENAI_MODEL` names one.
pub const OPENAI_DEFAULT_MODEL: &str = "gpt-4o-mini";
/// The OpenAI API unless `OPENAI_BASE_URL` names another server.
pub const OPENAI_DEFAULT_BASE: &str = "https://api.openai.com/v1";

fn caps(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

fn settings(base_url: String, model: String, key: Option<String>) -> HttpSettings {
    HttpSettings {
        base_url: base_url.trim_end_matches('/').to_owned(),
        model,
        key: key.map(Secret::new),
        max_tokens: None,
        retry_base: DEFAULT_RETRY_BASE,
    }
}

/// The default agents for this environment; `ollama` is the probe's outcome
/// (`None`: the config defines `ollama`, so it was not probed).
pub fn agents(
    env: &dyn Fn(&str) -> Option<String>,
    ollama: Option<(String, bool)>,
) -> Vec<Arc<dyn Agent>> {
    let code = caps(&["code_generation", "code_analysis", "general"]);
    let mut out = vec![claude(env, &code), auggie(env, &code)];
    if let Some((url, up)) = ollama {
        out.push(local_ollama(env, url, up));
    }
    for (name, desc, example) in [
        (
            "opendevin",
            "OpenDevin",
            "kind = \"command\" with its CLI, or kind = \"openai\" with its server",
        ),
        (
            "goose",
            "Goose",
            "kind = \"command\", command = [\"goose\", \"run\", \"-t\", \"{prompt}\"]",
        ),
    ] {
        out.push(Arc::new(Unavailable::named(
            name,
            desc,
            &code,
            "command",
            format!("not configured: define `{name}` in the config file ({example})"),
        )));
    }
    out
}

/// `claude`: the Messages API when `ANTHROPIC_API_KEY` is set.
fn claude(env: &dyn Fn(&str) -> Option<String>, code: &[String]) -> Arc<dyn Agent> {
    let desc = "Claude (Anthropic Messages API, or the Claude Code CLI when configured)";
    match env("ANTHROPIC_API_KEY") {
        Some(key) => {
            let s = settings(
                env("ANTHROPIC_BASE_URL").unwrap_or_else(|| anthropic::DEFAULT_BASE_URL.into()),
                env("ANTHROPIC_MODEL").unwrap_or_else(|| anthropic::DEFAULT_MODEL.into()),
                Some(key),
            );
            let wire = anthropic::Anthropic::new(&s.base_url, &s.model, None);
            Arc::new(HttpAgent::new("claude", desc, code, wire, s))
        }
        None => Arc::new(Unavailable::named(
            "claude",
            desc,
            code,
            "anthropic",
            "not configured: set ANTHROPIC_API_KEY, or define `claude` in the config file \
             (e.g. kind = \"command\", command = [\"claude\", \"-p\", \"{prompt}\"])"
                .into(),
        )),
    }
}

/// `auggie`: an OpenAI-compatible server when `OPENAI_API_KEY` is set.
fn auggie(env: &dyn Fn(&str) -> Option<String>, code: &[String]) -> Arc<dyn Agent> {
    let desc = "Auggie (an OpenAI-compatible chat model)";
    match env("OPENAI_API_KEY") {
        Some(key) => {
            let s = settings(
                env("OPENAI_BASE_URL").unwrap_or_else(|| OPENAI_DEFAULT_BASE.into()),
                env("OPENAI_MODEL").unwrap_or_else(|| OPENAI_DEFAULT_MODEL.into()),
                Some(key),
            );
            let wire = openai::OpenAi::new(&s.base_url, &s.model, None);
            Arc::new(HttpAgent::new("auggie", desc, code, wire, s))
        }
        None => Arc::new(Unavailable::named(
            "auggie",
            desc,
            code,
            "openai",
            "not configured: set OPENAI_API_KEY, or define `auggie` in the config file".into(),
        )),
    }
}

/// `ollama`: the Ollama server at `url`, when it answered the probe (`up`).
fn local_ollama(env: &dyn Fn(&str) -> Option<String>, url: String, up: bool) -> Arc<dyn Agent> {
    let desc = "Local models through Ollama";
    let general = caps(&["general", "code_generation"]);
    if up {
        let model = env("OLLAMA_MODEL").unwrap_or_else(|| ollama::DEFAULT_MODEL.into());
        let s = settings(url, model, None);
        let wire = ollama::Ollama::new(&s.base_url, &s.model);
        Arc::new(HttpAgent::new("ollama", desc, &general, wire, s))
    } else {
        Arc::new(Unavailable::named(
            "ollama",
            desc,
            &general,
            "ollama",
            format!(
                "no Ollama server answered at {url} within {} ms at startup; start one, \
                 set OLLAMA_HOST, or define `ollama` in the config file",
                super::OLLAMA_PROBE_TIMEOUT.as_millis()
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Without keys everything but a probed Ollama is unavailable, with a
    /// reason; keys make `claude` and `auggie` available.
    #[test]
    fn environment_makes_defaults_available() {
        let none = |_: &str| None;
        let list = agents(&none, Some(("http://127.0.0.1:9".into(), false)));
        let names: Vec<_> = list.iter().map(|a| a.info().agent_type).collect();
        assert_eq!(names, ["claude", "auggie", "ollama", "opendevin", "goose"]);
        for a in &list {
            let info = a.info();
            assert!(!info.available, "{info:?}");
            assert!(info.metadata["reason"].as_str().unwrap().len() > 10);
        }
        let keys = |k: &str| {
            ["ANTHROPIC_API_KEY", "OPENAI_API_KEY"]
                .contains(&k)
                .then(|| "k".to_owned())
        };
        let list = agents(&keys, Some(("http://127.0.0.1:11434".into(), true)));
        let available: Vec<_> = list
            .iter()
            .map(|a| a.info())
            .filter(|i| i.available)
            .map(|i| {
                (
                    i.agent_type,
                    i.metadata["kind"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        assert_eq!(
            available,
            [
                ("claude".to_owned(), "anthropic".to_owned()),
                ("auggie".to_owned(), "openai".to_owned()),
                ("ollama".to_owned(), "ollama".to_owned())
            ]
        );
    }
}
