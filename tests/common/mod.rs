//! Shared test harness: a real node on port 0 (in-process or as the real
//! binary), an HTTP client, and a WebSocket client that keeps events apart
//! from replies.

#![allow(dead_code)] // each test binary uses a different part of the harness

pub mod chaos;
pub mod durable;
pub mod host;
pub mod resume_client;
pub mod tls;

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use switchboard::config::{Config, FileConfig};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The bootstrap admin's token in every test node.
pub const ADMIN_TOKEN: &str = "sb_test_admin_token";

/// How long a test waits for anything before failing (never a sleep).
pub const WAIT: Duration = Duration::from_secs(30);

/// A node running inside the test process.
pub struct TestServer {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// `ws://127.0.0.1:PORT/ws`.
    pub ws_url: String,
    /// The admin's token.
    pub admin: String,
    /// The database URL.
    pub database_url: String,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
    dir: Option<tempfile::TempDir>,
}

impl TestServer {
    /// A node on a fresh SQLite file.
    pub async fn spawn() -> Self {
        Self::spawn_with(FileConfig::default()).await
    }

    /// A node on a fresh SQLite file with this config file content.
    pub async fn spawn_with(file: FileConfig) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("test.db").display());
        let mut server = Self::spawn_on(&url, file).await;
        server.dir = Some(dir);
        server
    }

    /// A node on an existing database (for restarts).
    pub async fn spawn_on(database_url: &str, file: FileConfig) -> Self {
        let listener = switchboard::bind("127.0.0.1:0".parse().unwrap()).expect("bind");
        let addr = listener.local_addr().unwrap();
        let mut config = Config::new(database_url);
        config.admin_token = Some(ADMIN_TOKEN.into());
        config.file = file;
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(switchboard::serve(listener, config, async {
            let _ = rx.await;
        }));
        let server = TestServer {
            base: format!("http://{addr}"),
            ws_url: format!("ws://{addr}/ws"),
            admin: ADMIN_TOKEN.into(),
            database_url: database_url.to_owned(),
            shutdown: Some(tx),
            handle: Some(handle),
            dir: None,
        };
        server.wait_ready().await;
        server
    }

    async fn wait_ready(&self) {
        // The listener is bound before serve() starts, so connections queue;
        // this waits for the store to be opened and migrated.
        let client = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Ok(r) = client.get(format!("{}/readyz", self.base)).send().await {
                if r.status().is_success() {
                    return;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "server did not become ready"
            );
            tokio::task::yield_now().await;
        }
    }

    /// Shut down gracefully and wait; keeps the database for a restart.
    pub async fn stop(mut self) -> Option<tempfile::TempDir> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            tokio::time::timeout(WAIT, h)
                .await
                .expect("graceful shutdown took too long")
                .expect("serve task panicked")
                .expect("serve returned an error");
        }
        self.dir.take()
    }

    /// An HTTP request builder with the given token.
    pub fn req(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
    ) -> reqwest::RequestBuilder {
        let mut r = http().request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r
    }

    /// GET as `token`: (status, JSON body).
    pub async fn get(&self, path: &str, token: &str) -> (u16, Value) {
        send(self.req(reqwest::Method::GET, path, Some(token))).await
    }

    /// POST JSON as `token`.
    pub async fn post(&self, path: &str, token: &str, body: Value) -> (u16, Value) {
        send(
            self.req(reqwest::Method::POST, path, Some(token))
                .json(&body),
        )
        .await
    }

    /// DELETE as `token`.
    pub async fn delete(&self, path: &str, token: &str) -> (u16, Value) {
        send(self.req(reqwest::Method::DELETE, path, Some(token))).await
    }

    /// Create a user with `roles` and return their token.
    pub async fn user(&self, user_id: &str, roles: &[&str]) -> String {
        let (status, body) = self
            .post(
                "/api/admin/users",
                &self.admin,
                json!({"user_id": user_id, "roles": roles}),
            )
            .await;
        assert_eq!(status, 201, "create user: {body}");
        body["token"].as_str().unwrap().to_owned()
    }

    /// Submit an echo task over REST and return its submit response.
    pub async fn submit(&self, token: &str, body: Value) -> Value {
        let (status, body) = self.post("/api/runtime/tasks/submit", token, body).await;
        assert_eq!(status, 200, "submit: {body}");
        body
    }

    /// Poll a task's state until it is terminal (REST only; WebSocket tests
    /// watch events instead).
    pub async fn wait_terminal(&self, token: &str, task_id: &str) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let (status, body) = self
                .get(&format!("/api/runtime/tasks/{task_id}/state"), token)
                .await;
            assert_eq!(status, 200, "{body}");
            if ["completed", "failed", "cancelled"].contains(&body["state"].as_str().unwrap()) {
                return body;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "task never ended: {body}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Poll until a task is in `state`.
    pub async fn wait_state(&self, token: &str, task_id: &str, state: &str) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let (_, body) = self
                .get(&format!("/api/runtime/tasks/{task_id}/state"), token)
                .await;
            if body["state"] == state {
                return body;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "task never reached {state}: {body}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A WebSocket client that has said hello with `token` (and `extra` fields).
    pub async fn ws(&self, token: &str, extra: Value) -> (WsClient, Value) {
        let mut ws = WsClient::connect(&self.ws_url).await;
        let mut hello = json!({"op": "hello", "token": token});
        if let Value::Object(m) = extra {
            for (k, v) in m {
                hello[k] = v;
            }
        }
        let reply = ws.call(hello).await;
        assert_eq!(reply["ok"], true, "hello failed: {reply}");
        (ws, reply["result"].clone())
    }
}

/// A plain HTTP client.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(WAIT)
        .build()
        .expect("client")
}

