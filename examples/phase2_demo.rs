//! Run against a running node: `cargo run --example phase2_demo -- --url http://127.0.0.1:8787 --token $TOKEN`
//!
//! The seed's "Phase 2 migration path" (`phase1-vs-phase2.md`), as a client
//! of a running Switchboard node:
//!
//! 1. start with a session (`POST /api/runtime/sessions`);
//! 2. open the WebSocket and attach to that session with `hello`;
//! 3. submit a task with session context (`task.submit`, the built-in `echo`
//!    agent with a delay so the stream is visible);
//! 4. watch every state transition and output chunk live as it arrives;
//! 5. monitor with a state query (`GET /api/runtime/tasks/{id}/state`).
//!
//! Any token whose user holds `task:submit`, `agent:execute` and `task:view`
//! works (an `admin` or a `developer`). The protocol is described in
//! `protocol/README.md`.

use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

/// Walk through sessions, a live task and a state query on a running node.
#[derive(Parser)]
struct Args {
    /// Base URL of the node.
    #[arg(long, default_value = "http://127.0.0.1:8787")]
    url: String,
    /// A bearer token (the admin token printed at first start works).
    #[arg(long, env = "SWITCHBOARD_TOKEN")]
    token: String,
    /// What the echo agent should stream back.
    #[arg(
        long,
        default_value = "Phase 2: sessions, a state machine, RBAC and audit, live over WebSocket."
    )]
    prompt: String,
    /// Pause before each output chunk, in milliseconds.
    #[arg(long, default_value_t = 150)]
    delay_ms: u64,
    /// Characters per output chunk.
    #[arg(long, default_value_t = 12)]
    chunk_size: usize,
    /// Give up when the task has not ended after this many seconds.
    #[arg(long, default_value_t = 60)]
    timeout_secs: u64,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run(Args::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("phase2_demo: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let base = args.url.trim_end_matches('/').to_owned();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;

    // Who am I? (Also checks the token before anything else.)
    let me = get(&http, &base, &args.token, "/api/me").await?;
    println!(
        "signed in as {} (roles {})",
        me["user_id"].as_str().unwrap_or("?"),
        me["roles"]
    );

    // 1. Start with a session.
    let session = post(
        &http,
        &base,
        &args.token,
        "/api/runtime/sessions",
        json!({"device_id": "phase2-demo"}),
    )
    .await?;
    let session_id = session["session_id"]
        .as_str()
        .context("session reply without session_id")?
        .to_owned();
    println!("1. session {session_id} created over REST");

    // 2. Open the WebSocket attached to that session.
    let ws_url = ws_url(&base)?;
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_url.as_str())
        .await
        .with_context(|| format!("cannot open {ws_url}"))?;
    let hello = json!({"op": "hello", "id": 1, "token": args.token, "session_id": session_id});
    ws.send(Message::text(hello.to_string())).await?;
    let mut early = Vec::new();
    let welcome = wait_reply(&mut ws, 1, &mut early).await?;
    println!(
        "2. WebSocket attached to session {} (protocol {}, server heartbeat every {} ms)",
        welcome["session_id"].as_str().unwrap_or("?"),
        welcome["protocol"],
        welcome["heartbeat_ms"]
    );

    // 3. Submit a task with session context. The idempotency key makes a
    //    retry after a dropped connection safe.
    let submit = json!({
        "op": "task.submit",
        "id": 2,
        "agent_type": "echo",
        "prompt": args.prompt,
        "params": {"delay_ms": args.delay_ms, "chunk_size": args.chunk_size},
        "context": {"source": "phase2_demo"},
        "idempotency_key": format!("phase2-demo-{session_id}"),
    });
    ws.send(Message::text(submit.to_string())).await?;
    let task = wait_reply(&mut ws, 2, &mut early).await?;
    let task_id = task["task_id"]
        .as_str()
        .context("submit reply without task_id")?
        .to_owned();
    println!(
        "3. task {task_id} submitted to `{}` (state {})",
        task["agent_type"].as_str().unwrap_or("?"),
        task["state"].as_str().unwrap_or("?")
    );

    // 4. Watch it live. Events that arrived before the submit reply were
    //    kept, so none is missed.
    println!("4. live events of session:{session_id}");
    let mut output = String::new();
    let watch = async {
        for event in early {
            if show(&event, &task_id, &mut output) {
                return Ok(());
            }
        }
        loop {
            let frame = next_frame(&mut ws).await?;
            if frame["op"] == "event" && show(&frame, &task_id, &mut output) {
                return Ok::<_, anyhow::Error>(());
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(args.timeout_secs), watch)
        .await
        .context("the task did not end in time")??;
    println!("   streamed output: {output:?}");
    let _ = ws.close(None).await;

    // 5. Monitor with a state query.
    let state = get(
        &http,
        &base,
        &args.token,
        &format!("/api/runtime/tasks/{task_id}/state"),
    )
    .await?;
    println!(
        "5. GET /api/runtime/tasks/{task_id}/state\n   state: {}, success: {}, execution_time: {} s\n   result: {}",
        state["state"].as_str().unwrap_or("?"),
        state["success"],
        state["execution_time"],
        state["result"]
    );
    Ok(())
}

/// Print one event of `task_id`; true when it is the task's terminal state.
fn show(event: &Value, task_id: &str, output: &mut String) -> bool {
    if event["task_id"] != task_id {
        return false;
    }
    let seq = event["seq"].as_i64().unwrap_or(0);
    let data = &event["data"];
    match event["type"].as_str() {
        Some("task.state") => {
            let prev = data["prev_state"].as_str().unwrap_or("(new)");
            let state = data["state"].as_str().unwrap_or("?");
            let message = data["message"].as_str().unwrap_or("");
            println!("   seq {seq:>3}  state   {prev} -> {state}  ({message})");
            matches!(state, "completed" | "failed" | "cancelled")
        }
        Some("task.output") => {
            let chunk = data["chunk"].as_str().unwrap_or("");
            println!("   seq {seq:>3}  output  {chunk:?}");
            output.push_str(chunk);
            false
        }
        _ => false,
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The next JSON text frame; a close frame is an error naming its code.
async fn next_frame(ws: &mut Ws) -> anyhow::Result<Value> {
    loop {
        match ws.next().await {
            None => bail!("the server closed the connection"),
            Some(Err(e)) => bail!("WebSocket error: {e}"),
            Some(Ok(Message::Text(t))) => return Ok(serde_json::from_str(t.as_str())?),
            Some(Ok(Message::Close(Some(f)))) => {
                bail!("the server closed the connection: {} {}", f.code, f.reason)
            }
            Some(Ok(Message::Close(None))) => bail!("the server closed the connection"),
            // Pings are answered by the library while we read.
            Some(Ok(_)) => continue,
        }
    }
}

/// Wait for the reply to request `id`, keeping events that come first.
async fn wait_reply(ws: &mut Ws, id: u64, early: &mut Vec<Value>) -> anyhow::Result<Value> {
    loop {
        let frame = next_frame(ws).await?;
        match frame["op"].as_str() {
            Some("event") => early.push(frame),
            Some("reply") if frame["id"] == id => {
                if frame["ok"] == true {
                    return Ok(frame["result"].clone());
                }
                bail!(
                    "request {id} failed: {} ({})",
                    frame["error"]["message"].as_str().unwrap_or("?"),
                    frame["error"]["code"].as_str().unwrap_or("?")
                );
            }
            _ => {}
        }
    }
}

/// `http://host:port` → `ws://host:port/ws`.
fn ws_url(base: &str) -> anyhow::Result<String> {
    if let Some(rest) = base.strip_prefix("http://") {
        Ok(format!("ws://{rest}/ws"))
    } else if let Some(rest) = base.strip_prefix("https://") {
        Ok(format!("wss://{rest}/ws"))
    } else {
        bail!("--url must start with http:// or https://")
    }
}

async fn get(http: &reqwest::Client, base: &str, token: &str, path: &str) -> anyhow::Result<Value> {
    decode(http.get(format!("{base}{path}")).bearer_auth(token)).await
}

async fn post(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    path: &str,
    body: Value,
) -> anyhow::Result<Value> {
    decode(
        http.post(format!("{base}{path}"))
            .bearer_auth(token)
            .json(&body),
    )
    .await
}

/// Send, and turn an error body (`{"error":{"code","message"}}`) into an error.
async fn decode(req: reqwest::RequestBuilder) -> anyhow::Result<Value> {
    let resp = req.send().await.context("cannot reach the node")?;
    let status = resp.status();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        bail!(
            "{status}: {} ({})",
            body["error"]["message"].as_str().unwrap_or("no error body"),
            body["error"]["code"].as_str().unwrap_or("?")
        );
    }
    Ok(body)
}
