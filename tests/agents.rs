//! Real agents against local fakes: HTTP servers bound on 127.0.0.1:0 that
//! speak each wire format, and small shell scripts. Nothing here reaches
//! the internet.

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use common::*;
use serde_json::{Value, json};
use switchboard::config::FileConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

// ---------------------------------------------------------------- fakes --

/// One scripted HTTP response.
#[derive(Clone, Default)]
struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    /// Body pieces, each sent after its pause.
    parts: Vec<(u64, String)>,
    /// Keep the connection open after the parts, until the client closes it.
    hang: bool,
    /// Send `Retry-After` as the HTTP date this long after the reply leaves.
    retry_at_in: Option<Duration>,
}

impl Reply {
    fn ok(content_type: &str, parts: &[&str]) -> Self {
        Reply {
            status: 200,
            headers: vec![("content-type", content_type.to_owned())],
            parts: parts.iter().map(|p| (5, (*p).to_owned())).collect(),
            ..Reply::default()
        }
    }

    fn status(status: u16, body: &str) -> Self {
        Reply {
            status,
            headers: vec![("content-type", "application/json".into())],
            parts: vec![(0, body.to_owned())],
            ..Reply::default()
        }
    }
}

/// What the fake saw.
#[derive(Default)]
struct Seen {
    /// Request heads (lowercased) and bodies.
    requests: Vec<(String, String)>,
    /// When each request arrived.
    arrived: Vec<SystemTime>,
    /// Connections the client closed while we hung.
    client_closed: usize,
}

/// A fake HTTP server answering each connection with the next reply of its
/// script (the last one repeats).
struct Fake {
    base: String,
    seen: Arc<Mutex<Seen>>,
}

impl Fake {
    async fn start(script: Vec<Reply>) -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Seen::default()));
        let seen2 = seen.clone();
        tokio::spawn(async move {
            let mut n = 0usize;
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    return;
                };
                let reply = script[n.min(script.len() - 1)].clone();
                n += 1;
                tokio::spawn(serve_one(sock, reply, seen2.clone()));
            }
        });
        Fake { base, seen }
    }

    fn requests(&self) -> Vec<(String, String)> {
        self.seen.lock().unwrap().requests.clone()
    }

    fn arrivals(&self) -> Vec<SystemTime> {
        self.seen.lock().unwrap().arrived.clone()
    }

    fn client_closed(&self) -> usize {
        self.seen.lock().unwrap().client_closed
    }
}

async fn serve_one(mut sock: tokio::net::TcpStream, reply: Reply, seen: Arc<Mutex<Seen>>) {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match sock.read(&mut tmp).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + len {
        match sock.read(&mut tmp).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
        }
    }
    let body = String::from_utf8_lossy(&buf[head_end..head_end + len]).into_owned();
    {
        let mut seen = seen.lock().unwrap();
        seen.requests.push((head, body));
        seen.arrived.push(SystemTime::now());
    }
    let mut out = format!("HTTP/1.1 {} Fake\r\nconnection: close\r\n", reply.status);
    for (k, v) in &reply.headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(d) = reply.retry_at_in {
        let at = httpdate::fmt_http_date(SystemTime::now() + d);
        out.push_str(&format!("retry-after: {at}\r\n"));
    }
    out.push_str("\r\n");
    if sock.write_all(out.as_bytes()).await.is_err() {
        return;
    }
    for (pause, part) in &reply.parts {
        tokio::time::sleep(Duration::from_millis(*pause)).await;
        if sock.write_all(part.as_bytes()).await.is_err() {
            return;
        }
        let _ = sock.flush().await;
    }
    if reply.hang {
        // Wait for the client to go away.
        loop {
            match sock.read(&mut tmp).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        seen.lock().unwrap().client_closed += 1;
    }
    let _ = sock.shutdown().await;
}

fn sse(data: &[&str]) -> Vec<String> {
    data.iter().map(|d| format!("data: {d}\n\n")).collect()
}

fn openai_delta(text: &str) -> String {
    json!({"id": "c1", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": null}]}).to_string()
}

fn anthropic_events(texts: &[&str]) -> Vec<String> {
    let mut out = vec![
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m1\",\"role\":\"assistant\",\"content\":[]}}\n\n".to_owned(),
        "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n".to_owned(),
        "event: ping\ndata: {\"type\":\"ping\"}\n\n".to_owned(),
    ];
    for t in texts {
        let d = json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": t}});
        out.push(format!("event: content_block_delta\ndata: {d}\n\n"));
    }
    out.push(
        "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n".into(),
    );
    out.push("event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"}}\n\n".into());
    out.push("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n".into());
    out
}

fn config(toml: &str) -> FileConfig {
    FileConfig::parse(toml).unwrap_or_else(|e| panic!("config: {e}\n{toml}"))
}

fn http_agent(name: &str, kind: &str, base: &str, extra: &str) -> String {
    format!(
        "[[agents]]\nname = \"{name}\"\nkind = \"{kind}\"\nbase_url = \"{base}\"\nmodel = \"test-model\"\nretry_base_ms = 10\n{extra}\n"
    )
}

async fn submit(server: &TestServer, agent: &str, prompt: &str, params: Value) -> String {
    let t = server
        .submit(
            &server.admin,
            json!({"agent_type": agent, "prompt": prompt, "params": params}),
        )
        .await;
    t["task_id"].as_str().unwrap().to_owned()
}

/// The output chunks of a task, in order.
async fn chunks(server: &TestServer, task_id: &str) -> Vec<String> {
    let (_, detail) = server
        .get(&format!("/api/runtime/tasks/{task_id}"), &server.admin)
        .await;
    detail["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event_type"] == "output")
        .map(|e| e["chunk"].as_str().unwrap().to_owned())
        .collect()
}

