//! The role matrix: every `rbac::Action`, probed over REST and WebSocket as
//! each of the four roles, is allowed or refused exactly as the permission
//! table says. Also: no token or a bad one is 401 on every `/api` route,
//! per-user grants and revokes change what a user may do, and a denial is
//! audited.

mod common;

use std::collections::BTreeSet;
use std::fmt;

use common::*;
use reqwest::Method;
use serde_json::{Value, json};
use switchboard::config::FileConfig;
use switchboard::rbac::{Action, Permission, Role};

/// The WebSocket ops that carry an operation; each must be probed.
const WS_OPS: [&str; 8] = [
    "task.submit",
    "task.cancel",
    "task.respond",
    "task.get",
    "task.list",
    "subscribe",
    "agents.list",
    "skills.list",
];

/// How a refused probe answers.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Denial {
    /// 403 `forbidden`: the operation itself is not allowed.
    Forbidden,
    /// 404 `not_found`: the operation is allowed but the object belongs to
    /// someone else, which without `admin:system` must not be visible.
    Hidden,
}

/// One concrete request.
#[derive(Debug, Clone)]
enum Request {
    /// A REST call; a `None` body sends none.
    Rest {
        method: Method,
        path: String,
        body: Option<Value>,
    },
    /// `GET` with `Accept: text/event-stream` (only the status is read).
    Sse(String),
    /// An op on the role's open WebSocket.
    Ws(Value),
    /// The `hello` of a new WebSocket connection.
    Hello,
    /// The `hello` of a remote agent host at `GET /link`.
    Link,
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Request::Rest { method, path, .. } => write!(f, "{method} {path}"),
            Request::Sse(path) => write!(f, "SSE {path}"),
            Request::Ws(op) => write!(f, "WS {op}"),
            Request::Hello => f.write_str("WS hello"),
            Request::Link => f.write_str("link hello"),
        }
    }
}

/// A request and how it must answer when the action is not allowed.
struct Probe {
    request: Request,
    denial: Denial,
}

impl Probe {
    fn hidden(mut self) -> Self {
        self.denial = Denial::Hidden;
        self
    }
}

fn rest(method: Method, path: impl Into<String>, body: Option<Value>) -> Probe {
    Probe {
        request: Request::Rest {
            method,
            path: path.into(),
            body,
        },
        denial: Denial::Forbidden,
    }
}

fn get(path: impl Into<String>) -> Probe {
    rest(Method::GET, path, None)
}

fn post(path: impl Into<String>, body: Value) -> Probe {
    rest(Method::POST, path, Some(body))
}

fn delete(path: impl Into<String>) -> Probe {
    rest(Method::DELETE, path, None)
}

fn sse(path: impl Into<String>) -> Probe {
    Probe {
        request: Request::Sse(path.into()),
        denial: Denial::Forbidden,
    }
}

fn ws(op: Value) -> Probe {
    Probe {
        request: Request::Ws(op),
        denial: Denial::Forbidden,
    }
}

/// What a probe answered.
#[derive(Debug, Clone, PartialEq)]
enum Outcome {
    Allowed,
    Denied(Denial),
    Unexpected(String),
}

/// One role's user and the things they own, made before the matrix runs so
/// that every allowed probe can answer 2xx.
struct Actor {
    role: Role,
    user_id: String,
    token: String,
    /// An active session of theirs.
    session: String,
    /// A session of theirs for the `SessionEnd` probe to end.
    to_end: String,
    /// A completed task of theirs.
    task: String,
    /// Waiting tasks of theirs: cancel (REST, WS), respond (REST, WS).
    waiting: [String; 4],
    /// A user the `UserAdmin` probes manage.
    target: String,
    /// A Phase 1 project (made by the admin) for the read and delete probes,
    /// and a task in it.
    project: i64,
    project_task: i64,
    /// A project for the delete probe.
    doomed: i64,
}

/// Someone else's things, for the visibility probes.
struct Other {
    user_id: String,
    session: String,
}

