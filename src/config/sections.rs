//! The tables of the config file, as plain data with their defaults.
//! The parts of the node read them; nothing here reaches into those parts.

use std::fmt;
use std::path::PathBuf;

use serde::Deserialize;

/// Live events a consumer may have queued before it catches up from the
/// store instead (`[limits] stream_ring`, and the bus's own cursors).
pub const DEFAULT_STREAM_RING: usize = 1024;

/// Limits the node enforces, each with a clear error when exceeded.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest REST request body (413 past it).
    pub max_body_bytes: usize,
    /// Largest WebSocket message (close 1009 past it).
    pub max_message_bytes: usize,
    /// Longest prompt (413 / `payload_too_large`).
    pub max_prompt_bytes: usize,
    /// Interval of server pings; a peer silent for two intervals is dropped.
    pub heartbeat_ms: u64,
    /// Time a new connection has to send `hello` (close 4408).
    pub hello_timeout_ms: u64,
    /// Ops one connection may have in flight at once; more wait.
    pub max_inflight_ops: usize,
    /// Streams one connection may subscribe to.
    pub max_subscriptions: usize,
    /// Largest `limit` of a listing.
    pub max_page: i64,
    /// Live events one connection may have queued (besides what is being
    /// written) before it catches up from the store instead.
    pub stream_ring: usize,
    /// With PostgreSQL: how long a node's claim on a running task holds
    /// without renewal. A node that dies loses its tasks (failed) within
    /// about this long; it renews every third of it.
    pub lease_ms: u64,
    /// With PostgreSQL: on SIGTERM, how long the node lets its running
    /// tasks finish (after handing its queued ones to other nodes) before
    /// it fails what is left.
    pub drain_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 1 << 20,
            max_message_bytes: 1 << 20,
            max_prompt_bytes: 256 << 10,
            heartbeat_ms: 30_000,
            hello_timeout_ms: 10_000,
            max_inflight_ops: 32,
            max_subscriptions: 64,
            max_page: 1000,
            stream_ring: DEFAULT_STREAM_RING,
            lease_ms: 15_000,
            drain_ms: 30_000,
        }
    }
}

/// A secret from the config file (an API key): never shown by `Debug`.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// A secret holding `s`.
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    /// The secret itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"<redacted>\"")
    }
}

/// The agent kinds this build knows.
pub const AGENT_KINDS: [&str; 5] = ["echo", "command", "openai", "anthropic", "ollama"];

/// One `[[agents]]` entry. `protocol/agents.md` documents every field.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// The agent_type clients submit to.
    pub name: String,
    /// `echo | command | openai | anthropic | ollama`.
    pub kind: String,
    /// What it does, for discovery.
    #[serde(default)]
    pub description: String,
    /// Skills it offers, for discovery and skill routing.
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// kind = command: argv; `{prompt}` is replaced as one argument.
    #[serde(default)]
    pub command: Vec<String>,
    /// kind = command: send the prompt on stdin instead.
    #[serde(default)]
    pub stdin: bool,
    /// The longest a task of this agent may run (and the cap of a task's
    /// own `params.timeout_ms`).
    pub timeout_ms: Option<u64>,
    /// Every task waits for an approve before running.
    #[serde(default)]
    pub approval: bool,
    /// At most this many tasks run at once; more wait in `pending`.
    pub max_concurrent: Option<usize>,
    /// Only principals with one of these roles may submit.
    pub allowed_roles: Option<Vec<String>>,
    /// HTTP kinds: the server.
    pub base_url: Option<String>,
    /// HTTP kinds: the model.
    pub model: Option<String>,
    /// HTTP kinds: the environment variable holding the key.
    pub api_key_env: Option<String>,
    /// HTTP kinds: the key itself (prefer `api_key_env`).
    pub api_key: Option<Secret>,
    /// HTTP kinds: `max_tokens` of each request (anthropic needs one).
    pub max_tokens: Option<u32>,
    /// HTTP kinds: first retry delay, doubled per try.
    pub retry_base_ms: Option<u64>,
    /// kind = command: working directory.
    pub cwd: Option<PathBuf>,
    /// kind = command: environment allow-list (`NAME` passes the node's
    /// value, `NAME=value` sets one); unset means a small default list.
    pub env: Option<Vec<String>>,
    /// kind = command: time between SIGTERM and SIGKILL on stop.
    pub kill_grace_ms: Option<u64>,
    /// On a cluster: a task of this agent whose node was lost is run again
    /// from the start on another node, instead of failed. Off by default:
    /// an agent's side effects may not bear repeating.
    #[serde(default)]
    pub rerun_on_node_loss: bool,
}