/// Send and decode (status, JSON or null).
pub async fn send(r: reqwest::RequestBuilder) -> (u16, Value) {
    let resp = r.send().await.expect("request");
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// A WebSocket client that buffers events while waiting for replies.
pub struct WsClient {
    stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    events: VecDeque<Value>,
}

/// How a connection ended.
#[derive(Debug, PartialEq)]
pub enum Closed {
    /// A close frame with this code.
    Code(u16),
    /// The stream ended without one.
    Eof,
}

impl WsClient {
    /// Connect (no hello).
    pub async fn connect(url: &str) -> Self {
        let (stream, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("ws connect");
        WsClient {
            stream,
            next_id: 0,
            events: VecDeque::new(),
        }
    }

    /// Send raw text.
    pub async fn send_text(&mut self, text: &str) {
        self.stream
            .send(Message::text(text))
            .await
            .expect("ws send");
    }

    /// Send raw text; an error once the server has closed.
    pub async fn try_send_text(&mut self, text: &str) -> Result<(), String> {
        self.stream
            .send(Message::text(text))
            .await
            .map_err(|e| e.to_string())
    }

    /// Send a raw message.
    pub async fn send_raw(&mut self, msg: Message) {
        self.stream.send(msg).await.expect("ws send");
    }

    /// Read the next JSON frame (any kind).
    pub async fn read(&mut self) -> Value {
        loop {
            let msg = tokio::time::timeout(WAIT, self.stream.next())
                .await
                .expect("timed out waiting for a frame")
                .expect("connection ended")
                .expect("ws error");
            match msg {
                Message::Text(t) => {
                    return serde_json::from_str(t.as_str()).expect("frame is JSON");
                }
                Message::Close(c) => panic!("closed unexpectedly: {c:?}"),
                _ => continue,
            }
        }
    }

    /// Send an op with a fresh id and return its reply (buffering events).
    pub async fn call(&mut self, mut op: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        op["id"] = json!(id);
        self.send_text(&op.to_string()).await;
        self.reply_to(json!(id)).await
    }

    /// Wait for the reply with this id.
    pub async fn reply_to(&mut self, id: Value) -> Value {
        loop {
            let frame = self.read().await;
            match frame["op"].as_str() {
                Some("reply") if frame["id"] == id => return frame,
                Some("event") => self.events.push_back(frame),
                _ => panic!("unexpected frame while waiting for reply {id}: {frame}"),
            }
        }
    }

    /// Send an op and return its `result`, panicking on an error reply.
    pub async fn ok(&mut self, op: Value) -> Value {
        let reply = self.call(op.clone()).await;
        assert_eq!(reply["ok"], true, "{op} failed: {reply}");
        reply["result"].clone()
    }

    /// Events read while waiting for replies, not yet taken.
    pub fn buffered(&self) -> &VecDeque<Value> {
        &self.events
    }

    /// The next event (buffered first).
    pub async fn event(&mut self) -> Value {
        if let Some(e) = self.events.pop_front() {
            return e;
        }
        let frame = self.read().await;
        assert_eq!(
            frame["op"], "event",
            "unexpected frame while waiting for an event: {frame}"
        );
        frame
    }

    /// Events until one matches `done` (inclusive).
    pub async fn events_until(&mut self, mut done: impl FnMut(&Value) -> bool) -> Vec<Value> {
        let mut out = Vec::new();
        loop {
            let e = self.event().await;
            let stop = done(&e);
            out.push(e);
            if stop {
                return out;
            }
        }
    }

    /// Events of one task until it is terminal.
    pub async fn until_terminal(&mut self, task_id: &str) -> Vec<Value> {
        self.events_until(|e| {
            e["task_id"] == task_id
                && e["type"] == "task.state"
                && ["completed", "failed", "cancelled"]
                    .contains(&e["data"]["state"].as_str().unwrap_or(""))
        })
        .await
    }

    /// Wait for the server to close; returns the close code.
    pub async fn closed(&mut self) -> Closed {
        loop {
            match tokio::time::timeout(WAIT, self.stream.next())
                .await
                .expect("timed out waiting for close")
            {
                None | Some(Err(_)) => return Closed::Eof,
                Some(Ok(Message::Close(Some(frame)))) => return Closed::Code(frame.code.into()),
                Some(Ok(Message::Close(None))) => return Closed::Eof,
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(t.as_str()).unwrap_or(Value::Null);
                    if v["op"] == "event" {
                        self.events.push_back(v);
                    }
                }
                Some(Ok(_)) => {}
            }
        }
    }
}

/// The seqs of a list of events.
pub fn seqs(events: &[Value]) -> Vec<i64> {
    events.iter().map(|e| e["seq"].as_i64().unwrap()).collect()
}

/// The real binary running as a child process (for kill -9 restarts and
/// command-line tests).
pub struct BinaryServer {
    pub base: String,
    pub ws_url: String,
    pub child: tokio::process::Child,
    /// Everything the node has written to stderr so far.
    pub log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl BinaryServer {
    /// Start `switchboard serve` on port 0 over `db` and wait for its
    /// `listening on http://ADDR` line.
    pub async fn start(db: &Path, extra_args: &[&str]) -> Self {
        Self::start_at(db, "127.0.0.1:0", extra_args).await
    }

    /// Start `switchboard serve` on a given address (to restart a node on
    /// the port its clients know; see [`free_port`]).
    pub async fn start_at(db: &Path, listen: &str, extra_args: &[&str]) -> Self {
        Self::start_on(&format!("sqlite://{}", db.display()), listen, extra_args).await
    }

    /// Start `switchboard serve` on port 0 over any database URL (e.g. a
    /// [`PgDb`]'s), with extra arguments such as `--node-id` and `--config`.
    pub async fn start_url(database_url: &str, extra_args: &[&str]) -> Self {
        Self::start_on(database_url, "127.0.0.1:0", extra_args).await
    }

    /// Start `switchboard serve` on `listen` over `database_url`.
    pub async fn start_on(database_url: &str, listen: &str, extra_args: &[&str]) -> Self {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .arg("serve")
            .args(["--listen", listen])
            .arg("--database")
            .arg(database_url)
            .args(extra_args)
            .env("SWITCHBOARD_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("SWITCHBOARD_LOG", "info")
            .env_remove("DATABASE_URL")
            .env_remove("SWITCHBOARD_DATABASE_URL")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn switchboard");
        let stderr = child.stderr.take().unwrap();
        let mut lines = BufReader::new(stderr).lines();
        let mut started = String::new();
        let addr = tokio::time::timeout(WAIT, async {
            while let Ok(Some(line)) = lines.next_line().await {
                started.push_str(&line);
                started.push('\n');
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    return rest.split_whitespace().next().unwrap().to_owned();
                }
            }
            panic!("switchboard exited before listening");
        })
        .await
        .expect("switchboard did not start in time");
        // Keep draining stderr so the child never blocks on a full pipe.
        let log = std::sync::Arc::new(std::sync::Mutex::new(started));
        let sink = log.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(mut l) = sink.lock() {
                    l.push_str(&line);
                    l.push('\n');
                }
            }
        });
        BinaryServer {
            log,
            base: format!("http://{addr}"),
            ws_url: format!("ws://{addr}/ws"),
            child,
        }
    }

    /// SIGKILL: no graceful anything.
    pub async fn kill9(mut self) {
        self.child.kill().await.expect("kill");
    }
}

