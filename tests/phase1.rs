//! Phase 1 API: projects, project tasks, execute, agent names; each test
//! runs on a node over SQLite and on one over PostgreSQL (a fresh database
//! per test, when `SWITCHBOARD_TEST_POSTGRES_URL` is set), and two nodes
//! over one PostgreSQL number one project's tasks apart.

mod common;

use common::{PgDb, TestServer, send};
use reqwest::Method;
use serde_json::{Value, json};
use switchboard::config::FileConfig;

/// Generate, for each test function over a `&TestServer`, a test per backend.
macro_rules! both {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    let s = crate::TestServer::spawn().await;
                    super::$name(&s).await;
                    s.stop().await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    let Some(db) = crate::PgDb::create().await else { return };
                    let s = crate::TestServer::spawn_on(&db.url, crate::FileConfig::default()).await;
                    super::$name(&s).await;
                    s.stop().await;
                }
            )*
        }
    };
}

both!(
    project_crud_in_the_original_shapes,
    tasks_are_numbered_per_project,
    execute_runs_an_engine_task_synchronously,
    execute_survives_disconnect_and_cancels,
    phase1_permissions,
);

async fn patch(s: &TestServer, path: &str, token: &str, body: Value) -> (u16, Value) {
    send(s.req(Method::PATCH, path, Some(token)).json(&body)).await
}

