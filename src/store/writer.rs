//! Group commit for the event log.
//!
//! Task transitions and output chunks from every running task go through
//! one bounded queue to one committer, which stores whatever is queued in
//! a single transaction (one `fsync` for many events) and then answers each
//! sender. On SQLite the committer is the store's writer thread
//! ([`super::sqlite`]); on PostgreSQL it is a task here that hands batches
//! to [`Store::append`].
//!
//! Two ways to append: [`EventWriter::append`] waits for the commit (state
//! changes, whose outcome the caller needs), and [`EventWriter::pipeline`]
//! does not (output chunks): order is the queue's and durability the
//! committer's, so a producer goes on at once, with at most a [`Pipe`]'s
//! worth of chunks in flight. When the queue is full, senders wait, which
//! slows agents down instead of growing memory.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::agent::Stopped;
use crate::bus::{Inbox, Item};
use crate::error::{Error, Result};
use crate::event::StoredEvent;
use crate::store::{Append, Rejected, Store};

/// Most events committed in one transaction.
pub const MAX_BATCH: usize = 4096;
/// Most events waiting for the committer.
pub const QUEUE: usize = 8192;
/// Output chunks one task may have in flight (sent, not yet committed).
pub const PIPE_DEPTH: usize = 256;

/// The outcome of one append.
pub type Appended = Result<Result<StoredEvent, Rejected>>;

/// A reply frame for a consumer, pushed to its inbox by the committer as
/// soon as the append is stored: a submit's acknowledgement leaves with the
/// task's first events (one wake-up and one write for both) instead of
/// after a round through the submitting task.
#[derive(Debug)]
pub struct Ack {
    /// The consumer (a WebSocket connection).
    pub inbox: Arc<Inbox>,
    /// The reply it gets when the append is stored.
    pub frame: crate::ws::frame::Frame,
}

/// How the committer answers one append.
#[derive(Debug)]
pub enum Reply {
    /// Someone awaits the stored event.
    Wait(oneshot::Sender<Appended>),
    /// Someone awaits the stored event, and a consumer gets its reply when
    /// it is stored (not when it is refused: the waiter answers then).
    /// (Boxed: every queued event carries a `Reply`.)
    Acked(oneshot::Sender<Appended>, Box<Ack>),
    /// A pipelined chunk: give its slot back, and stop the pipe when the
    /// chunk was refused or could not be stored.
    Pipe(Arc<Pipe>),
}

impl Reply {
    /// Deliver the outcome.
    pub fn send(self, outcome: Appended) {
        match self {
            Reply::Wait(tx) => {
                let _ = tx.send(outcome);
            }
            Reply::Acked(tx, ack) => {
                if matches!(outcome, Ok(Ok(_))) {
                    ack.inbox.push(Item::Reply(ack.frame));
                }
                let _ = tx.send(outcome);
            }
            Reply::Pipe(pipe) => {
                if !matches!(outcome, Ok(Ok(_))) {
                    pipe.stopped.store(true, Ordering::Release);
                }
                pipe.slots.add_permits(1);
            }
        }
    }

    /// The append is stored and published: push the consumer's reply now,
    /// right behind its events, rather than when everyone is answered.
    pub fn push_ack(self) -> Reply {
        match self {
            Reply::Acked(tx, ack) => {
                ack.inbox.push(Item::Reply(ack.frame));
                Reply::Wait(tx)
            }
            other => other,
        }
    }

    /// Whether anyone needs the stored event itself.
    pub fn wants_event(&self) -> bool {
        !matches!(self, Reply::Pipe(_))
    }
}

/// The chunks of one task in flight to the committer.
#[derive(Debug)]
pub struct Pipe {
    slots: Semaphore,
    stopped: AtomicBool,
}

impl Default for Pipe {
    fn default() -> Self {
        Pipe {
            slots: Semaphore::new(PIPE_DEPTH),
            stopped: AtomicBool::new(false),
        }
    }
}

impl Pipe {
    /// Whether a chunk was refused (the task moved on) or lost.
    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }

    /// Wait until every chunk sent so far is committed (or refused).
    pub async fn drained(&self) {
        if let Ok(all) = self.slots.acquire_many(PIPE_DEPTH as u32).await {
            drop(all);
        }
    }
}

/// The promise of a queued append's outcome.
#[derive(Debug)]
pub struct Receipt(oneshot::Receiver<Appended>);

