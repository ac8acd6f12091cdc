//! The one state object every handler reaches through axum's `State`.

use std::ops::Deref;
use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::runtime::Runtime;

/// Shared state: cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

/// What [`AppState`] holds.
pub struct Inner {
    /// Every operation of the node.
    pub runtime: Arc<Runtime>,
    /// Renders `/metrics`.
    pub metrics: PrometheusHandle,
    /// Fires when the node begins to shut down.
    pub shutdown: CancellationToken,
    /// WebSocket and SSE connections, waited for at shutdown.
    pub connections: TaskTracker,
}

impl AppState {
    /// Wrap the parts.
    pub fn new(inner: Inner) -> Self {
        AppState(Arc::new(inner))
    }
}

impl Deref for AppState {
    type Target = Inner;

    fn deref(&self) -> &Inner {
        &self.0
    }
}
