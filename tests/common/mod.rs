//! Shared test harness: a real node on port 0 (in-process or as the real
//! binary), an HTTP client, and a WebSocket client that keeps events apart
//! from replies.

#![allow(dead_code)] // each test binary uses a different part of the harness

mod binary;
pub mod chaos;
pub mod durable;
pub mod host;
mod pg;
pub mod resume_client;
pub mod tasks;
pub mod tls;
mod ws;

use std::time::Duration;

use serde_json::{Value, json};
use switchboard::config::{Config, FileConfig};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

// Each test binary uses some of these; the others are unused there.
#[allow(unused_imports)]
pub use binary::{BinaryServer, db_in, drain_lines, free_port};
#[allow(unused_imports)]
pub use pg::PgDb;
#[allow(unused_imports)]
pub use ws::{Closed, WsClient, assert_gapless, output_text, seqs, state_names};

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

    /// Cancel a task as `token` over REST: (status, JSON body).
    pub async fn cancel(&self, token: &str, task_id: &str) -> (u16, Value) {
        let path = format!("/api/runtime/tasks/{task_id}/cancel");
        self.post(&path, token, json!({})).await
    }

    /// DELETE as `token`.
    pub async fn delete(&self, path: &str, token: &str) -> (u16, Value) {
        send(self.req(reqwest::Method::DELETE, path, Some(token))).await
    }

    /// The Prometheus text of `GET /metrics`.
    pub async fn metrics(&self) -> String {
        let r = self.req(reqwest::Method::GET, "/metrics", None);
        r.send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text")
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
        self.poll_task(token, task_id, "never ended", |status, body| {
            assert_eq!(status, 200, "{body}");
            ["completed", "failed", "cancelled"].contains(&body["state"].as_str().unwrap())
        })
        .await
    }

    /// Poll until a task is in `state`.
    pub async fn wait_state(&self, token: &str, task_id: &str, state: &str) -> Value {
        let what = format!("never reached {state}");
        self.poll_task(token, task_id, &what, |_, body| body["state"] == state)
            .await
    }

    /// Poll a task's state as `token` until `done` holds for the answer's
    /// status and body; past [`WAIT`], fail saying the task `what`.
    async fn poll_task(
        &self,
        token: &str,
        task_id: &str,
        what: &str,
        mut done: impl FnMut(u16, &Value) -> bool,
    ) -> Value {
        let path = format!("/api/runtime/tasks/{task_id}/state");
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let (status, body) = self.get(&path, token).await;
            if done(status, &body) {
                return body;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "task {what}: {body}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A WebSocket client that has said hello with `token` (and `extra` fields).
    pub async fn ws(&self, token: &str, extra: Value) -> (WsClient, Value) {
        WsClient::hello(&self.ws_url, token, extra).await
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
