//! `switchboard run` and `switchboard attach`: one task, followed live
//! until it ends, across dropped connections.

use std::io::Read;
use std::time::Duration;

use serde_json::{Map, Value, json};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::time::Instant;
use uuid::Uuid;

use crate::cli::client::{Event, Http, Ws, is_terminal};
use crate::cli::config::{self, Target};
use crate::cli::output::{Out, Style, TaskPrinter};
use crate::cli::{CliError, Common, exit, exit_for_state};

/// How long after a first Ctrl-C `run` (and `console`) waits before
/// cancelling the task: a second Ctrl-C within it detaches instead and
/// leaves the task running. `SWITCHBOARD_CTRL_C_WINDOW_MS` overrides it.
const CTRL_C_WINDOW: Duration = Duration::from_millis(1000);

/// The Ctrl-C window in force.
fn ctrl_c_window() -> Duration {
    std::env::var("SWITCHBOARD_CTRL_C_WINDOW_MS")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .map(Duration::from_millis)
        .unwrap_or(CTRL_C_WINDOW)
}

/// `run` arguments.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// `AGENT PROMPT`, or just `PROMPT` with `--skill`. A prompt of `-`
    /// is read from stdin.
    #[arg(value_name = "AGENT PROMPT", num_args = 1..=2, required = true)]
    pub args: Vec<String>,
    /// Run a skill: the agent is the first available one offering it
    /// (unless AGENT is given), and the skill id goes in `context.skill`.
    #[arg(long)]
    pub skill: Option<String>,
    /// An agent param `KEY=VALUE`; VALUE is JSON when it parses as JSON
    /// (`fail=true`, `delay_ms=20`), a string otherwise. Repeatable.
    #[arg(long = "param", value_name = "KEY=VALUE")]
    pub param: Vec<String>,
    /// Agent params as one JSON object (`--param` wins on clashes).
    #[arg(long, value_name = "JSON")]
    pub params: Option<String>,
    /// Print the task id and return without following it.
    #[arg(long)]
    pub detach: bool,
}

/// `attach` arguments.
#[derive(Debug, clap::Args)]
pub struct AttachArgs {
    /// The task to follow.
    pub task_id: Uuid,
}

/// `params` from `--params` and `--param`.
pub fn build_params(
    pairs: &[String],
    json_obj: Option<&str>,
) -> Result<Map<String, Value>, CliError> {
    let mut params = match json_obj {
        None => Map::new(),
        Some(text) => match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(m)) => m,
            Ok(_) => return Err(CliError::Usage("--params must be a JSON object".into())),
            Err(e) => return Err(CliError::Usage(format!("--params is not JSON: {e}"))),
        },
    };
    for pair in pairs {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| CliError::Usage(format!("--param `{pair}` is not KEY=VALUE")))?;
        let value = serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.to_owned()));
        params.insert(k.to_owned(), value);
    }
    Ok(params)
}

/// The prompt, reading stdin for `-`.
pub fn read_prompt(arg: &str) -> Result<String, CliError> {
    if arg != "-" {
        return Ok(arg.to_owned());
    }
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .map_err(|e| CliError::Usage(format!("cannot read the prompt from stdin: {e}")))?;
    Ok(text)
}

/// Pick the agent for a skill: the first of its agents that is available.
async fn agent_for_skill(target: &Target, skill: &str) -> Result<String, CliError> {
    let http = Http::new(target);
    let skills = http.get("/api/runtime/skills").await?;
    let entry = skills
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["skill_id"] == skill)
        .ok_or_else(|| CliError::Usage(format!("no skill `{skill}` on {}", target.url)))?;
    let agents = http.get("/api/runtime/agents").await?;
    let available = |name: &str| {
        agents
            .as_array()
            .into_iter()
            .flatten()
            .any(|a| a["agent_type"] == name && a["available"] == true)
    };
    entry["agents"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .find(|a| available(a))
        .map(str::to_owned)
        .ok_or_else(|| CliError::Usage(format!("no available agent offers the skill `{skill}`")))
}

