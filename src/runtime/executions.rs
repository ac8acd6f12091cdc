//! Phase 1 executions: a project task run by an agent as a real engine
//! task, whose states the project task follows.

use std::sync::Arc;

use serde_json::{Value, json};
use uuid::Uuid;

use crate::auth::Principal;
use crate::bus::Cursor;
use crate::error::{Error, Result};
use crate::event::{StreamKey, now};
use crate::project::{Execution, ProjectTask, follow_state};
use crate::protocol::SubmitRequest;
use crate::protocol::phase1::{ExecuteRequest, ExecutionView};
use crate::rbac::Action;
use crate::runtime::Runtime;
use crate::runtime::projects::task_not_found;
use crate::task::{Task, TaskState};

impl Runtime {
    /// `POST /api/tasks/execute`: run an agent on a project task, as an
    /// engine task in the caller's default session (audited, live on its
    /// stream, cancellable like any other), and answer once it has ended.
    ///
    /// The wait runs in its own tokio task, so a caller that goes away does
    /// not stop the execution nor the project task following it.
    pub async fn execute(
        self: &Arc<Self>,
        p: &Principal,
        req: ExecuteRequest,
    ) -> Result<ExecutionView> {
        self.authorize(p, Action::Phase1Execute).await?;
        let ptask = self
            .store
            .get_project_task(req.task_id)
            .await?
            .ok_or_else(|| task_not_found(req.task_id))?;
        // The stream position before the submit: the follower reads every
        // event of the new task from there, whenever it starts.
        let session = self.default_session(p).await?;
        let submit = engine_submit(&req, &ptask, session.session_id);
        let submitted = self.submit(p, submit).await?;
        let mut execution = Execution {
            id: 0,
            task_id: ptask.id,
            engine_task_id: submitted.task_id,
            execution_uuid: submitted.execution_uuid,
            user_id: p.user_id.clone(),
            agent_type: req.agent_type,
            prompt: req.prompt,
            started_at: submitted.created_at,
        };
        execution.id = self.store.create_execution(&execution).await?;

        let (session_id, from) = (session.session_id, session.last_seq);
        let rx = self.follow_in_background(session_id, from, submitted.task_id, ptask.id);
        let task = rx.await.map_err(|_| Error::Internal)??;
        Ok(ExecutionView::of(&execution, &task))
    }

    /// [`Runtime::follow_execution`] in its own tokio task (a caller that
    /// goes away stops neither), with its outcome sent on the receiver.
    fn follow_in_background(
        self: &Arc<Self>,
        session_id: Uuid,
        from: i64,
        task_id: Uuid,
        ptask_id: i64,
    ) -> tokio::sync::oneshot::Receiver<Result<Task>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let rt = self.clone();
        tokio::spawn(async move {
            let ended = rt
                .follow_execution(session_id, from, task_id, ptask_id)
                .await;
            if let Err(e) = &ended {
                tracing::warn!(error = %e, %task_id, "following a Phase 1 execution failed");
            }
            let _ = tx.send(ended);
        });
        rx
    }

    /// Follow engine task `task_id` on its session stream from `from`,
    /// mirroring each state onto project task `ptask_id`, until it ends.
    async fn follow_execution(
        &self,
        session_id: Uuid,
        from: i64,
        task_id: Uuid,
        ptask_id: i64,
    ) -> Result<Task> {
        let mut cursor = Cursor::new(
            &self.bus,
            self.store.clone(),
            StreamKey::Session(session_id),
            from,
        );
        let id = task_id.to_string();
        while let Some(d) = cursor.next().await? {
            let frame: Value =
                serde_json::from_str(d.frame.payload_str()).map_err(Error::internal)?;
            if frame["task_id"] != id.as_str() || frame["type"] != "task.state" {
                continue;
            }
            let Some(state) = frame["data"]["state"]
                .as_str()
                .and_then(|s| s.parse::<TaskState>().ok())
            else {
                continue;
            };
            self.store
                .follow_project_task(ptask_id, follow_state(state), state, now())
                .await?;
            if state.is_terminal() {
                break;
            }
        }
        self.store
            .get_task(task_id)
            .await?
            .ok_or_else(|| Error::internal(format!("engine task {task_id} vanished")))
    }
}

/// The engine submit that runs `req` on project task `ptask`, in session
/// `session_id`, with the project task named in its context.
fn engine_submit(req: &ExecuteRequest, ptask: &ProjectTask, session_id: Uuid) -> SubmitRequest {
    SubmitRequest {
        agent_type: Some(req.agent_type.clone()),
        skill: None,
        prompt: req.prompt.clone(),
        session_id: Some(session_id),
        context: Some(json!({
            "phase1_task_id": ptask.id,
            "phase1_task_key": ptask.key(),
            "project_id": ptask.project_id,
        })),
        params: req.params.clone(),
        idempotency_key: None,
    }
}
