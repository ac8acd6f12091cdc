//! Isolation between users: without `admin:system`, a user never sees
//! another user's sessions, tasks or events, over REST, SSE or WebSocket,
//! and their ids answer exactly as ids that do not exist (404), so they
//! cannot be probed. An admin sees everyone's.

mod common;

use common::*;
use reqwest::Method;
use serde_json::{Value, json};

/// One developer's things.
struct Dev {
    user_id: &'static str,
    token: String,
    /// Their session.
    session: String,
    /// A completed task in it.
    done: String,
    /// A waiting task in it (cancel and respond would change it).
    waiting: String,
}

async fn dev(server: &TestServer, user_id: &'static str) -> Dev {
    let token = server.user(user_id, &["developer"]).await;
    let (status, s) = server
        .post("/api/runtime/sessions", &token, json!({}))
        .await;
    assert_eq!(status, 200, "{s}");
    let session = s["session_id"].as_str().unwrap().to_owned();
    let t = server
        .submit(
            &token,
            json!({"agent_type": "echo", "prompt": format!("secret of {user_id}"), "session_id": session}),
        )
        .await;
    let done = t["task_id"].as_str().unwrap().to_owned();
    server.wait_terminal(&token, &done).await;
    let w = server
        .submit(
            &token,
            json!({"agent_type": "echo", "prompt": "waiting", "session_id": session, "params": {"wait": true}}),
        )
        .await;
    let waiting = w["task_id"].as_str().unwrap().to_owned();
    server.wait_state(&token, &waiting, "waiting").await;
    Dev {
        user_id,
        token,
        session,
        done,
        waiting,
    }
}

fn values(list: &Value, key: &str) -> Vec<Value> {
    list.as_array()
        .unwrap_or_else(|| panic!("not a list: {list}"))
        .iter()
        .map(|x| x[key].clone())
        .collect()
}

/// The requests that touch one session and its tasks, by id.
fn by_id_requests(
    session: &str,
    task: &str,
    waiting: &str,
) -> Vec<(Method, String, Option<Value>)> {
    vec![
        (
            Method::GET,
            format!("/api/runtime/sessions/{session}"),
            None,
        ),
        (
            Method::DELETE,
            format!("/api/runtime/sessions/{session}"),
            None,
        ),
        (
            Method::GET,
            format!("/api/runtime/sessions/{session}/events"),
            None,
        ),
        (
            Method::GET,
            format!("/api/audit/sessions/{session}/activity"),
            None,
        ),
        (Method::GET, format!("/api/runtime/tasks/{task}"), None),
        (
            Method::GET,
            format!("/api/runtime/tasks/{task}/state"),
            None,
        ),
        (
            Method::POST,
            format!("/api/runtime/tasks/{waiting}/cancel"),
            Some(json!({})),
        ),
        (
            Method::POST,
            format!("/api/runtime/tasks/{waiting}/respond"),
            Some(json!({"approve": true})),
        ),
        (
            Method::POST,
            "/api/runtime/tasks/submit".to_owned(),
            Some(json!({"agent_type": "echo", "prompt": "intrude", "session_id": session})),
        ),
    ]
}

async fn call(
    server: &TestServer,
    token: &str,
    (method, path, body): &(Method, String, Option<Value>),
) -> (u16, Value) {
    let mut r = server.req(method.clone(), path, Some(token));
    if let Some(b) = body {
        r = r.json(b);
    }
    send(r).await
}

/// REST lists leave out the other developer's sessions and tasks, and a
/// filter naming their session finds nothing.
#[tokio::test]
async fn lists_never_show_another_users_things() {
    let server = TestServer::spawn().await;
    let a = dev(&server, "a@iso.test").await;
    let b = dev(&server, "b@iso.test").await;
    for (me, them) in [(&a, &b), (&b, &a)] {
        let (status, sessions) = server.get("/api/runtime/sessions", &me.token).await;
        assert_eq!(status, 200);
        assert!(values(&sessions, "user_id").iter().all(|u| u == me.user_id));
        assert!(!values(&sessions, "session_id").contains(&json!(them.session)));
        assert!(values(&sessions, "session_id").contains(&json!(me.session)));

        let (status, tasks) = server.get("/api/runtime/tasks", &me.token).await;
        assert_eq!(status, 200);
        let ids = values(&tasks, "task_id");
        assert_eq!(ids.len(), 2, "{tasks}");
        assert!(ids.contains(&json!(me.done)) && ids.contains(&json!(me.waiting)));
        assert!(values(&tasks, "user_id").iter().all(|u| u == me.user_id));

        let (status, filtered) = server
            .get(
                &format!("/api/runtime/tasks?session_id={}", them.session),
                &me.token,
            )
            .await;
        assert_eq!((status, filtered), (200, json!([])));
        let (status, activity) = server
            .get(
                &format!("/api/audit/users/{}/activity", me.user_id),
                &me.token,
            )
            .await;
        assert_eq!(status, 200);
        assert!(values(&activity, "user_id").iter().all(|u| u == me.user_id));
    }
    server.stop().await;
}

