//! What each HTTP kind implements ([`Wire`]), the params its tasks take,
//! and the helpers the kinds share.

use serde::Deserialize;
use serde_json::Value;

use super::{Framing, error_message};
use crate::agent::Job;
use crate::config::Secret;

/// What one message of a stream means.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Text to append.
    Text(String),
    /// The response is complete.
    Done,
    /// The last text; the response is complete.
    Final(String),
    /// The server reported an error.
    Error(String),
    /// Nothing for us (pings, metadata).
    Skip,
}

/// One HTTP kind's wire format.
pub trait Wire: Send + Sync + 'static {
    /// `openai`, `anthropic` or `ollama`.
    const KIND: &'static str;
    /// How the stream is framed.
    const FRAMING: Framing;
    /// The request for one task.
    fn request(
        &self,
        client: &reqwest::Client,
        key: Option<&Secret>,
        job: &Job,
        params: &HttpParams,
    ) -> reqwest::RequestBuilder;
    /// Read one message (`event` is the SSE event name, if any).
    fn parse(&self, event: Option<&str>, data: &str) -> Step;
}

/// `POST url` with a JSON body and the key, if any, as a bearer token.
pub fn post_bearer(
    client: &reqwest::Client,
    url: &str,
    body: &Value,
    key: Option<&Secret>,
) -> reqwest::RequestBuilder {
    let req = client.post(url).json(body);
    match key {
        Some(k) => req.bearer_auth(k.expose()),
        None => req,
    }
}

/// One stream message as JSON, or the step that ends the task: the
/// message is unreadable (`what` names it), or it is an error document.
pub fn json_message(data: &str, what: &str) -> Result<Value, Step> {
    let Ok(v) = serde_json::from_str::<Value>(data) else {
        return Err(Step::Error(format!(
            "unreadable stream {what}: {data:.200}"
        )));
    };
    match error_message(&v) {
        Some(e) => Err(Step::Error(e)),
        None => Ok(v),
    }
}

/// The params an HTTP task accepts.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpParams {
    /// Handled by the gate; accepted here.
    pub timeout_ms: Option<u64>,
    /// Overrides the config's `max_tokens`.
    pub max_tokens: Option<u32>,
    /// Sampling temperature.
    pub temperature: Option<f64>,
    /// A system prompt.
    pub system: Option<String>,
}
