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

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::runtime::Runtime;
use crate::task::TaskState;

/// The process-wide recorder (installed once, shared by every node in the
/// process, which only matters for tests).
pub fn handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .install_recorder()
                .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder().handle())
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
}
