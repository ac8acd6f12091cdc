//! PostgreSQL crashes and restarts under load: three nodes on a private
//! PostgreSQL instance (made with `initdb` in a temporary directory), with
//! clients submitting keyed tasks to all of them and three sessions
//! streamed live. The instance is stopped with `-m immediate` (a crash) and
//! started again. Submits meanwhile get `503 unavailable`; nothing
//! acknowledged is lost; every stream resumes with no gap and no
//! duplicate; no task is left hanging; the nodes recover by themselves.
//!
//! Needs PostgreSQL's server binaries (`/usr/lib/postgresql/*/bin`) and
//! root (to run them as `postgres`). Without them the test prints why and
//! passes, except under `CI=true`, where it fails.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::durable::*;
use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

const CLIENTS: usize = 6;
const PER_CLIENT: usize = 30;

/// A PostgreSQL instance of this test's own, stopped when dropped.
struct PrivatePg {
    bin: PathBuf,
    data: PathBuf,
    port: u16,
    _dir: tempfile::TempDir,
}

impl PrivatePg {
    fn create() -> Option<Self> {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()
            .and_then(|d| d.filter_map(|e| e.ok()).map(|e| e.path().join("bin")).max());
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let made = bin.as_ref().is_some_and(|bin| {
            run(
                "chown",
                &["-R", "postgres"],
                &[dir.path().to_str().unwrap()],
            ) && run(
                "runuser",
                &["-u", "postgres", "--"],
                &[
                    bin.join("initdb").to_str().unwrap(),
                    "-D",
                    data.to_str().unwrap(),
                    "-A",
                    "trust",
                    "-U",
                    "postgres",
                    "--no-sync",
                ],
            )
        });
        if !made {
            let why =
                "cannot make a private PostgreSQL instance (needs its server binaries and root)";
            assert!(std::env::var("CI").as_deref() != Ok("true"), "{why}");
            eprintln!("skipped: {why}");
            return None;
        }
        let pg = PrivatePg {
            bin: bin.unwrap(),
            data,
            port: free_port(),
            _dir: dir,
        };
        pg.start();
        Some(pg)
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn pg_ctl(&self, args: &[&str]) -> bool {
        let pg_ctl = self.bin.join("pg_ctl");
        let mut all = vec![pg_ctl.to_str().unwrap(), "-D", self.data.to_str().unwrap()];
        all.extend_from_slice(args);
        run("runuser", &["-u", "postgres", "--"], &all)
    }

    fn start(&self) {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={}",
            self.port,
            self.data.display()
        );
        let log = self.data.join("server.log");
        assert!(
            self.pg_ctl(&["-w", "-l", log.to_str().unwrap(), "-o", &options, "start"]),
            "PostgreSQL did not start"
        );
    }

    /// Stop at once, without a checkpoint: what a crash leaves.
    fn crash(&self) {
        assert!(self.pg_ctl(&["-w", "-m", "immediate", "stop"]));
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        self.pg_ctl(&["-m", "immediate", "stop"]);
    }
}