/// The probes of one action. No wildcard arm: a new `Action` does not
/// compile until it has probes here.
fn probes(action: Action, a: &Actor, other: &Other) -> Vec<Probe> {
    let s = &a.session;
    let t = &a.task;
    let w = &a.waiting;
    let target = &a.target;
    let o = &other.session;
    match action {
        Action::WhoAmI => vec![get("/api/me")],
        Action::SessionCreate => vec![
            post("/api/runtime/sessions", json!({})),
            Probe {
                request: Request::Hello,
                denial: Denial::Forbidden,
            },
        ],
        Action::SessionRead => vec![
            get("/api/runtime/sessions"),
            get(format!("/api/runtime/sessions/{s}")),
            get(format!("/api/runtime/sessions/{s}/events")),
            sse(format!("/api/runtime/sessions/{s}/events")),
            get("/api/presence"),
            ws(json!({"op": "subscribe", "stream": format!("session:{s}")})),
        ],
        Action::SessionEnd => vec![delete(format!("/api/runtime/sessions/{}", a.to_end))],
        Action::ReadAll => vec![
            get(format!("/api/runtime/sessions/{o}")).hidden(),
            get(format!("/api/runtime/sessions/{o}/events")).hidden(),
            sse(format!("/api/runtime/sessions/{o}/events")).hidden(),
            get(format!("/api/audit/sessions/{o}/activity")).hidden(),
            ws(json!({"op": "subscribe", "stream": format!("session:{o}")})).hidden(),
        ],
        Action::TaskSubmit => vec![
            post(
                "/api/runtime/tasks/submit",
                json!({"agent_type": "echo", "prompt": "probe", "session_id": s}),
            ),
            ws(json!({"op": "task.submit", "agent_type": "echo", "prompt": "probe"})),
        ],
        Action::TaskView => vec![
            get("/api/runtime/tasks"),
            get("/api/runtime/tasks/counts"),
            get(format!("/api/runtime/tasks/{t}")),
            get(format!("/api/runtime/tasks/{t}/state")),
            ws(json!({"op": "task.get", "task_id": t})),
            ws(json!({"op": "task.list"})),
        ],
        Action::TaskCancel => vec![
            post(format!("/api/runtime/tasks/{}/cancel", w[0]), json!({})),
            ws(json!({"op": "task.cancel", "task_id": w[1]})),
        ],
        Action::TaskRespond => vec![
            post(
                format!("/api/runtime/tasks/{}/respond", w[2]),
                json!({"approve": true}),
            ),
            ws(json!({"op": "task.respond", "task_id": w[3], "approve": true})),
        ],
        Action::AgentList => vec![
            get("/api/runtime/agents"),
            get("/api/runtime/hosts"),
            ws(json!({"op": "agents.list"})),
        ],
        Action::HostLink => vec![Probe {
            request: Request::Link,
            denial: Denial::Forbidden,
        }],
        Action::SkillList => vec![get("/api/runtime/skills"), ws(json!({"op": "skills.list"}))],
        Action::UserAdmin => vec![
            get("/api/admin/users"),
            post(
                "/api/admin/users",
                json!({"user_id": format!("made-by-{}", a.user_id), "roles": ["guest"]}),
            ),
            post(
                format!("/api/admin/users/{target}/roles"),
                json!({"role": "viewer"}),
            ),
            delete(format!("/api/admin/users/{target}/roles/viewer")),
            post(
                format!("/api/admin/users/{target}/permissions"),
                json!({"grant": "task:view"}),
            ),
            post(format!("/api/admin/users/{target}/tokens"), json!({})),
            delete(format!("/api/admin/users/{target}/tokens")),
            // Another user's activity is for user admins only.
            get(format!("/api/audit/users/{}/activity", other.user_id)),
        ],
        Action::AuditRead => vec![
            get("/api/audit/events"),
            get("/api/audit/verify"),
            ws(json!({"op": "subscribe", "stream": "audit"})),
        ],
        Action::StorageRead => vec![get("/api/admin/storage")],
        Action::AuditOwn => vec![
            get(format!("/api/audit/users/{}/activity", a.user_id)),
            get(format!("/api/audit/sessions/{s}/activity")),
        ],
        Action::ProjectRead => vec![
            get("/api/projects"),
            get(format!("/api/projects/{}", a.project)),
            get(format!("/api/tasks?project_id={}", a.project)),
            get(format!("/api/tasks/{}", a.project_task)),
        ],
        Action::ProjectWrite => vec![
            post(
                "/api/projects",
                json!({"name": "New", "key": format!("W-{}", a.role.as_str())}),
            ),
            post(
                "/api/tasks",
                json!({"project_id": a.project, "title": "written"}),
            ),
        ],
        Action::ProjectDelete => vec![delete(format!("/api/projects/{}", a.doomed))],
        Action::Phase1Execute => vec![post(
            "/api/tasks/execute",
            json!({"task_id": a.project_task, "agent_type": "echo", "prompt": "hi"}),
        )],
        Action::DeviceOwn => vec![
            get("/api/devices"),
            get("/api/presence"),
            ws(json!({"op": "devices.list"})),
            ws(json!({"op": "presence.list"})),
        ],
    }
}

