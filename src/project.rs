//! Phase 1: projects, their tasks, and agent executions of those tasks.
//!
//! Phase 1 of the original service was a project and task tracker whose
//! tasks an AI agent could execute. Its records live here; executing one
//! submits a real engine task ([`crate::task`]), whose state the project
//! task then follows through [`follow_state`].

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::names::text_enum;
use crate::task::TaskState;

/// A project's status.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum ProjectStatus {
    #[default]
    Active,
    Completed,
    Archived,
    OnHold,
}

/// A project task's status.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum WorkStatus {
    #[default]
    Todo,
    InProgress,
    InReview,
    Done,
    Blocked,
}

/// A project task's priority.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    Low,
    #[default]
    Medium,
    High,
    Critical,
}

text_enum!(ProjectStatus { Active => "active", Completed => "completed", Archived => "archived", OnHold => "on_hold" });
text_enum!(WorkStatus { Todo => "todo", InProgress => "in_progress", InReview => "in_review", Done => "done", Blocked => "blocked" });
text_enum!(Priority { Low => "low", Medium => "medium", High => "high", Critical => "critical" });

/// A stored project.
#[derive(Debug, Clone, PartialEq)]
pub struct Project {
    /// Its integer id (0 before it is stored).
    pub id: i64,
    /// 1 to 255 characters.
    pub name: String,
    /// 1 to 50 characters, unique; prefixes its tasks' keys.
    pub key: String,
    pub description: Option<String>,
    pub status: ProjectStatus,
    pub github_repo_url: Option<String>,
    pub telegram_chat_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A stored project task.
#[derive(Debug, Clone, PartialEq)]
pub struct ProjectTask {
    /// Its integer id (0 before it is stored).
    pub id: i64,
    pub project_id: i64,
    /// The project's key, read with the task (keys follow a renamed project).
    pub project_key: String,
    /// Its number within the project, from 1 (0 before it is stored).
    pub number: i64,
    pub title: String,
    pub description: Option<String>,
    pub status: WorkStatus,
    pub priority: Priority,
    pub assigned_agent_type: Option<String>,
    /// The engine state of its latest execution, if it ever ran.
    pub agent_execution_status: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl ProjectTask {
    /// `{PROJECT_KEY}-{n}`.
    pub fn key(&self) -> String {
        format!("{}-{}", self.project_key, self.number)
    }
}

/// One run of an agent on a project task: a link to the engine task.
#[derive(Debug, Clone, PartialEq)]
pub struct Execution {
    /// Its integer id (0 before it is stored).
    pub id: i64,
    /// The project task.
    pub task_id: i64,
    /// The engine task it ran as.
    pub engine_task_id: Uuid,
    pub execution_uuid: Uuid,
    pub user_id: String,
    pub agent_type: String,
    pub prompt: String,
    pub started_at: DateTime<Utc>,
}

/// The project task status that follows an engine state:
///
/// | engine | project task |
/// |---|---|
/// | pending, planning, running | in_progress |
/// | waiting (for an approval) | blocked |
/// | completed | in_review (a person decides when it is done) |
/// | failed | blocked |
/// | cancelled | todo (back in the backlog) |
pub fn follow_state(state: TaskState) -> WorkStatus {
    match state {
        TaskState::Pending | TaskState::Planning | TaskState::Running => WorkStatus::InProgress,
        TaskState::Waiting | TaskState::Failed => WorkStatus::Blocked,
        TaskState::Completed => WorkStatus::InReview,
        TaskState::Cancelled => WorkStatus::Todo,
    }
}

/// `(owner, name)` of a GitHub repository URL: `https://github.com/o/n`,
/// with or without `.git`, a trailing slash or more path, or `git@github.com:o/n.git`.
pub fn parse_github_repo(url: &str) -> Option<(String, String)> {
    let url = url.trim();
    let rest = if let Some(r) = url.strip_prefix("git@") {
        r.split_once(':')?.1
    } else {
        let no_scheme = url.split_once("://").map_or(url, |(_, r)| r);
        no_scheme.split_once('/')?.1
    };
    let mut parts = rest.split('/').filter(|s| !s.is_empty());
    let owner = parts.next()?;
    let name = parts.next()?;
    let name = name.strip_suffix(".git").unwrap_or(name);
    let name = name.split(['?', '#']).next().unwrap_or(name);
    if owner.is_empty() || name.is_empty() {
        return None;
    }
    Some((owner.to_owned(), name.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Common repository URL forms give owner and name; junk gives none.
    #[test]
    fn github_urls_parse() {
        let want = Some(("octo".to_owned(), "hello".to_owned()));
        for u in [
            "https://github.com/octo/hello",
            "https://github.com/octo/hello.git",
            "https://github.com/octo/hello/",
            "https://github.com/octo/hello/tree/main",
            "http://www.github.com/octo/hello?tab=readme",
            "git@github.com:octo/hello.git",
            "github.com/octo/hello",
        ] {
            assert_eq!(parse_github_repo(u), want, "{u}");
        }
        for u in ["", "https://github.com/", "https://github.com/octo", "nope"] {
            assert_eq!(parse_github_repo(u), None, "{u}");
        }
    }

    /// Every engine state maps to a project task status.
    #[test]
    fn states_follow() {
        assert_eq!(follow_state(TaskState::Running), WorkStatus::InProgress);
        assert_eq!(follow_state(TaskState::Completed), WorkStatus::InReview);
        assert_eq!(follow_state(TaskState::Failed), WorkStatus::Blocked);
        assert_eq!(follow_state(TaskState::Cancelled), WorkStatus::Todo);
    }

    /// Names round-trip between storage and the enums.
    #[test]
    fn names_round_trip() {
        for s in [ProjectStatus::Active, ProjectStatus::OnHold] {
            assert_eq!(s.as_str().parse::<ProjectStatus>().unwrap(), s);
        }
        for s in [WorkStatus::InReview, WorkStatus::Blocked] {
            assert_eq!(s.as_str().parse::<WorkStatus>().unwrap(), s);
        }
        assert_eq!("critical".parse::<Priority>().unwrap(), Priority::Critical);
        assert!("urgent".parse::<Priority>().is_err());
    }
}
