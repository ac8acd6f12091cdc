//! Configuration: the `serve` options and the TOML file of `--config`, as
//! plain data. The parts of the node read it; it reaches into none of them
//! (only role and permission names are checked by parsing them as
//! [`crate::rbac`] does). The tables are in [`sections`], the checks TOML
//! cannot express in `check.rs`, `[retention]` in [`retention`].

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

mod check;
mod retention;
pub mod sections;
#[cfg(test)]
mod tests;

pub use retention::{RetentionConfig, Window};
pub use sections::{
    AGENT_KINDS, AgentConfig, AuditConfig, DEFAULT_STREAM_RING, Limits, LinkConfig, Secret,
    SecurityConfig, SkillConfig, TrustPolicy,
};

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
        if let Err(bad) = check::check(&cfg) {
            let line = check::locate(text, bad.table, bad.index, bad.field);
            let path = format!("{}[{}].{}", bad.table, bad.index, bad.field);
            match line {
                Some(line) => anyhow::bail!("line {line}: {path}: {}", bad.message),
                None => anyhow::bail!("{path}: {}", bad.message),
            }
        }
        Ok(cfg)
    }
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
        }
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
