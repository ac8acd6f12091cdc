//! One batch of appends, planned in memory.
//!
//! A store that holds the only write lock for the whole batch (SQLite's one
//! writer connection) reads each touched task and session row once, decides
//! every compare-and-set and sequence number here, and then writes each row
//! once and all the events in one multi-row insert, instead of three
//! statements per event. The rules are the same as the per-event ones: a
//! refused change consumes no sequence number, and a change sees the effect
//! of the changes before it in the batch.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::store::{Rejected, TaskChange};
use crate::task::TaskState;

/// The columns of a task row that a batch changes.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TaskUpdate {
    /// The state after the batch.
    pub state: TaskState,
    /// The last result set in the batch, if any (`None` keeps the stored one).
    pub result: Option<String>,
    /// The last error set in the batch, if any.
    pub error: Option<String>,
    /// The last execution time set in the batch, if any.
    pub execution_time: Option<f64>,
    /// When the last change happened.
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug)]
struct TaskRow {
    state: TaskState,
    update: Option<TaskUpdate>,
}

#[derive(Debug)]
struct SessionRow {
    last_seq: i64,
    last_activity: Option<DateTime<Utc>>,
}

/// What a batch knows about the rows it touches.
#[derive(Debug, Default)]
pub(crate) struct BatchPlan {
    tasks: HashMap<Uuid, TaskRow>,
    sessions: HashMap<Uuid, SessionRow>,
}

impl BatchPlan {
    /// Start from the stored states of the batch's tasks and the last
    /// sequence numbers of its sessions, as read inside the transaction.
    pub(crate) fn new(
        tasks: impl IntoIterator<Item = (Uuid, TaskState)>,
        sessions: impl IntoIterator<Item = (Uuid, i64)>,
    ) -> Self {
        BatchPlan {
            tasks: tasks
                .into_iter()
                .map(|(id, state)| {
                    (
                        id,
                        TaskRow {
                            state,
                            update: None,
                        },
                    )
                })
                .collect(),
            sessions: sessions
                .into_iter()
                .map(|(id, last_seq)| {
                    let row = SessionRow {
                        last_seq,
                        last_activity: None,
                    };
                    (id, row)
                })
                .collect(),
        }
    }

    /// Record a task row the batch has just inserted.
    pub(crate) fn inserted(&mut self, task_id: Uuid, state: TaskState) {
        self.tasks.insert(
            task_id,
            TaskRow {
                state,
                update: None,
            },
        );
    }

    /// Check a transition or a requirement against the task's state as of
    /// the changes before it, and apply it. Inserts are the store's to do
    /// (they need the unique indexes); this refuses them.
    pub(crate) fn apply(
        &mut self,
        task_id: Uuid,
        change: &TaskChange,
        at: DateTime<Utc>,
    ) -> Result<(), Rejected> {
        let row = self.tasks.get_mut(&task_id).ok_or(Rejected::NoTask)?;
        match change {
            TaskChange::Insert(_) => Err(Rejected::Duplicate),
            TaskChange::Require(want) if row.state == *want => Ok(()),
            TaskChange::Require(_) => Err(Rejected::StateIs(row.state)),
            TaskChange::Transition(t) if row.state != t.from => Err(Rejected::StateIs(row.state)),
            TaskChange::Transition(t) => {
                row.state = t.to;
                let update = row.update.get_or_insert(TaskUpdate {
                    state: t.to,
                    result: None,
                    error: None,
                    execution_time: None,
                    updated_at: at,
                });
                update.state = t.to;
                update.updated_at = at;
                update.result = t.result.clone().or(update.result.take());
                update.error = t.error.clone().or(update.error.take());
                update.execution_time = t.execution_time.or(update.execution_time);
                Ok(())
            }
        }
    }

    /// The next sequence number of a session's stream, or `None` when the
    /// session does not exist.
    pub(crate) fn next_seq(&mut self, session_id: Uuid, at: DateTime<Utc>) -> Option<i64> {
        let row = self.sessions.get_mut(&session_id)?;
        row.last_seq += 1;
        row.last_activity = Some(at);
        Some(row.last_seq)
    }

    /// The task rows to write back.
    pub(crate) fn task_updates(&self) -> impl Iterator<Item = (Uuid, &TaskUpdate)> {
        self.tasks
            .iter()
            .filter_map(|(id, row)| row.update.as_ref().map(|u| (*id, u)))
    }

    /// The session rows to write back: last sequence number and activity.
    pub(crate) fn session_updates(&self) -> impl Iterator<Item = (Uuid, i64, DateTime<Utc>)> {
        self.sessions
            .iter()
            .filter_map(|(id, row)| row.last_activity.map(|at| (*id, row.last_seq, at)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Transition;

    fn transition(from: TaskState, to: TaskState) -> TaskChange {
        TaskChange::Transition(Transition {
            from,
            to,
            result: None,
            error: None,
            execution_time: None,
        })
    }

    #[test]
    fn changes_see_the_changes_before_them() {
        let task = Uuid::new_v4();
        let mut plan = BatchPlan::new([(task, TaskState::Pending)], []);
        let now = Utc::now();
        use TaskState::*;
        assert_eq!(
            plan.apply(task, &transition(Pending, Planning), now),
            Ok(())
        );
        assert_eq!(
            plan.apply(task, &transition(Pending, Planning), now),
            Err(Rejected::StateIs(Planning))
        );
        assert_eq!(
            plan.apply(task, &TaskChange::Require(Running), now),
            Err(Rejected::StateIs(Planning))
        );
        assert_eq!(
            plan.apply(task, &transition(Planning, Running), now),
            Ok(())
        );
        assert_eq!(plan.apply(task, &TaskChange::Require(Running), now), Ok(()));
        let updates: Vec<_> = plan.task_updates().collect();
        assert_eq!(updates.len(), 1);
        assert_eq!(updates[0].1.state, Running);
        assert_eq!(
            plan.apply(Uuid::new_v4(), &TaskChange::Require(Running), now),
            Err(Rejected::NoTask)
        );
    }

    #[test]
    fn result_and_error_keep_the_last_value_set() {
        let task = Uuid::new_v4();
        let mut plan = BatchPlan::new([(task, TaskState::Running)], []);
        let now = Utc::now();
        let done = TaskChange::Transition(Transition {
            from: TaskState::Running,
            to: TaskState::Completed,
            result: Some("all".into()),
            error: None,
            execution_time: Some(1.5),
        });
        plan.apply(task, &done, now).unwrap();
        let (_, update) = plan.task_updates().next().unwrap();
        assert_eq!(update.result.as_deref(), Some("all"));
        assert_eq!(update.error, None);
        assert_eq!(update.execution_time, Some(1.5));
    }

    #[test]
    fn sequence_numbers_rise_by_one_per_session() {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let mut plan = BatchPlan::new([], [(a, 7), (b, 0)]);
        let now = Utc::now();
        assert_eq!(plan.next_seq(a, now), Some(8));
        assert_eq!(plan.next_seq(b, now), Some(1));
        assert_eq!(plan.next_seq(a, now), Some(9));
        assert_eq!(plan.next_seq(Uuid::new_v4(), now), None);
        let mut updates: Vec<_> = plan
            .session_updates()
            .map(|(id, seq, _)| (id, seq))
            .collect();
        updates.sort_by_key(|(_, seq)| *seq);
        assert_eq!(updates, vec![(b, 1), (a, 9)]);
    }
}
