//! The client commands of the binary, each against a real node: spawned as
//! a child process with its own HOME and XDG_CONFIG_HOME, judged by its
//! stdout, stderr and exit code. `https://` nodes are real nodes behind a
//! TLS terminator in this file, with certificates made by `rcgen`.

mod common;

use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::time::Duration;

use common::tls::{make_pki, tls_proxy};
use common::*;
use serde_json::{Value, json};
use switchboard::cli::CliError;
use switchboard::cli::client::Ws;
use switchboard::cli::config::Target;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

/// A user of the client with a home directory of their own.
struct Client {
    home: tempfile::TempDir,
    /// `--server URL --token T` for every command, unless empty.
    server: Vec<String>,
}

impl Client {
    fn new() -> Self {
        Client {
            home: tempfile::tempdir().expect("temp home"),
            server: Vec::new(),
        }
    }

    /// A client that passes `--server base --token token` to every command.
    fn of(base: &str, token: &str) -> Self {
        let mut c = Self::new();
        c.server = vec![
            "--server".into(),
            base.into(),
            "--token".into(),
            token.into(),
        ];
        c
    }

    fn config_file(&self) -> PathBuf {
        self.home.path().join("config/switchboard/servers.toml")
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchboard"));
        cmd.args(args)
            .args(&self.server)
            .env("HOME", self.home.path())
            .env("XDG_CONFIG_HOME", self.home.path().join("config"))
            .env("NO_COLOR", "1")
            .env_remove("SWITCHBOARD_SERVER")
            .env_remove("SWITCHBOARD_TOKEN")
            .env_remove("SWITCHBOARD_CA_CERT")
            .env_remove("SWITCHBOARD_CTRL_C_WINDOW_MS")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    }

    /// Run to completion.
    async fn run(&self, args: &[&str]) -> Out {
        let child = self.command(args).spawn().expect("spawn client");
        finish(child).await
    }

    /// Run with `input` on stdin.
    async fn run_with_stdin(&self, args: &[&str], input: &str) -> Out {
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .spawn()
            .expect("spawn client");
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(input.as_bytes()).await.unwrap();
        drop(stdin);
        finish(child).await
    }
}

/// A finished client run.
#[derive(Debug)]
struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Out {
    fn json_lines(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
            .collect()
    }
}

async fn finish(child: Child) -> Out {
    let Output {
        status,
        stdout,
        stderr,
    } = tokio::time::timeout(WAIT * 2, child.wait_with_output())
        .await
        .expect("client did not finish in time")
        .expect("client output");
    Out {
        code: status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

/// Read from a child's stdout until `n` bytes have come (the stream has
/// started); returns them.
async fn read_some(child: &mut Child, n: usize) -> Vec<u8> {
    let stdout = child.stdout.as_mut().unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    tokio::time::timeout(WAIT, async {
        while got.len() < n {
            let k = stdout.read(&mut buf).await.unwrap();
            assert!(k > 0, "stdout ended early");
            got.extend_from_slice(&buf[..k]);
        }
    })
    .await
    .expect("no output in time");
    got
}

fn sigint(child: &Child) {
    let pid = child.id().expect("running").to_string();
    let status = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .expect("kill -INT");
    assert!(status.success());
}

/// The newest task of `token`'s user.
async fn newest_task(server: &TestServer, token: &str) -> Value {
    let (status, tasks) = server.get("/api/runtime/tasks?limit=1", token).await;
    assert_eq!(status, 200, "{tasks}");
    tasks[0].clone()
}

/// `login` verifies the token, stores it with mode 0600, and later commands
/// use it without flags; a bad token stores nothing.
#[tokio::test]
async fn login_stores_the_token_privately() {
    use std::os::unix::fs::PermissionsExt;
    let server = TestServer::spawn().await;
    let c = Client::new();
    let bad = c
        .run(&["login", "--server", &server.base, "--token", "nope"])
        .await;
    assert_eq!(bad.code, 4, "{bad:?}");
    assert!(bad.stderr.contains("authentication failed"), "{bad:?}");
    assert!(!c.config_file().exists());

    let out = c
        .run(&[
            "login",
            "--server",
            &server.base,
            "--name",
            "test",
            "--token",
            ADMIN_TOKEN,
        ])
        .await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("admin"), "{out:?}");
    let meta = std::fs::metadata(c.config_file()).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let text = std::fs::read_to_string(c.config_file()).unwrap();
    assert!(
        text.contains(&server.base) && text.contains(ADMIN_TOKEN),
        "{text}"
    );
    assert!(text.contains("default = \"test\""), "{text}");

    // The stored default server and token are used without flags.
    let agents = c.run(&["agents", "--json"]).await;
    assert_eq!(agents.code, 0, "{agents:?}");
    let list: Value = serde_json::from_str(agents.stdout.trim()).unwrap();
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .any(|a| a["agent_type"] == "echo")
    );

    // A second server, token read from stdin; the default stays.
    let dev = server.user("dev@team.com", &["developer"]).await;
    let out = c
        .run_with_stdin(
            &["login", "--server", &server.base, "--name", "dev"],
            &format!("{dev}\n"),
        )
        .await;
    assert_eq!(out.code, 0, "{out:?}");
    let text = std::fs::read_to_string(c.config_file()).unwrap();
    assert!(
        text.contains(&dev) && text.contains("default = \"test\""),
        "{text}"
    );
    let me = c.run(&["--server", "dev", "run", "echo", "as dev"]).await;
    assert_eq!(me.code, 0, "{me:?}");
    server.stop().await;
}

