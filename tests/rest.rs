//! The REST surface of contract sections 2, 3, 4 and 6, route by route,
//! with its error cases: health, metrics, the dashboard, users, sessions,
//! tasks, discovery, session events (JSON and SSE) and audit.

mod common;

use std::collections::BTreeSet;
use std::pin::Pin;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use common::*;
use futures_util::{Stream, StreamExt};
use reqwest::Method;
use serde_json::{Value, json};
use switchboard::config::FileConfig;
use switchboard::rbac::Role;

// ---------------------------------------------------------------- helpers

/// A request with a raw body and content type: (status, JSON or null).
async fn raw(
    server: &TestServer,
    method: Method,
    path: &str,
    token: &str,
    body: impl Into<reqwest::Body>,
) -> (u16, Value) {
    send(
        server
            .req(method, path, Some(token))
            .header("content-type", "application/json")
            .body(body),
    )
    .await
}

/// Assert an error answer: this status, this code, a message sentence.
#[track_caller]
fn assert_error(got: &(u16, Value), status: u16, code: &str) {
    let (s, body) = got;
    assert_eq!(*s, status, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "no message: {body}"
    );
}

/// An RFC 3339 UTC timestamp.
#[track_caller]
fn utc(v: &Value) -> DateTime<Utc> {
    let s = v.as_str().unwrap_or_else(|| panic!("not a timestamp: {v}"));
    assert!(s.ends_with('Z'), "not UTC: {s}");
    DateTime::parse_from_rfc3339(s)
        .unwrap_or_else(|e| panic!("not RFC 3339: {s}: {e}"))
        .with_timezone(&Utc)
}

#[track_caller]
fn uuid(v: &Value) -> uuid::Uuid {
    uuid::Uuid::parse_str(v.as_str().unwrap_or_else(|| panic!("not a string: {v}")))
        .unwrap_or_else(|e| panic!("not a UUID: {v}: {e}"))
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect()
}

fn role_permissions(role: Role) -> BTreeSet<String> {
    role.permissions()
        .iter()
        .map(|p| p.as_str().to_owned())
        .collect()
}

/// The `key` of every element of a JSON array.
fn field(list: &Value, key: &str) -> Vec<Value> {
    list.as_array()
        .unwrap_or_else(|| panic!("not an array: {list}"))
        .iter()
        .map(|x| x[key].clone())
        .collect()
}

fn ids(list: &Value) -> Vec<String> {
    field(list, "task_id")
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

/// Open a session as `token`; its id.
async fn new_session(server: &TestServer, token: &str) -> String {
    let (status, body) = server.post("/api/runtime/sessions", token, json!({})).await;
    assert_eq!(status, 200, "{body}");
    body["session_id"].as_str().unwrap().to_owned()
}

/// Submit and wait for the end; the final state.
async fn run_task(server: &TestServer, token: &str, body: Value) -> Value {
    let task = server.submit(token, body).await;
    server
        .wait_terminal(token, task["task_id"].as_str().unwrap())
        .await
}

/// Submit an echo task with `wait` and wait until it waits; its id.
async fn waiting_task(server: &TestServer, token: &str) -> String {
    let task = server
        .submit(
            token,
            json!({"agent_type": "echo", "prompt": "hold on", "params": {"wait": true}}),
        )
        .await;
    let id = task["task_id"].as_str().unwrap().to_owned();
    server.wait_state(token, &id, "waiting").await;
    id
}

/// A live SSE response read as events, parsed by hand.
struct SseReader {
    body: Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>,
    buf: String,
}

impl SseReader {
    /// `GET path` with `Accept: text/event-stream` (and `Last-Event-ID`).
    async fn open(server: &TestServer, token: &str, path: &str, last_id: Option<&str>) -> Self {
        let mut r = server
            .req(Method::GET, path, Some(token))
            .header("accept", "text/event-stream");
        if let Some(id) = last_id {
            r = r.header("last-event-id", id);
        }
        let resp = r.send().await.expect("SSE request");
        assert_eq!(resp.status().as_u16(), 200, "SSE refused");
        let ct = resp.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(ct.starts_with("text/event-stream"), "{ct}");
        SseReader {
            body: Box::pin(resp.bytes_stream()),
            buf: String::new(),
        }
    }

    /// The next event with data: (its `id:` as a number, its data as JSON).
    async fn next(&mut self) -> (i64, Value) {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut id = None;
                let mut data = Vec::new();
                for line in block.lines() {
                    if line.starts_with(':') || line.is_empty() {
                        continue;
                    }
                    let (name, value) = line.split_once(':').unwrap_or((line, ""));
                    let value = value.strip_prefix(' ').unwrap_or(value);
                    match name {
                        "id" => id = Some(value.parse::<i64>().expect("numeric id")),
                        "data" => data.push(value.to_owned()),
                        _ => {}
                    }
                }
                if data.is_empty() {
                    continue; // a keep-alive comment
                }
                let id = id.expect("every event carries an id");
                let data = serde_json::from_str(&data.join("\n")).expect("data is JSON");
                return (id, data);
            }
            let chunk = tokio::time::timeout(WAIT, self.body.next())
                .await
                .expect("timed out waiting for an SSE event")
                .expect("SSE stream ended")
                .expect("SSE read error");
            self.buf
                .push_str(&String::from_utf8_lossy(&chunk).replace("\r\n", "\n"));
        }
    }
}

// ---------------------------------------------------------- health & web

/// `/healthz` and `/health` answer `{"status":"ok"}` without a token, and
/// `/readyz` is 200 while the store answers.
#[tokio::test]
async fn health_and_readiness_need_no_token() {
    let server = TestServer::spawn().await;
    for path in ["/healthz", "/health", "/readyz"] {
        let (status, body) = send(http().get(format!("{}{path}", server.base))).await;
        assert_eq!(status, 200, "{path}");
        if path != "/readyz" {
            assert_eq!(body, json!({"status": "ok"}), "{path}");
        }
    }
    server.stop().await;
}

/// `/metrics` is Prometheus text, and after a connection and a task it has
/// the connection, task and stored-event series.
#[tokio::test]
async fn metrics_show_connections_tasks_and_stored_events() {
    let server = TestServer::spawn().await;
    let (_ws, _) = server.ws(&server.admin, json!({})).await;
    run_task(
        &server,
        &server.admin,
        json!({"agent_type": "echo", "prompt": "count me"}),
    )
    .await;
    let resp = http()
        .get(format!("{}/metrics", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let ct = resp.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(ct.starts_with("text/plain"), "{ct}");
    let text = resp.text().await.unwrap();
    for name in [
        "switchboard_connections",
        "switchboard_tasks{",
        "switchboard_events_stored_total",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(name)),
            "{name} missing from:\n{text}"
        );
    }
    assert!(
        text.lines()
            .any(|l| l.starts_with("switchboard_tasks{") && l.contains("state=\"completed\"")),
        "{text}"
    );
    server.stop().await;
}

