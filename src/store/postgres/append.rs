//! Appending a batch of events: one transaction of two statements,
//! whatever the batch's size.
//!
//! 1. lock the batch's sessions, then the tasks it changes, each in id
//!    order, insert its new tasks (claimed by this node when the batch also
//!    starts them) and lock the audit chain's head, reading their seq,
//!    owner and state ([`lock::lock`]);
//! 2. decide every append in memory, in order, as the SQLite writer does
//!    ([`plan::plan`]): refusals, seqs, the net change of each task row;
//!    chain its audit records;
//! 3. store events, session seqs, task rows and audit records, and send one
//!    notification per batch, in one statement ([`write::write`]);
//! 4. commit, then publish to this node's subscribers.
//!
//! Steps 1-3 ([`PostgresStore::prepare`]) and step 4 ([`Prepared::commit`])
//! are apart so that the node's committer ([`super::pipeline`]) prepares
//! the next batch while this one's commit is on its way to disk.

use sqlx::{Postgres, Transaction};

use super::plan::{self, Plan};
use super::{PostgresStore, lock, write};
use crate::audit::AuditRecord;
use crate::error::Result;
use crate::event::StoredEvent;
use crate::store::{Append, Rejected};

/// A batch written and holding its row locks, not yet committed.
pub(super) struct Prepared {
    tx: Transaction<'static, Postgres>,
    plan: Plan,
    audit: Vec<AuditRecord>,
}

impl PostgresStore {
    /// Store `batch` in one transaction; per append, the stored event or
    /// why it was refused.
    pub(super) async fn append_batch(
        &self,
        batch: Vec<Append>,
    ) -> Result<Vec<Result<StoredEvent, Rejected>>> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        Ok(self.prepare(batch).await?.commit().await?.publish(self))
    }

    /// Steps 1 to 3: lock, decide and write `batch` (not empty), leaving
    /// the transaction open with its locks held.
    pub(super) async fn prepare(&self, batch: Vec<Append>) -> Result<Prepared> {
        let claimant = self.claimant.get();
        let started = claimant.map(|_| plan::started(&batch)).unwrap_or_default();
        let new = plan::inserts(&batch);
        let touched = plan::touched_tasks(&batch);
        let request = lock::Request {
            sessions: &plan::sessions(&batch),
            tasks: &touched,
            claims: new
                .iter()
                .map(|t| claimant.filter(|_| started.contains(&t.task_id)))
                .map(|c| c.map(|c| c.0.as_str()))
                .collect(),
            new: &new,
            lease: claimant.map_or(0.0, |c| c.1),
            audit: batch.iter().any(|a| !a.audit.is_empty()),
        };
        let mut tx = self.begin().await?;
        let mut held = lock::lock(&mut tx, request).await?;
        lock::relock_missing(&mut tx, &touched, &held.inserted, &mut held.locked).await?;
        let mut plan: Plan = plan::plan(batch, held.locked, &held.inserted, &started);
        let records = std::mem::take(&mut plan.audit);
        let audit = match held.head {
            Some(head) => write::chain(head, records),
            None => write::chain_audit(&mut tx, records).await?,
        };
        write::write(&mut tx, &plan, &audit).await?;
        Ok(Prepared { tx, plan, audit })
    }
}

impl Prepared {
    /// Step 4: commit.
    pub(super) async fn commit(self) -> Result<Committed> {
        self.tx.commit().await?;
        Ok(Committed {
            plan: self.plan,
            audit: self.audit,
        })
    }
}

/// A batch committed, not yet published.
pub(super) struct Committed {
    plan: Plan,
    audit: Vec<AuditRecord>,
}

impl Committed {
    /// Publish what was stored to `store`'s node; per append, the stored
    /// event or why it was refused.
    pub(super) fn publish(self, store: &PostgresStore) -> Vec<Result<StoredEvent, Rejected>> {
        let stored: Vec<StoredEvent> = self.plan.stored_events().cloned().collect();
        metrics::counter!("switchboard_events_stored_total").increment(stored.len() as u64);
        store.fanout.publish(&stored, &self.audit);
        self.plan.outcomes
    }
}