/// Every by-id route on the other developer's session or tasks answers
/// exactly as for ids that do not exist (404 `not_found`, never 403), and
/// changes nothing.
#[tokio::test]
async fn another_users_ids_answer_as_unknown_ones() {
    let server = TestServer::spawn().await;
    let a = dev(&server, "a@iso.test").await;
    let b = dev(&server, "b@iso.test").await;
    let (s0, t0, w0) = (
        uuid::Uuid::new_v4().to_string(),
        uuid::Uuid::new_v4().to_string(),
        uuid::Uuid::new_v4().to_string(),
    );
    let theirs = by_id_requests(&b.session, &b.done, &b.waiting);
    let nobodys = by_id_requests(&s0, &t0, &w0);
    for (req, unknown) in theirs.iter().zip(&nobodys) {
        let (status, body) = call(&server, &a.token, req).await;
        let (u_status, u_body) = call(&server, &a.token, unknown).await;
        assert_eq!(status, 404, "{} {}: {body}", req.0, req.1);
        assert_eq!(body["error"]["code"], "not_found", "{body}");
        assert_eq!(
            (u_status, &u_body["error"]["code"]),
            (status, &body["error"]["code"]),
            "{} {} differs from an unknown id",
            req.0,
            req.1
        );
    }
    // SSE too.
    for s in [&b.session, &s0] {
        let (status, body) = send(
            server
                .req(
                    Method::GET,
                    &format!("/api/runtime/sessions/{s}/events"),
                    Some(&a.token),
                )
                .header("accept", "text/event-stream"),
        )
        .await;
        assert_eq!((status, &body["error"]["code"]), (404, &json!("not_found")));
    }
    // A task cursor naming their task is refused like one naming no task.
    let (status, _) = server
        .get(&format!("/api/runtime/tasks?after={}", b.done), &a.token)
        .await;
    let (u_status, _) = server
        .get(&format!("/api/runtime/tasks?after={t0}"), &a.token)
        .await;
    assert_eq!(status, u_status);

    // Nothing of theirs changed.
    let (_, s) = server
        .get(&format!("/api/runtime/sessions/{}", b.session), &b.token)
        .await;
    assert_eq!(s["state"], "active");
    let (_, w) = server
        .get(&format!("/api/runtime/tasks/{}/state", b.waiting), &b.token)
        .await;
    assert_eq!(w["state"], "waiting");
    let (_, events) = server
        .get(
            &format!("/api/runtime/sessions/{}/events?limit=1000", b.session),
            &b.token,
        )
        .await;
    assert!(
        values(&events["events"], "task_id")
            .iter()
            .all(|t| t == b.done.as_str() || t == b.waiting.as_str()),
        "no task was submitted into their session"
    );
    server.stop().await;
}