/// `GET /` serves the dashboard as HTML, without a token.
#[tokio::test]
async fn root_serves_the_dashboard() {
    let server = TestServer::spawn().await;
    let resp = http()
        .get(format!("{}/", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let ct = resp.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(ct.starts_with("text/html"), "{ct}");
    let html = resp.text().await.unwrap().to_lowercase();
    assert!(html.contains("<html"), "{html}");
    server.stop().await;
}

// ------------------------------------------------------------------ users

/// `/api/me` shows the caller's id, roles and effective permissions.
#[tokio::test]
async fn me_shows_roles_and_permissions() {
    let server = TestServer::spawn().await;
    let token = server.user("dev@team.com", &["developer"]).await;
    let (status, me) = server.get("/api/me", &token).await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["user_id"], "dev@team.com");
    assert_eq!(strings(&me["roles"]), ["developer"]);
    let perms: BTreeSet<String> = strings(&me["permissions"]).into_iter().collect();
    assert_eq!(perms, role_permissions(Role::Developer));
    let (_, me) = server.get("/api/me", &server.admin).await;
    assert_eq!(me["user_id"], "admin");
    assert_eq!(strings(&me["permissions"]).len(), 14);
    server.stop().await;
}

/// The admin user routes: create (201, a working token), duplicate 409,
/// unknown role 400, list, add and remove a role, grant with bad input 400,
/// issue a token 201, revoke every token: old tokens 401, sockets close 4401.
#[tokio::test]
async fn admin_manages_users_roles_permissions_and_tokens() {
    let server = TestServer::spawn().await;
    let admin = &server.admin;
    let (status, created) = server
        .post(
            "/api/admin/users",
            admin,
            json!({"user_id": "dev@team.com", "roles": ["developer"]}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["user_id"], "dev@team.com");
    assert_eq!(strings(&created["roles"]), ["developer"]);
    let token = created["token"].as_str().unwrap().to_owned();
    let (status, me) = server.get("/api/me", &token).await;
    assert_eq!((status, &me["user_id"]), (200, &json!("dev@team.com")));

    let dup = server
        .post(
            "/api/admin/users",
            admin,
            json!({"user_id": "dev@team.com", "roles": ["viewer"]}),
        )
        .await;
    assert_error(&dup, 409, "conflict");
    let bad_role = server
        .post(
            "/api/admin/users",
            admin,
            json!({"user_id": "x@team.com", "roles": ["root"]}),
        )
        .await;
    assert_error(&bad_role, 400, "bad_request");
    let bad_id = server
        .post(
            "/api/admin/users",
            admin,
            json!({"user_id": "", "roles": []}),
        )
        .await;
    assert_error(&bad_id, 400, "bad_request");

    let (status, users) = server.get("/api/admin/users", admin).await;
    assert_eq!(status, 200, "{users}");
    let dev = users
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["user_id"] == "dev@team.com")
        .expect("the new user is listed");
    assert_eq!(strings(&dev["roles"]), ["developer"]);
    assert!(dev["permissions"].is_array());
    assert!(
        users
            .as_array()
            .unwrap()
            .iter()
            .all(|u| u["user_id"] != "x@team.com"),
        "a refused create left no user"
    );

    let (status, view) = server
        .post(
            "/api/admin/users/dev@team.com/roles",
            admin,
            json!({"role": "viewer"}),
        )
        .await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(strings(&view["roles"]), ["developer", "viewer"]);
    assert_eq!(view["user_id"], "dev@team.com");
    let bad = server
        .post(
            "/api/admin/users/dev@team.com/roles",
            admin,
            json!({"role": "root"}),
        )
        .await;
    assert_error(&bad, 400, "bad_request");
    let nobody = server
        .post(
            "/api/admin/users/nobody@team.com/roles",
            admin,
            json!({"role": "viewer"}),
        )
        .await;
    assert_error(&nobody, 404, "not_found");
    let (status, view) = server
        .delete("/api/admin/users/dev@team.com/roles/developer", admin)
        .await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(strings(&view["roles"]), ["viewer"]);
    let perms: BTreeSet<String> = strings(&view["permissions"]).into_iter().collect();
    assert_eq!(perms, role_permissions(Role::Viewer));

    let path = "/api/admin/users/dev@team.com/permissions";
    for body in [
        json!({"grant": "task:fly"}),
        json!({"revoke": "everything"}),
        json!({"grant": "task:submit", "revoke": "task:view"}),
        json!({}),
    ] {
        let got = server.post(path, admin, body.clone()).await;
        assert_error(&got, 400, "bad_request");
    }
    let (status, view) = server
        .post(path, admin, json!({"grant": "task:submit"}))
        .await;
    assert_eq!(status, 200, "{view}");
    assert!(strings(&view["permissions"]).contains(&"task:submit".to_owned()));
    let (status, view) = server
        .post(path, admin, json!({"revoke": "task:view"}))
        .await;
    assert_eq!(status, 200, "{view}");
    assert!(!strings(&view["permissions"]).contains(&"task:view".to_owned()));

    let (status, issued) = server
        .post("/api/admin/users/dev@team.com/tokens", admin, json!({}))
        .await;
    assert_eq!(status, 201, "{issued}");
    let second = issued["token"].as_str().unwrap().to_owned();
    assert_ne!(second, token);
    for t in [&token, &second] {
        assert_eq!(server.get("/api/me", t).await.0, 200);
    }
    let (mut ws, _) = server.ws(&token, json!({})).await;

    let (status, revoked) = server
        .delete("/api/admin/users/dev@team.com/tokens", admin)
        .await;
    assert_eq!(status, 200, "{revoked}");
    for t in [&token, &second] {
        let got = server.get("/api/me", t).await;
        assert_error(&got, 401, "unauthorized");
    }
    assert_eq!(ws.closed().await, Closed::Code(4401));
    // A fresh token works again.
    let (_, issued) = server
        .post("/api/admin/users/dev@team.com/tokens", admin, json!({}))
        .await;
    let third = issued["token"].as_str().unwrap();
    assert_eq!(server.get("/api/me", third).await.0, 200);
    server.stop().await;
}

// --------------------------------------------------------------- sessions

/// A session can be created from a JSON body, from the query string, or
/// from nothing at all, and has every contract field.
#[tokio::test]
async fn sessions_are_created_from_body_query_or_nothing() {
    let server = TestServer::spawn().await;
    let token = server.user("dev@team.com", &["developer"]).await;

    let (status, s) = server
        .post(
            "/api/runtime/sessions",
            &token,
            json!({"user_id": "dev@team.com", "device_id": "laptop-1"}),
        )
        .await;
    assert_eq!(status, 200, "{s}");
    uuid(&s["session_id"]);
    assert_eq!(s["user_id"], "dev@team.com");
    assert_eq!(s["device_id"], "laptop-1");
    assert!(utc(&s["last_activity"]) >= utc(&s["created_at"]));
    let perms: BTreeSet<String> = strings(&s["permissions"]).into_iter().collect();
    assert_eq!(perms, role_permissions(Role::Developer));
    assert_eq!(s["state"], "active");

    let (status, q) = send(server.req(
        Method::POST,
        "/api/runtime/sessions?device_id=phone-1&user_id=dev@team.com",
        Some(&token),
    ))
    .await;
    assert_eq!(status, 200, "{q}");
    assert_eq!(q["device_id"], "phone-1");
    assert_eq!(q["user_id"], "dev@team.com");

    let (status, empty) =
        send(server.req(Method::POST, "/api/runtime/sessions", Some(&token))).await;
    assert_eq!(status, 200, "{empty}");
    assert_eq!(empty["device_id"], Value::Null);
    assert_eq!(empty["state"], "active");

    let (status, braces) = server
        .post("/api/runtime/sessions", &token, json!({}))
        .await;
    assert_eq!(status, 200, "{braces}");

    let ids: BTreeSet<_> = [&s, &q, &empty, &braces]
        .iter()
        .map(|x| x["session_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 4, "every create opens a new session");
    server.stop().await;
}

/// A `user_id` other than the caller's own, in the body or the query, is
/// 403, even for an admin.
#[tokio::test]
async fn a_session_for_someone_else_is_forbidden() {
    let server = TestServer::spawn().await;
    let token = server.user("dev@team.com", &["developer"]).await;
    server.user("other@team.com", &["developer"]).await;
    let got = server
        .post(
            "/api/runtime/sessions",
            &token,
            json!({"user_id": "other@team.com"}),
        )
        .await;
    assert_error(&got, 403, "forbidden");
    let got = send(server.req(
        Method::POST,
        "/api/runtime/sessions?user_id=other@team.com",
        Some(&token),
    ))
    .await;
    assert_error(&got, 403, "forbidden");
    let got = server
        .post(
            "/api/runtime/sessions",
            &server.admin,
            json!({"user_id": "other@team.com"}),
        )
        .await;
    assert_error(&got, 403, "forbidden");
    let (_, list) = server.get("/api/runtime/sessions", &server.admin).await;
    assert!(
        field(&list, "user_id")
            .iter()
            .all(|u| u != "other@team.com"),
        "{list}"
    );
    server.stop().await;
}

/// List, get and end: an ended session says `"state":"ended"`, takes no
/// new task (404), and unknown or malformed ids are 404 and 400.
#[tokio::test]
async fn sessions_list_get_and_end() {
    let server = TestServer::spawn().await;
    let token = server.user("dev@team.com", &["developer"]).await;
    let a = new_session(&server, &token).await;
    let b = new_session(&server, &token).await;

    let (status, list) = server.get("/api/runtime/sessions", &token).await;
    assert_eq!(status, 200, "{list}");
    let listed: Vec<Value> = field(&list, "session_id");
    assert!(listed.contains(&json!(a)) && listed.contains(&json!(b)));
    assert!(field(&list, "user_id").iter().all(|u| u == "dev@team.com"));

    let (status, got) = server
        .get(&format!("/api/runtime/sessions/{a}"), &token)
        .await;
    assert_eq!(status, 200, "{got}");
    assert_eq!(got["session_id"], a.as_str());
    assert_eq!(got["state"], "active");

    let (status, ended) = server
        .delete(&format!("/api/runtime/sessions/{a}"), &token)
        .await;
    assert_eq!(status, 200, "{ended}");
    assert_eq!(ended["session_id"], a.as_str());
    assert_eq!(ended["state"], "ended");
    let (_, got) = server
        .get(&format!("/api/runtime/sessions/{a}"), &token)
        .await;
    assert_eq!(got["state"], "ended");
    let (_, other) = server
        .get(&format!("/api/runtime/sessions/{b}"), &token)
        .await;
    assert_eq!(other["state"], "active", "only the one session ended");

    let into_ended = server
        .post(
            "/api/runtime/tasks/submit",
            &token,
            json!({"agent_type": "echo", "prompt": "late", "session_id": a}),
        )
        .await;
    assert_error(&into_ended, 404, "not_found");

    let unknown = uuid::Uuid::new_v4();
    for (method, path) in [
        (Method::GET, format!("/api/runtime/sessions/{unknown}")),
        (Method::DELETE, format!("/api/runtime/sessions/{unknown}")),
        (
            Method::GET,
            format!("/api/runtime/sessions/{unknown}/events"),
        ),
    ] {
        let got = send(server.req(method.clone(), &path, Some(&token))).await;
        assert_error(&got, 404, "not_found");
    }
    let into_unknown = server
        .post(
            "/api/runtime/tasks/submit",
            &token,
            json!({"agent_type": "echo", "prompt": "x", "session_id": unknown}),
        )
        .await;
    assert_error(&into_unknown, 404, "not_found");
    for (method, path) in [
        (Method::GET, "/api/runtime/sessions/not-a-uuid"),
        (Method::DELETE, "/api/runtime/sessions/not-a-uuid"),
        (Method::GET, "/api/runtime/sessions/not-a-uuid/events"),
        (Method::GET, "/api/audit/sessions/not-a-uuid/activity"),
    ] {
        let got = send(server.req(method.clone(), path, Some(&token))).await;
        assert_error(&got, 400, "bad_request");
    }
    server.stop().await;
}

/// Ending a session cancels its unfinished tasks.
#[tokio::test]
async fn ending_a_session_cancels_its_tasks() {
    let server = TestServer::spawn().await;
    let token = server.user("dev@team.com", &["developer"]).await;
    let s = new_session(&server, &token).await;
    let task = server
        .submit(
            &token,
            json!({"agent_type": "echo", "prompt": "wait", "session_id": s, "params": {"wait": true}}),
        )
        .await;
    let id = task["task_id"].as_str().unwrap();
    server.wait_state(&token, id, "waiting").await;
    let (status, _) = server
        .delete(&format!("/api/runtime/sessions/{s}"), &token)
        .await;
    assert_eq!(status, 200);
    let done = server.wait_terminal(&token, id).await;
    assert_eq!(done["state"], "cancelled");
    server.stop().await;
}

// ------------------------------------------------------------------ tasks

/// The submit response has every contract field, pending and unfinished;
/// without a session_id tasks go to one default session.
#[tokio::test]
async fn submit_response_has_every_contract_field() {
    let server = TestServer::spawn().await;
    let token = server.user("dev@team.com", &["developer"]).await;
    let s = new_session(&server, &token).await;
    let t = server
        .submit(
            &token,
            json!({"agent_type": "echo", "prompt": "fields", "session_id": s, "context": {"repo": "x"}}),
        )
        .await;
    for key in [
        "task_id",
        "execution_uuid",
        "state",
        "success",
        "result",
        "error",
        "execution_time",
        "metadata",
        "session_id",
        "agent_type",
        "created_at",
    ] {
        assert!(t.get(key).is_some(), "{key} missing from {t}");
    }
    assert_ne!(uuid(&t["task_id"]), uuid(&t["execution_uuid"]));
    assert_eq!(t["state"], "pending");
    assert_eq!(t["success"], false);
    assert_eq!(t["result"], Value::Null);
    assert_eq!(t["error"], Value::Null);
    assert_eq!(t["execution_time"], Value::Null);
    assert!(t["metadata"].is_object());
    assert_eq!(t["session_id"], s.as_str());
    assert_eq!(t["agent_type"], "echo");
    utc(&t["created_at"]);

    let first = server
        .submit(&token, json!({"agent_type": "echo", "prompt": "default"}))
        .await;
    let second = server
        .submit(&token, json!({"agent_type": "echo", "prompt": "default"}))
        .await;
    assert_ne!(first["session_id"], s.as_str());
    assert_eq!(first["session_id"], second["session_id"]);
    let (_, list) = server.get("/api/runtime/sessions", &token).await;
    assert!(field(&list, "session_id").contains(&first["session_id"]));
    server.stop().await;
}

/// A completed task's state has every field (success, result, execution
/// time) and its detail lists its events in order, state changes and
/// output chunks in the original's shape.
#[tokio::test]
async fn state_and_detail_of_a_completed_task() {
    let server = TestServer::spawn().await;
    let token = server.user("dev@team.com", &["developer"]).await;
    let prompt = "abcdefghijklmnopqrstuvwxyz";
    let done = run_task(
        &server,
        &token,
        json!({"agent_type": "echo", "prompt": prompt, "params": {"chunk_size": 5}}),
    )
    .await;
    let id = done["task_id"].as_str().unwrap().to_owned();
    for key in [
        "task_id",
        "execution_uuid",
        "state",
        "success",
        "result",
        "error",
        "execution_time",
        "metadata",
        "updated_at",
    ] {
        assert!(done.get(key).is_some(), "{key} missing from {done}");
    }
    assert_eq!(done["state"], "completed");
    assert_eq!(done["success"], true);
    assert_eq!(done["result"], prompt);
    assert_eq!(
        done["prompt_preview"], prompt,
        "the state says what was asked"
    );
    assert_eq!(done["error"], Value::Null);
    assert!(done["execution_time"].as_f64().unwrap() >= 0.0);
    utc(&done["updated_at"]);

    let (status, detail) = server
        .get(&format!("/api/runtime/tasks/{id}"), &token)
        .await;
    assert_eq!(status, 200, "{detail}");
    assert_eq!(detail["task_id"], id.as_str());
    assert_eq!(detail["state"], "completed");
    assert_eq!(detail["result"], prompt);
    let events = detail["events"].as_array().unwrap();
    let mut seqs = Vec::new();
    let mut states = Vec::new();
    let mut output = String::new();
    for e in events {
        for key in [
            "seq",
            "event_type",
            "state",
            "message",
            "chunk",
            "timestamp",
        ] {
            assert!(e.get(key).is_some(), "{key} missing from {e}");
        }
        seqs.push(e["seq"].as_i64().unwrap());
        utc(&e["timestamp"]);
        match e["event_type"].as_str().unwrap() {
            "state_change" => {
                assert_eq!(e["chunk"], Value::Null, "{e}");
                assert!(e["message"].is_string(), "{e}");
                states.push(e["state"].as_str().unwrap().to_owned());
            }
            "output" => {
                assert_eq!(e["state"], Value::Null, "{e}");
                let chunk = e["chunk"].as_str().unwrap();
                assert!(chunk.chars().count() <= 5, "{e}");
                output.push_str(chunk);
            }
            other => panic!("unknown event_type {other}"),
        }
    }
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    assert_eq!(states, ["pending", "planning", "running", "completed"]);
    assert_eq!(output, prompt);

    let unknown = uuid::Uuid::new_v4();
    for path in [
        format!("/api/runtime/tasks/{unknown}"),
        format!("/api/runtime/tasks/{unknown}/state"),
    ] {
        assert_error(&server.get(&path, &token).await, 404, "not_found");
    }
    for path in ["/api/runtime/tasks/nope", "/api/runtime/tasks/nope/state"] {
        assert_error(&server.get(path, &token).await, 400, "bad_request");
    }
    server.stop().await;
}

/// The task list is newest first, filters by session, state and agent,
/// pages with `limit` and the `after` cursor, and refuses bad queries.
#[tokio::test]
async fn task_list_filters_and_pages_newest_first() {
    let file = FileConfig::parse(
        "[[agents]]\nname = \"echo2\"\nkind = \"echo\"\ndescription = \"a second echo\"\n",
    )
    .unwrap();
    let server = TestServer::spawn_with(file).await;
    let token = server.user("dev@team.com", &["developer"]).await;
    let s1 = new_session(&server, &token).await;
    let s2 = new_session(&server, &token).await;
    let mut made = Vec::new();
    for (agent, session, fail) in [
        ("echo", &s1, false),
        ("echo2", &s1, false),
        ("echo", &s2, true),
        ("echo", &s2, false),
        ("echo2", &s2, false),
    ] {
        let done = run_task(
            &server,
            &token,
            json!({"agent_type": agent, "prompt": "listed", "session_id": session, "params": {"fail": fail}}),
        )
        .await;
        made.push(done["task_id"].as_str().unwrap().to_owned());
    }
    let [a1, a2, a3, a4, a5]: [&str; 5] = made
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .try_into()
        .unwrap();
    let list = |q: String| {
        let server = &server;
        let token = &token;
        async move {
            let (status, body) = server.get(&format!("/api/runtime/tasks{q}"), token).await;
            assert_eq!(status, 200, "{q}: {body}");
            body
        }
    };

    let all = list(String::new()).await;
    assert_eq!(ids(&all), [a5, a4, a3, a2, a1]);
    let times: Vec<_> = field(&all, "created_at").iter().map(utc).collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "{times:?}");
    assert!(field(&all, "updated_at").iter().all(|t| !t.is_null()));

    assert_eq!(ids(&list(format!("?session_id={s1}")).await), [a2, a1]);
    assert_eq!(ids(&list("?state=failed".into()).await), [a3]);
    assert_eq!(
        ids(&list("?state=completed".into()).await),
        [a5, a4, a2, a1]
    );
    assert!(ids(&list("?state=running".into()).await).is_empty());
    assert_eq!(ids(&list("?agent_type=echo2".into()).await), [a5, a2]);
    assert_eq!(
        ids(&list(format!("?session_id={s2}&agent_type=echo")).await),
        [a4, a3]
    );
    assert_eq!(ids(&list("?limit=2".into()).await), [a5, a4]);
    assert_eq!(ids(&list(format!("?limit=2&after={a4}")).await), [a3, a2]);
    assert_eq!(ids(&list(format!("?limit=2&after={a2}")).await), [a1]);
    assert!(ids(&list(format!("?after={a1}")).await).is_empty());
    assert_eq!(
        ids(&list(format!("?session_id={s2}&limit=1&after={a5}")).await),
        [a4]
    );

    for q in [
        "?limit=0",
        "?limit=5000",
        "?limit=-1",
        "?limit=many",
        "?state=bogus",
        "?state=PENDING!",
        "?session_id=not-a-uuid",
        "?after=not-a-uuid",
    ] {
        let got = server.get(&format!("/api/runtime/tasks{q}"), &token).await;
        assert_error(&got, 400, "bad_request");
    }
    server.stop().await;
}

/// Cancel answers `{"success":true,"task_id","state":"cancelled"}`; the
/// task ends cancelled; cancelling again, or a finished task, is 409
/// `invalid_transition`.
#[tokio::test]
async fn cancel_then_cancel_again() {
    let server = TestServer::spawn().await;
    let token = server.user("dev@team.com", &["developer"]).await;
    let id = waiting_task(&server, &token).await;
    let (status, reply) = server.cancel(&token, &id).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["success"], true);
    assert_eq!(reply["task_id"], id.as_str());
    assert_eq!(reply["state"], "cancelled");
    let (_, state) = server
        .get(&format!("/api/runtime/tasks/{id}/state"), &token)
        .await;
    assert_eq!(state["state"], "cancelled");
    assert_eq!(state["success"], false);
    assert!(state["execution_time"].is_number(), "{state}");

    let again = send(server.req(
        Method::POST,
        &format!("/api/runtime/tasks/{id}/cancel"),
        Some(&token),
    ))
    .await;
    assert_error(&again, 409, "invalid_transition");
    let done = run_task(
        &server,
        &token,
        json!({"agent_type": "echo", "prompt": "done"}),
    )
    .await;
    let finished = server
        .post(
            &format!(
                "/api/runtime/tasks/{}/cancel",
                done["task_id"].as_str().unwrap()
            ),
            &token,
            json!({}),
        )
        .await;
    assert_error(&finished, 409, "invalid_transition");
    let unknown = server
        .post(
            &format!("/api/runtime/tasks/{}/cancel", uuid::Uuid::new_v4()),
            &token,
            json!({}),
        )
        .await;
    assert_error(&unknown, 404, "not_found");
    server.stop().await;
}

/// Echo's params: `fail` ends failed with an error; `wait` waits, approve
/// completes it with the result, deny fails it; respond only while waiting
/// (409 otherwise).
#[tokio::test]
async fn echo_fail_wait_approve_and_deny() {
    let server = TestServer::spawn().await;
    let token = server.user("dev@team.com", &["developer"]).await;

    let failed = run_task(
        &server,
        &token,
        json!({"agent_type": "echo", "prompt": "boom", "params": {"fail": true}}),
    )
    .await;
    assert_eq!(failed["state"], "failed");
    assert_eq!(failed["success"], false);
    assert!(
        failed["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{failed}"
    );
    assert!(failed["execution_time"].is_number());
    let late = server
        .post(
            &format!(
                "/api/runtime/tasks/{}/respond",
                failed["task_id"].as_str().unwrap()
            ),
            &token,
            json!({"approve": true}),
        )
        .await;
    assert_error(&late, 409, "invalid_transition");

    let id = waiting_task(&server, &token).await;
    let (status, reply) = server
        .post(
            &format!("/api/runtime/tasks/{id}/respond"),
            &token,
            json!({"approve": true, "input": "go ahead"}),
        )
        .await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["task_id"], id.as_str());
    assert_ne!(reply["state"], "waiting");
    let twice = server
        .post(
            &format!("/api/runtime/tasks/{id}/respond"),
            &token,
            json!({"approve": true}),
        )
        .await;
    assert_error(&twice, 409, "invalid_transition");
    let done = server.wait_terminal(&token, &id).await;
    assert_eq!(done["state"], "completed");
    assert_eq!(done["result"], "hold on");
    assert_eq!(done["success"], true);

    let id = waiting_task(&server, &token).await;
    let (status, reply) = server
        .post(
            &format!("/api/runtime/tasks/{id}/respond"),
            &token,
            json!({"approve": false}),
        )
        .await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["state"], "failed");
    let done = server.wait_terminal(&token, &id).await;
    assert_eq!(done["state"], "failed");
    assert!(done["error"].as_str().is_some_and(|e| !e.is_empty()));
    assert_eq!(done["result"], Value::Null);

    let no_approve = server
        .post(
            &format!("/api/runtime/tasks/{id}/respond"),
            &token,
            json!({"input": "?"}),
        )
        .await;
    assert_error(&no_approve, 400, "bad_request");
    server.stop().await;
}

