//! The engine's [`TaskIo`]: how a running agent's output and questions
//! reach the store.

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::oneshot;

use super::{Engine, Live, Outcome, TaskRef};
use crate::agent::{Answer, Stopped, TaskIo};
use crate::event::{EventBody, OutputChunk, now};
use crate::store::writer::Pipe;
use crate::store::{Append, TaskChange};
use crate::task::{TaskEvent, TaskState};

/// The engine's [`TaskIo`] for one running task.
pub(super) struct DriverIo {
    pub(super) engine: Arc<Engine>,
    pub(super) task: TaskRef,
    pub(super) live: Arc<Live>,
    /// Output chunks on their way to the store.
    pub(super) pipe: Arc<Pipe>,
}

#[async_trait]
impl TaskIo for DriverIo {
    async fn output(&self, chunk: String) -> Result<(), Stopped> {
        let append = Append {
            session_id: self.task.session_id,
            task_id: self.task.task_id,
            at: now(),
            body: EventBody::Output(OutputChunk { chunk }),
            change: TaskChange::Require(TaskState::Running),
            audit: Vec::new(),
        };
        // Not waiting for the commit: the writer keeps the order, and the
        // transition that ends the task queues behind every chunk. A chunk
        // refused (the task moved on) or lost stops the pipe.
        self.engine.writer.pipeline(append, &self.pipe).await
    }

    async fn wait(&self, message: String) -> Result<Answer, Stopped> {
        let (tx, rx) = oneshot::channel();
        if let Ok(mut slot) = self.live.answer.lock() {
            *slot = Some(tx);
        }
        // The person answering should see every chunk before the question.
        self.pipe.drained().await;
        match self
            .engine
            .transition(
                &self.task,
                TaskState::Running,
                TaskEvent::Wait,
                message,
                Outcome::default(),
                Vec::new(),
            )
            .await
        {
            Ok(Ok(_)) => {}
            _ => return Err(Stopped),
        }
        rx.await.map_err(|_| Stopped)
    }
}
