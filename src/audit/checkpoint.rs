//! Keyed checkpoints of the audit chain.
//!
//! Every N records or T seconds (and at shutdown) the node signs
//! `(seq, head hash, time)` with an Ed25519 key that is not stored in the
//! database (a key file or an environment variable), and writes the
//! checkpoint both to the database and to an append-only file outside it.
//! A verifier holding the public key then detects what the bare chain
//! cannot: a chain recomputed after an edit (the head at a checkpointed seq
//! changes), a truncated tail (a checkpoint names a seq that no longer
//! exists), and forged checkpoints (bad signature).
//!
//! The signed message is the canonical JSON `{"at","head","key_id","seq"}`
//! (sorted keys, no whitespace, `at` in RFC 3339 UTC with microseconds).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier as _, VerifyingKey};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::audit::{AuditRecord, Verification, Verifier};
use crate::error::Result;
use crate::event::{now, rfc3339};
use crate::store::Store;

mod resolve;

/// A signed statement that the chain had `head` at `seq`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The seq of the last record covered.
    pub seq: i64,
    /// That record's hash.
    pub head: String,
    /// When it was signed.
    #[serde(with = "crate::protocol::micros")]
    pub at: DateTime<Utc>,
    /// First 16 hex digits of SHA-256 of the public key.
    pub key_id: String,
    /// Hex Ed25519 signature of [`Checkpoint::message`].
    pub signature: String,
}

impl Checkpoint {
    /// The bytes that are signed.
    pub fn message(seq: i64, head: &str, at: &DateTime<Utc>, key_id: &str) -> Vec<u8> {
        serde_json::to_vec(&json!({"at": rfc3339(at), "head": head, "key_id": key_id, "seq": seq}))
            .unwrap_or_default()
    }

    /// Whether the signature is valid for `key`.
    pub fn verify(&self, key: &VerifyingKey) -> bool {
        let Ok(bytes) = hex::decode(&self.signature) else {
            return false;
        };
        let Ok(sig) = Signature::from_slice(&bytes) else {
            return false;
        };
        self.key_id == key_id(key)
            && key
                .verify(
                    &Self::message(self.seq, &self.head, &self.at, &self.key_id),
                    &sig,
                )
                .is_ok()
    }
}

/// The id of a public key.
pub fn key_id(key: &VerifyingKey) -> String {
    hex::encode(&Sha256::digest(key.as_bytes())[..8])
}

/// The signing key: hex of 32 bytes.
#[derive(Clone)]
pub struct CheckpointKey(SigningKey);

impl std::fmt::Debug for CheckpointKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "CheckpointKey(key_id={}, <redacted>)",
            key_id(&self.public())
        )
    }
}

impl CheckpointKey {
    /// Parse 64 hex digits.
    pub fn from_hex(text: &str) -> anyhow::Result<Self> {
        let bytes: [u8; 32] = hex::decode(text.trim())?
            .try_into()
            .map_err(|_| anyhow::anyhow!("an audit key is 32 bytes (64 hex digits)"))?;
        Ok(CheckpointKey(SigningKey::from_bytes(&bytes)))
    }

    /// Read a key file, creating it (mode 0600) with a fresh key if missing.
    pub fn load_or_create(path: &Path) -> anyhow::Result<Self> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::from_hex(&text)
                .map_err(|e| anyhow::anyhow!("audit key file {}: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = CheckpointKey(SigningKey::from_bytes(&rand::random::<[u8; 32]>()));
                crate::write_secret(path, &hex::encode(key.0.to_bytes()))?;
                Ok(key)
            }
            Err(e) => Err(anyhow::anyhow!(
                "cannot read audit key file {}: {e}",
                path.display()
            )),
        }
    }

    /// The public half.
    pub fn public(&self) -> VerifyingKey {
        self.0.verifying_key()
    }

    /// Sign a checkpoint of `head` at `seq`.
    pub fn sign(&self, seq: i64, head: &str, at: DateTime<Utc>) -> Checkpoint {
        let key_id = key_id(&self.public());
        let sig = self.0.sign(&Checkpoint::message(seq, head, &at, &key_id));
        Checkpoint {
            seq,
            head: head.to_owned(),
            at,
            key_id,
            signature: hex::encode(sig.to_bytes()),
        }
    }
}

