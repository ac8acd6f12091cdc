//! One store test suite, run against every backend: SQLite on a temp file
//! always, PostgreSQL (a fresh database per test) when
//! `SWITCHBOARD_TEST_POSTGRES_URL` is set.
//!
//! Each check is a generic async function over `Arc<dyn Store>`; the
//! `both!` macro makes one `#[tokio::test]` per backend out of it. The
//! Phase 1 checks ([`switchboard::store::ProjectStore`]) are in
//! `tests/store/projects.rs`.

#[path = "store/audit.rs"]
mod audit;
mod common;
#[path = "store/projects.rs"]
mod projects;
#[path = "store/task_events.rs"]
mod task_events;

use std::collections::BTreeSet;
use std::sync::Arc;

use chrono::Duration;
use serde_json::json;
use switchboard::audit::{NewAudit, kind};
use switchboard::auth::User;
use switchboard::event::{EventBody, OutputChunk, StateChange, now};
use switchboard::rbac::{Permission, Role};
use switchboard::runtime::audit::verify_store;
use switchboard::session::Session;
use switchboard::store::{Append, Rejected, Store, TaskChange, TaskFilter, Transition};
use switchboard::task::{Task, TaskState};

/// Generate, for each suite function, a test per backend.
macro_rules! both {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let dir = tempfile::tempdir().unwrap();
                    let url = format!("sqlite://{}", dir.path().join("store.db").display());
                    let store = switchboard::store::open(&url, std::sync::Arc::new(switchboard::bus::Bus::new()))
                        .await
                        .unwrap();
                    super::suite::$name(store).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let Some(db) = crate::common::PgDb::create().await else { return };
                    let store = switchboard::store::open(&db.url, std::sync::Arc::new(switchboard::bus::Bus::new()))
                        .await
                        .unwrap();
                    super::suite::$name(store).await;
                }
            )*
        }
    };
}

both!(
    users_and_tokens,
    sessions,
    append_applies_changes_on_condition,
    one_batch_spans_tasks_and_sessions,
    seq_is_gapless_under_concurrent_appends,
    events_after_pages,
    task_events_are_the_tasks_own,
    writes_go_on_after_an_idle_spell,
    list_tasks_filters_and_cursor,
    audit_chain_appends_queries_and_verifies,
    audit_pages_by_every_key,
    timestamps_round_trip_at_microseconds,
    projects_round_trip_and_conflict,
    project_tasks_number_follow_and_cascade,
    project_task_numbers_unique_under_concurrency,
);

/// Store fixtures shared by the suite.
mod fixtures {
    use super::*;

    pub async fn user(store: &Arc<dyn Store>, id: &str) -> User {
        let user = User::new(id, [Role::Developer].into(), now());
        store
            .create_user(&user, &format!("hash-{id}"), vec![])
            .await
            .unwrap();
        user
    }

    pub async fn session(store: &Arc<dyn Store>, user: &str) -> Session {
        let s = Session::new(user, None, BTreeSet::new(), false, now());
        store.create_session(&s, vec![]).await.unwrap();
        s
    }

    pub fn task(session: &Session, agent: &str, key: Option<&str>) -> Task {
        Task {
            context: json!({"k": [1, 2.5, "x"]}),
            params: json!({"delay_ms": 0}),
            metadata: json!({"node_id": "n1"}),
            idempotency_key: key.map(str::to_owned),
            ..Task::pending(session.session_id, &session.user_id, agent, "hello".into())
        }
    }

    pub fn insert(task: &Task) -> Append {
        Append {
            session_id: task.session_id,
            task_id: task.task_id,
            at: task.created_at,
            body: EventBody::State(StateChange {
                state: TaskState::Pending,
                prev_state: None,
                message: "submitted".into(),
                agent_type: Some(task.agent_type.clone()),
            }),
            change: TaskChange::Insert(Box::new(task.clone())),
            audit: vec![
                NewAudit::by(None, kind::TASK_SUBMITTED, "submit")
                    .for_user(&task.user_id)
                    .resource("task", task.task_id)
                    .session(task.session_id),
            ],
        }
    }

    pub fn transition(task: &Task, from: TaskState, to: TaskState) -> Append {
        Append {
            session_id: task.session_id,
            task_id: task.task_id,
            at: now(),
            body: EventBody::State(StateChange {
                state: to,
                prev_state: Some(from),
                message: to.to_string(),
                agent_type: None,
            }),
            change: TaskChange::Transition(Transition {
                from,
                to,
                result: (to == TaskState::Completed).then(|| "done".into()),
                error: None,
                execution_time: to.is_terminal().then_some(1.25),
            }),
            audit: vec![],
        }
    }