/// Over WebSocket, `task.get`, `task.cancel` and `task.respond` on the other
/// developer's task and `subscribe` to their session answer `not_found`,
/// `task.list` leaves their tasks out, and none of their events arrive.
#[tokio::test]
async fn websocket_ops_never_reach_another_users_things() {
    let server = TestServer::spawn().await;
    let a = dev(&server, "a@iso.test").await;
    let b = dev(&server, "b@iso.test").await;
    let (mut ws, hello) = server.ws(&a.token, json!({"session_id": a.session})).await;
    assert_eq!(hello["session_id"], a.session.as_str());
    for op in [
        json!({"op": "task.get", "task_id": b.done}),
        json!({"op": "task.cancel", "task_id": b.waiting}),
        json!({"op": "task.respond", "task_id": b.waiting, "approve": true}),
        json!({"op": "subscribe", "stream": format!("session:{}", b.session)}),
        json!({"op": "subscribe", "stream": format!("session:{}", b.session), "after_seq": 0}),
    ] {
        let reply = ws.call(op.clone()).await;
        assert_eq!(reply["ok"], false, "{op}: {reply}");
        assert_eq!(reply["error"]["code"], "not_found", "{op}: {reply}");
    }
    let list = ws.ok(json!({"op": "task.list"})).await;
    let ids = values(&list["tasks"], "task_id");
    assert_eq!(ids.len(), 2, "{list}");
    assert!(!ids.contains(&json!(b.done)) && !ids.contains(&json!(b.waiting)));

    // B works in their session while A works in theirs: A gets only A's.
    let theirs = server
        .submit(
            &b.token,
            json!({"agent_type": "echo", "prompt": "private", "session_id": b.session}),
        )
        .await;
    server
        .wait_terminal(&b.token, theirs["task_id"].as_str().unwrap())
        .await;
    let mine = ws
        .ok(json!({"op": "task.submit", "agent_type": "echo", "prompt": "mine"}))
        .await;
    let events = ws.until_terminal(mine["task_id"].as_str().unwrap()).await;
    let stream = format!("session:{}", a.session);
    for e in &events {
        assert_eq!(e["stream"], stream.as_str(), "{e}");
        assert_ne!(e["task_id"], theirs["task_id"], "{e}");
    }
    let (_, w) = server
        .get(&format!("/api/runtime/tasks/{}/state", b.waiting), &b.token)
        .await;
    assert_eq!(w["state"], "waiting");
    server.stop().await;
}

/// A `hello` naming another user's session is an error reply, then close
/// 4401; so is one naming a session that does not exist.
#[tokio::test]
async fn hello_with_another_users_session_is_refused() {
    let server = TestServer::spawn().await;
    let a = dev(&server, "a@iso.test").await;
    let b = dev(&server, "b@iso.test").await;
    for session in [b.session.clone(), uuid::Uuid::new_v4().to_string()] {
        let mut ws = WsClient::connect(&server.ws_url).await;
        let reply = ws
            .call(json!({"op": "hello", "token": a.token, "session_id": session}))
            .await;
        assert_eq!(reply["ok"], false, "{reply}");
        assert_eq!(reply["error"]["code"], "not_found", "{reply}");
        assert_eq!(ws.closed().await, Closed::Code(4401));
    }
    server.stop().await;
}

/// An admin (`admin:system`) sees both developers' sessions, tasks and
/// events, by list and by id, and may subscribe to either stream.
#[tokio::test]
async fn an_admin_sees_both() {
    let server = TestServer::spawn().await;
    let a = dev(&server, "a@iso.test").await;
    let b = dev(&server, "b@iso.test").await;
    let admin = &server.admin;
    let (_, sessions) = server.get("/api/runtime/sessions", admin).await;
    let (_, tasks) = server.get("/api/runtime/tasks", admin).await;
    for d in [&a, &b] {
        assert!(values(&sessions, "session_id").contains(&json!(d.session)));
        for t in [&d.done, &d.waiting] {
            assert!(values(&tasks, "task_id").contains(&json!(t)));
        }
        for path in [
            format!("/api/runtime/sessions/{}", d.session),
            format!("/api/runtime/sessions/{}/events", d.session),
            format!("/api/audit/sessions/{}/activity", d.session),
            format!("/api/runtime/tasks/{}", d.done),
            format!("/api/runtime/tasks/{}/state", d.done),
        ] {
            let (status, body) = server.get(&path, admin).await;
            assert_eq!(status, 200, "{path}: {body}");
        }
        let (status, filtered) = server
            .get(
                &format!("/api/runtime/tasks?session_id={}", d.session),
                admin,
            )
            .await;
        assert_eq!(status, 200);
        assert_eq!(values(&filtered, "task_id").len(), 2);
    }
    let (mut ws, _) = server.ws(admin, json!({})).await;
    for d in [&a, &b] {
        let sub = ws
            .ok(json!({"op": "subscribe", "stream": format!("session:{}", d.session), "after_seq": 0}))
            .await;
        assert!(sub["last_seq"].as_i64().unwrap() > 0, "{sub}");
        let got = ws.ok(json!({"op": "task.get", "task_id": d.done})).await;
        assert_eq!(got["state"], "completed");
    }
    // Stored events of both streams arrive after the subscriptions.
    let mut streams = std::collections::BTreeSet::new();
    let want = [&a, &b]
        .iter()
        .map(|d| format!("session:{}", d.session))
        .collect::<std::collections::BTreeSet<_>>();
    while streams != want {
        let e = ws.event().await;
        streams.insert(e["stream"].as_str().unwrap().to_owned());
    }
    server.stop().await;
}
