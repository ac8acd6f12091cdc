//! The published API description: `protocol/openapi.json` and
//! `protocol/schema/*.json` are generated from the code and must match it,
//! and real responses and frames must validate against them.
//!
//! Refresh the checked-in copies with `UPDATE_SCHEMAS=1 cargo test --test schemas`.

mod common;

use std::path::PathBuf;

use common::{TestServer, send};
use reqwest::Method;
use serde_json::{Value, json};

fn repo_file(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// Compare (or with `UPDATE_SCHEMAS=1`, write) one generated file.
fn check_or_update(rel: &str, generated: &str) -> Option<String> {
    let path = repo_file(rel);
    if std::env::var_os("UPDATE_SCHEMAS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, generated).unwrap();
        return None;
    }
    match std::fs::read_to_string(&path) {
        Ok(text) if text == generated => None,
        Ok(_) => Some(format!("{rel} differs from what the code generates")),
        Err(_) => Some(format!("{rel} is missing")),
    }
}

fn pretty(v: &Value) -> String {
    let mut s = serde_json::to_string_pretty(v).unwrap();
    s.push('\n');
    s
}

/// The checked-in OpenAPI document and frame schemas are what the code
/// generates.
#[test]
fn checked_in_copies_match_the_code() {
    let mut stale = Vec::new();
    stale.extend(check_or_update(
        "protocol/openapi.json",
        &switchboard::http::openapi::document(),
    ));
    let frames = switchboard::protocol::ws::schema::all()
        .into_iter()
        .chain(switchboard::protocol::link::schema::all());
    for (name, schema) in frames {
        stale.extend(check_or_update(
            &format!("protocol/schema/{name}"),
            &pretty(&schema),
        ));
    }
    assert!(
        stale.is_empty(),
        "{}\nrun `UPDATE_SCHEMAS=1 cargo test --test schemas` to refresh them",
        stale.join("\n")
    );
}

/// The document is OpenAPI 3.1, documents the routes of every resource,
/// and names each operation once (generated clients name methods by it).
#[test]
fn document_is_openapi_3_1_and_complete() {
    let doc: Value = serde_json::from_str(&switchboard::http::openapi::document()).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    for path in [
        "/api/openapi.json",
        "/api/me",
        "/api/presence",
        "/api/devices",
        "/api/devices/challenge",
        "/api/devices/{device_id}/approve",
        "/api/devices/{device_id}/revoke",
        "/api/projects",
        "/api/projects/{id}",
        "/api/tasks",
        "/api/tasks/{id}",
        "/api/tasks/execute",
        "/api/agents/available",
        "/api/agents/types",
        "/api/runtime/tasks/submit",
        "/api/audit/verify",
        "/api/admin/users",
        "/api/admin/storage",
        "/healthz",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} is not documented");
    }
    let mut ids = std::collections::BTreeSet::new();
    for (method, path, op) in operations(&doc) {
        let id = op["operationId"].as_str().unwrap_or_default();
        assert!(
            ids.insert(id.to_owned()),
            "{method} {path}: operationId `{id}` is taken"
        );
    }
}

/// Every operation of a document: (method, path, operation).
fn operations(doc: &Value) -> Vec<(String, String, Value)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            out.push((method.clone(), path.clone(), op.clone()));
        }
    }
    out
}

/// Every documented operation is served, with the authentication the
/// document says: as the admin, with no body and ids that name nothing,
/// each answers a documented status and never the unknown-route `404` or
/// the `405` of the `/api` fallbacks; without a token, a public one answers
/// a documented status and any other a documented `401`.
#[tokio::test]
async fn every_documented_operation_is_served() {
    let s = TestServer::spawn().await;
    let doc: Value = serde_json::from_str(&switchboard::http::openapi::document()).unwrap();
    let ops = operations(&doc);
    assert!(ops.len() > 40, "only {} operations", ops.len());
    for (method, path, op) in ops {
        // Path parameters get values that name nothing.
        let concrete = path
            .replace("{id}", "987654")
            .replace("{task_id}", "6f1c1a0e-7d7e-4c1e-9f43-2a4d8f7f0e11")
            .replace("{session_id}", "6f1c1a0e-7d7e-4c1e-9f43-2a4d8f7f0e12")
            .replace("{user_id}", "nobody@team.com")
            .replace("{device_id}", "no-such-device")
            .replace("{role}", "viewer");
        assert!(
            !concrete.contains('{'),
            "{path}: a parameter without a test value"
        );
        let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let documented = |status: u16| op["responses"][status.to_string()].is_object();

        let (status, body) = send(s.req(m.clone(), &concrete, Some(&s.admin))).await;
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(
            status != 405 && !message.starts_with("no such endpoint"),
            "{method} {path} is documented but not served: {status} {body}"
        );
        assert!(
            documented(status),
            "{method} {concrete} → {status} undocumented: {body}"
        );

        let (status, body) = send(s.req(m, &concrete, None)).await;
        if op["security"] == json!([{}]) {
            assert!(
                documented(status),
                "{method} {path} → {status} undocumented"
            );
        } else {
            assert_eq!(status, 401, "{method} {path} without a token: {body}");
            assert!(documented(401), "{method} {path}: 401 undocumented");
        }
    }
    // The fallbacks those checks tell apart from real routes.
    let (status, body) = s.get("/api/no/such/route", &s.admin).await;
    assert_eq!(status, 404);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("no such endpoint")
    );
    let (status, _) = s.delete("/api/me", &s.admin).await;
    assert_eq!(status, 405);
}

