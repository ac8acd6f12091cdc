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

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use uuid::Uuid;

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

/// What the driver tells the connections.
#[derive(Clone)]
enum Phase {
    /// Connect, say hello, wait.
    Connecting,
    /// Go: submit from `start` until `until`.
    Run(Arc<Plan>),
    /// Close now.
    Stop,
}

struct Plan {
    start: Instant,
    until: Instant,
    /// Every connection's session id, by index (`None`: it failed).
    sessions: Vec<Option<String>>,
}

/// The figures one connection collects.
#[derive(Default)]
struct Stats {
    submitted: u64,
    acked: u64,
    rejected: u64,
    completed: u64,
    failed: u64,
    unfinished: u64,
    events: u64,
    own_events: u64,
    /// Microseconds from submit to the task's first event.
    first_us: Vec<u32>,
    /// Microseconds from submit to its terminal event.
    done_us: Vec<u32>,
    last_event: Option<Instant>,
    error: Option<String>,
}

type Ws = WebSocketStream<TcpStream>;

/// The parts of a server frame this tool looks at; the rest is skipped
/// without being built.
#[derive(Deserialize)]
struct Frame<'a> {
    op: &'a str,
    #[serde(default)]
    id: Option<u64>,
    #[serde(default)]
    ok: bool,
    #[serde(default, borrow)]
    result: Option<Ack<'a>>,
    #[serde(default)]
    error: Option<ErrorBody>,
    #[serde(default)]
    stream: Option<&'a str>,
    #[serde(default)]
    task_id: Option<&'a str>,
    #[serde(default, rename = "type")]
    kind: Option<&'a str>,
    #[serde(default, borrow)]
    data: Option<Data<'a>>,
}

#[derive(Deserialize)]
struct Ack<'a> {
    #[serde(default)]
    task_id: Option<&'a str>,
    #[serde(default)]
    session_id: Option<&'a str>,
}

#[derive(Deserialize)]
struct ErrorBody {
    code: String,
    message: String,
}

#[derive(Deserialize)]
struct Data<'a> {
    #[serde(default)]
    state: Option<&'a str>,
}

/// The hello's id; submits count up from 1, subscribes use 0.
const HELLO_ID: u64 = u64::MAX;

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

/// Add one connection's figures to the total.
fn merge(total: &mut Stats, s: Stats) {
    total.submitted += s.submitted;
    total.acked += s.acked;
    total.rejected += s.rejected;
    total.completed += s.completed;
    total.failed += s.failed;
    total.unfinished += s.unfinished;
    total.events += s.events;
    total.own_events += s.own_events;
    total.first_us.extend(s.first_us);
    total.done_us.extend(s.done_us);
    total.last_event = total.last_event.max(s.last_event);
    if total.error.is_none() {
        total.error = s.error;
    }
}

fn report(
    args: &Args,
    t: &mut Stats,
    start: Instant,
    server: (Option<ProcSample>, Option<ProcSample>),
    me: (ProcSample, ProcSample),
) {
    let window = t
        .last_event
        .map_or(0.0, |l| l.saturating_duration_since(start).as_secs_f64())
        .max(1e-9);
    println!(
        "submitted        {} ({} acknowledged, {} refused)",
        t.submitted, t.acked, t.rejected
    );
    println!(
        "completed        {} tasks ({} failed, {} unfinished) in {window:.2} s: {:.0} tasks/s",
        t.completed,
        t.failed,
        t.unfinished,
        t.completed as f64 / window
    );
    println!(
        "events           {} delivered to clients: {:.0} events/s ({} on the connections' own session streams, {} through --fanout subscriptions)",
        t.events,
        t.events as f64 / window,
        t.own_events,
        t.events - t.own_events
    );
    t.first_us.sort_unstable();
    t.done_us.sort_unstable();
    println!("submit -> first  {}", percentiles(&t.first_us));
    println!("submit -> done   {}", percentiles(&t.done_us));
    if let (Some(before), Some(after)) = server {
        println!(
            "server           RSS {:.1} MiB; CPU {:.1} s over {window:.1} s ({:.2} cores)",
            after.rss_kib as f64 / 1024.0,
            after.cpu_secs - before.cpu_secs,
            (after.cpu_secs - before.cpu_secs) / window
        );
    }
    let (before, after) = me;
    println!(
        "loadgen          CPU {:.1} s ({:.2} cores), RSS {:.1} MiB",
        after.cpu_secs - before.cpu_secs,
        (after.cpu_secs - before.cpu_secs) / window,
        after.rss_kib as f64 / 1024.0
    );
    if let Some(e) = &t.error {
        println!("first error      {e}");
    }
    if args.rate > 0.0 && t.acked > 0 {
        let offered = args.rate * args.duration as f64;
        println!(
            "offered          {offered:.0} submits; sent {} ({:.0}%)",
            t.submitted,
            100.0 * t.submitted as f64 / offered
        );
    }
}

