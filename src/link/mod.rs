//! The node's side of remote agent hosts (`switchboard link`, the seed's
//! "clawlink" adapter; the host's side is [`crate::host`]).
//!
//! - [`Hosts`]: the registry of linked hosts, the agents each offers, and
//!   which host runs which task. A host that loses its link stays here for
//!   `[link] grace_ms`, its tasks waiting for it; past that its unfinished
//!   tasks fail with an error naming it.
//! - [`hosted`]: a hosted agent as an ordinary [`crate::agent::Agent`]: its
//!   `run` places the job on a host with a free slot, relays the host's
//!   reports into the task's context, and tells the host to stop when the
//!   run is dropped (cancel, timeout, shutdown). The engine needs nothing
//!   else.
//! - [`conn`]: one host's WebSocket at `GET /link`.
//!
//! Reports are numbered per task by the host. The connection forwards a
//! report only when its number is the next one, so a report resent after a
//! reconnect is never stored twice; the driver acks each number once it is
//! stored, and the host forgets what was acked.

pub mod conn;
pub mod hosted;
mod reports;
#[cfg(test)]
mod tests;
mod view;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::agent::Registered;
use crate::error::{Error, Result};
use crate::protocol::link::{NodeFrame, Offer, ReportBody, Resume};

pub use view::{HostAgentView, HostView, hosts_from_agents};

/// Frames queued to one host's socket at most; a host that lets more pile
/// up is disconnected (it relinks and resumes).
const OUTBOX: usize = 1024;
/// Reports queued to one task's driver at most; the connection stops
/// reading from the host while a driver is this far behind.
const INBOX: usize = 64;
/// Agents one host may offer.
pub const MAX_OFFERS: usize = 256;
/// Tasks remembered after they ended on the node, so that a report racing
/// a cancel is dropped quietly rather than refused as someone else's.
const ENDED: usize = 4096;

/// The sending half of a host's live connection.
#[derive(Clone)]
pub struct LinkTx {
    /// Which connection (a host relinks with a new one).
    pub conn_id: u64,
    tx: mpsc::Sender<NodeFrame>,
    /// Fired to close the connection.
    pub close: CancellationToken,
}

impl LinkTx {
    /// A sender over `tx`.
    pub fn new(conn_id: u64, tx: mpsc::Sender<NodeFrame>) -> Self {
        LinkTx {
            conn_id,
            tx,
            close: CancellationToken::new(),
        }
    }

    /// Queue a frame; a host too slow to take it is disconnected.
    fn send(&self, frame: NodeFrame) {
        if self.tx.try_send(frame).is_err() {
            self.close.cancel();
        }
    }
}

/// One host, linked or within its grace period.
struct Host {
    user_id: String,
    device_id: Option<String>,
    linked_at: DateTime<Utc>,
    offers: Vec<Offer>,
    /// Tasks running per agent.
    running: HashMap<String, usize>,
    /// `None` while the host is away (grace).
    link: Option<LinkTx>,
    /// The connection that last linked it.
    conn_id: u64,
    /// When the grace period of an away host ends.
    away_until: Option<DateTime<Utc>>,
    /// Placement order: hosts used longer ago go first among equals.
    last_used: u64,
}

/// A task placed on a host.
struct Assignment {
    host: String,
    agent_type: String,
    /// The highest report number forwarded to the driver.
    received: u64,
    /// The highest report number the driver has stored.
    acked: u64,
    reports: mpsc::Sender<(u64, ReportBody)>,
    lost: watch::Sender<Option<String>>,
    /// Its host went away for good; the driver is failing it.
    expired: bool,
}

#[derive(Default)]
struct State {
    hosts: BTreeMap<String, Host>,
    tasks: HashMap<Uuid, Assignment>,
    /// The slot queues of hosted agents by the name submits use (`agent`
    /// or `agent@host`), kept while any host offers it or tasks use it.
    pools: HashMap<String, Arc<Registered>>,
    /// Recently ended tasks and their hosts, oldest first.
    ended: VecDeque<(Uuid, String)>,
    next_conn: u64,
    uses: u64,
}

impl State {
    /// The tasks the node gave host `who.name`: those it still runs (to
    /// resume, with what is stored), and the lost ones' failure senders.
    fn sort_tasks(&self, who: &Linking) -> (Vec<Resume>, Vec<watch::Sender<Option<String>>>) {
        let mut resume = Vec::new();
        let mut lost = Vec::new();
        let mine = self
            .tasks
            .iter()
            .filter(|(_, a)| a.host == who.name && !a.expired);
        for (id, a) in mine {
            if who.running.contains(id) {
                resume.push(Resume {
                    task_id: *id,
                    acked: a.acked,
                });
            } else {
                lost.push(a.lost.clone());
            }
        }
        (resume, lost)
    }
}

/// Who is linking: what [`Hosts::link`] needs to know.
pub struct Linking {
    /// The host's name.
    pub name: String,
    /// The token's user.
    pub user_id: String,
    /// The proven device.
    pub device_id: Option<String>,
    /// What it offers.
    pub offers: Vec<Offer>,
    /// The tasks it still runs.
    pub running: Vec<Uuid>,
}

/// The linked hosts of this node. Cheap to share behind an `Arc`.
pub struct Hosts {
    /// A std mutex is right: every critical section is a few map updates,
    /// and it is never held across an await.
    state: Mutex<State>,
    node_id: String,
    grace: Duration,
    /// Wakes placements waiting for a host with a free slot.
    changed: Notify,
    me: Weak<Hosts>,
}

