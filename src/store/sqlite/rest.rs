//! Giving memory back while the writer idles.
//!
//! The writer's page cache fills up to `WRITER_CACHE_KIB` as the database
//! grows, in the C heap, and stays full however long the node is idle:
//! eight rounds of 3,000 short sessions left 4.5 MiB there (measured with
//! `/proc/PID/smaps`). A watch on the runtime sees when the writer has
//! served nothing for a while and queues a [`Job::Rest`]: the writer drops
//! its cache and the C heap is trimmed. The hot path pays one relaxed
//! counter increment per batch; the next commit after a rest reads its few
//! hot pages back from the OS's cache.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::MissedTickBehavior;

use super::writer::{Job, Writer};

/// How often the watch looks: a writer rests within one to two of these
/// after its last batch.
const LOOK_EVERY: Duration = Duration::from_millis(500);

/// Watch `served` (batches served by the writer behind `jobs`) from a task
/// of the current runtime; it ends with the writer's last sender.
pub(super) fn watch(jobs: &mpsc::Sender<Job>, served: Arc<AtomicU64>) {
    let jobs = jobs.downgrade();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(LOOK_EVERY);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut seen = served.load(Ordering::Relaxed);
        let mut rested = true;
        loop {
            tick.tick().await;
            if jobs.strong_count() == 0 {
                return;
            }
            let now = served.load(Ordering::Relaxed);
            if now != seen {
                (seen, rested) = (now, false);
            } else if !rested {
                // A full queue means it is not idle after all: look again.
                rested = jobs
                    .upgrade()
                    .is_some_and(|j| j.try_send(Job::Rest).is_ok());
            }
        }
    });
}

impl Writer {
    /// Drop the page cache and trim the C heap it lived in; the buffers a
    /// burst grew go too (the batch's, in [`Writer::run`]).
    pub(super) fn rest(&mut self) {
        self.audit_out = Vec::new();
        self.tasks.shrink_to_fit();
        if let Err(e) = self.conn.execute_batch("PRAGMA shrink_memory") {
            tracing::warn!(error = %e, "could not release the writer's page cache");
        }
        crate::alloc::trim_c_heap();
    }
}
