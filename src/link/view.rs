//! How hosts and their agents are listed: `GET /api/runtime/hosts` and the
//! hosted entries of `GET /api/runtime/agents`.
//!
//! A hosted agent's listing carries its host in `metadata` (`host`,
//! `host_user`, `host_device`, `host_state`, `linked_at`, `address`), so
//! that on a cluster every node can list the hosts of every other node from
//! the agents their heartbeats publish ([`hosts_from_agents`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::Host;
use crate::agent::AgentInfo;
use crate::event::rfc3339;

/// One agent of a host, as `GET /api/runtime/hosts` lists it.
#[derive(
    Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema, schemars::JsonSchema,
)]
pub struct HostAgentView {
    /// What clients submit to (or `agent_type@host` for this host only).
    pub agent_type: String,
    pub description: String,
    pub capabilities: Vec<String>,
    /// Its kind on the host.
    pub kind: String,
    pub max_concurrent: usize,
    /// Its tasks running on the host now.
    pub running: usize,
}

/// A remote agent host, as `GET /api/runtime/hosts` lists it.
#[derive(
    Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema, schemars::JsonSchema,
)]
pub struct HostView {
    /// The host's name (`switchboard link --name`).
    pub name: String,
    /// The user whose token linked it.
    pub user_id: String,
    /// Its proven device.
    pub device_id: Option<String>,
    /// The node it is linked to.
    pub node_id: String,
    /// The agents it offers.
    pub agents: Vec<HostAgentView>,
    /// Its tasks running now.
    pub running: usize,
    /// When it linked (RFC 3339).
    pub linked_at: String,
    /// `linked`, or `away` while it has lost its link and the grace period runs.
    pub state: String,
    /// While away: when its grace period ends and its tasks fail.
    pub away_until: Option<String>,
}

fn state_of(h: &Host) -> &'static str {
    if h.link.is_some() { "linked" } else { "away" }
}

/// The listings of a host's agents.
pub(super) fn agent_infos(name: &str, h: &Host, node_id: &str) -> Vec<AgentInfo> {
    let total: usize = h.running.values().sum();
    h.offers
        .iter()
        .map(|o| {
            let running = h.running.get(&o.agent_type).copied().unwrap_or(0);
            let mut metadata = json!({
                "kind": o.kind,
                "host": name,
                "address": format!("{}@{name}", o.agent_type),
                "host_user": h.user_id,
                "host_device": h.device_id,
                "host_state": state_of(h),
                "host_running": total,
                "linked_at": rfc3339(&h.linked_at),
                "node_id": node_id,
                "max_concurrent": o.max_concurrent,
                "running": running,
            });
            if let Some(until) = &h.away_until.filter(|_| h.link.is_none()) {
                metadata["away_until"] = json!(rfc3339(until));
                metadata["reason"] = json!(format!(
                    "host `{name}` lost its link; waiting for it to come back"
                ));
            }
            if let Some(roles) = &o.allowed_roles {
                metadata["allowed_roles"] = json!(roles);
            }
            AgentInfo {
                agent_type: o.agent_type.clone(),
                name: o.agent_type.clone(),
                description: o.description.clone(),
                available: h.link.is_some(),
                capabilities: o.capabilities.clone(),
                metadata,
            }
        })
        .collect()
}

/// One host's listing.
pub(super) fn host_view(name: &str, h: &Host, node_id: &str) -> HostView {
    let infos = agent_infos(name, h, node_id);
    hosts_from_agents(&infos)
        .into_iter()
        .next()
        .unwrap_or_else(|| HostView {
            name: name.to_owned(),
            user_id: h.user_id.clone(),
            device_id: h.device_id.clone(),
            node_id: node_id.to_owned(),
            agents: Vec::new(),
            running: 0,
            linked_at: rfc3339(&h.linked_at),
            state: state_of(h).to_owned(),
            away_until: None,
        })
}

fn text(v: &Value, key: &str) -> String {
    v.get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

fn count(v: &Value, key: &str) -> usize {
    v.get(key).and_then(Value::as_u64).unwrap_or(0) as usize
}

/// The hosts behind hosted agent listings (those with `metadata.host`),
/// one per (node, host), by name.
pub fn hosts_from_agents(agents: &[AgentInfo]) -> Vec<HostView> {
    let mut hosts: BTreeMap<(String, String), HostView> = BTreeMap::new();
    for a in agents {
        let m = &a.metadata;
        let Some(name) = m.get("host").and_then(Value::as_str) else {
            continue;
        };
        let node_id = text(m, "node_id");
        let host = hosts
            .entry((name.to_owned(), node_id.clone()))
            .or_insert_with(|| HostView {
                name: name.to_owned(),
                user_id: text(m, "host_user"),
                device_id: m
                    .get("host_device")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
                node_id,
                agents: Vec::new(),
                running: count(m, "host_running"),
                linked_at: text(m, "linked_at"),
                state: text(m, "host_state"),
                away_until: m
                    .get("away_until")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
            });
        host.agents.push(HostAgentView {
            agent_type: a.agent_type.clone(),
            description: a.description.clone(),
            capabilities: a.capabilities.clone(),
            kind: text(m, "kind"),
            max_concurrent: count(m, "max_concurrent"),
            running: count(m, "running"),
        });
    }
    hosts.into_values().collect()
}