impl Hosts {
    /// An empty registry for node `node_id` with this grace period.
    pub fn new(node_id: &str, grace: Duration) -> Arc<Self> {
        Arc::new_cyclic(|me| Hosts {
            state: Mutex::new(State::default()),
            node_id: node_id.to_owned(),
            grace,
            changed: Notify::new(),
            me: me.clone(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic under this lock leaves maps, not half-written invariants.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The grace period.
    pub fn grace(&self) -> Duration {
        self.grace
    }

    /// A fresh connection id.
    pub fn next_conn_id(&self) -> u64 {
        let mut s = self.lock();
        s.next_conn += 1;
        s.next_conn
    }

    /// Link (or relink) a host over `link`. A host of the same name that
    /// is away, or linked by the same user and device (its old connection
    /// is dead but not noticed yet), is taken over; any other is a
    /// `conflict`. Returns the tasks to resume; tasks the node gave this
    /// host that the host no longer runs fail at once.
    pub fn link(&self, who: Linking, link: LinkTx) -> Result<Vec<Resume>> {
        let mut s = self.lock();
        let (resume, lost) = {
            let st = &mut *s;
            if let Some(old) = st.hosts.get(&who.name) {
                if old.user_id != who.user_id || old.device_id != who.device_id {
                    return Err(Error::Conflict(format!(
                        "a host named `{}` is already linked by another user or device",
                        who.name
                    )));
                }
                if let Some(old_link) = &old.link {
                    old_link.close.cancel();
                }
            }
            let (resume, lost) = st.sort_tasks(&who);
            let running = st
                .hosts
                .get(&who.name)
                .map(|h| h.running.clone())
                .unwrap_or_default();
            let linked_at = crate::event::now();
            st.hosts.insert(
                who.name.clone(),
                Host {
                    user_id: who.user_id,
                    device_id: who.device_id,
                    linked_at,
                    offers: who.offers,
                    running,
                    conn_id: link.conn_id,
                    link: Some(link),
                    away_until: None,
                    last_used: 0,
                },
            );
            (resume, lost)
        };
        for l in lost {
            let _ = l.send(Some(format!(
                "host `{}` linked again without this task (it restarted?); its work was lost",
                who.name
            )));
        }
        self.refresh_pools(&mut s);
        drop(s);
        self.changed.notify_waiters();
        Ok(resume)
    }

    /// The connection `conn_id` of host `name` ended. A host that said
    /// `bye` (`leaving`) goes at once and its tasks fail; any other waits
    /// for the grace period. False when that connection was already
    /// replaced.
    pub fn unlink(&self, name: &str, conn_id: u64, leaving: bool) -> bool {
        let mut s = self.lock();
        let Some(host) = s.hosts.get_mut(name) else {
            return false;
        };
        if host.conn_id != conn_id {
            return false;
        }
        host.link = None;
        if leaving {
            self.expire(&mut s, name, &format!("host `{name}` unlinked"));
        } else {
            let grace = chrono::Duration::from_std(self.grace).unwrap_or_default();
            host.away_until = Some(crate::event::now() + grace);
            self.spawn_grace(name.to_owned(), conn_id);
        }
        self.refresh_pools(&mut s);
        drop(s);
        self.changed.notify_waiters();
        true
    }

    fn spawn_grace(&self, name: String, conn_id: u64) {
        let me = self.me.clone();
        let grace = self.grace;
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            if let Some(hosts) = me.upgrade() {
                hosts.grace_over(&name, conn_id);
            }
        });
    }

    /// The grace of connection `conn_id` ended: if the host has not linked
    /// again since, it goes and its tasks fail.
    fn grace_over(&self, name: &str, conn_id: u64) {
        let mut s = self.lock();
        let away = s
            .hosts
            .get(name)
            .is_some_and(|h| h.conn_id == conn_id && h.link.is_none());
        if !away {
            return;
        }
        let ms = self.grace.as_millis();
        tracing::warn!(host = %name, "host did not link again within {ms} ms; failing its tasks");
        self.expire(
            &mut s,
            name,
            &format!("host `{name}` lost its link and did not come back within {ms} ms"),
        );
        self.refresh_pools(&mut s);
        drop(s);
        self.changed.notify_waiters();
    }

    /// Remove a host; its tasks' drivers learn `why` and fail.
    fn expire(&self, s: &mut State, name: &str, why: &str) {
        s.hosts.remove(name);
        for a in s.tasks.values_mut().filter(|a| a.host == name) {
            a.expired = true;
            let _ = a.lost.send(Some(why.to_owned()));
        }
    }

    /// Every host as the API lists it.
    pub fn views(&self) -> Vec<HostView> {
        let s = self.lock();
        s.hosts
            .iter()
            .map(|(name, h)| view::host_view(name, h, &self.node_id))
            .collect()
    }

    /// Panic when the indices disagree (for tests): every task is on a
    /// known host or failing, and each host counts exactly its tasks.
    pub fn check_invariants(&self) {
        let s = self.lock();
        for (id, a) in &s.tasks {
            assert!(
                s.hosts.contains_key(&a.host) || a.expired,
                "task {id} is on an unknown host"
            );
            assert!(a.acked <= a.received, "task {id} acked past received");
        }
        for (name, h) in &s.hosts {
            let placed = s
                .tasks
                .values()
                .filter(|a| &a.host == name && !a.expired)
                .count();
            let counted: usize = h.running.values().sum();
            assert_eq!(placed, counted, "host {name} counts its tasks wrong");
        }
    }
}