/// Refused submits: unknown agent 400 `unknown_agent`, bad params 400,
/// missing fields 400; none of them leaves a task behind.
#[tokio::test]
async fn bad_submits_are_refused_and_leave_nothing() {
    let server = TestServer::spawn().await;
    let token = server.user("dev@team.com", &["developer"]).await;
    let got = server
        .post(
            "/api/runtime/tasks/submit",
            &token,
            json!({"agent_type": "nope", "prompt": "x"}),
        )
        .await;
    assert_error(&got, 400, "unknown_agent");
    for body in [
        json!({"agent_type": "echo", "prompt": "x", "params": {"chunk_size": 0}}),
        json!({"agent_type": "echo", "prompt": "x", "params": {"bogus": 1}}),
        json!({"agent_type": "echo", "prompt": "x", "params": {"delay_ms": -1}}),
        json!({"agent_type": "echo", "prompt": "x", "params": "fast"}),
        json!({"agent_type": "echo", "prompt": "x", "params": [1]}),
        json!({"agent_type": "echo", "prompt": "x", "idempotency_key": ""}),
        json!({"agent_type": "echo"}),
        json!({"prompt": "x"}),
        json!({}),
    ] {
        let got = server
            .post("/api/runtime/tasks/submit", &token, body.clone())
            .await;
        assert_error(&got, 400, "bad_request");
    }
    let (_, list) = server.get("/api/runtime/tasks", &token).await;
    assert_eq!(list, json!([]));
    server.stop().await;
}

