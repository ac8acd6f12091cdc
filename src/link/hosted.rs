//! A hosted agent: an [`Agent`] whose `run` places the job on a linked host
//! and relays what the host reports. Placement respects each host's
//! `max_concurrent` per agent and spreads work: the host with the most free
//! slots goes first, and among equals the one used longest ago.
//!
//! A submit names a hosted agent as `agent` (any host offering it) or
//! `agent@host` (that host only). Each name has one slot queue
//! ([`Registered::slots`]) sized to the free capacity of the linked hosts
//! offering it, so surplus tasks wait in `pending` as for local agents.

use std::collections::BTreeSet;
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::json;
use tokio::sync::{mpsc, watch};
use uuid::Uuid;

use super::{Assignment, Host, Hosts, INBOX, State};
use crate::agent::{
    Agent, AgentError, AgentInfo, AgentSource, Context, FairQueue, Job, Registered, gate,
};
use crate::protocol::link::{NodeFrame, ReportBody, RunTask};

/// Which hosts a name may run on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Target {
    pub(super) agent: String,
    pub(super) host: Option<String>,
}

impl Target {
    /// `agent@host` or `agent`.
    pub(super) fn parse(name: &str) -> Self {
        match name.rsplit_once('@') {
            Some((agent, host)) if !agent.is_empty() && !host.is_empty() => Target {
                agent: agent.to_owned(),
                host: Some(host.to_owned()),
            },
            _ => Target {
                agent: name.to_owned(),
                host: None,
            },
        }
    }

    pub(super) fn matches(&self, name: &str) -> bool {
        self.host.as_deref().is_none_or(|h| h == name)
    }

    /// The offer of `host` for this target, if it makes one.
    fn offer<'a>(&self, name: &str, host: &'a Host) -> Option<&'a crate::protocol::link::Offer> {
        if !self.matches(name) {
            return None;
        }
        host.offers.iter().find(|o| o.agent_type == self.agent)
    }
}

/// The linked host with the most free slots for `target`, among equals the
/// one used longest ago; `None` when every one is full.
fn best_host(s: &State, target: &Target) -> Option<String> {
    s.hosts
        .iter()
        .filter(|(_, h)| h.link.is_some())
        .filter_map(|(n, h)| {
            let offer = target.offer(n, h)?;
            let busy = h.running.get(&target.agent).copied().unwrap_or(0);
            let free = offer.max_concurrent.saturating_sub(busy);
            (free > 0).then_some((n, free, h.last_used))
        })
        .max_by(|a, b| a.1.cmp(&b.1).then(b.2.cmp(&a.2)))
        .map(|(n, _, _)| n.clone())
}

/// The agent behind one hosted name.
struct HostedAgent {
    hosts: Arc<Hosts>,
    name: String,
    target: Target,
}

#[async_trait]
impl Agent for HostedAgent {
    fn info(&self) -> AgentInfo {
        let s = self.hosts.lock();
        let linked = s
            .hosts
            .iter()
            .any(|(n, h)| h.link.is_some() && self.target.offer(n, h).is_some());
        let mut info = AgentInfo {
            agent_type: self.name.clone(),
            name: self.name.clone(),
            description: String::new(),
            available: linked,
            capabilities: Vec::new(),
            metadata: json!({"kind": "hosted"}),
        };
        if let Some((n, o)) = s
            .hosts
            .iter()
            .find_map(|(n, h)| self.target.offer(n, h).map(|o| (n, o)))
        {
            info.description = o.description.clone();
            info.capabilities = o.capabilities.clone();
            info.metadata = json!({"kind": o.kind, "host": n});
        }
        if !linked {
            info.metadata["reason"] = json!("no host offering it is linked now");
        }
        info
    }

    async fn run(&self, job: Job, ctx: Context) -> Result<String, AgentError> {
        let mut placed = self.hosts.place(&self.target, &job, &ctx).await?;
        placed.relay(&ctx).await
    }
}

