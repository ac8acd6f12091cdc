//! [`Action`]: every operation any transport can perform, and the one
//! table of the permissions each needs.

use std::collections::BTreeSet;

use super::Permission;

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