async fn project(s: &TestServer, key: &str) -> Value {
    let (status, body) = s
        .post(
            "/api/projects",
            &s.admin,
            json!({"name": format!("Project {key}"), "key": key}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    body
}

/// Projects: create (201, defaults, parsed repo), get, list, patch, 409 on
/// a taken key, 400 on bad fields, delete (204) then 404.
async fn project_crud_in_the_original_shapes(s: &TestServer) {
    let (status, p) = s
        .post(
            "/api/projects",
            &s.admin,
            json!({"name": "Portal", "key": "PORT", "description": "d",
                   "github_repo_url": "https://github.com/octo/portal.git",
                   "telegram_chat_id": "-100123"}),
        )
        .await;
    assert_eq!(status, 201, "{p}");
    assert!(p["id"].is_i64());
    assert_eq!(p["status"], "active");
    assert_eq!(p["github_repo_owner"], "octo");
    assert_eq!(p["github_repo_name"], "portal");
    assert_eq!(p["telegram_chat_id"], "-100123");
    assert!(p["created_at"].is_string() && p["updated_at"].is_string());
    let id = p["id"].as_i64().unwrap();

    let (status, got) = s.get(&format!("/api/projects/{id}"), &s.admin).await;
    assert_eq!((status, &got), (200, &p));
    let (status, list) = s.get("/api/projects", &s.admin).await;
    assert_eq!(status, 200);
    assert_eq!(list.as_array().unwrap().len(), 1);

    let (status, changed) = patch(
        s,
        &format!("/api/projects/{id}"),
        &s.admin,
        json!({"status": "on_hold", "github_repo_url": null, "description": "new"}),
    )
    .await;
    assert_eq!(status, 200, "{changed}");
    assert_eq!(changed["status"], "on_hold");
    assert_eq!(changed["github_repo_owner"], Value::Null);
    assert_eq!(changed["description"], "new");
    assert_eq!(changed["name"], "Portal");

    let (status, body) = s
        .post(
            "/api/projects",
            &s.admin,
            json!({"name": "Dup", "key": "PORT"}),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("conflict"))
    );

    for bad in [
        json!({"name": "", "key": "A"}),
        json!({"name": "x".repeat(256), "key": "A"}),
        json!({"name": "n", "key": "k".repeat(51)}),
        json!({"name": "n", "key": "B", "status": "paused"}),
        json!({"key": "C"}),
    ] {
        let (status, body) = s.post("/api/projects", &s.admin, bad.clone()).await;
        assert_eq!(status, 400, "{bad} → {body}");
        assert_eq!(body["error"]["code"], "bad_request");
    }

    let (status, _) = s.delete(&format!("/api/projects/{id}"), &s.admin).await;
    assert_eq!(status, 204);
    let (status, body) = s.get(&format!("/api/projects/{id}"), &s.admin).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    let (status, _) = s.delete(&format!("/api/projects/{id}"), &s.admin).await;
    assert_eq!(status, 404);
}

/// Tasks get `{KEY}-{n}` numbered per project, defaults, filters by project,
/// and a project task for an unknown project is a 404.
async fn tasks_are_numbered_per_project(s: &TestServer) {
    let a = project(s, "AAA").await["id"].as_i64().unwrap();
    let b = project(s, "BBB").await["id"].as_i64().unwrap();
    let mut keys = Vec::new();
    for pid in [a, b, a] {
        let (status, t) = s
            .post(
                "/api/tasks",
                &s.admin,
                json!({"project_id": pid, "title": "Do it"}),
            )
            .await;
        assert_eq!(status, 201, "{t}");
        assert_eq!(t["status"], "todo");
        assert_eq!(t["priority"], "medium");
        assert_eq!(t["agent_execution_status"], Value::Null);
        keys.push(t["key"].as_str().unwrap().to_owned());
    }
    assert_eq!(keys, ["AAA-1", "BBB-1", "AAA-2"]);
    let (status, list) = s.get(&format!("/api/tasks?project_id={a}"), &s.admin).await;
    assert_eq!(status, 200);
    assert_eq!(list.as_array().unwrap().len(), 2);
    let (_, all) = s.get("/api/tasks", &s.admin).await;
    assert_eq!(all.as_array().unwrap().len(), 3);

    let id = all[0]["id"].as_i64().unwrap();
    let (status, t) = patch(
        s,
        &format!("/api/tasks/{id}"),
        &s.admin,
        json!({"status": "done", "priority": "critical", "assigned_agent_type": "echo"}),
    )
    .await;
    assert_eq!(status, 200, "{t}");
    assert_eq!(
        (t["status"].as_str(), t["priority"].as_str()),
        (Some("done"), Some("critical"))
    );

    let (status, _) = s
        .post(
            "/api/tasks",
            &s.admin,
            json!({"project_id": 9999, "title": "x"}),
        )
        .await;
    assert_eq!(status, 404);
    let (status, _) = s
        .post(
            "/api/tasks",
            &s.admin,
            json!({"project_id": a, "title": ""}),
        )
        .await;
    assert_eq!(status, 400);
    let (status, _) = s.get("/api/tasks/abc", &s.admin).await;
    assert_eq!(status, 400);
    let (status, _) = s.delete(&format!("/api/tasks/{id}"), &s.admin).await;
    assert_eq!(status, 204);
    let (status, _) = s.get(&format!("/api/tasks/{id}"), &s.admin).await;
    assert_eq!(status, 404);
    // Deleting a project takes its tasks with it.
    s.delete(&format!("/api/projects/{a}"), &s.admin).await;
    let (_, all) = s.get("/api/tasks", &s.admin).await;
    assert_eq!(all.as_array().unwrap().len(), 1);
}

/// Execute runs a real engine task in the caller's default session and
/// answers when it ended; the project task follows it.
async fn execute_runs_an_engine_task_synchronously(s: &TestServer) {
    let pid = project(s, "EX").await["id"].as_i64().unwrap();
    let (_, t) = s
        .post(
            "/api/tasks",
            &s.admin,
            json!({"project_id": pid, "title": "Echo"}),
        )
        .await;
    let tid = t["id"].as_i64().unwrap();
    let (mut ws, hello) = s.ws(&s.admin, json!({})).await;
    let (status, e) = s
        .post(
            "/api/tasks/execute",
            &s.admin,
            json!({"task_id": tid, "agent_type": "echo", "prompt": "hello phase one"}),
        )
        .await;
    assert_eq!(status, 200, "{e}");
    assert_eq!(e["status"], "completed");
    assert_eq!(e["response"], "hello phase one");
    assert_eq!(e["error_message"], Value::Null);
    assert_eq!(e["task_id"], tid);
    assert!(e["id"].is_i64() && e["completed_at"].is_string() && e["started_at"].is_string());
    let engine = e["engine_task_id"].as_str().unwrap();

    // The engine task exists, with the same execution uuid, in a session of ours.
    let (status, state) = s
        .get(&format!("/api/runtime/tasks/{engine}/state"), &s.admin)
        .await;
    assert_eq!(status, 200);
    assert_eq!(state["execution_uuid"], e["execution_uuid"]);
    assert_eq!(state["state"], "completed");

    let (_, t) = s.get(&format!("/api/tasks/{tid}"), &s.admin).await;
    assert_eq!(t["status"], "in_review");
    assert_eq!(t["agent_execution_status"], "completed");

    // Audited.
    let (_, audit) = s
        .get("/api/audit/events?event_type=task.submitted", &s.admin)
        .await;
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["resource_id"] == engine)
    );

    // Live on the default session's stream, when the socket is in it.
    if hello["session_id"] == e["session_id"] {
        let events = ws.until_terminal(engine).await;
        assert!(events.iter().any(|ev| ev["type"] == "task.output"));
    }

    // A failing agent run leaves the project task blocked.
    let (status, bad) = s
        .post(
            "/api/tasks/execute",
            &s.admin,
            json!({"task_id": tid, "agent_type": "nope", "prompt": "x"}),
        )
        .await;
    assert_eq!(
        (status, bad["error"]["code"].as_str()),
        (400, Some("unknown_agent"))
    );
    let (status, _) = s
        .post(
            "/api/tasks/execute",
            &s.admin,
            json!({"task_id": 424242, "agent_type": "echo", "prompt": "x"}),
        )
        .await;
    assert_eq!(status, 404);
}

