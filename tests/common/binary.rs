//! The real `switchboard` binary as a child process, and the paths and
//! ports a restartable node needs.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::ChildStderr;

use super::{ADMIN_TOKEN, WAIT, WsClient, http, send};

/// The real binary running as a child process (for kill -9 restarts and
/// command-line tests).
pub struct BinaryServer {
    pub base: String,
    pub ws_url: String,
    pub child: tokio::process::Child,
    /// Everything the node has written to stderr so far.
    pub log: Arc<Mutex<String>>,
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
        let log = Arc::new(Mutex::new(started));
        drain_lines(lines, log.clone());
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

/// Keep appending a child's stderr lines to `log`, so that the child never
/// blocks on a full pipe and a test can read what it said.
pub fn drain_lines(mut lines: Lines<BufReader<ChildStderr>>, log: Arc<Mutex<String>>) {
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Ok(mut l) = log.lock() {
                l.push_str(&line);
                l.push('\n');
            }
        }
    });
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

    /// Cancel a task as `token` over REST: (status, JSON body).
    pub async fn cancel(&self, token: &str, task_id: &str) -> (u16, Value) {
        let path = format!("/api/runtime/tasks/{task_id}/cancel");
        self.post(&path, token, json!({})).await
    }

    /// A WebSocket client on this node that has said hello.
    pub async fn ws(&self, token: &str, extra: Value) -> (WsClient, Value) {
        WsClient::hello(&self.ws_url, token, extra).await
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
