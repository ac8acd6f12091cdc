//! `switchboard watch`: tail a session's stream or the audit log, live,
//! resuming after a dropped connection with no gap and no duplicate.

use uuid::Uuid;

use crate::cli::client::{Event, Http, Ws};
use crate::cli::config;
use crate::cli::output::{Out, Style, s, short_time};
use crate::cli::run::interrupts;
use crate::cli::{CliError, Common, exit};

/// `watch` arguments.
#[derive(Debug, clap::Args)]
pub struct WatchArgs {
    /// The session to tail (default: your most recently active session).
    #[arg(long, conflicts_with = "audit")]
    pub session: Option<Uuid>,
    /// Tail the audit log instead (admin:system).
    #[arg(long)]
    pub audit: bool,
    /// Replay stored events after this seq first (0: from the start);
    /// default: only new events.
    #[arg(long, value_name = "SEQ")]
    pub after_seq: Option<i64>,
    /// Stop after this many events.
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
}

/// `switchboard watch`.
pub async fn watch(common: &Common, args: WatchArgs, out: Out) -> Result<u8, CliError> {
    let target = config::resolve(common)?;
    let mut sigint = interrupts()?;
    let http = Http::new(&target);
    let (mut ws, stream) = if args.audit {
        let mut ws = Ws::connect_reusing(&target, &http.user_id().await?).await?;
        ws.subscribe("audit", args.after_seq).await?;
        (ws, "audit".to_owned())
    } else {
        let me = http.get("/api/me").await?;
        let session = match args.session {
            Some(id) => http.get(&format!("/api/runtime/sessions/{id}")).await?,
            None => latest_session(&http, &me).await?,
        };
        let id: Uuid = session["session_id"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| CliError::Other(format!("unexpected session: {session}")))?;
        let stream = format!("session:{id}");
        let ws = if session["user_id"] == me["user_id"] {
            Ws::connect(&target, Some(id), args.after_seq).await?
        } else {
            let user = me["user_id"].as_str().unwrap_or_default();
            let mut ws = Ws::connect_reusing(&target, user).await?;
            ws.subscribe(&stream, args.after_seq).await?;
            ws
        };
        (ws, stream)
    };
    if !out.json {
        eprintln!(
            "{}",
            out.paint_err(
                Style::Dim,
                &format!("watching {stream} on {} (Ctrl-C to stop)", target.url)
            )
        );
    }
    let mut seen = 0u64;
    loop {
        if args.count.is_some_and(|n| seen >= n) {
            ws.close().await;
            return Ok(exit::OK);
        }
        tokio::select! {
            event = ws.next_event() => {
                let event = event?;
                if event.stream != stream {
                    continue;
                }
                if event.kind != "stream.pruned" {
                    seen += 1;
                }
                print_event(&out, &event);
            }
            _ = sigint.recv() => {
                ws.close().await;
                return Ok(exit::INTERRUPTED);
            }
        }
    }
}

/// The caller's most recently active session.
async fn latest_session(
    http: &Http,
    me: &serde_json::Value,
) -> Result<serde_json::Value, CliError> {
    let sessions = http.get("/api/runtime/sessions").await?;
    sessions
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["user_id"] == me["user_id"])
        .max_by_key(|s| s["last_activity"].as_str().unwrap_or_default().to_owned())
        .cloned()
        .ok_or_else(|| {
            CliError::Usage("you have no sessions yet; pass --session ID or --audit".into())
        })
}

/// One event as a line.
pub fn print_event(out: &Out, e: &Event) {
    if out.json {
        out.json_line(&e.raw);
        return;
    }
    if let Some(line) = pruned_line(e) {
        println!("{}", out.paint(Style::Yellow, &line));
        return;
    }
    let seq = out.paint(Style::Dim, &format!("#{:<5}", e.seq));
    let at = short_time(e.raw["at"].as_str().unwrap_or_default());
    let task = e
        .task_id
        .map(|t| out.paint(Style::Cyan, &t.to_string()[..8]))
        .unwrap_or_default();
    let what = if let Some(chunk) = e.chunk() {
        format!("output {}", serde_json::Value::String(chunk.to_owned()))
    } else if let Some(state) = e.state() {
        let mut line = match e.raw["data"]["prev_state"].as_str() {
            Some(prev) => format!("{prev} → {state}"),
            None => state.to_owned(),
        };
        if let Some(m) = e.message() {
            line.push_str(&format!(" ({m})"));
        }
        line
    } else if e.kind == "audit" {
        let d = &e.raw["data"];
        format!(
            "{} {} user={} {}/{}",
            s(d, "event_type"),
            s(d, "status"),
            s(d, "user_id"),
            s(d, "resource_type"),
            s(d, "resource_id")
        )
    } else {
        format!("{} {}", e.kind, e.raw["data"])
    };
    println!("{seq} {at} {task} {what}");
}

/// The line for a `stream.pruned` event: older events were removed by the
/// node's retention, and what follows starts at `earliest_seq`.
pub fn pruned_line(e: &Event) -> Option<String> {
    let n = e.raw["data"]["earliest_seq"].as_i64()?;
    (e.kind == "stream.pruned")
        .then(|| format!("events before seq {n} were pruned (data retention); showing from {n}"))
}