/// An execution whose client disconnects still completes, and one can be
/// cancelled like any engine task; the project task follows each.
async fn execute_survives_disconnect_and_cancels(s: &TestServer) {
    let pid = project(s, "DC").await["id"].as_i64().unwrap();
    let (_, t) = s
        .post(
            "/api/tasks",
            &s.admin,
            json!({"project_id": pid, "title": "Slow"}),
        )
        .await;
    let tid = t["id"].as_i64().unwrap();
    let slow = json!({"task_id": tid, "agent_type": "echo", "prompt": "abcdefghij",
                      "params": {"delay_ms": 40, "chunk_size": 1}});
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_millis(100))
        .build()
        .unwrap();
    let gone = client
        .post(format!("{}/api/tasks/execute", s.base))
        .bearer_auth(&s.admin)
        .json(&slow)
        .send()
        .await;
    assert!(gone.is_err(), "the client should have given up first");
    let t = wait_task(s, tid, "completed").await;
    assert_eq!(t["status"], "in_review");

    // Cancel one while its caller waits: the caller gets `cancelled`.
    let base = s.base.clone();
    let admin = s.admin.clone();
    let body = slow.clone();
    let waiting = tokio::spawn(async move {
        send(
            common::http()
                .post(format!("{base}/api/tasks/execute"))
                .bearer_auth(admin)
                .json(&body),
        )
        .await
    });
    wait_task(s, tid, "running").await;
    let (_, running) = s.get("/api/runtime/tasks?state=running", &s.admin).await;
    let engine = running[0]["task_id"].as_str().unwrap().to_owned();
    let (status, _) = s.cancel(&s.admin, &engine).await;
    assert_eq!(status, 200);
    let (status, e) = waiting.await.unwrap();
    assert_eq!(status, 200, "{e}");
    assert_eq!(e["status"], "cancelled");
    assert_eq!(e["engine_task_id"], engine.as_str());
    let t = wait_task(s, tid, "cancelled").await;
    assert_eq!(t["status"], "todo");
}

