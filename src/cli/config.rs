//! The client's stored servers, tokens and sessions:
//! `$XDG_CONFIG_HOME/switchboard/servers.toml` (else `~/.config/...`), mode
//! 0600 because it holds bearer tokens.
//!
//! ```toml
//! default = "prod"
//!
//! [servers.prod]
//! url = "https://switchboard.example.com"
//! token = "sb_..."
//! ca_cert = "/etc/ssl/private-ca.pem"   # optional: an extra CA to trust
//!
//! # The session each user reuses on each node, so that commands do not
//! # open a new session per connection.
//! [sessions."https://switchboard.example.com"]
//! "dev@team.com" = "7a5ea4c1-..."
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::cli::{CliError, Common, tls};

/// The whole file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ClientConfig {
    /// The name of the server commands use without `--server`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
    /// Servers by name.
    #[serde(default)]
    pub servers: BTreeMap<String, ServerEntry>,
    /// The session each user reuses on each node: node URL → user id →
    /// session id. Kept apart from `servers` because a node used by URL
    /// (`--server URL --token T`) has no entry there.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sessions: BTreeMap<String, BTreeMap<String, Uuid>>,
}

/// One stored server.
#[derive(Clone, Serialize, Deserialize)]
pub struct ServerEntry {
    /// Base URL, `http://host:port`.
    pub url: String,
    /// Bearer token.
    pub token: String,
    /// A PEM file of extra CA certificates to trust for this node (an
    /// absolute path), for a node with a private or self-signed certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_cert: Option<PathBuf>,
}

impl fmt::Debug for ServerEntry {
    // Never print a token by accident.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerEntry")
            .field("url", &self.url)
            .field("token", &"<redacted>")
            .field("ca_cert", &self.ca_cert)
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
        // One temporary file per process: two commands may save at once
        // (each remembering its session), and must not write into the same
        // half-written file. The last rename wins, whole.
        let tmp = path.with_extension(format!("toml.{}.tmp", std::process::id()));
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

/// Which server and token a command uses.
#[derive(Clone)]
pub struct Target {
    /// Base URL without a trailing slash.
    pub url: String,
    /// Bearer token.
    pub token: String,
    /// The TLS configuration, for an `https://` node.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Target")
            .field("url", &self.url)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Target {
    /// A target; for an `https://` URL the TLS configuration trusts the
    /// public roots plus `ca_cert`, which must be a readable PEM file.
    pub fn new(url: String, token: String, ca_cert: Option<&Path>) -> Result<Self, CliError> {
        let tls = if url.starts_with("https://") {
            Some(tls::client_config(ca_cert)?)
        } else {
            None
        };
        Ok(Target { url, token, tls })
    }
}

/// Resolve `--server` / `SWITCHBOARD_SERVER`, `--token` /
/// `SWITCHBOARD_TOKEN` and `--ca-cert` / `SWITCHBOARD_CA_CERT` against the
/// stored config. A flag or variable wins over the file; a URL with no
/// stored token needs `--token`.
pub fn resolve(common: &Common) -> Result<Target, CliError> {
    let file = path()?;
    let config = ClientConfig::load(&file)?;
    let (url, stored) = match common.server.as_deref() {
        Some(s) if looks_like_url(s) => {
            let url = normalize_url(s);
            (url.clone(), config.by_url(&url))
        }
        Some(name) => {
            let (_, e) = config.get(Some(name)).ok_or_else(|| {
                CliError::Usage(format!(
                    "no server named `{name}` in {}; run `switchboard login --server URL --name {name}`",
                    file.display()
                ))
            })?;
            (normalize_url(&e.url), Some(e))
        }
        None => {
            let (_, e) = config.get(None).ok_or_else(|| {
                CliError::Usage(format!(
                    "no server chosen: pass --server URL (or set SWITCHBOARD_SERVER), or run `switchboard login --server URL` first (looked in {})",
                    file.display()
                ))
            })?;
            (normalize_url(&e.url), Some(e))
        }
    };
    let token = common
        .token
        .clone()
        .or_else(|| stored.map(|e| e.token.clone()))
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            CliError::Usage(format!(
                "no token for {url}: pass --token, set SWITCHBOARD_TOKEN, or run `switchboard login --server {url}`"
            ))
        })?;
    let ca_cert = common
        .ca_cert
        .clone()
        .or_else(|| stored.and_then(|e| e.ca_cert.clone()));
    Target::new(url, token, ca_cert.as_deref())
}

/// The session `user_id` reuses on the node at `url`, if one is
/// remembered. An unreadable file remembers nothing.
pub fn remembered_session(url: &str, user_id: &str) -> Option<Uuid> {
    let config = ClientConfig::load(&path().ok()?).ok()?;
    config
        .sessions
        .get(&normalize_url(url))?
        .get(user_id)
        .copied()
}

/// Remember the session `user_id` reuses on the node at `url` (`None`:
/// forget it). The file is only rewritten when something changed.
pub fn remember_session(url: &str, user_id: &str, session: Option<Uuid>) -> Result<(), CliError> {
    let file = path()?;
    let mut config = ClientConfig::load(&file)?;
    let url = normalize_url(url);
    let by_user = config.sessions.entry(url.clone()).or_default();
    let changed = match session {
        Some(id) => by_user.insert(user_id.to_owned(), id) != Some(id),
        None => by_user.remove(user_id).is_some(),
    };
    if by_user.is_empty() {
        config.sessions.remove(&url);
    }
    if changed {
        config.save(&file)?;
    }
    Ok(())
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
                ca_cert: None,
            },
        );
        assert_eq!(c.get(None).unwrap().0, "a");
        c.servers.insert(
            "b".into(),
            ServerEntry {
                url: "http://b:2/".into(),
                token: "u".into(),
                ca_cert: Some("/etc/ca.pem".into()),
            },
        );
        let sid = Uuid::new_v4();
        c.sessions
            .entry("http://b:2".into())
            .or_default()
            .insert("dev@team.com".into(), sid);
        assert!(c.get(None).is_none());
        c.default = Some("b".into());
        assert_eq!(c.get(None).unwrap().0, "b");
        assert_eq!(c.by_url("http://b:2").unwrap().token, "u");
        let text = toml::to_string_pretty(&c).unwrap();
        let back: ClientConfig = toml::from_str(&text).unwrap();
        assert_eq!(back.servers.len(), 2);
        assert_eq!(back.sessions["http://b:2"]["dev@team.com"], sid);
        assert_eq!(
            back.servers["b"].ca_cert.as_deref(),
            Some(Path::new("/etc/ca.pem"))
        );
        // A file written before sessions and CA files existed still loads.
        let old: ClientConfig =
            toml::from_str("[servers.a]\nurl = \"http://a:1\"\ntoken = \"t\"\n").unwrap();
        assert!(old.sessions.is_empty() && old.servers["a"].ca_cert.is_none());
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
