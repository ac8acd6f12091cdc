//! The writer's hot batch: appends, new sessions and audit records applied
//! in one transaction, then published and answered.

use std::time::Instant;

use rusqlite::ErrorCode;

use crate::error::{Error, Result};
use crate::event::{now, rfc3339};
use crate::protocol::ws::publish_session_event;
use crate::store::sqlite::rows::{event_data, event_kind, micros};
use crate::store::sqlite::writer::{Job, SessionSlot, TaskSlot, Writer};
use crate::store::{Append, Rejected, TaskChange, Transition, rules};

/// What applying one hot job gave, kept until the commit.
enum Applied {
    /// An event stored at `seq`, its `data` as stored.
    Event {
        seq: i64,
        data: String,
    },
    Refused(Rejected),
    /// A session or audit job went through (or, `Err`, failed alone).
    Done(Result<()>),
}

impl Writer {
    /// Apply `jobs` (appends, sessions, audit) in one transaction, then
    /// publish and answer. When the transaction fails, each job is tried
    /// again on its own so that one bad job does not fail its neighbours.
    pub(super) fn hot_batch(&mut self, jobs: &mut Vec<Job>) {
        if jobs.is_empty() {
            return;
        }
        let started = Instant::now();
        let n = jobs.len();
        match self.transaction(jobs) {
            Ok(applied) => self.finish(jobs.drain(..), applied),
            Err(e) if n == 1 => {
                for job in jobs.drain(..) {
                    fail(job, e.same());
                }
            }
            Err(_) => {
                for job in std::mem::take(jobs) {
                    let mut one = vec![job];
                    match self.transaction(&one) {
                        Ok(applied) => self.finish(one.drain(..), applied),
                        Err(e) => one.drain(..).for_each(|job| fail(job, e.same())),
                    }
                }
            }
        }
        metrics::histogram!("switchboard_commit_batch_size").record(n as f64);
        metrics::histogram!("switchboard_commit_seconds").record(started.elapsed().as_secs_f64());
    }

    /// Apply and commit; on failure roll back and forget what memory holds.
    fn transaction(&mut self, jobs: &[Job]) -> Result<Vec<Applied>> {
        let run = |w: &mut Writer| -> Result<Vec<Applied>> {
            w.conn.execute_batch("BEGIN IMMEDIATE")?;
            let now_secs = now().timestamp();
            let applied = jobs
                .iter()
                .map(|job| w.apply(job, now_secs))
                .collect::<Result<Vec<_>>>()?;
            w.file_audit_keys()?;
            w.conn.execute_batch("COMMIT")?;
            Ok(applied)
        };
        let outcome = run(self);
        if outcome.is_err() {
            let _ = self.conn.execute_batch("ROLLBACK");
            self.forget();
        }
        outcome
    }

    fn apply(&mut self, job: &Job, now_secs: i64) -> Result<Applied> {
        match job {
            Job::Append(a, _) => self.append(a, now_secs),
            Job::Session(s, audit, _) => {
                if let Err(e) = self.insert_session(s, now_secs) {
                    return Ok(Applied::Done(Err(e)));
                }
                self.audit(audit.clone())?;
                Ok(Applied::Done(Ok(())))
            }
            Job::Audit(records, _) => {
                self.audit(records.clone())?;
                Ok(Applied::Done(Ok(())))
            }
            Job::Write(_) | Job::Flush(_) | Job::Close(_) | Job::Appends(_) | Job::Rest => {
                Err(Error::internal("not a hot job"))
            }
        }
    }

    /// A new session row; a taken id or default slot fails this job alone.
    fn insert_session(&mut self, s: &crate::session::Session, now_secs: i64) -> Result<()> {
        let inserted = self
            .conn
            .prepare_cached(
                "INSERT INTO sessions (session_id, user_id, device_id, created_at, last_activity, \
                 permissions, state, is_default) VALUES (?,?,?,?,?,?,?,?)",
            )?
            .execute(rusqlite::params![
                s.session_id.to_string(),
                s.user_id,
                s.device_id,
                rfc3339(&s.created_at),
                rfc3339(&s.last_activity),
                super::rows::to_json(&s.permissions),
                s.state.as_str(),
                s.is_default,
            ]);
        match inserted {
            Ok(_) => {}
            Err(e) if e.sqlite_error_code() == Some(ErrorCode::ConstraintViolation) => {
                return Err(Error::Conflict("that session already exists".into()));
            }
            Err(e) => return Err(e.into()),
        }
        let slot = SessionSlot {
            sid: self.conn.last_insert_rowid(),
            last_seq: 0,
            user_id: s.user_id.clone(),
            active: s.state == crate::session::SessionState::Active,
            activity: now_secs,
        };
        self.remember_session(s.session_id, slot);
        Ok(())
    }