    pub fn output(task: &Task, chunk: &str) -> Append {
        Append {
            session_id: task.session_id,
            task_id: task.task_id,
            at: now(),
            body: EventBody::Output(OutputChunk {
                chunk: chunk.into(),
            }),
            change: TaskChange::Require(TaskState::Running),
            audit: vec![],
        }
    }

    /// Append one item and return its outcome.
    pub async fn one(
        store: &Arc<dyn Store>,
        a: Append,
    ) -> Result<switchboard::event::StoredEvent, Rejected> {
        store.append(vec![a]).await.unwrap().pop().unwrap()
    }
}

mod suite {
    pub use super::audit::{
        audit_chain_appends_queries_and_verifies, audit_pages_by_every_key,
        timestamps_round_trip_at_microseconds,
    };
    pub use super::projects::{
        project_task_numbers_unique_under_concurrency, project_tasks_number_follow_and_cascade,
        projects_round_trip_and_conflict,
    };
    pub use super::task_events::{task_events_are_the_tasks_own, writes_go_on_after_an_idle_spell};

    use super::fixtures::*;
    use super::*;

    /// Users are created once, updated, found by live tokens only.
    pub async fn users_and_tokens(store: Arc<dyn Store>) {
        assert_eq!(store.user_count().await.unwrap(), 0);
        let mut u = user(&store, "dev@team.com").await;
        assert_eq!(store.user_count().await.unwrap(), 1);
        assert_eq!(
            store.get_user("dev@team.com").await.unwrap(),
            Some(u.clone())
        );
        assert!(store.get_user("nobody").await.unwrap().is_none());

        // The same id again is a conflict, not an internal error.
        let again = store
            .create_user(&u, "hash-other", vec![])
            .await
            .unwrap_err();
        assert_eq!(again.code(), "conflict");

        u.roles.insert(Role::Viewer);
        u.grants.insert(Permission::AdminSystem);
        u.revokes.insert(Permission::TaskSubmit);
        store.update_user(&u, vec![]).await.unwrap();
        assert_eq!(store.get_user(&u.user_id).await.unwrap(), Some(u.clone()));
        user(&store, "another").await;
        let ids: Vec<_> = store
            .list_users()
            .await
            .unwrap()
            .into_iter()
            .map(|u| u.user_id)
            .collect();
        assert_eq!(ids, ["another", "dev@team.com"]);

        let at = now();
        store
            .add_token(&u.user_id, "second", at, None, vec![])
            .await
            .unwrap();
        let found = store.user_by_token("second", at).await.unwrap();
        assert_eq!(found.map(|u| u.user_id).as_deref(), Some("dev@team.com"));
        assert!(store.user_by_token("unknown", at).await.unwrap().is_none());
        assert_eq!(
            store.revoke_tokens(&u.user_id, at, vec![]).await.unwrap(),
            2
        );
        assert!(store.user_by_token("second", at).await.unwrap().is_none());
        assert!(
            store
                .user_by_token("hash-dev@team.com", at)
                .await
                .unwrap()
                .is_none()
        );
        assert!(
            store
                .user_by_token("hash-another", at)
                .await
                .unwrap()
                .is_some()
        );
    }

    /// Sessions are stored, listed newest first, have one active default,
    /// and end.
    pub async fn sessions(store: Arc<dyn Store>) {
        user(&store, "u1").await;
        user(&store, "u2").await;
        let perms: BTreeSet<_> = Role::Developer.permissions().iter().copied().collect();
        let a = Session::new("u1", Some("laptop".into()), perms.clone(), true, now());
        store.create_session(&a, vec![]).await.unwrap();
        assert_eq!(
            store.get_session(a.session_id).await.unwrap(),
            Some(a.clone())
        );
        assert_eq!(store.default_session("u1").await.unwrap(), Some(a.clone()));
        assert!(store.default_session("u2").await.unwrap().is_none());

        // A second active default for the same user is refused.
        let dup = Session::new("u1", None, perms, true, now());
        assert_eq!(
            store.create_session(&dup, vec![]).await.unwrap_err().code(),
            "conflict"
        );

        let b = session(&store, "u1").await;
        let c = session(&store, "u2").await;
        let mine: Vec<_> = store
            .list_sessions(Some("u1"))
            .await
            .unwrap()
            .iter()
            .map(|s| s.session_id)
            .collect();
        assert_eq!(mine, [b.session_id, a.session_id]);
        assert_eq!(store.list_sessions(None).await.unwrap().len(), 3);
        assert_eq!(store.stats().await.unwrap().active_sessions, 3);

        let at = now();
        store.end_session(a.session_id, at, vec![]).await.unwrap();
        let ended = store.get_session(a.session_id).await.unwrap().unwrap();
        assert_eq!(ended.state.as_str(), "ended");
        assert_eq!(ended.last_activity, at);
        assert!(store.default_session("u1").await.unwrap().is_none());
        assert_eq!(c.last_seq, 0);
    }

