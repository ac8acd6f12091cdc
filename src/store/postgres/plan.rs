//! The plan of one append batch, decided in memory between reading the
//! locked rows and writing: which appends are refused, the seq of each
//! stored event, and the rows every table gets, in columns ready to bind as
//! `UNNEST` arrays. Pure, so that it is tested without a database.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::audit::NewAudit;
use crate::event::StoredEvent;
use crate::protocol::ws::event_data;
use crate::store::{Append, Rejected, TaskChange, Transition, rules};
use crate::task::{Task, TaskState};

/// A session as its locked row says.
#[derive(Debug, Clone)]
pub(super) struct SessionRow {
    /// Its owner.
    pub user_id: String,
    /// Not ended.
    pub active: bool,
    /// The seq of its newest event.
    pub last_seq: i64,
}

/// What the database holds for the batch's sessions and tasks, read under
/// their row locks.
#[derive(Debug, Default)]
pub(super) struct Locked {
    /// The batch's sessions that exist.
    pub sessions: HashMap<Uuid, SessionRow>,
    /// The state of each existing task the batch changes or requires.
    pub tasks: HashMap<Uuid, TaskState>,
}

/// The `events` rows of a batch, by column.
#[derive(Debug, Default)]
pub(super) struct EventRows {
    pub session_id: Vec<Uuid>,
    pub seq: Vec<i64>,
    pub task_id: Vec<Uuid>,
    pub event_type: Vec<&'static str>,
    /// The event's `data` object, as JSON text.
    pub data: Vec<String>,
    pub at: Vec<DateTime<Utc>>,
}

/// The `sessions` updates of a batch: each stream's new last seq.
#[derive(Debug, Default)]
pub(super) struct SessionUpdates {
    pub session_id: Vec<Uuid>,
    pub last_seq: Vec<i64>,
    pub last_activity: Vec<DateTime<Utc>>,
}

/// The `tasks` updates of a batch: one row per task, the net effect of
/// its transitions in the batch (`None`: keep the stored value).
#[derive(Debug, Default)]
pub(super) struct TaskUpdates {
    pub task_id: Vec<Uuid>,
    pub state: Vec<&'static str>,
    pub result: Vec<Option<String>>,
    pub error: Vec<Option<String>>,
    pub execution_time: Vec<Option<f64>>,
    pub updated_at: Vec<DateTime<Utc>>,
    /// The seq of its last event, once it has ended.
    pub last_seq: Vec<Option<i64>>,
}

impl TaskUpdates {
    /// Fold `tr`, made at `at` and stored as event `seq`, into the task's
    /// row (a later transition wins; a value it leaves out keeps the
    /// earlier one).
    fn fold(
        &mut self,
        rows: &mut HashMap<Uuid, usize>,
        task_id: Uuid,
        tr: &Transition,
        (at, seq): (DateTime<Utc>, i64),
    ) {
        let i = *rows.entry(task_id).or_insert_with(|| {
            self.task_id.push(task_id);
            self.state.push("");
            self.result.push(None);
            self.error.push(None);
            self.execution_time.push(None);
            self.updated_at.push(at);
            self.last_seq.push(None);
            self.task_id.len() - 1
        });
        if tr.to.is_terminal() {
            self.last_seq[i] = Some(seq);
        }
        self.state[i] = tr.to.as_str();
        self.updated_at[i] = at;
        if tr.result.is_some() {
            self.result[i] = tr.result.clone();
        }
        if tr.error.is_some() {
            self.error[i] = tr.error.clone();
        }
        if tr.execution_time.is_some() {
            self.execution_time[i] = tr.execution_time;
        }
    }
}

/// Everything one batch writes, and each append's outcome.
#[derive(Debug, Default)]
pub(super) struct Plan {
    /// Per append, in order: the stored event, or why it was refused.
    pub outcomes: Vec<Result<StoredEvent, Rejected>>,
    pub events: EventRows,
    pub sessions: SessionUpdates,
    pub tasks: TaskUpdates,
    /// The audit records of the stored appends, in order.
    pub audit: Vec<NewAudit>,
    /// Agent types of new pending tasks (each once), to wake their nodes.
    pub pending: Vec<String>,
}

/// Whether an append of a new task may go into its session: the session
/// exists, and [`rules::may_insert`] says yes.
fn may_insert(session: Option<&SessionRow>, t: &Task) -> bool {
    session.is_some_and(|s| rules::may_insert(s.active, &s.user_id, t))
}

/// The new tasks of `batch`. The database inserts those whose session
/// takes them and says which of them are new (not duplicates).
pub(super) fn inserts(batch: &[Append]) -> Vec<&Task> {
    batch
        .iter()
        .filter_map(|a| match &a.change {
            TaskChange::Insert(t) => Some(&**t),
            _ => None,
        })
        .collect()
}

/// The new tasks of `batch` that it also starts (a transition out of
/// `pending` follows their insert): stored claimed by this node.
pub(super) fn started(batch: &[Append]) -> Vec<Uuid> {
    let mut ids = Vec::new();
    for (i, a) in batch.iter().enumerate() {
        if !matches!(a.change, TaskChange::Insert(_)) {
            continue;
        }
        let starts = batch[i + 1..].iter().any(|b| {
            b.task_id == a.task_id
                && matches!(&b.change, TaskChange::Transition(tr) if tr.from == TaskState::Pending)
        });
        if starts {
            ids.push(a.task_id);
        }
    }
    ids
}