impl Receipt {
    /// Wait for the outcome.
    pub async fn wait(self) -> Appended {
        self.0.await.map_err(|_| gone())?
    }
}

/// Where appends go: a store's own committer, or the batching task here.
#[derive(Clone, Debug)]
enum Sink {
    Sqlite(mpsc::Sender<super::sqlite::Job>),
    Batched(mpsc::Sender<Job>),
}

/// What the batching committer is sent: appends that share a commit
/// (retried together too, should their batch fail).
pub(crate) type Job = Vec<(Append, Reply)>;

/// A handle to the committer; cheap to clone.
#[derive(Clone, Debug)]
pub struct EventWriter {
    sink: Sink,
}

/// The reply for one awaited append, and its receipt.
fn waiter(ack: Option<Ack>) -> (Reply, Receipt) {
    let (tx, rx) = oneshot::channel();
    let reply = match ack {
        Some(ack) => Reply::Acked(tx, Box::new(ack)),
        None => Reply::Wait(tx),
    };
    (reply, Receipt(rx))
}

fn gone() -> Error {
    Error::Unavailable("the node is shutting down".into())
}

impl EventWriter {
    /// A writer into the SQLite store's writer thread.
    pub(crate) fn sqlite(jobs: mpsc::Sender<super::sqlite::Job>) -> Self {
        EventWriter {
            sink: Sink::Sqlite(jobs),
        }
    }

    /// A writer into a store's own batching committer, which receives
    /// what [`gather`] collects.
    pub(crate) fn batched(jobs: mpsc::Sender<Job>) -> Self {
        EventWriter {
            sink: Sink::Batched(jobs),
        }
    }

    /// Start the committer for `store`. It runs until `stop` is cancelled
    /// and its queue is empty, so that writes already queued at shutdown
    /// still land.
    pub fn spawn(store: Arc<dyn Store>, stop: CancellationToken) -> (Self, JoinHandle<()>) {
        if let Some((writer, done)) = store.own_writer(stop.clone()) {
            return (writer, done);
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        let handle = tokio::spawn(run(store, rx, stop));
        (
            EventWriter {
                sink: Sink::Batched(tx),
            },
            handle,
        )
    }

    async fn send(&self, append: Append, reply: Reply) -> Result<()> {
        match &self.sink {
            Sink::Sqlite(tx) => tx
                .send(super::sqlite::Job::Append(append, reply))
                .await
                .map_err(|_| gone()),
            Sink::Batched(tx) => tx.send(vec![(append, reply)]).await.map_err(|_| gone()),
        }
    }

    /// Append one event and wait until it is committed (or refused).
    pub async fn append(&self, append: Append) -> Appended {
        self.queue(append).await?.wait().await
    }

    /// Queue several events at once: they are sure to share a commit. One
    /// receipt each, in order.
    pub async fn queue_all(&self, appends: Vec<Append>) -> Result<Vec<Receipt>> {
        self.queue_all_acked(appends, None).await
    }

    /// [`EventWriter::queue_all`], with `ack` pushed when the first append
    /// is stored.
    pub async fn queue_all_acked(
        &self,
        appends: Vec<Append>,
        mut ack: Option<Ack>,
    ) -> Result<Vec<Receipt>> {
        let mut receipts = Vec::with_capacity(appends.len());
        let mut jobs = Vec::with_capacity(appends.len());
        for append in appends {
            let (reply, receipt) = waiter(ack.take());
            receipts.push(receipt);
            jobs.push((append, reply));
        }
        match &self.sink {
            Sink::Sqlite(tx) => tx
                .send(super::sqlite::Job::Appends(jobs))
                .await
                .map_err(|_| gone())?,
            Sink::Batched(tx) => tx.send(jobs).await.map_err(|_| gone())?,
        }
        Ok(receipts)
    }

    /// Queue one event; the receipt resolves once it is committed (or
    /// refused). Events queued one after another are applied in that order,
    /// usually in one commit.
    pub async fn queue(&self, append: Append) -> Result<Receipt> {
        self.queue_acked(append, None).await
    }

    /// [`EventWriter::queue`], with `ack` pushed when the append is stored.
    pub async fn queue_acked(&self, append: Append, ack: Option<Ack>) -> Result<Receipt> {
        let (reply, receipt) = waiter(ack);
        self.send(append, reply).await?;
        Ok(receipt)
    }

    /// Append one event without waiting for its commit; waits only while
    /// `pipe` is full. `Stopped` once an earlier chunk of the pipe was
    /// refused or could not be stored.
    pub async fn pipeline(&self, append: Append, pipe: &Arc<Pipe>) -> Result<(), Stopped> {
        if pipe.is_stopped() {
            return Err(Stopped);
        }
        let slot = pipe.slots.acquire().await.map_err(|_| Stopped)?;
        slot.forget();
        self.send(append, Reply::Pipe(pipe.clone()))
            .await
            .map_err(|_| Stopped)
    }
}

async fn run(store: Arc<dyn Store>, mut rx: mpsc::Receiver<Job>, stop: CancellationToken) {
    let mut batch = Batch::default();
    while gather(&mut rx, &stop, &mut batch).await {
        commit(store.as_ref(), &mut batch).await;
    }
}

/// Wait for the next batch and gather it into `batch`: false once `stop`
/// is cancelled and the queue is empty.
pub(crate) async fn gather(
    rx: &mut mpsc::Receiver<Job>,
    stop: &CancellationToken,
    batch: &mut Batch,
) -> bool {
    let first = tokio::select! {
        biased;
        item = rx.recv() => item,
        _ = stop.cancelled() => rx.try_recv().ok(),
    };
    let Some(first) = first else { return false };
    batch.push(first);
    drain(rx, batch);
    if batch.items.len() < MAX_BATCH {
        // Let the tasks woken by the last commit run first: they append
        // their next events now, and those join this batch instead of
        // paying for a commit of their own. Costs nothing when idle.
        tokio::task::yield_now().await;
        drain(rx, batch);
    }
    true
}

/// The appends of one commit, and the size of each job they came in.
#[derive(Default)]
pub(crate) struct Batch {
    items: Vec<(Append, Reply)>,
    jobs: Vec<usize>,
}

impl Batch {
    fn push(&mut self, job: Job) {
        self.jobs.push(job.len());
        self.items.extend(job);
    }

