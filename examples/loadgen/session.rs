//! One connection's life: wait for the go, subscribe, submit `echo` tasks
//! and time their events from the frames the node sends back.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

use super::Shared;
use super::connect::{Ws, open};
use super::report::Stats;

/// What the driver tells the connections.
#[derive(Clone)]
pub(super) enum Phase {
    /// Connect, say hello, wait.
    Connecting,
    /// Go: submit from `start` until `until`.
    Run(Arc<Plan>),
    /// Close now.
    Stop,
}

pub(super) struct Plan {
    pub(super) start: Instant,
    pub(super) until: Instant,
    /// Every connection's session id, by index (`None`: it failed).
    pub(super) sessions: Vec<Option<String>>,
}

/// The parts of a server frame this tool looks at; the rest is skipped
/// without being built.
#[derive(Deserialize)]
pub(super) struct Frame<'a> {
    pub(super) op: &'a str,
    #[serde(default)]
    pub(super) id: Option<u64>,
    #[serde(default)]
    ok: bool,
    #[serde(default, borrow)]
    pub(super) result: Option<Ack<'a>>,
    #[serde(default)]
    pub(super) error: Option<ErrorBody>,
    #[serde(default)]
    stream: Option<&'a str>,
    #[serde(default)]
    task_id: Option<&'a str>,
    #[serde(default, rename = "type")]
    kind: Option<&'a str>,
    #[serde(default, borrow)]
    data: Option<Data<'a>>,
}

#[derive(Deserialize)]
pub(super) struct Ack<'a> {
    #[serde(default)]
    task_id: Option<&'a str>,
    #[serde(default)]
    pub(super) session_id: Option<&'a str>,
}

#[derive(Deserialize)]
pub(super) struct ErrorBody {
    pub(super) code: String,
    pub(super) message: String,
}

#[derive(Deserialize)]
struct Data<'a> {
    #[serde(default)]
    state: Option<&'a str>,
}

/// One session: open, wait for the go, run, report.
pub(super) async fn connection(
    i: usize,
    shared: Arc<Shared>,
    ready: mpsc::UnboundedSender<(usize, Result<String, String>)>,
    mut phase: watch::Receiver<Phase>,
) -> Stats {
    let (mut ws, session_id) = match open(i, &shared).await {
        Ok(ok) => ok,
        Err(e) => {
            let _ = ready.send((i, Err(format!("{e:#}"))));
            return Stats::default();
        }
    };
    let _ = ready.send((i, Ok(session_id.clone())));
    // Keep reading while waiting, so that the server's pings are answered.
    let plan = loop {
        tokio::select! {
            changed = phase.changed() => {
                if changed.is_err() {
                    return Stats::default();
                }
                let now = phase.borrow_and_update().clone();
                match now {
                    Phase::Run(plan) => break plan,
                    Phase::Stop => {
                        let _ = ws.close(None).await;
                        return Stats::default();
                    }
                    Phase::Connecting => {}
                }
            }
            msg = ws.next() => match msg {
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return Stats::default(),
                Some(Ok(_)) => {}
            },
        }
    };
    let mut run = Run::new(&shared, &session_id);
    let result = run.drive(&mut ws, &plan, i, &mut phase).await;
    if let Err(e) = result {
        run.stats.error.get_or_insert(format!("{e:#}"));
    }
    run.stats.unfinished = run.outstanding;
    let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
    run.stats
}

/// Submit and event timings of one task.
#[derive(Default)]
struct Times {
    submitted: Option<Instant>,
    first: Option<Instant>,
    done: Option<(Instant, bool)>,
}

/// The running part of one session.
struct Run<'a> {
    shared: &'a Shared,
    own_stream: String,
    next_id: u64,
    /// Submits awaiting their reply, by id.
    sent: HashMap<u64, Instant>,
    tasks: HashMap<Uuid, Times>,
    outstanding: u64,
    stats: Stats,
}

impl<'a> Run<'a> {
    fn new(shared: &'a Shared, session_id: &str) -> Self {
        Run {
            shared,
            own_stream: format!("session:{session_id}"),
            next_id: 0,
            sent: HashMap::new(),
            tasks: HashMap::new(),
            outstanding: 0,
            stats: Stats::default(),
        }
    }

