//! Data retention (`[retention]`, CONTRACT section 10): pruned stream events
//! are answered with `earliest_seq` on every way of resuming, never with a
//! silent gap; a task whose events were pruned still answers its state; a
//! prune racing live appends loses nothing inside the window; and without
//! `[retention]` nothing is removed.

mod common;

use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use serde_json::{Value, json};
use switchboard::config::FileConfig;

/// A node that prunes events of tasks ended more than `events` ago, every second.
async fn pruning_node(events: &str) -> TestServer {
    // Submits are not rate limited here: the clients of the race test submit
    // as fast as the node answers.
    let cfg = format!(
        "[security]\nsubmits_per_minute = 1000000\n\n[retention]\nevents = \"{events}\"\nprune_every = \"1s\"\n"
    );
    TestServer::spawn_with(FileConfig::parse(&cfg).unwrap()).await
}

/// GET `path` until `done` holds for its body (or fail after [`WAIT`]).
async fn poll(server: &TestServer, path: &str, mut done: impl FnMut(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, body) = server.get(path, &server.admin).await;
        assert_eq!(status, 200, "{path}: {body}");
        if done(&body) {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{path} never got there: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A session with one finished task (events `1..=a`) and then one waiting
/// for approval, once the finished one's events are pruned. Returns the
/// socket, the session id, `a` and the ids of both tasks.
async fn pruned_session(server: &TestServer) -> (WsClient, String, i64, String, String) {
    let (mut ws, hello) = server.ws(&server.admin, json!({})).await;
    let session = hello["session_id"].as_str().unwrap().to_owned();
    let done = ws
        .ok(
            json!({"op": "task.submit", "agent_type": "echo", "prompt": "pruned away soon",
                   "params": {"chunk_size": 4}}),
        )
        .await;
    let done_id = done["task_id"].as_str().unwrap().to_owned();
    let first = ws.until_terminal(&done_id).await;
    let a = *seqs(&first).last().unwrap();
    assert_eq!(seqs(&first), (1..=a).collect::<Vec<_>>());
    let waiting = ws
        .ok(
            json!({"op": "task.submit", "agent_type": "echo", "prompt": "kept",
                   "params": {"wait": true}}),
        )
        .await;
    let waiting_id = waiting["task_id"].as_str().unwrap().to_owned();
    ws.events_until(|e| e["data"]["state"] == "waiting").await;
    let path = format!("/api/runtime/sessions/{session}/events?after_seq=0");
    let list = poll(server, &path, |b| b["earliest_seq"].is_i64()).await;
    assert_eq!(list["earliest_seq"], a + 1, "{list}");
    (ws, session, a, done_id, waiting_id)
}

/// Every way of resuming from before the pruned range is told
/// `earliest_seq` and then gets the kept events from there, in order:
/// the REST listing, `hello`, `subscribe` and SSE (`event: pruned` first).
#[tokio::test]
async fn a_resume_into_pruned_events_is_told_earliest_seq_never_a_gap() {
    resume_into_pruned_events(pruning_node("1s").await).await;
}

/// The same on a PostgreSQL node (skipped without `SWITCHBOARD_TEST_POSTGRES_URL`).
#[tokio::test]
async fn postgres_a_resume_into_pruned_events_is_told_earliest_seq() {
    let Some(db) = PgDb::create().await else {
        return;
    };
    // A cluster node drains on stop; the waiting task would hold it for
    // the default drain time.
    let cfg = "[limits]\ndrain_ms = 200\n\n[retention]\nevents = \"1s\"\nprune_every = \"1s\"\n";
    let server = TestServer::spawn_on(&db.url, FileConfig::parse(cfg).unwrap()).await;
    resume_into_pruned_events(server).await;
}

async fn resume_into_pruned_events(server: TestServer) {
    let (_ws, session, a, done_id, waiting_id) = pruned_session(&server).await;

    // REST: the listing starts at earliest_seq; from inside the kept range, no signal.
    let path = format!("/api/runtime/sessions/{session}/events");
    let (_, list) = server
        .get(&format!("{path}?after_seq=0"), &server.admin)
        .await;
    let listed = list["events"].as_array().unwrap();
    assert_eq!(listed[0]["seq"], a + 1);
    assert!(listed.iter().all(|e| e["task_id"] == waiting_id.as_str()));
    let (_, inside) = server
        .get(&format!("{path}?after_seq={a}"), &server.admin)
        .await;
    assert!(inside.get("earliest_seq").is_none(), "{inside}");
    assert_eq!(inside["events"][0]["seq"], a + 1);

    // hello with after_seq 0: the reply says where the stream starts, the replay starts there.
    let (mut again, hello) = server
        .ws(
            &server.admin,
            json!({"session_id": session, "after_seq": 0}),
        )
        .await;
    assert_eq!(hello["earliest_seq"], a + 1, "{hello}");
    let replay = again
        .events_until(|e| e["data"]["state"] == "waiting")
        .await;
    assert_eq!(replay[0]["seq"], a + 1);
    assert_eq!(
        seqs(&replay),
        (a + 1..a + 1 + replay.len() as i64).collect::<Vec<_>>()
    );
    // Resuming from inside the kept range carries no signal.
    let (_, inside) = server
        .ws(
            &server.admin,
            json!({"session_id": session, "after_seq": a}),
        )
        .await;
    assert!(inside.get("earliest_seq").is_none(), "{inside}");

    // subscribe from another connection.
    let (mut other, _) = server.ws(&server.admin, json!({})).await;
    let sub = other
        .ok(json!({"op": "subscribe", "stream": format!("session:{session}"), "after_seq": 3}))
        .await;
    assert_eq!(sub["earliest_seq"], a + 1, "{sub}");
    assert_eq!(other.event().await["seq"], a + 1);

    // SSE from the start: `event: pruned` first, then the kept events.
    let lines = sse_lines(&server, &session, 4).await;
    assert_eq!(lines[0], "event: pruned", "{lines:?}");
    assert_eq!(lines[1], format!("data: {{\"earliest_seq\":{}}}", a + 1));
    assert_eq!(lines[2], format!("id: {}", a + 1), "{lines:?}");

    // The console client says so in a line of its own, then goes on.
    let kept = listed.len().to_string();
    let human = watch(&server, &session, &kept, false).await;
    let line = format!(
        "events before seq {n} were pruned (data retention); showing from {n}",
        n = a + 1
    );
    assert!(human.starts_with(&line), "{human}");
    assert!(human.contains("→ waiting"), "{human}");
    let json = watch(&server, &session, &kept, true).await;
    let first: Value = serde_json::from_str(json.lines().next().unwrap()).unwrap();
    assert_eq!(first["type"], "stream.pruned");
    assert_eq!(first["data"]["earliest_seq"], a + 1);
    assert_eq!(json.lines().count(), listed.len() + 1);

    // The finished task still answers its state and result.
    let (status, state) = server
        .get(
            &format!("/api/runtime/tasks/{done_id}/state"),
            &server.admin,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(state["state"], "completed");
    assert_eq!(state["result"], "pruned away soon");
    let (_, task) = server
        .get(&format!("/api/runtime/tasks/{done_id}"), &server.admin)
        .await;
    assert_eq!(task["events"], json!([]), "{task}");

    // The storage report and the metrics say what the pruner did.
    let (_, storage) = server.get("/api/admin/storage", &server.admin).await;
    assert!(
        storage["last_prune"]["removed"]["events"].is_i64(),
        "{storage}"
    );
    assert!(storage["last_prune"]["seconds"].is_f64(), "{storage}");
    let metrics = server.metrics().await;
    assert!(
        metrics.contains("switchboard_pruned_rows_total{kind=\"events\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("switchboard_prune_seconds"), "{metrics}");
    server.stop().await;
}

/// `switchboard watch --session S --after-seq 0 --count N` against the node: its stdout.
async fn watch(server: &TestServer, session: &str, count: &str, json: bool) -> String {
    let home = tempfile::tempdir().unwrap();
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchboard"));
    cmd.args([
        "watch",
        "--session",
        session,
        "--after-seq",
        "0",
        "--count",
        count,
    ])
    .args(["--server", &server.base, "--token", &server.admin])
    .env("HOME", home.path())
    .env("XDG_CONFIG_HOME", home.path().join("config"))
    .env("NO_COLOR", "1")
    .env_remove("SWITCHBOARD_SERVER")
    .env_remove("SWITCHBOARD_TOKEN")
    .kill_on_drop(true);
    if json {
        cmd.arg("--json");
    }
    let out = tokio::time::timeout(WAIT, cmd.output())
        .await
        .expect("watch did not stop")
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// The first `n` non-empty lines of the session's SSE stream, read from the start.
async fn sse_lines(server: &TestServer, session: &str, n: usize) -> Vec<String> {
    let resp = http()
        .get(format!(
            "{}/api/runtime/sessions/{session}/events",
            server.base
        ))
        .bearer_auth(&server.admin)
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.bytes_stream();
    let mut text = String::new();
    loop {
        let lines: Vec<String> = text
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with(':'))
            .map(str::to_owned)
            .collect();
        if lines.len() >= n {
            return lines;
        }
        let chunk = tokio::time::timeout(WAIT, body.next())
            .await
            .expect("SSE stalled")
            .expect("SSE ended")
            .unwrap();
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
}

/// An `EventSource` that reconnects with a `Last-Event-ID` inside the
/// pruned range gets `event: pruned` before the kept events. (A reader
/// overtaken by a prune mid-stream is covered in `tests/store_retention.rs`,
/// where the stream's cursor meets the cut as a `stream.pruned` event.)
#[tokio::test]
async fn an_sse_resume_into_pruned_events_gets_event_pruned_first() {
    let server = pruning_node("1s").await;
    let (_ws, session, a, _, _) = pruned_session(&server).await;
    let resp = http()
        .get(format!(
            "{}/api/runtime/sessions/{session}/events",
            server.base
        ))
        .bearer_auth(&server.admin)
        .header("accept", "text/event-stream")
        .header("last-event-id", "1")
        .send()
        .await
        .unwrap();
    let mut body = resp.bytes_stream();
    let mut text = String::new();
    while !text.contains(&format!("id: {}", a + 1)) {
        let chunk = tokio::time::timeout(WAIT, body.next())
            .await
            .expect("SSE stalled")
            .expect("SSE ended")
            .unwrap();
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    let pruned = text.find("event: pruned").expect("no pruned message");
    assert!(
        pruned < text.find(&format!("id: {}", a + 1)).unwrap(),
        "{text}"
    );
    server.stop().await;
}

/// Without `[retention]`, nothing is removed: a node that runs the pruner
/// for sessions only keeps every event, task and audit record (and the
/// default node never prunes at all).
#[tokio::test]
async fn without_retention_nothing_is_removed() {
    let plain = TestServer::spawn().await;
    let (_, storage) = plain.get("/api/admin/storage", &plain.admin).await;
    assert_eq!(storage["last_prune"], Value::Null);
    plain.stop().await;

    let cfg = "[retention]\nsessions_idle = \"1s\"\nprune_every = \"1s\"\n";
    let server = TestServer::spawn_with(FileConfig::parse(cfg).unwrap()).await;
    let (mut ws, hello) = server.ws(&server.admin, json!({})).await;
    let session = hello["session_id"].as_str().unwrap().to_owned();
    let t = ws
        .ok(json!({"op": "task.submit", "agent_type": "echo", "prompt": "keep me"}))
        .await;
    let events = ws.until_terminal(t["task_id"].as_str().unwrap()).await;
    let n = events.len() as i64;
    // Two runs of the pruner after the task ended.
    let first = poll(&server, "/api/admin/storage", |b| {
        b["last_prune"].is_object()
    })
    .await;
    let at = first["last_prune"]["at"].clone();
    let later = poll(&server, "/api/admin/storage", |b| {
        b["last_prune"]["at"] != at
    })
    .await;
    let removed = &later["last_prune"]["removed"];
    assert!(
        removed.get("events").is_none() && removed.get("audit").is_none(),
        "{later}"
    );
    let (_, list) = server
        .get(
            &format!("/api/runtime/sessions/{session}/events?after_seq=0"),
            &server.admin,
        )
        .await;
    assert_eq!(
        seqs(list["events"].as_array().unwrap()),
        (1..=n).collect::<Vec<_>>()
    );
    assert!(list.get("earliest_seq").is_none());
    let (_, verify) = server.get("/api/audit/verify", &server.admin).await;
    assert_eq!(verify["ok"], true, "{verify}");
    assert!(verify.get("first_seq").is_none(), "{verify}");
    server.stop().await;
}

/// Tasks submitted continuously while the pruner runs keep every event
/// inside the window: each client's live stream is 1, 2, 3, ... with no
/// `stream.pruned`, and every task read back before its window could have
/// passed still has all its events, the ones seen live. (No timing is
/// assumed: a task is checked only when the read started less than the
/// window after the task ended, by the node's own clock, which is before
/// any prune could have taken it.)
#[tokio::test]
async fn a_prune_racing_live_appends_loses_nothing_inside_the_window() {
    let server = std::sync::Arc::new(pruning_node("2s").await);
    let clients = (0..3).map(|_| {
        let server = server.clone();
        tokio::spawn(async move { submit_until_pruned(&server).await })
    });
    let mut checked = 0;
    for c in clients.collect::<Vec<_>>() {
        checked += c.await.unwrap();
    }
    assert!(checked > 0, "no task was read back inside its window");
    std::sync::Arc::into_inner(server).unwrap().stop().await;
}

/// Submit echo tasks on one session until a prune cut its stream; check
/// each task as it ends. Returns how many tasks were checked.
async fn submit_until_pruned(server: &TestServer) -> usize {
    let window = chrono::Duration::seconds(2);
    let (mut ws, hello) = server.ws(&server.admin, json!({})).await;
    let session = hello["session_id"].as_str().unwrap().to_owned();
    let mut next = 1;
    let mut checked = 0;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let t = ws
            .ok(
                json!({"op": "task.submit", "agent_type": "echo", "prompt": "racing the pruner",
                       "params": {"chunk_size": 3}}),
            )
            .await;
        let id = t["task_id"].as_str().unwrap();
        let live = ws.until_terminal(id).await;
        assert!(
            live.iter().all(|e| e["type"] != "stream.pruned"),
            "{live:?}"
        );
        let all = seqs(&live);
        assert_eq!(all, (next..next + all.len() as i64).collect::<Vec<_>>());
        next += all.len() as i64;
        let ended: chrono::DateTime<chrono::Utc> = live.last().unwrap()["at"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        let read_at = chrono::Utc::now();
        let (_, task) = server
            .get(&format!("/api/runtime/tasks/{id}"), &server.admin)
            .await;
        if read_at < ended + window {
            let stored: Vec<i64> = task["events"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["seq"].as_i64().unwrap())
                .collect();
            let mine: Vec<i64> = live
                .iter()
                .filter(|e| e["task_id"] == id)
                .map(|e| e["seq"].as_i64().unwrap())
                .collect();
            assert_eq!(stored, mine, "task {id} lost events inside the window");
            checked += 1;
        }
        let (_, list) = server
            .get(
                &format!("/api/runtime/sessions/{session}/events?after_seq=0&limit=1"),
                &server.admin,
            )
            .await;
        if list["earliest_seq"].is_i64() && checked > 0 {
            return checked;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stream was never pruned"
        );
    }
}
