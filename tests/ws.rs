//! WebSocket protocol v1: order, resume, restarts, cancellation, waiting,
//! idempotency, malformed input and close codes, all over real sockets.

mod common;

use common::*;
use serde_json::{Value, json};
use switchboard::config::FileConfig;
use tokio_tungstenite::tungstenite::Message;

fn is_terminal(e: &Value) -> bool {
    e["type"] == "task.state"
        && ["completed", "failed", "cancelled"].contains(&e["data"]["state"].as_str().unwrap_or(""))
}

/// Several tasks in one session: one stream, seq rising by exactly one, and
/// each task's own events in state-machine order.
#[tokio::test]
async fn events_arrive_in_order_with_gapless_seq() {
    let server = TestServer::spawn().await;
    let (mut ws, hello) = server.ws(&server.admin, json!({})).await;
    assert_eq!(hello["last_seq"], 0);
    let mut ids = Vec::new();
    for i in 0..5 {
        let t = ws
            .ok(json!({"op": "task.submit", "agent_type": "echo", "prompt": format!("task number {i} with some text"), "params": {"chunk_size": 3}}))
            .await;
        ids.push(t["task_id"].as_str().unwrap().to_owned());
    }
    let mut done = 0;
    let events = ws
        .events_until(|e| {
            if is_terminal(e) {
                done += 1;
            }
            done == 5
        })
        .await;
    assert_gapless(&events);
    let stream = format!("session:{}", hello["session_id"].as_str().unwrap());
    for id in &ids {
        let mine: Vec<_> = events
            .iter()
            .filter(|e| e["task_id"] == id.as_str())
            .collect();
        assert!(mine.iter().all(|e| e["stream"] == stream.as_str()));
        let states = state_names(mine.iter().copied());
        assert_eq!(states, ["pending", "planning", "running", "completed"]);
        assert_eq!(mine[0]["data"]["agent_type"], "echo");
        assert_eq!(mine[0]["data"]["prev_state"], Value::Null);
    }
    server.stop().await;
}

/// Disconnect mid-task, reconnect with session_id + after_seq: the stored
/// events after that seq come first, then live ones, with no gap and no
/// duplicate.
/// A submit is acknowledged by the committer right behind the task's first
/// events: a client holding the reply has the `pending` event already.
#[tokio::test]
async fn a_submit_reply_comes_after_its_pending_event() {
    let server = TestServer::spawn().await;
    let (mut ws, _) = server.ws(&server.admin, json!({})).await;
    for i in 0..20 {
        let reply = ws
            .call(json!({"op": "task.submit", "agent_type": "echo", "prompt": format!("task {i}")}))
            .await;
        assert_eq!(reply["ok"], true, "{reply}");
        let id = &reply["result"]["task_id"];
        let pending = ws
            .buffered()
            .iter()
            .any(|e| e["task_id"] == *id && e["data"]["state"] == "pending");
        assert!(pending, "the reply for {id} came before its pending event");
    }
}

#[tokio::test]
async fn resume_after_disconnect_is_gapless() {
    let server = TestServer::spawn().await;
    let (mut ws, hello) = server.ws(&server.admin, json!({})).await;
    let session = hello["session_id"].as_str().unwrap().to_owned();
    let task = ws
        .ok(json!({"op": "task.submit", "agent_type": "echo", "prompt": "abcdefghijklmnopqrstuvwxyz0123456789", "params": {"chunk_size": 2, "delay_ms": 20}}))
        .await;
    let first = ws.events_until(|e| e["type"] == "task.output").await;
    let last_seen = first.last().unwrap()["seq"].as_i64().unwrap();
    drop(ws);

    let (mut ws, hello2) = server
        .ws(
            &server.admin,
            json!({"session_id": session, "after_seq": last_seen}),
        )
        .await;
    assert_eq!(hello2["session_id"], session.as_str());
    assert!(hello2["last_seq"].as_i64().unwrap() >= last_seen);
    let rest = ws.until_terminal(task["task_id"].as_str().unwrap()).await;
    let all: Vec<Value> = first.into_iter().chain(rest).collect();
    assert_gapless(&all);
    let output = output_text(&all);
    assert_eq!(output, "abcdefghijklmnopqrstuvwxyz0123456789");
    server.stop().await;
}