/// `run` streams the echo output to stdout, states to stderr, and exits 0;
/// a `fail` param exits 1; a prompt of `-` is read from stdin.
#[tokio::test]
async fn run_streams_output_and_exits_by_state() {
    let server = TestServer::spawn().await;
    let c = Client::of(&server.base, ADMIN_TOKEN);
    let prompt = "hello from the command line, in small chunks";
    let out = c
        .run(&["run", "echo", prompt, "--param", "chunk_size=3"])
        .await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout, prompt);
    assert!(
        out.stderr.contains("running") && out.stderr.contains("completed"),
        "{out:?}"
    );

    let out = c
        .run(&["run", "echo", "doomed", "--param", "fail=true"])
        .await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains("failed: echo was asked to fail"),
        "{out:?}"
    );

    let out = c
        .run_with_stdin(
            &["run", "echo", "-", "--params", r#"{"chunk_size": 2}"#],
            "from stdin\n",
        )
        .await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout, "from stdin\n");
    server.stop().await;
}

/// `--json` prints one event object per line: gapless seqs, the chunks
/// make the prompt, the last line is the terminal state.
#[tokio::test]
async fn run_json_lines_parse() {
    let server = TestServer::spawn().await;
    let c = Client::of(&server.base, ADMIN_TOKEN);
    let prompt = "json lines for scripts";
    let out = c
        .run(&["run", "--json", "echo", prompt, "--param", "chunk_size=5"])
        .await;
    assert_eq!(out.code, 0, "{out:?}");
    let lines = out.json_lines();
    assert!(lines.iter().all(|l| l["op"] == "event"));
    assert_gapless(&lines);
    assert_eq!(output_text(&lines), prompt);
    assert_eq!(lines.last().unwrap()["data"]["state"], "completed");

    let bad = c.run(&["run", "--json", "nope", "x"]).await;
    assert_eq!(bad.code, 7);
    let err: Value = serde_json::from_str(bad.stderr.trim()).unwrap();
    assert_eq!(err["error"]["code"], "unknown_agent");
    server.stop().await;
}

/// `--detach` prints the task id; `attach` prints the stored events and
/// follows the task to its end; `tasks` lists it.
#[tokio::test]
async fn detach_then_attach() {
    let server = TestServer::spawn().await;
    let c = Client::of(&server.base, ADMIN_TOKEN);
    let prompt = "attach to me later please";
    let out = c
        .run(&[
            "run",
            "echo",
            prompt,
            "--detach",
            "--param",
            "delay_ms=30",
            "--param",
            "chunk_size=2",
        ])
        .await;
    assert_eq!(out.code, 0, "{out:?}");
    let id = out.stdout.trim().to_owned();
    assert_eq!(id.len(), 36, "{out:?}");
    let attached = c.run(&["attach", &id]).await;
    assert_eq!(attached.code, 0, "{attached:?}");
    assert_eq!(attached.stdout, prompt);
    // Attaching to a finished task replays it.
    let again = c.run(&["attach", "--json", &id]).await;
    assert_eq!(again.code, 0);
    assert_eq!(
        again.json_lines().last().unwrap()["data"]["state"],
        "completed"
    );
    let tasks = c.run(&["tasks", "--state", "completed"]).await;
    assert!(tasks.stdout.contains(&id), "{tasks:?}");
    server.stop().await;
}

/// Ctrl-C cancels the task on the node, waits for `cancelled`, exits 130.
#[tokio::test]
async fn ctrl_c_cancels_the_task() {
    let server = TestServer::spawn().await;
    let c = Client::of(&server.base, ADMIN_TOKEN);
    let prompt = "x".repeat(400);
    let mut child = c
        .command(&[
            "run",
            "echo",
            &prompt,
            "--param",
            "chunk_size=1",
            "--param",
            "delay_ms=25",
        ])
        .spawn()
        .unwrap();
    read_some(&mut child, 3).await;
    sigint(&child);
    let out = finish(child).await;
    assert_eq!(out.code, 130, "{out:?}");
    assert!(out.stderr.contains("cancelled"), "{out:?}");
    let task = newest_task(&server, ADMIN_TOKEN).await;
    assert_eq!(task["state"], "cancelled", "{task}");
    server.stop().await;
}

