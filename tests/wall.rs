//! The `tasks` stream: one live stream of every task's state changes for
//! `admin:system` (an operator's wall screen), on one node and across a
//! PostgreSQL cluster.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::*;
use serde_json::json;

const TERMINAL: [&str; 3] = ["completed", "failed", "cancelled"];

/// Read the `tasks` stream until every task in `ids` has ended. Checks each
/// event's shape and that each session's events come in rising order.
async fn until_all_ended(
    ws: &mut WsClient,
    ids: &BTreeSet<String>,
) -> BTreeMap<String, Vec<String>> {
    let mut states: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut last_seq: BTreeMap<String, i64> = BTreeMap::new();
    let ended = |states: &BTreeMap<String, Vec<String>>| {
        ids.iter().all(|id| {
            states
                .get(id)
                .and_then(|s| s.last())
                .is_some_and(|s| TERMINAL.contains(&s.as_str()))
        })
    };
    while !ended(&states) {
        let e = ws.event().await;
        if e["stream"] != "tasks" {
            continue;
        }
        assert_eq!(e["type"], "task.state", "only state changes: {e}");
        assert!(
            e.get("seq").is_none(),
            "the stream has no seq of its own: {e}"
        );
        let session = e["session_id"].as_str().expect("session_id").to_owned();
        let seq = e["session_seq"].as_i64().expect("session_seq");
        let prev = last_seq.insert(session.clone(), seq).unwrap_or(0);
        assert!(
            seq > prev,
            "session {session} went back from {prev} to {seq}"
        );
        let task = e["task_id"].as_str().unwrap().to_owned();
        let state = e["data"]["state"].as_str().unwrap().to_owned();
        states.entry(task).or_default().push(state);
    }
    states
}

/// Tasks of two users on three sessions reach the admin's one `tasks`
/// subscription: every transition, pending first and completed last, and
/// no output. A user without `admin:system` is refused the stream.
#[tokio::test]
async fn an_admin_sees_every_tasks_state_on_one_stream() {
    let server = TestServer::spawn().await;
    let (mut wall, _) = server.ws(&server.admin, json!({})).await;
    let sub = wall.ok(json!({"op": "subscribe", "stream": "tasks"})).await;
    assert_eq!(sub["stream"], "tasks");

    let dev = server.user("dev@team.com", &["developer"]).await;
    let other = server.user("other@team.com", &["developer"]).await;
    let (mut dws, _) = server.ws(&dev, json!({})).await;
    let r = dws
        .call(json!({"op": "subscribe", "stream": "tasks"}))
        .await;
    assert_eq!(r["error"]["code"], "forbidden", "{r}");

    let echo = |p: &str| json!({"agent_type": "echo", "prompt": p, "params": {"chunk_size": 3}});
    let mut ids = BTreeSet::new();
    for p in ["first task", "second task"] {
        let mut op = echo(p);
        op["op"] = json!("task.submit");
        let t = dws.ok(op).await;
        ids.insert(t["task_id"].as_str().unwrap().to_owned());
    }
    let t = server.submit(&other, echo("over REST")).await;
    ids.insert(t["task_id"].as_str().unwrap().to_owned());

    let states = until_all_ended(&mut wall, &ids).await;
    for id in &ids {
        let s = &states[id];
        assert_eq!(
            s.first().map(String::as_str),
            Some("pending"),
            "{id}: {s:?}"
        );
        assert_eq!(
            s.last().map(String::as_str),
            Some("completed"),
            "{id}: {s:?}"
        );
        assert!(s.contains(&"running".to_owned()), "{id}: {s:?}");
    }
    server.stop().await;
}

/// On a cluster, the wall on node A sees tasks submitted on node B.
#[tokio::test]
async fn the_tasks_stream_spans_a_cluster() {
    let Some(db) = PgDb::create().await else {
        return;
    };
    let a = BinaryServer::start_url(&db.url, &["--node-id", "a"]).await;
    let b = BinaryServer::start_url(&db.url, &["--node-id", "b"]).await;
    let (mut wall, _) = a.ws(ADMIN_TOKEN, json!({})).await;
    wall.ok(json!({"op": "subscribe", "stream": "tasks"})).await;

    let mut ids = BTreeSet::new();
    for i in 0..4 {
        let (status, t) = b
            .post(
                "/api/runtime/tasks/submit",
                ADMIN_TOKEN,
                json!({"agent_type": "echo", "prompt": format!("task {i}")}),
            )
            .await;
        assert_eq!(status, 200, "{t}");
        ids.insert(t["task_id"].as_str().unwrap().to_owned());
    }
    let states = until_all_ended(&mut wall, &ids).await;
    for id in &ids {
        assert_eq!(states[id].last().map(String::as_str), Some("completed"));
    }
}
