//! Tasks and their events built by hand, for tests that write to a store
//! directly (no runtime in between).

use chrono::{DateTime, Utc};
use switchboard::event::{EventBody, OutputChunk, StateChange};
use switchboard::session::Session;
use switchboard::store::{Append, TaskChange, Transition};
use switchboard::task::{Task, TaskState};

/// A new pending `echo` task in `s`, prompted "p".
pub fn echo_task(s: &Session) -> Task {
    Task::pending(s.session_id, &s.user_id, "echo", "p".into())
}

/// An event of `t` at `at` with its task change, and no audit record.
pub fn append(t: &Task, at: DateTime<Utc>, body: EventBody, change: TaskChange) -> Append {
    Append {
        session_id: t.session_id,
        task_id: t.task_id,
        at,
        body,
        change,
        audit: vec![],
    }
}

/// The transition of `t` from `from` (none: its insert) to `to`, at `at`.
/// A completed task's result is "done"; a terminal one took one second.
pub fn state(t: &Task, from: Option<TaskState>, to: TaskState, at: DateTime<Utc>) -> Append {
    let body = EventBody::State(StateChange {
        state: to,
        prev_state: from,
        message: to.to_string(),
        agent_type: None,
    });
    let change = match from {
        None => TaskChange::Insert(Box::new(t.clone())),
        Some(from) => TaskChange::Transition(Transition {
            from,
            to,
            result: (to == TaskState::Completed).then(|| "done".into()),
            error: None,
            execution_time: to.is_terminal().then_some(1.0),
        }),
    };
    append(t, at, body, change)
}

/// An output chunk of running `t` at `at`.
pub fn output(t: &Task, at: DateTime<Utc>, chunk: &str) -> Append {
    let body = EventBody::Output(OutputChunk {
        chunk: chunk.into(),
    });
    append(t, at, body, TaskChange::Require(TaskState::Running))
}