async fn wait_output(server: &TestServer, task_id: &str, needle: &str) {
    let deadline = Instant::now() + WAIT;
    while !chunks(server, task_id).await.concat().contains(needle) {
        assert!(Instant::now() < deadline, "no output {needle:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ----------------------------------------------------------- HTTP kinds --

/// OpenAI-compatible SSE deltas stream as output and the result is the
/// whole text; the key goes as a bearer token and the request asks to stream.
#[tokio::test]
async fn openai_streams_sse_deltas() {
    let parts = sse(&[
        &json!({"choices": [{"index": 0, "delta": {"role": "assistant"}}]}).to_string(),
        &openai_delta("Hello"),
        &openai_delta(", "),
        &openai_delta("world"),
        "[DONE]",
    ]);
    let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
    let fake = Fake::start(vec![Reply::ok("text/event-stream", &parts)]).await;
    let cfg = http_agent(
        "gpt",
        "openai",
        &format!("{}/v1", fake.base),
        "api_key = \"sk-test\"",
    );
    let server = TestServer::spawn_with(config(&cfg)).await;
    let id = submit(&server, "gpt", "say hello", json!({})).await;
    let done = server.wait_terminal(&server.admin, &id).await;
    assert_eq!(done["state"], "completed", "{done}");
    assert_eq!(done["result"], "Hello, world");
    assert_eq!(chunks(&server, &id).await.concat(), "Hello, world");
    let (head, body) = fake.requests()[0].clone();
    assert!(head.starts_with("post /v1/chat/completions"), "{head}");
    assert!(head.contains("authorization: bearer sk-test"), "{head}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["stream"], true);
    assert_eq!(body["model"], "test-model");
    assert_eq!(body["messages"][0]["content"], "say hello");
    server.stop().await;
}

/// The Anthropic event stream: text from content_block_delta events, the
/// key in x-api-key, and the API version header.
#[tokio::test]
async fn anthropic_streams_message_events() {
    let parts = anthropic_events(&["Bonjour", " le ", "monde"]);
    let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
    let fake = Fake::start(vec![Reply::ok("text/event-stream", &parts)]).await;
    let cfg = http_agent("claude", "anthropic", &fake.base, "api_key = \"ak-test\"");
    let server = TestServer::spawn_with(config(&cfg)).await;
    let id = submit(&server, "claude", "salut", json!({"max_tokens": 100})).await;
    let done = server.wait_terminal(&server.admin, &id).await;
    assert_eq!(done["state"], "completed", "{done}");
    assert_eq!(done["result"], "Bonjour le monde");
    let (head, body) = fake.requests()[0].clone();
    assert!(head.starts_with("post /v1/messages"), "{head}");
    assert!(head.contains("x-api-key: ak-test"), "{head}");
    assert!(head.contains("anthropic-version: 2023-06-01"), "{head}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["stream"], true);
    assert_eq!(body["max_tokens"], 100);
    server.stop().await;
}

/// Ollama's native NDJSON chat stream.
#[tokio::test]
async fn ollama_streams_ndjson() {
    let line = |t: &str, done: bool| {
        format!(
            "{}\n",
            json!({"model": "test-model", "message": {"role": "assistant", "content": t}, "done": done})
        )
    };
    let parts = [line("Hi", false), line(" there", false), line("", true)];
    let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
    let fake = Fake::start(vec![Reply::ok("application/x-ndjson", &parts)]).await;
    let cfg = http_agent("local", "ollama", &fake.base, "");
    let server = TestServer::spawn_with(config(&cfg)).await;
    let id = submit(&server, "local", "hi", json!({})).await;
    let done = server.wait_terminal(&server.admin, &id).await;
    assert_eq!(done["state"], "completed", "{done}");
    assert_eq!(done["result"], "Hi there");
    let (head, body) = fake.requests()[0].clone();
    assert!(head.starts_with("post /api/chat"), "{head}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["stream"],
        true
    );
    server.stop().await;
}

/// An error in the middle of a stream fails the task with the server's
/// message, after the text that came before it was streamed.
#[tokio::test]
async fn errors_mid_stream_fail_the_task() {
    let openai = sse(&[
        &openai_delta("partial"),
        &json!({"error": {"message": "the model crashed"}}).to_string(),
    ]);
    let mut anthropic = anthropic_events(&["partial"]);
    anthropic.truncate(4);
    anthropic.push("event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n".into());
    let ollama = [
        "{\"message\":{\"content\":\"partial\"},\"done\":false}\n".to_owned(),
        "{\"error\":\"out of memory\"}\n".to_owned(),
    ];
    let as_refs = |v: &[String]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let cases = [
        ("openai", as_refs(&openai), "the model crashed"),
        ("anthropic", as_refs(&anthropic), "Overloaded"),
        ("ollama", as_refs(&ollama), "out of memory"),
    ];
    for (kind, parts, message) in cases {
        let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
        let fake = Fake::start(vec![Reply::ok("text/event-stream", &parts)]).await;
        let cfg = http_agent("a", kind, &fake.base, "api_key = \"k\"");
        let server = TestServer::spawn_with(config(&cfg)).await;
        let id = submit(&server, "a", "p", json!({})).await;
        let done = server.wait_terminal(&server.admin, &id).await;
        assert_eq!(done["state"], "failed", "{kind}: {done}");
        let error = done["error"].as_str().unwrap();
        assert!(
            error.contains("mid-stream") && error.contains(message),
            "{kind}: {error}"
        );
        assert_eq!(chunks(&server, &id).await.concat(), "partial", "{kind}");
        server.stop().await;
    }
}

/// A stream that stops before its end marker fails instead of passing a
/// truncated answer off as complete.
#[tokio::test]
async fn a_truncated_stream_fails() {
    let parts = sse(&[&openai_delta("half an ans")]);
    let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
    let fake = Fake::start(vec![Reply::ok("text/event-stream", &parts)]).await;
    let server = TestServer::spawn_with(config(&http_agent("a", "openai", &fake.base, ""))).await;
    let id = submit(&server, "a", "p", json!({})).await;
    let done = server.wait_terminal(&server.admin, &id).await;
    assert_eq!(done["state"], "failed");
    assert!(
        done["error"].as_str().unwrap().contains("ended before"),
        "{done}"
    );
    server.stop().await;
}

/// A 429 (`limited`, with its `Retry-After`) is waited out, then the
/// retry succeeds: it arrives at least about a second after the 429's
/// request (measured at the fake, so a slow server start eats nothing).
async fn waits_out_retry_after(limited: Reply) {
    let parts = sse(&[&openai_delta("ok"), "[DONE]"]);
    let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
    let fake = Fake::start(vec![limited, Reply::ok("text/event-stream", &parts)]).await;
    let server = TestServer::spawn_with(config(&http_agent("a", "openai", &fake.base, ""))).await;
    let id = submit(&server, "a", "p", json!({})).await;
    let done = server.wait_terminal(&server.admin, &id).await;
    assert_eq!(done["state"], "completed", "{done}");
    assert_eq!(done["result"], "ok");
    let arrived = fake.arrivals();
    assert_eq!(arrived.len(), 2);
    let waited = arrived[1].duration_since(arrived[0]).unwrap_or_default();
    assert!(
        waited >= Duration::from_millis(950),
        "Retry-After was not honoured: retried {waited:?} after the 429"
    );
    server.stop().await;
}

fn too_many() -> Reply {
    Reply::status(429, "{\"error\":{\"message\":\"slow down\"}}")
}

/// 429 with Retry-After in seconds is waited out, then the retry succeeds.
#[tokio::test]
async fn retries_429_after_retry_after() {
    let mut limited = too_many();
    limited.headers.push(("retry-after", "1".into()));
    waits_out_retry_after(limited).await;
}

/// `Retry-After` given as an HTTP date is honoured like one in seconds (the
/// date, two seconds after the 429 leaves, has whole seconds: at least one
/// second away).
#[tokio::test]
async fn retry_after_as_an_http_date_is_honoured() {
    let limited = Reply {
        retry_at_in: Some(Duration::from_secs(2)),
        ..too_many()
    };
    waits_out_retry_after(limited).await;
}

/// A connection dropped after the response headers but before the first
/// token is retried like any other transient failure.
#[tokio::test]
async fn a_drop_before_the_first_token_is_retried() {
    let dropped = Reply::ok("text/event-stream", &[]);
    let parts = sse(&[&openai_delta("second try"), "[DONE]"]);
    let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
    let fake = Fake::start(vec![dropped, Reply::ok("text/event-stream", &parts)]).await;
    let server = TestServer::spawn_with(config(&http_agent("a", "openai", &fake.base, ""))).await;
    let id = submit(&server, "a", "p", json!({})).await;
    let done = server.wait_terminal(&server.admin, &id).await;
    assert_eq!(done["state"], "completed", "{done}");
    assert_eq!(done["result"], "second try");
    assert_eq!(fake.requests().len(), 2);
    server.stop().await;
}

/// A 500 is retried with backoff, then the retry succeeds.
#[tokio::test]
async fn retries_5xx_then_succeeds() {
    let parts = anthropic_events(&["fine"]);
    let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
    let fake = Fake::start(vec![
        Reply::status(500, "{\"error\":{\"message\":\"boom\"}}"),
        Reply::status(503, "busy"),
        Reply::ok("text/event-stream", &parts),
    ])
    .await;
    let cfg = http_agent("a", "anthropic", &fake.base, "api_key = \"k\"");
    let server = TestServer::spawn_with(config(&cfg)).await;
    let id = submit(&server, "a", "p", json!({})).await;
    let done = server.wait_terminal(&server.admin, &id).await;
    assert_eq!(done["state"], "completed", "{done}");
    assert_eq!(done["result"], "fine");
    assert_eq!(fake.requests().len(), 3);
    server.stop().await;
}

/// When every try fails the task fails saying how many tries and why; a
/// 4xx other than 429 is not retried at all.
#[tokio::test]
async fn gives_up_with_a_clear_error() {
    let fake = Fake::start(vec![Reply::status(503, "{\"error\":\"model loading\"}")]).await;
    let server = TestServer::spawn_with(config(&http_agent("a", "ollama", &fake.base, ""))).await;
    let id = submit(&server, "a", "p", json!({})).await;
    let done = server.wait_terminal(&server.admin, &id).await;
    assert_eq!(done["state"], "failed");
    let error = done["error"].as_str().unwrap();
    assert!(error.contains("gave up after 4 tries"), "{error}");
    assert!(
        error.contains("503") && error.contains("model loading"),
        "{error}"
    );
    assert_eq!(fake.requests().len(), 4);
    server.stop().await;

    let fake = Fake::start(vec![Reply::status(
        401,
        "{\"error\":{\"message\":\"bad key\"}}",
    )])
    .await;
    let server = TestServer::spawn_with(config(&http_agent("a", "openai", &fake.base, ""))).await;
    let id = submit(&server, "a", "p", json!({})).await;
    let done = server.wait_terminal(&server.admin, &id).await;
    assert!(done["error"].as_str().unwrap().contains("401"), "{done}");
    assert!(
        done["error"].as_str().unwrap().contains("bad key"),
        "{done}"
    );
    assert_eq!(fake.requests().len(), 1);
    server.stop().await;

    // Nothing listens: connection errors are retried, then reported.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let server = TestServer::spawn_with(config(&http_agent("a", "openai", &url, ""))).await;
    let id = submit(&server, "a", "p", json!({})).await;
    let done = server.wait_terminal(&server.admin, &id).await;
    let error = done["error"].as_str().unwrap();
    assert!(
        error.contains("gave up") && error.contains("cannot reach"),
        "{error}"
    );
    server.stop().await;
}

/// Cancelling mid-stream drops the connection at once.
#[tokio::test]
async fn cancel_mid_stream_drops_the_connection() {
    let parts = sse(&[&openai_delta("first words")]);
    let mut reply = Reply::ok("text/event-stream", &[parts[0].as_str()]);
    reply.hang = true;
    let fake = Fake::start(vec![reply]).await;
    let server = TestServer::spawn_with(config(&http_agent("a", "openai", &fake.base, ""))).await;
    let id = submit(&server, "a", "p", json!({})).await;
    wait_output(&server, &id, "first words").await;
    let (status, body) = server.cancel(&server.admin, &id).await;
    assert_eq!(status, 200, "{body}");
    let deadline = Instant::now() + Duration::from_secs(2);
    while fake.client_closed() == 0 {
        assert!(Instant::now() < deadline, "the connection stayed open");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        server.wait_terminal(&server.admin, &id).await["state"],
        "cancelled"
    );
    server.stop().await;
}

// ----------------------------------------------------------- commands --

/// Write an executable script into `dir`.
fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn command_agent(name: &str, argv: &[&str], extra: &str) -> String {
    format!(
        "[[agents]]\nname = \"{name}\"\nkind = \"command\"\ncommand = {}\n{extra}\n",
        serde_json::to_string(argv).unwrap()
    )
}

/// Whether a process is gone (or a zombie nobody reaped yet: it runs no
/// more code either way).
fn gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => {
            let state = stat.rsplit(')').next().unwrap_or("").trim_start();
            state.starts_with('Z') || state.starts_with('X')
        }
    }
}

/// Wait until every pid in `file` is gone.
async fn assert_all_gone(file: &Path, within: Duration) {
    let pids: Vec<i32> = std::fs::read_to_string(file)
        .unwrap()
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    assert!(pids.len() >= 3, "{pids:?}");
    let deadline = Instant::now() + within;
    loop {
        let alive: Vec<_> = pids.iter().filter(|p| !gone(**p)).collect();
        if alive.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "processes survived: {alive:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// stdout streams as it arrives, `{prompt}` is one argument (no shell), and
/// exit 0 completes with the whole stdout.
#[tokio::test]
async fn command_streams_stdout_and_passes_the_prompt_as_one_argument() {
    let dir = tempfile::tempdir().unwrap();
    let s = script(
        dir.path(),
        "agent.sh",
        "printf 'args:'; printf '[%s]' \"$@\"; echo; sleep 0.3; echo done",
    );
    let cfg = command_agent("cli", &[s.to_str().unwrap(), "-p", "{prompt}"], "");
    let server = TestServer::spawn_with(config(&cfg)).await;
    let prompt = "two words; $(rm -rf /) `x` 'q'";
    let id = submit(&server, "cli", prompt, json!({})).await;
    let done = server.wait_terminal(&server.admin, &id).await;
    assert_eq!(done["state"], "completed", "{done}");
    let expected = format!("args:[-p][{prompt}]\ndone\n");
    assert_eq!(done["result"], expected.as_str());
    let parts = chunks(&server, &id).await;
    assert!(parts.len() >= 2, "output was not streamed: {parts:?}");
    assert_eq!(parts.concat(), expected);
    server.stop().await;
}

/// stdin mode sends the prompt on stdin; only allow-listed variables reach
/// the program, and `cwd` is its working directory.
#[tokio::test]
async fn command_stdin_env_and_cwd() {
    let dir = tempfile::tempdir().unwrap();
    let s = script(
        dir.path(),
        "agent.sh",
        "read line; echo \"got:$line\"; echo \"fixed:$FIXED home:${HOME:-unset}\"; pwd",
    );
    let cfg = command_agent(
        "cli",
        &[s.to_str().unwrap()],
        &format!(
            "stdin = true\nenv = [\"PATH\", \"FIXED=yes\"]\ncwd = \"{}\"",
            dir.path().display()
        ),
    );
    let server = TestServer::spawn_with(config(&cfg)).await;
    let id = submit(&server, "cli", "hello on stdin", json!({})).await;
    let done = server.wait_terminal(&server.admin, &id).await;
    assert_eq!(done["state"], "completed", "{done}");
    let cwd = dir.path().canonicalize().unwrap();
    assert_eq!(
        done["result"],
        format!(
            "got:hello on stdin\nfixed:yes home:unset\n{}\n",
            cwd.display()
        )
    );
    server.stop().await;
}

/// A non-zero exit fails with the status and the tail of stderr.
#[tokio::test]
async fn command_failure_reports_status_and_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let s = script(
        dir.path(),
        "agent.sh",
        "echo some output; i=0; while [ $i -lt 2000 ]; do echo \"noise $i\" >&2; i=$((i+1)); done; echo 'fatal: the real reason' >&2; exit 3",
    );
    let cfg = command_agent("cli", &[s.to_str().unwrap(), "{prompt}"], "");
    let server = TestServer::spawn_with(config(&cfg)).await;
    let id = submit(&server, "cli", "p", json!({})).await;
    let done = server.wait_terminal(&server.admin, &id).await;
    assert_eq!(done["state"], "failed");
    let error = done["error"].as_str().unwrap();
    assert!(error.contains("exited with status 3"), "{error}");
    assert!(error.contains("fatal: the real reason"), "{error}");
    assert!(
        error.len() < 5000,
        "stderr was not bounded: {} bytes",
        error.len()
    );
    assert!(
        !error.contains("noise 0\n"),
        "kept the head instead of the tail"
    );
    server.stop().await;
}

/// A missing program is listed unavailable with the reason, and submitting
/// to it is an unknown_agent error that says why.
#[tokio::test]
async fn missing_program_is_unavailable() {
    let cfg = command_agent("ghost", &["no-such-agent-cli", "{prompt}"], "");
    let server = TestServer::spawn_with(config(&cfg)).await;
    let (_, agents) = server.get("/api/runtime/agents", &server.admin).await;
    let ghost = agents
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["agent_type"] == "ghost")
        .unwrap()
        .clone();
    assert_eq!(ghost["available"], false);
    assert_eq!(
        ghost["metadata"]["reason"],
        "program `no-such-agent-cli` not found on PATH"
    );
    let (status, body) = server
        .post(
            "/api/runtime/tasks/submit",
            &server.admin,
            json!({"agent_type": "ghost", "prompt": "p"}),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "unknown_agent");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not found on PATH")
    );
    server.stop().await;
}

/// The agents list entry of `name`.
async fn agent_entry(server: &TestServer, name: &str) -> Value {
    let (_, agents) = server.get("/api/runtime/agents", &server.admin).await;
    agents
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["agent_type"] == name)
        .unwrap()
        .clone()
}

/// A program removed after the node started makes its agent unavailable,
/// with the reason, at once; back in place, the agent is available again.
#[tokio::test]
async fn a_removed_program_becomes_unavailable_without_a_restart() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let program = dir.path().join("my-agent");
    std::fs::write(&program, "#!/bin/sh\necho \"$1\"\n").unwrap();
    std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = program.to_str().unwrap();
    let server =
        TestServer::spawn_with(config(&command_agent("mine", &[path, "{prompt}"], ""))).await;
    assert_eq!(agent_entry(&server, "mine").await["available"], true);
    let id = submit(&server, "mine", "hi", json!({})).await;
    assert_eq!(
        server.wait_terminal(&server.admin, &id).await["state"],
        "completed"
    );

    std::fs::rename(&program, dir.path().join("elsewhere")).unwrap();
    let entry = agent_entry(&server, "mine").await;
    assert_eq!(entry["available"], false, "{entry}");
    assert!(
        entry["metadata"]["reason"]
            .as_str()
            .unwrap()
            .contains("is gone"),
        "{entry}"
    );
    let (status, body) = server
        .post(
            "/api/runtime/tasks/submit",
            &server.admin,
            json!({"agent_type": "mine", "prompt": "p"}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("is gone"),
        "{body}"
    );

    std::fs::rename(dir.path().join("elsewhere"), &program).unwrap();
    assert_eq!(agent_entry(&server, "mine").await["available"], true);
    server.stop().await;
}

/// An upstream that starts refusing the key (a key revoked) makes its agent
/// unavailable with the reason, without a restart.
#[tokio::test]
async fn a_refused_key_makes_the_agent_unavailable() {
    let fake = Fake::start(vec![Reply::status(
        401,
        "{\"error\":{\"message\":\"invalid api key\"}}",
    )])
    .await;
    let server = TestServer::spawn_with(config(&http_agent("a", "openai", &fake.base, ""))).await;
    assert_eq!(agent_entry(&server, "a").await["available"], true);
    let id = submit(&server, "a", "p", json!({})).await;
    let done = server.wait_terminal(&server.admin, &id).await;
    assert_eq!(done["state"], "failed", "{done}");
    let entry = agent_entry(&server, "a").await;
    assert_eq!(entry["available"], false, "{entry}");
    let reason = entry["metadata"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("401") && reason.contains("invalid api key"),
        "{reason}"
    );
    server.stop().await;
}

const TREE: &str = "echo $$ >> \"$PIDFILE\"\nsleep 1000 &\necho $! >> \"$PIDFILE\"\n(sleep 1000; echo never) &\necho $! >> \"$PIDFILE\"\necho started\nwait";

/// Cancelling a command kills its whole process tree.
#[tokio::test]
async fn cancel_kills_the_process_tree() {
    let dir = tempfile::tempdir().unwrap();
    let pids = dir.path().join("pids");
    let s = script(dir.path(), "tree.sh", TREE);
    let extra = format!("env = [\"PATH\", \"PIDFILE={}\"]", pids.display());
    let cfg = command_agent("tree", &[s.to_str().unwrap(), "{prompt}"], &extra);
    let server = TestServer::spawn_with(config(&cfg)).await;
    let id = submit(&server, "tree", "p", json!({})).await;
    wait_output(&server, &id, "started").await;
    let (status, _) = server.cancel(&server.admin, &id).await;
    assert_eq!(status, 200);
    assert_all_gone(&pids, Duration::from_secs(5)).await;
    assert_eq!(
        server.wait_terminal(&server.admin, &id).await["state"],
        "cancelled"
    );
    server.stop().await;
}

/// A timeout kills the tree too, with SIGKILL for processes that ignore
/// SIGTERM, and the task fails saying it timed out.
#[tokio::test]
async fn timeout_kills_a_tree_that_ignores_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let pids = dir.path().join("pids");
    let s = script(dir.path(), "stubborn.sh", &format!("trap '' TERM\n{TREE}"));
    let extra = format!(
        "env = [\"PATH\", \"PIDFILE={}\"]\ntimeout_ms = 60000\nkill_grace_ms = 300",
        pids.display()
    );
    let cfg = command_agent("tree", &[s.to_str().unwrap(), "{prompt}"], &extra);
    let server = TestServer::spawn_with(config(&cfg)).await;
    let id = submit(&server, "tree", "p", json!({"timeout_ms": 700})).await;
    let done = server.wait_terminal(&server.admin, &id).await;
    assert_eq!(done["state"], "failed");
    assert_eq!(done["error"], "timed out after 700 ms");
    assert_all_gone(&pids, Duration::from_secs(5)).await;
    server.stop().await;
}