fn run(program: &str, pre: &[&str], args: &[&str]) -> bool {
    Command::new(program)
        .args(pre)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A session streamed over WebSocket, resumed with `after_seq` whenever the
/// connection ends. Returns the seqs received once `target` says the stream
/// is complete (the stored last seq).
async fn watch_session(
    ws_url: String,
    session: tokio::sync::oneshot::Sender<String>,
    mut target: watch::Receiver<Option<i64>>,
) -> Vec<i64> {
    let mut session = Some(session);
    let mut id: Option<String> = None;
    let mut seqs: Vec<i64> = Vec::new();
    loop {
        let done = |seqs: &[i64], t: &watch::Receiver<Option<i64>>| {
            t.borrow()
                .is_some_and(|n| seqs.last().copied().unwrap_or(0) >= n)
        };
        if done(&seqs, &target) {
            return seqs;
        }
        let Ok((mut ws, _)) = tokio_tungstenite::connect_async(&ws_url).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let mut hello = json!({"op": "hello", "id": 1, "token": ADMIN_TOKEN});
        if let Some(id) = &id {
            hello["session_id"] = json!(id);
            hello["after_seq"] = json!(seqs.last().copied().unwrap_or(0));
        }
        if ws.send(Message::text(hello.to_string())).await.is_err() {
            continue;
        }
        loop {
            let msg = tokio::select! {
                m = ws.next() => m,
                _ = target.changed() => if done(&seqs, &target) { return seqs } else { continue },
            };
            let Some(Ok(Message::Text(t))) = msg else {
                if matches!(msg, Some(Ok(_))) {
                    continue;
                }
                break; // closed or failed: resume
            };
            let f: Value = serde_json::from_str(t.as_str()).unwrap();
            if f["op"] == "reply" && f["id"] == 1 {
                if f["ok"] != true {
                    break; // the store is down: try again
                }
                let sid = f["result"]["session_id"].as_str().unwrap().to_owned();
                if let Some(tx) = session.take() {
                    let _ = tx.send(sid.clone());
                }
                id = Some(sid);
            } else if f["op"] == "event" {
                seqs.push(f["seq"].as_i64().unwrap());
                if done(&seqs, &target) {
                    return seqs;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_crash_under_load_loses_nothing_acknowledged() {
    let Some(pg) = PrivatePg::create() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("limits.toml");
    std::fs::write(
        &config,
        "[security]\nsubmits_per_minute = 1000000\nmax_active_tasks_per_user = 1000000\n",
    )
    .unwrap();
    let config = config.display().to_string();
    let mut nodes = Vec::new();
    for id in ["a", "b", "c"] {
        let args = ["--node-id", id, "--config", config.as_str()];
        nodes.push(BinaryServer::start_url(&pg.url(), &args).await);
    }

    let mut watchers = Vec::new();
    let mut sessions = Vec::new();
    for node in &nodes {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (target_tx, target_rx) = watch::channel(None);
        let watcher = tokio::spawn(watch_session(node.ws_url.clone(), tx, target_rx));
        watchers.push((watcher, target_tx));
        sessions.push(rx.await.unwrap());
    }

    let bases: Vec<String> = nodes.iter().map(|n| n.base.clone()).collect();
    let refusals = Arc::new(Mutex::new(Vec::new()));
    let mut clients = tokio::task::JoinSet::new();
    for c in 0..CLIENTS {
        let (bases, session, refusals) = (bases.clone(), sessions[c % 3].clone(), refusals.clone());
        clients.spawn(async move {
            let mut acked = Vec::new();
            for k in 0..PER_CLIENT {
                tokio::time::sleep(Duration::from_millis(rand::random_range(100..400))).await;
                let key = format!("c{c}-k{k}");
                let prompt = format!("payload {c}/{k} {}", rand::random::<u64>());
                let body = json!({"agent_type": "echo", "prompt": prompt, "idempotency_key": key,
                                  "session_id": session, "params": {"chunk_size": 8}});
                let (task_id, _) =
                    submit_until_acked(&bases, c + k, ADMIN_TOKEN, &body, &refusals).await;
                acked.push(Acked {
                    key,
                    task_id,
                    prompt,
                });
            }
            acked
        });
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    pg.crash();
    tokio::time::sleep(Duration::from_secs(3)).await;
    pg.start();
    let mut acked = Vec::new();
    while let Some(r) = clients.join_next().await {
        acked.extend(r.expect("a client panicked"));
    }

    // Submits refused meanwhile were refused clearly.
    let refusals = refusals.lock().unwrap().clone();
    println!("{} acknowledged, {} refusals", acked.len(), refusals.len());
    assert!(!refusals.is_empty(), "the crash refused no submit");
    for (status, body) in &refusals {
        assert!(
            *status == 503 && body["error"]["code"] == "unavailable",
            "not a clear refusal: {status} {body}"
        );
    }
    // No task left hanging: each ends, completed or failed with a reason.
    for (i, a) in acked.iter().enumerate() {
        let node = &nodes[i % 3];
        let t = node
            .wait_task(&a.task_id, WAIT, |t| {
                ["completed", "failed"].contains(&t["state"].as_str().unwrap_or(""))
            })
            .await;
        assert!(t["state"] == "completed" || t["error"].is_string(), "{t}");
    }
    check_postgres(&pg.url(), &acked, CLIENTS * PER_CLIENT).await;

    // Every stream, received live across the crash, is exactly 1..N.
    let pool = sqlx::PgPool::connect(&pg.url()).await.unwrap();
    let mut lasts = Vec::new();
    for s in &sessions {
        let id: uuid::Uuid = s.parse().unwrap();
        let (last,): (i64,) = sqlx::query_as("SELECT last_seq FROM sessions WHERE session_id = $1")
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap();
        lasts.push(last);
    }
    pool.close().await;
    for (i, (w, target)) in watchers.into_iter().enumerate() {
        let _ = target.send(Some(lasts[i]));
        let seqs = tokio::time::timeout(WAIT, w)
            .await
            .expect("a stream stalled")
            .unwrap();
        assert_eq!(
            seqs,
            (1..=lasts[i]).collect::<Vec<_>>(),
            "session {}",
            sessions[i]
        );
    }

    // The nodes recovered by themselves.
    for node in &nodes {
        let (status, _) = node.get("/readyz", ADMIN_TOKEN).await;
        assert_eq!(status, 200);
        let (status, t) = node
            .post(
                "/api/runtime/tasks/submit",
                ADMIN_TOKEN,
                json!({"agent_type": "echo", "prompt": "after the crash"}),
            )
            .await;
        assert_eq!(status, 200, "{t}");
        let id = t["task_id"].as_str().unwrap();
        node.wait_task(id, WAIT, |t| t["state"] == "completed")
            .await;
    }
}