/// The task ids whose rows the batch changes or requires (not its inserts),
/// sorted: the order their row locks are taken in.
pub(super) fn touched_tasks(batch: &[Append]) -> Vec<Uuid> {
    let mut ids: Vec<Uuid> = batch
        .iter()
        .filter(|a| !matches!(a.change, TaskChange::Insert(_)))
        .map(|a| a.task_id)
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// Whether `appends` change a task of `new` (inserted by the batch in
/// flight). Such a batch waits for that commit before it locks: its
/// statement then sees those tasks, instead of a second statement reading
/// them ([`super::lock::relock_missing`]). Its session locks would have
/// waited for that commit anyway. (A submitted task's `planning` and
/// `running` usually come in the batch right after its insert: this saved
/// a round trip in most batches of a submit run.)
pub(super) fn changes_any(appends: &[Append], new: &HashSet<Uuid>) -> bool {
    !new.is_empty()
        && appends
            .iter()
            .any(|a| !matches!(a.change, TaskChange::Insert(_)) && new.contains(&a.task_id))
}

/// The sessions of `batch`, sorted: the order their row locks are taken in.
pub(super) fn sessions(batch: &[Append]) -> Vec<Uuid> {
    let mut ids: Vec<Uuid> = batch.iter().map(|a| a.session_id).collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// Decide the batch, applying its appends one after another as the SQLite
/// writer does: `inserted` are the new tasks the database took, `claimed`
/// those of them stored already claimed (no other node is woken for them).
pub(super) fn plan(
    batch: Vec<Append>,
    mut locked: Locked,
    inserted: &[Uuid],
    claimed: &[Uuid],
) -> Plan {
    let mut plan = Plan::default();
    let mut inserted: Vec<Uuid> = inserted.to_vec();
    let mut task_rows = HashMap::new();
    let mut session_rows: HashMap<Uuid, usize> = HashMap::new();
    for a in batch {
        let verdict = decide(&a, &mut locked, &mut inserted);
        let outcome = verdict.map(|()| {
            let session = locked.sessions.get_mut(&a.session_id);
            let seq = session.map_or(0, |s| {
                s.last_seq += 1;
                s.last_seq
            });
            if let TaskChange::Transition(tr) = &a.change {
                plan.tasks.fold(&mut task_rows, a.task_id, tr, (a.at, seq));
            }
            if let TaskChange::Insert(t) = &a.change {
                let waits = t.state == TaskState::Pending && !claimed.contains(&t.task_id);
                if waits && !plan.pending.contains(&t.agent_type) {
                    plan.pending.push(t.agent_type.clone());
                }
            }
            plan.stored(&mut session_rows, a, seq)
        });
        plan.outcomes.push(outcome);
    }
    plan
}

/// Whether one append applies, updating the known task states if it does.
fn decide(a: &Append, locked: &mut Locked, inserted: &mut Vec<Uuid>) -> Result<(), Rejected> {
    let session = locked
        .sessions
        .get(&a.session_id)
        .ok_or(Rejected::NoSession)?;
    match &a.change {
        TaskChange::Insert(t) => {
            if !may_insert(Some(session), t) {
                return Err(Rejected::NoSession);
            }
            // The first append of a new task id is the one inserted.
            let i = inserted.iter().position(|id| *id == t.task_id);
            let Some(i) = i else {
                return Err(Rejected::Duplicate);
            };
            inserted.swap_remove(i);
            locked.tasks.insert(t.task_id, t.state);
            Ok(())
        }
        TaskChange::Transition(_) | TaskChange::Require(_) => {
            let state = locked.tasks.get_mut(&a.task_id).ok_or(Rejected::NoTask)?;
            *state = rules::apply(&a.change, *state)?;
            Ok(())
        }
    }
}

impl Plan {
    /// Record a stored append: its event row, its stream's new last seq,
    /// its audit records; the event it became.
    fn stored(&mut self, rows: &mut HashMap<Uuid, usize>, mut a: Append, seq: i64) -> StoredEvent {
        let audit = std::mem::take(&mut a.audit);
        let event = a.into_stored(seq);
        let ev = &mut self.events;
        ev.session_id.push(event.session_id);
        ev.seq.push(seq);
        ev.task_id.push(event.task_id);
        ev.event_type.push(event.body.type_name());
        ev.data.push(event_data(&event));
        ev.at.push(event.at);
        let s = &mut self.sessions;
        match rows.get(&event.session_id) {
            Some(&i) => {
                s.last_seq[i] = seq;
                s.last_activity[i] = event.at;
            }
            None => {
                rows.insert(event.session_id, s.session_id.len());
                s.session_id.push(event.session_id);
                s.last_seq.push(seq);
                s.last_activity.push(event.at);
            }
        }
        self.audit.extend(audit);
        event
    }

    /// The events stored, in batch order.
    pub(super) fn stored_events(&self) -> impl Iterator<Item = &StoredEvent> {
        self.outcomes.iter().filter_map(|o| o.as_ref().ok())
    }
}

#[cfg(test)]
mod tests;
