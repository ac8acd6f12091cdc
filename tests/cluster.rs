//! Several nodes over one PostgreSQL, each a separate process of the real
//! binary: work reaches the node that has the agent, events reach clients on
//! any node, a killed node's tasks fail over within the lease time, and a
//! cut notification connection loses nothing.
//!
//! Needs `SWITCHBOARD_TEST_POSTGRES_URL` (see `PgDb::create`).

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

/// Lease time of the test nodes: short, so that failover is quick.
const LEASE_MS: u64 = 3000;

/// A config file giving a node an extra echo agent named `b-only`.
fn config_with_b_only(dir: &tempfile::TempDir) -> String {
    let path = dir.path().join("b.toml");
    std::fs::write(
        &path,
        format!(
            "[limits]\nlease_ms = {LEASE_MS}\n\n[[agents]]\nname = \"b-only\"\nkind = \"echo\"\ndescription = \"only on node b\"\n"
        ),
    )
    .unwrap();
    path.display().to_string()
}

/// A config file with only the short lease.
fn config_plain(dir: &tempfile::TempDir) -> String {
    let path = dir.path().join("plain.toml");
    std::fs::write(&path, format!("[limits]\nlease_ms = {LEASE_MS}\n")).unwrap();
    path.display().to_string()
}

/// Start a node named `id` over `db` with `config`.
async fn node(db: &PgDb, id: &str, config: &str) -> BinaryServer {
    BinaryServer::start_url(&db.url, &["--node-id", id, "--config", config]).await
}

/// Wait until node `on` lists `agent` as run by node `by`.
async fn wait_agent(on: &BinaryServer, agent: &str, by: &str) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, list) = on.get("/api/runtime/agents", ADMIN_TOKEN).await;
        assert_eq!(status, 200, "{list}");
        if let Some(a) = list
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["agent_type"] == agent && a["metadata"]["node_id"] == by)
        {
            return a.clone();
        }
        assert!(
            Instant::now() < deadline,
            "{agent} on {by} never listed: {list}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn is_terminal(e: &Value) -> bool {
    e["type"] == "task.state"
        && ["completed", "failed", "cancelled"].contains(&e["data"]["state"].as_str().unwrap_or(""))
}

/// Submit on A for an agent only B has: B claims and runs it, and a client
/// on C sees every event live, in order, with gapless seq; the agents list
/// on any node shows B's agent with its node and health.
#[tokio::test]
async fn agent_only_on_b_runs_there_and_c_watches() {
    let Some(db) = PgDb::create().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (plain, with_b) = (config_plain(&dir), config_with_b_only(&dir));
    let a = node(&db, "a", &plain).await;
    let b = node(&db, "b", &with_b).await;
    let c = node(&db, "c", &plain).await;

    let listed = wait_agent(&a, "b-only", "b").await;
    assert_eq!(listed["metadata"]["health"], "ok");
    assert_eq!(listed["available"], true);
    wait_agent(&c, "echo", "a").await;

    let (mut watcher, hello) = c.ws(ADMIN_TOKEN, json!({})).await;
    let session = hello["session_id"].as_str().unwrap().to_owned();
    let prompt = "runs on node b, watched from node c";
    let (status, task) = a
        .post(
            "/api/runtime/tasks/submit",
            ADMIN_TOKEN,
            json!({"agent_type": "b-only", "prompt": prompt, "session_id": session, "params": {"chunk_size": 5}}),
        )
        .await;
    assert_eq!(status, 200, "{task}");
    assert_eq!(task["state"], "pending");
    let id = task["task_id"].as_str().unwrap().to_owned();

    let events = watcher.until_terminal(&id).await;
    assert_gapless(&events);
    let states = state_names(&events);
    assert_eq!(states, ["pending", "planning", "running", "completed"]);
    let output = output_text(&events);
    assert_eq!(output, prompt);

    let (_, state) = a
        .get(&format!("/api/runtime/tasks/{id}/state"), ADMIN_TOKEN)
        .await;
    assert_eq!(state["state"], "completed");
    assert_eq!(state["result"], prompt);
    drop(b);
}

