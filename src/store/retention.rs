//! What the pruner ([`crate::runtime::retention`]) asks of a store.
//!
//! Every removal is small (at most the `max` rows it is given, a few
//! thousand) and commits on its own, so that a prune never holds the
//! writer (SQLite's one writer thread, PostgreSQL's row locks) for long:
//! the pruner plans on read connections and removes in batches.
//!
//! A session stream is only ever cut from the front: what is kept of it is
//! one unbroken run of seqs, from `floor + 1` to its last seq, and the
//! floor is stored, so that a resume from before it is told so
//! (`earliest_seq`) rather than getting a silent gap.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::error::Result;

/// The terminal task states, as SQL.
pub const TERMINAL: &str = "('completed', 'failed', 'cancelled')";

/// How far one stream may be cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamCut {
    /// The stream.
    pub session_id: Uuid,
    /// Every event with a smaller seq may go: all of them belong to tasks
    /// that ended before the horizon. (The first event of a task that has
    /// not, or the stream's last seq + 1.)
    pub cut: i64,
}

/// Held while this node prunes; on a shared store, other nodes skip their
/// run meanwhile. Dropping it lets them go on.
pub struct PruneLock(#[expect(dead_code, reason = "held for its Drop")] Box<dyn Send + Sync>);

impl PruneLock {
    /// A lock that guards nothing (a store only one node uses).
    pub fn local() -> Self {
        PruneLock(Box::new(()))
    }

    /// A lock that holds `guard` until dropped.
    pub fn holding(guard: impl Send + Sync + 'static) -> Self {
        PruneLock(Box::new(guard))
    }
}

/// Removal of old data, in small batches. Kept apart from
/// [`crate::store::Store`] so that each backend implements it in a file of
/// its own (`sqlite/prune.rs`, `postgres/prune.rs`).
#[async_trait]
pub trait Retention: Send + Sync + 'static {
    /// The last seq removed from a session's stream (0: none ever was).
    /// The oldest seq still stored is this + 1.
    async fn stream_floor(&self, session_id: Uuid) -> Result<i64>;

    /// Become the one pruner of the store for a run; `None` when another
    /// node is pruning right now.
    async fn prune_lock(&self) -> Result<Option<PruneLock>>;

    /// Up to `limit` streams whose oldest stored event belongs to a task
    /// that ended before `horizon`, with how far each may be cut.
    async fn prunable_streams(&self, horizon: DateTime<Utc>, limit: i64) -> Result<Vec<StreamCut>>;

    /// Remove the oldest events of a stream below `cut.cut`, at most `max`,
    /// in one transaction that also moves the stream's floor. How many
    /// were removed (0: nothing left below the cut).
    async fn cut_stream(&self, cut: StreamCut, max: i64) -> Result<u64>;

    /// Remove up to `max` finished tasks that ended before `horizon` and
    /// have no event left. How many were removed.
    async fn prune_tasks(&self, horizon: DateTime<Utc>, max: i64) -> Result<u64>;

    /// Sessions (ended or not) inactive since before `horizon` that have no
    /// task left: up to `limit` of them.
    async fn idle_sessions(&self, horizon: DateTime<Utc>, limit: i64) -> Result<Vec<Uuid>>;

    /// Remove these sessions, each only if it is still inactive since
    /// before `horizon` and has no task. How many were removed.
    async fn prune_sessions(&self, ids: Vec<Uuid>, horizon: DateTime<Utc>) -> Result<u64>;

    /// The seq of the newest signed checkpoint taken before `horizon`
    /// whose head is the stored hash of the record it names: audit records
    /// before it may be removed. `None` when there is none.
    async fn audit_prune_point(&self, horizon: DateTime<Utc>) -> Result<Option<i64>>;

    /// Remove the oldest audit records with a seq below `before`, at most
    /// `max`. How many were removed.
    async fn prune_audit(&self, before: i64, max: i64) -> Result<u64>;

    /// Give the space of removed rows back to the file system where the
    /// backend does not do so by itself (SQLite's incremental vacuum, in
    /// small steps). How many bytes were given back.
    async fn reclaim(&self) -> Result<u64> {
        Ok(0)
    }
}
