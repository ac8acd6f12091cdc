//! The plan of one append batch, decided in memory between reading the
//! locked rows and writing: which appends are refused, the seq of each
//! stored event, and the rows every table gets, in columns ready to bind as
//! `UNNEST` arrays. Pure, so that it is tested without a database.

use std::collections::HashMap;

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
}

impl TaskUpdates {
    /// Fold `tr`, made at `at`, into the task's row (a later transition
    /// wins; a value it leaves out keeps the earlier one).
    fn fold(
        &mut self,
        rows: &mut HashMap<Uuid, usize>,
        task_id: Uuid,
        tr: &Transition,
        at: DateTime<Utc>,
    ) {
        let i = *rows.entry(task_id).or_insert_with(|| {
            self.task_id.push(task_id);
            self.state.push("");
            self.result.push(None);
            self.error.push(None);
            self.execution_time.push(None);
            self.updated_at.push(at);
            self.task_id.len() - 1
        });
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
            if let TaskChange::Transition(tr) = &a.change {
                plan.tasks.fold(&mut task_rows, a.task_id, tr, a.at);
            }
            if let TaskChange::Insert(t) = &a.change {
                let waits = t.state == TaskState::Pending && !claimed.contains(&t.task_id);
                if waits && !plan.pending.contains(&t.agent_type) {
                    plan.pending.push(t.agent_type.clone());
                }
            }
            let session = locked.sessions.get_mut(&a.session_id);
            let seq = session.map_or(0, |s| {
                s.last_seq += 1;
                s.last_seq
            });
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
mod tests {
    use super::*;
    use crate::event::{EventBody, OutputChunk, StateChange, now};
    use serde_json::json;

    fn task(session_id: Uuid, user: &str) -> Task {
        let at = now();
        Task {
            task_id: Uuid::now_v7(),
            execution_uuid: Uuid::new_v4(),
            session_id,
            user_id: user.into(),
            agent_type: "echo".into(),
            prompt: "hi".into(),
            context: json!({}),
            params: json!({}),
            state: TaskState::Pending,
            result: None,
            error: None,
            metadata: json!({}),
            idempotency_key: None,
            created_at: at,
            updated_at: at,
            execution_time: None,
        }
    }

    fn append(session_id: Uuid, task_id: Uuid, change: TaskChange) -> Append {
        Append {
            session_id,
            task_id,
            at: now(),
            body: EventBody::Output(OutputChunk { chunk: "x".into() }),
            change,
            audit: Vec::new(),
        }
    }

    fn insert(t: &Task) -> Append {
        let mut a = append(
            t.session_id,
            t.task_id,
            TaskChange::Insert(Box::new(t.clone())),
        );
        a.body = EventBody::State(StateChange {
            state: TaskState::Pending,
            prev_state: None,
            message: "submitted".into(),
            agent_type: Some(t.agent_type.clone()),
        });
        a
    }

    fn step(t: &Task, from: TaskState, to: TaskState, result: Option<&str>) -> Append {
        let tr = Transition {
            from,
            to,
            result: result.map(Into::into),
            error: None,
            execution_time: None,
        };
        append(t.session_id, t.task_id, TaskChange::Transition(tr))
    }

    fn locked(sessions: &[(Uuid, &str, i64)]) -> Locked {
        let mut l = Locked::default();
        for (id, user, last_seq) in sessions {
            let row = SessionRow {
                user_id: (*user).into(),
                active: true,
                last_seq: *last_seq,
            };
            l.sessions.insert(*id, row);
        }
        l
    }

    fn seqs(plan: &Plan) -> Vec<Result<i64, Rejected>> {
        plan.outcomes
            .iter()
            .map(|o| o.as_ref().map(|e| e.seq).map_err(Clone::clone))
            .collect()
    }

    /// Appends are decided in order: a task inserted in the batch can move
    /// on in the same batch, seqs continue each stream without gaps, and a
    /// refused append takes no seq.
    #[test]
    fn batch_applies_in_order() {
        let (s1, s2) = (Uuid::new_v4(), Uuid::new_v4());
        let (a, b) = (task(s1, "u"), task(s2, "v"));
        let batch = vec![
            insert(&a),
            step(&a, TaskState::Pending, TaskState::Running, None),
            insert(&b),
            step(&a, TaskState::Pending, TaskState::Running, None),
            append(s1, a.task_id, TaskChange::Require(TaskState::Running)),
            step(&a, TaskState::Running, TaskState::Completed, Some("done")),
        ];
        let inserted = [a.task_id, b.task_id];
        let plan = plan(batch, locked(&[(s1, "u", 7), (s2, "v", 0)]), &inserted, &[]);
        assert_eq!(
            seqs(&plan),
            vec![
                Ok(8),
                Ok(9),
                Ok(1),
                Err(Rejected::StateIs(TaskState::Running)),
                Ok(10),
                Ok(11)
            ]
        );
        assert_eq!(plan.events.seq, vec![8, 9, 1, 10, 11]);
        assert_eq!(plan.sessions.session_id, vec![s1, s2]);
        assert_eq!(plan.sessions.last_seq, vec![11, 1]);
        // One row per task, its net change.
        assert_eq!(plan.tasks.task_id, vec![a.task_id]);
        assert_eq!(plan.tasks.state, vec!["completed"]);
        assert_eq!(plan.tasks.result, vec![Some("done".to_owned())]);
        assert_eq!(plan.pending, vec!["echo".to_owned()]);
    }

    /// A new task the database did not take is a duplicate, one in a
    /// session that is not the owner's is refused before it is tried, and
    /// changes to unknown tasks or sessions are refused.
    #[test]
    fn refusals() {
        let (s1, s2) = (Uuid::new_v4(), Uuid::new_v4());
        let mine = task(s1, "u");
        let theirs = task(s1, "intruder");
        let unknown = task(s2, "u");
        let batch = vec![
            insert(&mine),
            insert(&theirs),
            step(&unknown, TaskState::Pending, TaskState::Running, None),
            append(s1, Uuid::new_v4(), TaskChange::Require(TaskState::Running)),
        ];
        let l = locked(&[(s1, "u", 0)]);
        assert_eq!(inserts(&batch).len(), 2);
        // The database took `theirs` by mistake: the plan still refuses it.
        let plan = plan(batch, l, &[theirs.task_id], &[]);
        assert_eq!(
            seqs(&plan),
            vec![
                Err(Rejected::Duplicate),
                Err(Rejected::NoSession),
                Err(Rejected::NoSession),
                Err(Rejected::NoTask)
            ]
        );
        assert!(plan.events.seq.is_empty() && plan.sessions.session_id.is_empty());
    }

    /// A task inserted and started in one batch is claimed with it and
    /// wakes no other node; one left pending does.
    #[test]
    fn started_in_batch() {
        let s1 = Uuid::new_v4();
        let (a, mut b) = (task(s1, "u"), task(s1, "u"));
        b.agent_type = "other".into();
        let batch = vec![
            insert(&a),
            insert(&b),
            step(&a, TaskState::Pending, TaskState::Planning, None),
            step(&a, TaskState::Planning, TaskState::Running, None),
        ];
        assert_eq!(started(&batch), vec![a.task_id]);
        let ids = [a.task_id, b.task_id];
        let plan = plan(batch, locked(&[(s1, "u", 0)]), &ids, &[a.task_id]);
        assert_eq!(plan.events.seq, vec![1, 2, 3, 4]);
        assert_eq!(plan.tasks.state, vec!["running"]);
        assert_eq!(plan.pending, vec!["other".to_owned()]);
    }

    /// Locks are taken in sorted order, each row once, and a batch's own
    /// new tasks are not locked (they do not exist yet).
    #[test]
    fn lock_order() {
        let (s1, s2) = (Uuid::new_v4(), Uuid::new_v4());
        let (a, b) = (task(s2, "u"), task(s1, "u"));
        let batch = vec![
            step(&a, TaskState::Pending, TaskState::Running, None),
            insert(&b),
            step(&a, TaskState::Running, TaskState::Completed, None),
        ];
        let mut want = vec![s1, s2];
        want.sort();
        assert_eq!(sessions(&batch), want);
        assert_eq!(touched_tasks(&batch), vec![a.task_id]);
    }
}
