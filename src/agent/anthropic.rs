//! The `anthropic` kind: the Messages API, streamed.
//!
//! `POST {base_url}/v1/messages` with `x-api-key` and `anthropic-version`
//! headers and `"stream": true`. Text arrives in `content_block_delta`
//! events (`delta.text`); `message_stop` ends the stream; an `error` event
//! carries `error.message`.

use serde_json::{Value, json};

use crate::agent::Job;
use crate::agent::http::{Framing, HttpParams, Step, Wire, error_message};
use crate::config::Secret;

/// The API's address unless the config names another.
pub const DEFAULT_BASE_URL: &str = "https://api.anthropic.com";
/// The model unless the config names another.
pub const DEFAULT_MODEL: &str = "claude-sonnet-4-5";
/// The API version header.
pub const API_VERSION: &str = "2023-06-01";
/// `max_tokens` is required by the API; this is used unless configured.
pub const DEFAULT_MAX_TOKENS: u32 = 4096;

/// The Anthropic Messages wire format.
pub struct Anthropic {
    /// The model.
    pub model: String,
    /// `{base_url}/v1/messages`.
    pub url: String,
    /// `max_tokens` of each request.
    pub max_tokens: u32,
}

impl Anthropic {
    /// For the API at `base_url` (without `/v1`).
    pub fn new(base_url: &str, model: &str, max_tokens: Option<u32>) -> Self {
        let base = base_url.trim_end_matches('/');
        let base = base.strip_suffix("/v1").unwrap_or(base);
        Anthropic {
            model: model.to_owned(),
            url: format!("{base}/v1/messages"),
            max_tokens: max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
        }
    }
}

impl Wire for Anthropic {
    const KIND: &'static str = "anthropic";
    const FRAMING: Framing = Framing::Sse;

    fn request(
        &self,
        client: &reqwest::Client,
        key: Option<&Secret>,
        job: &Job,
        p: &HttpParams,
    ) -> reqwest::RequestBuilder {
        let mut body = json!({
            "model": self.model,
            "max_tokens": p.max_tokens.unwrap_or(self.max_tokens),
            "messages": [{"role": "user", "content": job.prompt}],
            "stream": true,
        });
        if let Some(s) = &p.system {
            body["system"] = s.as_str().into();
        }
        if let Some(t) = p.temperature {
            body["temperature"] = t.into();
        }
        let mut req = client
            .post(&self.url)
            .header("anthropic-version", API_VERSION)
            .json(&body);
        if let Some(k) = key {
            req = req.header("x-api-key", k.expose());
        }
        req
    }

    fn parse(&self, event: Option<&str>, data: &str) -> Step {
        let Ok(v) = serde_json::from_str::<Value>(data) else {
            return Step::Error(format!("unreadable stream data: {data:.200}"));
        };
        // The event name is repeated in the data's `type`; trust either.
        let kind = event
            .or_else(|| v.get("type").and_then(Value::as_str))
            .unwrap_or("");
        match kind {
            "content_block_delta" => match v.pointer("/delta/text").and_then(Value::as_str) {
                Some(t) => Step::Text(t.to_owned()),
                None => Step::Skip,
            },
            "message_stop" => Step::Done,
            "error" => Step::Error(error_message(&v).unwrap_or_else(|| data.to_owned())),
            _ => Step::Skip,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Text deltas, other events, errors and the end.
    #[test]
    fn parses_the_stream() {
        let w = Anthropic::new("https://api.anthropic.com/", "m", None);
        assert_eq!(w.url, "https://api.anthropic.com/v1/messages");
        let d =
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi"}}"#;
        assert_eq!(
            w.parse(Some("content_block_delta"), d),
            Step::Text("Hi".into())
        );
        assert_eq!(w.parse(None, d), Step::Text("Hi".into()));
        assert_eq!(w.parse(Some("ping"), r#"{"type":"ping"}"#), Step::Skip);
        let e = r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
        assert_eq!(w.parse(Some("error"), e), Step::Error("Overloaded".into()));
        assert_eq!(
            w.parse(Some("message_stop"), r#"{"type":"message_stop"}"#),
            Step::Done
        );
    }
}
