//! The node's committer on PostgreSQL: append batches, two in flight.
//!
//! A batch's commit waits for its WAL flush (`synchronous_commit` stays on:
//! an acknowledged submit is durable), and meanwhile the next batch could
//! be locking, deciding and writing. So the committer prepares batch N+1
//! ([`PostgresStore::prepare`]) as soon as batch N is written, while N's
//! `COMMIT` is on its way, each on its own connection.
//!
//! Order stays the queue's: N+1 is prepared only after N is written, so N
//! already holds every row lock it takes; where N+1 shares a session (or
//! the audit head) with N, its lock waits for N's commit and then reads
//! what N stored. A batch that changes a task N inserts waits for N's
//! commit before it locks, so that its statement sees that task (see
//! [`plan::changes_any`]; [`super::lock::relock_missing`] covers what is
//! left). Batches are published and answered in queue order. A batch that
//! fails before its commit is retried job by job once the batches in
//! flight are done, as [`crate::store::writer`] does; one whose commit
//! fails answers every append with the error.

use std::collections::HashSet;
use std::sync::Arc;

use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::append::Prepared;
use super::{PostgresStore, plan};
use crate::error::Error;
use crate::store::writer::{self, Batch, EventWriter, Reply};

/// Batches prepared or committing at once.
const DEPTH: usize = 2;

/// Start the committer of `store`; it runs until `stop` is cancelled and
/// its queue is empty.
pub(super) fn spawn(
    store: PostgresStore,
    stop: CancellationToken,
) -> (EventWriter, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(writer::QUEUE);
    (EventWriter::batched(tx), tokio::spawn(run(store, rx, stop)))
}

async fn run(store: PostgresStore, mut rx: mpsc::Receiver<writer::Job>, stop: CancellationToken) {
    let slots = Arc::new(Semaphore::new(DEPTH));
    // Resolves once the last batch handed to a commit is answered.
    let mut last: Option<oneshot::Receiver<()>> = None;
    // The new tasks of that batch.
    let mut last_new: HashSet<Uuid> = HashSet::new();
    let mut batch = Batch::default();
    // A slot first, then the batch: while both slots are busy, the queue
    // grows into a bigger batch.
    while let Ok(slot) = slots.clone().acquire_owned().await {
        if !writer::gather(&mut rx, &stop, &mut batch).await {
            break;
        }
        let (appends, replies, jobs) = batch.take();
        if plan::changes_any(&appends, &last_new) {
            settle(&mut last).await;
        }
        last_new = plan::inserts(&appends).iter().map(|t| t.task_id).collect();
        metrics::histogram!("switchboard_commit_batch_size").record(appends.len() as f64);
        let retry = (jobs.len() > 1).then(|| appends.clone());
        let started = std::time::Instant::now();
        match store.prepare(appends).await {
            Ok(prepared) => {
                let (done, next) = oneshot::channel();
                let previous = last.replace(next);
                let store = store.clone();
                tokio::spawn(async move {
                    finish(&store, prepared, replies, previous, started).await;
                    let _ = done.send(());
                    drop(slot);
                });
            }
            Err(e) => {
                drop(slot);
                settle(&mut last).await;
                match retry {
                    Some(appends) => writer::job_by_job(&store, appends, replies, jobs).await,
                    None => writer::answer(replies, Err(e)),
                }
            }
        }
    }
    settle(&mut last).await;
}

/// Wait until every batch handed to a commit is answered.
async fn settle(last: &mut Option<oneshot::Receiver<()>>) {
    if let Some(last) = last.take() {
        let _ = last.await;
    }
}

/// Commit `prepared` (prepared since `started`), wait until the batch before it is answered, then
/// publish and answer this one.
async fn finish(
    store: &PostgresStore,
    prepared: Prepared,
    replies: Vec<Reply>,
    previous: Option<oneshot::Receiver<()>>,
    started: std::time::Instant,
) {
    let committed = prepared.commit().await;
    metrics::histogram!("switchboard_commit_seconds").record(started.elapsed().as_secs_f64());
    if let Some(previous) = previous {
        let _ = previous.await;
    }
    match committed {
        Ok(committed) => writer::answer(replies, Ok(committed.publish(store))),
        Err(e) => {
            tracing::warn!(error = %e, "a batch failed to commit");
            for reply in replies {
                reply.send(Err(Error::Unavailable("the store failed to commit".into())));
            }
        }
    }
}