    /// Insert, compare-and-set transitions and output requirements: a
    /// refused change stores nothing and consumes no seq; a reused
    /// idempotency key is `Duplicate`.
    pub async fn append_applies_changes_on_condition(store: Arc<dyn Store>) {
        user(&store, "u").await;
        let s = session(&store, "u").await;
        let t = task(&s, "echo", Some("key-1"));
        let first = one(&store, insert(&t)).await.unwrap();
        assert_eq!(first.seq, 1);
        assert_eq!(store.get_task(t.task_id).await.unwrap(), Some(t.clone()));
        assert_eq!(
            store
                .task_by_idempotency_key("u", "key-1")
                .await
                .unwrap()
                .map(|t| t.task_id),
            Some(t.task_id)
        );

        // Same key, new task id: refused, the first one stays.
        let twin = task(&s, "echo", Some("key-1"));
        assert_eq!(one(&store, insert(&twin)).await, Err(Rejected::Duplicate));
        assert!(store.get_task(twin.task_id).await.unwrap().is_none());

        // Output while pending is refused; a transition from the wrong
        // state reports the real one; an unknown task is NoTask.
        assert_eq!(
            one(&store, output(&t, "early")).await,
            Err(Rejected::StateIs(TaskState::Pending))
        );
        assert_eq!(
            one(
                &store,
                transition(&t, TaskState::Planning, TaskState::Running)
            )
            .await,
            Err(Rejected::StateIs(TaskState::Pending))
        );
        let ghost = task(&s, "echo", None);
        assert_eq!(
            one(
                &store,
                transition(&ghost, TaskState::Pending, TaskState::Planning)
            )
            .await,
            Err(Rejected::NoTask)
        );

        // A batch: each item on its own condition.
        let results = store
            .append(vec![
                transition(&t, TaskState::Pending, TaskState::Planning),
                transition(&t, TaskState::Pending, TaskState::Planning),
                transition(&t, TaskState::Planning, TaskState::Running),
                output(&t, "chunk"),
                transition(&t, TaskState::Running, TaskState::Completed),
            ])
            .await
            .unwrap();
        let seqs: Vec<_> = results
            .iter()
            .map(|r| r.as_ref().map(|e| e.seq).map_err(Clone::clone))
            .collect();
        assert_eq!(
            seqs,
            [
                Ok(2),
                Err(Rejected::StateIs(TaskState::Planning)),
                Ok(3),
                Ok(4),
                Ok(5)
            ]
        );
        let done = store.get_task(t.task_id).await.unwrap().unwrap();
        assert_eq!(done.state, TaskState::Completed);
        assert_eq!(done.result.as_deref(), Some("done"));
        assert_eq!(done.execution_time, Some(1.25));
        assert_eq!(
            store
                .get_session(s.session_id)
                .await
                .unwrap()
                .unwrap()
                .last_seq,
            5
        );

        let events = store.task_events(t.task_id).await.unwrap();
        assert_eq!(
            events.iter().map(|e| e.seq).collect::<Vec<_>>(),
            [1, 2, 3, 4, 5]
        );
        assert_eq!(
            events[3].body,
            EventBody::Output(OutputChunk {
                chunk: "chunk".into()
            })
        );
        assert_eq!(store.unfinished_tasks().await.unwrap(), vec![]);
        let stats = store.stats().await.unwrap();
        assert_eq!(stats.tasks_by_state, vec![(TaskState::Completed, 1)]);
    }