/// `subscribe` with after_seq on a second connection replays the stored
/// stream from that point and then continues live.
#[tokio::test]
async fn subscribe_with_after_seq_replays_then_goes_live() {
    let server = TestServer::spawn().await;
    let (mut a, hello) = server.ws(&server.admin, json!({})).await;
    let session = hello["session_id"].as_str().unwrap().to_owned();
    let t1 = a
        .ok(json!({"op": "task.submit", "agent_type": "echo", "prompt": "first"}))
        .await;
    a.until_terminal(t1["task_id"].as_str().unwrap()).await;

    let (mut b, _) = server.ws(&server.admin, json!({})).await;
    let sub = b
        .ok(json!({"op": "subscribe", "stream": format!("session:{session}"), "after_seq": 2}))
        .await;
    assert_eq!(sub["stream"], format!("session:{session}"));
    let stored_last = sub["last_seq"].as_i64().unwrap();
    let replayed = b.events_until(|e| e["seq"] == stored_last).await;
    assert_eq!(seqs(&replayed), (3..=stored_last).collect::<Vec<_>>());

    let t2 = a
        .ok(json!({"op": "task.submit", "agent_type": "echo", "prompt": "second"}))
        .await;
    let live = b.until_terminal(t2["task_id"].as_str().unwrap()).await;
    assert_eq!(live[0]["seq"].as_i64().unwrap(), stored_last + 1);
    assert_eq!(
        seqs(&live),
        (stored_last + 1..=stored_last + live.len() as i64).collect::<Vec<_>>()
    );

    assert_eq!(
        b.ok(json!({"op": "unsubscribe", "stream": format!("session:{session}")}))
            .await,
        json!({})
    );
    server.stop().await;
}

/// kill -9 the node mid-task, start it again on the same file: the task is
/// failed with a clear reason, and a resume sees every event once, with a
/// gapless seq across both runs.
#[tokio::test]
async fn resume_after_kill_9_restart_is_gapless() {
    let dir = tempfile::tempdir().unwrap();
    let db = db_in(&dir);
    let node = BinaryServer::start(&db, &[]).await;
    let mut ws = WsClient::connect(&node.ws_url).await;
    let hello = ws.ok(json!({"op": "hello", "token": ADMIN_TOKEN})).await;
    let session = hello["session_id"].as_str().unwrap().to_owned();
    let task = ws
        .ok(json!({"op": "task.submit", "agent_type": "echo", "prompt": "x".repeat(400), "params": {"chunk_size": 1, "delay_ms": 10}}))
        .await;
    let task_id = task["task_id"].as_str().unwrap().to_owned();
    let before = ws
        .events_until(|e| e["type"] == "task.output" && e["seq"].as_i64().unwrap() >= 8)
        .await;
    node.kill9().await;

    let node = BinaryServer::start(&db, &[]).await;
    let mut ws = WsClient::connect(&node.ws_url).await;
    let after_seq = before.last().unwrap()["seq"].as_i64().unwrap();
    let hello = ws
        .ok(json!({"op": "hello", "token": ADMIN_TOKEN, "session_id": session, "after_seq": after_seq}))
        .await;
    let last = hello["last_seq"].as_i64().unwrap();
    let after = ws.until_terminal(&task_id).await;
    assert_eq!(after.last().unwrap()["seq"].as_i64().unwrap(), last);
    let all: Vec<Value> = before.into_iter().chain(after).collect();
    assert_gapless(&all);
    let end = all.last().unwrap();
    assert_eq!(end["data"]["state"], "failed");
    assert!(
        end["data"]["message"]
            .as_str()
            .unwrap()
            .contains("restarted"),
        "{end}"
    );

    let state = ws.ok(json!({"op": "task.get", "task_id": task_id})).await;
    assert_eq!(state["state"], "failed");
    assert!(state["error"].as_str().unwrap().contains("restarted"));
    // New work after the restart continues the same stream.
    let t2 = ws
        .ok(json!({"op": "task.submit", "agent_type": "echo", "prompt": "after"}))
        .await;
    let next = ws.until_terminal(t2["task_id"].as_str().unwrap()).await;
    assert_eq!(next[0]["seq"].as_i64().unwrap(), last + 1);
}

