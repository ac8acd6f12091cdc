//! What an agent on a host sees as its task's engine: output goes into the
//! task's outbox (waiting while it is full), `wait` becomes a `wait` report
//! and returns the node's answer.

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::oneshot;
use uuid::Uuid;

use super::tasks::{Runner, status};
use crate::agent::{Answer, Stopped, TaskIo};
use crate::protocol::link::ReportBody;

/// Unacked reports one task may hold before its agent waits.
const WINDOW: usize = 256;
/// Largest output chunk sent in one report (longer ones are split).
const MAX_CHUNK: usize = 32 * 1024;

/// What an agent on this host sees as its task's engine.
pub(super) struct HostIo {
    runner: Arc<Runner>,
    task_id: Uuid,
}

impl HostIo {
    /// The engine side of task `task_id`.
    pub(super) fn new(runner: Arc<Runner>, task_id: Uuid) -> Self {
        HostIo { runner, task_id }
    }

    /// Wait for room in the outbox; `Stopped` once the task is gone.
    async fn room(&self) -> Result<(), Stopped> {
        loop {
            let room = self.runner.room().notified();
            tokio::pin!(room);
            room.as_mut().enable();
            match self.runner.unacked(self.task_id) {
                None => return Err(Stopped),
                Some(n) if n < WINDOW => return Ok(()),
                Some(_) => {}
            }
            room.await;
        }
    }
}

#[async_trait]
impl TaskIo for HostIo {
    async fn output(&self, chunk: String) -> Result<(), Stopped> {
        for piece in split(&chunk, MAX_CHUNK) {
            self.room().await?;
            let body = ReportBody::Output {
                chunk: piece.to_owned(),
            };
            if !self.runner.push(self.task_id, body, false) {
                return Err(Stopped);
            }
        }
        Ok(())
    }

    async fn wait(&self, message: String) -> Result<Answer, Stopped> {
        let (tx, rx) = oneshot::channel();
        self.runner.expect_answer(self.task_id, tx);
        if !self
            .runner
            .push(self.task_id, ReportBody::Wait { message }, false)
        {
            return Err(Stopped);
        }
        status(&format!("task {} waits for an answer", self.task_id));
        rx.await.map_err(|_| Stopped)
    }
}

/// `text` in pieces of at most `max` bytes, cut on character boundaries.
pub(super) fn split(text: &str, max: usize) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = text;
    while rest.len() > max {
        let mut cut = max;
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        let (head, tail) = rest.split_at(cut);
        out.push(head);
        rest = tail;
    }
    out.push(rest);
    out
}