/// Classify an error body.
fn denial_of(status: u16, body: &Value) -> Outcome {
    let code = body["error"]["code"].as_str().unwrap_or("");
    let has_message = body["error"]["message"].is_string();
    match (status, code) {
        (403, "forbidden") if has_message => Outcome::Denied(Denial::Forbidden),
        (404, "not_found") if has_message => Outcome::Denied(Denial::Hidden),
        _ => Outcome::Unexpected(format!("{status} {body}")),
    }
}

/// Run one probe as `a`.
async fn run(server: &TestServer, a: &Actor, socket: &mut WsClient, request: &Request) -> Outcome {
    match request {
        Request::Rest { method, path, body } => {
            let mut r = server.req(method.clone(), path, Some(&a.token));
            if let Some(b) = body {
                r = r.json(b);
            }
            let (status, body) = send(r).await;
            if (200..300).contains(&status) {
                Outcome::Allowed
            } else {
                denial_of(status, &body)
            }
        }
        Request::Sse(path) => {
            let resp = server
                .req(Method::GET, path, Some(&a.token))
                .header("accept", "text/event-stream")
                .send()
                .await
                .expect("SSE request");
            let status = resp.status().as_u16();
            if status == 200 {
                // Dropping the response closes the stream.
                return Outcome::Allowed;
            }
            let body = resp.json::<Value>().await.unwrap_or(Value::Null);
            denial_of(status, &body)
        }
        Request::Ws(op) => {
            let reply = socket.call(op.clone()).await;
            if reply["ok"] == true {
                return Outcome::Allowed;
            }
            match reply["error"]["code"].as_str() {
                Some("forbidden") => Outcome::Denied(Denial::Forbidden),
                Some("not_found") => Outcome::Denied(Denial::Hidden),
                _ => Outcome::Unexpected(reply.to_string()),
            }
        }
        Request::Link => {
            let url = server.ws_url.replace("/ws", "/link");
            let mut link = WsClient::connect(&url).await;
            let hello = json!({"op": "hello", "token": a.token, "name": format!("probe-{}", a.role),
                               "agents": [{"agent_type": "echo"}]});
            link.send_text(&hello.to_string()).await;
            let first = link.read().await;
            match (first["op"].as_str(), first["error"]["code"].as_str()) {
                (Some("welcome"), _) => Outcome::Allowed,
                (Some("error"), Some("forbidden")) => Outcome::Denied(Denial::Forbidden),
                _ => Outcome::Unexpected(first.to_string()),
            }
        }
        Request::Hello => {
            let mut fresh = WsClient::connect(&server.ws_url).await;
            let reply = fresh.call(json!({"op": "hello", "token": a.token})).await;
            if reply["ok"] == true {
                Outcome::Allowed
            } else {
                Outcome::Unexpected(reply.to_string())
            }
        }
    }
}

/// Open a session for `token` and return its id.
async fn new_session(server: &TestServer, token: &str) -> String {
    let (status, body) = server.post("/api/runtime/sessions", token, json!({})).await;
    assert_eq!(status, 200, "create session: {body}");
    body["session_id"].as_str().unwrap().to_owned()
}

/// Submit an echo task into `session` and return its id.
async fn submit_into(server: &TestServer, token: &str, session: &str, params: Value) -> String {
    let task = server
        .submit(
            token,
            json!({"agent_type": "echo", "prompt": "fixture", "session_id": session, "params": params}),
        )
        .await;
    task["task_id"].as_str().unwrap().to_owned()
}

/// The permission names of a role, as the API shows them.
fn names(perms: &[Permission]) -> BTreeSet<String> {
    perms.iter().map(|p| p.as_str().to_owned()).collect()
}

fn strings(v: &Value) -> BTreeSet<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect()
}