/// kill -9 the node running a task: another node fails it within the
/// lease time (plus one renewal tick), naming the dead node.
#[tokio::test]
async fn killed_node_fails_over_within_the_lease() {
    let Some(db) = PgDb::create().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (plain, with_b) = (config_plain(&dir), config_with_b_only(&dir));
    let a = node(&db, "a", &plain).await;
    let b = node(&db, "b", &with_b).await;
    wait_agent(&a, "b-only", "b").await;

    let (status, task) = a
        .post(
            "/api/runtime/tasks/submit",
            ADMIN_TOKEN,
            json!({"agent_type": "b-only", "prompt": "x".repeat(200), "params": {"chunk_size": 1, "delay_ms": 100}}),
        )
        .await;
    assert_eq!(status, 200, "{task}");
    let id = task["task_id"].as_str().unwrap().to_owned();
    a.wait_task(&id, WAIT, |t| t["state"] == "running").await;

    b.kill9().await;
    let killed = Instant::now();
    let failed = a
        .wait_task(&id, WAIT, |t| {
            ["completed", "failed", "cancelled"].contains(&t["state"].as_str().unwrap_or(""))
        })
        .await;
    let took = killed.elapsed();
    assert_eq!(failed["state"], "failed", "{failed}");
    let error = failed["error"].as_str().unwrap();
    assert!(
        error.contains("node b stopped renewing its lease"),
        "{error}"
    );
    assert!(
        took < Duration::from_millis(LEASE_MS * 2 + 1000),
        "failover took {took:?}"
    );
}

/// Many clients on three nodes submit into one session at once: the
/// session's stream is gapless, every task completes, and a watcher on any
/// node sees all of it in order.
#[tokio::test]
async fn concurrent_submits_across_nodes_keep_seq_gapless() {
    let Some(db) = PgDb::create().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let plain = config_plain(&dir);
    let nodes = [
        node(&db, "a", &plain).await,
        node(&db, "b", &plain).await,
        node(&db, "c", &plain).await,
    ];
    let (mut watcher, hello) = nodes[2].ws(ADMIN_TOKEN, json!({})).await;
    let session = hello["session_id"].as_str().unwrap().to_owned();

    let clients = 12;
    let per_client = 4;
    let mut handles = Vec::new();
    for i in 0..clients {
        let base = nodes[i % 3].base.clone();
        let session = session.clone();
        handles.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for j in 0..per_client {
                let (status, t) = send(
                    http()
                        .post(format!("{base}/api/runtime/tasks/submit"))
                        .bearer_auth(ADMIN_TOKEN)
                        .json(&json!({"agent_type": "echo", "prompt": format!("client {i} task {j}"), "session_id": session, "params": {"chunk_size": 4}})),
                )
                .await;
                assert_eq!(status, 200, "{t}");
                ids.push(t["task_id"].as_str().unwrap().to_owned());
            }
            ids
        }));
    }
    let mut ids = Vec::new();
    for h in handles {
        ids.extend(h.await.unwrap());
    }
    let total = ids.len();
    let mut done = 0;
    let events = watcher
        .events_until(|e| {
            if is_terminal(e) {
                done += 1;
            }
            done == total
        })
        .await;
    assert_gapless(&events);
    for id in &ids {
        let states: Vec<_> = events
            .iter()
            .filter(|e| e["task_id"] == id.as_str() && e["type"] == "task.state")
            .map(|e| e["data"]["state"].as_str().unwrap())
            .collect();
        assert_eq!(
            states,
            ["pending", "planning", "running", "completed"],
            "{id}: {:?}",
            events
                .iter()
                .filter(|e| e["task_id"] == id.as_str())
                .map(|e| e["data"].to_string())
                .collect::<Vec<_>>()
        );
    }
    // The stored stream, read from another node, is the same.
    let (_, stored) = nodes[0]
        .get(
            &format!("/api/runtime/sessions/{session}/events?after_seq=0&limit=1000"),
            ADMIN_TOKEN,
        )
        .await;
    assert_eq!(stored["events"].as_array().unwrap().len(), events.len());
    let (_, verify) = nodes[1].get("/api/audit/verify", ADMIN_TOKEN).await;
    assert_eq!(verify["ok"], true, "{verify}");
}

