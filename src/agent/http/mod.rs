//! What the HTTP agent kinds share: one streamed request per task, retried
//! before the first token, framed as SSE or NDJSON, and coalesced into
//! output chunks.
//!
//! Each kind ([`super::openai`], [`super::anthropic`], [`super::ollama`])
//! is a [`Wire`]: how to build its request and how to read one message of
//! its stream. [`HttpAgent`] does the rest:
//! - connection errors, 429 and 5xx are retried with exponential backoff
//!   (honouring `Retry-After`) up to [`MAX_TRIES`] times, and only before the
//!   response started; after the last try the task fails saying why;
//! - an error in the middle of a stream fails the task with the server's
//!   message; a stream that ends before its end marker fails too;
//! - cancel drops the connection at once.

use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use serde_json::{Value, json};

use crate::agent::coalesce::Output;
use crate::agent::health::Health;
use crate::agent::{Agent, AgentError, AgentInfo, Context, Job};
use crate::config::{AgentConfig, Secret};

/// Tries of one request before giving up.
pub const MAX_TRIES: u32 = 4;
/// First retry delay unless the config says otherwise; doubled each try.
pub const DEFAULT_RETRY_BASE: Duration = Duration::from_millis(500);
/// A stream silent this long is treated as lost.
const READ_TIMEOUT: Duration = Duration::from_secs(300);

mod errors;
mod framing;
mod wire;

pub use errors::error_message;
use errors::{error_text, retry_after, root_cause};
pub use framing::{Framer, Framing};
pub use wire::{HttpParams, Step, Wire, json_message, post_bearer};

/// The settings an HTTP agent runs with.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// The server, without a trailing slash.
    pub base_url: String,
    /// The model.
    pub model: String,
    /// The key, if any.
    pub key: Option<Secret>,
    /// Default `max_tokens`.
    pub max_tokens: Option<u32>,
    /// First retry delay.
    pub retry_base: Duration,
}

impl HttpSettings {
    /// Settings from the config, reading the key from `key_env` (the
    /// config's `api_key_env`, else `default_env`) unless `api_key` is set.
    /// Fails with the reason the agent is unavailable.
    pub fn from_config(
        c: &AgentConfig,
        default_base: Option<&str>,
        default_model: Option<&str>,
        default_env: Option<&str>,
        key_required: bool,
    ) -> Result<Self, String> {
        let base_url = c
            .base_url
            .as_deref()
            .or(default_base)
            .ok_or("no base_url is configured")?
            .trim_end_matches('/')
            .to_owned();
        let model = c
            .model
            .as_deref()
            .or(default_model)
            .ok_or("no model is configured")?
            .to_owned();
        let env = c.api_key_env.as_deref().or(default_env);
        let key = match (&c.api_key, env) {
            (Some(k), _) => Some(k.clone()),
            (None, Some(var)) => match std::env::var(var) {
                Ok(v) if !v.is_empty() => Some(Secret::new(v)),
                _ if key_required || c.api_key_env.is_some() => {
                    return Err(format!("environment variable {var} is not set"));
                }
                _ => None,
            },
            (None, None) => None,
        };
        Ok(HttpSettings {
            base_url,
            model,
            key,
            max_tokens: c.max_tokens,
            retry_base: c
                .retry_base_ms
                .map(Duration::from_millis)
                .unwrap_or(DEFAULT_RETRY_BASE),
        })
    }
}

/// An agent speaking one [`Wire`] format.
pub struct HttpAgent<W: Wire> {
    info: AgentInfo,
    wire: W,
    settings: HttpSettings,
    client: reqwest::Client,
    health: Health,
}

impl<W: Wire> HttpAgent<W> {
    /// An agent named `name` (with the config's description and
    /// capabilities, when there is a config entry).
    pub fn new(
        name: &str,
        description: &str,
        capabilities: &[String],
        wire: W,
        settings: HttpSettings,
    ) -> Self {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(READ_TIMEOUT)
            .build()
            .unwrap_or_default();
        HttpAgent {
            info: AgentInfo::configured(
                name,
                description,
                capabilities,
                json!({
                    "kind": W::KIND,
                    "model": settings.model,
                    "base_url": settings.base_url,
                }),
            ),
            wire,
            settings,
            client,
            health: Health::default(),
        }
    }

    /// Send the request, retrying what is worth retrying.
    async fn connect(
        &self,
        job: &Job,
        params: &HttpParams,
        ctx: &Context,
    ) -> Result<reqwest::Response, AgentError> {
        let name = &self.info.agent_type;
        let mut last = String::new();
        for attempt in 1..=MAX_TRIES {
            let req = self
                .wire
                .request(&self.client, self.settings.key.as_ref(), job, params);
            let sent = tokio::select! {
                r = req.send() => r,
                _ = ctx.cancelled() => return Err(AgentError::Stopped),
            };
            let mut wait = self.settings.retry_base * 2u32.pow(attempt - 1);
            match sent {
                Ok(resp) if resp.status().is_success() => {
                    self.health.up();
                    return Ok(resp);
                }
                Ok(resp) => last = self.refused(resp, &mut wait).await?,
                Err(e) if e.is_connect() || e.is_timeout() || e.is_request() => {
                    last = format!(
                        "cannot reach {}: {}",
                        self.settings.base_url,
                        root_cause(&e)
                    );
                }
                Err(e) => {
                    return Err(AgentError::Failed(format!(
                        "{name}: the request failed: {}",
                        root_cause(&e)
                    )));
                }
            }
            if attempt < MAX_TRIES {
                tracing::info!(attempt, ?wait, reason = %last, "retrying");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = ctx.cancelled() => return Err(AgentError::Stopped),
                }
            }
        }
        Err(AgentError::Failed(format!(
            "{name}: gave up after {MAX_TRIES} tries; last: {last}"
        )))
    }

    /// A non-success answer: why, when it is worth another try (429, 5xx;
    /// `wait` grows to the server's `Retry-After`), else the task's failure.
    /// Refused credentials mark the agent down.
    async fn refused(
        &self,
        resp: reqwest::Response,
        wait: &mut Duration,
    ) -> Result<String, AgentError> {
        let status = resp.status();
        if let Some(after) = retry_after(&resp) {
            *wait = (*wait).max(after);
        }
        let why = error_text(resp).await;
        let last = format!("the server answered {status}: {why}");
        if matches!(status.as_u16(), 401 | 403) {
            self.health.down(format!(
                "{} refused the credentials ({status}): {why}",
                self.settings.base_url
            ));
        }
        if !(status.as_u16() == 429 || status.is_server_error()) {
            let name = &self.info.agent_type;
            return Err(AgentError::Failed(format!("{name}: {last}")));
        }
        Ok(last)
    }
}