/// A path for a database file inside `dir`.
pub fn db_in(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("node.db")
}

/// A port that was free a moment ago, for a node that must come back on the
/// same address after a restart.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind port 0")
        .local_addr()
        .unwrap()
        .port()
}

/// A fresh PostgreSQL database for one test, dropped when this is dropped,
/// so that tests run in parallel without seeing each other's data.
pub struct PgDb {
    /// `postgres://.../sb_test_<random>`.
    pub url: String,
    name: String,
    admin_url: String,
}

impl PgDb {
    /// A fresh database on the server named by `SWITCHBOARD_TEST_POSTGRES_URL`.
    ///
    /// Without that variable this returns `None` after printing why (a
    /// laptop without PostgreSQL). With it, an unreachable server is a
    /// failure under `CI=true` (CI must never skip these tests) and a
    /// printed skip elsewhere.
    pub async fn create() -> Option<Self> {
        let in_ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
        let Some(admin_url) = std::env::var("SWITCHBOARD_TEST_POSTGRES_URL")
            .ok()
            .filter(|u| !u.is_empty())
        else {
            assert!(
                !in_ci,
                "CI=true but SWITCHBOARD_TEST_POSTGRES_URL is not set: the PostgreSQL tests must run in CI"
            );
            eprintln!("skipped: set SWITCHBOARD_TEST_POSTGRES_URL to run the PostgreSQL tests");
            return None;
        };
        use sqlx::Connection;
        let mut conn = match sqlx::PgConnection::connect(&admin_url).await {
            Ok(c) => c,
            Err(e) if in_ci => panic!("PostgreSQL at {admin_url} is unreachable under CI: {e}"),
            Err(e) => {
                eprintln!("skipped: PostgreSQL at {admin_url} is unreachable: {e}");
                return None;
            }
        };
        let name = format!("sb_test_{}", uuid::Uuid::new_v4().simple());
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .expect("create test database");
        let _ = conn.close().await;
        let url = match admin_url.rfind('/') {
            Some(i) if admin_url[..i].ends_with(|c: char| c != '/') => {
                let rest = &admin_url[i + 1..];
                let query = rest.find('?').map(|q| &rest[q..]).unwrap_or("");
                format!("{}/{name}{query}", &admin_url[..i])
            }
            _ => format!("{}/{name}", admin_url.trim_end_matches('/')),
        };
        Some(PgDb {
            url,
            name,
            admin_url,
        })
    }

