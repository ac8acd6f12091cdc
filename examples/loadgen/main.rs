//! Run against a running node: `cargo run --release --example loadgen -- --url http://127.0.0.1:8787 --token $TOKEN --sessions 1000 --rate 1000 --duration 10` (add `--idle --server-pid PID` to measure memory per idle session).
//!
//! A load generator for Switchboard's WebSocket protocol. It opens N
//! concurrent sessions (one WebSocket each, `hello` without `session_id`, as
//! the user of `--token`, or spread over `--users` developers it creates with
//! that admin token), then either
//!
//! - submits `echo` tasks for `--duration` seconds, open loop at `--rate`
//!   submits per second in total (spread evenly over the sessions), or closed
//!   loop with `--rate 0` (each session keeps `--inflight` tasks outstanding),
//!   and prints connect time, tasks/s completed, events/s delivered to clients
//!   and the submit → first event and submit → completed latencies; or
//! - with `--idle`, just holds the sessions open and, given `--server-pid`,
//!   prints the server's resident memory per session (from
//!   `/proc/<pid>/status`, so the server must run on this machine).
//!
//! Fan-out, two ways: `--fanout K` makes every connection also subscribe to
//! the streams of K other sessions of its user, so each stored event is
//! delivered K+1 times; `--session-id ID` attaches every connection to one
//! session, so each event is delivered to all N of them.
//!
//! Past `--conns-per-ip` connections to a loopback address it binds extra
//! source addresses (127.0.0.2, 127.0.0.3, ...) so that the ephemeral ports of
//! one address do not run out. Both this process and the server need a file
//! descriptor per session: raise `ulimit -n` first.
//!
//! It only prints figures; it never asserts anything about them.

mod connect;
mod report;
mod session;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use clap::Parser;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::Instant;

use connect::{HELLO_ID, create_users, is_loopback_v4, resolve};
use report::{ProcSample, Stats, merge, report};
use session::{Phase, Plan, connection};

/// Load-test a running Switchboard node over WebSocket.
#[derive(Parser, Debug, Clone)]
struct Args {
    /// Base URL of the node.
    #[arg(long, default_value = "http://127.0.0.1:8787")]
    url: String,
    /// A token allowed to submit tasks (the admin token works).
    #[arg(long, env = "SWITCHBOARD_TOKEN")]
    token: String,
    /// Concurrent WebSocket sessions.
    #[arg(long, default_value_t = 1000)]
    sessions: usize,
    /// Submits per second, in total over all sessions; 0 = closed loop.
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Closed loop (`--rate 0`): tasks each session keeps outstanding.
    #[arg(long, default_value_t = 1)]
    inflight: usize,
    /// Seconds of submitting.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Seconds to wait for outstanding tasks after submitting stops.
    #[arg(long, default_value_t = 30)]
    drain: u64,
    /// Characters in each echo prompt.
    #[arg(long, default_value_t = 64)]
    prompt_len: usize,
    /// Echo `chunk_size`: characters per output event.
    #[arg(long, default_value_t = 16)]
    chunk_size: usize,
    /// Echo `delay_ms`: pause before each chunk.
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// Each session also subscribes to the streams of the next K sessions.
    #[arg(long, default_value_t = 0)]
    fanout: usize,
    /// Only open the sessions and hold them (memory per session).
    #[arg(long)]
    idle: bool,
    /// `--idle`: seconds to hold the sessions before measuring.
    #[arg(long, default_value_t = 5)]
    hold: u64,
    /// The server's process id, to report its memory and CPU.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Connections being opened at once.
    #[arg(long, default_value_t = 256)]
    connect_concurrency: usize,
    /// Connections per source address before the next loopback address is used.
    #[arg(long, default_value_t = 25_000)]
    conns_per_ip: usize,
    /// Create this many `developer` users (with `--token` as an admin) and
    /// spread the sessions over them; 0 = every session as the `--token` user.
    #[arg(long, default_value_t = 0)]
    users: usize,
    /// Attach every connection to this existing session of the `--token`
    /// user instead of opening one session each, so that all of them follow
    /// one stream (each event is then delivered to every connection).
    #[arg(long, conflicts_with = "users")]
    session_id: Option<String>,
}