/// `switchboard run`.
pub async fn run(common: &Common, args: RunArgs, out: Out) -> Result<u8, CliError> {
    let target = config::resolve(common)?;
    let (agent, prompt) = match (&args.skill, args.args.as_slice()) {
        (_, [agent, prompt]) => (agent.clone(), prompt.clone()),
        (Some(skill), [prompt]) => (agent_for_skill(&target, skill).await?, prompt.clone()),
        _ => {
            return Err(CliError::Usage(
                "usage: switchboard run AGENT PROMPT (or --skill SKILL PROMPT)".into(),
            ));
        }
    };
    let prompt = read_prompt(&prompt)?;
    let params = build_params(&args.param, args.params.as_deref())?;
    // Installed before anything is sent, so no Ctrl-C is missed.
    let mut sigint = interrupts()?;
    let user = Http::new(&target).user_id().await?;
    let mut ws = Ws::connect_reusing(&target, &user).await?;
    let mut op = json!({
        "op": "task.submit",
        "agent_type": agent,
        "prompt": prompt,
        // Makes a resend after a dropped connection safe.
        "idempotency_key": Uuid::new_v4().to_string(),
    });
    if !params.is_empty() {
        op["params"] = Value::Object(params);
    }
    if let Some(skill) = &args.skill {
        op["context"] = json!({"skill": skill});
    }
    let task = ws.submit(op).await?;
    let task_id: Uuid = task["task_id"]
        .as_str()
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| CliError::Other(format!("unexpected submit reply: {task}")))?;
    if args.detach {
        if out.json {
            out.json_line(&task);
        } else {
            println!("{task_id}");
        }
        ws.close().await;
        return Ok(exit::OK);
    }
    if !out.json {
        eprintln!(
            "{}",
            out.paint_err(Style::Dim, &format!("task {task_id} submitted to {agent}"))
        );
    }
    let mut printer = TaskPrinter::new(out, "pending");
    let code = follow(
        &mut ws,
        task_id,
        &mut printer,
        &mut sigint,
        OnInterrupt::Cancel,
    )
    .await;
    ws.close().await;
    code
}

/// A SIGINT listener. Unlike `tokio::signal::ctrl_c()` it queues a signal
/// that arrives while nobody is waiting.
pub fn interrupts() -> Result<Signal, CliError> {
    signal(SignalKind::interrupt())
        .map_err(|e| CliError::Other(format!("cannot handle Ctrl-C: {e}")))
}

/// What the first Ctrl-C does while following a task.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum OnInterrupt {
    /// Cancel the task on the node once the Ctrl-C window has passed; a
    /// second Ctrl-C detaches (within the window: without cancelling).
    Cancel,
    /// Stop following; the task goes on.
    Detach,
}

/// How following a task ended.
pub enum Followed {
    /// It reached this terminal state.
    Ended(String),
    /// The user detached; it goes on.
    Detached,
    /// It is waiting for an approval (only when asked to stop there).
    Waiting,
}

/// Print the task's events until it ends; the exit code of `run`.
pub async fn follow(
    ws: &mut Ws,
    task_id: Uuid,
    printer: &mut TaskPrinter,
    sigint: &mut Signal,
    on_interrupt: OnInterrupt,
) -> Result<u8, CliError> {
    match follow_until(ws, task_id, printer, sigint, on_interrupt, false).await? {
        Followed::Ended(state) => Ok(exit_for_state(&state)),
        Followed::Detached | Followed::Waiting => Ok(exit::INTERRUPTED),
    }
}

/// Where a Ctrl-C left a followed task.
#[derive(Debug, Clone, Copy)]
enum Interrupted {
    /// No Ctrl-C yet.
    No,
    /// One Ctrl-C: the task is cancelled at this instant unless another
    /// comes first.
    CancelAt(Instant),
    /// The cancel was sent.
    Cancelling,
}

/// Print the task's events until it ends, the user detaches, or (with
/// `stop_at_waiting`) it waits for an approval.
pub async fn follow_until(
    ws: &mut Ws,
    task_id: Uuid,
    printer: &mut TaskPrinter,
    sigint: &mut Signal,
    on_interrupt: OnInterrupt,
    stop_at_waiting: bool,
) -> Result<Followed, CliError> {
    let mut interrupted = Interrupted::No;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        let cancel_at = match interrupted {
            Interrupted::CancelAt(at) => Some(at),
            _ => None,
        };
        tokio::select! {
            event = ws.next_event() => {
                if let Some(end) = on_event(&event?, task_id, printer, stop_at_waiting) {
                    return Ok(end);
                }
            }
            _ = sigint.recv() => match (on_interrupt, interrupted) {
                (OnInterrupt::Cancel, Interrupted::No) => {
                    let window = ctrl_c_window();
                    interrupted = Interrupted::CancelAt(Instant::now() + window);
                    printer.dim_notice(&format!(
                        "cancelling the task in {:.1} s (Ctrl-C again to detach and leave it running)",
                        window.as_secs_f64()
                    ));
                }
                (_, Interrupted::Cancelling) => {
                    return Ok(detach(printer, task_id, "the cancel was sent"));
                }
                _ => return Ok(detach(printer, task_id, "the task goes on")),
            },
            _ = tokio::time::sleep_until(cancel_at.unwrap_or_else(Instant::now)), if cancel_at.is_some() => {
                interrupted = Interrupted::Cancelling;
                if let Some(end) = cancel(ws, task_id, printer, sigint).await? {
                    return Ok(end);
                }
            }
            _ = tick.tick(), if printer.wants_spinner() => printer.tick(),
        }
    }
}