    async fn drive(
        &mut self,
        ws: &mut Ws,
        plan: &Plan,
        i: usize,
        phase: &mut watch::Receiver<Phase>,
    ) -> anyhow::Result<()> {
        let args = &self.shared.args;
        let n = plan.sessions.len();
        // Follow sessions of the same user (connection i is user i % users),
        // since nobody else's are visible without admin:system.
        // Connections u, u + users, u + 2 * users, ... share a user: walk
        // that ring from i, never wrapping round to i itself.
        let users = self.shared.hellos.len();
        let (user, place) = (i % users, i / users);
        let ring = (n - user).div_ceil(users);
        for k in (1..=args.fanout).take_while(|k| *k < ring) {
            let j = user + (place + k) % ring * users;
            if let Some(Some(other)) = plan.sessions.get(j) {
                let sub = format!(r#"{{"op":"subscribe","id":0,"stream":"session:{other}"}}"#);
                ws.feed(Message::text(sub)).await?;
            }
        }
        ws.flush().await?;

        let open_loop = args.rate > 0.0;
        // Open loop: one submit every n/rate seconds, phases spread evenly.
        let period = if open_loop {
            Duration::from_secs_f64(n as f64 / args.rate)
        } else {
            Duration::from_secs(3600)
        };
        let offset = period.mul_f64(i as f64 / n as f64);
        let mut ticker = tokio::time::interval_at(plan.start + offset, period);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let stop_submitting = tokio::time::sleep_until(plan.until);
        tokio::pin!(stop_submitting);
        let mut submitting = true;
        if !open_loop {
            tokio::time::sleep_until(plan.start).await;
            for _ in 0..args.inflight.max(1) {
                self.submit(ws).await?;
            }
        }
        loop {
            tokio::select! {
                _ = ticker.tick(), if open_loop && submitting => {
                    // A tick that comes late, past the end, is not sent.
                    if Instant::now() < plan.until {
                        self.submit(ws).await?;
                    }
                }
                _ = &mut stop_submitting, if submitting => {
                    submitting = false;
                    if self.outstanding == 0 {
                        return Ok(());
                    }
                }
                changed = phase.changed() => {
                    if changed.is_err() || matches!(*phase.borrow_and_update(), Phase::Stop) {
                        return Ok(());
                    }
                }
                msg = ws.next() => {
                    let finished = match msg {
                        Some(Ok(Message::Text(text))) => self.on_frame(text.as_str())?,
                        Some(Ok(Message::Close(c))) => bail!("the server closed the connection: {c:?}"),
                        Some(Ok(_)) => 0,
                        Some(Err(e)) => bail!("WebSocket error: {e}"),
                        None => bail!("the connection ended"),
                    };
                    if !submitting && self.outstanding == 0 {
                        return Ok(());
                    }
                    if !open_loop && submitting {
                        for _ in 0..finished {
                            self.submit(ws).await?;
                        }
                    }
                }
            }
        }
    }

    async fn submit(&mut self, ws: &mut Ws) -> anyhow::Result<()> {
        self.next_id += 1;
        let frame = format!("{{\"id\":{}{}", self.next_id, self.shared.submit_tail);
        self.sent.insert(self.next_id, Instant::now());
        self.stats.submitted += 1;
        self.outstanding += 1;
        ws.send(Message::text(frame)).await?;
        Ok(())
    }

    /// Handle one frame; returns how many tasks it finished.
    fn on_frame(&mut self, text: &str) -> anyhow::Result<u64> {
        let now = Instant::now();
        let f: Frame = serde_json::from_str(text).context("a frame that is not JSON")?;
        match f.op {
            "event" => {
                self.stats.events += 1;
                self.stats.last_event = Some(now);
                if f.stream != Some(self.own_stream.as_str()) {
                    return Ok(0);
                }
                self.stats.own_events += 1;
                let Some(task_id) = f.task_id.and_then(|t| Uuid::parse_str(t).ok()) else {
                    return Ok(0);
                };
                let awaiting_replies = !self.sent.is_empty();
                let times = self.tasks.entry(task_id).or_default();
                times.first.get_or_insert(now);
                if f.kind == Some("task.state") {
                    let state = f.data.and_then(|d| d.state).unwrap_or("");
                    if matches!(state, "completed" | "failed" | "cancelled") {
                        times.done = Some((now, state == "completed"));
                        if times.submitted.is_none() && !awaiting_replies {
                            // Another connection's task on a shared session.
                            self.tasks.remove(&task_id);
                            return Ok(0);
                        }
                    }
                }
                Ok(self.finish(task_id))
            }
            "reply" => {
                let Some(sent_at) = f.id.and_then(|id| self.sent.remove(&id)) else {
                    if let Some(e) = f.error {
                        self.stats
                            .error
                            .get_or_insert(format!("request refused: {} ({})", e.message, e.code));
                    }
                    return Ok(0);
                };
                if !f.ok {
                    self.stats.rejected += 1;
                    self.outstanding -= 1;
                    if let Some(e) = f.error {
                        self.stats
                            .error
                            .get_or_insert(format!("submit refused: {} ({})", e.message, e.code));
                    }
                    return Ok(1);
                }
                self.stats.acked += 1;
                let Some(task_id) = f
                    .result
                    .and_then(|r| r.task_id)
                    .and_then(|t| Uuid::parse_str(t).ok())
                else {
                    bail!("submit reply without task_id");
                };
                self.tasks.entry(task_id).or_default().submitted = Some(sent_at);
                Ok(self.finish(task_id))
            }
            _ => Ok(0),
        }
    }

    /// Record a task once its submit and its end are both known.
    fn finish(&mut self, task_id: Uuid) -> u64 {
        let Some(Times {
            submitted: Some(submitted),
            first,
            done: Some((done, completed)),
        }) = self.tasks.get(&task_id)
        else {
            return 0;
        };
        let micros = |t: Instant| t.saturating_duration_since(*submitted).as_micros() as u32;
        if let Some(first) = first {
            self.stats.first_us.push(micros(*first));
        }
        self.stats.done_us.push(micros(*done));
        if *completed {
            self.stats.completed += 1;
        } else {
            self.stats.failed += 1;
        }
        self.tasks.remove(&task_id);
        self.outstanding -= 1;
        1
    }
}
