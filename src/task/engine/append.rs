//! The appends that record a task's state changes.

use super::{Outcome, TaskRef};
use crate::audit::{NewAudit, kind};
use crate::error::Result;
use crate::event::{EventBody, StateChange, now};
use crate::store::{Append, TaskChange, Transition};
use crate::task::{TaskEvent, TaskState};

/// The appends of `planning` and `running`.
pub(super) fn start_appends(tref: &TaskRef, agent_type: &str) -> Result<Vec<Append>> {
    let steps = [
        (TaskState::Pending, TaskEvent::Plan, "planning", None),
        (
            TaskState::Planning,
            TaskEvent::Run,
            "running",
            Some(kind::TASK_STARTED),
        ),
    ];
    let mut appends = Vec::with_capacity(steps.len());
    for (from, event, message, audit_kind) in steps {
        let audit = audit_kind
            .map(|k| {
                NewAudit::by(None, k, "start")
                    .for_user(&tref.user_id)
                    .resource("task", tref.task_id)
                    .session(tref.session_id)
                    .detail("agent_type", agent_type)
            })
            .into_iter()
            .collect();
        appends.push(transition_append(
            tref,
            from,
            event,
            message,
            Outcome::default(),
            audit,
        )?);
    }
    Ok(appends)
}

/// The append that records one state change of `task`, if it is still in
/// `from`.
pub(super) fn transition_append(
    task: &TaskRef,
    from: TaskState,
    event: TaskEvent,
    message: impl Into<String>,
    outcome: Outcome,
    audit: Vec<NewAudit>,
) -> Result<Append> {
    let to = from.apply(event)?;
    let at = now();
    let execution_time = to
        .is_terminal()
        .then(|| (at - task.created_at).num_microseconds().unwrap_or(0) as f64 / 1e6);
    Ok(Append {
        session_id: task.session_id,
        task_id: task.task_id,
        at,
        body: EventBody::State(StateChange {
            state: to,
            prev_state: Some(from),
            message: message.into(),
            agent_type: None,
        }),
        change: TaskChange::Transition(Transition {
            from,
            to,
            result: outcome.result,
            error: outcome.error,
            execution_time,
        }),
        audit,
    })
}
