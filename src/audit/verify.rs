//! Checking a hash chain of audit records, incrementally, in stored order.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{AuditRecord, GENESIS};

/// The outcome of checking a chain.
#[derive(
    Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema, schemars::JsonSchema,
)]
pub struct Verification {
    /// Whether every record checked out.
    pub ok: bool,
    /// How many records were checked.
    pub checked: u64,
    /// The hash of the last good record.
    pub head: String,
    /// The first record that does not fit the chain.
    pub first_bad_event_id: Option<Uuid>,
    /// Why it does not fit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// How many signed checkpoints were checked, when a key was available.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoints: Option<u64>,
    /// The seq the kept chain starts at, when the records before it were
    /// pruned (data retention); a checkpoint vouches for this record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_seq: Option<i64>,
}

/// Incremental chain verification, fed records in stored order.
#[derive(Debug)]
pub struct Verifier {
    expected_seq: i64,
    head: String,
    checked: u64,
    bad: Option<(Uuid, String)>,
}

impl Default for Verifier {
    fn default() -> Self {
        Verifier {
            expected_seq: 1,
            head: GENESIS.to_owned(),
            checked: 0,
            bad: None,
        }
    }
}

impl Verifier {
    /// A verifier of a chain kept from `seq` on (the records before were
    /// pruned), whose first record must name `prev_hash`. Only sound when
    /// a signed checkpoint vouches for that first record's hash.
    pub fn resume(seq: i64, prev_hash: &str) -> Self {
        Verifier {
            expected_seq: seq,
            head: prev_hash.to_owned(),
            checked: 0,
            bad: None,
        }
    }

    /// Check the next record. Returns false once the chain is broken.
    pub fn feed(&mut self, r: &AuditRecord) -> bool {
        if self.bad.is_some() {
            return false;
        }
        self.checked += 1;
        let problem = if r.seq != self.expected_seq {
            Some(format!(
                "seq {} where {} was expected",
                r.seq, self.expected_seq
            ))
        } else if r.prev_hash != self.head {
            Some("prev_hash does not match the previous record".to_owned())
        } else if r.compute_hash() != r.hash {
            Some("hash does not match the record's content".to_owned())
        } else {
            None
        };
        match problem {
            Some(reason) => {
                self.bad = Some((r.event_id, reason));
                false
            }
            None => {
                self.expected_seq += 1;
                self.head = r.hash.clone();
                true
            }
        }
    }

    /// The verdict.
    pub fn finish(self) -> Verification {
        Verification {
            ok: self.bad.is_none(),
            checked: self.checked,
            head: self.head,
            first_bad_event_id: self.bad.as_ref().map(|b| b.0),
            reason: self.bad.map(|b| b.1),
            checkpoints: None,
            first_seq: None,
        }
    }
}
