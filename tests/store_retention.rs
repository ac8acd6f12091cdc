//! Retention at the store level, against every backend (SQLite always,
//! PostgreSQL when `SWITCHBOARD_TEST_POSTGRES_URL` is set): streams are cut
//! from the front only, up to the first event of a task still needed; the
//! floor survives a restart (seqs go on, never reused); a follower meets
//! the cut as a `stream.pruned` event; tasks and idle sessions go only
//! when nothing refers to them; a prune racing appends loses nothing
//! that is not older than the horizon; thousands of small streams go in a
//! few batches that span streams, with exact floors; and the last prune
//! run survives a restart.
//!
//! Events are written with `at` in the past, so nothing here waits for a
//! window to pass.

mod common;

#[path = "store_retention/fixtures.rs"]
mod fixtures;

use std::collections::BTreeSet;

use chrono::Duration;
use fixtures::*;
use switchboard::bus::Cursor;
use switchboard::event::{EventBody, OutputChunk, StreamKey, now};
use switchboard::session::Session;
use switchboard::store::TaskChange;
use switchboard::store::retention::StreamCut;
use switchboard::task::{Task, TaskState};

/// One test per backend for each suite function. Each gets the store, its
/// bus and a way to open the same database again (a restart).
macro_rules! both {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let dir = tempfile::tempdir().unwrap();
                    let url = format!("sqlite://{}", dir.path().join("store.db").display());
                    super::suite::$name(super::Db::new(url)).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let Some(db) = crate::common::PgDb::create().await else { return };
                    super::suite::$name(super::Db::new(db.url.clone())).await;
                }
            )*
        }
    };
}

both!(
    streams_are_cut_from_the_front_up_to_a_needed_task,
    the_floor_survives_a_restart_and_seqs_go_on,
    a_follower_meets_the_cut_as_a_pruned_event,
    tasks_and_sessions_go_only_when_nothing_refers_to_them,
    a_prune_racing_appends_loses_nothing_inside_the_window,
    thousands_of_small_streams_go_in_a_few_batches,
    the_last_prune_survives_a_restart,
);

mod suite {
    use super::*;

    /// Old finished tasks' events go; the first event of a task that is
    /// still running (or ended recently) holds everything after it, even
    /// old events interleaved with it, so the kept stream has no hole.
    pub async fn streams_are_cut_from_the_front_up_to_a_needed_task(db: Db) {
        let (store, _) = db.open().await;
        let old = now() - Duration::hours(2);
        let s = session(&store, "dev", old).await;
        let (a, b, c) = (echo_task(&s), echo_task(&s), echo_task(&s));
        start(&store, &a, old).await; // 1, 2
        chunk(&store, &a, old).await; // 3
        start(&store, &b, old).await; // 4, 5: b keeps running
        chunk(&store, &a, old).await; // 6: old, but after b's first event
        finish(&store, &a, old).await; // 7
        start(&store, &c, old).await; // 8, 9
        finish(&store, &c, old).await; // 10

        let horizon = now() - Duration::hours(1);
        let plan = store.prunable_streams(horizon, 10).await.unwrap();
        assert_eq!(
            plan,
            vec![StreamCut {
                session_id: s.session_id,
                cut: 4
            }]
        );
        assert_eq!(prune_events(&store, horizon).await, 3);
        assert_eq!(stored(&store, &s).await, (4..=10).collect::<Vec<_>>());
        assert_eq!(store.stream_floor(s.session_id).await.unwrap(), 3);
        // Nothing more to do until b ends...
        assert_eq!(prune_events(&store, horizon).await, 0);
        // ...and once it ended long enough ago, the whole stream goes.
        finish(&store, &b, old).await; // 11
        assert_eq!(prune_events(&store, horizon).await, 8);
        assert!(stored(&store, &s).await.is_empty());
        assert_eq!(store.stream_floor(s.session_id).await.unwrap(), 11);
        // The task rows keep their state and result.
        let kept = store.get_task(a.task_id).await.unwrap().unwrap();
        assert_eq!(
            (kept.state, kept.result.as_deref()),
            (TaskState::Completed, Some("done"))
        );
        // A recent horizon removes nothing of a newer stream.
        let fresh = session(&store, "dev", now()).await;
        let t = echo_task(&fresh);
        start(&store, &t, now()).await;
        finish(&store, &t, now()).await;
        assert_eq!(prune_events(&store, horizon).await, 0);
        assert_eq!(stored(&store, &fresh).await, vec![1, 2, 3]);
    }