#[async_trait]
impl<W: Wire> Agent for HttpAgent<W> {
    fn info(&self) -> AgentInfo {
        self.health.apply(self.info.clone())
    }

    fn validate(&self, params: &Value) -> Result<(), String> {
        serde_json::from_value::<HttpParams>(params.clone())
            .map(|_| ())
            .map_err(|e| format!("bad params for a {} agent: {e}", W::KIND))
    }

    async fn run(&self, job: Job, ctx: Context) -> Result<String, AgentError> {
        let name = self.info.agent_type.clone();
        let params: HttpParams = serde_json::from_value(job.params.clone())
            .map_err(|e| AgentError::Failed(format!("bad params: {e}")))?;
        let mut out = Output::new(&ctx);
        // A connection dropped after the response headers but before the
        // first token is as transient as one refused: the request is sent
        // again (the tries of `connect` aside). Once text has streamed, a
        // drop fails the task: a retry would repeat what was sent.
        let mut drops = 1;
        loop {
            let resp = self.connect(&job, &params, &ctx).await?;
            match self.read(resp, &mut out, &ctx).await {
                Ok(()) => return Ok(out.finish().await?),
                Err(Read::Dropped(why)) if out.text().is_empty() && drops < MAX_TRIES => {
                    let wait = self.settings.retry_base * 2u32.pow(drops - 1);
                    drops += 1;
                    tracing::info!(?wait, reason = %why, "dropped before the first token; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = ctx.cancelled() => return Err(AgentError::Stopped),
                    }
                }
                Err(Read::Dropped(why)) => {
                    let _ = out.flush().await;
                    return Err(AgentError::Failed(format!("{name}: {why}")));
                }
                Err(Read::Failed(e)) => {
                    let _ = out.flush().await;
                    return Err(e);
                }
            }
        }
    }
}

/// How reading a response stream ended early.
enum Read {
    /// The connection failed, or the stream ended before its end marker.
    Dropped(String),
    /// The server reported an error, or the task stopped.
    Failed(AgentError),
}

impl From<crate::agent::Stopped> for Read {
    fn from(s: crate::agent::Stopped) -> Self {
        Read::Failed(s.into())
    }
}

impl<W: Wire> HttpAgent<W> {
    /// Stream `resp` into `out` until the end marker.
    async fn read(
        &self,
        resp: reqwest::Response,
        out: &mut Output<'_>,
        ctx: &Context,
    ) -> Result<(), Read> {
        let name = &self.info.agent_type;
        let mut body = resp.bytes_stream();
        let mut framer = Framer::new(W::FRAMING);
        loop {
            let messages = tokio::select! {
                piece = body.next() => match piece {
                    Some(Ok(bytes)) => framer
                        .push(&bytes)
                        .map_err(|e| Read::Failed(AgentError::Failed(format!("{name}: {e}"))))?,
                    Some(Err(e)) => {
                        return Err(Read::Dropped(format!(
                            "the connection failed mid-stream: {}",
                            root_cause(&e)
                        )));
                    }
                    // A last message without a trailing newline still counts.
                    None => {
                        if self.apply(framer.finish(), out).await? {
                            return Ok(());
                        }
                        return Err(Read::Dropped(
                            "the stream ended before the response was complete".into(),
                        ));
                    }
                },
                _ = out.due() => {
                    out.flush().await?;
                    continue;
                }
                _ = ctx.cancelled() => return Err(Read::Failed(AgentError::Stopped)),
            };
            if self.apply(messages, out).await? {
                return Ok(());
            }
        }
    }

    /// Apply stream messages to `out`; true at the end marker.
    async fn apply(
        &self,
        messages: Vec<(Option<String>, String)>,
        out: &mut Output<'_>,
    ) -> Result<bool, Read> {
        for (event, data) in messages {
            match self.wire.parse(event.as_deref(), &data) {
                Step::Text(t) => out.push(&t).await?,
                Step::Done => return Ok(true),
                Step::Final(t) => {
                    out.push(&t).await?;
                    return Ok(true);
                }
                Step::Error(e) => {
                    return Err(Read::Failed(AgentError::Failed(format!(
                        "{}: the server reported an error mid-stream: {e}",
                        self.info.agent_type
                    ))));
                }
                Step::Skip => {}
            }
        }
        Ok(false)
    }
}