    /// One batch that inserts tasks and moves them, over two sessions, with
    /// a duplicate in the middle: every item sees the ones before it, each
    /// session's seq rises by one, and the refused items take no seq.
    pub async fn one_batch_spans_tasks_and_sessions(store: Arc<dyn Store>) {
        user(&store, "u").await;
        let (s1, s2) = (session(&store, "u").await, session(&store, "u").await);
        let (a, b) = (task(&s1, "echo", Some("k-a")), task(&s2, "echo", None));
        let twin = task(&s1, "echo", Some("k-a"));
        let results = store
            .append(vec![
                insert(&a),
                insert(&b),
                insert(&twin),
                transition(&twin, TaskState::Pending, TaskState::Planning),
                transition(&a, TaskState::Pending, TaskState::Planning),
                transition(&b, TaskState::Pending, TaskState::Planning),
                transition(&a, TaskState::Planning, TaskState::Running),
                output(&a, "x"),
                output(&b, "too early"),
                transition(&a, TaskState::Running, TaskState::Completed),
            ])
            .await
            .unwrap();
        let outcome: Vec<_> = results
            .iter()
            .map(|r| {
                r.as_ref()
                    .map(|e| (e.session_id, e.seq))
                    .map_err(Clone::clone)
            })
            .collect();
        assert_eq!(
            outcome,
            [
                Ok((s1.session_id, 1)),
                Ok((s2.session_id, 1)),
                Err(Rejected::Duplicate),
                Err(Rejected::NoTask),
                Ok((s1.session_id, 2)),
                Ok((s2.session_id, 2)),
                Ok((s1.session_id, 3)),
                Ok((s1.session_id, 4)),
                Err(Rejected::StateIs(TaskState::Planning)),
                Ok((s1.session_id, 5)),
            ]
        );
        let a_now = store.get_task(a.task_id).await.unwrap().unwrap();
        assert_eq!(a_now.state, TaskState::Completed);
        assert_eq!(a_now.result.as_deref(), Some("done"));
        let b_now = store.get_task(b.task_id).await.unwrap().unwrap();
        assert_eq!(b_now.state, TaskState::Planning);
        for (s, last) in [(&s1, 5), (&s2, 2)] {
            let stored = store.get_session(s.session_id).await.unwrap().unwrap();
            assert_eq!(stored.last_seq, last);
            let seqs: Vec<_> = store
                .events_after(s.session_id, 0, 100)
                .await
                .unwrap()
                .iter()
                .map(|e| e.seq)
                .collect();
            assert_eq!(seqs, (1..=last).collect::<Vec<_>>());
        }
        // Both inserts were audited, in the batch's transaction.
        assert_eq!(
            store
                .audit_after(0, 100)
                .await
                .unwrap()
                .iter()
                .filter(|r| r.event_type == "task.submitted")
                .count(),
            2
        );
    }

    /// Many writers appending to one session at once: every seq from 1 to
    /// N exactly once.
    pub async fn seq_is_gapless_under_concurrent_appends(store: Arc<dyn Store>) {
        user(&store, "u").await;
        let s = session(&store, "u").await;
        let writers = 16;
        let per_writer = 10;
        let mut handles = Vec::new();
        for _ in 0..writers {
            let store = store.clone();
            let t = task(&s, "echo", None);
            handles.push(tokio::spawn(async move {
                one(&store, insert(&t)).await.unwrap();
                one(
                    &store,
                    transition(&t, TaskState::Pending, TaskState::Planning),
                )
                .await
                .unwrap();
                one(
                    &store,
                    transition(&t, TaskState::Planning, TaskState::Running),
                )
                .await
                .unwrap();
                for i in 0..per_writer - 3 {
                    one(&store, output(&t, &format!("{i}"))).await.unwrap();
                }
            }));
        }
        for h in handles {
            h.await.unwrap();
        }
        let total = (writers * per_writer) as i64;
        let events = store.events_after(s.session_id, 0, 10_000).await.unwrap();
        assert_eq!(
            events.iter().map(|e| e.seq).collect::<Vec<_>>(),
            (1..=total).collect::<Vec<_>>()
        );
        assert_eq!(
            store
                .get_session(s.session_id)
                .await
                .unwrap()
                .unwrap()
                .last_seq,
            total
        );
        // The audit chain written by all of them is intact too.
        let v = verify_store(store.as_ref()).await.unwrap();
        assert!(v.ok, "{v:?}");
        assert_eq!(v.checked, writers as u64);
    }