/// Cut a node's notification connection (pg_terminate_backend) while a task
/// runs elsewhere: the node reconnects and its client still gets every
/// event, gapless, including those committed while it was cut.
#[tokio::test]
async fn cut_notification_connection_loses_nothing() {
    let Some(db) = PgDb::create().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (plain, with_b) = (config_plain(&dir), config_with_b_only(&dir));
    let a = node(&db, "a", &plain).await;
    let _b = node(&db, "b", &with_b).await;
    wait_agent(&a, "b-only", "b").await;

    let (mut ws, _) = a.ws(ADMIN_TOKEN, json!({})).await;
    let task = ws
        .ok(json!({"op": "task.submit", "agent_type": "b-only", "prompt": "abcdefghijklmnopqrstuvwxyz", "params": {"chunk_size": 1, "delay_ms": 40}}))
        .await;
    let id = task["task_id"].as_str().unwrap().to_owned();
    let first = ws.events_until(|e| e["type"] == "task.output").await;

    let cut = db
        .admin_exec(&format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE application_name = 'switchboard-listener a' AND datname = '{}'",
            db.name()
        ))
        .await;
    assert_eq!(cut, 1, "node a's listener connection was not found");

    let rest = ws.until_terminal(&id).await;
    let all: Vec<_> = first.into_iter().chain(rest).collect();
    assert_gapless(&all);
    let output = output_text(&all);
    assert_eq!(output, "abcdefghijklmnopqrstuvwxyz");

    // Cut again, and submit right away: whether the events are committed
    // before or after the listener is back, they arrive (by notification or
    // by the reconnect's catch-up).
    let cut = db
        .admin_exec(&format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE application_name = 'switchboard-listener a' AND datname = '{}'",
            db.name()
        ))
        .await;
    assert!(cut <= 1);
    let task = ws
        .ok(json!({"op": "task.submit", "agent_type": "b-only", "prompt": "after the cut"}))
        .await;
    let id = task["task_id"].as_str().unwrap().to_owned();
    let events = ws.until_terminal(&id).await;
    assert_eq!(events.last().unwrap()["data"]["state"], "completed");
}

