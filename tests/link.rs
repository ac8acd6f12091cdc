//! The link protocol (`GET /link`) spoken by hand over a raw WebSocket: a
//! host may report only on tasks the node gave it, in order, each report
//! once; bad, oversized and flooding input gets a clear error or close
//! code and leaves the node serving; a token without `agent:configure` is
//! refused and audited.

mod common;

use common::*;
use serde_json::{Value, json};
use switchboard::config::FileConfig;
use tokio_tungstenite::tungstenite::Message;

fn link_url(s: &TestServer) -> String {
    s.ws_url.replace("/ws", "/link")
}

/// A raw link that said hello as `name` with `token`, offering `hecho`;
/// returns it and the node's first answer.
async fn raw_link(s: &TestServer, token: &str, name: &str) -> (WsClient, Value) {
    let mut link = WsClient::connect(&link_url(s)).await;
    let hello = json!({"op": "hello", "token": token, "name": name,
                       "agents": [{"agent_type": "hecho", "kind": "echo", "max_concurrent": 2}]});
    link.send_text(&hello.to_string()).await;
    let first = link.read().await;
    (link, first)
}

/// A report frame.
fn report(task_id: &str, n: u64, body: Value) -> String {
    let mut r = json!({"op": "report", "task_id": task_id, "n": n});
    for (k, v) in body.as_object().unwrap() {
        r[k] = v.clone();
    }
    r.to_string()
}

/// The node's next frame that is not an `ack`.
async fn next_non_ack(link: &mut WsClient) -> Value {
    loop {
        let f = link.read().await;
        if f["op"] != "ack" {
            return f;
        }
    }
}

/// Check a frame against `protocol/schema/<name>`.
fn check_frame(name: &str, frame: &Value) {
    let path = format!("{}/protocol/schema/{name}", env!("CARGO_MANIFEST_DIR"));
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let validator = jsonschema::validator_for(&schema).expect("a valid schema");
    let errors: Vec<String> = validator
        .iter_errors(frame)
        .map(|e| e.to_string())
        .collect();
    assert!(errors.is_empty(), "{name}: {errors:?}\n{frame}");
}

