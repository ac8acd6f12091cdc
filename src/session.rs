//! Sessions: a user's isolated stream of task events, optionally bound to a device.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::rbac::Permission;

/// `active` until ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionState {
    Active,
    Ended,
}

impl SessionState {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            SessionState::Active => "active",
            SessionState::Ended => "ended",
        }
    }
}

/// A stored session.
#[derive(Debug, Clone, PartialEq)]
pub struct Session {
    /// Its id.
    pub session_id: Uuid,
    /// Its owner.
    pub user_id: String,
    /// The device it was opened from, when named.
    pub device_id: Option<String>,
    /// When it was opened.
    pub created_at: DateTime<Utc>,
    /// When something last happened in it.
    pub last_activity: DateTime<Utc>,
    /// The owner's permissions when it was opened.
    pub permissions: BTreeSet<Permission>,
    /// Active or ended.
    pub state: SessionState,
    /// The seq of its newest stored event; 0 when it has none.
    pub last_seq: i64,
    /// Whether this is the owner's default session (for submits without one).
    pub is_default: bool,
}

impl Session {
    /// A new active session.
    pub fn new(
        user_id: &str,
        device_id: Option<String>,
        permissions: BTreeSet<Permission>,
        is_default: bool,
        now: DateTime<Utc>,
    ) -> Self {
        Session {
            session_id: Uuid::now_v7(),
            user_id: user_id.to_owned(),
            device_id,
            created_at: now,
            last_activity: now,
            permissions,
            state: SessionState::Active,
            last_seq: 0,
            is_default,
        }
    }
}
