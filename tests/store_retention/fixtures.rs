//! What the store retention suite builds its cases from: a database to
//! open and reopen, sessions, tasks and their events written at a chosen
//! time, and a prune of every stream in small batches.

use std::collections::BTreeSet;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::json;
use switchboard::bus::Bus;
use switchboard::event::{EventBody, OutputChunk, StateChange, now};
use switchboard::session::Session;
use switchboard::store::{Append, Store, TaskChange, Transition};
use switchboard::task::{Task, TaskState};
use uuid::Uuid;

/// A database URL to open (and reopen).
pub struct Db {
    url: String,
}

impl Db {
    /// The database at `url` (not opened yet).
    pub fn new(url: String) -> Self {
        Db { url }
    }

    /// Open (or reopen: a restart) the store, with a bus of its own.
    pub async fn open(&self) -> (Arc<dyn Store>, Arc<Bus>) {
        let bus = Arc::new(Bus::new());
        let store = switchboard::store::open(&self.url, bus.clone())
            .await
            .unwrap();
        (store, bus)
    }
}

/// A session of `user` (created with the user if need be), active since `at`.
pub async fn session(store: &Arc<dyn Store>, user: &str, at: DateTime<Utc>) -> Session {
    if store.get_user(user).await.unwrap().is_none() {
        let u =
            switchboard::auth::User::new(user, [switchboard::rbac::Role::Developer].into(), now());
        store
            .create_user(&u, &format!("hash-{user}"), vec![])
            .await
            .unwrap();
    }
    let s = Session::new(user, None, BTreeSet::new(), false, at);
    store.create_session(&s, vec![]).await.unwrap();
    s
}

/// A new pending echo task in `s`.
pub fn task(s: &Session) -> Task {
    let at = now();
    Task {
        task_id: Uuid::new_v4(),
        execution_uuid: Uuid::new_v4(),
        session_id: s.session_id,
        user_id: s.user_id.clone(),
        agent_type: "echo".into(),
        prompt: "p".into(),
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

/// An event of `t` at `at` with its task change.
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

/// Append one event: its seq.
pub async fn one(store: &Arc<dyn Store>, a: Append) -> i64 {
    store
        .append(vec![a])
        .await
        .unwrap()
        .pop()
        .unwrap()
        .unwrap()
        .seq
}

/// Start a task (pending, running) at `at`: its seqs.
pub async fn start(store: &Arc<dyn Store>, t: &Task, at: DateTime<Utc>) -> Vec<i64> {
    vec![
        one(store, state(t, None, TaskState::Pending, at)).await,
        one(
            store,
            state(t, Some(TaskState::Pending), TaskState::Running, at),
        )
        .await,
    ]
}

/// One output chunk of running `t` at `at`: its seq.
pub async fn chunk(store: &Arc<dyn Store>, t: &Task, at: DateTime<Utc>) -> i64 {
    let body = EventBody::Output(OutputChunk { chunk: "x".into() });
    one(
        store,
        append(t, at, body, TaskChange::Require(TaskState::Running)),
    )
    .await
}

/// Complete running `t` at `at`: the seq of that event.
pub async fn finish(store: &Arc<dyn Store>, t: &Task, at: DateTime<Utc>) -> i64 {
    one(
        store,
        state(t, Some(TaskState::Running), TaskState::Completed, at),
    )
    .await
}

/// Cut every prunable stream for `horizon`, all the way, in batches of 3
/// rows (so that cuts stop part of the way and go on); rows removed.
pub async fn prune_events(store: &Arc<dyn Store>, horizon: DateTime<Utc>) -> u64 {
    let mut total = 0;
    let mut rest = store.prunable_streams(horizon, 1000).await.unwrap();
    while !rest.is_empty() {
        let batch = store.cut_streams(rest.clone(), 3).await.unwrap();
        assert!(batch.removed <= 3, "{batch:?}");
        assert!(batch.removed > 0 || batch.done == rest.len(), "{batch:?}");
        total += batch.removed;
        rest.drain(..batch.done);
    }
    total
}

/// Append `make(task)` for every task at once (one call, so that the
/// appends share commits).
pub async fn all(store: &Arc<dyn Store>, tasks: &[Task], make: impl Fn(&Task) -> Append) {
    let batch = tasks.iter().map(make).collect();
    for r in store.append(batch).await.unwrap() {
        r.unwrap();
    }
}

/// The seqs still stored in `s`'s stream.
pub async fn stored(store: &Arc<dyn Store>, s: &Session) -> Vec<i64> {
    store
        .events_after(s.session_id, 0, 10_000)
        .await
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect()
}
