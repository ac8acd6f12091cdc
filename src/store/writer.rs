//! Group commit for the event log.
//!
//! Task transitions and output chunks from every running task go through one
//! bounded queue to one writer, which commits whatever is queued in a single
//! transaction (one `fsync` for many events) and then answers each sender. A
//! sender that awaits its answer knows its event is stored and published;
//! when the queue is full, senders wait, which slows agents down instead of
//! growing memory.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::event::StoredEvent;
use crate::store::{Append, Rejected, Store};

/// Most events committed in one transaction.
const MAX_BATCH: usize = 2048;
/// Most events waiting for the writer.
const QUEUE: usize = 4096;

type Reply = oneshot::Sender<Result<Result<StoredEvent, Rejected>>>;

/// A handle to the writer; cheap to clone.
#[derive(Clone, Debug)]
pub struct EventWriter {
    tx: mpsc::Sender<(Append, Reply)>,
}

impl EventWriter {
    /// Start the writer. It runs until `stop` is cancelled and its queue is
    /// empty, so that writes already queued at shutdown still land.
    pub fn spawn(store: Arc<dyn Store>, stop: CancellationToken) -> (Self, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let handle = tokio::spawn(run(store, rx, stop));
        (EventWriter { tx }, handle)
    }

    /// Append one event and wait until it is committed (or refused).
    pub async fn append(&self, append: Append) -> Result<Result<StoredEvent, Rejected>> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send((append, reply))
            .await
            .map_err(|_| Error::Unavailable("the node is shutting down".into()))?;
        answer
            .await
            .map_err(|_| Error::Unavailable("the node is shutting down".into()))?
    }
}

async fn run(
    store: Arc<dyn Store>,
    mut rx: mpsc::Receiver<(Append, Reply)>,
    stop: CancellationToken,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        let first = tokio::select! {
            biased;
            item = rx.recv() => item,
            _ = stop.cancelled() => rx.try_recv().ok(),
        };
        let Some(first) = first else { break };
        batch.push(first);
        drain(&mut rx, &mut batch);
        if batch.len() < MAX_BATCH {
            // Let the tasks woken by the last commit run first: they append
            // their next events now, and those join this batch instead of
            // paying for a commit of their own. Costs nothing when idle.
            tokio::task::yield_now().await;
            drain(&mut rx, &mut batch);
        }
        commit(store.as_ref(), &mut batch).await;
    }
}

/// Move whatever is queued into `batch`, up to [`MAX_BATCH`].
fn drain(rx: &mut mpsc::Receiver<(Append, Reply)>, batch: &mut Vec<(Append, Reply)>) {
    while batch.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(item) => batch.push(item),
            Err(_) => break,
        }
    }
}

async fn commit(store: &dyn Store, batch: &mut Vec<(Append, Reply)>) {
    let (appends, replies): (Vec<_>, Vec<_>) = batch.drain(..).unzip();
    metrics::histogram!("switchboard_commit_batch_size").record(appends.len() as f64);
    let retry = (appends.len() > 1).then(|| appends.clone());
    let started = std::time::Instant::now();
    let outcome = store.append(appends).await;
    metrics::histogram!("switchboard_commit_seconds").record(started.elapsed().as_secs_f64());
    match outcome {
        Ok(results) => {
            for (reply, result) in replies.into_iter().zip(results) {
                let _ = reply.send(Ok(result));
            }
        }
        Err(_) if retry.is_some() => {
            // One bad item must not fail its neighbours: retry one by one.
            for (append, reply) in retry.unwrap_or_default().into_iter().zip(replies) {
                let result = store
                    .append(vec![append])
                    .await
                    .and_then(|mut r| r.pop().ok_or(Error::Internal));
                let _ = reply.send(result);
            }
        }
        Err(e) => {
            if let Some(reply) = replies.into_iter().next() {
                let _ = reply.send(Err(e));
            }
        }
    }
}