/// Parse a public key given as hex.
pub fn public_key_from_hex(text: &str) -> anyhow::Result<VerifyingKey> {
    let bytes: [u8; 32] = hex::decode(text.trim())?
        .try_into()
        .map_err(|_| anyhow::anyhow!("a public key is 32 bytes (64 hex digits)"))?;
    Ok(VerifyingKey::from_bytes(&bytes)?)
}

/// Append one checkpoint to the file (one JSON object per line).
pub fn append_to_file(path: &Path, cp: &Checkpoint) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)?;
    writeln!(f, "{}", serde_json::to_string(cp).unwrap_or_default())?;
    f.sync_data()
}

/// Read a checkpoint file; a line that does not parse is an error.
pub fn read_file(path: &Path) -> anyhow::Result<Vec<Checkpoint>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read checkpoint file {}: {e}", path.display()))?;
    parse_checkpoints(&text, &path.display().to_string())
}

/// Parse the lines of a checkpoint file (`origin` names it in errors).
pub fn parse_checkpoints(text: &str, origin: &str) -> anyhow::Result<Vec<Checkpoint>> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| anyhow::anyhow!("{origin} line {}: {e}", i + 1))
        })
        .collect()
}

/// Where and how often checkpoints are written.
#[derive(Debug, Clone)]
pub struct CheckpointConfig {
    /// The signing key.
    pub key: CheckpointKey,
    /// The append-only file outside the database, if any.
    pub file: Option<PathBuf>,
    /// Checkpoint after this many new records...
    pub every_records: i64,
    /// ...or after this long, when there is anything new.
    pub every: Duration,
}

/// Write a checkpoint of the current head, if it moved since `last`.
pub async fn checkpoint_now(store: &dyn Store, cfg: &CheckpointConfig, last: i64) -> Result<i64> {
    let seq = store.audit_last_seq().await?;
    if seq <= last {
        return Ok(last);
    }
    let Some(head) = store.audit_after(seq - 1, 1).await?.pop() else {
        return Ok(last);
    };
    let cp = cfg.key.sign(head.seq, &head.hash, now());
    store.add_checkpoint(&cp).await?;
    if let Some(file) = &cfg.file {
        if let Err(e) = append_to_file(file, &cp) {
            tracing::error!(error = %e, file = %file.display(), "could not append the audit checkpoint file");
        }
    }
    tracing::debug!(seq = cp.seq, "audit checkpoint written");
    Ok(cp.seq)
}

/// Run until `stop`, then write a last checkpoint.
pub async fn run(store: std::sync::Arc<dyn Store>, cfg: CheckpointConfig, stop: CancellationToken) {
    let mut last = store
        .checkpoints()
        .await
        .ok()
        .and_then(|c| c.last().map(|c| c.seq))
        .unwrap_or(0);
    let mut since = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(500).min(cfg.every));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => break,
        }
        let head = match store.audit_last_seq().await {
            Ok(h) => h,
            Err(_) => continue,
        };
        if head - last >= cfg.every_records || (head > last && since.elapsed() >= cfg.every) {
            match checkpoint_now(store.as_ref(), &cfg, last).await {
                Ok(seq) => {
                    last = seq;
                    since = tokio::time::Instant::now();
                }
                Err(e) => tracing::warn!(error = %e, "audit checkpoint failed"),
            }
        }
    }
    if let Err(e) = checkpoint_now(store.as_ref(), &cfg, last).await {
        tracing::warn!(error = %e, "final audit checkpoint failed");
    }
}

