//! Prometheus metrics. Counters are incremented where things happen; gauges
//! that are cheaper to count than to track are refreshed at scrape time.
//!
//! Exported: `switchboard_connections`, `switchboard_sessions_active`,
//! `switchboard_tasks{state}`, `switchboard_tasks_running_here`,
//! `switchboard_events_stored_total`, `switchboard_events_published_total`,
//! `switchboard_events_delivered_total{transport}`,
//! `switchboard_subscriber_lagged_total`, `switchboard_ws_ops_total{op}`,
//! `switchboard_denied_total{action}`, `switchboard_commit_batch_size`,
//! `switchboard_commit_seconds` (time to commit one batch of events).
//!
//! Retention (set by each run of the pruner, [`crate::runtime::retention`]):
//! `switchboard_pruned_rows_total{kind}`, `switchboard_pruned_bytes_reclaimed_total`,
//! `switchboard_prune_seconds` (the last run's duration) and
//! `switchboard_prune_last_timestamp_seconds`.
//!
//! Storage (the figures of `GET /api/admin/storage`, refreshed at a scrape
//! at most every [`STORAGE_EVERY`]): `switchboard_storage_rows{kind}`
//! (estimated for big tables, see [`crate::protocol::storage`]),
//! `switchboard_storage_bytes{kind}` (where the backend can say),
//! `switchboard_storage_oldest_timestamp_seconds{kind}`,
//! `switchboard_storage_database_bytes` (SQLite: file + WAL) and, on SQLite,
//! `switchboard_storage_wal_bytes`.

use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::protocol::storage::StorageReport;
use crate::runtime::Runtime;
use crate::task::TaskState;

/// The storage gauges are refreshed at most this often: a scrape every few
/// seconds should not walk the database each time (on SQLite, per-kind
/// bytes read every page of a file up to 256 MiB).
pub const STORAGE_EVERY: Duration = Duration::from_secs(30);

/// The recorder: the group commit's histograms with fixed buckets (a
/// Prometheus histogram costs a counter per bucket; a summary keeps a
/// sketch per window).
fn builder() -> PrometheusBuilder {
    const SECONDS: &[f64] = &[
        0.000_25, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
    ];
    const BATCH: &[f64] = &[
        1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 4096.0,
    ];
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full("switchboard_commit_seconds".into()), SECONDS)
        .and_then(|b| {
            b.set_buckets_for_metric(Matcher::Full("switchboard_commit_batch_size".into()), BATCH)
        })
        .expect("the buckets are not empty")
}

/// How often the recorder's histograms are folded into their buckets.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// The process-wide recorder (installed once, shared by every node in the
/// process, which only matters for tests).
///
/// A thread of its own runs the recorder's upkeep: until then a histogram
/// keeps every value recorded, and nothing else drains them but a scrape
/// of `/metrics`. A node nobody scraped kept two values per commit for
/// good (at 1,000 commits/s, more than 1 GiB a day). The thread then
/// collects its own heap, as every thread that goes idle does.
pub fn handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let handle = builder()
                .install_recorder()
                .unwrap_or_else(|_| builder().build_recorder().handle());
            let upkept = handle.clone();
            let started = std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(UPKEEP_EVERY);
                        upkept.run_upkeep();
                        crate::alloc::collect_when_idle();
                    }
                });
            if let Err(e) = started {
                tracing::warn!(error = %e, "no upkeep thread: histograms grow until scraped");
            }
            handle
        })
        .clone()
}

/// Refresh the scrape-time gauges.
pub async fn refresh(runtime: &Runtime) {
    match runtime.store().stats().await {
        Ok(stats) => {
            for state in TaskState::ALL {
                let n = stats
                    .tasks_by_state
                    .iter()
                    .find(|(s, _)| *s == state)
                    .map_or(0, |(_, n)| *n);
                metrics::gauge!("switchboard_tasks", "state" => state.as_str()).set(n as f64);
            }
            metrics::gauge!("switchboard_sessions_active").set(stats.active_sessions as f64);
        }
        Err(e) => tracing::warn!(error = %e, "metrics: store stats unavailable"),
    }
    metrics::gauge!("switchboard_tasks_running_here").set(runtime.engine().live_count() as f64);
    metrics::gauge!("switchboard_connections").set(runtime.presence().count() as f64);
    // Streams with a live subscriber on this node: goes back to zero when
    // the sockets are gone (nothing per session outlives its last socket).
    metrics::gauge!("switchboard_bus_streams").set(runtime.bus().stream_count() as f64);
    refresh_storage(runtime).await;
}

/// Refresh the storage gauges, unless they were refreshed less than
/// [`STORAGE_EVERY`] ago (by any node of this process).
async fn refresh_storage(runtime: &Runtime) {
    // A std mutex: held only to read and set an instant, never across an await.
    static LAST: Mutex<Option<Instant>> = Mutex::new(None);
    {
        let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|t| t.elapsed() < STORAGE_EVERY) {
            return;
        }
        *last = Some(Instant::now());
    }
    match runtime.store().storage().await {
        Ok(report) => set_storage_gauges(&report),
        Err(e) => tracing::warn!(error = %e, "metrics: storage figures unavailable"),
    }
}

/// Export one storage report.
pub fn set_storage_gauges(report: &StorageReport) {
    for (kind, k) in &report.kinds {
        metrics::gauge!("switchboard_storage_rows", "kind" => kind.clone()).set(k.rows as f64);
        if let Some(bytes) = k.bytes {
            metrics::gauge!("switchboard_storage_bytes", "kind" => kind.clone()).set(bytes as f64);
        }
        if let Some(oldest) = k.oldest {
            metrics::gauge!("switchboard_storage_oldest_timestamp_seconds", "kind" => kind.clone())
                .set(oldest.timestamp_micros() as f64 / 1e6);
        }
    }
    metrics::gauge!("switchboard_storage_database_bytes").set(report.database_bytes as f64);
    if let Some(wal) = report.wal_bytes {
        metrics::gauge!("switchboard_storage_wal_bytes").set(wal as f64);
    }
}
