//! The one thread that writes the SQLite file.
//!
//! Every write of the node comes here as a [`Job`] through one bounded
//! queue. The hot ones (appends, new sessions, audit records) are applied
//! together, as many as are queued, in one transaction: one commit, one
//! `fsync`, then the stored events are published and every sender answered.
//! The rest (user admin, devices, projects) run each in a transaction of
//! their own. Being the only writer, the thread keeps what the hot path
//! needs to decide in memory: each session's last `seq`, each unfinished
//! task's state, the audit chain's head. The database stays the truth: a
//! failed commit clears that memory and it is read back as needed.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;
use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::audit::{AuditRecord, GENESIS, NewAudit};
use crate::bus::Bus;
use crate::error::{Error, Result};
use crate::event::{StreamKey, rfc3339};
use crate::protocol::ws::audit_event_frame;
use crate::session::Session;
use crate::store::sqlite::rows::to_json;
use crate::store::writer::{MAX_BATCH, Reply};
use crate::store::{Append, Task};
use crate::task::TaskState;

/// A write for the writer thread.
pub enum Job {
    /// An event (with its task change and audit records).
    Append(Append, Reply),
    /// Events that must share a commit (a task's insert and first steps).
    Appends(Vec<(Append, Reply)>),
    /// A new session with its audit records.
    Session(Box<Session>, Vec<NewAudit>, oneshot::Sender<Result<()>>),
    /// Audit records on their own.
    Audit(Vec<NewAudit>, oneshot::Sender<Result<()>>),
    /// Any other write, in a transaction of its own.
    Write(WriteFn),
    /// Answer once everything queued before it is committed (shutdown).
    Flush(oneshot::Sender<()>),
    /// The queue has been idle: give memory back (see [`Writer::rest`]).
    Rest,
    /// Commit what came before, close the database and end the thread;
    /// answer once it is closed.
    Close(oneshot::Sender<()>),
}

/// A cold write: runs against the writer, says whether to commit, and is
/// told the commit's outcome.
pub type WriteFn =
    Box<dyn FnOnce(&mut Writer) -> (bool, Box<dyn FnOnce(Result<()>) + Send>) + Send>;

/// After a rest, the batch buffers go with the cache: what a burst grew
/// them to (a batch of a few thousand jobs is a few MB).
fn forget_buffers(resting: bool, jobs: &mut Vec<Job>, hot: &mut Vec<Job>) {
    if resting {
        (*jobs, *hot) = (Vec::new(), Vec::new());
    }
}

/// Move whatever is queued into `jobs`, up to [`MAX_BATCH`].
fn drain(rx: &mut mpsc::Receiver<Job>, jobs: &mut Vec<Job>) {
    while jobs.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(job) => jobs.push(job),
            Err(_) => break,
        }
    }
}

/// What the writer knows of a session.
#[derive(Debug, Clone)]
pub(super) struct SessionSlot {
    pub sid: i64,
    pub last_seq: i64,
    pub user_id: String,
    pub active: bool,
    /// Unix seconds of the `last_activity` last written.
    pub activity: i64,
}

/// What the writer knows of an unfinished task.
#[derive(Debug, Clone)]
pub(super) struct TaskSlot {
    pub tid: i64,
    pub state: TaskState,
    pub user_id: String,
}

/// The writer thread's state.
pub struct Writer {
    pub(super) conn: Connection,
    pub(super) bus: Arc<Bus>,
    /// What it knows of the sessions it wrote for lately.
    sessions: super::sessions::Sessions,
    pub(super) tasks: HashMap<Uuid, TaskSlot>,
    /// Unfinished tasks per user, read by the runtime's admission check.
    pub(super) active: Arc<DashMap<String, i64>>,
    head: Option<(i64, String)>,
    /// How far the audit log's lookup keys are filed.
    pub(super) mark: super::audit_keys::Mark,
    /// Audit records of the open transaction, published after its commit.
    pub(super) audit_out: Vec<AuditRecord>,
    /// Batches served, counted for [`super::rest`]'s watch.
    pub(super) served: Arc<AtomicU64>,
}

impl Writer {
    pub(super) fn new(conn: Connection, bus: Arc<Bus>, active: Arc<DashMap<String, i64>>) -> Self {
        Writer {
            served: Arc::new(AtomicU64::new(0)),
            conn,
            bus,
            sessions: Default::default(),
            tasks: HashMap::new(),
            active,
            head: None,
            mark: Default::default(),
            audit_out: Vec::new(),
        }
    }

