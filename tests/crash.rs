//! Crash durability: 20 clients submit 1,000 tasks with idempotency keys
//! while the node is killed with SIGKILL ten times at random moments and
//! started again on the same file; clients retry whatever was not
//! acknowledged. Afterwards every acknowledged task is stored with its exact
//! payload, no key made two tasks, every session's events are 1..N, and
//! SQLite's integrity check passes. The same on PostgreSQL with three
//! nodes, killed one at a time (needs `SWITCHBOARD_TEST_POSTGRES_URL`).

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::durable::*;
use common::*;
use serde_json::json;

const CLIENTS: usize = 20;
const PER_CLIENT: usize = 50;
const KILLS: usize = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_tasks_survive_ten_kill9s() {
    let dir = tempfile::tempdir().unwrap();
    let db = db_in(&dir);
    let config = limits_config(&dir);
    let addr = format!("127.0.0.1:{}", free_port());
    let args = ["--config", config.as_str()];
    let mut node = BinaryServer::start_at(&db, &addr, &args).await;
    let tokens = developers(&node.base, "crash", CLIENTS).await;

    let clients = Clients::start(vec![node.base.clone()], tokens);
    for _ in 0..KILLS {
        tokio::time::sleep(Duration::from_millis(rand::random_range(300..1200))).await;
        node.kill9().await;
        node = BinaryServer::start_at(&db, &addr, &args).await;
    }
    let acked = clients.finish().await;
    node.kill9().await;
    check_file(&db, &acked);
}

/// Three nodes on one PostgreSQL database; ten times one of them (at
/// random) is killed and started again while clients submit to all three,
/// going to the next node when one fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_tasks_survive_kill9s_of_cluster_nodes() {
    let Some(db) = PgDb::create().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let config = limits_config(&dir);
    let mut nodes = Vec::new();
    for id in ["a", "b", "c"] {
        let addr = format!("127.0.0.1:{}", free_port());
        let args = ["--node-id", id, "--config", config.as_str()];
        nodes.push((
            addr.clone(),
            BinaryServer::start_on(&db.url, &addr, &args).await,
        ));
    }
    let tokens = developers(&nodes[0].1.base, "crash", CLIENTS).await;
    let bases = nodes.iter().map(|(_, n)| n.base.clone()).collect();
    let clients = Clients::start(bases, tokens);
    for _ in 0..KILLS {
        tokio::time::sleep(Duration::from_millis(rand::random_range(300..1200))).await;
        let i = rand::random_range(0..nodes.len());
        let (addr, node) = nodes.swap_remove(i);
        node.kill9().await;
        let id = ["a", "b", "c"][i % 3].to_owned() + "-again";
        let args = ["--node-id", id.as_str(), "--config", config.as_str()];
        nodes.push((
            addr.clone(),
            BinaryServer::start_on(&db.url, &addr, &args).await,
        ));
    }
    let acked = clients.finish().await;
    for (_, node) in nodes {
        node.kill9().await;
    }
    check_postgres(&db.url, &acked, CLIENTS * PER_CLIENT).await;
}

/// A config file lifting the per-user limits, so that only kills refuse.
fn limits_config(dir: &tempfile::TempDir) -> String {
    let config = dir.path().join("limits.toml");
    std::fs::write(
        &config,
        "[security]\nsubmits_per_minute = 1000000\nmax_active_tasks_per_user = 1000000\n",
    )
    .unwrap();
    config.display().to_string()
}

/// The submitting clients, one per token, and what they were told.
struct Clients {
    set: tokio::task::JoinSet<()>,
    acked: Arc<Mutex<Vec<Acked>>>,
    retries: Arc<Mutex<usize>>,
}

impl Clients {
    /// Each client submits `PER_CLIENT` tasks over about ten seconds.
    fn start(bases: Vec<String>, tokens: Vec<String>) -> Self {
        let acked = Arc::new(Mutex::new(Vec::new()));
        let retries = Arc::new(Mutex::new(0usize));
        let mut set = tokio::task::JoinSet::new();
        for (c, token) in tokens.into_iter().enumerate() {
            let (acked, retries) = (acked.clone(), retries.clone());
            // Each client starts at another node.
            let mut bases = bases.clone();
            let n = bases.len();
            bases.rotate_left(c % n);
            set.spawn(async move {
                for k in 0..PER_CLIENT {
                    // Spread over about ten seconds, so that the kills
                    // fall among the submits.
                    let pause = rand::random_range(100..300);
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                    let key = format!("client-{c}-task-{k}");
                    let prompt = format!("payload {c}/{k} {}", rand::random::<u64>());
                    let body = json!({"agent_type": "echo", "prompt": prompt,
                                      "idempotency_key": key, "params": {"chunk_size": 4}});
                    let refusals = Mutex::new(Vec::new());
                    let (task_id, tries) =
                        submit_until_acked(&bases, 0, &token, &body, &refusals).await;
                    *retries.lock().unwrap() += tries - 1;
                    acked.lock().unwrap().push(Acked {
                        key,
                        task_id,
                        prompt,
                    });
                }
            });
        }
        Clients {
            set,
            acked,
            retries,
        }
    }

    /// Wait for every client; what they were acknowledged.
    async fn finish(mut self) -> Vec<Acked> {
        let all_done = tokio::time::timeout(Duration::from_secs(120), async {
            while let Some(r) = self.set.join_next().await {
                r.expect("a client panicked");
            }
        })
        .await;
        assert!(all_done.is_ok(), "the clients did not finish");
        let acked = self.acked.lock().unwrap().clone();
        println!(
            "{} tasks acknowledged through {KILLS} kills, {} submits retried",
            acked.len(),
            self.retries.lock().unwrap()
        );
        assert_eq!(acked.len(), CLIENTS * PER_CLIENT);
        acked
    }
}

/// What the file holds after the last kill.
fn check_file(db: &std::path::Path, acked: &[Acked]) {
    let conn = rusqlite::Connection::open(db).unwrap();
    let integrity: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(integrity, "ok");
    // 0 lost: every acknowledged task, with its exact payload.
    for a in acked {
        let (prompt, key): (String, String) = conn
            .query_row(
                "SELECT prompt, idempotency_key FROM tasks WHERE task_id = ?",
                [&a.task_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap_or_else(|e| panic!("acknowledged task {} is lost: {e}", a.task_id));
        assert_eq!(
            (prompt.as_str(), key.as_str()),
            (a.prompt.as_str(), a.key.as_str())
        );
    }
    // 0 duplicates: one task per key, and no other task.
    let (tasks, keys): (i64, i64) = conn
        .query_row(
            "SELECT COUNT(*), COUNT(DISTINCT user_id || ' ' || idempotency_key) FROM tasks",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((tasks, keys), ((CLIENTS * PER_CLIENT) as i64, tasks));
    // Every session's events are exactly 1..N.
    check_sqlite_streams(&conn);
}
