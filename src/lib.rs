//! Switchboard: a WebSocket-first real-time server for AI agent work.
//!
//! A tour of the crate, from the wire inwards:
//!
//! - [`http`]: REST and SSE handlers, one file per resource, and [`ws`]: the
//!   WebSocket protocol v1 (upgrade, connection loop, op dispatch). Both are
//!   thin adapters: decode, call one [`runtime::Runtime`] method, encode.
//! - [`runtime`]: every operation of the node. Each takes an authenticated
//!   [`auth::Principal`], checks permissions in one place
//!   ([`runtime::Runtime::authorize`] over the [`rbac::Action`] table),
//!   writes the store with its [`audit`] record in one transaction, and lets
//!   the store publish.
//! - [`task`]: the pure state machine ([`task::state`]) and the
//!   [`task::engine`] that drives [`agent`]s through it.
//! - [`store`]: the [`store::Store`] trait, its SQLite (one node) and
//!   PostgreSQL (several nodes) backends, and the group committer for
//!   events ([`store::writer`]). Events get their per-session
//!   `seq` inside the writing transaction.
//! - [`bus`]: live fan-out of stored events, and the [`bus::Cursor`] that
//!   reads a stream gaplessly from the store and the bus.
//! - [`cli`]: the same binary as a terminal client of any node (`run`,
//!   `watch`, `console`, admin commands), over the WebSocket protocol and REST.
//! - [`link`]: the node's side of remote agent hosts (`GET /link`): linked
//!   hosts, and their agents as ordinary [`agent::Agent`]s in the registry;
//!   [`host`]: the host's side, `switchboard link`.
//! - [`project`]: Phase 1's projects and project tasks, whose agent runs
//!   are engine tasks ([`runtime::Runtime::execute`]).
//! - [`session`], [`presence`] (who is connected), [`event`] (stream events),
//!   [`protocol`] (every wire type), [`config`], [`error`], [`metrics`].
//!
//! [`serve`] runs a node on an already bound listener, so tests bind port 0.

#![forbid(unsafe_code)]

pub mod agent;
pub mod alloc;
pub mod app;
pub mod audit;
pub mod auth;
pub mod bus;
pub mod cli;
pub mod config;
pub mod device;
pub mod error;
pub mod event;
pub mod host;
pub mod http;
pub mod link;
pub mod metrics;
mod names;
pub mod presence;
pub mod project;
pub mod protocol;
pub mod rbac;
pub mod runtime;
pub mod session;
pub mod store;
pub mod task;
pub mod throttle;
pub mod ws;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpSocket};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::agent::AgentRegistry;
use crate::app::{AppState, Inner};
use crate::bus::Bus;
use crate::config::Config;
use crate::runtime::Runtime;
use crate::store::EventWriter;

/// Listen backlog. tokio's default of 128 makes 10k clients take 21 s to
/// connect instead of 0.5 s.
const BACKLOG: u32 = 4096;

/// Bind a listener with a large backlog.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// Run a node on `listener` until `shutdown` resolves, then shut down
/// gracefully: sockets get close 1001, a cluster node drains (queued tasks go
/// to other nodes, running ones get `[limits] drain_ms` to finish), in-flight
/// tasks are recorded as failed and every queued write is committed before
/// this returns.
pub async fn serve(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    let checkpoints =
        audit::checkpoint::CheckpointConfig::resolve(&config.file.audit, &config.database_url)?;
    let bus = Arc::new(Bus::new());
    let store = store::open(&config.database_url, bus.clone()).await?;
    let writer_stop = CancellationToken::new();
    let (writer, writer_done) = EventWriter::spawn(store.clone(), writer_stop.clone());
    let engine_stop = CancellationToken::new();
    let agents = AgentRegistry::from_config(&config.file).await;
    let runtime = Arc::new(Runtime::new(
        &config,
        store,
        bus,
        writer,
        agents,
        checkpoints.clone(),
        engine_stop.clone(),
    ));

    if let Some(token) = runtime.bootstrap(config.admin_token.as_deref()).await? {
        announce_admin(&config, addr, &token);
    }
    let stale = runtime.recover().await?;
    if stale > 0 {
        tracing::warn!(
            count = stale,
            "failed tasks left unfinished by the previous run"
        );
    }

    let checkpoint_stop = CancellationToken::new();
    let checkpointer = checkpoints.map(|cfg| {
        tokio::spawn(audit::checkpoint::run(
            runtime.store().clone(),
            cfg,
            checkpoint_stop.clone(),
        ))
    });
    // `[retention]`: nothing runs when none is configured.
    let prune_stop = CancellationToken::new();
    let pruner = tokio::spawn(runtime::retention::run(runtime.clone(), prune_stop.clone()));
    // With a shared store: heartbeats, claims, leases and the listener.
    let cluster_stop = CancellationToken::new();
    let cluster_done = tokio::spawn(crate::runtime::cluster::run(
        runtime.clone(),
        cluster_stop.clone(),
    ));

    let state = AppState::new(Inner {
        runtime: runtime.clone(),
        metrics: crate::metrics::handle(),
        shutdown: CancellationToken::new(),
        connections: TaskTracker::new(),
    });
    let app = http::router(state.clone());
    tracing::info!(node_id = %config.node_id, "listening on http://{addr}");
    let signal = state.shutdown.clone();
    let runtime_for_stop = runtime.clone();
    let drained = tokio::spawn(async move {
        shutdown.await;
        tracing::info!("shutting down");
        signal.cancel();
        runtime_for_stop
            .presence()
            .close_all(presence::CloseReason::Shutdown);
        // A cluster node hands its queued tasks over and lets running ones
        // finish, up to `[limits] drain_ms`; a lone node does not wait.
        runtime_for_stop.drain().await;
    });
    http::serve::run(listener, app, state.clone(), state.shutdown.clone()).await;

    // The listener is closed; sockets were told to close (1001).
    state.connections.close();
    state.connections.wait().await;
    let _ = drained.await;
    prune_stop.cancel();
    let _ = pruner.await;
    engine_stop.cancel();
    runtime.engine().wait().await;
    // Stopped command agents get SIGKILL after their grace period.
    agent::command::reapers().close();
    agent::command::reapers().wait().await;
    cluster_stop.cancel();
    let _ = cluster_done.await;
    writer_stop.cancel();
    let _ = writer_done.await;
    // Last, so that the final checkpoint covers everything written above.
    checkpoint_stop.cancel();
    if let Some(c) = checkpointer {
        let _ = c.await;
    }
    runtime.store().close().await;
    tracing::info!("stopped");
    Ok(())
}

/// Show a generated admin token once, and keep it next to the database.
fn announce_admin(config: &Config, addr: SocketAddr, token: &str) {
    let file = store::sqlite_path(&config.database_url)
        .map(|p| config::suffixed(std::path::Path::new(p), ".admin-token"));
    let saved = file
        .as_ref()
        .and_then(|f| write_secret(f, token).ok().map(|_| f.clone()));
    eprintln!("\nSwitchboard created the user `admin`.");
    eprintln!("  admin token: {token}");
    eprintln!("  dashboard:   http://{addr}/#token={token}");
    if let Some(f) = saved {
        eprintln!("  (saved to {} with mode 0600)", f.display());
    }
    eprintln!();
}

pub(crate) fn write_secret(path: &std::path::Path, secret: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    writeln!(f, "{secret}")
}
