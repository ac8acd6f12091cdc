//! Data retention (`[retention]`, CONTRACT section 10): the background
//! pruner, and the `earliest_seq` signal that tells a resuming reader that
//! what it asked for was pruned.
//!
//! One pruner runs per node, every `prune_every`; on a shared store only
//! one node prunes at a time ([`Retention::prune_lock`]). A run removes, in
//! batches of [`BATCH`] rows each committed on its own:
//! 1. stream events of tasks that ended before the events window, from the
//!    front of each stream only (a stream's first event still needed holds
//!    the rest, so what is kept is always one unbroken run of seqs); one
//!    batch cuts as many streams as its rows allow;
//! 2. finished tasks older than the tasks window that have no event left;
//! 3. sessions idle for `sessions_idle` with no task left (not while a
//!    socket of this node is attached to one);
//! 4. audit records older than the audit window and before the newest
//!    signed checkpoint taken before it, which then vouches for the first
//!    record kept (`audit verify` starts from it), followed by one
//!    `audit.pruned` record saying what went;
//! 5. then gives the space back (SQLite's incremental vacuum).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::audit::{NewAudit, kind};
use crate::config::RetentionConfig;
use crate::error::Result;
use crate::event::{StreamKey, now};
use crate::protocol::storage::PruneRun;
use crate::runtime::Runtime;
use crate::store::Store;

/// Rows removed per transaction at most.
pub const BATCH: i64 = 1000;
/// Streams planned per read.
pub const STREAMS_PER_PLAN: i64 = 1000;

/// The pruner's configuration and what its last run did.
#[derive(Debug, Default)]
pub struct Pruner {
    /// `[retention]`.
    config: RetentionConfig,
    /// The last run, for `GET /api/admin/storage`. (A std mutex: held only
    /// to copy a value in or out, never across an await.)
    last: Mutex<Option<PruneRun>>,
}

impl Pruner {
    /// A pruner for `config` (which may prune nothing).
    pub fn new(config: RetentionConfig) -> Self {
        Pruner {
            config,
            last: Mutex::new(None),
        }
    }

    /// `[retention]` in force.
    pub fn config(&self) -> &RetentionConfig {
        &self.config
    }

    /// What the last run did, if any ran.
    pub fn last_run(&self) -> Option<PruneRun> {
        self.last.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn record(&self, run: PruneRun) {
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(run);
    }
}

/// Run the pruner every `prune_every` until `stop` (nothing when no
/// retention is configured).
pub async fn run(runtime: std::sync::Arc<Runtime>, stop: CancellationToken) {
    let cfg = runtime.pruner().config().clone();
    if !cfg.enabled() {
        return;
    }
    // The last run before a restart, until this node's first run.
    if let Ok(Some(last)) = runtime.store().last_prune().await {
        export_last(&last);
    }
    let mut tick = tokio::time::interval(cfg.every());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        if let Err(e) = runtime.prune_now(&stop).await {
            tracing::warn!(error = %e, "prune run failed; trying again next time");
        }
    }
}

/// How far back each kind is kept, as instants.
struct Horizons {
    events: Option<DateTime<Utc>>,
    tasks: Option<DateTime<Utc>>,
    sessions: Option<DateTime<Utc>>,
    audit: Option<DateTime<Utc>>,
}

impl Horizons {
    fn of(cfg: &RetentionConfig, at: DateTime<Utc>) -> Self {
        let before =
            |d: Duration| at - chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX);
        Horizons {
            events: cfg.events_window().map(before),
            tasks: cfg.tasks.map(|w| before(w.0)),
            sessions: cfg.sessions_idle.map(|w| before(w.0)),
            audit: cfg.audit.map(|w| before(w.0)),
        }
    }
}

impl Runtime {
    /// The pruner's configuration and last run.
    pub fn pruner(&self) -> &Pruner {
        &self.pruner
    }

    /// Run the pruner once now; `None` when another node was pruning.
    pub async fn prune_now(&self, stop: &CancellationToken) -> Result<Option<PruneRun>> {
        let store = self.store.as_ref();
        let Some(_lock) = store.prune_lock().await? else {
            tracing::debug!("another node is pruning; skipping this run");
            return Ok(None);
        };
        let started = Instant::now();
        let h = Horizons::of(self.pruner.config(), now());
        let mut removed = BTreeMap::new();
        if let Some(at) = h.events {
            removed.insert(
                "events".to_owned(),
                prune_events(store, at, stop).await?.rows,
            );
        }
        if let Some(at) = h.tasks {
            let n = batches(stop, || store.prune_tasks(at, BATCH)).await?;
            removed.insert("tasks".to_owned(), n);
        }
        if let Some(at) = h.sessions {
            removed.insert("sessions".to_owned(), self.prune_sessions(at, stop).await?);
        }
        if let Some(at) = h.audit {
            removed.insert("audit".to_owned(), prune_audit(store, at, stop).await?);
        }
        let reclaimed = if removed.values().any(|n| *n > 0) {
            store.reclaim().await?
        } else {
            0
        };
        let run = PruneRun {
            at: now(),
            seconds: started.elapsed().as_secs_f64(),
            removed,
            reclaimed_bytes: reclaimed as i64,
        };
        export(&run);
        tracing::info!(removed = ?run.removed, reclaimed, seconds = run.seconds, "pruned");
        if let Err(e) = store.record_prune(&run).await {
            tracing::warn!(error = %e, "could not store the prune run; it is reported until a restart");
        }
        self.pruner.record(run.clone());
        Ok(Some(run))
    }