/// What every connection task shares.
struct Shared {
    args: Args,
    target: SocketAddr,
    ws_url: String,
    /// The `hello` frames, one per user, serialized once.
    hellos: Vec<String>,
    /// The fields of every submit after its `id`, serialized once.
    submit_tail: String,
    connect_slots: Semaphore,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run(Args::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadgen: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    if args.sessions == 0 {
        bail!("--sessions must be at least 1");
    }
    if args.fanout >= 64 {
        bail!("--fanout must be below the node's max_subscriptions (64 by default)");
    }
    let (target, ws_url) = resolve(&args.url).await?;
    let extra_ips = (args.sessions.saturating_sub(1)) / args.conns_per_ip.max(1);
    if extra_ips > 0 && !is_loopback_v4(target) {
        eprintln!(
            "note: {} sessions from one source address to a non-loopback target may run out of ports",
            args.sessions
        );
    }
    let prompt: String = "switchboard loadgen "
        .chars()
        .cycle()
        .take(args.prompt_len.max(1))
        .collect();
    let submit_tail = serde_json::json!({
        "op": "task.submit",
        "agent_type": "echo",
        "prompt": prompt,
        "params": {"chunk_size": args.chunk_size, "delay_ms": args.delay_ms},
    })
    .to_string();
    let tokens = if args.users == 0 {
        vec![args.token.clone()]
    } else {
        create_users(&args).await?
    };
    let shared = Arc::new(Shared {
        hellos: tokens
            .iter()
            .map(|token| {
                let mut hello = serde_json::json!({"op": "hello", "id": HELLO_ID, "token": token, "device_id": "loadgen"});
                if let Some(sid) = &args.session_id {
                    hello["session_id"] = sid.clone().into();
                }
                hello.to_string()
            })
            .collect(),
        // `{"op":..}` → `,"op":..}` to follow `{"id":N`.
        submit_tail: format!(",{}", &submit_tail[1..]),
        connect_slots: Semaphore::new(args.connect_concurrency.max(1)),
        target,
        ws_url,
        args: args.clone(),
    });

    let events_per_task = 4 + args.prompt_len.max(1).div_ceil(args.chunk_size.max(1));
    if args.idle {
        println!(
            "switchboard loadgen: {} idle sessions against {}",
            args.sessions, args.url
        );
    } else {
        let mode = if args.rate > 0.0 {
            format!("open loop, {} submits/s in total", args.rate)
        } else {
            format!("closed loop, {} in flight per session", args.inflight)
        };
        println!(
            "switchboard loadgen: {} sessions against {}, {mode}, for {} s; echo prompt {} chars, chunk {} ({} events per task), delay {} ms, fan-out {}",
            args.sessions,
            args.url,
            args.duration,
            args.prompt_len,
            args.chunk_size,
            events_per_task,
            args.delay_ms,
            args.fanout
        );
    }

    let server_before = args.server_pid.map(ProcSample::take);

    // Open every connection; each waits for the go after its hello.
    let (phase_tx, phase_rx) = watch::channel(Phase::Connecting);
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel();
    let t0 = Instant::now();
    let handles: Vec<_> = (0..args.sessions)
        .map(|i| {
            tokio::spawn(connection(
                i,
                shared.clone(),
                ready_tx.clone(),
                phase_rx.clone(),
            ))
        })
        .collect();
    drop(ready_tx);
    let mut sessions = vec![None; args.sessions];
    let (mut opened, mut failed) = (0usize, 0usize);
    let mut first_error = None;
    while let Some((i, result)) = ready_rx.recv().await {
        match result {
            Ok(session_id) => {
                sessions[i] = Some(session_id);
                opened += 1;
            }
            Err(e) => {
                failed += 1;
                first_error.get_or_insert(e);
            }
        }
        if opened + failed == args.sessions {
            break;
        }
    }
    let connect_time = t0.elapsed().as_secs_f64();
    println!(
        "connections      {opened} opened (hello answered), {failed} failed, in {connect_time:.2} s ({:.0}/s)",
        opened as f64 / connect_time.max(1e-9)
    );
    if let Some(e) = first_error {
        println!("                 first failure: {e}");
    }

    if args.idle {
        tokio::time::sleep(Duration::from_secs(args.hold)).await;
        if let (Some(pid), Some(before)) = (args.server_pid, &server_before) {
            let after = ProcSample::take(pid);
            let per =
                (after.rss_kib.saturating_sub(before.rss_kib) * 1024) as f64 / opened.max(1) as f64;
            println!(
                "server memory    RSS {:.1} MiB before, {:.1} MiB with {opened} idle sessions: {:.0} bytes ({:.2} KiB) per session",
                before.rss_kib as f64 / 1024.0,
                after.rss_kib as f64 / 1024.0,
                per,
                per / 1024.0
            );
            println!(
                "                 (total RSS / sessions: {:.2} KiB)",
                after.rss_kib as f64 / opened.max(1) as f64
            );
        } else {
            println!("server memory    pass --server-pid to measure it");
        }
        let me = ProcSample::take_self();
        println!("loadgen memory   RSS {:.1} MiB", me.rss_kib as f64 / 1024.0);
        let _ = phase_tx.send(Phase::Stop);
        for h in handles {
            let _ = h.await;
        }
        return Ok(());
    }

    // Go. CPU and memory are sampled again here so that the figures of the
    // run do not include connecting.
    let server_before = args.server_pid.map(ProcSample::take);
    let me_before = ProcSample::take_self();
    let start = Instant::now() + Duration::from_millis(100);
    let until = start + Duration::from_secs(args.duration);
    let _ = phase_tx.send(Phase::Run(Arc::new(Plan {
        start,
        until,
        sessions,
    })));
    let drain = Duration::from_secs(args.drain);
    let stopper = {
        let phase_tx = phase_tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(until + drain).await;
            let _ = phase_tx.send(Phase::Stop);
        })
    };
    let mut total = Stats::default();
    for h in handles {
        if let Ok(s) = h.await {
            merge(&mut total, s);
        }
    }
    stopper.abort();
    let server_after = args.server_pid.map(ProcSample::take);
    let me_after = ProcSample::take_self();
    report(
        &args,
        &mut total,
        start,
        (server_before, server_after),
        (me_before, me_after),
    );
    Ok(())
}