/// Print an event of the followed task; how following ends, if it does.
fn on_event(
    event: &Event,
    task_id: Uuid,
    printer: &mut TaskPrinter,
    stop_at_waiting: bool,
) -> Option<Followed> {
    if let Some(line) = crate::cli::watch::pruned_line(event) {
        // The followed task's own events are never pruned while it runs;
        // older ones of its stream were.
        printer.dim_notice(&line);
        return None;
    }
    if event.task_id != Some(task_id) {
        return None;
    }
    if let Some(state) = printer.event(event) {
        printer.finish();
        return Some(Followed::Ended(state));
    }
    if event.state() == Some("waiting") {
        if stop_at_waiting {
            printer.finish();
            return Some(Followed::Waiting);
        }
        printer.hint(&format!(
            "answer with: switchboard approve {task_id} (or deny {task_id})"
        ));
    }
    None
}

/// Send `task.cancel`; the task's final event follows on the stream. A
/// Ctrl-C while waiting for the reply detaches.
async fn cancel(
    ws: &mut Ws,
    task_id: Uuid,
    printer: &mut TaskPrinter,
    sigint: &mut Signal,
) -> Result<Option<Followed>, CliError> {
    printer.dim_notice("cancelling the task (Ctrl-C again to detach)");
    tokio::select! {
        r = ws.call(json!({"op": "task.cancel", "task_id": task_id})) => match r {
            // Already over: its final event is on its way.
            Err(e) if e.code() == "invalid_transition" => Ok(None),
            Err(e) => Err(e),
            Ok(_) => Ok(None),
        },
        _ = sigint.recv() => Ok(Some(detach(printer, task_id, "the cancel was sent"))),
    }
}

fn detach(printer: &mut TaskPrinter, task_id: Uuid, how: &str) -> Followed {
    printer.notice(&format!("detached; {how}: switchboard attach {task_id}"));
    Followed::Detached
}

/// A stored task event (`task.get` shape) as a stream event frame, so that
/// `attach --json` prints one shape throughout.
fn stored_event(detail: &Value, e: &Value, prev_state: &mut Option<String>) -> Event {
    let session = detail["session_id"].as_str().unwrap_or_default();
    let (kind, data) = if e["event_type"] == "output" {
        ("task.output", json!({"chunk": e["chunk"]}))
    } else {
        let data = json!({"state": e["state"], "prev_state": prev_state, "message": e["message"]});
        *prev_state = e["state"].as_str().map(str::to_owned);
        ("task.state", data)
    };
    let raw = json!({
        "op": "event",
        "stream": format!("session:{session}"),
        "seq": e["seq"],
        "type": kind,
        "task_id": detail["task_id"],
        "at": e["timestamp"],
        "data": data,
    });
    Event {
        stream: format!("session:{session}"),
        seq: e["seq"].as_i64().unwrap_or(0),
        kind: kind.to_owned(),
        task_id: detail["task_id"].as_str().and_then(|t| t.parse().ok()),
        raw,
    }
}

/// `switchboard attach`.
pub async fn attach(common: &Common, args: AttachArgs, out: Out) -> Result<u8, CliError> {
    let target = config::resolve(common)?;
    let mut sigint = interrupts()?;
    let http = Http::new(&target);
    let detail = http
        .get(&format!("/api/runtime/tasks/{}", args.task_id))
        .await?;
    let mut printer = TaskPrinter::new(out, detail["state"].as_str().unwrap_or("pending"));
    let mut last_seq = 0;
    let mut prev = None;
    for e in detail["events"].as_array().into_iter().flatten() {
        let event = stored_event(&detail, e, &mut prev);
        last_seq = last_seq.max(event.seq);
        if let Some(state) = printer.event(&event) {
            printer.finish();
            return Ok(exit_for_state(&state));
        }
    }
    let state = detail["state"].as_str().unwrap_or_default();
    if is_terminal(state) {
        printer.finish();
        return Ok(exit_for_state(state));
    }
    let session: Uuid = detail["session_id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| CliError::Other("the task has no session_id".into()))?;
    let me = http.user_id().await?;
    // One's own session can be attached to directly; someone else's stream
    // (for an admin) is subscribed from a session of one's own.
    let mut ws = if detail["user_id"] == me.as_str() {
        Ws::connect(&target, Some(session), Some(last_seq)).await?
    } else {
        let mut ws = Ws::connect_reusing(&target, &me).await?;
        ws.subscribe(&format!("session:{session}"), Some(last_seq))
            .await?;
        ws
    };
    let code = follow(
        &mut ws,
        args.task_id,
        &mut printer,
        &mut sigint,
        OnInterrupt::Detach,
    )
    .await;
    ws.close().await;
    code
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `--param` values are JSON when they parse, strings otherwise, and win
    /// over `--params`.
    #[test]
    fn params() {
        let p = build_params(
            &["fail=true".into(), "delay_ms=20".into(), "name=bob".into()],
            Some(r#"{"fail": false, "x": [1]}"#),
        )
        .unwrap();
        assert_eq!(
            Value::Object(p),
            json!({"fail": true, "delay_ms": 20, "name": "bob", "x": [1]})
        );
        assert!(build_params(&["nope".into()], None).is_err());
        assert!(build_params(&[], Some("[1]")).is_err());
    }
}