/// A TCP forwarder to PostgreSQL that a test can cut and restore, to play a
/// database outage for one node only.
struct Proxy {
    addr: std::net::SocketAddr,
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
    links: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Proxy {
    async fn start(upstream: String) -> Self {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let proxy = Proxy {
            addr,
            up: Default::default(),
            links: Default::default(),
        };
        proxy.up.store(true, Ordering::SeqCst);
        let (up, links) = (proxy.up.clone(), proxy.links.clone());
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !up.load(Ordering::SeqCst) {
                    continue; // dropped: connection refused, as good as
                }
                let upstream = upstream.clone();
                let link = tokio::spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                links.lock().unwrap().push(link.abort_handle());
            }
        });
        proxy
    }

    /// Drop every connection and refuse new ones.
    fn cut(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        for link in self.links.lock().unwrap().drain(..) {
            link.abort();
        }
    }

    fn restore(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Losing the database: `/readyz` fails and submits answer 503
/// `unavailable`; when it returns, the node recovers by itself.
#[tokio::test]
async fn database_loss_is_unavailable_and_recovers() {
    let Some(db) = PgDb::create().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let plain = config_plain(&dir);
    let (before, after) = db.url.split_once('@').unwrap();
    let (hostport, rest) = after.split_once('/').unwrap();
    let proxy = Proxy::start(hostport.to_owned()).await;
    let url = format!("{before}@{}/{rest}", proxy.addr);
    let a = BinaryServer::start_url(&url, &["--node-id", "a", "--config", &plain]).await;
    let submit = json!({"agent_type": "echo", "prompt": "hello"});
    let (status, _) = a
        .post("/api/runtime/tasks/submit", ADMIN_TOKEN, submit.clone())
        .await;
    assert_eq!(status, 200);

    proxy.cut();
    let ready = format!("{}/readyz", a.base);
    let deadline = Instant::now() + WAIT;
    while send(http().get(&ready)).await.0 != 503 {
        assert!(Instant::now() < deadline, "/readyz kept answering 200");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, body) = a
        .post("/api/runtime/tasks/submit", ADMIN_TOKEN, submit.clone())
        .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "unavailable", "{body}");

    proxy.restore();
    let deadline = Instant::now() + WAIT;
    while send(http().get(&ready)).await.0 != 200 {
        assert!(Instant::now() < deadline, "/readyz never recovered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, task) = a
        .post("/api/runtime/tasks/submit", ADMIN_TOKEN, submit)
        .await;
    assert_eq!(status, 200, "{task}");
    let id = task["task_id"].as_str().unwrap();
    let done = a.wait_task(id, WAIT, |t| t["state"] == "completed").await;
    assert_eq!(done["result"], "hello");
}

/// Approve, deny and cancel sent to one node reach the task on another.
#[tokio::test]
async fn control_reaches_the_task_on_another_node() {
    let Some(db) = PgDb::create().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (plain, with_b) = (config_plain(&dir), config_with_b_only(&dir));
    let a = node(&db, "a", &plain).await;
    let _b = node(&db, "b", &with_b).await;
    let c = node(&db, "c", &plain).await;
    wait_agent(&a, "b-only", "b").await;
    let submit = |params: Value| {
        let a = &a;
        async move {
            let (status, t) = a
                .post(
                    "/api/runtime/tasks/submit",
                    ADMIN_TOKEN,
                    json!({"agent_type": "b-only", "prompt": "needs a yes", "params": params}),
                )
                .await;
            assert_eq!(status, 200, "{t}");
            t["task_id"].as_str().unwrap().to_owned()
        }
    };

    // Approve on C: B's agent continues and completes.
    let id = submit(json!({"wait": true})).await;
    a.wait_task(&id, WAIT, |t| t["state"] == "waiting").await;
    let (status, body) = c
        .post(
            &format!("/api/runtime/tasks/{id}/respond"),
            ADMIN_TOKEN,
            json!({"approve": true}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let done = a.wait_task(&id, WAIT, |t| t["state"] == "completed").await;
    assert_eq!(done["result"], "needs a yes");

    // Deny on C: failed.
    let id = submit(json!({"wait": true})).await;
    a.wait_task(&id, WAIT, |t| t["state"] == "waiting").await;
    let (status, _) = c
        .post(
            &format!("/api/runtime/tasks/{id}/respond"),
            ADMIN_TOKEN,
            json!({"approve": false}),
        )
        .await;
    assert_eq!(status, 200);
    a.wait_task(&id, WAIT, |t| t["state"] == "failed").await;

    // Cancel on C while B streams: cancelled, and no output after it.
    let id = submit(json!({"chunk_size": 1, "delay_ms": 50})).await;
    a.wait_task(&id, WAIT, |t| t["state"] == "running").await;
    let (status, body) = c.cancel(ADMIN_TOKEN, &id).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"], "cancelled");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, detail) = a
        .get(&format!("/api/runtime/tasks/{id}"), ADMIN_TOKEN)
        .await;
    let events = detail["events"].as_array().unwrap();
    assert_eq!(events.last().unwrap()["state"], "cancelled", "{detail}");
}

/// Three nodes started at the same moment on an empty database: one
/// migrates and bootstraps, all of them serve.
#[tokio::test]
async fn nodes_start_together_on_an_empty_database() {
    let Some(db) = PgDb::create().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let plain = config_plain(&dir);
    let (a, b, c) = tokio::join!(
        node(&db, "a", &plain),
        node(&db, "b", &plain),
        node(&db, "c", &plain)
    );
    for n in [&a, &b, &c] {
        let (status, me) = n.get("/api/me", ADMIN_TOKEN).await;
        assert_eq!(status, 200, "{me}");
        assert_eq!(me["user_id"], "admin");
    }
}