/// The node is killed (-9) mid-stream and comes back on the same port and
/// database: the client reconnects, resumes after its last seq, and its
/// output is exactly what the node stored, with no chunk twice.
#[tokio::test]
async fn run_resumes_after_the_node_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let db = db_in(&dir);
    let addr = format!("127.0.0.1:{}", free_port());
    let node = BinaryServer::start_at(&db, &addr, &[]).await;
    let c = Client::of(&node.base, ADMIN_TOKEN);
    // Distinct chunks, so a duplicate would show.
    let prompt: String = (0..200).map(|i| format!("{i:03},")).collect();
    let mut child = c
        .command(&[
            "run",
            "echo",
            &prompt,
            "--param",
            "chunk_size=4",
            "--param",
            "delay_ms=20",
        ])
        .spawn()
        .unwrap();
    read_some(&mut child, 12).await;
    let base = node.base.clone();
    node.kill9().await;
    let node = BinaryServer::start_at(&db, &addr, &[]).await;
    assert_eq!(node.base, base);
    let out = finish(child).await;
    // The restart failed the running task; the client saw it end.
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("reconnected"), "{out:?}");

    let (_, tasks) = send(
        http()
            .get(format!("{base}/api/runtime/tasks?limit=1"))
            .bearer_auth(ADMIN_TOKEN),
    )
    .await;
    let id = tasks[0]["task_id"].as_str().unwrap();
    let (_, detail) = send(
        http()
            .get(format!("{base}/api/runtime/tasks/{id}"))
            .bearer_auth(ADMIN_TOKEN),
    )
    .await;
    let stored: String = detail["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["chunk"].as_str())
        .collect();
    // `read_some` took the first bytes off the pipe; the rest is in stdout.
    assert!(
        stored.len() >= 12 && prompt.starts_with(&stored),
        "{stored}"
    );
    assert_eq!(&stored[12..], out.stdout, "{out:?}");
    node.kill9().await;
}

/// `watch` replays a session from a seq and tails the audit log; `--json`
/// lines are the stream's events in order.
#[tokio::test]
async fn watch_session_and_audit() {
    let server = TestServer::spawn().await;
    let c = Client::of(&server.base, ADMIN_TOKEN);
    let out = c.run(&["run", "--json", "echo", "watch me"]).await;
    assert_eq!(out.code, 0);
    let events = out.json_lines();
    let session = events[0]["stream"]
        .as_str()
        .unwrap()
        .strip_prefix("session:")
        .unwrap()
        .to_owned();
    let n = events.len().to_string();
    let watched = c
        .run(&[
            "watch",
            "--json",
            "--session",
            &session,
            "--after-seq",
            "0",
            "--count",
            &n,
        ])
        .await;
    assert_eq!(watched.code, 0, "{watched:?}");
    assert_eq!(watched.json_lines(), events);

    let human = c
        .run(&[
            "watch",
            "--session",
            &session,
            "--after-seq",
            "0",
            "--count",
            &n,
        ])
        .await;
    assert!(human.stdout.contains("running → completed"), "{human:?}");

    let audit = c
        .run(&[
            "watch",
            "--audit",
            "--json",
            "--after-seq",
            "0",
            "--count",
            "3",
        ])
        .await;
    assert_eq!(audit.code, 0, "{audit:?}");
    let lines = audit.json_lines();
    assert_eq!(lines.len(), 3);
    assert!(lines.iter().all(|l| l["type"] == "audit"));
    assert_eq!(seqs(&lines), vec![1, 2, 3]);
    server.stop().await;
}

/// Clear errors and exit codes: node down, bad token, forbidden, unknown
/// agent, no server chosen.
#[tokio::test]
async fn errors_are_clear() {
    let server = TestServer::spawn().await;
    let down = format!("http://127.0.0.1:{}", free_port());
    let out = Client::of(&down, "t").run(&["run", "echo", "hi"]).await;
    assert_eq!(out.code, 3, "{out:?}");
    assert!(
        out.stderr
            .contains(&format!("cannot reach {down}: connection refused")),
        "{out:?}"
    );
    let out = Client::of(&down, "t").run(&["tasks"]).await;
    assert_eq!(out.code, 3, "{out:?}");

    let out = Client::of(&server.base, "wrong")
        .run(&["run", "echo", "hi"])
        .await;
    assert_eq!(out.code, 4, "{out:?}");
    assert!(out.stderr.contains("authentication failed"), "{out:?}");

    let viewer = server.user("viewer@team.com", &["viewer"]).await;
    let out = Client::of(&server.base, &viewer)
        .run(&["run", "echo", "hi"])
        .await;
    assert_eq!(out.code, 5, "{out:?}");
    assert!(out.stderr.contains("forbidden: "), "{out:?}");
    let out = Client::of(&server.base, &viewer)
        .run(&["user", "list"])
        .await;
    assert_eq!(out.code, 5, "{out:?}");

    let out = Client::of(&server.base, ADMIN_TOKEN)
        .run(&["run", "no-such-agent", "hi"])
        .await;
    assert_eq!(out.code, 7, "{out:?}");
    assert!(out.stderr.contains("unknown agent: "), "{out:?}");
    assert!(out.stderr.contains("no-such-agent"), "{out:?}");

    let out = Client::new().run(&["tasks"]).await;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("no server chosen"), "{out:?}");

    // This node has the device registry: an empty list, not an error.
    let out = Client::of(&server.base, ADMIN_TOKEN)
        .run(&["device", "list"])
        .await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("(none)"), "{out:?}");
    server.stop().await;
}

