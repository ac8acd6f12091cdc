//! Routing a host's reports: each is checked against the task's
//! assignment and its number, handed to the task's driver once, and acked
//! once the driver has stored it.

use tokio::sync::mpsc;
use uuid::Uuid;

use super::Hosts;
use crate::error::{Error, Result};
use crate::protocol::link::{NodeFrame, Report, ReportBody};

impl Hosts {
    /// A report from connection `conn_id` of host `name`: check that the
    /// task is this host's and the number is the next one, and hand it to
    /// the task's driver. Returns the driver's queue to send into (outside
    /// the lock), or `None` for a duplicate (already forwarded; acked
    /// again when already stored).
    pub fn accept(
        &self,
        name: &str,
        conn_id: u64,
        report: &Report,
    ) -> Result<Option<mpsc::Sender<(u64, ReportBody)>>> {
        let mut s = self.lock();
        let st = &mut *s;
        let link = st
            .hosts
            .get(name)
            .filter(|h| h.conn_id == conn_id)
            .and_then(|h| h.link.clone());
        let not_yours = || {
            Error::Forbidden(format!(
                "task {} is not assigned to host `{name}`",
                report.task_id
            ))
        };
        let recently_ended = || {
            st.ended
                .iter()
                .any(|(id, h)| *id == report.task_id && h == name)
        };
        let Some(a) = st.tasks.get_mut(&report.task_id) else {
            return if recently_ended() {
                Ok(None)
            } else {
                Err(not_yours())
            };
        };
        if a.host != name || a.expired || link.is_none() {
            return Err(not_yours());
        }
        if report.n <= a.received {
            if report.n <= a.acked {
                if let Some(l) = &link {
                    l.send(NodeFrame::Ack {
                        task_id: report.task_id,
                        n: a.acked,
                    });
                }
            }
            return Ok(None);
        }
        if report.n != a.received + 1 {
            return Err(Error::BadRequest(format!(
                "report {} of task {} skips report {}",
                report.n,
                report.task_id,
                a.received + 1
            )));
        }
        a.received = report.n;
        Ok(Some(a.reports.clone()))
    }

    /// The driver stored report `n` of `task_id`: ack it to the host.
    pub(super) fn stored(&self, task_id: Uuid, n: u64) {
        let mut s = self.lock();
        let st = &mut *s;
        let Some(a) = st.tasks.get_mut(&task_id) else {
            return;
        };
        a.acked = a.acked.max(n);
        let link = st.hosts.get(&a.host).and_then(|h| h.link.clone());
        drop(s);
        if let Some(l) = link {
            l.send(NodeFrame::Ack { task_id, n });
        }
    }

    /// Send a frame to the host running `task_id`, if it is linked now.
    pub(super) fn to_task_host(&self, task_id: Uuid, frame: NodeFrame) {
        let s = self.lock();
        let link = s
            .tasks
            .get(&task_id)
            .and_then(|a| s.hosts.get(&a.host))
            .and_then(|h| h.link.clone());
        drop(s);
        if let Some(l) = link {
            l.send(frame);
        }
    }
}
