//! The client's stored servers and tokens:
//! `$XDG_CONFIG_HOME/switchboard/servers.toml` (else `~/.config/...`), mode
//! 0600 because it holds bearer tokens.
//!
//! ```toml
//! default = "prod"
//!
//! [servers.prod]
//! url = "https://switchboard.example.com"
//! token = "sb_..."
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::cli::CliError;

/// The whole file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ClientConfig {
    /// The name of the server commands use without `--server`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
    /// Servers by name.
    #[serde(default)]
    pub servers: BTreeMap<String, ServerEntry>,
}

/// One stored server.
#[derive(Clone, Serialize, Deserialize)]
pub struct ServerEntry {
    /// Base URL, `http://host:port`.
    pub url: String,
    /// Bearer token.
    pub token: String,
}

impl fmt::Debug for ServerEntry {
    // Never print a token by accident.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerEntry")
            .field("url", &self.url)
            .field("token", &"<redacted>")
            .finish()
    }
}

/// Where the file lives: `$XDG_CONFIG_HOME/switchboard/servers.toml`, else
/// `$HOME/.config/switchboard/servers.toml`.
pub fn path() -> Result<PathBuf, CliError> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| dirs::home_dir().map(|h| h.join(".config")))
        .ok_or_else(|| CliError::Usage("cannot find a config directory: set HOME".into()))?;
    Ok(base.join("switchboard").join("servers.toml"))
}

impl ClientConfig {
    /// Read the file; a missing file is an empty config.
    pub fn load(path: &Path) -> Result<Self, CliError> {
        match std::fs::read_to_string(path) {
            Ok(text) => toml::from_str(&text)
                .map_err(|e| CliError::Usage(format!("{}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(CliError::Usage(format!(
                "cannot read {}: {e}",
                path.display()
            ))),
        }
    }

    /// Write the file with mode 0600 (created so, never world-readable even
    /// for an instant), replacing it atomically.
    pub fn save(&self, path: &Path) -> Result<(), CliError> {
        use std::io::Write;
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let io =
            |e: std::io::Error| CliError::Usage(format!("cannot write {}: {e}", path.display()));
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let text = toml::to_string_pretty(self).map_err(|e| CliError::Usage(e.to_string()))?;
        let tmp = path.with_extension("toml.tmp");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io)?;
        // An older file may have been created with a wider mode.
        f.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(io)?;
        f.write_all(text.as_bytes()).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }

    /// Look up a server by name, or the default when `name` is `None`.
    pub fn get(&self, name: Option<&str>) -> Option<(&str, &ServerEntry)> {
        let name = match name {
            Some(n) => n,
            None => match &self.default {
                Some(d) => d.as_str(),
                // With a single stored server there is no doubt which.
                None if self.servers.len() == 1 => self.servers.keys().next()?.as_str(),
                None => return None,
            },
        };
        self.servers
            .get_key_value(name)
            .map(|(k, v)| (k.as_str(), v))
    }

    /// The stored server whose URL is `url`, if any.
    pub fn by_url(&self, url: &str) -> Option<&ServerEntry> {
        let url = normalize_url(url);
        self.servers.values().find(|s| normalize_url(&s.url) == url)
    }
}

/// `host:port` → `http://host:port`; no trailing slash.
pub fn normalize_url(url: &str) -> String {
    let url = url.trim().trim_end_matches('/');
    if url.contains("://") {
        url.to_owned()
    } else {
        format!("http://{url}")
    }
}

/// Whether `s` names a URL rather than a stored server.
pub fn looks_like_url(s: &str) -> bool {
    s.contains("://") || s.contains(':') || s.contains('/')
}

/// A name for a server from its URL: its host.
pub fn name_from_url(url: &str) -> String {
    let rest = url.split("://").nth(1).unwrap_or(url);
    let host = rest.split(['/', ':']).next().unwrap_or("default");
    if host.is_empty() {
        "default".into()
    } else {
        host.to_owned()
    }
}

/// Which server and token a command talks to.
#[derive(Clone)]
pub struct Target {
    /// Base URL without a trailing slash.
    pub url: String,
    /// Bearer token.
    pub token: String,
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Target").field("url", &self.url).finish()
    }
}

/// Resolve `--server` / `SWITCHBOARD_SERVER` and `--token` /
/// `SWITCHBOARD_TOKEN` against the stored config. A flag or variable wins
/// over the file; a URL with no stored token needs `--token`.
pub fn resolve(server: Option<&str>, token: Option<&str>) -> Result<Target, CliError> {
    let file = path()?;
    let config = ClientConfig::load(&file)?;
    let (url, stored) = match server {
        Some(s) if looks_like_url(s) => {
            let url = normalize_url(s);
            let stored = config.by_url(&url).map(|e| e.token.clone());
            (url, stored)
        }
        Some(name) => {
            let (_, e) = config.get(Some(name)).ok_or_else(|| {
                CliError::Usage(format!(
                    "no server named `{name}` in {}; run `switchboard login --server URL --name {name}`",
                    file.display()
                ))
            })?;
            (normalize_url(&e.url), Some(e.token.clone()))
        }
        None => {
            let (_, e) = config.get(None).ok_or_else(|| {
                CliError::Usage(format!(
                    "no server chosen: pass --server URL (or set SWITCHBOARD_SERVER), or run `switchboard login --server URL` first (looked in {})",
                    file.display()
                ))
            })?;
            (normalize_url(&e.url), Some(e.token.clone()))
        }
    };
    let token = token
        .map(str::to_owned)
        .or(stored)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            CliError::Usage(format!(
                "no token for {url}: pass --token, set SWITCHBOARD_TOKEN, or run `switchboard login --server {url}`"
            ))
        })?;
    Ok(Target { url, token })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The file round-trips and lookups pick the default or the only server.
    #[test]
    fn lookups() {
        let mut c = ClientConfig::default();
        c.servers.insert(
            "a".into(),
            ServerEntry {
                url: "http://a:1".into(),
                token: "t".into(),
            },
        );
        assert_eq!(c.get(None).unwrap().0, "a");
        c.servers.insert(
            "b".into(),
            ServerEntry {
                url: "http://b:2/".into(),
                token: "u".into(),
            },
        );
        assert!(c.get(None).is_none());
        c.default = Some("b".into());
        assert_eq!(c.get(None).unwrap().0, "b");
        assert_eq!(c.by_url("http://b:2").unwrap().token, "u");
        let text = toml::to_string_pretty(&c).unwrap();
        let back: ClientConfig = toml::from_str(&text).unwrap();
        assert_eq!(back.servers.len(), 2);
        assert!(!format!("{:?}", back).contains("\"u\""));
    }

    /// URLs get a scheme and lose trailing slashes; names come from hosts.
    #[test]
    fn urls() {
        assert_eq!(normalize_url("127.0.0.1:8787/"), "http://127.0.0.1:8787");
        assert_eq!(
            name_from_url("https://sb.example.com:443/x"),
            "sb.example.com"
        );
        assert!(looks_like_url("localhost:8787"));
        assert!(!looks_like_url("prod"));
    }
}