/// A prompt over 256 KiB is 413 `payload_too_large` (one of exactly
/// 256 KiB is fine), and so is any body over 1 MiB, on every body route.
#[tokio::test]
async fn oversize_prompts_and_bodies_are_413() {
    let server = TestServer::spawn().await;
    let token = server.user("dev@team.com", &["developer"]).await;
    let limit = 256 * 1024;
    let ok = server
        .post(
            "/api/runtime/tasks/submit",
            &token,
            json!({"agent_type": "echo", "prompt": "a".repeat(limit), "params": {"chunk_size": limit}}),
        )
        .await;
    assert_eq!(ok.0, 200, "{}", ok.1);
    let got = server
        .post(
            "/api/runtime/tasks/submit",
            &token,
            json!({"agent_type": "echo", "prompt": "a".repeat(limit + 1)}),
        )
        .await;
    assert_error(&got, 413, "payload_too_large");

    let pad = "p".repeat((1 << 20) + 1024);
    for path in [
        "/api/runtime/tasks/submit",
        "/api/runtime/sessions",
        "/api/admin/users",
    ] {
        let body =
            json!({"agent_type": "echo", "prompt": "x", "user_id": "big", "context": {"pad": pad}});
        let got = server.post(path, &server.admin, body).await;
        assert_error(&got, 413, "payload_too_large");
    }
    let (_, list) = server.get("/api/runtime/tasks", &token).await;
    assert_eq!(ids(&list).len(), 1, "only the accepted prompt made a task");
    server.stop().await;
}