/// `p50 .. p99 .. max ..` in milliseconds, from sorted microseconds.
fn percentiles(sorted: &[u32]) -> String {
    if sorted.is_empty() {
        return "no samples".into();
    }
    let at = |q: f64| {
        let rank = (sorted.len() as f64 * q).ceil() as usize;
        sorted[rank.saturating_sub(1).min(sorted.len() - 1)] as f64 / 1000.0
    };
    format!(
        "p50 {:.2} ms   p99 {:.2} ms   max {:.2} ms   ({} samples)",
        at(0.50),
        at(0.99),
        at(1.0),
        sorted.len()
    )
}

/// Create `--users` developers and return their tokens.
async fn create_users(args: &Args) -> anyhow::Result<Vec<String>> {
    let http = reqwest::Client::new();
    let run = &Uuid::new_v4().simple().to_string()[..8];
    let base = args.url.trim_end_matches('/');
    let mut tokens = Vec::with_capacity(args.users);
    for k in 0..args.users {
        let resp = http
            .post(format!("{base}/api/admin/users"))
            .bearer_auth(&args.token)
            .json(&serde_json::json!({"user_id": format!("loadgen-{run}-{k}"), "roles": ["developer"]}))
            .send()
            .await
            .context("cannot reach the node")?;
        let status = resp.status();
        let body: serde_json::Value = resp.json().await.unwrap_or_default();
        match body["token"].as_str() {
            Some(token) if status.is_success() => tokens.push(token.to_owned()),
            _ => bail!("creating user {k} failed ({status}): {body}"),
        }
    }
    println!(
        "users            created {} developers loadgen-{run}-*",
        args.users
    );
    Ok(tokens)
}

/// The target's socket address and the WebSocket URL.
async fn resolve(url: &str) -> anyhow::Result<(SocketAddr, String)> {
    let rest = url
        .trim_end_matches('/')
        .strip_prefix("http://")
        .context("--url must be http://HOST:PORT (TLS is not supported by this tool)")?;
    let hostport = rest.split('/').next().unwrap_or(rest);
    let with_port = if hostport
        .rsplit(':')
        .next()
        .is_some_and(|p| p.parse::<u16>().is_ok())
        && !hostport.ends_with(']')
    {
        hostport.to_owned()
    } else {
        format!("{hostport}:80")
    };
    let addr = tokio::net::lookup_host(&with_port)
        .await
        .with_context(|| format!("cannot resolve {with_port}"))?
        .next()
        .with_context(|| format!("{with_port} has no address"))?;
    Ok((addr, format!("ws://{hostport}/ws")))
}

fn is_loopback_v4(addr: SocketAddr) -> bool {
    matches!(addr.ip(), IpAddr::V4(ip) if ip.is_loopback())
}

/// The source address of connection `i`: the default for the first
/// `conns_per_ip`, then 127.0.0.2, 127.0.0.3, ... towards a loopback target.
fn source_ip(i: usize, shared: &Shared) -> Option<IpAddr> {
    let k = i / shared.args.conns_per_ip.max(1);
    if k == 0 || !is_loopback_v4(shared.target) || k > 250 {
        return None;
    }
    Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + k as u8)))
}

/// Small socket buffers: the defaults (128 KiB each) would cost this process
/// gigabytes at 10k connections.
fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
}

/// Open a connection and say hello; returns the socket and its session id.
async fn open(i: usize, shared: &Shared) -> anyhow::Result<(Ws, String)> {
    let _slot = shared.connect_slots.acquire().await?;
    let socket = if shared.target.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = source_ip(i, shared) {
        socket
            .bind(SocketAddr::new(ip, 0))
            .with_context(|| format!("cannot bind source address {ip}"))?;
    }
    let tcp = socket.connect(shared.target).await.context("connect")?;
    tcp.set_nodelay(true)?;
    let (mut ws, _) =
        tokio_tungstenite::client_async_with_config(shared.ws_url.as_str(), tcp, Some(ws_config()))
            .await
            .context("WebSocket handshake")?;
    let hello = &shared.hellos[i % shared.hellos.len()];
    ws.send(Message::text(hello.clone())).await?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => {
                let f: Frame = serde_json::from_str(text.as_str())?;
                if f.op != "reply" || f.id != Some(HELLO_ID) {
                    continue;
                }
                if let Some(e) = f.error {
                    bail!("hello refused: {} ({})", e.message, e.code);
                }
                let sid = f
                    .result
                    .and_then(|r| r.session_id)
                    .context("hello reply without session_id")?;
                return Ok((ws, sid.to_owned()));
            }
            Some(Ok(Message::Close(c))) => bail!("closed during hello: {c:?}"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => bail!("during hello: {e}"),
            None => bail!("connection ended during hello"),
        }
    }
}

