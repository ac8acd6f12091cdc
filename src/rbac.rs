//! Roles, permissions and the single table that says which operation needs what.
//!
//! Everything here is pure: no I/O, no clock. The runtime layer calls
//! [`Action::required`] through `Runtime::authorize`, which is the only place a
//! permission is checked, so REST, WebSocket and SSE cannot disagree.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

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

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Permission {
    type Err = UnknownName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Permission::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| UnknownName(s.to_owned()))
    }
}

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

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = UnknownName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| UnknownName(s.to_owned()))
    }
}

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

/// Every operation any transport can perform. Each maps to the permissions it
/// needs in [`Action::required`]; there is no default, so a new operation
/// cannot exist without a rule, and the role-matrix test matches on this enum
/// exhaustively so it cannot exist without a test either.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// `GET /api/me`
    WhoAmI,
    /// Create a session (REST or `hello`).
    SessionCreate,
    /// List, read or end one's own sessions, and read their event streams.
    SessionRead,
    /// End a session.
    SessionEnd,
    /// Read sessions, tasks and events of every user.
    ReadAll,
    /// Submit a task.
    TaskSubmit,
    /// Read tasks and their events.
    TaskView,
    /// Cancel a task.
    TaskCancel,
    /// Approve or deny a waiting task.
    TaskRespond,
    /// List agents (and the remote hosts offering some).
    AgentList,
    /// Link a remote agent host (`switchboard link`) and offer its agents.
    HostLink,
    /// List skills.
    SkillList,
    /// Manage users, roles, grants and tokens.
    UserAdmin,
    /// Read the audit log of every user, subscribe to it, verify it.
    AuditRead,
    /// Read one's own audit activity (own user or own session).
    AuditOwn,
    /// Read the node's storage figures (`GET /api/admin/storage`).
    StorageRead,
    /// Register, list and revoke one's own devices; see who is connected.
    DeviceOwn,
    /// Phase 1: list and read projects and their tasks.
    ProjectRead,
    /// Phase 1: create and change projects and their tasks.
    ProjectWrite,
    /// Phase 1: delete projects and their tasks.
    ProjectDelete,
    /// Phase 1: run an agent on a project task (`POST /api/tasks/execute`);
    /// it submits an engine task, so it needs what a submit needs.
    Phase1Execute,
}

impl Action {
    /// Every action.
    pub const ALL: [Action; 21] = [
        Action::WhoAmI,
        Action::SessionCreate,
        Action::SessionRead,
        Action::SessionEnd,
        Action::ReadAll,
        Action::TaskSubmit,
        Action::TaskView,
        Action::TaskCancel,
        Action::TaskRespond,
        Action::AgentList,
        Action::HostLink,
        Action::SkillList,
        Action::UserAdmin,
        Action::AuditRead,
        Action::AuditOwn,
        Action::StorageRead,
        Action::DeviceOwn,
        Action::ProjectRead,
        Action::ProjectWrite,
        Action::ProjectDelete,
        Action::Phase1Execute,
    ];

    /// The permissions an action needs, all of them. An empty slice means any
    /// authenticated user may perform it (it only ever touches their own data).
    pub fn required(self) -> &'static [Permission] {
        use Permission::*;
        match self {
            Action::WhoAmI | Action::SessionCreate | Action::SessionRead | Action::SessionEnd => {
                &[]
            }
            Action::AuditOwn | Action::DeviceOwn => &[],
            Action::ReadAll => &[AdminSystem],
            // The original checked task:submit on submit; agent:execute is
            // what running an agent directly (Phase 1 execute) needs.
            Action::TaskSubmit => &[TaskSubmit],
            Action::TaskView => &[TaskView],
            Action::TaskCancel => &[TaskCancel],
            // Approving lets the agent go on, so it is a submit-level right.
            Action::TaskRespond => &[TaskSubmit],
            Action::AgentList => &[AgentList],
            Action::HostLink => &[AgentConfigure],
            Action::SkillList => &[SkillList],
            Action::UserAdmin => &[AdminUsers],
            Action::AuditRead => &[AdminSystem],
            Action::StorageRead => &[AdminSystem],
            Action::ProjectRead => &[ProjectRead],
            Action::ProjectWrite => &[ProjectWrite],
            Action::ProjectDelete => &[ProjectDelete],
            Action::Phase1Execute => &[TaskSubmit, AgentExecute],
        }
    }

    /// The first required permission missing from `have`, if any.
    pub fn missing(self, have: &BTreeSet<Permission>) -> Option<Permission> {
        self.required().iter().copied().find(|p| !have.contains(p))
    }

    /// A stable name for logs and audit records.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::WhoAmI => "whoami",
            Action::SessionCreate => "session.create",
            Action::SessionRead => "session.read",
            Action::SessionEnd => "session.end",
            Action::ReadAll => "read_all",
            Action::TaskSubmit => "task.submit",
            Action::TaskView => "task.view",
            Action::TaskCancel => "task.cancel",
            Action::TaskRespond => "task.respond",
            Action::AgentList => "agent.list",
            Action::HostLink => "host.link",
            Action::SkillList => "skill.list",
            Action::UserAdmin => "admin.users",
            Action::AuditRead => "audit.read",
            Action::AuditOwn => "audit.own",
            Action::StorageRead => "storage.read",
            Action::DeviceOwn => "device.own",
            Action::ProjectRead => "project.read",
            Action::ProjectWrite => "project.write",
            Action::ProjectDelete => "project.delete",
            Action::Phase1Execute => "phase1.execute",
        }
    }
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