/// Validates bodies against the OpenAPI document's response schemas.
struct OpenApi {
    doc: Value,
}

impl OpenApi {
    fn load() -> Self {
        let text = std::fs::read_to_string(repo_file("protocol/openapi.json")).unwrap();
        OpenApi {
            doc: serde_json::from_str(&text).unwrap(),
        }
    }

    /// Check `body` against the schema of `method path` answering `status`.
    fn check(&self, method: &str, path: &str, status: u16, body: &Value) {
        let op = &self.doc["paths"][path][method];
        assert!(op.is_object(), "{method} {path} is not documented");
        let resp = &op["responses"][status.to_string()];
        assert!(
            resp.is_object(),
            "{method} {path} → {status} is not documented"
        );
        let Some(schema) = resp["content"]["application/json"]["schema"].as_object() else {
            assert!(
                body.is_null(),
                "{method} {path} → {status} has an undocumented body"
            );
            return;
        };
        let root = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "components": self.doc["components"],
            "allOf": [schema],
        });
        let validator = jsonschema::validator_for(&root).expect("a valid schema");
        let errors: Vec<String> = validator
            .iter_errors(body)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        assert!(
            errors.is_empty(),
            "{method} {path} → {status} breaks its schema: {errors:?}\n{body}"
        );
    }
}

/// Validates frames against `protocol/schema/<name>`.
fn check_frame(name: &str, frame: &Value) {
    let text = std::fs::read_to_string(repo_file(&format!("protocol/schema/{name}"))).unwrap();
    let schema: Value = serde_json::from_str(&text).unwrap();
    let validator = jsonschema::validator_for(&schema).expect("a valid schema");
    let errors: Vec<String> = validator
        .iter_errors(frame)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{name}: {errors:?}\n{frame}");
}

/// A call: method, concrete path, documented path, body.
async fn call(
    s: &TestServer,
    api: &OpenApi,
    method: Method,
    path: &str,
    doc_path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut r = s.req(method.clone(), path, Some(&s.admin));
    if let Some(b) = body {
        r = r.json(&b);
    }
    let (status, value) = send(r).await;
    api.check(&method.as_str().to_lowercase(), doc_path, status, &value);
    (status, value)
}