    /// Empty the batch: its appends, their replies, and the size of each
    /// job they came in (in order).
    pub(crate) fn take(&mut self) -> (Vec<Append>, Vec<Reply>, Vec<usize>) {
        let (appends, replies) = self.items.drain(..).unzip();
        (appends, replies, std::mem::take(&mut self.jobs))
    }
}

/// Move whatever is queued into `batch`, up to about [`MAX_BATCH`].
fn drain(rx: &mut mpsc::Receiver<Job>, batch: &mut Batch) {
    while batch.items.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(job) => batch.push(job),
            Err(_) => break,
        }
    }
}

async fn commit(store: &dyn Store, batch: &mut Batch) {
    let (appends, replies, jobs) = batch.take();
    metrics::histogram!("switchboard_commit_batch_size").record(appends.len() as f64);
    let retry = (jobs.len() > 1).then(|| appends.clone());
    let started = std::time::Instant::now();
    let outcome = store.append(appends).await;
    metrics::histogram!("switchboard_commit_seconds").record(started.elapsed().as_secs_f64());
    match outcome {
        Err(_) if retry.is_some() => {
            job_by_job(store, retry.unwrap_or_default(), replies, jobs).await;
        }
        outcome => answer(replies, outcome),
    }
}

/// After a failed commit of several jobs: store them job by job, so that
/// one bad job does not fail its neighbours.
pub(crate) async fn job_by_job(
    store: &dyn Store,
    appends: Vec<Append>,
    replies: Vec<Reply>,
    jobs: Vec<usize>,
) {
    let mut appends = appends.into_iter();
    let mut replies = replies.into_iter();
    for len in jobs {
        let job: Vec<Append> = appends.by_ref().take(len).collect();
        let job_replies: Vec<Reply> = replies.by_ref().take(len).collect();
        answer(job_replies, store.append(job).await);
    }
}

/// Answer each append of a commit; when it failed, the first append gets
/// the error (the others' waiters see the writer gone).
pub(crate) fn answer(replies: Vec<Reply>, outcome: Result<Vec<Result<StoredEvent, Rejected>>>) {
    match outcome {
        Ok(results) => {
            for (reply, result) in replies.into_iter().zip(results) {
                reply.send(Ok(result));
            }
        }
        Err(e) => {
            if let Some(reply) = replies.into_iter().next() {
                reply.send(Err(e));
            }
        }
    }
}