/// One session: open, wait for the go, run, report.
async fn connection(
    i: usize,
    shared: Arc<Shared>,
    ready: mpsc::UnboundedSender<(usize, Result<String, String>)>,
    mut phase: watch::Receiver<Phase>,
) -> Stats {
    let (mut ws, session_id) = match open(i, &shared).await {
        Ok(ok) => ok,
        Err(e) => {
            let _ = ready.send((i, Err(format!("{e:#}"))));
            return Stats::default();
        }
    };
    let _ = ready.send((i, Ok(session_id.clone())));
    // Keep reading while waiting, so that the server's pings are answered.
    let plan = loop {
        tokio::select! {
            changed = phase.changed() => {
                if changed.is_err() {
                    return Stats::default();
                }
                let now = phase.borrow_and_update().clone();
                match now {
                    Phase::Run(plan) => break plan,
                    Phase::Stop => {
                        let _ = ws.close(None).await;
                        return Stats::default();
                    }
                    Phase::Connecting => {}
                }
            }
            msg = ws.next() => match msg {
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return Stats::default(),
                Some(Ok(_)) => {}
            },
        }
    };
    let mut run = Run::new(&shared, &session_id);
    let result = run.drive(&mut ws, &plan, i, &mut phase).await;
    if let Err(e) = result {
        run.stats.error.get_or_insert(format!("{e:#}"));
    }
    run.stats.unfinished = run.outstanding;
    let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
    run.stats
}

/// Submit and event timings of one task.
#[derive(Default)]
struct Times {
    submitted: Option<Instant>,
    first: Option<Instant>,
    done: Option<(Instant, bool)>,
}

/// The running part of one session.
struct Run<'a> {
    shared: &'a Shared,
    own_stream: String,
    next_id: u64,
    /// Submits awaiting their reply, by id.
    sent: HashMap<u64, Instant>,
    tasks: HashMap<Uuid, Times>,
    outstanding: u64,
    stats: Stats,
}

impl<'a> Run<'a> {
    fn new(shared: &'a Shared, session_id: &str) -> Self {
        Run {
            shared,
            own_stream: format!("session:{session_id}"),
            next_id: 0,
            sent: HashMap::new(),
            tasks: HashMap::new(),
            outstanding: 0,
            stats: Stats::default(),
        }
    }