/// The admin user commands: add, list, role add/remove, grant, revoke,
/// token, token --revoke-all.
#[tokio::test]
async fn admin_user_commands() {
    let server = TestServer::spawn().await;
    let c = Client::of(&server.base, ADMIN_TOKEN);
    let out = c
        .run(&["user", "add", "ann@team.com", "--role", "viewer", "--json"])
        .await;
    assert_eq!(out.code, 0, "{out:?}");
    let created: Value = serde_json::from_str(out.stdout.trim()).unwrap();
    let token = created["token"].as_str().unwrap().to_owned();
    assert_eq!(created["roles"], json!(["viewer"]));

    let out = c.run(&["user", "list"]).await;
    assert!(
        out.stdout.contains("ann@team.com") && out.stdout.contains("viewer"),
        "{out:?}"
    );

    let out = c
        .run(&["user", "role", "ann@team.com", "add", "developer", "--json"])
        .await;
    assert_eq!(out.code, 0, "{out:?}");
    let u: Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert!(u["roles"].as_array().unwrap().contains(&json!("developer")));
    let out = c
        .run(&["user", "role", "ann@team.com", "remove", "viewer", "--json"])
        .await;
    let u: Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(u["roles"], json!(["developer"]));

    let out = c
        .run(&["user", "grant", "ann@team.com", "admin:system", "--json"])
        .await;
    let u: Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert!(
        u["permissions"]
            .as_array()
            .unwrap()
            .contains(&json!("admin:system")),
        "{u}"
    );
    let out = c
        .run(&["user", "revoke", "ann@team.com", "task:submit", "--json"])
        .await;
    let u: Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert!(
        !u["permissions"]
            .as_array()
            .unwrap()
            .contains(&json!("task:submit")),
        "{u}"
    );
    // Without task:submit, ann's run is forbidden.
    let out = Client::of(&server.base, &token)
        .run(&["run", "echo", "hi"])
        .await;
    assert_eq!(out.code, 5, "{out:?}");

    let out = c.run(&["user", "token", "ann@team.com"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let second = out.stdout.trim().to_owned();
    assert_eq!(
        Client::of(&server.base, &second)
            .run(&["agents"])
            .await
            .code,
        0
    );
    let out = c
        .run(&["user", "token", "ann@team.com", "--revoke-all"])
        .await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("revoked 2"), "{out:?}");
    assert_eq!(
        Client::of(&server.base, &second)
            .run(&["agents"])
            .await
            .code,
        4
    );
    server.stop().await;
}

/// `tasks`, `approve`, `deny`, `cancel`, `agents`, `skills`, `sessions`.
#[tokio::test]
async fn task_commands() {
    let server = TestServer::spawn().await;
    let c = Client::of(&server.base, ADMIN_TOKEN);
    let waiting = server
        .submit(
            ADMIN_TOKEN,
            json!({"agent_type": "echo", "prompt": "approve me", "params": {"wait": true}}),
        )
        .await;
    let id = waiting["task_id"].as_str().unwrap().to_owned();
    server.wait_state(ADMIN_TOKEN, &id, "waiting").await;
    let out = c.run(&["tasks", "--state", "waiting", "--json"]).await;
    let list: Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(list[0]["task_id"], id.as_str(), "{out:?}");
    let out = c.run(&["approve", &id]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(
        server.wait_terminal(ADMIN_TOKEN, &id).await["state"],
        "completed"
    );

    let denied = server
        .submit(
            ADMIN_TOKEN,
            json!({"agent_type": "echo", "prompt": "deny me", "params": {"wait": true}}),
        )
        .await;
    let id = denied["task_id"].as_str().unwrap().to_owned();
    server.wait_state(ADMIN_TOKEN, &id, "waiting").await;
    assert_eq!(c.run(&["deny", &id]).await.code, 0);
    assert_eq!(
        server.wait_terminal(ADMIN_TOKEN, &id).await["state"],
        "failed"
    );

    let slow = server
        .submit(
            ADMIN_TOKEN,
            json!({"agent_type": "echo", "prompt": "slow slow slow", "params": {"delay_ms": 1000}}),
        )
        .await;
    let id = slow["task_id"].as_str().unwrap().to_owned();
    let out = c.run(&["cancel", &id]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("cancelled"), "{out:?}");
    let again = c.run(&["cancel", &id]).await;
    assert_eq!(again.code, 7, "{again:?}");
    assert!(again.stderr.contains("invalid_transition"), "{again:?}");

    let agents = c.run(&["agents"]).await;
    assert!(agents.stdout.contains("echo"), "{agents:?}");
    assert_eq!(c.run(&["skills"]).await.code, 0);
    let sessions = c.run(&["sessions", "--json"]).await;
    let list: Value = serde_json::from_str(sessions.stdout.trim()).unwrap();
    assert!(!list.as_array().unwrap().is_empty());
    let missing = c
        .run(&["cancel", "00000000-0000-0000-0000-000000000000"])
        .await;
    assert_eq!(missing.code, 6, "{missing:?}");
    server.stop().await;
}

/// The console reads lines from stdin: a prompt is answered live, /agent
/// and /tasks work, /quit leaves with 0.
#[tokio::test]
async fn console_answers_each_line() {
    let server = TestServer::spawn().await;
    let c = Client::of(&server.base, ADMIN_TOKEN);
    let out = c
        .run_with_stdin(
            &["console"],
            "/agent nope\n/agent echo\nhello console\n/tasks\n/quit\n",
        )
        .await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("hello console"), "{out:?}");
    assert!(out.stderr.contains("no agent `nope`"), "{out:?}");
    assert!(out.stdout.contains("completed"), "{out:?}");
    // The history file sits beside the config.
    let history = c.home.path().join("config/switchboard/history");
    let text = tokio::time::timeout(Duration::from_secs(5), tokio::fs::read_to_string(history))
        .await
        .unwrap()
        .unwrap_or_default();
    assert!(text.contains("hello console"), "{text}");
    server.stop().await;
}

/// `watch` survives a node restart (kill -9, same port and database): the
/// events before and after come once each, with gapless seqs.
#[tokio::test]
async fn watch_resumes_after_the_node_restarts() {
    use tokio::io::AsyncBufReadExt;
    let dir = tempfile::tempdir().unwrap();
    let db = db_in(&dir);
    let addr = format!("127.0.0.1:{}", free_port());
    let node = BinaryServer::start_at(&db, &addr, &[]).await;
    let base = node.base.clone();
    let (status, session) = send(
        http()
            .post(format!("{base}/api/runtime/sessions"))
            .bearer_auth(ADMIN_TOKEN),
    )
    .await;
    assert_eq!(status, 200, "{session}");
    let sid = session["session_id"].as_str().unwrap().to_owned();
    let c = Client::of(&base, ADMIN_TOKEN);
    let mut child = c
        .command(&["watch", "--json", "--session", &sid, "--count", "10"])
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let submit = |prompt: &'static str| {
        let base = base.clone();
        let sid = sid.clone();
        async move {
            let (status, body) = send(
                http()
                    .post(format!("{base}/api/runtime/tasks/submit"))
                    .bearer_auth(ADMIN_TOKEN)
                    .json(&json!({"agent_type": "echo", "prompt": prompt, "session_id": sid})),
            )
            .await;
            assert_eq!(status, 200, "{body}");
        }
    };
    // The watcher is subscribed once the node lists it as present (it
    // registers after its cursor is in place).
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, present) = send(
            http()
                .get(format!("{base}/api/presence"))
                .bearer_auth(ADMIN_TOKEN),
        )
        .await;
        if present
            .as_array()
            .is_some_and(|p| p.iter().any(|x| x["session_id"] == sid.as_str()))
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "watcher never connected: {present}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    submit("before restart").await;
    let mut got = Vec::new();
    while got.len() < 5 {
        let line = tokio::time::timeout(WAIT, lines.next_line())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        got.push(serde_json::from_str::<Value>(&line).unwrap());
    }
    node.kill9().await;
    let node = BinaryServer::start_at(&db, &addr, &[]).await;
    submit("after restart").await;
    while let Some(line) = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .unwrap()
        .unwrap()
    {
        got.push(serde_json::from_str::<Value>(&line).unwrap());
    }
    let status = tokio::time::timeout(WAIT, child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0));
    assert_eq!(seqs(&got), (1..=10).collect::<Vec<_>>());
    let chunks: Vec<_> = got
        .iter()
        .filter_map(|e| e["data"]["chunk"].as_str())
        .collect();
    assert_eq!(chunks, ["before restart", "after restart"]);
    node.kill9().await;
}

