//! Run against a running node on this machine: `cargo run --release --example rounds -- --url http://127.0.0.1:8787 --token $TOKEN --server-pid PID` (raise `ulimit -n` first).
//!
//! Does a node give memory back once its sockets are gone? Rounds of short
//! sessions, as dashboards that reconnect for weeks produce them: each round
//! opens `--sessions` WebSockets (spread over `--users` users), runs one small
//! echo task on each and waits for its completion, closes every socket, waits
//! `--settle` seconds and prints the server's resident memory (from
//! `/proc/<pid>/status`). It only prints figures; it asserts nothing.

use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

/// Rounds of short-lived sessions against a running node.
#[derive(Parser, Debug)]
struct Args {
    /// Base URL of the node.
    #[arg(long, default_value = "http://127.0.0.1:8787")]
    url: String,
    /// An admin token (users are created with it).
    #[arg(long, env = "SWITCHBOARD_TOKEN")]
    token: String,
    /// The node's process id, to read its memory.
    #[arg(long)]
    server_pid: u32,
    /// Rounds.
    #[arg(long, default_value_t = 8)]
    rounds: usize,
    /// Sessions per round.
    #[arg(long, default_value_t = 3000)]
    sessions: usize,
    /// Users the sessions are spread over.
    #[arg(long, default_value_t = 300)]
    users: usize,
    /// Seconds between closing a round's sockets and reading memory.
    #[arg(long, default_value_t = 2)]
    settle: u64,
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmRSS line")
}

async fn create_users(args: &Args) -> anyhow::Result<Vec<String>> {
    let http = reqwest::Client::new();
    let mut tokens = Vec::with_capacity(args.users);
    let run = uuid::Uuid::new_v4().simple().to_string();
    for i in 0..args.users {
        let body: Value = http
            .post(format!("{}/api/admin/users", args.url))
            .bearer_auth(&args.token)
            .json(&json!({"user_id": format!("rounds-{}-{i}@bench", &run[..8]), "roles": ["developer"]}))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        tokens.push(body["token"].as_str().context("no token")?.to_owned());
    }
    Ok(tokens)
}

/// One session: hello, one task, wait for `completed`, close.
async fn session(ws_url: String, token: String) -> anyhow::Result<()> {
    let (mut ws, _) = tokio_tungstenite::connect_async(&ws_url).await?;
    ws.send(Message::text(
        json!({"op": "hello", "id": 0, "token": token}).to_string(),
    ))
    .await?;
    ws.send(Message::text(
        json!({"op": "task.submit", "id": 1, "agent_type": "echo", "prompt": "x".repeat(64)})
            .to_string(),
    ))
    .await?;
    while let Some(msg) = ws.next().await {
        let Message::Text(text) = msg? else { continue };
        let v: Value = serde_json::from_str(&text)?;
        if v["op"] == "reply" && v["ok"] == false {
            bail!("refused: {v}");
        }
        if v["type"] == "task.state" && v["data"]["state"] == "completed" {
            break;
        }
    }
    ws.close(None).await?;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let tokens = create_users(&args).await?;
    let ws_url = format!("{}/ws", args.url.replacen("http", "ws", 1));
    println!("round  sessions  rss_mib  failed");
    for round in 1..=args.rounds {
        let mut all = tokio::task::JoinSet::new();
        for i in 0..args.sessions {
            let token = tokens[i % tokens.len()].clone();
            all.spawn(session(ws_url.clone(), token));
            if i % 500 == 499 {
                tokio::task::yield_now().await;
            }
        }
        let mut failed = 0;
        while let Some(done) = all.join_next().await {
            let error = match done {
                Ok(Ok(())) => continue,
                Ok(Err(e)) => e.to_string(),
                Err(e) => e.to_string(),
            };
            if failed == 0 {
                eprintln!("round {round}: a session failed: {error}");
            }
            failed += 1;
        }
        tokio::time::sleep(Duration::from_secs(args.settle)).await;
        let rss = rss_kib(args.server_pid)? as f64 / 1024.0;
        println!("{round:>5}  {:>8}  {rss:>7.1}  {failed:>6}", args.sessions);
    }
    Ok(())
}
