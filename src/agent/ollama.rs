//! The `ollama` kind: Ollama's native `/api/chat`, streamed as NDJSON.
//!
//! `POST {base_url}/api/chat` with `"stream": true`; each line holds
//! `message.content`; the line with `"done": true` ends the stream; a line
//! with `error` reports a failure.

use std::time::Duration;

use serde_json::{Value, json};

use crate::agent::Job;
use crate::agent::http::{Framing, HttpParams, Step, Wire, json_message, post_bearer};
use crate::agent::openai::messages;
use crate::config::Secret;

/// Ollama's own default address.
pub const DEFAULT_HOST: &str = "http://127.0.0.1:11434";
/// The model of the default `ollama` agent unless `OLLAMA_MODEL` names one.
pub const DEFAULT_MODEL: &str = "llama3.2";

/// The Ollama chat wire format.
pub struct Ollama {
    /// The model.
    pub model: String,
    /// `{base_url}/api/chat`.
    pub url: String,
}

impl Ollama {
    /// For a server at `base_url`.
    pub fn new(base_url: &str, model: &str) -> Self {
        Ollama {
            model: model.to_owned(),
            url: format!("{}/api/chat", base_url.trim_end_matches('/')),
        }
    }
}

/// `OLLAMA_HOST` as a URL: Ollama accepts `host`, `host:port` and full URLs,
/// and binds `0.0.0.0` meaning "every address".
pub fn host_url(host: &str) -> String {
    let host = host.trim().trim_end_matches('/');
    let (scheme, rest) = match host.split_once("://") {
        Some((s, r)) => (s, r),
        None => ("http", host),
    };
    let rest = rest.replace("0.0.0.0", "127.0.0.1");
    let has_port = rest
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok());
    if has_port {
        format!("{scheme}://{rest}")
    } else {
        format!("{scheme}://{rest}:11434")
    }
}

/// Whether an Ollama server answers at `base_url` within `timeout`.
pub async fn probe(base_url: &str, timeout: Duration) -> bool {
    let Ok(client) = reqwest::Client::builder().timeout(timeout).build() else {
        return false;
    };
    let url = format!("{}/api/tags", base_url.trim_end_matches('/'));
    matches!(client.get(url).send().await, Ok(r) if r.status().is_success())
}

impl Wire for Ollama {
    const KIND: &'static str = "ollama";
    const FRAMING: Framing = Framing::Ndjson;

    fn request(
        &self,
        client: &reqwest::Client,
        key: Option<&Secret>,
        job: &Job,
        p: &HttpParams,
    ) -> reqwest::RequestBuilder {
        let mut options = json!({});
        if let Some(n) = p.max_tokens {
            options["num_predict"] = n.into();
        }
        if let Some(t) = p.temperature {
            options["temperature"] = t.into();
        }
        let body = json!({
            "model": self.model,
            "messages": messages(job, p.system.as_deref()),
            "stream": true,
            "options": options,
        });
        post_bearer(client, &self.url, &body, key)
    }

    fn parse(&self, _event: Option<&str>, data: &str) -> Step {
        let v = match json_message(data, "line") {
            Ok(v) => v,
            Err(end) => return end,
        };
        let text = v.pointer("/message/content").and_then(Value::as_str);
        if v.get("done").and_then(Value::as_bool) == Some(true) {
            // The final line may carry the last text too.
            return match text {
                Some(t) if !t.is_empty() => Step::Final(t.to_owned()),
                _ => Step::Done,
            };
        }
        match text {
            Some(t) => Step::Text(t.to_owned()),
            None => Step::Skip,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// OLLAMA_HOST forms become URLs.
    #[test]
    fn host_forms() {
        assert_eq!(host_url("127.0.0.1"), "http://127.0.0.1:11434");
        assert_eq!(host_url("0.0.0.0:1234"), "http://127.0.0.1:1234");
        assert_eq!(
            host_url("https://ollama.example/"),
            "https://ollama.example:11434"
        );
        assert_eq!(host_url("http://h:80"), "http://h:80");
    }

    /// Content lines, the done line and errors.
    #[test]
    fn parses_the_stream() {
        let w = Ollama::new("http://h:11434", "m");
        let l = r#"{"model":"m","message":{"role":"assistant","content":"Hi"},"done":false}"#;
        assert_eq!(w.parse(None, l), Step::Text("Hi".into()));
        let d = r#"{"model":"m","message":{"role":"assistant","content":""},"done":true}"#;
        assert_eq!(w.parse(None, d), Step::Done);
        assert_eq!(
            w.parse(None, r#"{"error":"boom"}"#),
            Step::Error("boom".into())
        );
    }
}