/// Ctrl-C in `attach` only stops following: exit 130, the task goes on.
#[tokio::test]
async fn ctrl_c_in_attach_detaches() {
    let server = TestServer::spawn().await;
    let c = Client::of(&server.base, ADMIN_TOKEN);
    let prompt = "y".repeat(300);
    let task = server
        .submit(
            ADMIN_TOKEN,
            json!({"agent_type": "echo", "prompt": prompt, "params": {"chunk_size": 1, "delay_ms": 20}}),
        )
        .await;
    let id = task["task_id"].as_str().unwrap().to_owned();
    let mut child = c.command(&["attach", &id]).spawn().unwrap();
    read_some(&mut child, 3).await;
    sigint(&child);
    let out = finish(child).await;
    assert_eq!(out.code, 130, "{out:?}");
    assert!(out.stderr.contains("detached"), "{out:?}");
    let (_, state) = server
        .get(&format!("/api/runtime/tasks/{id}/state"), ADMIN_TOKEN)
        .await;
    assert!(
        ["running", "completed"].contains(&state["state"].as_str().unwrap()),
        "{state}"
    );
    server.stop().await;
}

/// `login --ca-cert` against an `https://` node stores the CA with the
/// server; then `run` (REST, then `wss://`), `watch` and `tasks` go through
/// TLS with no flags; `SWITCHBOARD_CA_CERT` works for a URL used directly.
#[tokio::test]
async fn https_node_with_a_private_ca() {
    let server = TestServer::spawn().await;
    let pki = make_pki("switchboard test CA");
    let proxy = tls_proxy(&server.base, &pki).await;
    let c = Client::new();
    let ca = c.home.path().join("ca.pem");
    std::fs::write(&ca, &pki.ca_pem).unwrap();
    let out = c
        .run(&[
            "login",
            "--server",
            &proxy.base,
            "--name",
            "tls",
            "--ca-cert",
            ca.to_str().unwrap(),
            "--token",
            ADMIN_TOKEN,
        ])
        .await;
    assert_eq!(out.code, 0, "{out:?}");
    let text = std::fs::read_to_string(c.config_file()).unwrap();
    assert!(
        text.contains(&proxy.base) && text.contains(&format!("ca_cert = \"{}\"", ca.display())),
        "{text}"
    );

    let prompt = "over https and wss, in chunks";
    let out = c
        .run(&["run", "echo", prompt, "--param", "chunk_size=4"])
        .await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout, prompt);
    assert!(out.stderr.contains("completed"), "{out:?}");

    let out = c.run(&["run", "--json", "echo", "watch me over tls"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let events = out.json_lines();
    let session = events[0]["stream"].as_str().unwrap()["session:".len()..].to_owned();
    let after = (events[0]["seq"].as_i64().unwrap() - 1).to_string();
    let watched = c
        .run(&[
            "watch",
            "--json",
            "--session",
            &session,
            "--after-seq",
            &after,
            "--count",
            &events.len().to_string(),
        ])
        .await;
    assert_eq!(watched.code, 0, "{watched:?}");
    assert_eq!(watched.json_lines(), events);
    let tasks = c.run(&["tasks", "--json"]).await;
    assert_eq!(tasks.code, 0, "{tasks:?}");
    assert_eq!(
        serde_json::from_str::<Value>(tasks.stdout.trim()).unwrap()[0]["state"],
        "completed"
    );

    // A URL used directly, the CA from the environment.
    let direct = Client::of(&proxy.base, ADMIN_TOKEN);
    let child = direct
        .command(&["run", "echo", "by url"])
        .env("SWITCHBOARD_CA_CERT", &ca)
        .spawn()
        .unwrap();
    let out = finish(child).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout, "by url");
    server.stop().await;
}

