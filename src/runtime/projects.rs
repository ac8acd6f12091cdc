//! Phase 1 operations: projects and their tasks (executing one is in
//! `executions`).

use crate::audit::{NewAudit, kind};
use crate::auth::Principal;
use crate::error::{Error, Result};
use crate::event::now;
use crate::project::{Project, ProjectTask};
use crate::protocol::phase1::{
    ProjectCreate, ProjectTaskCreate, ProjectTaskUpdate, ProjectTaskView, ProjectUpdate,
    ProjectView,
};
use crate::rbac::Action;
use crate::runtime::Runtime;

/// Default and largest page of a Phase 1 listing.
const DEFAULT_PAGE: i64 = 100;
const MAX_PAGE: i64 = 1000;

/// Check a text field's length in characters.
fn check_len(field: &str, value: &str, max: usize) -> Result<()> {
    let n = value.chars().count();
    if n == 0 || n > max {
        return Err(Error::BadRequest(format!(
            "{field} must be 1 to {max} characters (it has {n})"
        )));
    }
    Ok(())
}

/// `skip`/`limit` with defaults and bounds.
fn paging(skip: Option<i64>, limit: Option<i64>) -> Result<(i64, i64)> {
    let skip = skip.unwrap_or(0);
    let limit = limit.unwrap_or(DEFAULT_PAGE);
    if skip < 0 {
        return Err(Error::BadRequest("skip must not be negative".into()));
    }
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(Error::BadRequest(format!("limit must be 1 to {MAX_PAGE}")));
    }
    Ok((skip, limit))
}

/// The key is taken: say so in the user's words.
fn key_taken(key: &str) -> impl FnOnce(Error) -> Error + '_ {
    move |e| match e {
        Error::Conflict(_) => Error::Conflict(format!("a project with key `{key}` already exists")),
        other => other,
    }
}

fn project_not_found(id: i64) -> Error {
    Error::not_found(format!("project {id}"))
}

pub(super) fn task_not_found(id: i64) -> Error {
    Error::not_found(format!("task {id}"))
}

impl Runtime {
    /// `GET /api/projects`.
    pub async fn list_projects(
        &self,
        p: &Principal,
        skip: Option<i64>,
        limit: Option<i64>,
    ) -> Result<Vec<ProjectView>> {
        self.authorize(p, Action::ProjectRead).await?;
        let (skip, limit) = paging(skip, limit)?;
        let list = self.store.list_projects(skip, limit).await?;
        Ok(list.iter().map(Into::into).collect())
    }

    /// `POST /api/projects`.
    pub async fn create_project(&self, p: &Principal, req: ProjectCreate) -> Result<ProjectView> {
        self.authorize(p, Action::ProjectWrite).await?;
        check_len("name", &req.name, 255)?;
        check_len("key", &req.key, 50)?;
        let at = now();
        let project = Project {
            id: 0,
            name: req.name,
            key: req.key,
            description: req.description,
            status: req.status,
            github_repo_url: req.github_repo_url,
            telegram_chat_id: req.telegram_chat_id,
            created_at: at,
            updated_at: at,
        };
        let audit = NewAudit::by(Some(p), kind::PROJECT_CREATED, "create_project")
            .detail("key", &project.key);
        let stored = self
            .store
            .create_project(&project, vec![audit])
            .await
            .map_err(key_taken(&project.key))?;
        Ok((&stored).into())
    }

    /// `GET /api/projects/{id}`.
    pub async fn get_project(&self, p: &Principal, id: i64) -> Result<ProjectView> {
        self.authorize(p, Action::ProjectRead).await?;
        let project = self.store.get_project(id).await?;
        Ok((&project.ok_or_else(|| project_not_found(id))?).into())
    }

    /// `PATCH /api/projects/{id}`.
    pub async fn update_project(
        &self,
        p: &Principal,
        id: i64,
        req: ProjectUpdate,
    ) -> Result<ProjectView> {
        self.authorize(p, Action::ProjectWrite).await?;
        let mut project = self
            .store
            .get_project(id)
            .await?
            .ok_or_else(|| project_not_found(id))?;
        if let Some(name) = req.name {
            check_len("name", &name, 255)?;
            project.name = name;
        }
        if let Some(key) = req.key {
            check_len("key", &key, 50)?;
            project.key = key;
        }
        if let Some(d) = req.description {
            project.description = d;
        }
        if let Some(s) = req.status {
            project.status = s;
        }
        if let Some(u) = req.github_repo_url {
            project.github_repo_url = u;
        }
        if let Some(c) = req.telegram_chat_id {
            project.telegram_chat_id = c;
        }
        project.updated_at = now();
        let audit =
            NewAudit::by(Some(p), kind::PROJECT_UPDATED, "update_project").resource("project", id);
        let found = self
            .store
            .update_project(&project, vec![audit])
            .await
            .map_err(key_taken(&project.key))?;
        if !found {
            return Err(project_not_found(id));
        }
        Ok((&project).into())
    }

