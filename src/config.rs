//! Configuration: the `serve` options and the TOML file of `--config`.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

mod retention;
pub use retention::{RetentionConfig, Window};

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
            stream_ring: crate::bus::RING_CAPACITY,
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
    pub device_trust: crate::device::TrustPolicy,
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
            device_trust: crate::device::TrustPolicy::Off,
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

/// The `--config` file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FileConfig {
    pub agents: Vec<AgentConfig>,
    pub skills: Vec<SkillConfig>,
    pub limits: Limits,
    pub audit: AuditConfig,
    pub security: SecurityConfig,
    pub link: LinkConfig,
    /// `[retention]`: what is removed, and when (nothing by default).
    pub retention: RetentionConfig,
}

/// Agent names listed even without a config (the original's).
pub const DEFAULT_AGENT_NAMES: [&str; 5] = ["claude", "auggie", "ollama", "opendevin", "goose"];

impl FileConfig {
    /// Read and check a config file; errors name the file, line and field.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read config file {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| anyhow::anyhow!("config file {}: {e}", path.display()))
    }

    /// Parse and check config text.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let cfg: FileConfig = toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
            match line {
                Some(line) => anyhow::anyhow!("line {line}: {}", e.message()),
                None => anyhow::anyhow!("{}", e.message()),
            }
        })?;
        if let Err(bad) = cfg.check() {
            let line = locate(text, bad.table, bad.index, bad.field);
            let path = format!("{}[{}].{}", bad.table, bad.index, bad.field);
            match line {
                Some(line) => anyhow::bail!("line {line}: {path}: {}", bad.message),
                None => anyhow::bail!("{path}: {}", bad.message),
            }
        }
        Ok(cfg)
    }

    /// The semantic checks TOML cannot express.
    fn check(&self) -> Result<(), Bad> {
        let mut names = std::collections::BTreeSet::new();
        for (i, a) in self.agents.iter().enumerate() {
            let bad = |field, message: String| Bad::new("agents", i, field, message);
            check_agent(a).map_err(|(field, m)| bad(field, m))?;
            if !names.insert(a.name.as_str()) {
                return Err(bad("name", format!("`{}` is configured twice", a.name)));
            }
        }
        let mut ids = std::collections::BTreeSet::new();
        for (i, s) in self.skills.iter().enumerate() {
            let bad = |field, message: String| Bad::new("skills", i, field, message);
            if s.skill_id.trim().is_empty() {
                return Err(bad("skill_id", "must not be empty".into()));
            }
            if !ids.insert(s.skill_id.as_str()) {
                return Err(bad(
                    "skill_id",
                    format!("`{}` is configured twice", s.skill_id),
                ));
            }
            for agent in &s.agents {
                let known = names.contains(agent.as_str())
                    || agent == "echo"
                    || DEFAULT_AGENT_NAMES.contains(&agent.as_str());
                if !known {
                    return Err(bad(
                        "agents",
                        format!("names the agent `{agent}`, which is not configured"),
                    ));
                }
            }
            for p in &s.required_permissions {
                if p.parse::<crate::rbac::Permission>().is_err() {
                    return Err(bad(
                        "required_permissions",
                        format!("`{p}` is not a permission"),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// A semantic error: where, and what.
struct Bad {
    table: &'static str,
    index: usize,
    field: &'static str,
    message: String,
}

impl Bad {
    fn new(table: &'static str, index: usize, field: &'static str, message: String) -> Self {
        Bad {
            table,
            index,
            field,
            message,
        }
    }
}

/// One agent's checks: the field at fault and why.
fn check_agent(a: &AgentConfig) -> Result<(), (&'static str, String)> {
    if a.name.trim().is_empty() {
        return Err(("name", "must not be empty".into()));
    }
    if !AGENT_KINDS.contains(&a.kind.as_str()) {
        return Err((
            "kind",
            format!(
                "`{}` is not one of echo, command, openai, anthropic, ollama",
                a.kind
            ),
        ));
    }
    if a.timeout_ms == Some(0) {
        return Err(("timeout_ms", "must be at least 1".into()));
    }
    if a.max_concurrent == Some(0) {
        return Err(("max_concurrent", "must be at least 1".into()));
    }
    for role in a.allowed_roles.iter().flatten() {
        if role.parse::<crate::rbac::Role>().is_err() {
            return Err((
                "allowed_roles",
                format!("`{role}` is not a role (admin, developer, viewer, guest)"),
            ));
        }
    }
    match a.kind.as_str() {
        "command" => {
            if a.command.is_empty() || a.command[0].trim().is_empty() {
                return Err((
                    "command",
                    "must name a program for kind `command`, e.g. [\"claude\", \"-p\", \"{prompt}\"]"
                        .into(),
                ));
            }
            if !a.stdin && !a.command.iter().any(|arg| arg.contains("{prompt}")) {
                return Err((
                    "command",
                    "contains no \"{prompt}\" and stdin is false, so the prompt would not reach the program"
                        .into(),
                ));
            }
            for var in a.env.iter().flatten() {
                let name = var.split('=').next().unwrap_or("");
                let valid =
                    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                if !valid {
                    return Err(("env", format!("`{var}` is not NAME or NAME=value")));
                }
            }
        }
        "openai" | "ollama" | "anthropic" => {
            match &a.base_url {
                Some(url) if !(url.starts_with("http://") || url.starts_with("https://")) => {
                    return Err((
                        "base_url",
                        format!("`{url}` must start with http:// or https://"),
                    ));
                }
                None if a.kind != "anthropic" => {
                    return Err(("base_url", format!("is required for kind `{}`", a.kind)));
                }
                _ => {}
            }
            if a.kind != "anthropic" && a.model.as_deref().is_none_or(str::is_empty) {
                return Err(("model", format!("is required for kind `{}`", a.kind)));
            }
        }
        _ => {}
    }
    if a.kind != "command" && !a.command.is_empty() {
        return Err((
            "command",
            format!("applies to kind `command` only, not `{}`", a.kind),
        ));
    }
    Ok(())
}

/// The line of `field` in the `index`th `[[table]]` of `text` (or of the
/// table header when the field is absent). Only finds the usual
/// `[[table]]` layout; inline tables go without a line.
fn locate(text: &str, table: &str, index: usize, field: &str) -> Option<usize> {
    let header = format!("[[{table}]]");
    let mut seen = 0usize;
    let mut in_block = false;
    let mut header_line = None;
    for (n, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.starts_with('[') {
            if in_block {
                break;
            }
            if t.starts_with(&header) {
                if seen == index {
                    in_block = true;
                    header_line = Some(n + 1);
                }
                seen += 1;
            }
            continue;
        }
        if in_block {
            let key = t.split('=').next().unwrap_or("").trim().trim_matches('"');
            if t.contains('=') && key == field {
                return Some(n + 1);
            }
        }
    }
    header_line
}

/// Everything `serve` needs.
#[derive(Clone)]
pub struct Config {
    /// `sqlite://PATH` or `postgres://...`.
    pub database_url: String,
    /// This node's id.
    pub node_id: String,
    /// The bootstrap admin's token, when given by the environment.
    pub admin_token: Option<String>,
    /// The config file's content.
    pub file: FileConfig,
    /// The audit checkpoint key and file, resolved at start (`None`: no
    /// checkpoints, e.g. PostgreSQL without a configured key).
    pub checkpoints: Option<crate::audit::checkpoint::CheckpointConfig>,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("database_url", &redact_url(&self.database_url))
            .field("node_id", &self.node_id)
            .field(
                "admin_token",
                &self.admin_token.as_ref().map(|_| "<redacted>"),
            )
            .field("file", &self.file)
            .finish()
    }
}

impl Config {
    /// A config for `database_url` with defaults for the rest.
    pub fn new(database_url: impl Into<String>) -> Self {
        Config {
            database_url: database_url.into(),
            node_id: default_node_id(),
            admin_token: None,
            file: FileConfig::default(),
            checkpoints: None,
        }
    }

    /// Resolve the checkpoint key and file: `SWITCHBOARD_AUDIT_KEY`, else
    /// `[audit] key_file`, else a key file next to the SQLite database
    /// (created when missing).
    pub fn resolve_checkpoints(&mut self) -> anyhow::Result<()> {
        use crate::audit::checkpoint::{CheckpointConfig, CheckpointKey};
        let a = &self.file.audit;
        let beside = crate::store::sqlite_path(&self.database_url).map(PathBuf::from);
        let key = match std::env::var("SWITCHBOARD_AUDIT_KEY")
            .ok()
            .filter(|k| !k.is_empty())
        {
            Some(hex) => Some(
                CheckpointKey::from_hex(&hex)
                    .map_err(|e| anyhow::anyhow!("SWITCHBOARD_AUDIT_KEY: {e}"))?,
            ),
            None => match a
                .key_file
                .clone()
                .or_else(|| beside.as_ref().map(|p| suffixed(p, ".audit-key")))
            {
                Some(path) => Some(CheckpointKey::load_or_create(&path)?),
                None => None,
            },
        };
        self.checkpoints = key.map(|key| CheckpointConfig {
            key,
            file: a
                .checkpoint_file
                .clone()
                .or_else(|| beside.as_ref().map(|p| suffixed(p, ".checkpoints.jsonl"))),
            every_records: a.checkpoint_every_records.max(1),
            every: std::time::Duration::from_secs(a.checkpoint_every_secs.max(1)),
        });
        if self.checkpoints.is_none() {
            tracing::warn!("no audit key configured: signed audit checkpoints are off");
        }
        Ok(())
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.file.limits
    }
}

/// Host name plus a random suffix.
pub fn default_node_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "node".into());
    format!("{host}-{:06x}", rand::random::<u32>() & 0xff_ffff)
}

/// A database URL without its password, for logs.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &url[scheme + 3..at];
            let user = creds.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

/// `path` with `suffix` appended to its file name.
pub fn suffixed(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bad field is reported with its line.
    #[test]
    fn errors_name_the_line() {
        let err = FileConfig::parse("[[agents]]\nname = \"x\"\nkind = \"echo\"\nbogus = 1\n")
            .unwrap_err();
        assert!(err.to_string().contains("line 4"), "{err}");
        assert!(err.to_string().contains("bogus"), "{err}");
        let err = FileConfig::parse("[[agents]]\nname = \"x\"\nkind = \"magic\"\n").unwrap_err();
        assert!(err.to_string().contains("agents[0].kind"), "{err}");
    }

    fn err(text: &str) -> String {
        FileConfig::parse(text).unwrap_err().to_string()
    }

    /// Semantic errors name the line and the field path.
    #[test]
    fn semantic_errors_name_line_and_field() {
        let e = err(
            "[[agents]]\nname = \"a\"\nkind = \"echo\"\n\n[[agents]]\nname = \"b\"\nkind = \"command\"\ncommand = []\n",
        );
        assert!(e.contains("line 8: agents[1].command"), "{e}");
        let e = err("[[agents]]\nname = \"b\"\nkind = \"command\"\n");
        assert!(e.contains("line 1: agents[0].command"), "{e}");
        let e = err("[[agents]]\nname = \"b\"\nkind = \"command\"\ncommand = [\"x\"]\n");
        assert!(
            e.contains("agents[0].command") && e.contains("{prompt}"),
            "{e}"
        );
        let e = err("[[agents]]\nname = \"o\"\nkind = \"openai\"\nmodel = \"m\"\n");
        assert!(e.contains("agents[0].base_url: is required"), "{e}");
        let e = err(
            "[[agents]]\nname = \"o\"\nkind = \"ollama\"\nbase_url = \"localhost\"\nmodel = \"m\"\n",
        );
        assert!(e.contains("line 4: agents[0].base_url"), "{e}");
        let e = err("[[agents]]\nname = \"o\"\nkind = \"openai\"\nbase_url = \"http://h\"\n");
        assert!(e.contains("agents[0].model"), "{e}");
        let e = err("[[agents]]\nname = \"a\"\nkind = \"echo\"\nallowed_roles = [\"root\"]\n");
        assert!(
            e.contains("line 4: agents[0].allowed_roles") && e.contains("root"),
            "{e}"
        );
        let e = err("[[agents]]\nname = \"a\"\nkind = \"echo\"\nmax_concurrent = 0\n");
        assert!(e.contains("agents[0].max_concurrent"), "{e}");
        let e = err(
            "[[agents]]\nname = \"a\"\nkind = \"echo\"\n[[agents]]\nname = \"a\"\nkind = \"echo\"\n",
        );
        assert!(
            e.contains("line 5: agents[1].name") && e.contains("twice"),
            "{e}"
        );
    }

    /// Skills must name known agents and real permissions.
    #[test]
    fn skill_errors_name_line_and_field() {
        let e = err("[[skills]]\nskill_id = \"s\"\nname = \"S\"\nagents = [\"nobody\"]\n");
        assert!(
            e.contains("line 4: skills[0].agents") && e.contains("nobody"),
            "{e}"
        );
        let e = err(
            "[[skills]]\nskill_id = \"s\"\nname = \"S\"\nagents = [\"echo\", \"claude\"]\nrequired_permissions = [\"skill:fly\"]\n",
        );
        assert!(
            e.contains("line 5: skills[0].required_permissions") && e.contains("skill:fly"),
            "{e}"
        );
        let ok = FileConfig::parse(
            "[[agents]]\nname = \"c\"\nkind = \"command\"\ncommand = [\"cat\"]\nstdin = true\n[[skills]]\nskill_id = \"s\"\nname = \"S\"\nagents = [\"c\", \"echo\"]\nrequired_permissions = [\"skill:execute\"]\n",
        );
        assert!(ok.is_ok(), "{ok:?}");
    }

    /// Keys never reach logs.
    #[test]
    fn keys_are_redacted() {
        let cfg = FileConfig::parse("[[agents]]\nname = \"o\"\nkind = \"openai\"\nbase_url = \"http://h\"\nmodel = \"m\"\napi_key = \"sk-very-secret\"\n").unwrap();
        let shown = format!("{cfg:?}");
        assert!(
            !shown.contains("sk-very-secret") && shown.contains("<redacted>"),
            "{shown}"
        );
    }

    /// Passwords never reach logs.
    #[test]
    fn urls_are_redacted() {
        assert_eq!(
            redact_url("postgres://u:secret@h/db"),
            "postgres://u:***@h/db"
        );
        assert_eq!(redact_url("sqlite://x.db"), "sqlite://x.db");
    }
}