/// A certificate the client does not trust (no `--ca-cert`, or another
/// CA's) is a clear error with exit code 3, never a panic; nothing is
/// stored. A `--ca-cert` file without a certificate is a usage error (2).
#[tokio::test]
async fn untrusted_certificates_are_refused_clearly() {
    let server = TestServer::spawn().await;
    let pki = make_pki("switchboard test CA");
    let proxy = tls_proxy(&server.base, &pki).await;
    let c = Client::new();
    let login = ["login", "--server", &proxy.base, "--token", ADMIN_TOKEN];
    let out = c.run(&login).await;
    assert_eq!(out.code, 3, "{out:?}");
    assert!(
        out.stderr.contains(&format!(
            "cannot connect securely to {}: the node's TLS certificate is not trusted",
            proxy.base
        )) && out.stderr.contains("--ca-cert"),
        "{out:?}"
    );
    assert!(!out.stderr.contains("panicked"), "{out:?}");
    assert!(!c.config_file().exists());

    let other = c.home.path().join("other-ca.pem");
    std::fs::write(&other, make_pki("some other CA").ca_pem).unwrap();
    let out = Client::of(&proxy.base, ADMIN_TOKEN)
        .run(&[
            "run",
            "--json",
            "--ca-cert",
            other.to_str().unwrap(),
            "echo",
            "hi",
        ])
        .await;
    assert_eq!(out.code, 3, "{out:?}");
    let err: Value = serde_json::from_str(out.stderr.trim()).unwrap();
    assert_eq!(err["error"]["code"], "tls", "{out:?}");
    // The socket (`wss://`) says the same as REST.
    let target = Target::new(proxy.base.clone(), ADMIN_TOKEN.into(), Some(&other)).unwrap();
    match Ws::connect(&target, None, None).await {
        Err(e @ CliError::Tls { .. }) => assert!(e.to_string().contains("--ca-cert"), "{e}"),
        Err(e) => panic!("not a TLS error: {e:?}"),
        Ok(_) => panic!("connected through an untrusted certificate"),
    }

    let junk = c.home.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate\n").unwrap();
    let mut args = login.to_vec();
    args.extend(["--ca-cert", junk.to_str().unwrap()]);
    let out = c.run(&args).await;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("junk.pem"), "{out:?}");
    assert!(out.stderr.contains("no certificate"), "{out:?}");
    server.stop().await;
}

