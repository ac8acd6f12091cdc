//! Remote agent host operations: admitting a host that links, listing the
//! hosts, auditing links, and the board's task counts.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::audit::{AuditStatus, NewAudit, kind};
use crate::auth::Principal;
use crate::device::TrustPolicy;
use crate::error::{Error, Result};
use crate::link::{HostView, MAX_OFFERS};
use crate::protocol::link::LinkHello;
use crate::rbac::Action;
use crate::runtime::Runtime;
use crate::store::TaskFilter;
use crate::task::TaskState;

/// Longest agent name a host may offer.
const MAX_AGENT_NAME: usize = 128;
/// Most slots a host may declare for one agent.
const MAX_SLOTS: usize = 100_000;

/// The outcome of a host's `hello`.
pub enum Admission {
    /// Linked with this principal.
    Admitted(Principal),
    /// The device is known and proven but not approved yet
    /// (`device_trust = "require"`): the host should wait and retry.
    Untrusted(Principal),
}

/// `GET /api/runtime/tasks/counts` query.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
pub struct CountQuery {
    /// Only this session's tasks.
    pub session_id: Option<Uuid>,
    /// Only this agent's tasks.
    pub agent_type: Option<String>,
}

/// `GET /api/runtime/tasks/counts` reply: the caller's visible tasks (every
/// user's with `admin:system`) per state, whatever a list page holds.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema, schemars::JsonSchema)]
pub struct TaskCountsView {
    /// All of them.
    pub total: i64,
    /// Per state, every state present (0 when none).
    pub by_state: BTreeMap<String, i64>,
}

/// Whether `name` is a fine host name: 1 to 64 of `A-Z a-z 0-9 . _ -`.
pub fn valid_host_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// Check a `hello`'s name and offers.
fn check_hello(hello: &LinkHello) -> Result<()> {
    if !valid_host_name(&hello.name) {
        return Err(Error::BadRequest(
            "name must be 1 to 64 characters of A-Z a-z 0-9 . _ -".into(),
        ));
    }
    if hello.agents.len() > MAX_OFFERS {
        return Err(Error::BadRequest(format!(
            "a host may offer at most {MAX_OFFERS} agents"
        )));
    }
    let mut seen = std::collections::BTreeSet::new();
    for o in &hello.agents {
        let name = &o.agent_type;
        let bad_name = name.is_empty()
            || name.len() > MAX_AGENT_NAME
            || name.chars().any(|c| c.is_control() || c == '@' || c == '/');
        if bad_name {
            return Err(Error::BadRequest(format!(
                "agent name `{name}` must be 1 to {MAX_AGENT_NAME} characters without '@', '/' or control characters"
            )));
        }
        if o.max_concurrent == 0 || o.max_concurrent > MAX_SLOTS {
            return Err(Error::BadRequest(format!(
                "agent `{name}`: max_concurrent must be 1 to {MAX_SLOTS}"
            )));
        }
        if !seen.insert(name) {
            return Err(Error::BadRequest(format!(
                "agent `{name}` is offered twice"
            )));
        }
    }
    Ok(())
}

impl Runtime {
    /// The linked hosts of this node.
    pub fn host_registry(&self) -> &std::sync::Arc<crate::link::Hosts> {
        &self.hosts
    }

    /// `[link]`: the grace period and the pace of remote hosts.
    pub fn link_config(&self) -> &crate::config::LinkConfig {
        &self.link
    }

    /// Remote agent hosts: this node's, or every live node's on a cluster.
    pub async fn hosts(&self, p: &Principal) -> Result<Vec<HostView>> {
        self.authorize(p, Action::AgentList).await?;
        match self.store.cluster() {
            Some(cluster) => {
                let agents = self.cluster_agents(cluster).await?;
                Ok(crate::link::hosts_from_agents(&agents))
            }
            None => Ok(self.hosts.views()),
        }
    }

