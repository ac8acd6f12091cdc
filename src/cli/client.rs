//! The two ways the client talks to a node: [`Http`] for one-shot REST calls
//! and [`Ws`], a WebSocket connection that survives drops. Both speak TLS to
//! an `https://` node (`wss://` for the socket) with the target's rustls
//! configuration.
//!
//! Commands that need a connection but no particular session use
//! [`Ws::connect_reusing`]: one session per (node, user), remembered in the
//! config file, so that running commands does not pile up sessions.
//!
//! [`Ws`] remembers the last `seq` it delivered on every stream. When the
//! connection drops (or the node restarts, or closes 4409 because this
//! client fell behind), it reconnects with backoff, says `hello` with its
//! `session_id` and that `after_seq`, re-subscribes its other streams from
//! theirs, and carries on: the node replays what was missed, so callers see
//! every event once, in order. Events that arrive while a caller waits for a
//! reply are buffered for [`Ws::next_event`].

use std::time::Duration;

use serde_json::Value;
use uuid::Uuid;

use crate::cli::CliError;
use crate::cli::config::Target;

mod frame;
mod ws;

pub use ws::Ws;

/// Timeout of one REST request.
const HTTP_TIMEOUT: Duration = Duration::from_secs(60);

/// A REST client for one node.
pub struct Http {
    target: Target,
    client: reqwest::Client,
}

impl Http {
    /// A client for `target`.
    pub fn new(target: &Target) -> Self {
        let mut builder = reqwest::Client::builder()
            .timeout(HTTP_TIMEOUT)
            .user_agent(concat!("switchboard-cli/", env!("CARGO_PKG_VERSION")));
        if let Some(tls) = &target.tls {
            // The same trust as the socket's, `--ca-cert` included.
            builder = builder.use_preconfigured_tls((**tls).clone());
        }
        let client = builder
            .build()
            .expect("reqwest takes a rustls 0.23 ClientConfig, the version we build");
        Http {
            target: target.clone(),
            client,
        }
    }

    /// The node's base URL.
    pub fn url(&self) -> &str {
        &self.target.url
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> Result<Value, CliError> {
        self.send(reqwest::Method::GET, path, None).await
    }

    /// The caller's user id (`GET /api/me`).
    pub async fn user_id(&self) -> Result<String, CliError> {
        let me = self.get("/api/me").await?;
        me["user_id"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| CliError::Other(format!("unexpected /api/me reply: {me}")))
    }

    /// `POST path` with a JSON body.
    pub async fn post(&self, path: &str, body: Value) -> Result<Value, CliError> {
        self.send(reqwest::Method::POST, path, Some(body)).await
    }

    /// `DELETE path`.
    pub async fn delete(&self, path: &str) -> Result<Value, CliError> {
        self.send(reqwest::Method::DELETE, path, None).await
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, CliError> {
        let url = format!("{}{path}", self.target.url);
        let mut req = self
            .client
            .request(method, &url)
            .bearer_auth(&self.target.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| CliError::unreachable(&self.target.url, &e))?;
        let status = resp.status().as_u16();
        let text = resp
            .text()
            .await
            .map_err(|e| CliError::unreachable(&self.target.url, &e))?;
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if (200..300).contains(&status) {
            return Ok(value);
        }
        Err(CliError::from_body(Some(status), &value, &self.target.url))
    }
}

/// `http(s)://host/prefix` → `ws(s)://host/prefix/ws`.
pub fn ws_url(base: &str) -> String {
    let rest = base
        .strip_prefix("https://")
        .map(|r| format!("wss://{r}"))
        .or_else(|| base.strip_prefix("http://").map(|r| format!("ws://{r}")))
        .unwrap_or_else(|| base.to_owned());
    format!("{rest}/ws")
}

/// One stream event, as the node sent it.
#[derive(Debug, Clone)]
pub struct Event {
    /// The frame, for `--json`.
    pub raw: Value,
    /// `session:<id>` or `audit`.
    pub stream: String,
    /// Position in its stream.
    pub seq: i64,
    /// `task.state`, `task.output`, `audit`, ...
    pub kind: String,
    /// The task it concerns, for task events.
    pub task_id: Option<Uuid>,
}

impl Event {
    fn parse(raw: Value) -> Option<Self> {
        Some(Event {
            stream: raw["stream"].as_str()?.to_owned(),
            seq: raw["seq"].as_i64()?,
            kind: raw["type"].as_str().unwrap_or_default().to_owned(),
            task_id: raw["task_id"].as_str().and_then(|t| t.parse().ok()),
            raw,
        })
    }

    /// `data.state` of a `task.state` event.
    pub fn state(&self) -> Option<&str> {
        (self.kind == "task.state")
            .then(|| self.raw["data"]["state"].as_str())
            .flatten()
    }

    /// `data.chunk` of a `task.output` event.
    pub fn chunk(&self) -> Option<&str> {
        (self.kind == "task.output")
            .then(|| self.raw["data"]["chunk"].as_str())
            .flatten()
    }

    /// `data.message`, if any.
    pub fn message(&self) -> Option<&str> {
        self.raw["data"]["message"]
            .as_str()
            .filter(|m| !m.is_empty())
    }
}

/// Whether a task state is final.
pub fn is_terminal(state: &str) -> bool {
    matches!(state, "completed" | "failed" | "cancelled")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// WebSocket URLs follow the base URL's scheme and prefix.
    #[test]
    fn ws_urls() {
        assert_eq!(ws_url("http://a:1"), "ws://a:1/ws");
        assert_eq!(ws_url("https://a/x"), "wss://a/x/ws");
    }
}