    async fn drive(
        &mut self,
        ws: &mut Ws,
        plan: &Plan,
        i: usize,
        phase: &mut watch::Receiver<Phase>,
    ) -> anyhow::Result<()> {
        let args = &self.shared.args;
        let n = plan.sessions.len();
        // Follow sessions of the same user (connection i is user i % users),
        // since nobody else's are visible without admin:system.
        let stride = self.shared.hellos.len();
        for k in 1..=args.fanout {
            if let Some(Some(other)) = plan.sessions.get((i + k * stride) % n) {
                let sub = format!(r#"{{"op":"subscribe","id":0,"stream":"session:{other}"}}"#);
                ws.feed(Message::text(sub)).await?;
            }
        }
        ws.flush().await?;

        let open_loop = args.rate > 0.0;
        // Open loop: one submit every n/rate seconds, phases spread evenly.
        let period = if open_loop {
            Duration::from_secs_f64(n as f64 / args.rate)
        } else {
            Duration::from_secs(3600)
        };
        let offset = period.mul_f64(i as f64 / n as f64);
        let mut ticker = tokio::time::interval_at(plan.start + offset, period);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let stop_submitting = tokio::time::sleep_until(plan.until);
        tokio::pin!(stop_submitting);
        let mut submitting = true;
        if !open_loop {
            tokio::time::sleep_until(plan.start).await;
            for _ in 0..args.inflight.max(1) {
                self.submit(ws).await?;
            }
        }
        loop {
            tokio::select! {
                _ = ticker.tick(), if open_loop && submitting => {
                    // A tick that comes late, past the end, is not sent.
                    if Instant::now() < plan.until {
                        self.submit(ws).await?;
                    }
                }
                _ = &mut stop_submitting, if submitting => {
                    submitting = false;
                    if self.outstanding == 0 {
                        return Ok(());
                    }
                }
                changed = phase.changed() => {
                    if changed.is_err() || matches!(*phase.borrow_and_update(), Phase::Stop) {
                        return Ok(());
                    }
                }
                msg = ws.next() => {
                    let finished = match msg {
                        Some(Ok(Message::Text(text))) => self.on_frame(text.as_str())?,
                        Some(Ok(Message::Close(c))) => bail!("the server closed the connection: {c:?}"),
                        Some(Ok(_)) => 0,
                        Some(Err(e)) => bail!("WebSocket error: {e}"),
                        None => bail!("the connection ended"),
                    };
                    if !submitting && self.outstanding == 0 {
                        return Ok(());
                    }
                    if !open_loop && submitting {
                        for _ in 0..finished {
                            self.submit(ws).await?;
                        }
                    }
                }
            }
        }
    }

    async fn submit(&mut self, ws: &mut Ws) -> anyhow::Result<()> {
        self.next_id += 1;
        let frame = format!("{{\"id\":{}{}", self.next_id, self.shared.submit_tail);
        self.sent.insert(self.next_id, Instant::now());
        self.stats.submitted += 1;
        self.outstanding += 1;
        ws.send(Message::text(frame)).await?;
        Ok(())
    }

    /// Handle one frame; returns how many tasks it finished.
    fn on_frame(&mut self, text: &str) -> anyhow::Result<u64> {
        let now = Instant::now();
        let f: Frame = serde_json::from_str(text).context("a frame that is not JSON")?;
        match f.op {
            "event" => {
                self.stats.events += 1;
                self.stats.last_event = Some(now);
                if f.stream != Some(self.own_stream.as_str()) {
                    return Ok(0);
                }
                self.stats.own_events += 1;
                let Some(task_id) = f.task_id.and_then(|t| Uuid::parse_str(t).ok()) else {
                    return Ok(0);
                };
                let awaiting_replies = !self.sent.is_empty();
                let times = self.tasks.entry(task_id).or_default();
                times.first.get_or_insert(now);
                if f.kind == Some("task.state") {
                    let state = f.data.and_then(|d| d.state).unwrap_or("");
                    if matches!(state, "completed" | "failed" | "cancelled") {
                        times.done = Some((now, state == "completed"));
                        if times.submitted.is_none() && !awaiting_replies {
                            // Another connection's task on a shared session.
                            self.tasks.remove(&task_id);
                            return Ok(0);
                        }
                    }
                }
                Ok(self.finish(task_id))
            }
            "reply" => {
                let Some(sent_at) = f.id.and_then(|id| self.sent.remove(&id)) else {
                    if let Some(e) = f.error {
                        self.stats
                            .error
                            .get_or_insert(format!("request refused: {} ({})", e.message, e.code));
                    }
                    return Ok(0);
                };
                if !f.ok {
                    self.stats.rejected += 1;
                    self.outstanding -= 1;
                    if let Some(e) = f.error {
                        self.stats
                            .error
                            .get_or_insert(format!("submit refused: {} ({})", e.message, e.code));
                    }
                    return Ok(1);
                }
                self.stats.acked += 1;
                let Some(task_id) = f
                    .result
                    .and_then(|r| r.task_id)
                    .and_then(|t| Uuid::parse_str(t).ok())
                else {
                    bail!("submit reply without task_id");
                };
                self.tasks.entry(task_id).or_default().submitted = Some(sent_at);
                Ok(self.finish(task_id))
            }
            _ => Ok(0),
        }
    }

    /// Record a task once its submit and its end are both known.
    fn finish(&mut self, task_id: Uuid) -> u64 {
        let Some(Times {
            submitted: Some(submitted),
            first,
            done: Some((done, completed)),
        }) = self.tasks.get(&task_id)
        else {
            return 0;
        };
        let micros = |t: Instant| t.saturating_duration_since(*submitted).as_micros() as u32;
        if let Some(first) = first {
            self.stats.first_us.push(micros(*first));
        }
        self.stats.done_us.push(micros(*done));
        if *completed {
            self.stats.completed += 1;
        } else {
            self.stats.failed += 1;
        }
        self.tasks.remove(&task_id);
        self.outstanding -= 1;
        1
    }
}

/// Resident memory and CPU time of a process, from `/proc`.
struct ProcSample {
    rss_kib: u64,
    cpu_secs: f64,
}

impl ProcSample {
    fn take(pid: u32) -> Self {
        Self::read(&pid.to_string())
    }

    fn take_self() -> Self {
        Self::read("self")
    }

    fn read(pid: &str) -> Self {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let rss_kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0);
        // utime and stime are fields 14 and 15, in clock ticks (100 per
        // second on Linux); the command name before them may hold spaces.
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let ticks: u64 = stat
            .rsplit_once(')')
            .map(|(_, rest)| {
                rest.split_whitespace()
                    .skip(11)
                    .take(2)
                    .filter_map(|v| v.parse::<u64>().ok())
                    .sum()
            })
            .unwrap_or(0);
        ProcSample {
            rss_kib,
            cpu_secs: ticks as f64 / 100.0,
        }
    }
}
