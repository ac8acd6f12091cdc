//! A task submitted to a cluster node that runs its agent starts as on a
//! single node: its insert is stored already claimed (leased) by that node,
//! and its `planning` and `running` share the insert's commit. A node
//! without a free slot, or without the agent, leaves the task to the pool.
//!
//! Needs `SWITCHBOARD_TEST_POSTGRES_URL` (see `PgDb::create`).

mod common;

use common::*;
use serde_json::json;
use sqlx::Row;

/// Start a node named `id` over `db` with a short lease.
async fn node(db: &PgDb, id: &str, dir: &tempfile::TempDir) -> BinaryServer {
    let path = dir.path().join("lease.toml");
    std::fs::write(&path, "[limits]\nlease_ms = 3000\n").unwrap();
    let config = path.display().to_string();
    BinaryServer::start_url(&db.url, &["--node-id", id, "--config", &config]).await
}

#[tokio::test]
async fn submitted_task_is_claimed_and_started_in_its_insert_commit() {
    let Some(db) = PgDb::create().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let a = node(&db, "a", &dir).await;
    let (status, task) = a
        .post(
            "/api/runtime/tasks/submit",
            ADMIN_TOKEN,
            json!({"agent_type": "echo", "prompt": "x".repeat(40), "params": {"chunk_size": 1, "delay_ms": 50}}),
        )
        .await;
    assert_eq!(status, 200, "{task}");
    let id = task["task_id"].as_str().unwrap().to_owned();
    a.wait_task(&id, WAIT, |t| t["state"] == "running").await;

    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    let task_id: uuid::Uuid = id.parse().unwrap();
    let row =
        sqlx::query("SELECT node_id, lease_until > now() AS leased FROM tasks WHERE task_id = $1")
            .bind(task_id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(
        row.get::<Option<String>, _>("node_id").as_deref(),
        Some("a")
    );
    assert!(row.get::<bool, _>("leased"));

    // The first three events: submitted, planning, running, written by one
    // transaction (one xmin).
    let first: Vec<(String, String)> = sqlx::query_as(
        "SELECT xmin::text, data->>'state' FROM events WHERE task_id = $1 ORDER BY seq LIMIT 3",
    )
    .bind(task_id)
    .fetch_all(&pool)
    .await
    .unwrap();
    let states: Vec<&str> = first.iter().map(|(_, s)| s.as_str()).collect();
    assert_eq!(states, ["pending", "planning", "running"], "{first:?}");
    assert!(first.iter().all(|(x, _)| *x == first[0].0), "{first:?}");

    let done = a.wait_task(&id, WAIT, |t| t["state"] == "completed").await;
    assert_eq!(done["result"], "x".repeat(40), "{done}");
    pool.close().await;
}
