//! The batch plan, decided without a database.

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
    // Its row keeps where its events end: the seq of its terminal event.
    assert_eq!(plan.tasks.last_seq, vec![Some(11)]);
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
    assert_eq!(plan.tasks.last_seq, vec![None], "not ended: no last seq");
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

/// A batch waits for the one in flight only when it changes a task that
/// one inserts: not for its own inserts, nor for other tasks.
#[test]
fn waits_only_for_tasks_the_batch_in_flight_inserts() {
    let s = Uuid::new_v4();
    let (a, b) = (task(s, "u"), task(s, "u"));
    let in_flight: HashSet<Uuid> = [a.task_id].into();
    let running = |t: &Task| step(t, TaskState::Pending, TaskState::Running, None);
    assert!(changes_any(&[insert(&b), running(&a)], &in_flight));
    assert!(!changes_any(&[insert(&a)], &in_flight));
    assert!(!changes_any(&[insert(&b), running(&b)], &in_flight));
    assert!(!changes_any(&[running(&a)], &HashSet::new()));
}