    /// A stream whose every event was pruned goes on from its last seq
    /// after a restart: seqs are never reused.
    pub async fn the_floor_survives_a_restart_and_seqs_go_on(db: Db) {
        let (store, _) = db.open().await;
        let old = now() - Duration::hours(2);
        let s = session(&store, "dev", old).await;
        let t = echo_task(&s);
        start(&store, &t, old).await;
        finish(&store, &t, old).await; // seqs 1..=3
        prune_events(&store, now() - Duration::hours(1)).await;
        assert!(stored(&store, &s).await.is_empty());
        store.close().await;
        drop(store);

        let (store, _) = db.open().await;
        let again = store.get_session(s.session_id).await.unwrap().unwrap();
        assert_eq!(again.last_seq, 3);
        let next = echo_task(&s);
        assert_eq!(start(&store, &next, now()).await, vec![4, 5]);
        assert_eq!(store.stream_floor(s.session_id).await.unwrap(), 3);
    }

    /// A reader positioned before the cut is told so in its stream
    /// (`stream.pruned` with the earliest seq kept) and then gets the
    /// kept events: never a silent gap.
    pub async fn a_follower_meets_the_cut_as_a_pruned_event(db: Db) {
        let (store, bus) = db.open().await;
        let old = now() - Duration::hours(2);
        let s = session(&store, "dev", old).await;
        let (a, b) = (echo_task(&s), echo_task(&s));
        start(&store, &a, old).await;
        finish(&store, &a, old).await; // 1..=3
        start(&store, &b, now()).await; // 4, 5
        prune_events(&store, now() - Duration::hours(1)).await;
        let mut cursor = Cursor::new(&bus, store.clone(), StreamKey::Session(s.session_id), 1);
        let notice = cursor.next().await.unwrap().unwrap();
        assert_eq!(notice.seq, 0);
        let frame: serde_json::Value = serde_json::from_str(notice.frame.payload_str()).unwrap();
        assert_eq!(frame["type"], "stream.pruned");
        assert_eq!(frame["data"]["earliest_seq"], 4);
        assert_eq!(frame["stream"], format!("session:{}", s.session_id));
        assert_eq!(cursor.next().await.unwrap().unwrap().seq, 4);
        assert_eq!(cursor.next().await.unwrap().unwrap().seq, 5);
        // A reader inside the kept range sees no notice.
        let mut inside = Cursor::new(&bus, store.clone(), StreamKey::Session(s.session_id), 3);
        assert_eq!(inside.next().await.unwrap().unwrap().seq, 4);
    }

    /// A finished task goes only once its events are gone; a session only
    /// once it has no task and was idle since before the horizon.
    pub async fn tasks_and_sessions_go_only_when_nothing_refers_to_them(db: Db) {
        let (store, _) = db.open().await;
        let old = now() - Duration::hours(2);
        let horizon = now() - Duration::hours(1);
        let s = session(&store, "dev", old).await;
        let idle = session(&store, "dev", old).await;
        let fresh = session(&store, "dev", now()).await;
        let t = echo_task(&s);
        start(&store, &t, old).await;
        finish(&store, &t, old).await;
        let running = echo_task(&s);
        start(&store, &running, now()).await;

        // t still has events: not removed yet.
        assert_eq!(store.prune_tasks(horizon, 100).await.unwrap(), 0);
        prune_events(&store, horizon).await;
        assert_eq!(store.prune_tasks(horizon, 100).await.unwrap(), 1);
        assert!(store.get_task(t.task_id).await.unwrap().is_none());
        assert!(store.get_task(running.task_id).await.unwrap().is_some());

        // Only the idle session without tasks goes (s has a task, fresh is recent).
        let ids = store.idle_sessions(horizon, 100).await.unwrap();
        assert_eq!(ids, vec![idle.session_id]);
        assert_eq!(store.prune_sessions(ids, horizon).await.unwrap(), 1);
        assert!(store.get_session(idle.session_id).await.unwrap().is_none());
        assert!(store.get_session(fresh.session_id).await.unwrap().is_some());
        // Asking again for a session that has a task does nothing.
        assert_eq!(
            store
                .prune_sessions(vec![s.session_id], horizon)
                .await
                .unwrap(),
            0
        );
        // An append to the removed session is refused, not stored.
        let late = echo_task(&idle);
        let refused = store
            .append(vec![state(&late, None, TaskState::Pending, now())])
            .await;
        assert!(refused.unwrap().pop().unwrap().is_err());
    }

