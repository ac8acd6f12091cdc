//! One-shot commands over REST: `tasks`, `cancel`, `approve`, `deny`,
//! `agents`, `skills`, `sessions`. REST rather than the socket because a
//! socket's `hello` would open a session for every invocation.

use serde_json::{Value, json};
use uuid::Uuid;

use crate::cli::client::Http;
use crate::cli::config;
use crate::cli::output::{Out, Style, list as join, s, short_time};
use crate::cli::{CliError, Common, exit};

/// `tasks` filters.
#[derive(Debug, clap::Args)]
pub struct TasksArgs {
    /// Only tasks in this state (pending, running, waiting, completed, ...).
    #[arg(long)]
    pub state: Option<String>,
    /// Only tasks of this agent.
    #[arg(long)]
    pub agent: Option<String>,
    /// Only tasks of this session.
    #[arg(long)]
    pub session: Option<Uuid>,
    /// At most this many (newest first).
    #[arg(long, default_value_t = 20)]
    pub limit: i64,
}

fn http(common: &Common) -> Result<Http, CliError> {
    Ok(Http::new(&config::resolve(common)?))
}

/// A query string from optional pairs.
fn query(pairs: &[(&str, Option<String>)]) -> String {
    let parts: Vec<String> = pairs
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", encode(v))))
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

/// Percent-encode a query value or path segment.
pub fn encode(v: &str) -> String {
    let mut out = String::new();
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A state, coloured by how it ended.
pub fn paint_state(out: &Out, state: &str) -> String {
    let style = match state {
        "completed" => Style::Green,
        "failed" => Style::Red,
        "cancelled" | "waiting" => Style::Yellow,
        _ => Style::Cyan,
    };
    out.paint(style, state)
}

/// Task rows for a table.
pub fn task_rows(out: &Out, tasks: &Value) -> Vec<Vec<String>> {
    tasks
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| {
            vec![
                s(t, "task_id"),
                paint_state(out, &s(t, "state")),
                s(t, "agent_type"),
                s(t, "user_id"),
                short_time(&s(t, "created_at")),
            ]
        })
        .collect()
}

/// `switchboard tasks`.
pub async fn list(common: &Common, args: TasksArgs, out: Out) -> Result<u8, CliError> {
    let http = http(common)?;
    let q = query(&[
        ("state", args.state),
        ("agent_type", args.agent),
        ("session_id", args.session.map(|s| s.to_string())),
        ("limit", Some(args.limit.to_string())),
    ]);
    let tasks = http.get(&format!("/api/runtime/tasks{q}")).await?;
    if out.json {
        out.json_line(&tasks);
    } else {
        out.table(
            &["TASK", "STATE", "AGENT", "USER", "CREATED"],
            &task_rows(&out, &tasks),
        );
    }
    Ok(exit::OK)
}

/// `switchboard cancel`.
pub async fn cancel(common: &Common, task_id: Uuid, out: Out) -> Result<u8, CliError> {
    let reply = http(common)?
        .post(&format!("/api/runtime/tasks/{task_id}/cancel"), json!({}))
        .await?;
    if out.json {
        out.json_line(&reply);
    } else {
        println!("{task_id} {}", paint_state(&out, &s(&reply, "state")));
    }
    Ok(exit::OK)
}

/// `switchboard approve` / `deny`.
pub async fn respond(
    common: &Common,
    task_id: Uuid,
    approve: bool,
    input: Option<String>,
    out: Out,
) -> Result<u8, CliError> {
    let mut body = json!({"approve": approve});
    if let Some(i) = input {
        body["input"] = json!(i);
    }
    let reply = http(common)?
        .post(&format!("/api/runtime/tasks/{task_id}/respond"), body)
        .await?;
    if out.json {
        out.json_line(&reply);
    } else {
        let verb = if approve { "approved" } else { "denied" };
        println!(
            "{task_id} {verb}; now {}",
            paint_state(&out, &s(&reply, "state"))
        );
    }
    Ok(exit::OK)
}

/// `switchboard agents`.
pub async fn agents(common: &Common, out: Out) -> Result<u8, CliError> {
    let agents = http(common)?.get("/api/runtime/agents").await?;
    if out.json {
        out.json_line(&agents);
        return Ok(exit::OK);
    }
    let rows: Vec<Vec<String>> = agents
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| {
            let available = if a["available"] == true {
                out.paint(Style::Green, "yes")
            } else {
                let why = a["metadata"]["reason"].as_str().unwrap_or("no");
                out.paint(Style::Red, &format!("no: {why}"))
            };
            // A remote host's agent says which host runs it.
            let host = a["metadata"]["host"].as_str().unwrap_or("-").to_owned();
            vec![
                s(a, "agent_type"),
                host,
                available,
                join(a, "capabilities"),
                s(a, "description"),
            ]
        })
        .collect();
    out.table(
        &["AGENT", "HOST", "AVAILABLE", "CAPABILITIES", "DESCRIPTION"],
        &rows,
    );
    Ok(exit::OK)
}

/// `switchboard skills`.
pub async fn skills(common: &Common, out: Out) -> Result<u8, CliError> {
    let skills = http(common)?.get("/api/runtime/skills").await?;
    if out.json {
        out.json_line(&skills);
        return Ok(exit::OK);
    }
    let rows: Vec<Vec<String>> = skills
        .as_array()
        .into_iter()
        .flatten()
        .map(|k| {
            vec![
                s(k, "skill_id"),
                join(k, "agents"),
                join(k, "required_permissions"),
                s(k, "description"),
            ]
        })
        .collect();
    out.table(&["SKILL", "AGENTS", "NEEDS", "DESCRIPTION"], &rows);
    Ok(exit::OK)
}

/// `switchboard sessions`.
pub async fn sessions(common: &Common, out: Out) -> Result<u8, CliError> {
    let sessions = http(common)?.get("/api/runtime/sessions").await?;
    if out.json {
        out.json_line(&sessions);
        return Ok(exit::OK);
    }
    let rows: Vec<Vec<String>> = sessions
        .as_array()
        .into_iter()
        .flatten()
        .map(|x| {
            vec![
                s(x, "session_id"),
                s(x, "user_id"),
                s(x, "state"),
                s(x, "device_id"),
                s(x, "last_seq"),
                short_time(&s(x, "last_activity")),
            ]
        })
        .collect();
    out.table(
        &[
            "SESSION",
            "USER",
            "STATE",
            "DEVICE",
            "LAST SEQ",
            "LAST ACTIVITY",
        ],
        &rows,
    );
    Ok(exit::OK)
}