    /// `events_after` pages through a stream in order, and streams are apart.
    pub async fn events_after_pages(store: Arc<dyn Store>) {
        user(&store, "u").await;
        let s = session(&store, "u").await;
        let other = session(&store, "u").await;
        let t = task(&s, "echo", None);
        one(&store, insert(&t)).await.unwrap();
        one(&store, insert(&task(&other, "echo", None)))
            .await
            .unwrap();
        one(
            &store,
            transition(&t, TaskState::Pending, TaskState::Planning),
        )
        .await
        .unwrap();
        one(
            &store,
            transition(&t, TaskState::Planning, TaskState::Running),
        )
        .await
        .unwrap();
        for i in 0..20 {
            one(&store, output(&t, &format!("c{i}"))).await.unwrap();
        }
        let mut after = 0;
        let mut seen = Vec::new();
        loop {
            let page = store.events_after(s.session_id, after, 7).await.unwrap();
            if page.is_empty() {
                break;
            }
            assert!(page.len() <= 7);
            assert!(page.iter().all(|e| e.session_id == s.session_id));
            after = page.last().unwrap().seq;
            seen.extend(page.into_iter().map(|e| e.seq));
        }
        assert_eq!(seen, (1..=23).collect::<Vec<_>>());
        assert_eq!(
            store
                .events_after(other.session_id, 0, 100)
                .await
                .unwrap()
                .len(),
            1
        );
        assert!(
            store
                .events_after(s.session_id, 23, 10)
                .await
                .unwrap()
                .is_empty()
        );
    }

    /// Listing filters by owner, session, state and agent, newest first,
    /// with a cursor.
    pub async fn list_tasks_filters_and_cursor(store: Arc<dyn Store>) {
        user(&store, "a").await;
        user(&store, "b").await;
        let sa = session(&store, "a").await;
        let sb = session(&store, "b").await;
        let mut tasks = Vec::new();
        for i in 0..6 {
            let mut t = task(
                if i % 2 == 0 { &sa } else { &sb },
                if i < 3 { "echo" } else { "other" },
                None,
            );
            // Distinct, increasing creation times.
            t.created_at = now() + Duration::milliseconds(i);
            t.updated_at = t.created_at;
            one(&store, insert(&t)).await.unwrap();
            tasks.push(t);
        }
        one(
            &store,
            transition(&tasks[0], TaskState::Pending, TaskState::Cancelled),
        )
        .await
        .unwrap();
        let list = |f: TaskFilter| {
            let store = store.clone();
            async move {
                store
                    .list_tasks(&f)
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|t| t.task_id)
                    .collect::<Vec<_>>()
            }
        };
        let all = TaskFilter {
            limit: 100,
            ..Default::default()
        };
        let ids: Vec<_> = tasks.iter().rev().map(|t| t.task_id).collect();
        assert_eq!(list(all.clone()).await, ids);
        assert_eq!(
            list(TaskFilter {
                user_id: Some("a".into()),
                ..all.clone()
            })
            .await,
            [tasks[4].task_id, tasks[2].task_id, tasks[0].task_id]
        );
        assert_eq!(
            list(TaskFilter {
                session_id: Some(sb.session_id),
                agent_type: Some("other".into()),
                ..all.clone()
            })
            .await,
            [tasks[5].task_id, tasks[3].task_id]
        );
        assert_eq!(
            list(TaskFilter {
                state: Some(TaskState::Cancelled),
                ..all.clone()
            })
            .await,
            [tasks[0].task_id]
        );
        // Pages of two, following the cursor, cover everything once.
        let mut before = None;
        let mut paged = Vec::new();
        loop {
            let page = store
                .list_tasks(&TaskFilter {
                    before,
                    limit: 2,
                    ..Default::default()
                })
                .await
                .unwrap();
            let Some(last) = page.last() else { break };
            before = Some((last.created_at, last.task_id));
            paged.extend(page.iter().map(|t| t.task_id));
        }
        assert_eq!(paged, ids);
        assert_eq!(store.unfinished_tasks().await.unwrap().len(), 5);
    }
}

/// PostgreSQL only: the audit table refuses updates, deletes and truncation
/// even through a raw connection (the SQLite triggers are the same).
#[tokio::test]
async fn postgres_audit_log_is_append_only() {
    let Some(db) = common::PgDb::create().await else {
        return;
    };
    let store = switchboard::store::open(&db.url, Arc::new(switchboard::bus::Bus::new()))
        .await
        .unwrap();
    store
        .audit(vec![NewAudit::by(None, kind::AUTH_FAILED, "x")])
        .await
        .unwrap();
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    for sql in [
        "UPDATE audit SET action = 'changed'",
        "DELETE FROM audit",
        "TRUNCATE audit",
    ] {
        let err = sqlx::query(sql).execute(&mut conn).await.unwrap_err();
        assert!(err.to_string().contains("append-only"), "{sql}: {err}");
    }
    assert!(verify_store(store.as_ref()).await.unwrap().ok);
}