    /// Idle sessions with no task left, except those attached here now.
    async fn prune_sessions(&self, at: DateTime<Utc>, stop: &CancellationToken) -> Result<i64> {
        let attached: std::collections::HashSet<uuid::Uuid> = self
            .presence
            .list(None)
            .into_iter()
            .map(|c| c.session_id)
            .collect();
        let mut total = 0;
        loop {
            let ids = self.store.idle_sessions(at, BATCH).await?;
            let ids: Vec<_> = ids
                .into_iter()
                .filter(|id| !attached.contains(id))
                .collect();
            if ids.is_empty() || stop.is_cancelled() {
                return Ok(total);
            }
            let n = self.store.prune_sessions(ids.clone(), at).await? as i64;
            total += n;
            if n == 0 || (ids.len() as i64) < BATCH {
                return Ok(total);
            }
        }
    }

    /// The `earliest_seq` to tell a reader that resumes `stream` after
    /// `after_seq`: the oldest seq still stored, when events it asked for
    /// were pruned (`after_seq < earliest - 1`), else `None`.
    pub async fn earliest_seq(
        &self,
        stream: StreamKey,
        after_seq: Option<i64>,
    ) -> Result<Option<i64>> {
        let Some(after) = after_seq else {
            return Ok(None);
        };
        let earliest = match stream {
            StreamKey::Session(id) => self.store.stream_floor(id).await? + 1,
            StreamKey::Audit => match self.store.audit_after(0, 1).await?.first() {
                Some(r) => r.seq,
                None => return Ok(None),
            },
            StreamKey::Tasks => return Ok(None),
        };
        Ok((after < earliest - 1).then_some(earliest))
    }
}

/// Where a resume after `after_seq` starts reading, given the
/// `earliest_seq` signal: right before the oldest event still stored when
/// the ones asked for were pruned (the signal already said so).
pub fn resume_from(after_seq: Option<i64>, earliest: Option<i64>) -> Option<i64> {
    after_seq.map(|a| earliest.map_or(a, |n| a.max(n - 1)))
}

/// Call `batch` until it removes nothing (or `stop`); the total removed.
async fn batches<F, Fut>(stop: &CancellationToken, mut batch: F) -> Result<i64>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<u64>>,
{
    let mut total = 0;
    while !stop.is_cancelled() {
        let n = batch().await?;
        total += n as i64;
        if n == 0 {
            break;
        }
    }
    Ok(total)
}

/// What [`prune_events`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EventsPruned {
    /// Events removed.
    pub rows: i64,
    /// Transactions that removed them (batches of [`BATCH`] rows at most,
    /// each spanning as many streams as fit).
    pub batches: i64,
}

/// Cut every stream whose front belongs to tasks that ended before `at`:
/// plan up to [`STREAMS_PER_PLAN`] streams at a time, and cut them in
/// batches of at most [`BATCH`] rows that span streams, so that a store of
/// thousands of small finished streams is pruned in a few transactions.
pub async fn prune_events(
    store: &dyn Store,
    at: DateTime<Utc>,
    stop: &CancellationToken,
) -> Result<EventsPruned> {
    let mut total = EventsPruned::default();
    loop {
        let cuts = store.prunable_streams(at, STREAMS_PER_PLAN).await?;
        let planned = cuts.len() as i64;
        let mut rest = cuts;
        let mut moved = 0;
        while !rest.is_empty() && !stop.is_cancelled() {
            let batch = store.cut_streams(rest.clone(), BATCH).await?;
            moved += batch.removed as i64;
            total.batches += 1;
            if batch.removed == 0 && batch.done == 0 {
                break; // cannot happen (a batch with room reaches every cut); never spin
            }
            rest.drain(..batch.done.min(rest.len()));
        }
        total.rows += moved;
        // Stop when a round moved nothing, or when the plan was not full.
        if moved == 0 || planned < STREAMS_PER_PLAN || stop.is_cancelled() {
            return Ok(total);
        }
    }
}

/// Audit records before the newest usable checkpoint older than `at`,
/// then one `audit.pruned` record.
async fn prune_audit(
    store: &dyn Store,
    at: DateTime<Utc>,
    stop: &CancellationToken,
) -> Result<i64> {
    let Some(point) = store.audit_prune_point(at).await? else {
        return Ok(0);
    };
    let n = batches(stop, || store.prune_audit(point, BATCH)).await?;
    if n > 0 {
        let record = NewAudit::by(None, kind::AUDIT_PRUNED, "prune")
            .resource("audit", point)
            .detail("before_seq", point)
            .detail("removed", n);
        store.audit(vec![record]).await?;
    }
    Ok(n)
}

/// The run's figures in `/metrics`.
fn export(run: &PruneRun) {
    for (kind, n) in &run.removed {
        metrics::counter!("switchboard_pruned_rows_total", "kind" => kind.clone())
            .increment(*n as u64);
    }
    metrics::counter!("switchboard_pruned_bytes_reclaimed_total")
        .increment(run.reclaimed_bytes as u64);
    export_last(run);
}

/// The gauges of the last run.
fn export_last(run: &PruneRun) {
    metrics::gauge!("switchboard_prune_seconds").set(run.seconds);
    metrics::gauge!("switchboard_prune_last_timestamp_seconds")
        .set(run.at.timestamp_micros() as f64 / 1e6);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `events` is held to `tasks` when that is shorter: removing a task
    /// removes its events.
    #[test]
    fn horizons_follow_the_windows() {
        let cfg: RetentionConfig =
            toml::from_str("events = \"30d\"\ntasks = \"1d\"\naudit = \"2h\"").unwrap();
        let at = now();
        let h = Horizons::of(&cfg, at);
        assert_eq!(h.events, Some(at - chrono::Duration::days(1)));
        assert_eq!(h.tasks, Some(at - chrono::Duration::days(1)));
        assert_eq!(h.audit, Some(at - chrono::Duration::hours(2)));
        assert_eq!(h.sessions, None);
    }
}