/// Malformed JSON on every route that takes a body is 400 `bad_request`
/// with the error body, never a 500; so are fields of the wrong type.
#[tokio::test]
async fn malformed_json_and_wrong_types_are_bad_requests() {
    let server = TestServer::spawn().await;
    let admin = &server.admin;
    server.user("dev@team.com", &["developer"]).await;
    let id = waiting_task(&server, admin).await;
    let routes = [
        "/api/admin/users".to_owned(),
        "/api/admin/users/dev@team.com/roles".to_owned(),
        "/api/admin/users/dev@team.com/permissions".to_owned(),
        "/api/runtime/sessions".to_owned(),
        "/api/runtime/tasks/submit".to_owned(),
        format!("/api/runtime/tasks/{id}/respond"),
    ];
    for path in &routes {
        for body in ["{not json", "{\"a\":", "[1,2", "\u{1}", "{\"a\":1}}"] {
            let got = raw(&server, Method::POST, path, admin, body).await;
            assert_error(&got, 400, "bad_request");
        }
    }
    // Routes that take no body do not break on one.
    for path in [
        "/api/admin/users/dev@team.com/tokens".to_owned(),
        format!("/api/runtime/tasks/{}/cancel", uuid::Uuid::new_v4()),
    ] {
        let (status, body) = raw(&server, Method::POST, &path, admin, "{not json").await;
        assert!(status < 500, "{path}: {status} {body}");
    }

    let wrong: [(&str, Value); 10] = [
        ("/api/admin/users", json!({"user_id": 5})),
        (
            "/api/admin/users",
            json!({"user_id": "a@b", "roles": "developer"}),
        ),
        ("/api/admin/users/dev@team.com/roles", json!({"role": 1})),
        (
            "/api/admin/users/dev@team.com/permissions",
            json!({"grant": true}),
        ),
        ("/api/runtime/sessions", json!({"device_id": 5})),
        ("/api/runtime/sessions", json!(["device"])),
        (
            "/api/runtime/tasks/submit",
            json!({"agent_type": 1, "prompt": "x"}),
        ),
        (
            "/api/runtime/tasks/submit",
            json!({"agent_type": "echo", "prompt": ["x"]}),
        ),
        (
            "/api/runtime/tasks/submit",
            json!({"agent_type": "echo", "prompt": "x", "session_id": 5}),
        ),
        (
            "/api/runtime/tasks/submit",
            json!({"agent_type": "echo", "prompt": "x", "session_id": "not-a-uuid"}),
        ),
    ];
    for (path, body) in wrong {
        let got = server.post(path, admin, body.clone()).await;
        assert_error(&got, 400, "bad_request");
    }
    let got = server
        .post(
            &format!("/api/runtime/tasks/{id}/respond"),
            admin,
            json!({"approve": "yes"}),
        )
        .await;
    assert_error(&got, 400, "bad_request");
    let (_, state) = server
        .get(&format!("/api/runtime/tasks/{id}/state"), admin)
        .await;
    assert_eq!(state["state"], "waiting", "nothing answered the task");
    server.stop().await;
}