/// A client that stops reading while thousands of events are produced loses
/// none of them: when it reads again it gets every one, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_reader_gets_every_event() {
    let mut file = FileConfig::default();
    file.limits.max_prompt_bytes = 32 << 20;
    file.limits.max_message_bytes = 32 << 20;
    // A tiny ring, so that falling behind is certain and cheap to cause.
    file.limits.stream_ring = 4;
    let server = TestServer::spawn_with(file).await;
    let (mut ws, _) = server.ws(&server.admin, json!({})).await;
    // Far more than the ring holds, and more than the kernel's socket
    // buffers on loopback take (several MiB): 4000 events of 4 KiB.
    let n = 4000;
    let chunk = 4096;
    let task = ws
        .ok(json!({"op": "task.submit", "agent_type": "echo", "prompt": "y".repeat(n * chunk), "params": {"chunk_size": chunk}}))
        .await;
    let task_id = task["task_id"].as_str().unwrap().to_owned();
    // Do not read until the task has finished on the server.
    server.wait_terminal(&server.admin, &task_id).await;
    let events = ws.until_terminal(&task_id).await;
    assert_eq!(events.len(), n + 4);
    assert_gapless(&events);
    // The catch-up path was taken, not just kernel buffering.
    let metrics = server.metrics().await;
    let lagged: f64 = metrics
        .lines()
        .find(|l| l.starts_with("switchboard_subscriber_lagged_total"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    assert!(lagged >= 1.0, "the subscriber never lagged:\n{metrics}");
    server.stop().await;
}

/// Cancel stops the agent for real: the task ends cancelled and no output
/// is stored after the cancelled event.
#[tokio::test]
async fn cancel_stops_the_agent() {
    let server = TestServer::spawn().await;
    let (mut ws, _) = server.ws(&server.admin, json!({})).await;
    let task = ws
        .ok(json!({"op": "task.submit", "agent_type": "echo", "prompt": "z".repeat(1000), "params": {"chunk_size": 1, "delay_ms": 20}}))
        .await;
    let task_id = task["task_id"].as_str().unwrap().to_owned();
    ws.events_until(|e| e["type"] == "task.output").await;
    let reply = ws
        .ok(json!({"op": "task.cancel", "task_id": task_id}))
        .await;
    assert_eq!(reply["state"], "cancelled");
    assert_eq!(reply["task_id"], task_id.as_str());
    let events = ws.until_terminal(&task_id).await;
    assert_eq!(events.last().unwrap()["data"]["state"], "cancelled");
    // Give a runaway agent the time to produce a few more chunks, then check
    // that none were stored after the cancel.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let detail = ws.ok(json!({"op": "task.get", "task_id": task_id})).await;
    let stored = detail["events"].as_array().unwrap();
    assert_eq!(stored.last().unwrap()["state"], "cancelled");
    assert!(
        stored
            .iter()
            .filter(|e| e["event_type"] == "output")
            .count()
            < 1000
    );
    let again = ws
        .call(json!({"op": "task.cancel", "task_id": task_id}))
        .await;
    assert_eq!(again["error"]["code"], "invalid_transition");
    server.stop().await;
}

/// A waiting task continues when approved and fails when denied; answering
/// a task that is not waiting is an invalid transition.
#[tokio::test]
async fn waiting_and_respond() {
    let server = TestServer::spawn().await;
    let (mut ws, _) = server.ws(&server.admin, json!({})).await;
    for approve in [true, false] {
        let task = ws
            .ok(json!({"op": "task.submit", "agent_type": "echo", "prompt": "needs approval", "params": {"wait": true}}))
            .await;
        let id = task["task_id"].as_str().unwrap().to_owned();
        ws.events_until(|e| e["task_id"] == id.as_str() && e["data"]["state"] == "waiting")
            .await;
        let state = ws
            .ok(json!({"op": "task.respond", "task_id": id, "approve": approve}))
            .await;
        // The reply is the task as it is after the answer: an approved echo
        // may already have finished by then.
        let after: &[&str] = if approve {
            &["running", "completed"]
        } else {
            &["failed"]
        };
        assert!(
            after.contains(&state["state"].as_str().unwrap()),
            "state after respond: {state}"
        );
        let events = ws.until_terminal(&id).await;
        let end = events.last().unwrap();
        if approve {
            assert_eq!(end["data"]["state"], "completed");
        } else {
            assert_eq!(end["data"]["state"], "failed");
            assert!(end["data"]["message"].as_str().unwrap().contains("denied"));
        }
        let again = ws
            .call(json!({"op": "task.respond", "task_id": id, "approve": true}))
            .await;
        assert_eq!(again["error"]["code"], "invalid_transition");
    }
    server.stop().await;
}

/// The same idempotency key from the same user returns the first task, over
/// WebSocket and REST alike; another user's identical key is independent.
#[tokio::test]
async fn idempotency_keys_work_on_both_transports() {
    let server = TestServer::spawn().await;
    let (mut ws, _) = server.ws(&server.admin, json!({})).await;
    let op = json!({"op": "task.submit", "agent_type": "echo", "prompt": "once", "idempotency_key": "k-1"});
    let a = ws.ok(op.clone()).await;
    let b = ws.ok(op).await;
    assert_eq!(a["task_id"], b["task_id"]);
    let c = server
        .submit(
            &server.admin,
            json!({"agent_type": "echo", "prompt": "once", "idempotency_key": "k-1"}),
        )
        .await;
    assert_eq!(a["task_id"], c["task_id"]);
    let dev = server.user("dev@team.com", &["developer"]).await;
    let d = server
        .submit(
            &dev,
            json!({"agent_type": "echo", "prompt": "once", "idempotency_key": "k-1"}),
        )
        .await;
    assert_ne!(a["task_id"], d["task_id"]);
    let list = ws.ok(json!({"op": "task.list"})).await;
    let mine: Vec<_> = list["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["user_id"] == "admin")
        .collect();
    assert_eq!(mine.len(), 1);
    server.stop().await;
}

/// Bad JSON, unknown ops, missing fields and binary frames get a
/// bad_request reply (echoing the id when there is one), and the
/// connection stays usable.
#[tokio::test]
async fn malformed_frames_get_bad_request_and_the_connection_survives() {
    let server = TestServer::spawn().await;
    let (mut ws, _) = server.ws(&server.admin, json!({})).await;
    for (text, id) in [
        ("{not json", Value::Null),
        ("[1,2]", Value::Null),
        (r#"{"op":"fly","id":"x1"}"#, json!("x1")),
        (r#"{"op":"task.submit","id":2}"#, json!(2)),
        (
            r#"{"op":"task.cancel","id":3,"task_id":"not-a-uuid"}"#,
            json!(3),
        ),
        (r#"{"op":"subscribe","id":4,"stream":"nowhere"}"#, json!(4)),
        (r#"{"op":"hello","id":5,"token":"again"}"#, json!(5)),
    ] {
        ws.send_text(text).await;
        let reply = ws.read().await;
        assert_eq!(reply["op"], "reply", "{text}");
        assert_eq!(reply["ok"], false, "{text}");
        assert_eq!(reply["error"]["code"], "bad_request", "{text}: {reply}");
        assert_eq!(reply["id"], id, "{text}");
    }
    ws.send_raw(Message::binary(vec![1, 2, 3])).await;
    assert_eq!(ws.read().await["error"]["code"], "bad_request");
    assert_eq!(ws.ok(json!({"op": "ping"})).await, json!({"pong": true}));
    let agents = ws.ok(json!({"op": "agents.list"})).await;
    assert!(
        agents
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["agent_type"] == "echo")
    );
    server.stop().await;
}

/// An op before hello, a bad token, or someone else's session: an error
/// reply, then close 4401.
#[tokio::test]
async fn failed_hello_closes_with_4401() {
    let server = TestServer::spawn().await;
    let mut ws = WsClient::connect(&server.ws_url).await;
    let reply = ws.call(json!({"op": "task.list"})).await;
    assert_eq!(reply["ok"], false);
    assert_eq!(ws.closed().await, Closed::Code(4401));

    let mut ws = WsClient::connect(&server.ws_url).await;
    let reply = ws.call(json!({"op": "hello", "token": "sb_wrong"})).await;
    assert_eq!(reply["error"]["code"], "unauthorized");
    assert_eq!(ws.closed().await, Closed::Code(4401));

    let mut ws = WsClient::connect(&server.ws_url).await;
    let reply = ws.call(json!({"op": "hello"})).await;
    assert_eq!(reply["error"]["code"], "unauthorized");
    assert_eq!(ws.closed().await, Closed::Code(4401));

    let dev = server.user("dev@team.com", &["developer"]).await;
    let (_, admin_hello) = server.ws(&server.admin, json!({})).await;
    let mut ws = WsClient::connect(&server.ws_url).await;
    let reply = ws
        .call(json!({"op": "hello", "token": dev, "session_id": admin_hello["session_id"]}))
        .await;
    assert_eq!(reply["error"]["code"], "not_found");
    assert_eq!(ws.closed().await, Closed::Code(4401));
    server.stop().await;
}

/// The token may come in the Authorization header of the upgrade instead
/// of hello.
#[tokio::test]
async fn token_in_upgrade_header() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let server = TestServer::spawn().await;
    let mut req = server.ws_url.as_str().into_client_request().unwrap();
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {}", server.admin).parse().unwrap(),
    );
    let (mut stream, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    use futures_util::{SinkExt, StreamExt};
    stream
        .send(Message::text(r#"{"op":"hello","id":1}"#))
        .await
        .unwrap();
    let reply = loop {
        if let Message::Text(t) = stream.next().await.unwrap().unwrap() {
            break serde_json::from_str::<Value>(t.as_str()).unwrap();
        }
    };
    assert_eq!(reply["ok"], true, "{reply}");
    assert_eq!(reply["result"]["user_id"], "admin");
    server.stop().await;
}

/// No hello within the deadline: close 4408.
#[tokio::test]
async fn hello_deadline_closes_with_4408() {
    let mut file = FileConfig::default();
    file.limits.hello_timeout_ms = 200;
    let server = TestServer::spawn_with(file).await;
    let mut ws = WsClient::connect(&server.ws_url).await;
    assert_eq!(ws.closed().await, Closed::Code(4408));
    server.stop().await;
}

/// A message over max_message_bytes closes the connection with 1009.
#[tokio::test]
async fn oversize_message_closes_with_1009() {
    let mut file = FileConfig::default();
    file.limits.max_message_bytes = 4096;
    let server = TestServer::spawn_with(file).await;
    let (mut ws, hello) = server.ws(&server.admin, json!({})).await;
    assert_eq!(hello["max_message_bytes"], 4096);
    let big = json!({"op": "task.submit", "agent_type": "echo", "prompt": "p".repeat(10_000)});
    ws.send_text(&big.to_string()).await;
    assert_eq!(ws.closed().await, Closed::Code(1009));
    server.stop().await;
}

/// Revoking a user's tokens closes their open sockets with 4401 at once.
#[tokio::test]
async fn revoked_tokens_close_open_sockets() {
    let server = TestServer::spawn().await;
    let dev = server.user("dev@team.com", &["developer"]).await;
    let (mut ws, _) = server.ws(&dev, json!({})).await;
    let (status, _) = server
        .delete("/api/admin/users/dev@team.com/tokens", &server.admin)
        .await;
    assert_eq!(status, 200);
    assert_eq!(ws.closed().await, Closed::Code(4401));
    server.stop().await;
}

/// A session that has ended cannot be attached again: the hello fails with
/// `conflict` saying so (and closes 4401); a new session is one hello away.
#[tokio::test]
async fn an_ended_session_cannot_be_reattached() {
    let server = TestServer::spawn().await;
    let dev = server.user("dev@team.com", &["developer"]).await;
    let (ws, hello) = server.ws(&dev, json!({})).await;
    drop(ws);
    let session = hello["session_id"].as_str().unwrap().to_owned();
    let (status, _) = server
        .delete(&format!("/api/runtime/sessions/{session}"), &dev)
        .await;
    assert_eq!(status, 200);
    let mut ws = WsClient::connect(&server.ws_url).await;
    let reply = ws
        .call(json!({"op": "hello", "token": dev, "session_id": session}))
        .await;
    assert_eq!(reply["error"]["code"], "conflict", "{reply}");
    let message = reply["error"]["message"].as_str().unwrap();
    assert!(message.contains("has ended"), "{message}");
    assert_eq!(ws.closed().await, Closed::Code(4401));
    let (_, fresh) = server.ws(&dev, json!({})).await;
    assert_ne!(fresh["session_id"], session.as_str());
    server.stop().await;
}

/// A role change reaches an open connection: the next op is checked
/// against the new permissions.
#[tokio::test]
async fn role_changes_apply_to_open_connections() {
    let server = TestServer::spawn().await;
    let dev = server.user("dev@team.com", &["developer"]).await;
    let (mut ws, _) = server.ws(&dev, json!({})).await;
    ws.ok(json!({"op": "task.list"})).await;
    let (status, _) = server
        .delete(
            "/api/admin/users/dev@team.com/roles/developer",
            &server.admin,
        )
        .await;
    assert_eq!(status, 200);
    let reply = ws.call(json!({"op": "task.list"})).await;
    assert_eq!(reply["error"]["code"], "forbidden");
    server.stop().await;
}

/// Graceful shutdown closes sockets with 1001 and records in-flight tasks
/// as failed, so nothing hangs after the restart.
#[tokio::test]
async fn graceful_shutdown_closes_with_1001() {
    let server = TestServer::spawn().await;
    let (mut ws, _) = server.ws(&server.admin, json!({})).await;
    let task = ws
        .ok(json!({"op": "task.submit", "agent_type": "echo", "prompt": "w".repeat(500), "params": {"chunk_size": 1, "delay_ms": 20}}))
        .await;
    ws.events_until(|e| e["type"] == "task.output").await;
    let url = server.database_url.clone();
    let dir = server.stop().await;
    assert_eq!(ws.closed().await, Closed::Code(1001));
    let server = TestServer::spawn_on(&url, FileConfig::default()).await;
    let state = server
        .get(
            &format!(
                "/api/runtime/tasks/{}/state",
                task["task_id"].as_str().unwrap()
            ),
            &server.admin,
        )
        .await
        .1;
    assert_eq!(state["state"], "failed");
    assert!(
        state["error"].as_str().unwrap().contains("shut down"),
        "{state}"
    );
    server.stop().await;
    drop(dir);
}

/// Clients that subscribe to long streams and never read do not starve the
/// store: catch-up reads release their connection even when the reader
/// stops polling, so everyone else keeps being answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_subscribers_do_not_starve_the_store() {
    let mut file = FileConfig::default();
    file.limits.max_prompt_bytes = 8 << 20;
    file.limits.max_message_bytes = 8 << 20;
    let server = TestServer::spawn_with(file).await;
    // Streams longer than one catch-up page, with events big enough that a
    // socket nobody reads fills up while a catch-up is under way.
    let mut streams = Vec::new();
    for _ in 0..3 {
        let (mut ws, hello) = server.ws(&server.admin, json!({})).await;
        let t = ws
            .ok(json!({"op": "task.submit", "agent_type": "echo", "prompt": "s".repeat(600 * 8192), "params": {"chunk_size": 8192}}))
            .await;
        ws.until_terminal(t["task_id"].as_str().unwrap()).await;
        streams.push(format!("session:{}", hello["session_id"].as_str().unwrap()));
    }
    // Twelve connections replay all three streams from the start and never
    // read what they asked for.
    let mut stalled = Vec::new();
    for _ in 0..12 {
        let (mut ws, _) = server.ws(&server.admin, json!({})).await;
        for s in &streams {
            ws.send_text(&json!({"op": "subscribe", "stream": s, "after_seq": 0}).to_string())
                .await;
        }
        stalled.push(ws);
    }
    // Everyone else is still served, over both transports.
    let (mut ws, _) = server.ws(&server.admin, json!({})).await;
    let sub = ws
        .ok(json!({"op": "subscribe", "stream": &streams[0], "after_seq": 0}))
        .await;
    assert!(sub["last_seq"].as_i64().unwrap() > 600);
    let (status, _) = server.get("/api/runtime/sessions", &server.admin).await;
    assert_eq!(status, 200);
    drop(stalled);
    server.stop().await;
}

/// The value of a gauge on `/metrics` (0 when absent).
async fn gauge(server: &TestServer, name: &str) -> f64 {
    let text = server.metrics().await;
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Nothing per session outlives its last socket: after 50 connections
/// (each with a task and a second subscription) close, no connection is
/// registered, no stream is left on the bus and no task is held live; and
/// a session resumed afterwards goes on from its last `seq`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_sockets_leave_nothing_behind() {
    let server = TestServer::spawn().await;
    let mut clients = Vec::new();
    for _ in 0..50 {
        let (mut ws, hello) = server.ws(&server.admin, json!({})).await;
        let t = ws
            .ok(json!({"op": "task.submit", "agent_type": "echo", "prompt": "bye"}))
            .await;
        let events = ws.until_terminal(t["task_id"].as_str().unwrap()).await;
        let last_seq = events.last().unwrap()["seq"].as_i64().unwrap();
        ws.ok(json!({"op": "subscribe", "stream": "audit"})).await;
        clients.push((ws, hello["session_id"].clone(), last_seq));
    }
    assert_eq!(gauge(&server, "switchboard_connections").await, 50.0);
    // Every session's stream and the audit stream.
    assert_eq!(gauge(&server, "switchboard_bus_streams").await, 51.0);
    let (session, last_seq) = clients.last().map(|(_, s, q)| (s.clone(), *q)).unwrap();
    drop(clients);
    let deadline = tokio::time::Instant::now() + WAIT;
    while gauge(&server, "switchboard_connections").await > 0.0
        || gauge(&server, "switchboard_bus_streams").await > 0.0
        || gauge(&server, "switchboard_tasks_running_here").await > 0.0
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "connections, streams or tasks left behind after every socket closed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (mut ws, _) = server
        .ws(
            &server.admin,
            json!({"session_id": session, "after_seq": last_seq}),
        )
        .await;
    let t = ws
        .ok(json!({"op": "task.submit", "agent_type": "echo", "prompt": "again"}))
        .await;
    let events = ws.until_terminal(t["task_id"].as_str().unwrap()).await;
    assert_eq!(
        seqs(&events)[0],
        last_seq + 1,
        "seq did not go on: {events:?}"
    );
    server.stop().await;
}
