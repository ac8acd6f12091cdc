//! The runtime: every operation of the node, behind every transport.
//!
//! Each method takes an authenticated [`Principal`], checks the permission
//! through [`Runtime::authorize`] (the one place where that happens), reads
//! or writes the store (with the audit record in the same transaction) and
//! lets the store publish. REST handlers, the WebSocket dispatcher and SSE
//! only decode, call one method here, and encode.

mod access;
mod admin;
pub mod audit;
mod catalog;
mod choose;
pub mod cluster;
pub mod devices;
mod drain;
mod executions;
mod failover;
pub mod hosts;
mod projects;
pub mod retention;
mod sessions;
mod storage;
mod submit;
mod tasks;
pub mod tokens;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::agent::AgentRegistry;
use crate::auth::Principal;
use crate::bus::Bus;
use crate::config::{Config, Limits};
use crate::error::{Error, Result};
use crate::presence::Presence;
use crate::session::{Session, SessionState};
use crate::store::{EventWriter, Store};
use crate::task::engine::Engine;

pub use submit::AckTo;
pub use tasks::TaskQuery;

/// The operations layer. Cheap to share behind an `Arc`.
pub struct Runtime {
    /// Where everything is kept.
    store: Arc<dyn Store>,
    /// Live fan-out on this node.
    bus: Arc<Bus>,
    /// Runs tasks.
    engine: Arc<Engine>,
    /// Who is connected.
    presence: Presence,
    /// Limits in force.
    limits: Limits,
    /// This node.
    node_id: String,
    /// The audit checkpoint key and file, for verification.
    checkpoints: Option<crate::audit::checkpoint::CheckpointConfig>,
    /// Device trust and abuse limits.
    security: crate::config::SecurityConfig,
    /// Rate limiters.
    throttle: crate::throttle::Throttle,
    /// Recently resolved tokens.
    tokens: tokens::TokenCache,
    /// Remote agent hosts linked to this node; their agents are in the
    /// engine's registry through it.
    hosts: Arc<crate::link::Hosts>,
    /// `[link]`: remote agent hosts.
    link: crate::config::LinkConfig,
    /// `[retention]` and the pruner's last run.
    pruner: retention::Pruner,
}

impl Runtime {
    /// Build the runtime over an opened store. `checkpoints` are the audit
    /// key and file resolved at start (for verification); `shutdown` stops
    /// the engine's drivers; the writer runs until `writer_stop` fires.
    pub fn new(
        config: &Config,
        store: Arc<dyn Store>,
        bus: Arc<Bus>,
        writer: EventWriter,
        agents: AgentRegistry,
        checkpoints: Option<crate::audit::checkpoint::CheckpointConfig>,
        shutdown: CancellationToken,
    ) -> Self {
        let grace = std::time::Duration::from_millis(config.file.link.grace_ms);
        let hosts = crate::link::Hosts::new(&config.node_id, grace);
        agents.attach(hosts.clone());
        let runtime = Runtime {
            hosts,
            link: config.file.link.clone(),
            engine: Engine::new(writer, Arc::new(agents), shutdown),
            store,
            bus,
            presence: Presence::new(),
            limits: config.limits().clone(),
            node_id: config.node_id.clone(),
            checkpoints,
            security: config.file.security.clone(),
            throttle: crate::throttle::Throttle::new(&config.file.security),
            tokens: tokens::TokenCache::default(),
            pruner: retention::Pruner::new(config.file.retention.clone()),
        };
        if let Some(cluster) = runtime.store.cluster() {
            cluster.claim_own_starts(&runtime.node_id, runtime.lease());
        }
        runtime
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The bus.
    pub fn bus(&self) -> &Arc<Bus> {
        &self.bus
    }

    /// The engine.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// Who is connected.
    pub fn presence(&self) -> &Presence {
        &self.presence
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Device trust and abuse limits.
    pub fn security(&self) -> &crate::config::SecurityConfig {
        &self.security
    }

    /// Rate limiters.
    pub fn throttle(&self) -> &crate::throttle::Throttle {
        &self.throttle
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// A session the principal may see, or `not_found`.
    async fn visible_session(&self, p: &Principal, id: Uuid) -> Result<Session> {
        match self.store.get_session(id).await? {
            Some(s) if p.can_see(&s.user_id) => Ok(s),
            _ => Err(Error::not_found(format!("session {id}"))),
        }
    }
}

/// Whether a session can take new tasks.
fn is_active(s: &Session) -> bool {
    s.state == SessionState::Active
}
