//! Where the node's checkpoint key and file come from: the environment,
//! the `[audit]` table, or files next to the SQLite database.

use std::path::PathBuf;
use std::time::Duration;

use super::{CheckpointConfig, CheckpointKey};
use crate::config::{AuditConfig, suffixed};

impl CheckpointConfig {
    /// Resolve the key and file of `[audit]`: `SWITCHBOARD_AUDIT_KEY`, else
    /// `key_file`, else a key file next to the SQLite database of
    /// `database_url` (created when missing). `None` (checkpoints off) when
    /// there is no key, e.g. on PostgreSQL without a configured one.
    pub fn resolve(audit: &AuditConfig, database_url: &str) -> anyhow::Result<Option<Self>> {
        let beside = crate::store::sqlite_path(database_url).map(PathBuf::from);
        let from_env = std::env::var("SWITCHBOARD_AUDIT_KEY")
            .ok()
            .filter(|k| !k.is_empty());
        let key = match from_env {
            Some(hex) => Some(
                CheckpointKey::from_hex(&hex)
                    .map_err(|e| anyhow::anyhow!("SWITCHBOARD_AUDIT_KEY: {e}"))?,
            ),
            None => match audit
                .key_file
                .clone()
                .or_else(|| beside.as_ref().map(|p| suffixed(p, ".audit-key")))
            {
                Some(path) => Some(CheckpointKey::load_or_create(&path)?),
                None => None,
            },
        };
        let resolved = key.map(|key| CheckpointConfig {
            key,
            file: audit
                .checkpoint_file
                .clone()
                .or_else(|| beside.as_ref().map(|p| suffixed(p, ".checkpoints.jsonl"))),
            every_records: audit.checkpoint_every_records.max(1),
            every: Duration::from_secs(audit.checkpoint_every_secs.max(1)),
        });
        if resolved.is_none() {
            tracing::warn!("no audit key configured: signed audit checkpoints are off");
        }
        Ok(resolved)
    }
}