    /// Run one SQL statement on the server's admin database (to cut
    /// connections, inspect `pg_stat_activity`, ...).
    pub async fn admin_exec(&self, sql: &str) -> u64 {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&self.admin_url)
            .await
            .expect("connect admin");
        let done = sqlx::query(sql).execute(&mut conn).await.expect(sql);
        let _ = conn.close().await;
        done.rows_affected()
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        // Drop runs outside async; a short-lived runtime on its own thread
        // does the cleanup without blocking the test's runtime.
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                use sqlx::Connection;
                if let Ok(mut conn) = sqlx::PgConnection::connect(&admin_url).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut conn)
                        .await;
                    let _ = conn.close().await;
                }
            });
        })
        .join();
    }
}

impl BinaryServer {
    /// GET as `token` on this node.
    pub async fn get(&self, path: &str, token: &str) -> (u16, Value) {
        send(
            http()
                .get(format!("{}{path}", self.base))
                .bearer_auth(token),
        )
        .await
    }

    /// POST JSON as `token` on this node.
    pub async fn post(&self, path: &str, token: &str, body: Value) -> (u16, Value) {
        send(
            http()
                .post(format!("{}{path}", self.base))
                .bearer_auth(token)
                .json(&body),
        )
        .await
    }

    /// A WebSocket client on this node that has said hello.
    pub async fn ws(&self, token: &str, extra: Value) -> (WsClient, Value) {
        let mut ws = WsClient::connect(&self.ws_url).await;
        let mut hello = json!({"op": "hello", "token": token});
        if let Value::Object(m) = extra {
            for (k, v) in m {
                hello[k] = v;
            }
        }
        let reply = ws.call(hello).await;
        assert_eq!(reply["ok"], true, "hello failed: {reply}");
        (ws, reply["result"].clone())
    }

    /// Poll a task on this node until `done` holds for its state body.
    pub async fn wait_task(
        &self,
        task_id: &str,
        within: Duration,
        mut done: impl FnMut(&Value) -> bool,
    ) -> Value {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let (_, body) = self
                .get(&format!("/api/runtime/tasks/{task_id}/state"), ADMIN_TOKEN)
                .await;
            if done(&body) {
                return body;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "task {task_id} did not get there in {within:?}: {body}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}
