//! What the node offers: agents and skills.

use serde_json::json;

use crate::agent::{AgentInfo, Skill};
use crate::auth::Principal;
use crate::error::Result;
use crate::protocol::SkillView;
use crate::rbac::Action;
use crate::runtime::Runtime;

impl Runtime {
    /// Agents this node can run.
    pub async fn agents(&self, p: &Principal) -> Result<Vec<AgentInfo>> {
        self.authorize(p, Action::AgentList).await?;
        match self.store.cluster() {
            Some(cluster) => self.cluster_agents(cluster).await,
            None => Ok(self.engine.agents().list()),
        }
    }

    /// Skills from the config, each with the agents that provide it and,
    /// in `metadata.available_agents`, those that can run now.
    pub async fn skills(&self, p: &Principal) -> Result<Vec<SkillView>> {
        self.authorize(p, Action::SkillList).await?;
        let agents = self.engine.agents();
        // On a cluster, agents of other nodes (hosted ones included) count.
        let remote: Vec<AgentInfo> = match self.store.cluster() {
            Some(c) => c.live_agents(self.lease()).await?,
            None => Vec::new(),
        }
        .into_iter()
        .map(|a| a.info)
        .collect();
        Ok(agents
            .skills()
            .iter()
            .map(|s| {
                let (all, available) = agents.providers_with(s, &remote);
                skill_view(s, all, available)
            })
            .collect())
    }
}

/// The wire view of `skill`, provided by `agents`, of which `available`
/// can run now.
fn skill_view(skill: &Skill, agents: Vec<String>, available: Vec<String>) -> SkillView {
    SkillView {
        skill_id: skill.skill_id.clone(),
        name: skill.name.clone(),
        description: skill.description.clone(),
        required_permissions: skill
            .required_permissions
            .iter()
            .map(|p| p.as_str().to_owned())
            .collect(),
        agents,
        metadata: json!({ "available_agents": available }),
    }
}