/// The session id the client config remembers for `user` on `base`.
fn remembered(c: &Client, base: &str, user: &str) -> Option<String> {
    let text = std::fs::read_to_string(c.config_file()).ok()?;
    let config: toml::Table = toml::from_str(&text).unwrap();
    config
        .get("sessions")?
        .get(base)?
        .get(user)?
        .as_str()
        .map(str::to_owned)
}

/// `run`, `console` and `watch --audit` reuse one session per (node, user),
/// remembered in the 0600 config file; a remembered session that was ended,
/// or that the node does not know, is replaced by a new one.
#[tokio::test]
async fn commands_reuse_one_session() {
    use std::os::unix::fs::PermissionsExt;
    let server = TestServer::spawn().await;
    let dev = server.user("dev@team.com", &["developer"]).await;
    let c = Client::of(&server.base, &dev);
    for prompt in ["first", "second"] {
        let out = c.run(&["run", "echo", prompt]).await;
        assert_eq!(out.code, 0, "{out:?}");
        assert_eq!(out.stdout, prompt);
    }
    let out = c
        .run_with_stdin(&["console"], "third, from the console\n/quit\n")
        .await;
    assert_eq!(out.code, 0, "{out:?}");
    let (_, sessions) = server.get("/api/runtime/sessions", &dev).await;
    let sessions = sessions.as_array().unwrap();
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    let sid = sessions[0]["session_id"].as_str().unwrap().to_owned();
    assert_eq!(
        remembered(&c, &server.base, "dev@team.com").as_deref(),
        Some(sid.as_str())
    );
    let meta = std::fs::metadata(c.config_file()).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let (_, tasks) = server
        .get(&format!("/api/runtime/tasks?session_id={sid}"), &dev)
        .await;
    assert_eq!(tasks.as_array().unwrap().len(), 3, "{tasks}");

    // The admin's `watch --audit` reuses the admin's session the same way.
    let admin = Client::of(&server.base, ADMIN_TOKEN);
    let watch = ["watch", "--audit", "--after-seq", "0", "--count", "1"];
    assert_eq!(admin.run(&watch).await.code, 0);
    assert_eq!(admin.run(&watch).await.code, 0);
    let (_, all) = server.get("/api/runtime/sessions", ADMIN_TOKEN).await;
    let admins = all
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["user_id"] == "admin")
        .count();
    assert_eq!(admins, 1, "{all}");

    // Ended on the node: the next run moves to a new session.
    let (status, _) = server
        .delete(&format!("/api/runtime/sessions/{sid}"), &dev)
        .await;
    assert_eq!(status, 200);
    let out = c.run(&["run", "echo", "after the end"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout, "after the end");
    let renewed = remembered(&c, &server.base, "dev@team.com").unwrap();
    assert_ne!(renewed, sid);
    let (_, s) = server
        .get(&format!("/api/runtime/sessions/{renewed}"), &dev)
        .await;
    assert_eq!(s["state"], "active", "{s}");

    // Unknown to the node: replaced too.
    let text = std::fs::read_to_string(c.config_file()).unwrap();
    let bogus = "00000000-0000-4000-8000-000000000000";
    std::fs::write(c.config_file(), text.replace(&renewed, bogus)).unwrap();
    let out = c.run(&["run", "echo", "unknown before"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let replaced = remembered(&c, &server.base, "dev@team.com").unwrap();
    assert!(replaced != bogus && replaced != renewed, "{replaced}");
    let (_, sessions) = server.get("/api/runtime/sessions", &dev).await;
    assert_eq!(sessions.as_array().unwrap().len(), 3, "{sessions}");
    server.stop().await;
}

/// `device list|approve|revoke` against a real node: an admin lists
/// everyone's devices (`--user` narrows), approves and revokes; a
/// non-admin sees only their own, may not approve (5), and cannot reach
/// someone else's device (6). Revoking closes the device's live socket.
#[tokio::test]
async fn device_commands() {
    let server = TestServer::spawn().await;
    let dev = server.user("dev@team.com", &["developer"]).await;
    let ops = server.user("ops@team.com", &["developer"]).await;
    for (token, id, name) in [
        (&dev, "laptop-1", "Dev laptop"),
        (&ops, "phone-9", "Ops phone"),
    ] {
        let (status, body) = server
            .post(
                "/api/devices",
                token,
                json!({"device_id": id, "name": name}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }
    let admin = Client::of(&server.base, ADMIN_TOKEN);
    let out = admin.run(&["device", "list"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    for word in [
        "laptop-1",
        "dev@team.com",
        "Dev laptop",
        "phone-9",
        "pending",
    ] {
        assert!(out.stdout.contains(word), "{word}: {out:?}");
    }
    let ids = |out: &Out| -> Vec<String> {
        let list: Value = serde_json::from_str(out.stdout.trim()).unwrap();
        list.as_array()
            .unwrap()
            .iter()
            .map(|d| d["device_id"].as_str().unwrap().to_owned())
            .collect()
    };
    let out = admin
        .run(&["device", "list", "--json", "--user", "ops@team.com"])
        .await;
    assert_eq!(ids(&out), ["phone-9"], "{out:?}");

    let mine = Client::of(&server.base, &dev);
    let out = mine.run(&["device", "list", "--json"]).await;
    assert_eq!(ids(&out), ["laptop-1"], "{out:?}");
    let out = mine.run(&["device", "approve", "laptop-1"]).await;
    assert_eq!(out.code, 5, "{out:?}");
    assert!(out.stderr.contains("forbidden: "), "{out:?}");
    let out = mine.run(&["device", "revoke", "phone-9"]).await;
    assert_eq!(out.code, 6, "{out:?}");

    let out = admin.run(&["device", "approve", "laptop-1"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout.trim(), "laptop-1 trusted");
    let (_, list) = server.get("/api/devices", &dev).await;
    assert_eq!(list[0]["state"], "trusted", "{list}");
    assert_eq!(list[0]["decided_by"], "admin", "{list}");
    let out = admin.run(&["device", "approve", "no-such-device"]).await;
    assert_eq!(out.code, 6, "{out:?}");

    let (mut ws, _) = server.ws(&dev, json!({"device_id": "laptop-1"})).await;
    let out = admin.run(&["device", "revoke", "laptop-1", "--json"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let revoked: Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(revoked["state"], "revoked");
    assert_eq!(ws.closed().await, Closed::Code(4401));
    server.stop().await;
}

/// Two quick Ctrl-Cs in `run` detach without cancelling: exit 130, and
/// the task runs on to `completed` on the node. (The window between them
/// is widened so that a slow machine cannot turn this into a cancel.)
#[tokio::test]
async fn second_ctrl_c_detaches_without_cancelling() {
    let server = TestServer::spawn().await;
    let c = Client::of(&server.base, ADMIN_TOKEN);
    let prompt = "w".repeat(150);
    let mut child = c
        .command(&[
            "run",
            "echo",
            &prompt,
            "--param",
            "chunk_size=1",
            "--param",
            "delay_ms=20",
        ])
        .env("SWITCHBOARD_CTRL_C_WINDOW_MS", "600000")
        .spawn()
        .unwrap();
    read_some(&mut child, 3).await;
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    sigint(&child);
    let mut seen = Vec::new();
    loop {
        let line = tokio::time::timeout(WAIT, stderr.next_line())
            .await
            .expect("no notice in time")
            .unwrap()
            .unwrap_or_else(|| panic!("stderr ended: {seen:?}"));
        let done = line.contains("Ctrl-C again to detach");
        seen.push(line);
        if done {
            break;
        }
    }
    sigint(&child);
    let status = tokio::time::timeout(WAIT, child.wait())
        .await
        .expect("client did not exit")
        .unwrap();
    while let Some(line) = stderr.next_line().await.unwrap() {
        seen.push(line);
    }
    assert_eq!(status.code(), Some(130), "{seen:?}");
    assert!(
        seen.iter()
            .any(|l| l.contains("detached; the task goes on")),
        "{seen:?}"
    );
    let task = newest_task(&server, ADMIN_TOKEN).await;
    let id = task["task_id"].as_str().unwrap();
    assert_eq!(
        server.wait_terminal(ADMIN_TOKEN, id).await["state"],
        "completed"
    );
    server.stop().await;
}
