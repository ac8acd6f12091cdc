//! The audit log: append-only, hash-chained records of every security-relevant
//! action.
//!
//! Records are made in one place: operations build a [`NewAudit`] with
//! [`NewAudit::by`] and hand it to the store together with the write it
//! describes, so that both commit in one transaction or neither does. The
//! store assigns `seq`, `prev_hash` and `hash` ([`chain`]) inside that
//! transaction.
//!
//! `hash = hex(SHA-256(canonical JSON of the record without "hash"))`, where
//! canonical JSON has object keys sorted, no whitespace, timestamps as RFC 3339
//! UTC with microseconds, and `prev_hash` of the first record is 64 zeros.
//! `protocol/README.md` shows how to verify a chain in a few lines.
//!
//! Because anyone with write access to the database could recompute an
//! unkeyed chain or cut its tail, the node also writes signed
//! [`checkpoint`]s.

pub mod checkpoint;
mod verify;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::auth::Principal;
use crate::event::{now, rfc3339};
pub use verify::{Verification, Verifier};

/// `prev_hash` of the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The audit event types.
pub mod kind {
    pub const SESSION_CREATED: &str = "session.created";
    pub const SESSION_DELETED: &str = "session.deleted";
    pub const TASK_SUBMITTED: &str = "task.submitted";
    pub const TASK_STARTED: &str = "task.started";
    pub const TASK_COMPLETED: &str = "task.completed";
    pub const TASK_FAILED: &str = "task.failed";
    pub const TASK_CANCELLED: &str = "task.cancelled";
    pub const TASK_RESPONDED: &str = "task.responded";
    /// A task of a lost node went back to `pending` to run again.
    pub const TASK_RERUN: &str = "task.rerun";
    pub const PERMISSION_GRANTED: &str = "permission.granted";
    pub const PERMISSION_REVOKED: &str = "permission.revoked";
    pub const PERMISSION_DENIED: &str = "permission.denied";
    pub const AUTH_FAILED: &str = "auth.failed";
    pub const USER_CREATED: &str = "user.created";
    pub const ROLE_ASSIGNED: &str = "role.assigned";
    pub const ROLE_REVOKED: &str = "role.revoked";
    pub const TOKEN_ISSUED: &str = "token.issued";
    pub const TOKEN_REVOKED: &str = "token.revoked";
    pub const RATE_LIMITED: &str = "rate.limited";
    pub const DEVICE_REGISTERED: &str = "device.registered";
    pub const DEVICE_TRUSTED: &str = "device.trusted";
    pub const DEVICE_REVOKED: &str = "device.revoked";
    pub const DEVICE_UNTRUSTED: &str = "device.untrusted";
    pub const HOST_LINKED: &str = "host.linked";
    pub const HOST_UNLINKED: &str = "host.unlinked";
    pub const PROJECT_CREATED: &str = "project.created";
    pub const PROJECT_UPDATED: &str = "project.updated";
    pub const PROJECT_DELETED: &str = "project.deleted";
    pub const PROJECT_TASK_CREATED: &str = "project_task.created";
    pub const PROJECT_TASK_UPDATED: &str = "project_task.updated";
    pub const PROJECT_TASK_DELETED: &str = "project_task.deleted";
    /// The pruner removed audit records before a signed checkpoint.
    pub const AUDIT_PRUNED: &str = "audit.pruned";
}

/// `success`, `denied` or `failure`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditStatus {
    Success,
    Denied,
    Failure,
}

impl AuditStatus {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            AuditStatus::Success => "success",
            AuditStatus::Denied => "denied",
            AuditStatus::Failure => "failure",
        }
    }
}

/// A record about to be written; the store chains it.
#[derive(Debug, Clone, PartialEq)]
pub struct NewAudit {
    /// Dotted type, one of [`kind`].
    pub event_type: &'static str,
    /// Who acted, when known.
    pub user_id: Option<String>,
    /// In which session, when any.
    pub session_id: Option<Uuid>,
    /// What kind of thing was acted on (`task`, `session`, `user`, ...).
    pub resource_type: Option<String>,
    /// Which one.
    pub resource_id: Option<String>,
    /// What was attempted.
    pub action: String,
    /// How it ended.
    pub status: AuditStatus,
    /// Anything else worth keeping.
    pub details: Value,
    /// When.
    pub timestamp: DateTime<Utc>,
}

impl NewAudit {
    /// A successful action by `who` (or by the node itself when `None`).
    pub fn by(
        who: Option<&Principal>,
        event_type: &'static str,
        action: impl Into<String>,
    ) -> Self {
        let mut details = json!({});
        if let Some(p) = who {
            if let Some(device) = &p.device_id {
                details["device_id"] = json!(device);
            }
            if let Some(peer) = &p.peer {
                details["peer"] = json!(peer);
            }
        }
        NewAudit {
            event_type,
            user_id: who.map(|p| p.user_id.clone()),
            session_id: None,
            resource_type: None,
            resource_id: None,
            action: action.into(),
            status: AuditStatus::Success,
            details,
            timestamp: now(),
        }
    }

    /// For the user `user_id` (who may not be a full principal, e.g. the node).
    pub fn for_user(mut self, user_id: &str) -> Self {
        self.user_id = Some(user_id.to_owned());
        self
    }

    /// The resource acted on.
    pub fn resource(mut self, kind: &str, id: impl ToString) -> Self {
        self.resource_type = Some(kind.to_owned());
        self.resource_id = Some(id.to_string());
        self
    }

    /// The session it happened in.
    pub fn session(mut self, id: Uuid) -> Self {
        self.session_id = Some(id);
        self
    }

    /// How it ended.
    pub fn status(mut self, status: AuditStatus) -> Self {
        self.status = status;
        self
    }

