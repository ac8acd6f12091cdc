//! The tasks a host runs for the node, with the same agent code a node
//! runs ([`crate::agent`]), and what it reports about them.
//!
//! Each task numbers its reports from 1. A report stays in the task's
//! outbox until the node acks it, so that after a reconnect the host
//! resends exactly what the node has not stored. The outbox is bounded: an
//! agent that outruns the link waits in [`Context::output`], which for a
//! command agent means its pipe fills and the process pauses.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, MutexGuard};

use futures_util::FutureExt;
use tokio::sync::{Notify, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use super::io::HostIo;
use crate::agent::{AgentError, Answer, Context, Job, Registered};
use crate::protocol::link::{Report, ReportBody, Resume, RunTask};

/// One task on this host.
struct Local {
    agent: String,
    cancel: CancellationToken,
    /// Reports not acked yet, oldest first.
    outbox: VecDeque<Report>,
    next_n: u64,
    /// The highest report number written on the current link.
    sent: u64,
    answer: Option<oneshot::Sender<Answer>>,
    /// Its last report is queued.
    finished: bool,
}

/// The tasks of this host.
pub struct Runner {
    /// A std mutex is right: held for a few map and queue updates, never
    /// across an await.
    tasks: Mutex<HashMap<Uuid, Local>>,
    /// Fires when there is something to send.
    pub wake: Notify,
    /// Fires when acks free room in an outbox.
    room: Notify,
    agents: BTreeMap<String, Arc<Registered>>,
    host: String,
    tracker: TaskTracker,
}

impl Runner {
    /// A runner offering `agents` as host `host`.
    pub fn new(host: &str, agents: BTreeMap<String, Arc<Registered>>) -> Arc<Self> {
        Arc::new(Runner {
            tasks: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            room: Notify::new(),
            agents,
            host: host.to_owned(),
            tracker: TaskTracker::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Uuid, Local>> {
        self.tasks.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The tasks running here now (for `hello`).
    pub fn running_ids(&self) -> Vec<Uuid> {
        self.lock().keys().copied().collect()
    }

    /// How many tasks are here (running, or with reports not yet acked).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no task is here.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Queue a report of `task_id`; `last` marks its final one. False when
    /// the task is gone (stopped) or already finished.
    pub(super) fn push(&self, task_id: Uuid, body: ReportBody, last: bool) -> bool {
        let mut tasks = self.lock();
        let Some(t) = tasks.get_mut(&task_id).filter(|t| !t.finished) else {
            return false;
        };
        t.next_n += 1;
        t.outbox.push_back(Report {
            task_id,
            n: t.next_n,
            body,
        });
        t.finished = last;
        drop(tasks);
        self.wake.notify_one();
        true
    }

    /// Fires when acks free room in an outbox.
    pub(super) fn room(&self) -> &Notify {
        &self.room
    }

    /// How many reports of `task_id` wait for an ack (`None`: it is gone).
    pub(super) fn unacked(&self, task_id: Uuid) -> Option<usize> {
        self.lock().get(&task_id).map(|t| t.outbox.len())
    }

    /// Where the answer to `task_id`'s `wait` goes.
    pub(super) fn expect_answer(&self, task_id: Uuid, tx: oneshot::Sender<Answer>) {
        if let Some(t) = self.lock().get_mut(&task_id) {
            t.answer = Some(tx);
        }
    }

    /// Start a task the node sent.
    pub fn start(self: &Arc<Self>, run: RunTask) {
        let cancel = CancellationToken::new();
        {
            let mut tasks = self.lock();
            if tasks.contains_key(&run.task_id) {
                return; // a repeated `run`
            }
            tasks.insert(
                run.task_id,
                Local {
                    agent: run.agent_type.clone(),
                    cancel: cancel.clone(),
                    outbox: VecDeque::new(),
                    next_n: 0,
                    sent: 0,
                    answer: None,
                    finished: false,
                },
            );
        }
        let Some(reg) = self.agents.get(&run.agent_type).cloned() else {
            let error = format!(
                "host `{}` does not offer agent `{}`",
                self.host, run.agent_type
            );
            self.push(run.task_id, ReportBody::Failed { error }, true);
            return;
        };
        let me = self.clone();
        self.tracker
            .spawn(async move { me.drive(run, reg, cancel).await });
    }

    async fn drive(self: Arc<Self>, run: RunTask, reg: Arc<Registered>, cancel: CancellationToken) {
        let id = run.task_id;
        let _slot = tokio::select! {
            slot = reg.slots.acquire("node") => slot,
            _ = cancel.cancelled() => return,
        };
        if let Err(why) = reg.agent.validate(&run.params) {
            self.push(id, ReportBody::Failed { error: why }, true);
            return;
        }
        status(&format!("task {id} started ({})", run.agent_type));
        let io = Arc::new(HostIo::new(self.clone(), id));
        let ctx = Context::new(io, cancel.clone());
        let job = Job {
            task_id: id,
            prompt: run.prompt,
            params: run.params,
            context: run.context,
        };
        let outcome = tokio::select! {
            out = AssertUnwindSafe(reg.agent.run(job, ctx)).catch_unwind() => out,
            // Dropping the run stops the agent (a command's process group
            // is killed); the node already knows why.
            _ = cancel.cancelled() => return,
        };
        let body = match outcome {
            Ok(Ok(result)) => ReportBody::Completed { result },
            Ok(Err(AgentError::Failed(error))) => ReportBody::Failed { error },
            Ok(Err(AgentError::Stopped)) => ReportBody::Failed {
                error: format!("stopped on host `{}`", self.host),
            },
            Err(_) => ReportBody::Failed {
                error: format!("the agent crashed on host `{}`", self.host),
            },
        };
        let word = match &body {
            ReportBody::Completed { .. } => "completed".to_owned(),
            ReportBody::Failed { error } => format!("failed: {error}"),
            _ => String::new(),
        };
        if self.push(id, body, true) {
            status(&format!("task {id} {word}"));
        }
    }

    /// The node stopped a task: stop its agent and forget it (the node
    /// takes no more reports of it).
    pub fn cancel(&self, task_id: Uuid, reason: &str) {
        if let Some(t) = self.lock().remove(&task_id) {
            t.cancel.cancel();
            if !t.finished {
                status(&format!(
                    "task {task_id} ({}) stopped by the node ({reason})",
                    t.agent
                ));
            }
        }
        self.room.notify_waiters();
    }

    /// A person's answer for a waiting task.
    pub fn answer(&self, task_id: Uuid, answer: Answer) {
        let tx = self.lock().get_mut(&task_id).and_then(|t| t.answer.take());
        if let Some(tx) = tx {
            let _ = tx.send(answer);
        }
    }

    /// The node stored reports of `task_id` up to `n`.
    pub fn ack(&self, task_id: Uuid, n: u64) {
        let mut tasks = self.lock();
        if let Some(t) = tasks.get_mut(&task_id) {
            while t.outbox.front().is_some_and(|r| r.n <= n) {
                t.outbox.pop_front();
            }
            if t.finished && t.outbox.is_empty() {
                tasks.remove(&task_id);
            }
        }
        drop(tasks);
        self.room.notify_waiters();
    }

    /// A new link's `welcome`: tasks the node still expects resume after
    /// what it stored; every other task here is stopped and forgotten.
    pub fn resume(&self, resume: &[Resume]) {
        let mut tasks = self.lock();
        let wanted: HashMap<Uuid, u64> = resume.iter().map(|r| (r.task_id, r.acked)).collect();
        tasks.retain(|id, t| match wanted.get(id) {
            Some(&acked) => {
                while t.outbox.front().is_some_and(|r| r.n <= acked) {
                    t.outbox.pop_front();
                }
                t.sent = acked;
                true
            }
            None => {
                t.cancel.cancel();
                status(&format!(
                    "task {id} stopped: the node no longer expects it (it restarted, or the grace period passed)"
                ));
                false
            }
        });
        tasks.retain(|_, t| !(t.finished && t.outbox.is_empty()));
        drop(tasks);
        self.room.notify_waiters();
        self.wake.notify_one();
    }

    /// Reports not yet written on this link, in order per task.
    pub fn to_send(&self) -> Vec<Report> {
        let mut tasks = self.lock();
        let mut out = Vec::new();
        for t in tasks.values_mut() {
            for r in t.outbox.iter().filter(|r| r.n > t.sent) {
                out.push(r.clone());
            }
            t.sent = t.next_n;
        }
        out
    }

    /// Stop every task and forget it (the node has failed them).
    pub fn abandon_all(&self, why: &str) {
        let mut tasks = self.lock();
        for (id, t) in tasks.drain() {
            t.cancel.cancel();
            status(&format!("task {id} stopped: {why}"));
        }
        drop(tasks);
        self.room.notify_waiters();
    }

    /// Stop every unfinished task and report it failed with `why`; returns
    /// how many there were.
    pub fn fail_all(&self, why: &str) -> usize {
        let ids: Vec<Uuid> = {
            let tasks = self.lock();
            tasks
                .iter()
                .filter(|(_, t)| !t.finished)
                .map(|(id, _)| *id)
                .collect()
        };
        for id in &ids {
            let cancel = self.lock().get(id).map(|t| t.cancel.clone());
            self.push(*id, ReportBody::Failed { error: why.into() }, true);
            if let Some(c) = cancel {
                c.cancel();
            }
        }
        ids.len()
    }

    /// Wait for the task drivers to return (after their tasks stopped).
    pub async fn wait(&self) {
        self.tracker.close();
        self.tracker.wait().await;
    }
}

/// A status line on stderr.
pub fn status(line: &str) {
    eprintln!("switchboard link: {line}");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Long chunks are cut on character boundaries, and nothing is lost.
    #[test]
    fn chunks_split_on_char_boundaries() {
        let text = "aé".repeat(10);
        let parts = super::super::io::split(&text, 4);
        assert!(parts.iter().all(|p| p.len() <= 4));
        assert_eq!(parts.concat(), text);
        assert_eq!(super::super::io::split("", 4), [""]);
    }

    fn runner() -> Arc<Runner> {
        let echo: Arc<dyn crate::agent::Agent> = Arc::new(crate::agent::echo::Echo::default());
        let reg = Arc::new(Registered {
            agent: echo,
            slots: crate::agent::FairQueue::new(4),
            allowed_roles: None,
        });
        Runner::new("h", BTreeMap::from([("echo".to_owned(), reg)]))
    }

    /// Reports are numbered per task, resent after a relink from what the
    /// node stored, and forgotten once the final one is acked.
    #[tokio::test]
    async fn reports_are_numbered_resent_and_forgotten() {
        let r = runner();
        let id = Uuid::new_v4();
        r.start(RunTask {
            task_id: id,
            agent_type: "echo".into(),
            prompt: "abcdef".into(),
            params: serde_json::json!({"chunk_size": 2}),
            context: serde_json::json!({}),
        });
        let mut all = Vec::new();
        while !all
            .iter()
            .any(|x: &Report| matches!(x.body, ReportBody::Completed { .. }))
        {
            r.wake.notified().await;
            all.extend(r.to_send());
        }
        let ns: Vec<u64> = all.iter().map(|x| x.n).collect();
        assert_eq!(ns, [1, 2, 3, 4]);
        // A relink where the node stored only the first two.
        r.resume(&[Resume {
            task_id: id,
            acked: 2,
        }]);
        let again: Vec<u64> = r.to_send().iter().map(|x| x.n).collect();
        assert_eq!(again, [3, 4]);
        r.ack(id, 4);
        assert!(r.is_empty());
        // A task the node no longer expects is dropped at relink.
        let other = Uuid::new_v4();
        r.start(RunTask {
            task_id: other,
            agent_type: "nope".into(),
            prompt: String::new(),
            params: serde_json::json!({}),
            context: serde_json::json!({}),
        });
        r.resume(&[]);
        assert!(r.is_empty());
    }
}