    /// Tasks appended while streams are being cut keep every event: only
    /// tasks that ended before the horizon lose any, and the kept part of
    /// each stream is one unbroken run.
    pub async fn a_prune_racing_appends_loses_nothing_inside_the_window(db: Db) {
        let (store, _) = db.open().await;
        let old = now() - Duration::hours(2);
        let horizon = now() - Duration::hours(1);
        let mut sessions = Vec::new();
        for _ in 0..4 {
            sessions.push(session(&store, "dev", old).await);
        }
        // Old history to prune.
        for s in &sessions {
            for _ in 0..20 {
                let t = echo_task(s);
                start(&store, &t, old).await;
                chunk(&store, &t, old).await;
                finish(&store, &t, old).await;
            }
        }
        let writers = sessions.iter().cloned().map(|s| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut mine = Vec::new();
                for _ in 0..25 {
                    let t = echo_task(&s);
                    let mut seqs = start(&store, &t, now()).await;
                    seqs.push(chunk(&store, &t, now()).await);
                    seqs.push(chunk(&store, &t, now()).await);
                    seqs.push(finish(&store, &t, now()).await);
                    mine.push((t.task_id, seqs));
                }
                mine
            })
        });
        let writers: Vec<_> = writers.collect();
        let mut removed = 0;
        while !writers.iter().all(|w| w.is_finished()) {
            removed += prune_events(&store, horizon).await;
            tokio::task::yield_now().await;
        }
        removed += prune_events(&store, horizon).await;
        assert_eq!(removed, 4 * 20 * 4, "every old event goes");
        for w in writers {
            for (task_id, seqs) in w.await.unwrap() {
                let kept: Vec<i64> = store
                    .task_events(task_id)
                    .await
                    .unwrap()
                    .iter()
                    .map(|e| e.seq)
                    .collect();
                assert_eq!(kept, seqs, "task {task_id} lost events");
            }
        }
        for s in &sessions {
            let kept = stored(&store, s).await;
            let floor = store.stream_floor(s.session_id).await.unwrap();
            assert_eq!(floor, 80);
            assert_eq!(kept, (floor + 1..=floor + 125).collect::<Vec<_>>());
        }
    }

    /// The last run of the pruner is kept in the database: replaced by the
    /// next one, and read back after a restart.
    pub async fn the_last_prune_survives_a_restart(db: Db) {
        use switchboard::protocol::storage::PruneRun;
        let (store, _) = db.open().await;
        assert!(store.last_prune().await.unwrap().is_none());
        let run = |events: i64| PruneRun {
            at: now(),
            seconds: 0.25,
            removed: [("events".to_owned(), events)].into(),
            reclaimed_bytes: 4096,
        };
        store.record_prune(&run(7)).await.unwrap();
        let second = run(9);
        store.record_prune(&second).await.unwrap();
        store.close().await;
        drop(store);
        let (store, _) = db.open().await;
        let kept = store.last_prune().await.unwrap().unwrap();
        assert_eq!(kept.removed["events"], 9);
        assert_eq!(kept.at, second.at);
        assert_eq!((kept.seconds, kept.reclaimed_bytes), (0.25, 4096));
    }

    /// Thousands of small finished streams are pruned by the pruner's own
    /// loop in a few transactions of at most a thousand rows, each spanning
    /// many streams (not one transaction per stream), with every floor
    /// exact: small streams, a long one cut across batches, one held by a
    /// running task, and a fresh one left whole.
    pub async fn thousands_of_small_streams_go_in_a_few_batches(db: Db) {
        use switchboard::runtime::retention::{BATCH, prune_events};
        let (store, _) = db.open().await;
        let old = now() - Duration::hours(2);
        let horizon = now() - Duration::hours(1);
        let first = session(&store, "dev", old).await;
        let made = futures_util::future::join_all((1..N).map(|_| {
            let store = store.clone();
            async move {
                let s = Session::new("dev", None, BTreeSet::new(), false, old);
                store.create_session(&s, vec![]).await.unwrap();
                s
            }
        }));
        let mut small = vec![first];
        small.extend(made.await);
        let tasks: Vec<Task> = small.iter().map(echo_task).collect();
        all(&store, &tasks, |t| state(t, None, TaskState::Pending, old)).await;
        let (p, r, c) = (TaskState::Pending, TaskState::Running, TaskState::Completed);
        all(&store, &tasks, |t| state(t, Some(p), r, old)).await;
        all(&store, &tasks, |t| state(t, Some(r), c, old)).await;
        // A long stream: one task of LONG events.
        let long = session(&store, "dev", old).await;
        let lt = echo_task(&long);
        start(&store, &lt, old).await;
        let body = || EventBody::Output(OutputChunk { chunk: "x".into() });
        let chunks = (0..LONG - 3)
            .map(|_| append(&lt, old, body(), TaskChange::Require(r)))
            .collect();
        for r in store.append(chunks).await.unwrap() {
            r.unwrap();
        }
        finish(&store, &lt, old).await;
        // A stream held by a running task; a fresh one.
        let held = session(&store, "dev", old).await;
        let (a, b) = (echo_task(&held), echo_task(&held));
        start(&store, &a, old).await;
        finish(&store, &a, old).await; // 1..=3
        start(&store, &b, old).await; // 4, 5: still running
        let fresh = session(&store, "dev", now()).await;
        let f = echo_task(&fresh);
        start(&store, &f, now()).await;
        finish(&store, &f, now()).await;

        let stop = tokio_util::sync::CancellationToken::new();
        let started = std::time::Instant::now();
        let run = prune_events(store.as_ref(), horizon, &stop).await.unwrap();
        // Printed, never asserted (timing is for benchmarks).
        eprintln!("pruned {run:?} in {:?}", started.elapsed());
        let rows = N as i64 * 3 + LONG + 3;
        assert_eq!(run.rows, rows);
        // Full batches, plus at most one part-full batch per plan of
        // streams (three plans here): nothing like one per stream.
        let plans = 3;
        assert!(
            run.batches <= (rows + BATCH - 1) / BATCH + plans,
            "{} batches for {rows} rows",
            run.batches
        );
        for s in small.iter().step_by(97) {
            assert_eq!(store.stream_floor(s.session_id).await.unwrap(), 3);
            assert!(stored(&store, s).await.is_empty());
        }
        let leftover: usize =
            futures_util::future::join_all(small.iter().map(|s| stored(&store, s)))
                .await
                .iter()
                .map(Vec::len)
                .sum();
        assert_eq!(leftover, 0, "events of small streams left");
        assert_eq!(store.stream_floor(long.session_id).await.unwrap(), LONG);
        assert!(stored(&store, &long).await.is_empty());
        assert_eq!(store.stream_floor(held.session_id).await.unwrap(), 3);
        assert_eq!(stored(&store, &held).await, vec![4, 5]);
        assert_eq!(store.stream_floor(fresh.session_id).await.unwrap(), 0);
        assert_eq!(stored(&store, &fresh).await, vec![1, 2, 3]);
        // The tasks keep their state, and a second run finds nothing.
        let kept = store.get_task(tasks[N / 2].task_id).await.unwrap().unwrap();
        assert_eq!(kept.state, TaskState::Completed);
        let again = prune_events(store.as_ref(), horizon, &stop).await.unwrap();
        assert_eq!((again.rows, again.batches), (0, 0));
    }
}

/// Small streams in the batch test.
const N: usize = 2000;
/// Events of the long stream in the batch test.
const LONG: i64 = 2500;
