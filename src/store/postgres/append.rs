//! Appending a batch of events: one transaction and a fixed number of
//! round trips, whatever the batch's size.
//!
//! 1. lock the batch's sessions, then the tasks it changes, each in id
//!    order, reading their seq, owner and state ([`write::lock`]);
//! 2. insert its new tasks in one statement ([`write::insert_tasks`]);
//! 3. decide every append in memory, in order, as the SQLite writer does
//!    ([`plan::plan`]): refusals, seqs, the net change of each task row;
//! 4. chain its audit records under the chain head's lock;
//! 5. store events, session seqs, task rows and audit records, and send one
//!    notification per batch, in one statement ([`write::write`]);
//! 6. commit, then publish to this node's subscribers.

use super::plan::{self, Plan};
use super::{PostgresStore, write};
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
        let mut tx = self.pool.begin().await?;
        let locked = write::lock(
            &mut tx,
            &plan::sessions(&batch),
            &plan::touched_tasks(&batch),
        )
        .await?;
        let claimant = self.claimant.get();
        let started = claimant.map(|_| plan::started(&batch)).unwrap_or_default();
        let new = plan::inserts(&batch, &locked);
        let inserted = write::insert_tasks(&mut tx, &new, &started, claimant).await?;
        let mut plan: Plan = plan::plan(batch, locked, &inserted, &started);
        let audit = write::chain_audit(&mut tx, std::mem::take(&mut plan.audit)).await?;
        write::write(&mut tx, &plan, &audit).await?;
        tx.commit().await?;
        let stored: Vec<StoredEvent> = plan.stored_events().cloned().collect();
        metrics::counter!("switchboard_events_stored_total").increment(stored.len() as u64);
        self.fanout.publish(&stored, &audit);
        Ok(plan.outcomes)
    }
}
