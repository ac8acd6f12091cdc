//! Several PostgreSQL store instances (as on several nodes), each with its
//! own committer, append at once into the same sessions: batches from every
//! instance interleave on the same rows, and still no transaction deadlocks,
//! every stream stays gapless, and every task ends where its writer took it.
//!
//! Needs `SWITCHBOARD_TEST_POSTGRES_URL` (see `PgDb::create`).

mod common;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use common::tasks::{echo_task, output, state};
use switchboard::auth::User;
use switchboard::bus::Bus;
use switchboard::event::{EventBody, now};
use switchboard::rbac::Role;
use switchboard::session::Session;
use switchboard::store::postgres::PostgresStore;
use switchboard::store::{Append, EventWriter, Store};
use switchboard::task::{Task, TaskState};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Store instances, as nodes.
const NODES: usize = 3;
/// Sessions every node writes into.
const SESSIONS: usize = 8;
/// Tasks each node runs at once.
const TASKS_PER_NODE: usize = 24;
/// Output chunks per task.
const CHUNKS: usize = 30;

/// The transition of `t` from `from` to `to`, now.
fn step(t: &Task, from: TaskState, to: TaskState) -> Append {
    state(t, Some(from), to, now())
}

/// One task's whole life through `writer`: the insert and its first steps
/// queued together, its output pipelined, its completion awaited.
async fn run_task(writer: EventWriter, t: Task) {
    use TaskState::*;
    let first = vec![
        state(&t, None, Pending, now()),
        step(&t, Pending, Planning),
        step(&t, Planning, Running),
    ];
    for r in writer.queue_all(first).await.unwrap() {
        r.wait().await.unwrap().unwrap();
    }
    let pipe = Arc::default();
    for i in 0..CHUNKS {
        writer
            .pipeline(output(&t, now(), &format!("{i} ")), &pipe)
            .await
            .unwrap();
    }
    pipe.drained().await;
    assert!(!pipe.is_stopped(), "a chunk of {} was refused", t.task_id);
    let done = writer.append(step(&t, Running, Completed)).await;
    done.unwrap().unwrap();
    // A second completion is refused, per item.
    let again = writer.append(step(&t, Running, Completed)).await.unwrap();
    assert_eq!(
        again.unwrap_err(),
        switchboard::store::Rejected::StateIs(Completed)
    );
}

/// The events of one task, in order, as `run_task` writes them.
fn life() -> Vec<String> {
    let mut out: Vec<String> = ["pending", "planning", "running"].map(String::from).into();
    out.extend((0..CHUNKS).map(|i| format!("{i} ")));
    out.push("completed".into());
    out
}

async fn deadlocks(store: &PostgresStore) -> i64 {
    sqlx::query_scalar("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()")
        .fetch_one(store.pool())
        .await
        .unwrap()
}

/// Three store instances append into the same eight sessions at once (each
/// batch of each spans several of them): no deadlock, and every session's
/// stream is 1..N with every task's events in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn appends_from_several_nodes_interleave_without_deadlock() {
    let Some(db) = common::PgDb::create().await else {
        return;
    };
    let mut stores = Vec::new();
    for _ in 0..NODES {
        stores.push(
            PostgresStore::open(&db.url, Arc::new(Bus::new()))
                .await
                .unwrap(),
        );
    }
    let admin = &stores[0];
    let user = User::new("u", [Role::Developer].into(), now());
    admin.create_user(&user, "hash-u", vec![]).await.unwrap();
    let mut sessions = Vec::new();
    for _ in 0..SESSIONS {
        let s = Session::new("u", None, BTreeSet::new(), false, now());
        admin.create_session(&s, vec![]).await.unwrap();
        sessions.push(s);
    }
    let before = deadlocks(admin).await;
    let stop = CancellationToken::new();
    let mut runs = Vec::new();
    let mut committers = Vec::new();
    for (n, store) in stores.iter().enumerate() {
        let (writer, done) = EventWriter::spawn(Arc::new(store.clone()), stop.clone());
        committers.push(done);
        for i in 0..TASKS_PER_NODE {
            let t = echo_task(&sessions[(n + i) % SESSIONS]);
            runs.push(tokio::spawn(run_task(writer.clone(), t)));
        }
    }
    let all = async {
        for r in runs {
            r.await.unwrap();
        }
    };
    tokio::time::timeout(Duration::from_secs(60), all)
        .await
        .expect("appends from several nodes stalled");
    stop.cancel();
    for c in committers {
        c.await.unwrap();
    }
    let mut total = 0;
    for s in &sessions {
        let events = admin.events_after(s.session_id, 0, 100_000).await.unwrap();
        let seqs: Vec<i64> = events.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (1..=events.len() as i64).collect::<Vec<_>>());
        let stored = admin.get_session(s.session_id).await.unwrap().unwrap();
        assert_eq!(stored.last_seq, events.len() as i64);
        let mut by_task: HashMap<Uuid, Vec<String>> = HashMap::new();
        for e in &events {
            let label = match &e.body {
                EventBody::State(s) => s.state.as_str().to_owned(),
                EventBody::Output(o) => o.chunk.clone(),
            };
            by_task.entry(e.task_id).or_default().push(label);
        }
        for (id, labels) in by_task {
            assert_eq!(labels, life(), "task {id}");
        }
        total += events.len();
    }
    assert_eq!(total, NODES * TASKS_PER_NODE * life().len());
    // Deadlock counts are flushed when a backend goes idle or exits.
    for s in &stores {
        s.pool().close().await;
    }
    let fresh = PostgresStore::open(&db.url, Arc::new(Bus::new()))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(deadlocks(&fresh).await, before, "a batch deadlocked");
}