    /// `DELETE /api/projects/{id}`: the project, its tasks and their
    /// executions (the engine tasks they ran as stay, like all history).
    pub async fn delete_project(&self, p: &Principal, id: i64) -> Result<()> {
        self.authorize(p, Action::ProjectDelete).await?;
        let audit =
            NewAudit::by(Some(p), kind::PROJECT_DELETED, "delete_project").resource("project", id);
        if !self.store.delete_project(id, vec![audit]).await? {
            return Err(project_not_found(id));
        }
        Ok(())
    }

    /// `GET /api/tasks`.
    pub async fn list_project_tasks(
        &self,
        p: &Principal,
        project_id: Option<i64>,
        skip: Option<i64>,
        limit: Option<i64>,
    ) -> Result<Vec<ProjectTaskView>> {
        self.authorize(p, Action::ProjectRead).await?;
        let (skip, limit) = paging(skip, limit)?;
        let list = self
            .store
            .list_project_tasks(project_id, skip, limit)
            .await?;
        Ok(list.iter().map(Into::into).collect())
    }

    /// `POST /api/tasks`.
    pub async fn create_project_task(
        &self,
        p: &Principal,
        req: ProjectTaskCreate,
    ) -> Result<ProjectTaskView> {
        self.authorize(p, Action::ProjectWrite).await?;
        check_len("title", &req.title, 500)?;
        let at = now();
        let task = ProjectTask {
            id: 0,
            project_id: req.project_id,
            project_key: String::new(),
            number: 0,
            title: req.title,
            description: req.description,
            status: req.status,
            priority: req.priority,
            assigned_agent_type: req.assigned_agent_type,
            agent_execution_status: None,
            created_at: at,
            updated_at: at,
        };
        let audit = NewAudit::by(Some(p), kind::PROJECT_TASK_CREATED, "create_task")
            .detail("project_id", req.project_id);
        match self.store.create_project_task(&task, vec![audit]).await? {
            Some(t) => Ok((&t).into()),
            None => Err(project_not_found(req.project_id)),
        }
    }

    /// `GET /api/tasks/{id}`.
    pub async fn get_project_task(&self, p: &Principal, id: i64) -> Result<ProjectTaskView> {
        self.authorize(p, Action::ProjectRead).await?;
        let task = self.store.get_project_task(id).await?;
        Ok((&task.ok_or_else(|| task_not_found(id))?).into())
    }

    /// `PATCH /api/tasks/{id}`.
    pub async fn update_project_task(
        &self,
        p: &Principal,
        id: i64,
        req: ProjectTaskUpdate,
    ) -> Result<ProjectTaskView> {
        self.authorize(p, Action::ProjectWrite).await?;
        let mut task = self
            .store
            .get_project_task(id)
            .await?
            .ok_or_else(|| task_not_found(id))?;
        if let Some(title) = req.title {
            check_len("title", &title, 500)?;
            task.title = title;
        }
        if let Some(d) = req.description {
            task.description = d;
        }
        if let Some(s) = req.status {
            task.status = s;
        }
        if let Some(pr) = req.priority {
            task.priority = pr;
        }
        if let Some(a) = req.assigned_agent_type {
            task.assigned_agent_type = a;
        }
        task.updated_at = now();
        let audit = NewAudit::by(Some(p), kind::PROJECT_TASK_UPDATED, "update_task")
            .resource("project_task", id);
        if !self.store.update_project_task(&task, vec![audit]).await? {
            return Err(task_not_found(id));
        }
        Ok((&task).into())
    }

    /// `DELETE /api/tasks/{id}`.
    pub async fn delete_project_task(&self, p: &Principal, id: i64) -> Result<()> {
        self.authorize(p, Action::ProjectDelete).await?;
        let audit = NewAudit::by(Some(p), kind::PROJECT_TASK_DELETED, "delete_task")
            .resource("project_task", id);
        if !self.store.delete_project_task(id, vec![audit]).await? {
            return Err(task_not_found(id));
        }
        Ok(())
    }
}

impl Runtime {
    /// `GET /api/agents/types` (every agent) and `GET /api/agents/available`
    /// (those that can run): agent names.
    pub async fn agent_names(&self, p: &Principal, only_available: bool) -> Result<Vec<String>> {
        let agents = self.agents(p).await?;
        Ok(agents
            .into_iter()
            .filter(|a| a.available || !only_available)
            .map(|a| a.agent_type)
            .collect())
    }
}
