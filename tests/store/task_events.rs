//! A task's events, found among its session's: run against both backends
//! by `both!` in `tests/store.rs`. On PostgreSQL they are read through the
//! session's stream between the bounds the task row keeps (no index of
//! their own, migration 0007); these checks pin what that must return.

use std::sync::Arc;

use switchboard::store::Store;
use switchboard::task::TaskState;

use super::fixtures::{insert, one, output, session, task, transition, user};

/// The seqs of `task_id`'s stored events, in order.
async fn seqs(store: &Arc<dyn Store>, task_id: uuid::Uuid) -> Vec<i64> {
    let events = store.task_events(task_id).await.unwrap();
    assert!(events.iter().all(|e| e.task_id == task_id), "{events:?}");
    events.iter().map(|e| e.seq).collect()
}

/// Tasks whose events interleave in one session, one inserted in a batch
/// after another task's event, one still running, one from another
/// session: each task gets exactly its own events, in seq order.
pub async fn task_events_are_the_tasks_own(store: Arc<dyn Store>) {
    user(&store, "u").await;
    let (s, other) = (session(&store, "u").await, session(&store, "u").await);
    let (a, b, c) = (
        task(&s, "echo", None),
        task(&s, "echo", None),
        task(&other, "echo", None),
    );
    let start = |t| {
        [
            transition(t, TaskState::Pending, TaskState::Planning),
            transition(t, TaskState::Planning, TaskState::Running),
        ]
    };
    // seq 1-3: a inserted and started.
    store
        .append([vec![insert(&a)], start(&a).to_vec()].concat())
        .await
        .unwrap();
    // seq 4: a's output, then b inserted in the same batch (5), started (6-7).
    let batch = [vec![output(&a, "a1"), insert(&b)], start(&b).to_vec()].concat();
    store.append(batch).await.unwrap();
    // Interleaved outputs, a completes, b keeps running.
    one(&store, output(&b, "b1")).await.unwrap(); // 8
    one(&store, output(&a, "a2")).await.unwrap(); // 9
    one(
        &store,
        transition(&a, TaskState::Running, TaskState::Completed),
    )
    .await
    .unwrap(); // 10
    one(&store, output(&b, "b2")).await.unwrap(); // 11
    store.append(vec![insert(&c)]).await.unwrap(); // other session, seq 1

    assert_eq!(seqs(&store, a.task_id).await, [1, 2, 3, 4, 9, 10]);
    assert_eq!(seqs(&store, b.task_id).await, [5, 6, 7, 8, 11]);
    assert_eq!(seqs(&store, c.task_id).await, [1]);
    // b ends: its range closes; later events of the session are not its.
    one(
        &store,
        transition(&b, TaskState::Running, TaskState::Failed),
    )
    .await
    .unwrap(); // 12
    let d = task(&s, "echo", None);
    store.append(vec![insert(&d)]).await.unwrap(); // 13
    assert_eq!(seqs(&store, b.task_id).await, [5, 6, 7, 8, 11, 12]);
    assert_eq!(seqs(&store, d.task_id).await, [13]);
    assert!(
        store
            .task_events(uuid::Uuid::now_v7())
            .await
            .unwrap()
            .is_empty()
    );
}

/// A store left idle long enough for its writer to give its cache back
/// (SQLite: `store/sqlite/rest.rs`) goes on where it stopped: the next
/// event of a running task takes the next seq, a new session and task are
/// stored, and the task's events read back whole.
pub async fn writes_go_on_after_an_idle_spell(store: Arc<dyn Store>) {
    user(&store, "u").await;
    let s = session(&store, "u").await;
    let a = task(&s, "echo", None);
    one(&store, insert(&a)).await.unwrap();
    one(
        &store,
        transition(&a, TaskState::Pending, TaskState::Running),
    )
    .await
    .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1_500)).await;
    let next = one(&store, output(&a, "after the rest")).await.unwrap();
    assert_eq!(next.seq, 3);
    let other = session(&store, "u").await;
    let b = task(&other, "echo", None);
    assert_eq!(one(&store, insert(&b)).await.unwrap().seq, 1);
    assert_eq!(seqs(&store, a.task_id).await, vec![1, 2, 3]);
}