/// Poll a project task until its execution is in `state`.
async fn wait_task(s: &TestServer, tid: i64, state: &str) -> Value {
    let deadline = tokio::time::Instant::now() + common::WAIT;
    loop {
        let (_, t) = s.get(&format!("/api/tasks/{tid}"), &s.admin).await;
        if t["agent_execution_status"] == state {
            return t;
        }
        assert!(tokio::time::Instant::now() < deadline, "never {state}: {t}");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// Agent names, and the Phase 1 permissions: a viewer reads but cannot
/// write, a developer writes but cannot delete, a guest cannot read.
async fn phase1_permissions(s: &TestServer) {
    let (status, names) = s.get("/api/agents/available", &s.admin).await;
    assert_eq!(status, 200);
    assert!(names.as_array().unwrap().contains(&json!("echo")));
    let (status, names) = s.get("/api/agents/types", &s.admin).await;
    assert_eq!(status, 200);
    assert!(names.as_array().unwrap().contains(&json!("echo")));

    let viewer = s.user("viewer@team.com", &["viewer"]).await;
    let dev = s.user("dev@team.com", &["developer"]).await;
    let guest = s.user("guest@team.com", &["guest"]).await;
    let pid = project(s, "PERM").await["id"].as_i64().unwrap();

    assert_eq!(s.get("/api/projects", &viewer).await.0, 200);
    assert_eq!(s.get("/api/projects", &guest).await.0, 403);
    let (status, _) = s
        .post("/api/projects", &viewer, json!({"name": "v", "key": "V"}))
        .await;
    assert_eq!(status, 403);
    let (status, t) = s
        .post(
            "/api/tasks",
            &dev,
            json!({"project_id": pid, "title": "by dev"}),
        )
        .await;
    assert_eq!(status, 201);
    let tid = t["id"].as_i64().unwrap();
    assert_eq!(s.delete(&format!("/api/tasks/{tid}"), &dev).await.0, 403);
    assert_eq!(s.delete(&format!("/api/projects/{pid}"), &dev).await.0, 403);
    let (status, _) = s
        .post(
            "/api/tasks/execute",
            &viewer,
            json!({"task_id": tid, "agent_type": "echo", "prompt": "x"}),
        )
        .await;
    assert_eq!(status, 403);
    let (status, e) = s
        .post(
            "/api/tasks/execute",
            &dev,
            json!({"task_id": tid, "agent_type": "echo", "prompt": "x"}),
        )
        .await;
    assert_eq!((status, e["status"].as_str()), (200, Some("completed")));
    assert_eq!(s.get("/api/projects", "wrong").await.0, 401);
}

/// Two nodes over one PostgreSQL: tasks created at once in one project
/// through both get distinct, gapless keys; either node serves what the
/// other stored, and an execution started on one shows on the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_nodes_share_projects_and_number_tasks_apart() {
    let Some(db) = PgDb::create().await else {
        return;
    };
    let a = TestServer::spawn_on(&db.url, FileConfig::default()).await;
    let b = TestServer::spawn_on(&db.url, FileConfig::default()).await;
    let pid = project(&a, "DUO").await["id"].as_i64().unwrap();
    let (status, seen) = b.get(&format!("/api/projects/{pid}"), &b.admin).await;
    assert_eq!((status, seen["key"].as_str()), (200, Some("DUO")));

    let mut calls = Vec::new();
    for i in 0..30 {
        let node = if i % 2 == 0 { &a } else { &b };
        let req = node
            .req(Method::POST, "/api/tasks", Some(&node.admin))
            .json(&json!({"project_id": pid, "title": format!("task {i}")}));
        calls.push(tokio::spawn(send(req)));
    }
    let mut keys = Vec::new();
    for c in calls {
        let (status, t) = c.await.unwrap();
        assert_eq!(status, 201, "{t}");
        keys.push(t["key"].as_str().unwrap().to_owned());
    }
    keys.sort();
    let mut want: Vec<String> = (1..=30).map(|n| format!("DUO-{n}")).collect();
    want.sort();
    assert_eq!(keys, want);

    let (_, list) = a
        .get(&format!("/api/tasks?project_id={pid}"), &a.admin)
        .await;
    let tid = list[0]["id"].as_i64().unwrap();
    let (status, e) = b
        .post(
            "/api/tasks/execute",
            &b.admin,
            json!({"task_id": tid, "agent_type": "echo", "prompt": "from b"}),
        )
        .await;
    assert_eq!(
        (status, e["status"].as_str()),
        (200, Some("completed")),
        "{e}"
    );
    let (_, t) = a.get(&format!("/api/tasks/{tid}"), &a.admin).await;
    assert_eq!(t["agent_execution_status"], "completed");
    assert_eq!(t["status"], "in_review");
    b.stop().await;
    a.stop().await;
}
