//! The task state machine, as a pure function.
//!
//! ```text
//! pending → planning → running ⇄ waiting
//! running → completed | failed
//! any non-terminal → cancelled ;  pending | planning | waiting → failed
//! planning | running | waiting → pending   (re-run: its node was lost)
//! ```

use serde::{Deserialize, Serialize};

use crate::names::wire_names;

/// Where a task is in its life. Lowercase on the wire.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
    schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    Pending,
    Planning,
    Running,
    Waiting,
    Completed,
    Failed,
    Cancelled,
}

impl TaskState {
    /// Every state.
    pub const ALL: [TaskState; 7] = [
        TaskState::Pending,
        TaskState::Planning,
        TaskState::Running,
        TaskState::Waiting,
        TaskState::Completed,
        TaskState::Failed,
        TaskState::Cancelled,
    ];

    /// `completed`, `failed` and `cancelled` end a task.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskState::Completed | TaskState::Failed | TaskState::Cancelled
        )
    }

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Pending => "pending",
            TaskState::Planning => "planning",
            TaskState::Running => "running",
            TaskState::Waiting => "waiting",
            TaskState::Completed => "completed",
            TaskState::Failed => "failed",
            TaskState::Cancelled => "cancelled",
        }
    }

    /// Apply `event`, or say why it cannot be applied. Never panics.
    pub fn apply(self, event: TaskEvent) -> Result<TaskState, InvalidTransition> {
        use TaskEvent as E;
        use TaskState as S;
        let next = match (self, event) {
            (S::Pending, E::Plan) => S::Planning,
            (S::Planning, E::Run) => S::Running,
            (S::Running, E::Wait) => S::Waiting,
            (S::Waiting, E::Resume) => S::Running,
            (S::Running, E::Complete) => S::Completed,
            (S::Pending | S::Planning | S::Running | S::Waiting, E::Fail) => S::Failed,
            (S::Pending | S::Planning | S::Running | S::Waiting, E::Cancel) => S::Cancelled,
            (S::Planning | S::Running | S::Waiting, E::Rerun) => S::Pending,
            (from, event) => return Err(InvalidTransition { from, event }),
        };
        Ok(next)
    }
}

wire_names!(TaskState, String, |s: &str| format!(
    "unknown task state `{s}`"
));

/// What can happen to a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TaskEvent {
    /// The engine picked the task up.
    Plan,
    /// The agent starts working.
    Run,
    /// The agent needs an answer from a person.
    Wait,
    /// The answer came.
    Resume,
    /// The agent finished successfully.
    Complete,
    /// The agent, or the node, gave up.
    Fail,
    /// A user stopped the task.
    Cancel,
    /// The node running it was lost and its agent may run a task again
    /// (`rerun_on_node_loss`): back to `pending`, to start over elsewhere.
    Rerun,
}

impl TaskEvent {
    /// Every event.
    pub const ALL: [TaskEvent; 8] = [
        TaskEvent::Plan,
        TaskEvent::Run,
        TaskEvent::Wait,
        TaskEvent::Resume,
        TaskEvent::Complete,
        TaskEvent::Fail,
        TaskEvent::Cancel,
        TaskEvent::Rerun,
    ];
}

/// A transition the state machine forbids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a {from} task cannot {event:?}")]
pub struct InvalidTransition {
    /// The state the task is in.
    pub from: TaskState,
    /// What was asked of it.
    pub event: TaskEvent,
}

#[cfg(test)]
mod tests {
    use super::*;
    use TaskEvent as E;
    use TaskState as S;
    use proptest::prelude::*;

    /// The complete table of allowed transitions; everything else is refused.
    const ALLOWED: &[(TaskState, TaskEvent, TaskState)] = &[
        (S::Pending, E::Plan, S::Planning),
        (S::Planning, E::Run, S::Running),
        (S::Running, E::Wait, S::Waiting),
        (S::Waiting, E::Resume, S::Running),
        (S::Running, E::Complete, S::Completed),
        (S::Pending, E::Fail, S::Failed),
        (S::Planning, E::Fail, S::Failed),
        (S::Running, E::Fail, S::Failed),
        (S::Waiting, E::Fail, S::Failed),
        (S::Pending, E::Cancel, S::Cancelled),
        (S::Planning, E::Cancel, S::Cancelled),
        (S::Running, E::Cancel, S::Cancelled),
        (S::Waiting, E::Cancel, S::Cancelled),
        (S::Planning, E::Rerun, S::Pending),
        (S::Running, E::Rerun, S::Pending),
        (S::Waiting, E::Rerun, S::Pending),
    ];

    /// Every (state, event) pair: allowed ones land where the table says,
    /// all others are errors naming the state and event.
    #[test]
    fn every_pair_is_allowed_or_refused_exactly_as_specified() {
        for from in TaskState::ALL {
            for event in TaskEvent::ALL {
                let expected = ALLOWED
                    .iter()
                    .find(|(f, e, _)| *f == from && *e == event)
                    .map(|(_, _, to)| *to);
                match (from.apply(event), expected) {
                    (Ok(got), Some(want)) => assert_eq!(got, want, "{from:?} + {event:?}"),
                    (Err(err), None) => assert_eq!(err, InvalidTransition { from, event }),
                    (got, want) => panic!("{from:?} + {event:?}: got {got:?}, want {want:?}"),
                }
            }
        }
    }

    /// Terminal states accept nothing.
    #[test]
    fn terminal_states_are_final() {
        for from in TaskState::ALL.into_iter().filter(|s| s.is_terminal()) {
            for event in TaskEvent::ALL {
                assert!(from.apply(event).is_err());
            }
        }
    }

    /// Wire names round-trip.
    #[test]
    fn names_round_trip() {
        for s in TaskState::ALL {
            assert_eq!(s.as_str().parse::<TaskState>().unwrap(), s);
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
    }

    fn any_event() -> impl Strategy<Value = TaskEvent> {
        proptest::sample::select(TaskEvent::ALL.to_vec())
    }

    proptest! {
        /// Any sequence of events, applied where allowed, walks only allowed
        /// edges, never leaves a terminal state, and reaches a terminal state
        /// at most once.
        #[test]
        fn random_walks_stay_on_allowed_edges(events in proptest::collection::vec(any_event(), 0..64)) {
            let mut state = TaskState::Pending;
            let mut terminal_seen = false;
            for event in events {
                match state.apply(event) {
                    Ok(next) => {
                        prop_assert!(!state.is_terminal());
                        prop_assert!(ALLOWED.contains(&(state, event, next)));
                        state = next;
                        if state.is_terminal() {
                            prop_assert!(!terminal_seen);
                            terminal_seen = true;
                        }
                    }
                    Err(err) => prop_assert_eq!(err.from, state),
                }
            }
        }
    }
}
