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
