//! `switchboard run` and `switchboard attach`: one task, followed live
//! until it ends, across dropped connections.

use std::io::Read;

use serde_json::{Map, Value, json};
use uuid::Uuid;

use crate::cli::client::{Event, Http, Ws, is_terminal};
use crate::cli::config::{self, Target};
use crate::cli::output::{Out, Style, TaskPrinter};
use crate::cli::{CliError, Common, exit, exit_for_state};

mod follow;

pub use follow::{Followed, OnInterrupt, follow, follow_until, interrupts};

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

/// The `task.submit` op of `run`.
fn submit_op(agent: &str, prompt: &str, params: Map<String, Value>, skill: Option<&str>) -> Value {
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
    if let Some(skill) = skill {
        op["context"] = json!({"skill": skill});
    }
    op
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
    let op = submit_op(&agent, &prompt, params, args.skill.as_deref());
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