    /// Serve jobs on a thread of its own until every sender is gone (the
    /// store and its event writers were dropped).
    pub(super) fn run(mut self, mut rx: mpsc::Receiver<Job>) {
        let (mut jobs, mut hot) = (Vec::new(), Vec::new());
        loop {
            if rx.is_empty() {
                self.sessions.age();
                crate::alloc::collect_when_idle();
            }
            let Some(first) = rx.blocking_recv() else {
                return;
            };
            let resting = self.count(&first);
            jobs.push(first);
            drain(&mut rx, &mut jobs);
            if jobs.len() < 16 {
                // The sender that woke us is often about to send the next
                // step of the same task (a chunk, then the completion):
                // give it a moment to join this commit rather than pay for
                // one of its own.
                std::thread::yield_now();
                drain(&mut rx, &mut jobs);
            }
            if let Some(closed) = self.apply_jobs(&mut jobs, &mut hot) {
                drop(self);
                let _ = closed.send(());
                return;
            }
            forget_buffers(resting, &mut jobs, &mut hot);
        }
    }

    /// Serve jobs as a task of a single-threaded runtime, the way an event
    /// loop commits: what the other tasks queued while this tick ran is
    /// committed at its end, in one transaction, on this thread (which
    /// waits for the `fsync`). No thread hand-over, no wake-ups across
    /// threads; while the commit runs, sockets fill and the next tick takes
    /// what came in all at once.
    pub(super) async fn run_inline(mut self, mut rx: mpsc::Receiver<Job>) {
        let (mut jobs, mut hot) = (Vec::new(), Vec::new());
        loop {
            if rx.is_empty() {
                self.sessions.age();
            }
            let Some(first) = rx.recv().await else {
                return;
            };
            let resting = self.count(&first);
            jobs.push(first);
            // Let every task that is ready run first: what they queue joins
            // this commit.
            tokio::task::yield_now().await;
            drain(&mut rx, &mut jobs);
            if let Some(closed) = self.apply_jobs(&mut jobs, &mut hot) {
                drop(self);
                let _ = closed.send(());
                return;
            }
            forget_buffers(resting, &mut jobs, &mut hot);
        }
    }

    /// Apply what was drained: hot jobs in one transaction, cold ones each
    /// in their own. On [`Job::Close`], what is to be answered once the
    /// database is closed (the caller drops the writer, then answers).
    fn apply_jobs(
        &mut self,
        jobs: &mut Vec<Job>,
        hot: &mut Vec<Job>,
    ) -> Option<oneshot::Sender<()>> {
        for job in jobs.drain(..) {
            match job {
                Job::Write(f) => {
                    self.hot_batch(hot);
                    self.cold(f);
                }
                Job::Flush(done) => {
                    self.hot_batch(hot);
                    let _ = done.send(());
                }
                Job::Rest => {
                    self.hot_batch(hot);
                    self.rest();
                }
                Job::Close(done) => {
                    self.hot_batch(hot);
                    return Some(done);
                }
                Job::Appends(all) => {
                    hot.extend(all.into_iter().map(|(a, r)| Job::Append(a, r)));
                }
                hot_job => hot.push(hot_job),
            }
        }
        self.hot_batch(hot);
        None
    }

    /// Count a batch that starts with `first`, unless it is a rest; says
    /// whether it is.
    fn count(&self, first: &Job) -> bool {
        let resting = matches!(first, Job::Rest);
        if !resting {
            self.served.fetch_add(1, Ordering::Relaxed);
        }
        resting
    }

    /// Run one cold write in its own transaction.
    fn cold(&mut self, f: WriteFn) {
        let head = self.head.clone();
        let outcome = self.conn.execute_batch("BEGIN IMMEDIATE");
        if let Err(e) = outcome {
            let (_, finish) = f(self);
            return finish(Err(e.into()));
        }
        let (ok, finish) = f(self);
        let committed = if ok {
            self.conn.execute_batch("COMMIT").map_err(Error::from)
        } else {
            let _ = self.conn.execute_batch("ROLLBACK");
            Ok(())
        };
        if ok && committed.is_ok() {
            self.publish_audit();
        } else {
            self.head = head;
            self.audit_out.clear();
            if committed.is_err() {
                let _ = self.conn.execute_batch("ROLLBACK");
                self.forget();
            }
        }
        finish(committed);
    }

    /// Forget everything remembered: a transaction failed, so memory may
    /// be ahead of the database.
    pub(super) fn forget(&mut self) {
        self.sessions.clear();
        self.tasks.clear();
        self.head = None;
        self.mark.forget();
        self.audit_out.clear();
        if let Err(e) = super::load_active(&self.conn, &self.active) {
            tracing::error!(error = %e, "could not reload unfinished task counts");
        }
    }

    /// The seq of the newest audit record, when the writer knows it.
    pub(super) fn audit_head(&self) -> Option<i64> {
        self.head.as_ref().map(|(seq, _)| *seq)
    }