    /// One more detail.
    pub fn detail(mut self, key: &str, value: impl Serialize) -> Self {
        if let Value::Object(map) = &mut self.details {
            map.insert(key.to_owned(), json!(value));
        }
        self
    }

    /// Chain this record after `prev`: the stored record.
    pub fn chain(self, seq: i64, prev_hash: &str) -> AuditRecord {
        let mut record = AuditRecord {
            event_id: Uuid::now_v7(),
            event_type: self.event_type.to_owned(),
            timestamp: self.timestamp,
            user_id: self.user_id,
            session_id: self.session_id,
            resource_type: self.resource_type,
            resource_id: self.resource_id,
            action: self.action,
            status: self.status.as_str().to_owned(),
            details: self.details,
            seq,
            hash: String::new(),
            prev_hash: prev_hash.to_owned(),
        };
        record.hash = record.compute_hash();
        record
    }
}

/// A stored audit record, as listed by the audit API.
#[derive(
    Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema, schemars::JsonSchema,
)]
pub struct AuditRecord {
    pub event_id: Uuid,
    pub event_type: String,
    #[serde(with = "crate::protocol::micros")]
    #[schemars(with = "chrono::DateTime<chrono::Utc>")]
    pub timestamp: DateTime<Utc>,
    pub user_id: Option<String>,
    pub session_id: Option<Uuid>,
    pub resource_type: Option<String>,
    pub resource_id: Option<String>,
    pub action: String,
    pub status: String,
    pub details: Value,
    pub seq: i64,
    pub hash: String,
    pub prev_hash: String,
}

impl AuditRecord {
    /// The canonical bytes the hash covers: every field but `hash`.
    pub fn canonical(&self) -> Vec<u8> {
        // serde_json's map keeps keys sorted, which is what makes this canonical.
        let v = json!({
            "event_id": self.event_id,
            "event_type": self.event_type,
            "timestamp": rfc3339(&self.timestamp),
            "user_id": self.user_id,
            "session_id": self.session_id,
            "resource_type": self.resource_type,
            "resource_id": self.resource_id,
            "action": self.action,
            "status": self.status,
            "details": self.details,
            "seq": self.seq,
            "prev_hash": self.prev_hash,
        });
        serde_json::to_vec(&v).unwrap_or_default()
    }

    /// `hex(SHA-256(canonical))`.
    pub fn compute_hash(&self) -> String {
        hex::encode(Sha256::digest(self.canonical()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: usize) -> Vec<AuditRecord> {
        let mut prev = GENESIS.to_owned();
        (1..=n as i64)
            .map(|seq| {
                let r = NewAudit::by(None, kind::USER_CREATED, "create")
                    .resource("user", seq)
                    .chain(seq, &prev);
                prev = r.hash.clone();
                r
            })
            .collect()
    }

    fn verify(records: &[AuditRecord]) -> Verification {
        let mut v = Verifier::default();
        for r in records {
            v.feed(r);
        }
        v.finish()
    }

    /// An untouched chain verifies; its head is the last hash.
    #[test]
    fn intact_chain_verifies() {
        let c = chain(5);
        let v = verify(&c);
        assert!(v.ok);
        assert_eq!(v.checked, 5);
        assert_eq!(v.head, c[4].hash);
    }

    /// Changing a field, deleting or reordering rows is caught at the right record.
    #[test]
    fn tampering_is_caught() {
        let mut changed = chain(5);
        changed[2].action = "something else".into();
        assert_eq!(
            verify(&changed).first_bad_event_id,
            Some(changed[2].event_id)
        );

        let mut deleted = chain(5);
        deleted.remove(1);
        assert_eq!(
            verify(&deleted).first_bad_event_id,
            Some(deleted[1].event_id)
        );

        let mut reordered = chain(5);
        reordered.swap(1, 3);
        assert_eq!(
            verify(&reordered).first_bad_event_id,
            Some(reordered[1].event_id)
        );
    }

    /// The canonical form has sorted keys and no `hash`.
    #[test]
    fn canonical_form_is_sorted_and_excludes_hash() {
        let r = &chain(1)[0];
        let text = String::from_utf8(r.canonical()).unwrap();
        assert!(text.starts_with("{\"action\":"));
        assert!(!text.contains("\"hash\""));
        assert!(text.contains("\"prev_hash\":\"000"));
    }

    proptest::proptest! {
        /// Any single tampering with any stored row (a field changed, a row
        /// deleted, two rows swapped, a row duplicated) is caught, at the
        /// first record that no longer fits.
        #[test]
        fn any_tampering_is_caught(n in 2usize..40, at in 0usize..40, how in 0u8..7, text in "[a-z]{1,8}") {
            let mut at = at % n;
            if how == 4 && at == n - 1 {
                // Cutting the tail leaves a valid shorter chain: that is what
                // the signed checkpoints are for (tests/audit.rs).
                at = 0;
            }
            let mut c = chain(n);
            let original = c.clone();
            match how {
                0 => c[at].action = format!("{}{text}", c[at].action),
                1 => c[at].user_id = Some(text.clone()),
                2 => c[at].details = json!({"x": text}),
                3 => c[at].timestamp += chrono::Duration::microseconds(1),
                4 => { c.remove(at); }
                5 => { let other = (at + 1) % n; c.swap(at, other); }
                _ => { let dup = c[at].clone(); c.insert(at, dup); }
            }
            let v = verify(&c);
            proptest::prop_assert!(!v.ok);
            let bad = v.first_bad_event_id.unwrap();
            // The first bad record is at or right after the tampered place.
            let pos = c.iter().position(|r| r.event_id == bad).unwrap();
            proptest::prop_assert!(pos <= at + 1, "caught at {} for tampering at {}", pos, at);
            proptest::prop_assert!(verify(&original).ok);
        }
    }
}
