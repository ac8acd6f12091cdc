//! Tasks: the stored record, the pure state machine ([`state`]) and the
//! engine that drives agents through it ([`engine`]).

pub mod engine;
pub mod state;

use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

pub use state::{InvalidTransition, TaskEvent, TaskState};

/// A stored task.
#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    /// Its id.
    pub task_id: Uuid,
    /// The id of its one execution (the original's `execution_uuid`).
    pub execution_uuid: Uuid,
    /// The session whose stream carries its events.
    pub session_id: Uuid,
    /// Its owner.
    pub user_id: String,
    /// The agent that runs it.
    pub agent_type: String,
    /// What the agent is asked.
    pub prompt: String,
    /// Free-form context from the submitter.
    pub context: Value,
    /// Agent parameters.
    pub params: Value,
    /// Where it is in its life.
    pub state: TaskState,
    /// The agent's answer, once completed.
    pub result: Option<String>,
    /// Why it failed or was cancelled.
    pub error: Option<String>,
    /// Anything else worth showing (node, agent details).
    pub metadata: Value,
    /// The submitter's idempotency key, if any.
    pub idempotency_key: Option<String>,
    /// Submission time.
    pub created_at: DateTime<Utc>,
    /// Time of the last change.
    pub updated_at: DateTime<Utc>,
    /// Seconds from submission to the terminal state.
    pub execution_time: Option<f64>,
}

impl Task {
    /// A task of `user_id` for `agent_type` in session `session_id`,
    /// `pending` as of now: fresh ids (the task's ordered by time), empty
    /// context, params and metadata, no idempotency key.
    pub fn pending(session_id: Uuid, user_id: &str, agent_type: &str, prompt: String) -> Task {
        let at = crate::event::now();
        Task {
            task_id: Uuid::now_v7(),
            execution_uuid: Uuid::new_v4(),
            session_id,
            user_id: user_id.to_owned(),
            agent_type: agent_type.to_owned(),
            prompt,
            context: Value::Object(Default::default()),
            params: Value::Object(Default::default()),
            state: TaskState::Pending,
            result: None,
            error: None,
            metadata: Value::Object(Default::default()),
            idempotency_key: None,
            created_at: at,
            updated_at: at,
            execution_time: None,
        }
    }
}
