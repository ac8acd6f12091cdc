//! The `openai` kind: any OpenAI-compatible chat completions server
//! (OpenAI, Ollama's `/v1`, vLLM, llama.cpp), streamed over SSE.
//!
//! `POST {base_url}/chat/completions` with `"stream": true`; each `data:`
//! line holds `choices[0].delta.content`; `data: [DONE]` ends the stream.
//! The key, when there is one, goes as `Authorization: Bearer`.

use serde_json::{Value, json};

use crate::agent::Job;
use crate::agent::http::{Framing, HttpParams, Step, Wire, json_message, post_bearer};
use crate::config::Secret;

/// The OpenAI chat completions wire format.
pub struct OpenAi {
    /// The model.
    pub model: String,
    /// `{base_url}/chat/completions`.
    pub url: String,
    /// Default `max_tokens`.
    pub max_tokens: Option<u32>,
}

impl OpenAi {
    /// For a server at `base_url` (which usually ends in `/v1`).
    pub fn new(base_url: &str, model: &str, max_tokens: Option<u32>) -> Self {
        OpenAi {
            model: model.to_owned(),
            url: format!("{}/chat/completions", base_url.trim_end_matches('/')),
            max_tokens,
        }
    }
}

/// The messages of a one-prompt conversation.
pub fn messages(job: &Job, system: Option<&str>) -> Vec<Value> {
    let mut m = Vec::new();
    if let Some(s) = system {
        m.push(json!({"role": "system", "content": s}));
    }
    m.push(json!({"role": "user", "content": job.prompt}));
    m
}

impl Wire for OpenAi {
    const KIND: &'static str = "openai";
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
            "messages": messages(job, p.system.as_deref()),
            "stream": true,
        });
        if let Some(n) = p.max_tokens.or(self.max_tokens) {
            body["max_tokens"] = n.into();
        }
        if let Some(t) = p.temperature {
            body["temperature"] = t.into();
        }
        post_bearer(client, &self.url, &body, key)
    }

    fn parse(&self, _event: Option<&str>, data: &str) -> Step {
        if data.trim() == "[DONE]" {
            return Step::Done;
        }
        let v = match json_message(data, "data") {
            Ok(v) => v,
            Err(end) => return end,
        };
        match v
            .pointer("/choices/0/delta/content")
            .and_then(Value::as_str)
        {
            Some(t) => Step::Text(t.to_owned()),
            None => Step::Skip,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deltas, role-only deltas, errors and the end marker.
    #[test]
    fn parses_the_stream() {
        let w = OpenAi::new("http://h/v1/", "m", None);
        assert_eq!(w.url, "http://h/v1/chat/completions");
        let delta = r#"{"choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}"#;
        assert_eq!(w.parse(None, delta), Step::Text("Hi".into()));
        let role = r#"{"choices":[{"index":0,"delta":{"role":"assistant"}}]}"#;
        assert_eq!(w.parse(None, role), Step::Skip);
        let err = r#"{"error":{"message":"overloaded"}}"#;
        assert_eq!(w.parse(None, err), Step::Error("overloaded".into()));
        assert_eq!(w.parse(None, "[DONE]"), Step::Done);
    }
}
