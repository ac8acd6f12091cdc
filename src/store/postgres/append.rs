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

use super::plan::{self, Plan};
use super::{PostgresStore, lock, write};
use crate::error::Result;
use crate::event::StoredEvent;
use crate::store::{Append, Rejected};

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
        let claimant = self.claimant.get();
        let started = claimant.map(|_| plan::started(&batch)).unwrap_or_default();
        let new = plan::inserts(&batch);
        let request = lock::Request {
            sessions: &plan::sessions(&batch),
            tasks: &plan::touched_tasks(&batch),
            claims: new
                .iter()
                .map(|t| claimant.filter(|_| started.contains(&t.task_id)))
                .map(|c| c.map(|c| c.0.as_str()))
                .collect(),
            new: &new,
            lease: claimant.map_or(0.0, |c| c.1),
            audit: batch.iter().any(|a| !a.audit.is_empty()),
        };
        let mut tx = self.pool.begin().await?;
        let held = lock::lock(&mut tx, request).await?;
        let mut plan: Plan = plan::plan(batch, held.locked, &held.inserted, &started);
        let records = std::mem::take(&mut plan.audit);
        let audit = match held.head {
            Some(head) => write::chain(head, records),
            None => write::chain_audit(&mut tx, records).await?,
        };
        write::write(&mut tx, &plan, &audit).await?;
        tx.commit().await?;
        let stored: Vec<StoredEvent> = plan.stored_events().cloned().collect();
        metrics::counter!("switchboard_events_stored_total").increment(stored.len() as u64);
        self.fanout.publish(&stored, &audit);
        Ok(plan.outcomes)
    }
}