    /// One event: its task change (if its condition holds), its row, and
    /// its audit records.
    fn append(&mut self, a: &Append, now_secs: i64) -> Result<Applied> {
        let Some(session) = self.session(a.session_id)? else {
            return Ok(Applied::Refused(Rejected::NoSession));
        };
        let (sid, seq) = (session.sid, session.last_seq + 1);
        if let TaskChange::Insert(t) = &a.change {
            if !rules::may_insert(session.active, &session.user_id, t) {
                return Ok(Applied::Refused(Rejected::NoSession));
            }
        }
        let tid = match self.change(a, seq)? {
            Ok(tid) => tid,
            Err(rejected) => return Ok(Applied::Refused(rejected)),
        };
        let data = event_data(&a.body);
        self.conn
            .prepare_cached(
                "INSERT INTO events (sid, seq, tid, at, kind, data) VALUES (?,?,?,?,?,?)",
            )?
            .execute(rusqlite::params![
                sid,
                seq,
                tid,
                micros(&a.at),
                event_kind(&a.body),
                data
            ])?;
        let stale = {
            let Some(session) = self.session(a.session_id)? else {
                return Err(Error::internal("a session vanished inside a transaction"));
            };
            session.last_seq = seq;
            let stale = now_secs - session.activity >= 60;
            if stale {
                session.activity = now_secs;
            }
            stale
        };
        if stale {
            self.conn
                .prepare_cached("UPDATE sessions SET last_activity = ? WHERE sid = ?")?
                .execute(rusqlite::params![rfc3339(&a.at), sid])?;
        }
        self.audit(a.audit.clone())?;
        Ok(Applied::Event { seq, data })
    }

    /// Apply the task side of an append stored as event `seq`; the task's
    /// row id, or why not.
    fn change(&mut self, a: &Append, seq: i64) -> Result<Result<i64, Rejected>> {
        match &a.change {
            TaskChange::Insert(t) => {
                let sid = self
                    .session(a.session_id)?
                    .map(|s| s.sid)
                    .unwrap_or_default();
                let Some(tid) = self.insert_task(t, sid, seq)? else {
                    return Ok(Err(Rejected::Duplicate));
                };
                self.tasks.insert(
                    t.task_id,
                    TaskSlot {
                        tid,
                        state: t.state,
                        user_id: t.user_id.clone(),
                    },
                );
                self.count_active(&t.user_id, 1);
                Ok(Ok(tid))
            }
            TaskChange::Transition(_) | TaskChange::Require(_) => {
                let Some(task) = self.task(a.task_id)? else {
                    return Ok(Err(Rejected::NoTask));
                };
                let next = match rules::apply(&a.change, task.state) {
                    Ok(next) => next,
                    Err(rejected) => {
                        self.forget_if_ended(a.task_id);
                        return Ok(Err(rejected));
                    }
                };
                task.state = next;
                let tid = task.tid;
                if let TaskChange::Transition(tr) = &a.change {
                    self.store_transition(tid, tr, a, seq)?;
                }
                Ok(Ok(tid))
            }
        }
    }

    /// Write a transition, stored as event `seq`, that applied to the task
    /// row `tid`; a task that ends keeps that seq as its last event's
    /// (migration 0008), and leaves memory and its owner's count.
    fn store_transition(&mut self, tid: i64, tr: &Transition, a: &Append, seq: i64) -> Result<()> {
        self.conn
            .prepare_cached(
                "UPDATE task_state SET state = ?, updated_at = ?, \
                 result = COALESCE(?, result), error = COALESCE(?, error), \
                 execution_time = COALESCE(?, execution_time), \
                 last_seq = COALESCE(?, last_seq) WHERE tid = ?",
            )?
            .execute(rusqlite::params![
                tr.to.as_str(),
                rfc3339(&a.at),
                tr.result,
                tr.error,
                tr.execution_time,
                tr.to.is_terminal().then_some(seq),
                tid,
            ])?;
        if tr.to.is_terminal() {
            if let Some(t) = self.tasks.remove(&a.task_id) {
                self.count_active(&t.user_id, -1);
            }
        }
        Ok(())
    }

    /// Ended tasks are not kept in memory.
    fn forget_if_ended(&mut self, task_id: uuid::Uuid) {
        if self
            .tasks
            .get(&task_id)
            .is_some_and(|t| t.state.is_terminal())
        {
            self.tasks.remove(&task_id);
        }
    }

    /// After the commit: publish what was stored, then answer everyone.
    fn finish(&mut self, jobs: impl Iterator<Item = Job>, applied: Vec<Applied>) {
        let mut stored = 0u64;
        let mut replies = Vec::with_capacity(applied.len());
        for (job, applied) in jobs.zip(applied) {
            match (job, applied) {
                (Job::Append(a, reply), Applied::Event { seq, data }) => {
                    stored += 1;
                    let event = a.into_stored(seq);
                    publish_session_event(&self.bus, &event, &data);
                    replies.push((reply.push_ack(), Ok(Ok(event))));
                }
                (Job::Append(_, reply), Applied::Refused(r)) => replies.push((reply, Ok(Err(r)))),
                (Job::Session(_, _, tx) | Job::Audit(_, tx), Applied::Done(r)) => {
                    let _ = tx.send(r);
                }
                (job, _) => fail(job, Error::internal("a job and its outcome disagree")),
            }
        }
        self.publish_audit();
        for (reply, outcome) in replies {
            reply.send(outcome);
        }
        if stored > 0 {
            metrics::counter!("switchboard_events_stored_total").increment(stored);
            metrics::counter!("switchboard_events_published_total").increment(stored);
        }
    }
}

/// Answer a job with an error.
fn fail(job: Job, e: Error) {
    match job {
        Job::Append(_, reply) => reply.send(Err(e)),
        Job::Session(_, _, tx) | Job::Audit(_, tx) => {
            let _ = tx.send(Err(e));
        }
        Job::Appends(all) => {
            for (_, reply) in all {
                reply.send(Err(e.same()));
            }
        }
        Job::Write(f) => {
            // Not reached (cold jobs run apart), but answer rather than hang.
            drop(f);
        }
        Job::Flush(done) | Job::Close(done) => {
            let _ = done.send(());
        }
        Job::Rest => {}
    }
}