/// Every frame of a real link validates against the published schemas,
/// and the schemas refuse junk.
#[tokio::test]
async fn frames_match_the_link_schemas() {
    let s = TestServer::spawn().await;
    let hello = json!({"op": "hello", "token": s.admin, "name": "schemas",
                       "agents": [{"agent_type": "hecho", "kind": "echo", "max_concurrent": 2}]});
    check_frame("link-host-frame.json", &hello);
    let (mut link, welcome) = raw_link(&s, &s.admin, "schemas").await;
    check_frame("link-node-frame.json", &welcome);
    let task = s
        .submit(
            &s.admin,
            json!({"agent_type": "hecho", "prompt": "p", "params": {"wait": true}}),
        )
        .await;
    let id = task["task_id"].as_str().unwrap().to_owned();
    let run = link.read().await;
    check_frame("link-node-frame.json", &run);
    let frames = [
        json!({"op": "report", "task_id": id, "n": 1, "type": "output", "chunk": "p"}),
        json!({"op": "report", "task_id": id, "n": 2, "type": "wait", "message": "ok?"}),
    ];
    for f in &frames {
        check_frame("link-host-frame.json", f);
        link.send_text(&f.to_string()).await;
        let ack = link.read().await;
        assert_eq!(ack["op"], "ack", "{ack}");
        check_frame("link-node-frame.json", &ack);
    }
    s.wait_state(&s.admin, &id, "waiting").await;
    s.post(
        &format!("/api/runtime/tasks/{id}/respond"),
        &s.admin,
        json!({"approve": true, "input": "yes"}),
    )
    .await;
    let answer = link.read().await;
    assert_eq!(
        (answer["op"].as_str(), answer["input"].as_str()),
        (Some("answer"), Some("yes"))
    );
    check_frame("link-node-frame.json", &answer);
    s.cancel(&s.admin, &id).await;
    let cancel = link.read().await;
    assert_eq!(cancel["op"], "cancel", "{cancel}");
    check_frame("link-node-frame.json", &cancel);
    link.send_text(&report(
        "6f1c1a0e-7d7e-4c1e-9f43-2a4d8f7f0e11",
        1,
        json!({"type": "failed", "error": "x"}),
    ))
    .await;
    let error = link.read().await;
    check_frame("link-node-frame.json", &error);
    check_frame("link-host-frame.json", &json!({"op": "bye"}));
    let path = format!(
        "{}/protocol/schema/link-host-frame.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let v = jsonschema::validator_for(&schema).unwrap();
    assert!(!v.is_valid(&json!({"op": "report", "n": 1, "type": "output"})));
    assert!(!v.is_valid(&json!({"op": "fly"})));
}

/// Reports must be the next number: one that skips is refused, a resent
/// one is dropped (acked again), so the stored output has each chunk once.
#[tokio::test]
async fn reports_are_stored_once_and_in_order() {
    let s = TestServer::spawn().await;
    let (mut link, welcome) = raw_link(&s, &s.admin, "manual").await;
    assert_eq!(welcome["op"], "welcome", "{welcome}");
    assert_eq!(welcome["grace_ms"], 60000);
    let task = s
        .submit(&s.admin, json!({"agent_type": "hecho", "prompt": "abc"}))
        .await;
    let id = task["task_id"].as_str().unwrap().to_owned();
    let run = link.read().await;
    assert_eq!(
        (run["op"].as_str(), run["task_id"].as_str()),
        (Some("run"), Some(id.as_str()))
    );
    assert_eq!(run["prompt"], "abc");

    link.send_text(&report(&id, 2, json!({"type": "output", "chunk": "b"})))
        .await;
    let refused = link.read().await;
    assert_eq!(refused["op"], "error", "{refused}");
    assert_eq!(refused["error"]["code"], "bad_request");
    for (n, chunk) in [(1, "a"), (1, "a"), (2, "b"), (2, "b")] {
        link.send_text(&report(&id, n, json!({"type": "output", "chunk": chunk})))
            .await;
    }
    link.send_text(&report(
        &id,
        3,
        json!({"type": "completed", "result": "ab"}),
    ))
    .await;
    let done = s.wait_terminal(&s.admin, &id).await;
    assert_eq!(
        (done["state"].as_str(), done["result"].as_str()),
        (Some("completed"), Some("ab"))
    );
    let (_, detail) = s.get(&format!("/api/runtime/tasks/{id}"), &s.admin).await;
    let output: String = detail["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["chunk"].as_str())
        .collect();
    assert_eq!(output, "ab");
}

/// A host cannot write into a task that is not its own: the report is
/// refused (`forbidden`), audited, and the task is untouched; the link and
/// the node go on.
#[tokio::test]
async fn a_host_cannot_report_on_a_task_it_was_not_given() {
    let s = TestServer::spawn().await;
    let (mut link, welcome) = raw_link(&s, &s.admin, "forger").await;
    assert_eq!(welcome["op"], "welcome");
    // Someone's task on the node's own echo agent, and an unknown id.
    let victim = s
        .submit(
            &s.admin,
            json!({"agent_type": "echo", "prompt": "mine", "params": {"wait": true}}),
        )
        .await;
    let victim = victim["task_id"].as_str().unwrap().to_owned();
    s.wait_state(&s.admin, &victim, "waiting").await;
    for target in [victim.as_str(), "6f1c1a0e-7d7e-4c1e-9f43-2a4d8f7f0e11"] {
        link.send_text(&report(
            target,
            1,
            json!({"type": "output", "chunk": "evil"}),
        ))
        .await;
        let refused = next_non_ack(&mut link).await;
        assert_eq!(refused["op"], "error", "{refused}");
        assert_eq!(refused["error"]["code"], "forbidden");
        assert_eq!(refused["task_id"], target);
        link.send_text(&report(
            target,
            1,
            json!({"type": "completed", "result": "evil"}),
        ))
        .await;
        assert_eq!(next_non_ack(&mut link).await["error"]["code"], "forbidden");
    }
    let (_, detail) = s
        .get(&format!("/api/runtime/tasks/{victim}"), &s.admin)
        .await;
    assert_eq!(detail["state"], "waiting");
    assert!(!detail.to_string().contains("evil"), "{detail}");
    let (_, audit) = s
        .get("/api/audit/events?event_type=permission.denied", &s.admin)
        .await;
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["action"] == "host.report" && r["resource_id"] == victim.as_str()),
        "{audit}"
    );
    // Junk gets an error and the link stays up.
    for junk in [
        "not json",
        "{}",
        r#"{"op":"fly"}"#,
        r#"{"op":"report","n":1}"#,
    ] {
        link.send_text(junk).await;
        let e = next_non_ack(&mut link).await;
        assert_eq!(e["error"]["code"], "bad_request", "{junk}: {e}");
    }
    link.send_raw(Message::Binary(vec![1, 2, 3].into())).await;
    assert_eq!(
        next_non_ack(&mut link).await["error"]["code"],
        "bad_request"
    );
    let (status, _) = s
        .post(
            &format!("/api/runtime/tasks/{victim}/respond"),
            &s.admin,
            json!({"approve": true}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        s.wait_terminal(&s.admin, &victim).await["state"],
        "completed"
    );
}

/// A token without `agent:configure` cannot link: `forbidden`, close 4403,
/// audited; no token at all is 4401; a bad hello is 4400.
#[tokio::test]
async fn linking_needs_agent_configure() {
    let s = TestServer::spawn().await;
    let dev = s.user("dev@team.com", &["developer"]).await;
    let (mut link, first) = raw_link(&s, &dev, "nope").await;
    assert_eq!(
        (first["op"].as_str(), first["error"]["code"].as_str()),
        (Some("error"), Some("forbidden")),
        "{first}"
    );
    assert_eq!(link.closed().await, Closed::Code(4403));
    let (_, audit) = s
        .get("/api/audit/events?event_type=permission.denied", &s.admin)
        .await;
    let denied = &audit[0];
    assert_eq!(
        (denied["action"].as_str(), denied["user_id"].as_str()),
        (Some("host.link"), Some("dev@team.com")),
        "{audit}"
    );

    let (mut link, first) = raw_link(&s, "sb_wrong", "nope").await;
    assert_eq!(first["error"]["code"], "unauthorized");
    assert_eq!(link.closed().await, Closed::Code(4401));
    let (mut link, first) = raw_link(&s, &s.admin, "bad name!").await;
    assert_eq!(first["error"]["code"], "bad_request");
    assert_eq!(link.closed().await, Closed::Code(4400));
    let mut link = WsClient::connect(&link_url(&s)).await;
    link.send_text(r#"{"op":"report","task_id":"x","n":1}"#)
        .await;
    assert_eq!(link.read().await["error"]["code"], "bad_request");
    assert_eq!(link.closed().await, Closed::Code(4400));
    // None of it hurt the node.
    let (status, _) = s.get("/api/runtime/hosts", &dev).await;
    assert_eq!(status, 200);
}

/// A host reporting faster than `[link] frames_per_second` is slowed down,
/// not cut off: every report is stored, in order.
#[tokio::test]
async fn a_fast_host_is_paced_not_cut_off() {
    let mut file = FileConfig::default();
    file.security.frames_per_second = 5;
    file.link.frames_per_second = 100;
    let s = TestServer::spawn_with(file).await;
    let (mut link, welcome) = raw_link(&s, &s.admin, "fast").await;
    assert_eq!(welcome["op"], "welcome");
    let task = s
        .submit(&s.admin, json!({"agent_type": "hecho", "prompt": "p"}))
        .await;
    let id = task["task_id"].as_str().unwrap().to_owned();
    assert_eq!(link.read().await["op"], "run");
    let n = 300;
    for i in 1..=n {
        link.send_text(&report(
            &id,
            i,
            json!({"type": "output", "chunk": format!("<{i}>")}),
        ))
        .await;
    }
    link.send_text(&report(
        &id,
        n + 1,
        json!({"type": "completed", "result": "done"}),
    ))
    .await;
    let done = s.wait_terminal(&s.admin, &id).await;
    assert_eq!(done["state"], "completed", "{done}");
    let (_, detail) = s.get(&format!("/api/runtime/tasks/{id}"), &s.admin).await;
    let output: String = detail["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["chunk"].as_str())
        .collect();
    let want: String = (1..=n).map(|i| format!("<{i}>")).collect();
    assert_eq!(output, want);
}

/// An oversized frame closes the link with 1009, a flood of refused frames
/// with 4429; the host's tasks wait for it (grace) and the node serves on.
#[tokio::test]
async fn oversized_and_flooding_hosts_are_closed() {
    let mut file = FileConfig::default();
    file.limits.max_message_bytes = 4096;
    file.security.frames_per_second = 5;
    let s = TestServer::spawn_with(file).await;
    let (mut link, welcome) = raw_link(&s, &s.admin, "big").await;
    assert_eq!(welcome["max_message_bytes"], 4096);
    let big = report(
        "6f1c1a0e-7d7e-4c1e-9f43-2a4d8f7f0e11",
        1,
        json!({"type": "output", "chunk": "x".repeat(10_000)}),
    );
    link.send_text(&big).await;
    assert_eq!(link.closed().await, Closed::Code(1009));

    let (mut link, _) = raw_link(&s, &s.admin, "chatty").await;
    for _ in 0..50 {
        if link.try_send_text("{}").await.is_err() {
            break;
        }
    }
    assert_eq!(link.closed().await, Closed::Code(4429));
    let (status, hosts) = s.get("/api/runtime/hosts", &s.admin).await;
    assert_eq!(status, 200);
    assert!(
        hosts
            .as_array()
            .unwrap()
            .iter()
            .all(|h| h["state"] == "away"),
        "{hosts}"
    );
    let done = s
        .submit(
            &s.admin,
            json!({"agent_type": "echo", "prompt": "still here"}),
        )
        .await;
    let done = s
        .wait_terminal(&s.admin, done["task_id"].as_str().unwrap())
        .await;
    assert_eq!(done["state"], "completed");
}

/// A link lasts only while its token does: taking `agent:configure` away
/// closes it with 4403 at the next heartbeat, revoking the token with 4401,
/// revoking the host's device with 4403.
#[tokio::test]
async fn losing_the_permission_or_the_token_ends_the_link() {
    let mut file = FileConfig::default();
    file.limits.heartbeat_ms = 100;
    let s = TestServer::spawn_with(file).await;
    let token = s.user("hosts@team.com", &["guest"]).await;
    let grant = |what: &str, perm: &str| json!({ what: perm });
    let path = "/api/admin/users/hosts@team.com/permissions";
    let (status, _) = s
        .post(path, &s.admin, grant("grant", "agent:configure"))
        .await;
    assert_eq!(status, 200);
    let (mut link, welcome) = raw_link(&s, &token, "guest-box").await;
    assert_eq!(welcome["op"], "welcome", "{welcome}");
    s.post(path, &s.admin, grant("revoke", "agent:configure"))
        .await;
    assert_eq!(link.closed().await, Closed::Code(4403));

    s.post(path, &s.admin, grant("grant", "agent:configure"))
        .await;
    let (mut link, welcome) = raw_link(&s, &token, "guest-box").await;
    assert_eq!(welcome["op"], "welcome", "{welcome}");
    let (status, _) = s
        .delete("/api/admin/users/hosts@team.com/tokens", &s.admin)
        .await;
    assert_eq!(status, 200);
    assert_eq!(link.closed().await, Closed::Code(4401));

    // Revoking the host's device ends its link too.
    let mut link = WsClient::connect(&link_url(&s)).await;
    let hello = json!({"op": "hello", "token": s.admin, "name": "dev-box", "device_id": "host-dev-box",
                       "agents": [{"agent_type": "hecho"}]});
    link.send_text(&hello.to_string()).await;
    assert_eq!(link.read().await["op"], "welcome");
    s.post(
        "/api/devices",
        &s.admin,
        json!({"device_id": "host-dev-box"}),
    )
    .await;
    let (status, _) = s
        .post("/api/devices/host-dev-box/revoke", &s.admin, json!({}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(link.closed().await, Closed::Code(4403));
}
