//! The program's process group: stopped as a whole, SIGTERM first and
//! SIGKILL after a grace period, so that no orphan survives.

use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::process::Child;

use super::reapers;

/// How often a stopping group is checked for survivors.
const POLL: Duration = Duration::from_millis(20);

/// Stops the process group when dropped before it was disarmed.
pub(super) struct GroupGuard {
    pub(super) child: Option<Child>,
    pub(super) pgid: Pid,
    pub(super) grace: Duration,
}

impl GroupGuard {
    pub(super) fn disarm(&mut self) {
        self.child = None;
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        let Some(child) = self.child.take() else {
            return;
        };
        let (pgid, grace) = (self.pgid, self.grace);
        // SIGTERM now, so the stop is immediate even if the escalation
        // below never gets to run.
        let _ = killpg(pgid, Signal::SIGTERM);
        match tokio::runtime::Handle::try_current() {
            Ok(_) => {
                reapers().spawn(async move {
                    let mut child = child;
                    stop_group(pgid, grace).await;
                    let _ = child.wait().await;
                });
            }
            Err(_) => {
                std::thread::spawn(move || {
                    std::thread::sleep(grace);
                    let _ = killpg(pgid, Signal::SIGKILL);
                    drop(child);
                });
            }
        }
    }
}

/// Whether any process is left in the group.
fn group_alive(pgid: Pid) -> bool {
    killpg(pgid, None).is_ok()
}

/// SIGTERM the group, wait up to `grace` for it to empty, then SIGKILL
/// whatever is left.
pub async fn stop_group(pgid: Pid, grace: Duration) {
    if !group_alive(pgid) {
        return;
    }
    let _ = killpg(pgid, Signal::SIGTERM);
    let deadline = tokio::time::Instant::now() + grace;
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(POLL).await;
        if !group_alive(pgid) {
            return;
        }
    }
    let _ = killpg(pgid, Signal::SIGKILL);
}