/// The same idempotency key from the same user returns the first task,
/// sequentially, concurrently and over WebSocket, and only one task exists;
/// another user's same key is their own task.
#[tokio::test]
async fn idempotency_key_returns_the_first_task() {
    let server = TestServer::spawn().await;
    let token = server.user("dev@team.com", &["developer"]).await;
    let other = server.user("other@team.com", &["developer"]).await;
    let body = json!({"agent_type": "echo", "prompt": "once", "idempotency_key": "k-1"});
    let first = server.submit(&token, body.clone()).await;
    let second = server
        .submit(
            &token,
            json!({"agent_type": "echo", "prompt": "changed", "idempotency_key": "k-1"}),
        )
        .await;
    assert_eq!(first["task_id"], second["task_id"]);
    assert_eq!(first["execution_uuid"], second["execution_uuid"]);
    let (mut ws, _) = server.ws(&token, json!({})).await;
    let over_ws = ws
        .ok(json!({"op": "task.submit", "agent_type": "echo", "prompt": "once", "idempotency_key": "k-1"}))
        .await;
    assert_eq!(over_ws["task_id"], first["task_id"]);

    let k2 = json!({"agent_type": "echo", "prompt": "race", "idempotency_key": "k-2"});
    let (a, b) = tokio::join!(server.submit(&token, k2.clone()), server.submit(&token, k2));
    assert_eq!(a["task_id"], b["task_id"]);

    let (_, list) = server.get("/api/runtime/tasks", &token).await;
    assert_eq!(ids(&list).len(), 2, "one task per key: {list}");

    let theirs = server.submit(&other, body).await;
    assert_ne!(theirs["task_id"], first["task_id"]);
    server.stop().await;
}

// -------------------------------------------------------------- discovery

/// Agents list `echo`, available, with every contract field; skills are
/// an empty list without a config.
#[tokio::test]
async fn agents_and_skills_are_listed() {
    let server = TestServer::spawn().await;
    let token = server.user("guest@team.com", &["guest"]).await;
    let (status, agents) = server.get("/api/runtime/agents", &token).await;
    assert_eq!(status, 200, "{agents}");
    let echo = agents
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["agent_type"] == "echo")
        .expect("echo is listed");
    assert_eq!(echo["available"], true);
    assert!(echo["name"].is_string() && echo["description"].is_string());
    assert!(echo["capabilities"].is_array());
    assert!(echo["metadata"].is_object());
    let (status, skills) = server.get("/api/runtime/skills", &token).await;
    assert_eq!((status, skills), (200, json!([])));
    server.stop().await;
}

// ---------------------------------------------------------- session events

/// A session's stored events as JSON: event frames as on WebSocket, seq 1..N,
/// with `after_seq` and `limit`.
#[tokio::test]
async fn session_events_as_json_with_after_seq_and_limit() {
    let server = TestServer::spawn().await;
    let token = server.user("dev@team.com", &["developer"]).await;
    let s = new_session(&server, &token).await;
    let done = run_task(
        &server,
        &token,
        json!({"agent_type": "echo", "prompt": "0123456789ab", "session_id": s, "params": {"chunk_size": 4}}),
    )
    .await;
    let path = format!("/api/runtime/sessions/{s}/events");
    let (status, body) = server.get(&path, &token).await;
    assert_eq!(status, 200, "{body}");
    let events = body["events"].as_array().unwrap();
    let n = events.len() as i64;
    assert_eq!(n, 7, "pending, planning, running, 3 chunks, completed");
    assert_eq!(seqs(events), (1..=n).collect::<Vec<_>>());
    for e in events {
        assert_eq!(e["op"], "event");
        assert_eq!(e["stream"], format!("session:{s}"));
        assert_eq!(e["task_id"], done["task_id"]);
        assert!(["task.state", "task.output"].contains(&e["type"].as_str().unwrap()));
        assert!(e["data"].is_object());
        utc(&e["at"]);
    }
    assert_eq!(events[0]["data"]["state"], "pending");
    assert_eq!(events[3]["data"]["chunk"], "0123");
    assert_eq!(events[6]["data"]["state"], "completed");

    let page = |q: &'static str| {
        let server = &server;
        let token = &token;
        let path = &path;
        async move {
            let (status, body) = server.get(&format!("{path}{q}"), token).await;
            assert_eq!(status, 200, "{q}: {body}");
            seqs(body["events"].as_array().unwrap())
        }
    };
    assert_eq!(page("?after_seq=3").await, [4, 5, 6, 7]);
    assert_eq!(page("?limit=2").await, [1, 2]);
    assert_eq!(page("?after_seq=3&limit=2").await, [4, 5]);
    assert!(page("?after_seq=7").await.is_empty());
    for q in ["?limit=0", "?limit=5000", "?after_seq=x"] {
        let got = server.get(&format!("{path}{q}"), &token).await;
        assert_error(&got, 400, "bad_request");
    }
    server.stop().await;
}

