//! `switchboard host list`: the remote agent hosts linked to the node
//! (`GET /api/runtime/hosts`, `agent:list`). Linking one is
//! `switchboard link` ([`crate::host`]).

use serde_json::Value;

use crate::cli::client::Http;
use crate::cli::output::{Out, Style, s, short_time};
use crate::cli::{CliError, Common, config, exit};

/// `host` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum HostCommand {
    /// List linked hosts, the agents each offers and what they run.
    List,
}

/// `switchboard host ...`.
pub async fn host(common: &Common, command: HostCommand, out: Out) -> Result<u8, CliError> {
    match command {
        HostCommand::List => list(common, out).await,
    }
}

/// An agent of a host as `name (running/max)`.
fn agent_cell(a: &Value) -> String {
    format!(
        "{} ({}/{})",
        s(a, "agent_type"),
        a["running"].as_u64().unwrap_or(0),
        a["max_concurrent"].as_u64().unwrap_or(0)
    )
}

async fn list(common: &Common, out: Out) -> Result<u8, CliError> {
    let hosts = Http::new(&config::resolve(common)?)
        .get("/api/runtime/hosts")
        .await?;
    if out.json {
        out.json_line(&hosts);
        return Ok(exit::OK);
    }
    let rows: Vec<Vec<String>> = hosts
        .as_array()
        .into_iter()
        .flatten()
        .map(|h| {
            let state = match h["state"].as_str() {
                Some("linked") => out.paint(Style::Green, "linked"),
                Some(other) => out.paint(Style::Red, other),
                None => String::new(),
            };
            let agents: Vec<String> = h["agents"]
                .as_array()
                .into_iter()
                .flatten()
                .map(agent_cell)
                .collect();
            vec![
                s(h, "name"),
                state,
                s(h, "user_id"),
                s(h, "node_id"),
                h["running"].as_u64().unwrap_or(0).to_string(),
                agents.join(", "),
                short_time(&s(h, "linked_at")),
            ]
        })
        .collect();
    if rows.is_empty() {
        println!("No host is linked. Link one with `switchboard link --server URL --config FILE`.");
        return Ok(exit::OK);
    }
    out.table(
        &[
            "HOST", "STATE", "USER", "NODE", "RUNNING", "AGENTS", "LINKED",
        ],
        &rows,
    );
    Ok(exit::OK)
}
