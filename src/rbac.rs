//! Roles, permissions and the single table that says which operation needs what.
//!
//! Everything here is pure: no I/O, no clock. The runtime layer calls
//! [`Action::required`] through `Runtime::authorize`, which is the only place a
//! permission is checked, so REST, WebSocket and SSE cannot disagree.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::names::wire_names;

mod action;

pub use action::Action;

/// A permission string of the original service, such as `task:submit`.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
    schemars::JsonSchema,
)]
pub enum Permission {
    #[serde(rename = "task:submit")]
    TaskSubmit,
    #[serde(rename = "task:cancel")]
    TaskCancel,
    #[serde(rename = "task:view")]
    TaskView,
    #[serde(rename = "agent:list")]
    AgentList,
    #[serde(rename = "agent:execute")]
    AgentExecute,
    #[serde(rename = "agent:configure")]
    AgentConfigure,
    #[serde(rename = "skill:list")]
    SkillList,
    #[serde(rename = "skill:execute")]
    SkillExecute,
    #[serde(rename = "skill:install")]
    SkillInstall,
    #[serde(rename = "project:read")]
    ProjectRead,
    #[serde(rename = "project:write")]
    ProjectWrite,
    #[serde(rename = "project:delete")]
    ProjectDelete,
    #[serde(rename = "admin:users")]
    AdminUsers,
    #[serde(rename = "admin:system")]
    AdminSystem,
}

impl Permission {
    /// Every permission, in a stable order.
    pub const ALL: [Permission; 14] = [
        Permission::TaskSubmit,
        Permission::TaskCancel,
        Permission::TaskView,
        Permission::AgentList,
        Permission::AgentExecute,
        Permission::AgentConfigure,
        Permission::SkillList,
        Permission::SkillExecute,
        Permission::SkillInstall,
        Permission::ProjectRead,
        Permission::ProjectWrite,
        Permission::ProjectDelete,
        Permission::AdminUsers,
        Permission::AdminSystem,
    ];

    /// The wire name, e.g. `task:submit`.
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::TaskSubmit => "task:submit",
            Permission::TaskCancel => "task:cancel",
            Permission::TaskView => "task:view",
            Permission::AgentList => "agent:list",
            Permission::AgentExecute => "agent:execute",
            Permission::AgentConfigure => "agent:configure",
            Permission::SkillList => "skill:list",
            Permission::SkillExecute => "skill:execute",
            Permission::SkillInstall => "skill:install",
            Permission::ProjectRead => "project:read",
            Permission::ProjectWrite => "project:write",
            Permission::ProjectDelete => "project:delete",
            Permission::AdminUsers => "admin:users",
            Permission::AdminSystem => "admin:system",
        }
    }
}

wire_names!(Permission, UnknownName, |s: &str| UnknownName(s.to_owned()));

/// A role name that is not one of ours.
#[derive(Debug, Clone, thiserror::Error)]
#[error("unknown name `{0}`")]
pub struct UnknownName(pub String);

/// One of the four roles of the original service.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
    schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    Developer,
    Viewer,
    Guest,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 4] = [Role::Admin, Role::Developer, Role::Viewer, Role::Guest];

    /// The wire name, e.g. `developer`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Developer => "developer",
            Role::Viewer => "viewer",
            Role::Guest => "guest",
        }
    }

    /// The original's role → permission table.
    pub fn permissions(self) -> &'static [Permission] {
        use Permission::*;
        match self {
            Role::Admin => &Permission::ALL,
            Role::Developer => &[
                TaskSubmit,
                TaskCancel,
                TaskView,
                AgentList,
                AgentExecute,
                SkillList,
                SkillExecute,
                ProjectRead,
                ProjectWrite,
            ],
            Role::Viewer => &[TaskView, AgentList, SkillList, ProjectRead],
            Role::Guest => &[AgentList, SkillList],
        }
    }
}

wire_names!(Role, UnknownName, |s: &str| UnknownName(s.to_owned()));

/// A user's effective permissions: the union of their roles' permissions,
/// plus per-user grants, minus per-user revokes (a revoke wins over a grant
/// only if it was made later, which the store expresses by keeping a
/// permission in at most one of the two sets).
pub fn effective_permissions(
    roles: &BTreeSet<Role>,
    grants: &BTreeSet<Permission>,
    revokes: &BTreeSet<Permission>,
) -> BTreeSet<Permission> {
    roles
        .iter()
        .flat_map(|r| r.permissions().iter().copied())
        .chain(grants.iter().copied())
        .filter(|p| !revokes.contains(p))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set<T: Ord + Copy>(items: &[T]) -> BTreeSet<T> {
        items.iter().copied().collect()
    }

    /// The table is the original's, role by role.
    #[test]
    fn role_table_matches_the_original() {
        let names = |r: Role| {
            r.permissions()
                .iter()
                .map(|p| p.as_str())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(Role::Admin).len(), 14);
        assert_eq!(
            names(Role::Developer),
            [
                "task:submit",
                "task:cancel",
                "task:view",
                "agent:list",
                "agent:execute",
                "skill:list",
                "skill:execute",
                "project:read",
                "project:write"
            ]
        );
        assert_eq!(
            names(Role::Viewer),
            ["task:view", "agent:list", "skill:list", "project:read"]
        );
        assert_eq!(names(Role::Guest), ["agent:list", "skill:list"]);
    }

    /// Names round-trip through their wire form.
    #[test]
    fn names_round_trip() {
        for p in Permission::ALL {
            assert_eq!(p.as_str().parse::<Permission>().unwrap(), p);
            let json = serde_json::to_string(&p).unwrap();
            assert_eq!(json, format!("\"{}\"", p.as_str()));
        }
        for r in Role::ALL {
            assert_eq!(r.as_str().parse::<Role>().unwrap(), r);
        }
        assert!("root".parse::<Role>().is_err());
        assert!("task:fly".parse::<Permission>().is_err());
    }

    /// Grants add to and revokes remove from the role set.
    #[test]
    fn grants_and_revokes_adjust_the_set() {
        let eff = effective_permissions(
            &set(&[Role::Viewer]),
            &set(&[Permission::TaskSubmit]),
            &set(&[Permission::ProjectRead]),
        );
        assert!(eff.contains(&Permission::TaskSubmit));
        assert!(!eff.contains(&Permission::ProjectRead));
        assert!(eff.contains(&Permission::TaskView));
    }

    /// No roles and no grants means no permissions: deny by default.
    #[test]
    fn nothing_is_allowed_by_default() {
        let eff = effective_permissions(&BTreeSet::new(), &BTreeSet::new(), &BTreeSet::new());
        assert!(eff.is_empty());
        for a in Action::ALL {
            assert_eq!(a.missing(&eff).is_none(), a.required().is_empty(), "{a:?}");
        }
    }

    /// An admin may do everything, a guest only list agents and skills.
    #[test]
    fn admin_can_everything_guest_only_lists() {
        let admin = effective_permissions(&set(&[Role::Admin]), &set(&[]), &set(&[]));
        let guest = effective_permissions(&set(&[Role::Guest]), &set(&[]), &set(&[]));
        for a in Action::ALL {
            assert!(a.missing(&admin).is_none());
        }
        let guest_allowed: Vec<_> = Action::ALL
            .into_iter()
            .filter(|a| a.missing(&guest).is_none() && !a.required().is_empty())
            .collect();
        assert_eq!(guest_allowed, [Action::AgentList, Action::SkillList]);
    }
}