/// Real responses of the main routes, successes and errors, validate
/// against the served document's schemas; the served document is the
/// checked-in one.
#[tokio::test]
async fn responses_match_the_openapi_document() {
    let s = TestServer::spawn().await;
    let api = OpenApi::load();
    let (status, served) = send(s.req(Method::GET, "/api/openapi.json", None)).await;
    assert_eq!(status, 200);
    assert_eq!(
        served, api.doc,
        "the served document is not the checked-in one"
    );

    use Method as M;
    call(&s, &api, M::GET, "/healthz", "/healthz", None).await;
    call(&s, &api, M::GET, "/health", "/health", None).await;
    call(&s, &api, M::GET, "/readyz", "/readyz", None).await;
    call(&s, &api, M::GET, "/api/me", "/api/me", None).await;
    let (_, user) = call(
        &s,
        &api,
        M::POST,
        "/api/admin/users",
        "/api/admin/users",
        Some(json!({"user_id": "dev@team.com", "roles": ["developer"]})),
    )
    .await;
    assert_eq!(user["user_id"], "dev@team.com");
    call(
        &s,
        &api,
        M::GET,
        "/api/admin/users",
        "/api/admin/users",
        None,
    )
    .await;
    call(
        &s,
        &api,
        M::POST,
        "/api/admin/users/dev@team.com/roles",
        "/api/admin/users/{user_id}/roles",
        Some(json!({"role": "viewer"})),
    )
    .await;
    call(
        &s,
        &api,
        M::POST,
        "/api/admin/users/dev@team.com/permissions",
        "/api/admin/users/{user_id}/permissions",
        Some(json!({"grant": "project:delete"})),
    )
    .await;
    call(&s, &api, M::GET, "/api/presence", "/api/presence", None).await;
    call(
        &s,
        &api,
        M::GET,
        "/api/admin/storage",
        "/api/admin/storage",
        None,
    )
    .await;

    let (_, session) = call(
        &s,
        &api,
        M::POST,
        "/api/runtime/sessions",
        "/api/runtime/sessions",
        Some(json!({})),
    )
    .await;
    let sid = session["session_id"].as_str().unwrap().to_owned();
    call(
        &s,
        &api,
        M::GET,
        "/api/runtime/sessions",
        "/api/runtime/sessions",
        None,
    )
    .await;
    let (_, task) = call(
        &s,
        &api,
        M::POST,
        "/api/runtime/tasks/submit",
        "/api/runtime/tasks/submit",
        Some(json!({"agent_type": "echo", "prompt": "hi", "session_id": sid})),
    )
    .await;
    let tid = task["task_id"].as_str().unwrap().to_owned();
    s.wait_terminal(&s.admin, &tid).await;
    for (path, doc) in [
        (
            format!("/api/runtime/tasks/{tid}"),
            "/api/runtime/tasks/{task_id}",
        ),
        (
            format!("/api/runtime/tasks/{tid}/state"),
            "/api/runtime/tasks/{task_id}/state",
        ),
        (
            format!("/api/runtime/sessions/{sid}"),
            "/api/runtime/sessions/{session_id}",
        ),
        (
            format!("/api/runtime/sessions/{sid}/events"),
            "/api/runtime/sessions/{session_id}/events",
        ),
        (
            format!("/api/audit/sessions/{sid}/activity"),
            "/api/audit/sessions/{session_id}/activity",
        ),
        ("/api/runtime/tasks".into(), "/api/runtime/tasks"),
        ("/api/runtime/agents".into(), "/api/runtime/agents"),
        ("/api/runtime/skills".into(), "/api/runtime/skills"),
        ("/api/audit/events".into(), "/api/audit/events"),
        (
            "/api/audit/users/admin/activity".into(),
            "/api/audit/users/{user_id}/activity",
        ),
        ("/api/audit/verify".into(), "/api/audit/verify"),
        ("/api/agents/available".into(), "/api/agents/available"),
        ("/api/agents/types".into(), "/api/agents/types"),
    ] {
        let (status, body) = call(&s, &api, M::GET, &path, doc, None).await;
        assert_eq!(status, 200, "{path}: {body}");
    }
    // Errors: 409 on a terminal task, 404, 400, 401.
    let (status, _) = call(
        &s,
        &api,
        M::POST,
        &format!("/api/runtime/tasks/{tid}/cancel"),
        "/api/runtime/tasks/{task_id}/cancel",
        None,
    )
    .await;
    assert_eq!(status, 409);
    let (status, _) = call(
        &s,
        &api,
        M::GET,
        "/api/runtime/tasks/6f1c1a0e-7d7e-4c1e-9f43-2a4d8f7f0e11",
        "/api/runtime/tasks/{task_id}",
        None,
    )
    .await;
    assert_eq!(status, 404);
    let (status, body) = send(s.req(M::GET, "/api/me", Some("nope"))).await;
    api.check("get", "/api/me", status, &body);

    // Phase 1.
    let (status, project) = call(
        &s,
        &api,
        M::POST,
        "/api/projects",
        "/api/projects",
        Some(json!({"name": "P", "key": "P", "github_repo_url": "https://github.com/o/r"})),
    )
    .await;
    assert_eq!(status, 201);
    let pid = project["id"].as_i64().unwrap();
    let (status, _) = call(
        &s,
        &api,
        M::POST,
        "/api/projects",
        "/api/projects",
        Some(json!({"name": "P", "key": "P"})),
    )
    .await;
    assert_eq!(status, 409);
    let (status, _) = call(
        &s,
        &api,
        M::POST,
        "/api/projects",
        "/api/projects",
        Some(json!({"name": "", "key": "Q"})),
    )
    .await;
    assert_eq!(status, 400);
    call(&s, &api, M::GET, "/api/projects", "/api/projects", None).await;
    let ppath = format!("/api/projects/{pid}");
    call(&s, &api, M::GET, &ppath, "/api/projects/{id}", None).await;
    call(
        &s,
        &api,
        M::PATCH,
        &ppath,
        "/api/projects/{id}",
        Some(json!({"status": "archived"})),
    )
    .await;
    let (_, ptask) = call(
        &s,
        &api,
        M::POST,
        "/api/tasks",
        "/api/tasks",
        Some(json!({"project_id": pid, "title": "T"})),
    )
    .await;
    let ptid = ptask["id"].as_i64().unwrap();
    let tpath = format!("/api/tasks/{ptid}");
    call(&s, &api, M::GET, "/api/tasks", "/api/tasks", None).await;
    call(
        &s,
        &api,
        M::PATCH,
        &tpath,
        "/api/tasks/{id}",
        Some(json!({"priority": "high"})),
    )
    .await;
    let (status, exec) = call(
        &s,
        &api,
        M::POST,
        "/api/tasks/execute",
        "/api/tasks/execute",
        Some(json!({"task_id": ptid, "agent_type": "echo", "prompt": "go"})),
    )
    .await;
    assert_eq!((status, exec["status"].as_str()), (200, Some("completed")));
    call(&s, &api, M::GET, &tpath, "/api/tasks/{id}", None).await;
    let (status, _) = call(&s, &api, M::DELETE, &tpath, "/api/tasks/{id}", None).await;
    assert_eq!(status, 204);
    let (status, _) = call(&s, &api, M::DELETE, &ppath, "/api/projects/{id}", None).await;
    assert_eq!(status, 204);
    let (status, _) = call(&s, &api, M::GET, &ppath, "/api/projects/{id}", None).await;
    assert_eq!(status, 404);

    // Last, as they end things.
    call(
        &s,
        &api,
        M::DELETE,
        &format!("/api/runtime/sessions/{sid}"),
        "/api/runtime/sessions/{session_id}",
        None,
    )
    .await;
    call(
        &s,
        &api,
        M::POST,
        "/api/admin/users/dev@team.com/tokens",
        "/api/admin/users/{user_id}/tokens",
        None,
    )
    .await;
    call(
        &s,
        &api,
        M::DELETE,
        "/api/admin/users/dev@team.com/roles/viewer",
        "/api/admin/users/{user_id}/roles/{role}",
        None,
    )
    .await;
    call(
        &s,
        &api,
        M::DELETE,
        "/api/admin/users/dev@team.com/tokens",
        "/api/admin/users/{user_id}/tokens",
        None,
    )
    .await;
}