/// Make a user who, as a developer, creates their fixtures and then takes
/// on `role` (so viewers and guests own tasks too, and a refusal can never
/// be a 404 in disguise).
async fn actor(server: &TestServer, role: Role) -> Actor {
    let user_id = format!("{}@roles.test", role.as_str());
    let token = server.user(&user_id, &["developer"]).await;
    let session = new_session(server, &token).await;
    let to_end = new_session(server, &token).await;
    let task = submit_into(server, &token, &session, json!({})).await;
    server.wait_terminal(&token, &task).await;
    let mut waiting = Vec::new();
    for _ in 0..4 {
        let id = submit_into(server, &token, &session, json!({"wait": true})).await;
        server.wait_state(&token, &id, "waiting").await;
        waiting.push(id);
    }
    if role != Role::Developer {
        let (status, body) = server
            .post(
                &format!("/api/admin/users/{user_id}/roles"),
                &server.admin,
                json!({"role": role.as_str()}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let (status, body) = server
            .delete(
                &format!("/api/admin/users/{user_id}/roles/developer"),
                &server.admin,
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, me) = server.get("/api/me", &token).await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(
        strings(&me["roles"]),
        BTreeSet::from([role.as_str().to_owned()])
    );
    assert_eq!(strings(&me["permissions"]), names(role.permissions()));
    let target = format!("target-of-{}@roles.test", role.as_str());
    server.user(&target, &["guest"]).await;
    let (status, project) = server
        .post(
            "/api/projects",
            &server.admin,
            json!({"name": "Roles", "key": format!("R-{}", role.as_str())}),
        )
        .await;
    assert_eq!(status, 201, "{project}");
    let project = project["id"].as_i64().unwrap();
    let (status, ptask) = server
        .post(
            "/api/tasks",
            &server.admin,
            json!({"project_id": project, "title": "a task"}),
        )
        .await;
    assert_eq!(status, 201, "{ptask}");
    let (status, doomed) = server
        .post(
            "/api/projects",
            &server.admin,
            json!({"name": "Doomed", "key": format!("D-{}", role.as_str())}),
        )
        .await;
    assert_eq!(status, 201, "{doomed}");
    Actor {
        doomed: doomed["id"].as_i64().unwrap(),
        project,
        project_task: ptask["id"].as_i64().unwrap(),
        role,
        user_id,
        token,
        session,
        to_end,
        task,
        waiting: waiting.try_into().unwrap(),
        target,
    }
}

/// Every action, as every role, over every transport: allowed exactly when
/// the role's permission set holds all of `action.required()`; refused with
/// 403 `forbidden` (or 404 `not_found` for someone else's objects)
/// otherwise.
#[tokio::test]
async fn every_action_is_allowed_exactly_as_the_table_says() {
    let server = TestServer::spawn().await;
    let other_token = server.user("other@roles.test", &["developer"]).await;
    let other = Other {
        user_id: "other@roles.test".into(),
        session: new_session(&server, &other_token).await,
    };
    let mut actors = Vec::new();
    for role in Role::ALL {
        actors.push(actor(&server, role).await);
    }

    let mut failures = Vec::new();
    let mut ws_ops_probed = BTreeSet::new();
    for a in &actors {
        let (mut socket, _) = server.ws(&a.token, json!({})).await;
        let have: BTreeSet<Permission> = a.role.permissions().iter().copied().collect();
        for action in Action::ALL {
            let allowed = action.required().iter().all(|p| have.contains(p));
            let probes = probes(action, a, &other);
            assert!(
                probes
                    .iter()
                    .any(|p| matches!(p.request, Request::Rest { .. } | Request::Link)),
                "{action:?} has no REST (or link) probe"
            );
            for probe in probes {
                if let Request::Ws(op) = &probe.request {
                    ws_ops_probed.insert(op["op"].as_str().unwrap().to_owned());
                }
                let want = if allowed {
                    Outcome::Allowed
                } else {
                    Outcome::Denied(probe.denial)
                };
                let got = run(&server, a, &mut socket, &probe.request).await;
                if got != want {
                    failures.push(format!(
                        "{} {action:?} {}: want {want:?}, got {got:?}",
                        a.role, probe.request
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} probe(s) disagree with the table:\n{}",
        failures.len(),
        failures.join("\n")
    );
    for op in WS_OPS {
        assert!(ws_ops_probed.contains(op), "no probe for the WS op {op}");
    }
    server.stop().await;
}

/// Every `/api` route, the unknown ones included: no token, a bad token, an
/// empty one or a non-Bearer scheme is 401 `unauthorized`, checked before
/// the path or the body is looked at; each bad token is audited.
#[tokio::test]
async fn every_api_route_needs_a_valid_token() {
    // Many failed authentications from one address: keep any abuse limit
    // from turning the later ones into 429s.
    let mut file = FileConfig::default();
    file.security.auth_failures_per_minute = 100_000;
    let server = TestServer::spawn_with(file).await;
    let (_, session) = server
        .post("/api/runtime/sessions", &server.admin, json!({}))
        .await;
    let s = session["session_id"].as_str().unwrap().to_owned();
    let task = server
        .submit(&server.admin, json!({"agent_type": "echo", "prompt": "x"}))
        .await;
    let t = task["task_id"].as_str().unwrap().to_owned();
    let routes: Vec<(Method, String, Option<Value>)> = vec![
        (Method::GET, "/api/me".into(), None),
        (
            Method::POST,
            "/api/admin/users".into(),
            Some(json!({"user_id": "x", "roles": []})),
        ),
        (Method::GET, "/api/admin/users".into(), None),
        (
            Method::POST,
            "/api/admin/users/admin/roles".into(),
            Some(json!({"role": "viewer"})),
        ),
        (
            Method::DELETE,
            "/api/admin/users/admin/roles/admin".into(),
            None,
        ),
        (
            Method::POST,
            "/api/admin/users/admin/permissions".into(),
            Some(json!({"grant": "task:view"})),
        ),
        (
            Method::POST,
            "/api/admin/users/admin/tokens".into(),
            Some(json!({})),
        ),
        (Method::DELETE, "/api/admin/users/admin/tokens".into(), None),
        (Method::GET, "/api/presence".into(), None),
        (
            Method::POST,
            "/api/runtime/sessions".into(),
            Some(json!({})),
        ),
        (Method::GET, "/api/runtime/sessions".into(), None),
        (Method::GET, format!("/api/runtime/sessions/{s}"), None),
        (Method::DELETE, format!("/api/runtime/sessions/{s}"), None),
        (
            Method::GET,
            format!("/api/runtime/sessions/{s}/events"),
            None,
        ),
        (
            Method::POST,
            "/api/runtime/tasks/submit".into(),
            Some(json!({"agent_type": "echo", "prompt": "x"})),
        ),
        (Method::GET, "/api/runtime/tasks".into(), None),
        (Method::GET, format!("/api/runtime/tasks/{t}"), None),
        (Method::GET, format!("/api/runtime/tasks/{t}/state"), None),
        (
            Method::POST,
            format!("/api/runtime/tasks/{t}/cancel"),
            Some(json!({})),
        ),
        (
            Method::POST,
            format!("/api/runtime/tasks/{t}/respond"),
            Some(json!({"approve": true})),
        ),
        (Method::GET, "/api/runtime/agents".into(), None),
        (Method::GET, "/api/runtime/hosts".into(), None),
        (Method::GET, "/api/runtime/tasks/counts".into(), None),
        (Method::GET, "/api/runtime/skills".into(), None),
        (Method::GET, "/api/audit/events".into(), None),
        (Method::GET, "/api/audit/users/admin/activity".into(), None),
        (
            Method::GET,
            format!("/api/audit/sessions/{s}/activity"),
            None,
        ),
        (Method::GET, "/api/audit/verify".into(), None),
        // Malformed path and body: still 401 first.
        (
            Method::GET,
            "/api/runtime/tasks/not-a-uuid/state".into(),
            None,
        ),
        (
            Method::POST,
            "/api/runtime/tasks/submit".into(),
            Some(json!("not an object")),
        ),
        // A path that does not exist under /api, and a method that does not.
        (Method::GET, "/api/no/such/route".into(), None),
        (Method::PUT, "/api/me".into(), Some(json!({}))),
    ];
    let client = http();
    let bad_auth: [Option<&str>; 5] = [
        None,
        Some("Bearer sb_not_a_real_token"),
        Some("Bearer "),
        Some("Basic YWRtaW46YWRtaW4="),
        Some(ADMIN_TOKEN),
    ];
    let mut failures = Vec::new();
    for (method, path, body) in &routes {
        for auth in bad_auth {
            let mut r = client.request(method.clone(), format!("{}{path}", server.base));
            if let Some(a) = auth {
                r = r.header("authorization", a);
            }
            if let Some(b) = body {
                r = r.json(b);
            }
            let (status, body) = send(r).await;
            if status != 401 || body["error"]["code"] != "unauthorized" {
                failures.push(format!("{method} {path} with {auth:?}: {status} {body}"));
            }
        }
        // The SSE form of the events path as well.
        if path.ends_with("/events") {
            let (status, body) = send(
                client
                    .get(format!("{}{path}", server.base))
                    .header("accept", "text/event-stream"),
            )
            .await;
            if status != 401 || body["error"]["code"] != "unauthorized" {
                failures.push(format!("SSE {path} without a token: {status} {body}"));
            }
        }
    }
    assert!(failures.is_empty(), "not 401:\n{}", failures.join("\n"));
    // With a valid token those two are what they are.
    let (status, body) = server.get("/api/no/such/route", &server.admin).await;
    assert_eq!((status, &body["error"]["code"]), (404, &json!("not_found")));
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("/api/no/such/route"),
        "{body}"
    );
    let (status, body) = send(server.req(Method::PUT, "/api/me", Some(&server.admin))).await;
    assert_eq!(status, 405);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("/api/me"),
        "{body}"
    );

    // Nothing above had any effect.
    let (_, state) = server
        .get(&format!("/api/runtime/tasks/{t}/state"), &server.admin)
        .await;
    assert_ne!(state["state"], "cancelled");
    let (status, _) = server.get("/api/me", &server.admin).await;
    assert_eq!(status, 200, "the admin's token still works");
    let (status, failed) = server
        .get("/api/audit/events?event_type=auth.failed", &server.admin)
        .await;
    assert_eq!(status, 200);
    assert!(
        !failed.as_array().unwrap().is_empty(),
        "bad tokens are audited as auth.failed"
    );
    server.stop().await;
}

/// Granting a viewer the permissions a submit needs lets them submit, over
/// REST and WebSocket; `task:submit` is granted first, as the contract's
/// example does, and the user view shows the grant.
#[tokio::test]
async fn a_grant_lets_a_viewer_submit() {
    let server = TestServer::spawn().await;
    let token = server.user("viewer@grant.test", &["viewer"]).await;
    let submit = json!({"agent_type": "echo", "prompt": "granted"});
    let (status, body) = server
        .post("/api/runtime/tasks/submit", &token, submit.clone())
        .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "forbidden");

    let (status, view) = server
        .post(
            "/api/admin/users/viewer@grant.test/permissions",
            &server.admin,
            json!({"grant": "task:submit"}),
        )
        .await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["user_id"], "viewer@grant.test");
    assert!(strings(&view["permissions"]).contains("task:submit"));
    assert!(strings(&view["grants"]).contains("task:submit"));

    // Whatever else the table says a submit needs, granted one by one: the
    // submit stays refused, naming what is missing, until the last one.
    let mut have: BTreeSet<Permission> = Role::Viewer.permissions().iter().copied().collect();
    have.insert(Permission::TaskSubmit);
    let still_missing: Vec<Permission> = Action::TaskSubmit
        .required()
        .iter()
        .copied()
        .filter(|p| !have.contains(p))
        .collect();
    for p in &still_missing {
        let (status, body) = server
            .post("/api/runtime/tasks/submit", &token, submit.clone())
            .await;
        assert_eq!(status, 403, "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains(p.as_str()),
            "the refusal names {p}: {body}"
        );
        let (status, view) = server
            .post(
                "/api/admin/users/viewer@grant.test/permissions",
                &server.admin,
                json!({"grant": p.as_str()}),
            )
            .await;
        assert_eq!(status, 200, "{view}");
    }

    let task = server.submit(&token, submit.clone()).await;
    let done = server
        .wait_terminal(&token, task["task_id"].as_str().unwrap())
        .await;
    assert_eq!(done["state"], "completed");
    let (mut ws, hello) = server.ws(&token, json!({})).await;
    assert!(strings(&hello["permissions"]).contains("task:submit"));
    let reply = ws
        .call(json!({"op": "task.submit", "agent_type": "echo", "prompt": "over ws"}))
        .await;
    assert_eq!(reply["ok"], true, "{reply}");

    // A revoke undoes the grant, for a socket that is already open too.
    let (status, view) = server
        .post(
            "/api/admin/users/viewer@grant.test/permissions",
            &server.admin,
            json!({"revoke": "task:submit"}),
        )
        .await;
    assert_eq!(status, 200, "{view}");
    assert!(!strings(&view["permissions"]).contains("task:submit"));
    let (status, _) = server
        .post("/api/runtime/tasks/submit", &token, submit)
        .await;
    assert_eq!(status, 403);
    let reply = ws
        .call(json!({"op": "task.submit", "agent_type": "echo", "prompt": "again"}))
        .await;
    assert_eq!(reply["error"]["code"], "forbidden", "{reply}");
    server.stop().await;
}

/// Revoking `task:view` takes task reading away from a developer on every
/// route and on an open socket, without touching the rest of their role;
/// granting it back restores it.
#[tokio::test]
async fn a_revoke_takes_task_reading_from_a_developer() {
    let server = TestServer::spawn().await;
    let token = server.user("dev@revoke.test", &["developer"]).await;
    let task = server
        .submit(&token, json!({"agent_type": "echo", "prompt": "readable"}))
        .await;
    let id = task["task_id"].as_str().unwrap().to_owned();
    server.wait_terminal(&token, &id).await;
    let (mut ws, _) = server.ws(&token, json!({})).await;
    assert_eq!(
        ws.call(json!({"op": "task.get", "task_id": id})).await["ok"],
        true
    );

    let (status, view) = server
        .post(
            "/api/admin/users/dev@revoke.test/permissions",
            &server.admin,
            json!({"revoke": "task:view"}),
        )
        .await;
    assert_eq!(status, 200, "{view}");
    assert!(!strings(&view["permissions"]).contains("task:view"));
    assert!(strings(&view["revokes"]).contains("task:view"));
    assert!(strings(&view["roles"]).contains("developer"));
    let (_, me) = server.get("/api/me", &token).await;
    assert!(!strings(&me["permissions"]).contains("task:view"));

    for path in [
        format!("/api/runtime/tasks/{id}/state"),
        format!("/api/runtime/tasks/{id}"),
        "/api/runtime/tasks".to_owned(),
    ] {
        let (status, body) = server.get(&path, &token).await;
        assert_eq!(status, 403, "{path}: {body}");
        assert_eq!(body["error"]["code"], "forbidden");
    }
    for op in [
        json!({"op": "task.get", "task_id": id}),
        json!({"op": "task.list"}),
    ] {
        let reply = ws.call(op).await;
        assert_eq!(reply["error"]["code"], "forbidden", "{reply}");
    }
    // The rest of the role is untouched: a developer still submits.
    server
        .submit(
            &token,
            json!({"agent_type": "echo", "prompt": "still allowed"}),
        )
        .await;

    let (status, _) = server
        .post(
            "/api/admin/users/dev@revoke.test/permissions",
            &server.admin,
            json!({"grant": "task:view"}),
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = server
        .get(&format!("/api/runtime/tasks/{id}/state"), &token)
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        ws.call(json!({"op": "task.get", "task_id": id})).await["ok"],
        true
    );
    server.stop().await;
}

/// A refusal, over REST or WebSocket, writes a `permission.denied` audit
/// record naming the user, the action and why, with status `denied`.
#[tokio::test]
async fn a_denial_is_audited() {
    let server = TestServer::spawn().await;
    let token = server.user("guest@audit.test", &["guest"]).await;
    let (status, _) = server
        .post(
            "/api/runtime/tasks/submit",
            &token,
            json!({"agent_type": "echo", "prompt": "no"}),
        )
        .await;
    assert_eq!(status, 403);
    let (mut ws, _) = server.ws(&token, json!({})).await;
    let reply = ws.call(json!({"op": "task.list"})).await;
    assert_eq!(reply["error"]["code"], "forbidden");

    let (status, records) = server
        .get(
            "/api/audit/events?event_type=permission.denied&user_id=guest@audit.test",
            &server.admin,
        )
        .await;
    assert_eq!(status, 200, "{records}");
    let records = records.as_array().unwrap();
    let actions: BTreeSet<&str> = records
        .iter()
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    assert!(
        actions.contains(Action::TaskSubmit.as_str())
            && actions.contains(Action::TaskView.as_str()),
        "{records:?}"
    );
    for r in records {
        assert_eq!(r["event_type"], "permission.denied");
        assert_eq!(r["user_id"], "guest@audit.test");
        assert_eq!(r["status"], "denied");
        assert!(
            r["details"]["reason"].as_str().unwrap().contains("task:"),
            "{r}"
        );
    }
    server.stop().await;
}
