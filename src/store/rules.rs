//! The rules of one append, the same on both backends: whether it applies
//! to its session and task, and what it leaves behind. Each backend finds
//! the session and task as it can (the SQLite writer from memory or a
//! read, PostgreSQL from rows locked for the batch), asks these rules, and
//! writes the outcome in its own dialect. Appends of a batch are decided
//! one after another in batch order, so a task inserted early in a batch
//! can move on later in the same batch.
//!
//! The batch's shape stays per backend on purpose: SQLite's single writer
//! applies each append with cached prepared statements as it decides it
//! (the cheapest there: no per-batch maps or column arrays on the hot
//! path), while PostgreSQL decides the whole batch in memory first
//! (`postgres/plan.rs`) so that it can write it in one round trip.

use crate::event::StoredEvent;
use crate::store::{Append, Rejected, TaskChange};
use crate::task::{Task, TaskState};

/// Whether a new task may go into a session: the session is active and is
/// the task owner's.
pub(crate) fn may_insert(active: bool, owner: &str, task: &Task) -> bool {
    active && owner == task.user_id
}

/// Apply a change to an existing task now in `state`: the state it leaves
/// the task in, or why it is refused (compare-and-set: a transition from
/// another state than the task's, or output while the task is elsewhere).
/// An insert of an existing task is a duplicate.
pub(crate) fn apply(change: &TaskChange, state: TaskState) -> Result<TaskState, Rejected> {
    match change {
        TaskChange::Transition(tr) if tr.from == state => Ok(tr.to),
        TaskChange::Require(want) if *want == state => Ok(state),
        TaskChange::Transition(_) | TaskChange::Require(_) => Err(Rejected::StateIs(state)),
        TaskChange::Insert(_) => Err(Rejected::Duplicate),
    }
}

impl Append {
    /// The event this append became, stored at `seq` (its stream's last
    /// seq plus one).
    pub(crate) fn into_stored(self, seq: i64) -> StoredEvent {
        StoredEvent {
            session_id: self.session_id,
            seq,
            task_id: self.task_id,
            at: self.at,
            body: self.body,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Transition;

    fn step(from: TaskState, to: TaskState) -> TaskChange {
        TaskChange::Transition(Transition {
            from,
            to,
            result: None,
            error: None,
            execution_time: None,
        })
    }

    /// A transition applies only from the state it names; output only in
    /// the state it requires; the refusal says the task's real state.
    #[test]
    fn compare_and_set() {
        use TaskState::{Completed, Pending, Running};
        assert_eq!(apply(&step(Pending, Running), Pending), Ok(Running));
        assert_eq!(
            apply(&step(Pending, Running), Completed),
            Err(Rejected::StateIs(Completed))
        );
        assert_eq!(apply(&TaskChange::Require(Running), Running), Ok(Running));
        assert_eq!(
            apply(&TaskChange::Require(Running), Pending),
            Err(Rejected::StateIs(Pending))
        );
    }
}