/// A task on a host. Dropping it before the host reported the end (cancel,
/// timeout, the node stopping) tells the host to stop the task.
pub(super) struct Placement {
    hosts: Arc<Hosts>,
    pub(super) task_id: Uuid,
    pub(super) host: String,
    reports: mpsc::Receiver<(u64, ReportBody)>,
    lost: watch::Receiver<Option<String>>,
    done: bool,
}

impl Placement {
    /// Relay the host's reports until the task ends.
    async fn relay(&mut self, ctx: &Context) -> Result<String, AgentError> {
        loop {
            let (n, body) = tokio::select! {
                biased;
                report = self.reports.recv() => match report {
                    Some(r) => r,
                    None => return Err(AgentError::Failed(format!("host `{}` went away", self.host))),
                },
                _ = self.lost.changed() => {
                    let why = self.lost.borrow().clone().unwrap_or_default();
                    self.done = true;
                    return Err(AgentError::Failed(why));
                }
            };
            match body {
                ReportBody::Output { chunk } => {
                    ctx.output(chunk).await?;
                    self.hosts.stored(self.task_id, n);
                }
                ReportBody::Wait { message } => {
                    self.hosts.stored(self.task_id, n);
                    let answer = ctx.wait(message).await?;
                    let frame = NodeFrame::Answer {
                        task_id: self.task_id,
                        approve: answer.approve,
                        input: answer.input,
                    };
                    self.hosts.to_task_host(self.task_id, frame);
                }
                ReportBody::Completed { result } => {
                    self.done = true;
                    self.hosts.stored(self.task_id, n);
                    return Ok(result);
                }
                ReportBody::Failed { error } => {
                    self.done = true;
                    self.hosts.stored(self.task_id, n);
                    return Err(AgentError::Failed(error));
                }
            }
        }
    }
}

impl Drop for Placement {
    fn drop(&mut self) {
        self.hosts.release(self.task_id, !self.done);
    }
}