/// Background processes a program leaves behind when it exits are stopped
/// too, and the task still completes with its output.
#[tokio::test]
async fn leftovers_of_a_finished_command_are_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let pids = dir.path().join("pids");
    let s = script(
        dir.path(),
        "leaky.sh",
        "echo $$ >> \"$PIDFILE\"\nsleep 1000 &\necho $! >> \"$PIDFILE\"\nsleep 1000 > /dev/null &\necho $! >> \"$PIDFILE\"\necho bye",
    );
    let extra = format!("env = [\"PATH\", \"PIDFILE={}\"]", pids.display());
    let cfg = command_agent("leaky", &[s.to_str().unwrap(), "{prompt}"], &extra);
    let server = TestServer::spawn_with(config(&cfg)).await;
    let id = submit(&server, "leaky", "p", json!({})).await;
    let done = server.wait_terminal(&server.admin, &id).await;
    assert_eq!(done["state"], "completed", "{done}");
    assert_eq!(done["result"], "bye\n");
    assert_all_gone(&pids, Duration::from_secs(5)).await;
    server.stop().await;
}

// ------------------------------------------------ gates and routing --

/// approval = true: the task waits; approve runs it, deny fails it; and
/// only the owner or an admin:users holder may answer.
#[tokio::test]
async fn approval_both_ways() {
    let cfg = "[[agents]]\nname = \"careful\"\nkind = \"echo\"\napproval = true\n";
    let server = TestServer::spawn_with(config(cfg)).await;
    let dev = server.user("dev@team.com", &["developer"]).await;
    let other = server.user("other@team.com", &["developer"]).await;
    let t = server
        .submit(
            &dev,
            json!({"agent_type": "careful", "prompt": "rm -rf build"}),
        )
        .await;
    let id = t["task_id"].as_str().unwrap();
    let waiting = server.wait_state(&dev, id, "waiting").await;
    assert!(chunks(&server, id).await.is_empty(), "ran before approval");
    let (_, detail) = server.get(&format!("/api/runtime/tasks/{id}"), &dev).await;
    let message = detail["events"].as_array().unwrap().last().unwrap()["message"].clone();
    assert!(
        message.as_str().unwrap().contains("approval required"),
        "{message}"
    );
    let (status, _) = server
        .post(
            &format!("/api/runtime/tasks/{id}/respond"),
            &other,
            json!({"approve": true}),
        )
        .await;
    assert_eq!(status, 404, "another user may not even see it: {waiting}");
    let (status, body) = server
        .post(
            &format!("/api/runtime/tasks/{id}/respond"),
            &dev,
            json!({"approve": true}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let done = server.wait_terminal(&dev, id).await;
    assert_eq!(done["state"], "completed");
    assert_eq!(done["result"], "rm -rf build");

    let t = server
        .submit(&dev, json!({"agent_type": "careful", "prompt": "deploy"}))
        .await;
    let id = t["task_id"].as_str().unwrap();
    server.wait_state(&dev, id, "waiting").await;
    // An admin:users holder may answer someone else's task.
    let (status, _) = server
        .post(
            &format!("/api/runtime/tasks/{id}/respond"),
            &server.admin,
            json!({"approve": false}),
        )
        .await;
    assert_eq!(status, 200);
    let done = server.wait_terminal(&dev, id).await;
    assert_eq!(done["state"], "failed");
    assert!(done["error"].as_str().unwrap().contains("denied"), "{done}");
    assert!(chunks(&server, id).await.is_empty(), "ran although denied");
    server.stop().await;
}

/// Timeouts: a task's own, and the agent's cap on it.
#[tokio::test]
async fn task_and_agent_timeouts() {
    let cfg = "[[agents]]\nname = \"capped\"\nkind = \"echo\"\ntimeout_ms = 150\n";
    let server = TestServer::spawn_with(config(cfg)).await;
    let slow = json!({"delay_ms": 100, "chunk_size": 1});
    let mut own = slow.clone();
    own["timeout_ms"] = json!(120);
    let id = submit(&server, "echo", "abcdef", own).await;
    let done = server.wait_terminal(&server.admin, &id).await;
    assert_eq!(done["state"], "failed");
    assert_eq!(done["error"], "timed out after 120 ms");
    let mut generous = slow.clone();
    generous["timeout_ms"] = json!(60_000);
    let id = submit(&server, "capped", "abcdef", generous).await;
    let done = server.wait_terminal(&server.admin, &id).await;
    assert_eq!(done["error"], "timed out after 150 ms");
    let (status, body) = server
        .post(
            "/api/runtime/tasks/submit",
            &server.admin,
            json!({"agent_type": "echo", "prompt": "p", "params": {"timeout_ms": 0}}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    server.stop().await;
}

/// Agent listing entry by name.
async fn agent_info(server: &TestServer, name: &str) -> Value {
    let (_, agents) = server.get("/api/runtime/agents", &server.admin).await;
    agents
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["agent_type"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no agent {name}"))
}

async fn wait_queued(server: &TestServer, agent: &str, queued: u64) {
    let deadline = Instant::now() + WAIT;
    while agent_info(server, agent).await["metadata"]["queued"] != queued {
        assert!(Instant::now() < deadline, "queue never reached {queued}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// max_concurrent = 1: the second task stays pending while the first runs.
#[tokio::test]
async fn max_concurrent_queues_in_pending() {
    let cfg = "[[agents]]\nname = \"single\"\nkind = \"echo\"\nmax_concurrent = 1\n";
    let server = TestServer::spawn_with(config(cfg)).await;
    let first = submit(&server, "single", "one", json!({"wait": true})).await;
    server.wait_state(&server.admin, &first, "waiting").await;
    let second = submit(&server, "single", "two", json!({})).await;
    wait_queued(&server, "single", 1).await;
    let (_, state) = server
        .get(&format!("/api/runtime/tasks/{second}/state"), &server.admin)
        .await;
    assert_eq!(state["state"], "pending");
    server
        .post(
            &format!("/api/runtime/tasks/{first}/respond"),
            &server.admin,
            json!({"approve": true}),
        )
        .await;
    assert_eq!(
        server.wait_terminal(&server.admin, &second).await["state"],
        "completed"
    );
    assert_eq!(
        server.wait_terminal(&server.admin, &first).await["state"],
        "completed"
    );
    server.stop().await;
}

/// The queue is served round-robin across users: bob's one task runs
/// before alice's third, although alice queued hers first.
#[tokio::test]
async fn queue_is_fair_across_users() {
    let cfg = "[[agents]]\nname = \"single\"\nkind = \"echo\"\nmax_concurrent = 1\n";
    let server = TestServer::spawn_with(config(cfg)).await;
    let alice = server.user("alice@team.com", &["developer"]).await;
    let bob = server.user("bob@team.com", &["developer"]).await;
    let sub = |token: String, prompt: &'static str| {
        let server = &server;
        async move {
            let t = server
                .submit(
                    &token,
                    json!({"agent_type": "single", "prompt": prompt, "params": {"wait": true}}),
                )
                .await;
            t["task_id"].as_str().unwrap().to_owned()
        }
    };
    let a1 = sub(alice.clone(), "a1").await;
    server.wait_state(&alice, &a1, "waiting").await;
    let a2 = sub(alice.clone(), "a2").await;
    wait_queued(&server, "single", 1).await;
    let a3 = sub(alice.clone(), "a3").await;
    wait_queued(&server, "single", 2).await;
    let b1 = sub(bob.clone(), "b1").await;
    wait_queued(&server, "single", 3).await;
    let mut order = Vec::new();
    let mut current = (a1, alice.clone());
    for _ in 0..4 {
        server
            .post(
                &format!("/api/runtime/tasks/{}/respond", current.0),
                &current.1,
                json!({"approve": true}),
            )
            .await;
        let done = server.wait_terminal(&current.1, &current.0).await;
        order.push(done["result"].as_str().unwrap().to_owned());
        if order.len() == 4 {
            break;
        }
        // Whichever is waiting now is the one the queue picked.
        let next = loop {
            let mut found = None;
            for (id, token) in [(&a2, &alice), (&a3, &alice), (&b1, &bob)] {
                let (_, s) = server
                    .get(&format!("/api/runtime/tasks/{id}/state"), token)
                    .await;
                if s["state"] == "waiting" {
                    found = Some((id.clone(), token.clone()));
                }
            }
            if let Some(f) = found {
                break f;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        current = next;
    }
    assert_eq!(order, ["a1", "a2", "b1", "a3"]);
    server.stop().await;
}

/// A submit may name a skill: an available provider runs it (the skill's
/// own agents and those listing it in their capabilities); the skill's
/// required permissions are enforced; agent_type and skill are exclusive.
#[tokio::test]
async fn skills_route_to_available_agents() {
    let cfg = r#"
[[agents]]
name = "broken"
kind = "command"
command = ["no-such-agent-cli", "{prompt}"]

[[agents]]
name = "writer"
kind = "echo"
capabilities = ["refactoring"]

[[skills]]
skill_id = "refactoring"
name = "Refactoring"
agents = ["broken"]
required_permissions = ["skill:execute"]

[[skills]]
skill_id = "ops"
name = "Operations"
agents = ["echo"]
required_permissions = ["admin:system"]
"#;
    let server = TestServer::spawn_with(config(cfg)).await;
    let dev = server.user("dev@team.com", &["developer"]).await;
    let (_, skills) = server.get("/api/runtime/skills", &dev).await;
    let codegen = &skills[0];
    assert_eq!(codegen["agents"], json!(["broken", "writer"]));
    assert_eq!(codegen["metadata"]["available_agents"], json!(["writer"]));
    let t = server
        .submit(
            &dev,
            json!({"skill": "refactoring", "prompt": "fn main() {}"}),
        )
        .await;
    assert_eq!(t["agent_type"], "writer");
    assert_eq!(t["metadata"]["skill"], "refactoring");
    let done = server
        .wait_terminal(&dev, t["task_id"].as_str().unwrap())
        .await;
    assert_eq!(done["result"], "fn main() {}");

    let (status, body) = server
        .post(
            "/api/runtime/tasks/submit",
            &dev,
            json!({"skill": "ops", "prompt": "p"}),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("admin:system")
    );
    let t = server
        .submit(&server.admin, json!({"skill": "ops", "prompt": "p"}))
        .await;
    assert_eq!(t["agent_type"], "echo");
    for bad in [
        json!({"skill": "ops", "agent_type": "echo", "prompt": "p"}),
        json!({"prompt": "p"}),
        json!({"skill": "nope", "prompt": "p"}),
    ] {
        let (status, body) = server.post("/api/runtime/tasks/submit", &dev, bad).await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["error"]["code"], "bad_request");
    }
    let (_, audit) = server
        .get(
            "/api/audit/events?event_type=permission.denied",
            &server.admin,
        )
        .await;
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["user_id"] == "dev@team.com")
    );
    server.stop().await;
}

/// allowed_roles restricts who may submit; admins are not exempt.
#[tokio::test]
async fn allowed_roles_restrict_submitters() {
    let cfg = "[[agents]]\nname = \"devonly\"\nkind = \"echo\"\nallowed_roles = [\"developer\"]\ncapabilities = [\"devwork\"]\n[[skills]]\nskill_id = \"devwork\"\nname = \"Dev work\"\n";
    let server = TestServer::spawn_with(config(cfg)).await;
    let dev = server.user("dev@team.com", &["developer"]).await;
    server
        .submit(&dev, json!({"agent_type": "devonly", "prompt": "p"}))
        .await;
    let (status, body) = server
        .post(
            "/api/runtime/tasks/submit",
            &server.admin,
            json!({"agent_type": "devonly", "prompt": "p"}),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "forbidden");
    // Through a skill, too.
    let (status, body) = server
        .post(
            "/api/runtime/tasks/submit",
            &server.admin,
            json!({"skill": "devwork", "prompt": "p"}),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    server.stop().await;
}

/// The original's agent names are always listed; without configuration
/// they are unavailable with a reason, and a configured agent of the same
/// name replaces the default.
#[tokio::test]
async fn default_agents_are_listed() {
    let cfg = "[[agents]]\nname = \"goose\"\nkind = \"echo\"\n";
    let server = TestServer::spawn_with(config(cfg)).await;
    for name in ["claude", "auggie", "ollama", "opendevin"] {
        let info = agent_info(&server, name).await;
        if info["available"] == false {
            assert!(
                info["metadata"]["reason"].as_str().unwrap().len() > 10,
                "{info}"
            );
        }
    }
    let opendevin = agent_info(&server, "opendevin").await;
    assert_eq!(opendevin["available"], false);
    let (status, body) = server
        .post(
            "/api/runtime/tasks/submit",
            &server.admin,
            json!({"agent_type": "opendevin", "prompt": "p"}),
        )
        .await;
    assert_eq!(status, 400);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not configured"),
        "{body}"
    );
    let goose = agent_info(&server, "goose").await;
    assert_eq!(goose["available"], true);
    assert_eq!(goose["metadata"]["kind"], "echo");
    server.stop().await;
}

/// A bad config file stops `serve` at start, naming the file, line and field.
#[tokio::test]
async fn bad_config_stops_serve() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("agents.toml");
    std::fs::write(
        &file,
        "[[agents]]\nname = \"ok\"\nkind = \"echo\"\n\n[[agents]]\nname = \"cli\"\nkind = \"command\"\ncommand = []\n",
    )
    .unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .arg("serve")
        .args(["--listen", "127.0.0.1:0", "--config"])
        .arg(&file)
        .arg("--database")
        .arg(format!("sqlite://{}", dir.path().join("db").display()))
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&file.display().to_string()), "{stderr}");
    assert!(stderr.contains("line 8: agents[1].command"), "{stderr}");
}