/// One `[[skills]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SkillConfig {
    /// What a submit's `skill` names.
    pub skill_id: String,
    /// A display name.
    pub name: String,
    /// What it does.
    #[serde(default)]
    pub description: String,
    /// The agents that provide it (plus those listing it in `capabilities`).
    #[serde(default)]
    pub agents: Vec<String>,
    /// Permissions a submit through this skill needs, on top of `task:submit`.
    #[serde(default)]
    pub required_permissions: Vec<String>,
}

/// `[audit]`: signed checkpoints of the audit chain.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditConfig {
    /// File holding the hex Ed25519 signing key (created, mode 0600, when
    /// missing). Default: next to the SQLite file. `SWITCHBOARD_AUDIT_KEY`
    /// (hex) takes precedence.
    pub key_file: Option<PathBuf>,
    /// Append-only checkpoint file outside the database. Default: next to
    /// the SQLite file.
    pub checkpoint_file: Option<PathBuf>,
    /// Checkpoint after this many new records...
    pub checkpoint_every_records: i64,
    /// ...or this many seconds, when anything is new.
    pub checkpoint_every_secs: u64,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            key_file: None,
            checkpoint_file: None,
            checkpoint_every_records: 100,
            checkpoint_every_secs: 60,
        }
    }
}

/// `[security]`: device trust and abuse limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecurityConfig {
    /// `off`, `audit` or `require`.
    pub device_trust: TrustPolicy,
    /// Pending device requests expire after this long.
    pub device_pending_ttl_secs: u64,
    /// Exact browser origins allowed to open `/ws` besides the node's own.
    pub allowed_origins: Vec<String>,
    /// Task submits per user per minute.
    pub submits_per_minute: u32,
    /// WebSocket frames per connection per second.
    pub frames_per_second: u32,
    /// Failed authentications per peer address per minute before 429.
    pub auth_failures_per_minute: u32,
    /// Open WebSocket connections per user.
    pub max_connections_per_user: usize,
    /// Unfinished tasks per user.
    pub max_active_tasks_per_user: i64,
}

impl Default for SecurityConfig {
    fn default() -> Self {
        SecurityConfig {
            device_trust: TrustPolicy::Off,
            device_pending_ttl_secs: 24 * 3600,
            allowed_origins: Vec::new(),
            submits_per_minute: 600,
            frames_per_second: 200,
            auth_failures_per_minute: 30,
            max_connections_per_user: 256,
            max_active_tasks_per_user: 1000,
        }
    }
}

/// `[link]`: remote agent hosts (`switchboard link`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LinkConfig {
    /// How long a host that lost its link may take to come back before its
    /// unfinished tasks fail.
    pub grace_ms: u64,
    /// Frames one host may send a second; faster hosts are slowed down (the
    /// node reads more slowly), not cut off. Refused frames count against
    /// `[security] frames_per_second`, and past it the link is closed (4429).
    pub frames_per_second: u32,
}

impl Default for LinkConfig {
    fn default() -> Self {
        LinkConfig {
            grace_ms: 60_000,
            frames_per_second: 2_000,
        }
    }
}

/// `[security] device_trust`: what an untrusted device may do.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrustPolicy {
    /// Device ids are labels; nothing is checked.
    #[default]
    Off,
    /// Untrusted use is allowed and audited.
    Audit,
    /// Untrusted devices get at most the viewer permissions.
    Require,
}

impl fmt::Display for TrustPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TrustPolicy::Off => "off",
            TrustPolicy::Audit => "audit",
            TrustPolicy::Require => "require",
        })
    }
}