impl Hosts {
    /// Place `job` on a linked host with a free slot for `target`, waiting
    /// while all are busy or away. Fails at once when no host offers it.
    async fn place(
        &self,
        target: &Target,
        job: &Job,
        ctx: &Context,
    ) -> Result<Placement, AgentError> {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.try_place(target, job) {
                Ok(Some(p)) => return Ok(p),
                Ok(None) => {}
                Err(why) => return Err(AgentError::Failed(why)),
            }
            tokio::select! {
                _ = notified => {}
                _ = ctx.cancelled() => return Err(AgentError::Stopped),
            }
        }
    }

    pub(super) fn try_place(
        &self,
        target: &Target,
        job: &Job,
    ) -> Result<Option<Placement>, String> {
        let me = self.me.upgrade().ok_or("the node is stopping")?;
        let mut s = self.lock();
        let st = &mut *s;
        if !st.hosts.iter().any(|(n, h)| target.offer(n, h).is_some()) {
            return Err(format!(
                "no linked host offers agent `{}` now",
                target.agent
            ));
        }
        let Some(name) = best_host(st, target) else {
            return Ok(None);
        };
        st.uses += 1;
        let uses = st.uses;
        let host = st.hosts.get_mut(&name).expect("picked from the map");
        host.last_used = uses;
        *host.running.entry(target.agent.clone()).or_default() += 1;
        let link = host.link.clone().expect("picked a linked host");
        let (tx, rx) = mpsc::channel(INBOX);
        let (lost_tx, lost_rx) = watch::channel(None);
        st.tasks.insert(
            job.task_id,
            Assignment {
                host: name.clone(),
                agent_type: target.agent.clone(),
                received: 0,
                acked: 0,
                reports: tx,
                lost: lost_tx,
                expired: false,
            },
        );
        link.send(NodeFrame::Run(RunTask {
            task_id: job.task_id,
            agent_type: target.agent.clone(),
            prompt: job.prompt.clone(),
            params: job.params.clone(),
            context: job.context.clone(),
        }));
        self.refresh_pools(&mut s);
        drop(s);
        tracing::info!(task_id = %job.task_id, host = %name, "placed on a host");
        Ok(Some(Placement {
            hosts: me,
            task_id: job.task_id,
            host: name,
            reports: rx,
            lost: lost_rx,
            done: false,
        }))
    }

    /// A placed task ended on the node; `stop` tells its host to stop it.
    fn release(&self, task_id: Uuid, stop: bool) {
        let mut s = self.lock();
        let st = &mut *s;
        let Some(a) = st.tasks.remove(&task_id) else {
            return;
        };
        if st.ended.len() >= super::ENDED {
            st.ended.pop_front();
        }
        st.ended.push_back((task_id, a.host.clone()));
        if let Some(h) = st.hosts.get_mut(&a.host).filter(|_| !a.expired) {
            if let Some(n) = h.running.get_mut(&a.agent_type) {
                *n = n.saturating_sub(1);
            }
            if let (true, Some(link)) = (stop, &h.link) {
                link.send(NodeFrame::Cancel {
                    task_id,
                    reason: "stopped by the node".into(),
                });
            }
        }
        self.refresh_pools(&mut s);
        drop(s);
        self.changed.notify_waiters();
    }

    /// Size each name's slot queue to the free capacity of the linked hosts
    /// offering it plus what it runs now, and forget names nobody offers or
    /// uses. A name no host offers keeps one slot, so that its queued tasks
    /// reach `run` and fail with the reason instead of waiting forever.
    pub(super) fn refresh_pools(&self, s: &mut State) {
        let State { hosts, pools, .. } = s;
        pools.retain(|name, reg| {
            let target = Target::parse(name);
            let offered = hosts.iter().any(|(n, h)| target.offer(n, h).is_some());
            let capacity: usize = hosts
                .iter()
                .filter(|(_, h)| h.link.is_some())
                .filter_map(|(n, h)| target.offer(n, h).map(|o| o.max_concurrent))
                .sum();
            let (running, queued) = reg.slots.load();
            reg.slots
                .set_max(if offered { capacity } else { capacity.max(1) });
            offered || running + queued > 0
        });
    }

    /// The slot queue and agent of a hosted name, made on first use.
    fn pool(&self, s: &mut State, name: &str, target: Target) -> Option<Arc<Registered>> {
        if let Some(r) = s.pools.get(name) {
            return Some(r.clone());
        }
        let offers: Vec<_> = s
            .hosts
            .iter()
            .filter_map(|(n, h)| target.offer(n, h))
            .collect();
        if offers.is_empty() {
            return None;
        }
        // Any host that does not restrict the agent leaves it open.
        let allowed_roles = offers
            .iter()
            .map(|o| o.allowed_roles.as_ref())
            .collect::<Option<Vec<_>>>()
            .map(|lists| {
                lists
                    .into_iter()
                    .flatten()
                    .filter_map(|r| r.parse().ok())
                    .collect::<BTreeSet<_>>()
            });
        let agent = Arc::new(HostedAgent {
            hosts: self.me.upgrade()?,
            name: name.to_owned(),
            target,
        });
        let reg = Arc::new(Registered {
            agent: Arc::new(gate::Gated::new(agent, false, None)),
            slots: FairQueue::new(1),
            allowed_roles,
        });
        s.pools.insert(name.to_owned(), reg.clone());
        self.refresh_pools(s);
        Some(reg)
    }
}

impl AgentSource for Hosts {
    fn list(&self) -> Vec<AgentInfo> {
        let s = self.lock();
        s.hosts
            .iter()
            .flat_map(|(name, h)| super::view::agent_infos(name, h, &self.node_id))
            .collect()
    }

    fn get(&self, name: &str) -> Option<Arc<Registered>> {
        let mut s = self.lock();
        self.pool(&mut s, name, Target::parse(name))
    }

    fn addresses(&self) -> Vec<String> {
        let s = self.lock();
        s.hosts
            .iter()
            .filter(|(_, h)| h.link.is_some())
            .flat_map(|(n, h)| {
                h.offers
                    .iter()
                    .map(move |o| format!("{}@{n}", o.agent_type))
            })
            .collect()
    }
}