/// SSE on the session events path: `id:` is the seq, stored events first,
/// then live ones with no gap; `Last-Event-ID` (or `after_seq`) resumes
/// after that seq; a bad `Last-Event-ID` is 400.
#[tokio::test]
async fn sse_streams_events_and_honours_last_event_id() {
    let server = TestServer::spawn().await;
    let token = server.user("dev@team.com", &["developer"]).await;
    let s = new_session(&server, &token).await;
    run_task(
        &server,
        &token,
        json!({"agent_type": "echo", "prompt": "0123456789ab", "session_id": s, "params": {"chunk_size": 4}}),
    )
    .await;
    let path = format!("/api/runtime/sessions/{s}/events");

    let mut sse = SseReader::open(&server, &token, &path, None).await;
    for want in 1..=7 {
        let (id, data) = sse.next().await;
        assert_eq!(id, want);
        assert_eq!(data["seq"], want);
        assert_eq!(data["stream"], format!("session:{s}"));
    }
    // Live: a new task's events follow without a gap.
    let task = server
        .submit(
            &token,
            json!({"agent_type": "echo", "prompt": "live", "session_id": s}),
        )
        .await;
    let mut want = 8;
    loop {
        let (id, data) = sse.next().await;
        assert_eq!(id, want);
        assert_eq!(data["task_id"], task["task_id"]);
        want += 1;
        if data["data"]["state"] == "completed" {
            break;
        }
    }
    let last = want - 1;
    drop(sse);

    let mut resumed = SseReader::open(&server, &token, &path, Some("3")).await;
    for want in 4..=last {
        assert_eq!(resumed.next().await.0, want);
    }
    let mut by_query = SseReader::open(&server, &token, &format!("{path}?after_seq=6"), None).await;
    assert_eq!(by_query.next().await.0, 7);
    // The header wins over the query.
    let mut both =
        SseReader::open(&server, &token, &format!("{path}?after_seq=1"), Some("5")).await;
    assert_eq!(both.next().await.0, 6);

    let got = send(
        server
            .req(Method::GET, &path, Some(&token))
            .header("accept", "text/event-stream")
            .header("last-event-id", "yesterday"),
    )
    .await;
    assert_error(&got, 400, "bad_request");
    server.stop().await;
}

// ------------------------------------------------------------------ audit

/// Some users, sessions and a task, for the audit tests: (dev token, dev's
/// session, other's session).
async fn audit_world(server: &TestServer) -> (String, String, String) {
    let dev = server.user("dev@audit.test", &["developer"]).await;
    let other = server.user("other@audit.test", &["developer"]).await;
    let s = new_session(server, &dev).await;
    run_task(
        server,
        &dev,
        json!({"agent_type": "echo", "prompt": "audited", "session_id": s}),
    )
    .await;
    let o = new_session(server, &other).await;
    (dev, s, o)
}

/// Every audit record has the contract fields and the list is newest first.
#[track_caller]
fn check_records(list: &Value) -> Vec<i64> {
    let records = list
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {list}"));
    for r in records {
        for key in [
            "event_id",
            "event_type",
            "timestamp",
            "user_id",
            "session_id",
            "resource_type",
            "resource_id",
            "action",
            "status",
            "details",
            "seq",
            "hash",
            "prev_hash",
        ] {
            assert!(r.get(key).is_some(), "{key} missing from {r}");
        }
        assert!(["success", "denied", "failure"].contains(&r["status"].as_str().unwrap()));
        assert!(r["details"].is_object());
        utc(&r["timestamp"]);
    }
    let seqs = seqs(records);
    assert!(
        seqs.windows(2).all(|w| w[0] > w[1]),
        "newest first: {seqs:?}"
    );
    seqs
}

/// `/api/audit/events` filters by event type, user, session, resource
/// type and time, pages newest first with `limit` and `after`, and needs
/// `admin:system`.
#[tokio::test]
async fn audit_events_filter_and_page() {
    let server = TestServer::spawn().await;
    let (dev, s, _) = audit_world(&server).await;
    let admin = &server.admin;
    let query = |q: Vec<(&'static str, String)>| {
        let server = &server;
        async move {
            let (status, body) = send(
                server
                    .req(Method::GET, "/api/audit/events", Some(&server.admin))
                    .query(&q),
            )
            .await;
            assert_eq!(status, 200, "{q:?}: {body}");
            check_records(&body);
            body
        }
    };

    let all = query(vec![("limit", "1000".into())]).await;
    let types: BTreeSet<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["event_type"].as_str().unwrap())
        .collect();
    for t in [
        "user.created",
        "token.issued",
        "role.assigned",
        "session.created",
        "task.submitted",
        "task.started",
        "task.completed",
    ] {
        assert!(types.contains(t), "no {t} in {types:?}");
    }

    let created = query(vec![("event_type", "session.created".into())]).await;
    assert!(
        field(&created, "event_type")
            .iter()
            .all(|t| t == "session.created")
    );
    assert!(field(&created, "session_id").contains(&json!(s)));

    let by_user = query(vec![("user_id", "dev@audit.test".into())]).await;
    assert!(!by_user.as_array().unwrap().is_empty());
    assert!(
        field(&by_user, "user_id")
            .iter()
            .all(|u| u == "dev@audit.test")
    );

    let by_session = query(vec![("session_id", s.clone())]).await;
    assert!(
        field(&by_session, "session_id")
            .iter()
            .all(|x| x == s.as_str())
    );
    let types = field(&by_session, "event_type");
    assert!(types.contains(&json!("session.created")) && types.contains(&json!("task.submitted")));

    let tasks = query(vec![("resource_type", "task".into())]).await;
    assert!(!tasks.as_array().unwrap().is_empty());
    assert!(field(&tasks, "resource_type").iter().all(|t| t == "task"));

    // Time: records at or after a pivot, and strictly before it.
    let records = all.as_array().unwrap();
    let pivot = &records[records.len() / 2];
    let t = utc(&pivot["timestamp"]);
    let ts = pivot["timestamp"].as_str().unwrap().to_owned();
    let since = query(vec![("since", ts.clone()), ("limit", "1000".into())]).await;
    assert!(field(&since, "timestamp").iter().all(|x| utc(x) >= t));
    assert!(field(&since, "event_id").contains(&pivot["event_id"]));
    let until = query(vec![("until", ts.clone()), ("limit", "1000".into())]).await;
    assert!(field(&until, "timestamp").iter().all(|x| utc(x) < t));
    assert!(!field(&until, "event_id").contains(&pivot["event_id"]));
    assert_eq!(
        since.as_array().unwrap().len() + until.as_array().unwrap().len(),
        records.len(),
        "since and until split the log"
    );

    // Pages: limit, then `after` the last seq of a page.
    let six = check_records(&query(vec![("limit", "6".into())]).await);
    let page1 = check_records(&query(vec![("limit", "3".into())]).await);
    let page2 =
        check_records(&query(vec![("limit", "3".into()), ("after", page1[2].to_string())]).await);
    assert_eq!([page1, page2].concat(), six);
    let oldest = *six.last().unwrap();
    let before = check_records(&query(vec![("after", oldest.to_string())]).await);
    assert!(before.iter().all(|&x| x < oldest));

    for q in [
        "limit=0",
        "limit=5000",
        "since=yesterday",
        "session_id=nope",
    ] {
        let got = server.get(&format!("/api/audit/events?{q}"), admin).await;
        assert_error(&got, 400, "bad_request");
    }
    let got = server.get("/api/audit/events", &dev).await;
    assert_error(&got, 403, "forbidden");
    server.stop().await;
}