    /// Admit a host's `hello`: a valid token whose user holds
    /// `agent:configure` (a refusal is audited), a fine name and offers,
    /// and the device's proof. Under `require` an unapproved device is told
    /// to wait.
    pub async fn admit_host(
        &self,
        token: Option<&str>,
        peer: Option<String>,
        hello: &LinkHello,
    ) -> Result<Admission> {
        let mut p = self.authenticate(token, peer).await?;
        self.authorize(&p, Action::HostLink).await?;
        check_hello(hello)?;
        let policy = self.security.device_trust;
        if hello.device_id.is_none() && policy == TrustPolicy::Require {
            return Err(Error::BadRequest(
                "under device_trust = \"require\" a host must name its device (switchboard link does)"
                    .into(),
            ));
        }
        p.device_id = hello.device_id.clone();
        let proof = crate::runtime::devices::Proof {
            nonce: hello.device_nonce.clone(),
            signature: hello.device_signature.clone(),
        };
        let p = self.admit_device(p, proof).await?;
        Ok(if p.device_capped {
            Admission::Untrusted(p)
        } else {
            Admission::Admitted(p)
        })
    }

    /// Record `host.linked` or `host.unlinked`.
    pub async fn audit_host(
        &self,
        p: &Principal,
        event: &'static str,
        name: &str,
        details: &[(&str, serde_json::Value)],
    ) {
        let action = if event == kind::HOST_LINKED {
            "link"
        } else {
            "unlink"
        };
        let mut record = NewAudit::by(Some(p), event, action).resource("host", name);
        for (k, v) in details {
            record = record.detail(k, v);
        }
        self.audit_or_warn(record, &format!("a host link ({name})"))
            .await;
    }

    /// Record that host `name` reported on a task that is not its own.
    pub async fn audit_foreign_report(&self, p: &Principal, name: &str, task_id: Uuid) {
        let record = NewAudit::by(Some(p), kind::PERMISSION_DENIED, "host.report")
            .resource("task", task_id)
            .status(AuditStatus::Denied)
            .detail("host", name)
            .detail("reason", "the task is not assigned to this host");
        self.audit_or_warn(record, "a refused host report").await;
    }

    /// Task counts per state over the caller's visible tasks (every user's
    /// with `admin:system`).
    pub async fn task_counts(&self, p: &Principal, q: CountQuery) -> Result<TaskCountsView> {
        self.authorize(p, Action::TaskView).await?;
        let filter = TaskFilter {
            user_id: (!p.sees_all()).then(|| p.user_id.clone()),
            session_id: q.session_id,
            agent_type: q.agent_type.filter(|a| !a.is_empty()),
            ..Default::default()
        };
        let counts = self.store.count_tasks(&filter).await?;
        let mut by_state: BTreeMap<String, i64> = TaskState::ALL
            .iter()
            .map(|s| (s.as_str().to_owned(), 0))
            .collect();
        for (state, n) in &counts {
            by_state.insert(state.as_str().to_owned(), *n);
        }
        Ok(TaskCountsView {
            total: counts.iter().map(|(_, n)| n).sum(),
            by_state,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::link::Offer;

    /// Names and offers are checked before anything is linked.
    #[test]
    fn hellos_are_checked() {
        let mut h = LinkHello {
            name: "laptop-1.lan".into(),
            agents: vec![Offer::echo("echo", 1)],
            ..Default::default()
        };
        assert!(check_hello(&h).is_ok());
        for bad in ["", "a b", "x/y", &"n".repeat(65)] {
            h.name = bad.into();
            assert!(check_hello(&h).is_err(), "{bad}");
        }
        h.name = "ok".into();
        for agents in [
            vec![Offer::echo("a@b", 1)],
            vec![Offer::echo("", 1)],
            vec![Offer::echo("a", 0)],
            vec![Offer::echo("a", 1), Offer::echo("a", 2)],
        ] {
            h.agents = agents;
            assert!(check_hello(&h).is_err());
        }
    }
}
