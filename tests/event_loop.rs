//! `serve --event-loop`: the node on one thread, SQLite commits included.
//! The same guarantees as the default node: every acknowledged task and
//! event is stored (a SIGKILL loses none), streams are gapless, a resume
//! after a restart catches up from the store and `seq` goes on from there.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};

/// Submit `n` echo tasks over one socket without waiting between them; the
/// acknowledged task ids.
async fn submit_many(ws: &mut WsClient, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let reply = ws
            .ok(json!({"op": "task.submit", "agent_type": "echo",
                       "prompt": format!("event loop task number {i}"),
                       "params": {"chunk_size": 4}}))
            .await;
        ids.push(reply["task_id"].as_str().unwrap().to_owned());
    }
    ids
}

/// Read events until every task in `ids` completed.
async fn until_all_completed(ws: &mut WsClient, ids: &[String]) -> Vec<Value> {
    let mut left: std::collections::HashSet<_> = ids.iter().cloned().collect();
    ws.events_until(|e| {
        if e["type"] == "task.state" && e["data"]["state"] == "completed" {
            left.remove(e["task_id"].as_str().unwrap_or_default());
        }
        left.is_empty()
    })
    .await
}

#[tokio::test]
async fn an_event_loop_node_keeps_every_guarantee_across_a_kill() {
    let dir = tempfile::tempdir().unwrap();
    let db = db_in(&dir);
    let node = BinaryServer::start(&db, &["--event-loop"]).await;
    let (mut ws, hello) = node.ws(ADMIN_TOKEN, json!({})).await;
    let session = hello["session_id"].as_str().unwrap().to_owned();
    // A second reader of the same session, attached from the start.
    let (mut watcher, _) = node
        .ws(ADMIN_TOKEN, json!({"session_id": session, "after_seq": 0}))
        .await;

    let log = node.log.lock().unwrap().clone();
    assert!(log.contains("commits run on the event loop"), "{log}");

    let ids = submit_many(&mut ws, 20).await;
    let events = until_all_completed(&mut ws, &ids).await;
    let all = seqs(&events);
    assert_eq!(all, (1..=all.len() as i64).collect::<Vec<_>>());
    let watched = until_all_completed(&mut watcher, &ids).await;
    assert_eq!(seqs(&watched), all, "both readers see the same stream");
    for id in &ids {
        let (status, state) = node
            .get(&format!("/api/runtime/tasks/{id}/state"), ADMIN_TOKEN)
            .await;
        assert_eq!(status, 200);
        assert_eq!(state["state"], "completed");
    }
    let last = *all.last().unwrap();

    // Acknowledged, then killed before any graceful anything.
    let acked = submit_many(&mut ws, 5).await;
    node.kill9().await;

    let node = BinaryServer::start(&db, &["--event-loop"]).await;
    let half = last / 2;
    let (mut back, hello) = node
        .ws(
            ADMIN_TOKEN,
            json!({"session_id": session, "after_seq": half}),
        )
        .await;
    assert!(hello["last_seq"].as_i64().unwrap() > last, "{hello}");
    let caught_up = back.events_until(|e| e["seq"].as_i64() == Some(last)).await;
    assert_eq!(
        seqs(&caught_up),
        (half + 1..=last).collect::<Vec<_>>(),
        "a resume after the restart continues right after after_seq"
    );
    for id in &acked {
        let state = node
            .wait_task(id, Duration::from_secs(20), |s| s["state"].is_string())
            .await;
        assert_ne!(state["error"]["code"], "not_found", "acked task {id} lost");
    }
    let more = submit_many(&mut back, 1).await;
    let tail = until_all_completed(&mut back, &more).await;
    let tail_seqs = seqs(&tail);
    let first_new = *tail_seqs.first().unwrap();
    assert!(first_new > last, "seq goes on from the stored stream");
    assert_eq!(
        tail_seqs,
        (first_new..first_new + tail_seqs.len() as i64).collect::<Vec<_>>()
    );
}