/// Real responses of the device routes, successes and errors, validate
/// against the document.
#[tokio::test]
async fn device_responses_match_the_openapi_document() {
    let s = TestServer::spawn().await;
    let api = OpenApi::load();
    use Method as M;
    let dev = s.user("dev@team.com", &["developer"]).await;
    let (status, d) = call(
        &s,
        &api,
        M::POST,
        "/api/devices",
        "/api/devices",
        Some(json!({"device_id": "laptop-1", "name": "Laptop"})),
    )
    .await;
    assert_eq!((status, d["state"].as_str()), (201, Some("pending")), "{d}");
    for bad in [
        json!({"device_id": ""}),
        json!({"device_id": "a/b"}),
        json!({"device_id": "k", "public_key": "not hex"}),
        json!({"name": "no id"}),
    ] {
        let (status, _) = call(&s, &api, M::POST, "/api/devices", "/api/devices", Some(bad)).await;
        assert_eq!(status, 400);
    }
    // Someone else's device id.
    let (status, body) = send(
        s.req(M::POST, "/api/devices", Some(&dev))
            .json(&json!({"device_id": "laptop-1"})),
    )
    .await;
    api.check("post", "/api/devices", status, &body);
    assert_eq!(status, 409);

    let (status, list) = call(&s, &api, M::GET, "/api/devices", "/api/devices", None).await;
    assert_eq!((status, list.as_array().map(Vec::len)), (200, Some(1)));
    let (status, c) = call(
        &s,
        &api,
        M::POST,
        "/api/devices/challenge",
        "/api/devices/challenge",
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert!(c["nonce"].is_string() && c["expires_at"].is_string());

    let approve = "/api/devices/{device_id}/approve";
    let revoke = "/api/devices/{device_id}/revoke";
    let (status, d) = call(
        &s,
        &api,
        M::POST,
        "/api/devices/laptop-1/approve",
        approve,
        None,
    )
    .await;
    assert_eq!((status, d["state"].as_str()), (200, Some("trusted")));
    let (status, _) = call(
        &s,
        &api,
        M::POST,
        "/api/devices/nope/approve",
        approve,
        None,
    )
    .await;
    assert_eq!(status, 404);
    let (status, body) = send(s.req(M::POST, "/api/devices/laptop-1/approve", Some(&dev))).await;
    api.check("post", approve, status, &body);
    assert_eq!(status, 403);
    let (status, d) = call(
        &s,
        &api,
        M::POST,
        "/api/devices/laptop-1/revoke",
        revoke,
        None,
    )
    .await;
    assert_eq!((status, d["state"].as_str()), (200, Some("revoked")));
    let (status, _) = call(
        &s,
        &api,
        M::POST,
        "/api/devices/laptop-1/approve",
        approve,
        None,
    )
    .await;
    assert_eq!(status, 409);
    let (status, _) = call(&s, &api, M::POST, "/api/devices/nope/revoke", revoke, None).await;
    assert_eq!(status, 404);

    let (status, doc) = call(
        &s,
        &api,
        M::GET,
        "/api/openapi.json",
        "/api/openapi.json",
        None,
    )
    .await;
    assert_eq!((status, doc["openapi"].is_string()), (200, true));
}

/// Every frame of a real WebSocket session validates: the client ops we
/// send, hello and other replies (ok and error), and session and audit events.
#[tokio::test]
async fn frames_match_the_frame_schemas() {
    let s = TestServer::spawn().await;
    let (mut ws, _) = s.ws(&s.admin, json!({})).await;
    let ops = [
        json!({"op": "ping"}),
        json!({"op": "subscribe", "stream": "audit", "after_seq": 0}),
        json!({"op": "subscribe", "stream": "tasks"}),
        json!({"op": "task.submit", "agent_type": "echo", "prompt": "frames!",
               "params": {"chunk_size": 2}}),
        json!({"op": "task.list", "limit": 5}),
        json!({"op": "agents.list"}),
        json!({"op": "skills.list"}),
        json!({"op": "task.cancel", "task_id": "6f1c1a0e-7d7e-4c1e-9f43-2a4d8f7f0e11"}),
        json!({"op": "fly"}),
    ];
    let mut task_id = None;
    for (i, op) in ops.iter().enumerate() {
        let mut framed = op.clone();
        framed["id"] = json!(format!("f{i}"));
        if op["op"] != "fly" {
            check_frame("client-op.json", &framed);
        }
        ws.send_text(&framed.to_string()).await;
        let reply = ws.reply_to(json!(format!("f{i}"))).await;
        check_frame("reply.json", &reply);
        if op["op"] == "subscribe" {
            check_frame("subscribe-reply.json", &reply["result"]);
        }
        if op["op"] == "task.submit" {
            task_id = reply["result"]["task_id"].as_str().map(str::to_owned);
        }
    }
    let task_id = task_id.expect("submitted");
    let events = ws.until_terminal(&task_id).await;
    let mut kinds = std::collections::BTreeSet::new();
    for e in &events {
        if e["stream"] == "tasks" {
            check_frame("tasks-event.json", e);
            kinds.insert(format!("tasks {}", e["type"].as_str().unwrap()));
            continue;
        }
        check_frame("event.json", e);
        kinds.insert(e["type"].as_str().unwrap().to_owned());
    }
    assert!(
        kinds.contains("task.output")
            && kinds.contains("task.state")
            && kinds.contains("audit")
            && kinds.contains("tasks task.state"),
        "{kinds:?}"
    );

    // The hello reply, on a fresh connection.
    let mut raw = common::WsClient::connect(&s.ws_url).await;
    let hello = json!({"op": "hello", "id": 1, "token": s.admin});
    check_frame("client-op.json", &hello);
    raw.send_text(&hello.to_string()).await;
    let reply = raw.reply_to(json!(1)).await;
    check_frame("reply.json", &reply);
    check_frame("hello-reply.json", &reply["result"]);
}

/// The schemas reject frames that break them (so the checks above mean something).
#[test]
fn frame_schemas_reject_junk() {
    let text = std::fs::read_to_string(repo_file("protocol/schema/client-op.json")).unwrap();
    let schema: Value = serde_json::from_str(&text).unwrap();
    let v = jsonschema::validator_for(&schema).unwrap();
    assert!(v.is_valid(
        &json!({"op": "task.cancel", "task_id": "6f1c1a0e-7d7e-4c1e-9f43-2a4d8f7f0e11"})
    ));
    assert!(!v.is_valid(&json!({"op": "fly"})));
    // agent_type or skill: which one is checked at submit, the prompt here.
    assert!(!v.is_valid(&json!({"op": "task.submit", "agent_type": "echo"})));
}
