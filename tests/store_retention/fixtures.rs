//! What the store retention suite builds its cases from: a database to
//! open and reopen, sessions, tasks and their events written at a chosen
//! time, and a prune of every stream in small batches.

use std::collections::BTreeSet;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use switchboard::bus::Bus;
use switchboard::event::now;
use switchboard::session::Session;
use switchboard::store::{Append, Store};
use switchboard::task::{Task, TaskState};

pub use crate::common::tasks::{append, echo_task, output, state};

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
    one(store, output(t, at, "x")).await
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
