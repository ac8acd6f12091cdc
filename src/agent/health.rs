//! Whether an agent that was available at start still is: an upstream that
//! starts refusing its key (401, 403) is marked down with the reason, so the
//! agents list says so and submits are refused with it, without a restart.
//!
//! A key can be fixed upstream (reinstated, quota restored) without anything
//! changing here, so the mark lapses after [`RECHECK`]: the next task tries
//! again, and either clears it (success) or renews it.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::agent::AgentInfo;

/// How long a refusal keeps the agent marked unavailable.
pub const RECHECK: Duration = Duration::from_secs(30);

/// An agent's last word from its upstream.
#[derive(Default)]
pub struct Health {
    down: Mutex<Option<(String, Instant)>>,
}

impl Health {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(String, Instant)>> {
        self.down.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The upstream refused us for `reason`.
    pub fn down(&self, reason: String) {
        *self.lock() = Some((reason, Instant::now()));
    }

    /// The upstream accepted a request.
    pub fn up(&self) {
        let mut down = self.lock();
        if down.is_some() {
            *down = None;
        }
    }

    /// Why the agent is unavailable now, if it is.
    pub fn reason(&self) -> Option<String> {
        match &*self.lock() {
            Some((reason, since)) if since.elapsed() < RECHECK => Some(reason.clone()),
            _ => None,
        }
    }

    /// `info` as it stands now: unavailable with the reason while down.
    pub fn apply(&self, mut info: AgentInfo) -> AgentInfo {
        if let Some(reason) = self.reason() {
            info.available = false;
            info.metadata["reason"] = serde_json::Value::String(reason);
        }
        info
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_marks_down_until_a_success() {
        let h = Health::default();
        assert_eq!(h.reason(), None);
        h.down("the key was refused".into());
        assert_eq!(h.reason().as_deref(), Some("the key was refused"));
        h.up();
        assert_eq!(h.reason(), None);
    }
}
