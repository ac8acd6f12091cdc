//! Drain and hand-over on SIGTERM, and failover of re-runnable tasks, on
//! several nodes of the real binary over one PostgreSQL: a rolling restart
//! under steady load fails no task, a task still running when the drain
//! time runs out fails saying so, and a re-runnable task of a killed node
//! starts over on another node while a plain one fails as before.
//!
//! Needs `SWITCHBOARD_TEST_POSTGRES_URL` (see `PgDb::create`).

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

/// Lease time of the test nodes: short, so that failover is quick.
const LEASE_MS: u64 = 3000;

/// Write a config file named `name` into `dir`.
fn config(dir: &tempfile::TempDir, name: &str, body: &str) -> String {
    let path = dir.path().join(name);
    std::fs::write(&path, body).unwrap();
    path.display().to_string()
}

/// SIGTERM `node` and wait for it to exit; returns its exit status and log.
async fn terminate(node: BinaryServer) -> (std::process::ExitStatus, String) {
    let pid = node.child.id().expect("node still running");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    let mut child = node.child;
    let status = tokio::time::timeout(WAIT * 2, child.wait())
        .await
        .expect("the node did not exit after SIGTERM")
        .expect("wait");
    // The log is read from the pipe by a task of its own: wait for the
    // node's last line to have been read.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let log = node.log.lock().unwrap().clone();
        if log.lines().any(|l| l.ends_with(" stopped")) || tokio::time::Instant::now() > deadline {
            return (status, log);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Poll `GET /api/runtime/tasks/{id}` on `node` until `done` holds.
async fn wait_task_events(node: &BinaryServer, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT * 2;
    loop {
        let (status, task) = node
            .get(&format!("/api/runtime/tasks/{id}"), ADMIN_TOKEN)
            .await;
        if status == 200 && done(&task) {
            return task;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "task {id} never got there: {task}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Wait until `on` lists `agent` as run by another live node.
async fn wait_agent(on: &BinaryServer, agent: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, list) = on.get("/api/runtime/agents", ADMIN_TOKEN).await;
        if list
            .as_array()
            .is_some_and(|l| l.iter().any(|a| a["agent_type"] == agent))
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{agent} never listed: {list}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The task's output so far.
fn output(task: &Value) -> String {
    task["events"]
        .as_array()
        .map(|events| {
            events
                .iter()
                .filter_map(|e| e["chunk"].as_str())
                .collect::<String>()
        })
        .unwrap_or_default()
}

fn is_terminal(state: &Value) -> bool {
    ["completed", "failed", "cancelled"].contains(&state.as_str().unwrap_or(""))
}

/// Submit `body` with an idempotency key to the nodes at `bases`, starting
/// with the `first`-th, moving to the next on any failure (a node that is
/// shutting down or restarting), until one accepts it. Returns the task id.
async fn submit_anywhere(bases: &[String], first: usize, mut body: Value) -> String {
    body["idempotency_key"] = json!(uuid::Uuid::new_v4().to_string());
    let deadline = tokio::time::Instant::now() + WAIT * 2;
    for attempt in 0.. {
        let base = &bases[(first + attempt) % bases.len()];
        let sent = http()
            .post(format!("{base}/api/runtime/tasks/submit"))
            .bearer_auth(ADMIN_TOKEN)
            .json(&body)
            .timeout(Duration::from_secs(10))
            .send()
            .await;
        if let Ok(r) = sent {
            if r.status() == 200 {
                let task: Value = r.json().await.unwrap();
                return task["task_id"].as_str().unwrap().to_owned();
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no node accepted a submit"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    unreachable!()
}

/// Wait until every task in `ids` has ended, reading the admin's task list
/// from the node at `base`; returns the tasks that did not complete.
async fn wait_all_ended(base: &str, ids: &HashSet<String>) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + WAIT * 4;
    loop {
        let (status, list) = send(
            http()
                .get(format!("{base}/api/runtime/tasks?limit=1000"))
                .bearer_auth(ADMIN_TOKEN),
        )
        .await;
        assert_eq!(status, 200, "{list}");
        let tasks: Vec<&Value> = list
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| ids.contains(t["task_id"].as_str().unwrap()))
            .collect();
        let ended = tasks.iter().filter(|t| is_terminal(&t["state"])).count();
        if tasks.len() == ids.len() && ended == ids.len() {
            return tasks
                .into_iter()
                .filter(|t| t["state"] != "completed")
                .cloned()
                .collect();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {} tasks listed, {ended} ended",
            tasks.len(),
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A rolling restart of three nodes (SIGTERM one, start it again on its
/// address, then the next) while clients keep submitting to any live node,
/// with an agent of two slots per node so that tasks queue in `pending`:
/// every task completes (queued ones were handed to other nodes, running
/// ones finished during the drain), and the drained nodes handed work back.
#[tokio::test]
async fn rolling_restart_under_load_fails_no_task() {
    let Some(db) = PgDb::create().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        &dir,
        "steady.toml",
        &format!(
            "[limits]\nlease_ms = {LEASE_MS}\ndrain_ms = 60000\n\n\
             [[agents]]\nname = \"steady\"\nkind = \"echo\"\nmax_concurrent = 2\n"
        ),
    );
    let listens: Vec<String> = (0..3)
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect();
    let mut nodes = Vec::new();
    for (i, listen) in listens.iter().enumerate() {
        let id = format!("n{i}");
        nodes.push(Some(
            BinaryServer::start_on(&db.url, listen, &["--node-id", &id, "--config", &cfg]).await,
        ));
    }
    let bases: Vec<String> = nodes
        .iter()
        .map(|n| n.as_ref().unwrap().base.clone())
        .collect();
    let body = json!({"agent_type": "steady", "prompt": "sixteen chars!!!",
                      "params": {"chunk_size": 4, "delay_ms": 50}});

    let ids = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for c in 0..3 {
        let (ids, stop, bases, body) = (ids.clone(), stop.clone(), bases.clone(), body.clone());
        clients.push(tokio::spawn(async move {
            let mut k = c;
            while !stop.load(Ordering::Relaxed) {
                let id = submit_anywhere(&bases, k, body.clone()).await;
                ids.lock().unwrap().push(id);
                k += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }));
    }
    let submitted = |n: usize| {
        let ids = ids.clone();
        async move {
            let deadline = tokio::time::Instant::now() + WAIT;
            while ids.lock().unwrap().len() < n {
                assert!(tokio::time::Instant::now() < deadline, "submits stalled");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    submitted(10).await;

    let mut drained_logs = Vec::new();
    for i in 0..3 {
        // A burst on the node about to stop: more than its two slots, so
        // that some of it is queued there when it drains.
        let node = nodes[i].take().unwrap();
        for _ in 0..6 {
            let id = submit_anywhere(&bases[i..=i], 0, body.clone()).await;
            ids.lock().unwrap().push(id);
        }
        let (status, log) = terminate(node).await;
        assert!(status.success(), "node n{i} exited with {status}:\n{log}");
        drained_logs.push(log);
        let id = format!("n{i}");
        nodes[i] = Some(
            BinaryServer::start_on(&db.url, &listens[i], &["--node-id", &id, "--config", &cfg])
                .await,
        );
        let before = ids.lock().unwrap().len();
        submitted(before + 5).await;
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }

    let all: HashSet<String> = ids.lock().unwrap().iter().cloned().collect();
    let not_completed = wait_all_ended(&bases[0], &all).await;
    assert!(
        not_completed.is_empty(),
        "{} of {} tasks did not complete: {not_completed:#?}",
        not_completed.len(),
        all.len()
    );
    assert!(
        drained_logs
            .iter()
            .any(|l| l.contains("handed queued tasks back to the pool")),
        "no drained node handed queued tasks back:\n{}",
        drained_logs.join("\n----\n")
    );
    for log in &drained_logs {
        assert!(log.contains("drained: nothing runs here any more"), "{log}");
    }
}

/// A task still running when `[limits] drain_ms` runs out is failed with
/// an error that says the drain ran out, and the node exits.
#[tokio::test]
async fn a_task_outliving_the_drain_fails_saying_so() {
    let Some(db) = PgDb::create().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let long = config(
        &dir,
        "long.toml",
        &format!(
            "[limits]\nlease_ms = {LEASE_MS}\ndrain_ms = 1000\n\n\
             [[agents]]\nname = \"long\"\nkind = \"command\"\n\
             command = [\"sh\", \"-c\", \"echo started; exec sleep 60\", \"{{prompt}}\"]\nkill_grace_ms = 200\n"
        ),
    );
    let plain = config(
        &dir,
        "plain.toml",
        &format!("[limits]\nlease_ms = {LEASE_MS}\n"),
    );
    let a = BinaryServer::start_url(&db.url, &["--node-id", "a", "--config", &long]).await;
    let b = BinaryServer::start_url(&db.url, &["--node-id", "b", "--config", &plain]).await;
    wait_agent(&b, "long").await;
    let (status, task) = b
        .post(
            "/api/runtime/tasks/submit",
            ADMIN_TOKEN,
            json!({"agent_type": "long", "prompt": "p"}),
        )
        .await;
    assert_eq!(status, 200, "{task}");
    let id = task["task_id"].as_str().unwrap().to_owned();
    wait_task_events(&b, &id, |t| output(t).contains("started")).await;

    let (status, log) = terminate(a).await;
    assert!(status.success(), "{log}");
    assert!(log.contains("drain time over"), "{log}");
    let failed = b.wait_task(&id, WAIT, |t| is_terminal(&t["state"])).await;
    assert_eq!(failed["state"], "failed", "{failed}");
    let error = failed["error"].as_str().unwrap();
    assert!(
        error.contains("the node shut down while the task was in progress")
            && error.contains("drain_ms = 1000"),
        "{error}"
    );
}

/// The config of a failover node named `name`: a re-runnable command agent
/// that reports where it runs and takes long only on node `a`, and the
/// same agent without the mark.
fn failover_config(dir: &tempfile::TempDir, name: &str) -> String {
    let script = "echo started on $NODE_NAME; \
                  if [ \\\"$NODE_NAME\\\" = a ]; then exec sleep 60; fi; echo finished on $NODE_NAME";
    let agent = |agent: &str, rerun: bool| {
        format!(
            "[[agents]]\nname = \"{agent}\"\nkind = \"command\"\n\
             command = [\"sh\", \"-c\", \"{script}\", \"{{prompt}}\"]\nenv = [\"PATH\", \"NODE_NAME={name}\"]\n\
             rerun_on_node_loss = {rerun}\nmax_concurrent = 1\n\n"
        )
    };
    config(
        dir,
        &format!("{name}.toml"),
        &format!(
            "[limits]\nlease_ms = {LEASE_MS}\n\n{}{}",
            agent("again", true),
            agent("once", false)
        ),
    )
}

/// kill -9 the node running two tasks and holding a third in its queue:
/// the one of the re-runnable agent goes back to `pending` with an event
/// naming the lost node, runs again on the other node from the start and
/// completes there; the other fails as before, naming the node; the queued
/// one, never started, is released and runs on the other node.
#[tokio::test]
async fn a_rerunnable_task_of_a_killed_node_runs_again_elsewhere() {
    let Some(db) = PgDb::create().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (cfg_a, cfg_b) = (failover_config(&dir, "a"), failover_config(&dir, "b"));
    // Only node a exists when the tasks are submitted, so both run there.
    let a = BinaryServer::start_url(&db.url, &["--node-id", "a", "--config", &cfg_a]).await;
    let mut ids = Vec::new();
    for agent in ["again", "once"] {
        let (status, task) = a
            .post(
                "/api/runtime/tasks/submit",
                ADMIN_TOKEN,
                json!({"agent_type": agent, "prompt": "p"}),
            )
            .await;
        assert_eq!(status, 200, "{task}");
        let id = task["task_id"].as_str().unwrap().to_owned();
        wait_task_events(&a, &id, |t| output(t).contains("started on a")).await;
        ids.push(id);
    }
    // One more for the agent's single slot: claimed by node a, queued there.
    let (status, task) = a
        .post(
            "/api/runtime/tasks/submit",
            ADMIN_TOKEN,
            json!({"agent_type": "again", "prompt": "queued"}),
        )
        .await;
    assert_eq!(status, 200, "{task}");
    let queued = task["task_id"].as_str().unwrap().to_owned();
    let b = BinaryServer::start_url(&db.url, &["--node-id", "b", "--config", &cfg_b]).await;
    a.kill9().await;

    let again = wait_task_events(&b, &ids[0], |t| is_terminal(&t["state"])).await;
    assert_eq!(again["state"], "completed", "{again}");
    let states: Vec<&str> = again["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["state"].as_str())
        .collect();
    assert_eq!(
        states,
        [
            "pending",
            "planning",
            "running",
            "pending",
            "planning",
            "running",
            "completed"
        ],
        "{again}"
    );
    let rerun = again["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["state"] == "pending")
        .nth(1)
        .unwrap();
    let message = rerun["message"].as_str().unwrap();
    assert!(message.starts_with("re-run: node a was lost"), "{message}");
    let out = output(&again);
    assert!(
        out.contains("started on b") && out.contains("finished on b"),
        "{out}"
    );

    let once = b
        .wait_task(&ids[1], WAIT, |t| is_terminal(&t["state"]))
        .await;
    assert_eq!(once["state"], "failed", "{once}");
    let error = once["error"].as_str().unwrap();
    assert!(
        error.contains("node a stopped renewing its lease"),
        "{error}"
    );

    // The queued task never started: given back to the pool, it simply runs
    // on node b, with no re-run.
    let queued = wait_task_events(&b, &queued, |t| is_terminal(&t["state"])).await;
    assert_eq!(queued["state"], "completed", "{queued}");
    let states: Vec<&str> = queued["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["state"].as_str())
        .collect();
    assert_eq!(
        states,
        ["pending", "planning", "running", "completed"],
        "{queued}"
    );
    assert!(output(&queued).contains("finished on b"), "{queued}");
}
