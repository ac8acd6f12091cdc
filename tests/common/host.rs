//! Remote agent hosts for tests: the real `switchboard link` binary as a
//! child process, and a TCP proxy whose connections a test can cut.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use super::{ADMIN_TOKEN, WAIT, drain_lines, http, send};

/// A `switchboard link` process.
pub struct LinkHost {
    /// Its `--name`.
    pub name: String,
    /// The child.
    pub child: tokio::process::Child,
    /// Everything it wrote to stderr so far.
    pub log: Arc<Mutex<String>>,
    /// Its config and key live here.
    pub dir: tempfile::TempDir,
}

impl LinkHost {
    /// Start `switchboard link --server base --name name` with `config`
    /// (the text of its agent config file) and the admin's token.
    pub async fn start(base: &str, name: &str, config: &str) -> Self {
        Self::start_as(base, name, config, ADMIN_TOKEN).await
    }

    /// The same with another token.
    pub async fn start_as(base: &str, name: &str, config: &str, token: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        Self::start_in(dir, base, name, config, token)
    }

    /// Start in an existing directory (to restart a host with its key).
    pub fn start_in(
        dir: tempfile::TempDir,
        base: &str,
        name: &str,
        config: &str,
        token: &str,
    ) -> Self {
        Self::start_with(dir, base, name, config, token, &[])
    }

    /// Start with extra arguments (such as `--ca-cert FILE`).
    pub fn start_with(
        dir: tempfile::TempDir,
        base: &str,
        name: &str,
        config: &str,
        token: &str,
        extra: &[&str],
    ) -> Self {
        let file = dir.path().join("agents.toml");
        std::fs::write(&file, config).expect("write host config");
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .arg("link")
            .args(["--server", base, "--token", token, "--name", name])
            .arg("--config")
            .arg(&file)
            .args(extra)
            .env("XDG_CONFIG_HOME", dir.path())
            .env_remove("SWITCHBOARD_SERVER")
            .env_remove("SWITCHBOARD_TOKEN")
            .env_remove("SWITCHBOARD_CA_CERT")
            .env_remove("SWITCHBOARD_CONFIG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn switchboard link");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        drain_lines(BufReader::new(stderr).lines(), log.clone());
        LinkHost {
            name: name.to_owned(),
            child,
            log,
            dir,
        }
    }

    /// What it has said so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Wait until its stderr has said `what` at least `times` times.
    pub async fn wait_log(&self, what: &str, times: usize) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.log().matches(what).count() < times {
            assert!(
                tokio::time::Instant::now() < deadline,
                "host {} never said {what:?} {times} time(s); it said:\n{}",
                self.name,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Send SIGTERM and wait for the exit status.
    pub async fn terminate(mut self) -> (std::process::ExitStatus, String) {
        let pid = self.child.id().expect("running") as i32;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        )
        .expect("SIGTERM");
        let status = tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("the host did not stop in time")
            .expect("wait");
        // Let the log reader catch the last lines.
        tokio::time::sleep(Duration::from_millis(50)).await;
        (status, self.log())
    }

    /// Wait for the process to exit by itself.
    pub async fn exited(mut self) -> (std::process::ExitStatus, String) {
        let status = tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("the host did not exit")
            .expect("wait");
        tokio::time::sleep(Duration::from_millis(50)).await;
        (status, self.log())
    }

    /// SIGKILL: no goodbye.
    pub async fn kill9(mut self) -> tempfile::TempDir {
        self.child.kill().await.expect("kill");
        self.dir
    }

    /// The host's key file (for restarting it with the same identity).
    pub fn key_dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }
}

/// Poll `GET /api/runtime/hosts` on `base` until `done` holds for the list.
pub async fn wait_hosts(base: &str, mut done: impl FnMut(&[Value]) -> bool) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, body) = send(
            http()
                .get(format!("{base}/api/runtime/hosts"))
                .bearer_auth(ADMIN_TOKEN),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let list = body.as_array().cloned().unwrap_or_default();
        if done(&list) {
            return list;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "hosts never got there: {body}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Wait until host `name` is listed as linked on `base`.
pub async fn wait_linked(base: &str, name: &str) -> Value {
    let list = wait_hosts(base, |l| {
        l.iter()
            .any(|h| h["name"] == name && h["state"] == "linked")
    })
    .await;
    list.into_iter().find(|h| h["name"] == name).unwrap()
}

/// A TCP proxy to a node whose live connections can be cut at once.
pub struct Proxy {
    /// `http://127.0.0.1:PORT`, to give a host as `--server`.
    pub base: String,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Proxy {
    /// A proxy in front of `target` (`host:port`).
    pub async fn start(target: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let list = conns.clone();
        let target = target.to_owned();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let target = target.clone();
                let pipe = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                list.lock().unwrap().push(pipe);
            }
        });
        Proxy {
            base,
            conns,
            accept,
        }
    }

    /// Cut every connection open now (both sockets are dropped).
    pub fn cut(&self) {
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

/// Whether process `pid` is gone (or a zombie).
pub fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}