/// A user's activity: their own, or anyone's for a user admin; another
/// user's is 403 for a developer.
#[tokio::test]
async fn user_activity_is_own_or_for_user_admins() {
    let server = TestServer::spawn().await;
    let (dev, _, _) = audit_world(&server).await;
    let (status, own) = server
        .get("/api/audit/users/dev@audit.test/activity", &dev)
        .await;
    assert_eq!(status, 200, "{own}");
    check_records(&own);
    assert!(!own.as_array().unwrap().is_empty());
    assert!(field(&own, "user_id").iter().all(|u| u == "dev@audit.test"));
    let (status, one) = server
        .get("/api/audit/users/dev@audit.test/activity?limit=1", &dev)
        .await;
    assert_eq!(status, 200);
    assert_eq!(one.as_array().unwrap().len(), 1);
    assert_eq!(one[0], own[0]);

    let theirs = server
        .get("/api/audit/users/other@audit.test/activity", &dev)
        .await;
    assert_error(&theirs, 403, "forbidden");
    let (status, by_admin) = server
        .get("/api/audit/users/other@audit.test/activity", &server.admin)
        .await;
    assert_eq!(status, 200);
    assert!(
        field(&by_admin, "user_id")
            .iter()
            .all(|u| u == "other@audit.test")
    );
    let got = server
        .get("/api/audit/users/dev@audit.test/activity?limit=0", &dev)
        .await;
    assert_error(&got, 400, "bad_request");
    server.stop().await;
}

/// A session's activity: one's own session, or any with `admin:system`;
/// another user's session is 404, as if it did not exist.
#[tokio::test]
async fn session_activity_is_own_or_for_admins() {
    let server = TestServer::spawn().await;
    let (dev, s, o) = audit_world(&server).await;
    let (status, own) = server
        .get(&format!("/api/audit/sessions/{s}/activity"), &dev)
        .await;
    assert_eq!(status, 200, "{own}");
    check_records(&own);
    assert!(field(&own, "session_id").iter().all(|x| x == s.as_str()));
    assert!(field(&own, "event_type").contains(&json!("session.created")));

    let theirs = server
        .get(&format!("/api/audit/sessions/{o}/activity"), &dev)
        .await;
    assert_error(&theirs, 404, "not_found");
    let unknown = server
        .get(
            &format!("/api/audit/sessions/{}/activity", uuid::Uuid::new_v4()),
            &dev,
        )
        .await;
    assert_error(&unknown, 404, "not_found");
    let (status, by_admin) = server
        .get(&format!("/api/audit/sessions/{o}/activity"), &server.admin)
        .await;
    assert_eq!(status, 200);
    assert!(field(&by_admin, "event_type").contains(&json!("session.created")));
    server.stop().await;
}

/// `/api/audit/verify` on an untouched log: ok, with records checked and
/// a head hash; it needs `admin:system`.
#[tokio::test]
async fn audit_verify_is_ok() {
    let server = TestServer::spawn().await;
    let (dev, _, _) = audit_world(&server).await;
    let (status, v) = server.get("/api/audit/verify", &server.admin).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["ok"], true, "{v}");
    assert!(v["checked"].as_i64().unwrap() > 0, "{v}");
    assert!(v["head"].as_str().is_some_and(|h| !h.is_empty()), "{v}");
    assert_eq!(v["first_bad_event_id"], Value::Null);
    let got = server.get("/api/audit/verify", &dev).await;
    assert_error(&got, 403, "forbidden");
    server.stop().await;
}

/// Every event type of contract section 6 that a REST route can cause is
/// recorded, with the fitting status: success, `denied` for refusals,
/// `failure` for failed tasks and bad tokens.
#[tokio::test]
async fn every_contract_event_type_is_recorded() {
    let server = TestServer::spawn().await;
    let admin = &server.admin;
    let (dev, s, _) = audit_world(&server).await;
    run_task(
        &server,
        &dev,
        json!({"agent_type": "echo", "prompt": "x", "params": {"fail": true}}),
    )
    .await;
    let id = waiting_task(&server, &dev).await;
    let (status, _) = server.cancel(&dev, &id).await;
    assert_eq!(status, 200);
    let (status, _) = server
        .delete(&format!("/api/runtime/sessions/{s}"), &dev)
        .await;
    assert_eq!(status, 200);
    let path = "/api/admin/users/dev@audit.test";
    for (method, p, body) in [
        (
            Method::POST,
            format!("{path}/permissions"),
            json!({"grant": "admin:users"}),
        ),
        (
            Method::POST,
            format!("{path}/permissions"),
            json!({"revoke": "admin:users"}),
        ),
        (
            Method::POST,
            format!("{path}/roles"),
            json!({"role": "viewer"}),
        ),
        (Method::DELETE, format!("{path}/roles/viewer"), json!({})),
        (Method::POST, format!("{path}/tokens"), json!({})),
    ] {
        let (status, body) = send(server.req(method, &p, Some(admin)).json(&body)).await;
        assert!((200..300).contains(&status), "{p}: {body}");
    }
    assert_eq!(server.get("/api/audit/events", &dev).await.0, 403);
    assert_eq!(server.get("/api/me", "sb_wrong").await.0, 401);
    assert_eq!(server.delete(&format!("{path}/tokens"), admin).await.0, 200);

    let (_, all) = server.get("/api/audit/events?limit=1000", admin).await;
    check_records(&all);
    let status_of = |t: &str| -> Option<String> {
        all.as_array()
            .unwrap()
            .iter()
            .find(|r| r["event_type"] == t)
            .map(|r| r["status"].as_str().unwrap().to_owned())
    };
    for t in [
        "session.created",
        "session.deleted",
        "task.submitted",
        "task.started",
        "task.completed",
        "task.cancelled",
        "permission.granted",
        "permission.revoked",
        "user.created",
        "role.assigned",
        "role.revoked",
        "token.issued",
        "token.revoked",
    ] {
        assert_eq!(status_of(t).as_deref(), Some("success"), "{t}");
    }
    assert_eq!(status_of("task.failed").as_deref(), Some("failure"));
    assert_eq!(status_of("permission.denied").as_deref(), Some("denied"));
    assert_eq!(status_of("auth.failed").as_deref(), Some("failure"));
    server.stop().await;
}
