//! The seed's flow, end to end, over REST and WebSocket.

mod common;

use common::*;
use serde_json::json;

/// A session, a submit, live states over WebSocket, then the state query.
#[tokio::test]
async fn seed_flow_over_rest_and_websocket() {
    let server = TestServer::spawn().await;
    let (mut ws, hello) = server.ws(&server.admin, json!({})).await;
    assert_eq!(hello["protocol"], 1);
    assert_eq!(hello["user_id"], "admin");
    let task = ws
        .ok(json!({"op": "task.submit", "agent_type": "echo", "prompt": "hello there, websocket world"}))
        .await;
    assert_eq!(task["state"], "pending");
    assert_eq!(task["session_id"], hello["session_id"]);
    let events = ws.until_terminal(task["task_id"].as_str().unwrap()).await;
    assert_gapless(&events);
    assert_eq!(
        state_names(&events),
        ["pending", "planning", "running", "completed"]
    );
    assert_eq!(output_text(&events), "hello there, websocket world");
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
    assert_eq!(state["success"], true);
    assert_eq!(state["result"], "hello there, websocket world");
    server.stop().await;
}
