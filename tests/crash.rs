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

use common::*;
use serde_json::{Value, json};

const CLIENTS: usize = 20;
const PER_CLIENT: usize = 50;
const KILLS: usize = 10;

/// What a client was told: the task of a key, and the prompt it sent.
#[derive(Debug, Clone)]
struct Acked {
    key: String,
    task_id: String,
    prompt: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_tasks_survive_ten_kill9s() {
    let dir = tempfile::tempdir().unwrap();
    let db = db_in(&dir);
    let config = limits_config(&dir);
    let addr = format!("127.0.0.1:{}", free_port());
    let args = ["--config", config.as_str()];
    let mut node = BinaryServer::start_at(&db, &addr, &args).await;
    let tokens = users(&node.base, CLIENTS).await;

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
    let tokens = users(&nodes[0].1.base, CLIENTS).await;
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
    check_postgres(&db.url, &acked).await;
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
                    let (task_id, tries) = submit_until_acked(&bases, &token, &key, &prompt).await;
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

/// `n` developers; their tokens.
async fn users(base: &str, n: usize) -> Vec<String> {
    let mut tokens = Vec::new();
    for i in 0..n {
        let (status, body) = send(
            http()
                .post(format!("{base}/api/admin/users"))
                .bearer_auth(ADMIN_TOKEN)
                .json(&json!({"user_id": format!("crash-{i}@test"), "roles": ["developer"]})),
        )
        .await;
        assert_eq!(status, 201, "{body}");
        tokens.push(body["token"].as_str().unwrap().to_owned());
    }
    tokens
}

/// Submit until a node acknowledges (the same key every time, the next node
/// after a failure); the task id and how many tries it took.
async fn submit_until_acked(
    bases: &[String],
    token: &str,
    key: &str,
    prompt: &str,
) -> (String, usize) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    for tries in 1.. {
        let sent = client
            .post(format!("{}/api/runtime/tasks/submit", bases[tries % bases.len()]))
            .bearer_auth(token)
            .json(&json!({"agent_type": "echo", "prompt": prompt, "idempotency_key": key, "params": {"chunk_size": 4}}))
            .send()
            .await;
        if let Ok(resp) = sent {
            if resp.status() == 200 {
                if let Ok(body) = resp.json::<Value>().await {
                    return (body["task_id"].as_str().unwrap().to_owned(), tries);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    unreachable!()
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
    let mut sessions = conn.prepare("SELECT sid FROM sessions").unwrap();
    let sids: Vec<i64> = sessions
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    for sid in sids {
        let mut q = conn
            .prepare("SELECT seq FROM events WHERE sid = ? ORDER BY seq")
            .unwrap();
        let seqs: Vec<i64> = q
            .query_map([sid], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let expected: Vec<i64> = (1..=seqs.len() as i64).collect();
        assert_eq!(seqs, expected, "session {sid} has a gap or a duplicate");
    }
}

/// What the database holds after the last kill: the same checks as
/// [`check_file`], on PostgreSQL's tables.
async fn check_postgres(url: &str, acked: &[Acked]) {
    let pool = sqlx::PgPool::connect(url).await.unwrap();
    for a in acked {
        let id: uuid::Uuid = a.task_id.parse().unwrap();
        let row: Option<(String, Option<String>)> =
            sqlx::query_as("SELECT prompt, idempotency_key FROM tasks WHERE task_id = $1")
                .bind(id)
                .fetch_optional(&pool)
                .await
                .unwrap();
        let (prompt, key) = row.unwrap_or_else(|| panic!("acknowledged task {id} is lost"));
        assert_eq!(
            (prompt.as_str(), key.as_deref()),
            (a.prompt.as_str(), Some(a.key.as_str()))
        );
    }
    let (tasks, keys): (i64, i64) = sqlx::query_as(
        "SELECT COUNT(*), COUNT(DISTINCT user_id || ' ' || idempotency_key) FROM tasks",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((tasks, keys), ((CLIENTS * PER_CLIENT) as i64, tasks));
    let gaps: Vec<(uuid::Uuid, i64, i64, i64)> = sqlx::query_as(
        "SELECT session_id, COUNT(*), MIN(seq), MAX(seq) FROM events GROUP BY session_id \
         HAVING MIN(seq) <> 1 OR MAX(seq) <> COUNT(*)",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(gaps.is_empty(), "sessions with a gap: {gaps:?}");
    pool.close().await;
}