/// Verify the chain of `store` and, with a key, every checkpoint (from the
/// store and from `extra`, typically the file). The first problem wins.
pub async fn verify_with_checkpoints(
    store: &dyn Store,
    key: Option<&VerifyingKey>,
    extra: &[Checkpoint],
) -> Result<Verification> {
    let mut checkpoints = store.checkpoints().await?;
    checkpoints.extend(extra.iter().cloned());
    checkpoints.sort_by_key(|c| c.seq);
    let first = store.audit_after(0, 1).await?.pop();
    let mut chain = match first.as_ref().map(|r| anchor(r, &checkpoints)) {
        None => Verifier::default(),
        Some(Ok(chain)) => chain,
        Some(Err(verdict)) => return Ok(*verdict),
    };
    let first_seq = first.as_ref().map_or(1, |r| r.seq);
    let mut head_at: std::collections::BTreeMap<i64, (String, uuid::Uuid)> = Default::default();
    let wanted: std::collections::BTreeSet<i64> = checkpoints.iter().map(|c| c.seq).collect();
    let mut after = 0;
    let mut last_record: Option<AuditRecord> = None;
    loop {
        let page = store.audit_after(after, 1000).await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        for r in &page {
            if !chain.feed(r) {
                return Ok(chain.finish());
            }
            if wanted.contains(&r.seq) {
                head_at.insert(r.seq, (r.hash.clone(), r.event_id));
            }
        }
        last_record = page.last().cloned();
        if page.len() < 1000 {
            break;
        }
    }
    let mut verdict = chain.finish();
    verdict.first_seq = (first_seq > 1).then_some(first_seq);
    let Some(key) = key else { return Ok(verdict) };
    for cp in &checkpoints {
        let truncated_at = last_record.as_ref().map_or(0, |r| r.seq);
        let problem = checkpoint_problem(cp, key, first_seq, &head_at, truncated_at);
        if let Some((bad, reason)) = problem {
            verdict.ok = false;
            verdict.first_bad_event_id = bad.or(verdict.first_bad_event_id);
            verdict.reason = Some(reason);
            return Ok(verdict);
        }
    }
    verdict.checkpoints = Some(checkpoints.len() as u64);
    Ok(verdict)
}

/// What is wrong with one checkpoint, if anything: the record it names
/// (when there is one) and why. `head_at` holds the hash and id of every
/// kept record a checkpoint names; the log's last record is `last_seq`.
fn checkpoint_problem(
    cp: &Checkpoint,
    key: &VerifyingKey,
    first_seq: i64,
    head_at: &std::collections::BTreeMap<i64, (String, uuid::Uuid)>,
    last_seq: i64,
) -> Option<(Option<uuid::Uuid>, String)> {
    if !cp.verify(key) {
        return Some((
            None,
            format!(
                "checkpoint at seq {} has a bad signature (forged or another key)",
                cp.seq
            ),
        ));
    }
    if cp.seq < first_seq {
        return None; // its record was pruned; the anchor checkpoint vouches for what is kept
    }
    match head_at.get(&cp.seq) {
        None => Some((
            None,
            format!(
                "checkpoint at seq {} names a record that is missing: the log was truncated at seq {last_seq}",
                cp.seq,
            ),
        )),
        Some((hash, id)) if *hash != cp.head => Some((
            Some(*id),
            format!(
                "record {} differs from the signed checkpoint: the chain was rewritten",
                cp.seq
            ),
        )),
        Some(_) => None,
    }
}

/// Where the kept chain starts: at seq 1, or (after a prune) at a record
/// whose hash a checkpoint vouches for, which the verifier then trusts for
/// the `prev_hash` it names. A chain that starts anywhere else lost records
/// that no checkpoint covers: the verdict says so.
fn anchor(
    first: &AuditRecord,
    checkpoints: &[Checkpoint],
) -> std::result::Result<Verifier, Box<Verification>> {
    if first.seq == 1 {
        return Ok(Verifier::default());
    }
    if checkpoints
        .iter()
        .any(|c| c.seq == first.seq && c.head == first.hash)
    {
        return Ok(Verifier::resume(first.seq, &first.prev_hash));
    }
    Err(Box::new(Verification {
        ok: false,
        checked: 0,
        head: crate::audit::GENESIS.to_owned(),
        first_bad_event_id: Some(first.event_id),
        reason: Some(format!(
            "the log starts at seq {} and no checkpoint vouches for that record:              records before it were removed without a checkpoint to cover them",
            first.seq
        )),
        checkpoints: None,
        first_seq: Some(first.seq),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A checkpoint verifies with its key and fails with another, or when
    /// any signed field changes.
    #[test]
    fn signatures_bind_every_field() {
        let key = CheckpointKey::from_hex(&"11".repeat(32)).unwrap();
        let other = CheckpointKey::from_hex(&"22".repeat(32)).unwrap();
        let cp = key.sign(7, "abc", now());
        assert!(cp.verify(&key.public()));
        assert!(!cp.verify(&other.public()));
        let mut moved = cp.clone();
        moved.seq = 8;
        assert!(!moved.verify(&key.public()));
        let mut rehead = cp.clone();
        rehead.head = "abd".into();
        assert!(!rehead.verify(&key.public()));
        let mut junk = cp;
        junk.signature = "zz".into();
        assert!(!junk.verify(&key.public()));
        assert!(!format!("{key:?}").contains(&"11".repeat(32)));
    }
}