    /// Chain `records` onto the audit log inside the open transaction.
    pub fn audit(&mut self, records: Vec<NewAudit>) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let (mut seq, mut prev) = match self.head.take() {
            Some(head) => head,
            None => self
                .conn
                .query_row(
                    "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .or_else(|e| match e {
                    rusqlite::Error::QueryReturnedNoRows => Ok((0, GENESIS.to_owned())),
                    e => Err(e),
                })?,
        };
        let mut stmt = self.conn.prepare_cached(
            "INSERT INTO audit (seq, event_id, event_type, timestamp, user_id, session_id, \
             resource_type, resource_id, action, status, details, hash, prev_hash) \
             VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
        )?;
        for new in records {
            seq += 1;
            let r = new.chain(seq, &prev);
            stmt.execute(rusqlite::params![
                r.seq,
                r.event_id.to_string(),
                r.event_type,
                rfc3339(&r.timestamp),
                r.user_id,
                r.session_id.map(|s| s.to_string()),
                r.resource_type,
                r.resource_id,
                r.action,
                r.status,
                to_json(&r.details),
                r.hash,
                r.prev_hash,
            ])?;
            prev = r.hash.clone();
            self.audit_out.push(r);
        }
        self.head = Some((seq, prev));
        Ok(())
    }

    /// Publish the audit records of the transaction just committed.
    pub(super) fn publish_audit(&mut self) {
        for r in self.audit_out.drain(..) {
            self.bus
                .publish(StreamKey::Audit, r.seq, || audit_event_frame(&r));
        }
    }

    /// The writer's knowledge of a session, read from the database when it
    /// has none; `None` when the session does not exist.
    pub(super) fn session(&mut self, id: Uuid) -> Result<Option<&mut SessionSlot>> {
        if self.sessions.get(id).is_none() {
            match super::load_session(&self.conn, id)? {
                Some(slot) => self.sessions.insert(id, slot),
                None => return Ok(None),
            }
        }
        Ok(self.sessions.get(id))
    }

    /// Remember a session (new, or read back).
    pub(super) fn remember_session(&mut self, id: Uuid, slot: SessionSlot) {
        self.sessions.insert(id, slot);
    }

    /// Forget a session (ended: read it back if it is ever needed).
    pub(super) fn drop_session(&mut self, id: Uuid) {
        self.sessions.remove(id);
    }

    /// The writer's knowledge of an unfinished task, read from the database
    /// when it has none; `None` when the task does not exist.
    pub(super) fn task(&mut self, id: Uuid) -> Result<Option<&mut TaskSlot>> {
        if !self.tasks.contains_key(&id) {
            match super::load_task(&self.conn, id)? {
                Some(slot) => {
                    self.tasks.insert(id, slot);
                }
                None => return Ok(None),
            }
        }
        Ok(self.tasks.get_mut(&id))
    }

    /// Count a task in or out of its owner's unfinished tasks.
    pub(super) fn count_active(&self, user_id: &str, delta: i64) {
        let mut n = self.active.entry(user_id.to_owned()).or_insert(0);
        *n = (*n + delta).max(0);
        if *n == 0 {
            drop(n);
            self.active.remove_if(user_id, |_, n| *n == 0);
        }
    }

    /// A new task's rows; `None` when its id or idempotency key is taken.
    pub(super) fn insert_task(
        &mut self,
        t: &Task,
        sid: i64,
        first_seq: i64,
    ) -> Result<Option<i64>> {
        let inserted = self
            .conn
            .prepare_cached(
                "INSERT INTO tasks (task_id, sid, first_seq, user_id, agent_type, idempotency_key, \
                 created_at, execution_uuid, metadata, context, params, prompt) \
                 VALUES (?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT DO NOTHING",
            )?
            .execute(rusqlite::params![
                t.task_id.to_string(),
                sid,
                first_seq,
                t.user_id,
                t.agent_type,
                t.idempotency_key,
                rfc3339(&t.created_at),
                t.execution_uuid.to_string(),
                to_json(&t.metadata),
                to_json(&t.context),
                to_json(&t.params),
                t.prompt,
            ])?;
        if inserted == 0 {
            return Ok(None);
        }
        let tid = self.conn.last_insert_rowid();
        self.conn
            .prepare_cached(
                "INSERT INTO task_state (tid, state, updated_at, execution_time, error, result) \
                 VALUES (?,?,?,?,?,?)",
            )?
            .execute(rusqlite::params![
                tid,
                t.state.as_str(),
                rfc3339(&t.updated_at),
                t.execution_time,
                t.error,
                t.result,
            ])?;
        Ok(Some(tid))
    }
}
