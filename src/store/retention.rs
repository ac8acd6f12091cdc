//! What the pruner ([`crate::runtime::retention`]) asks of a store.
//!
//! Every removal is small (at most the `max` rows it is given, about a
//! thousand) and commits on its own, so that a prune never holds the
//! writer (SQLite's one writer thread, PostgreSQL's row locks) for long:
//! the pruner plans on read connections and removes in batches. A batch of
//! stream cuts spans as many streams as fit in its rows ([`plan_batch`]),
//! so that thousands of small finished streams go in a few transactions,
//! not one each.
//!
//! A session stream is only ever cut from the front: what is kept of it is
//! one unbroken run of seqs, from `floor + 1` to its last seq, and the
//! floor is stored, so that a resume from before it is told so
//! (`earliest_seq`) rather than getting a silent gap.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::error::Result;
use crate::protocol::storage::PruneRun;

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

/// What one [`Retention::cut_streams`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CutBatch {
    /// Events removed.
    pub removed: u64,
    /// How many of the cuts given, from the first, are now reached: the
    /// next batch starts with the one after them.
    pub done: usize,
}

/// One stream's part of a batch: remove its seqs `floor + 1 ..= through`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CutStep<K> {
    /// The stream, as the backend names it.
    pub key: K,
    /// The last seq removed before this batch.
    pub floor: i64,
    /// The last seq this batch removes (the new floor).
    pub through: i64,
}

/// Plan one batch of stream cuts: `streams` are `(key, floor, cut)` in the
/// plan's order, and each is taken from its floor up to `cut - 1`, until
/// `max` rows are taken (the last stream taken may be cut only part of the
/// way). Returns the steps of the streams that move, and how many streams
/// from the first are reached (those already there count too). Since a
/// stream is contiguous from `floor + 1`, `through - floor` is exactly the
/// number of rows a step removes.
pub fn plan_batch<K: Copy + PartialEq>(
    streams: &[(K, i64, i64)],
    max: i64,
) -> (Vec<CutStep<K>>, usize) {
    let mut steps: Vec<CutStep<K>> = Vec::new();
    let mut taken = 0;
    let mut done = 0;
    for &(key, floor, cut) in streams {
        let want = cut - 1;
        if want <= floor || steps.iter().any(|s| s.key == key) {
            done += 1; // already there (or planned twice: once is enough)
            continue;
        }
        let room = max - taken;
        if room <= 0 {
            break;
        }
        let through = want.min(floor + room);
        steps.push(CutStep {
            key,
            floor,
            through,
        });
        taken += through - floor;
        if through < want {
            break;
        }
        done += 1;
    }
    (steps, done)
}

/// A run as stored in `prune_runs.run`.
pub(crate) fn run_json(run: &PruneRun) -> Result<String> {
    serde_json::to_string(run).map_err(crate::error::Error::internal)
}

/// A run read back from `prune_runs.run`.
pub(crate) fn run_from_json(text: &str) -> Result<PruneRun> {
    serde_json::from_str(text).map_err(crate::store::corrupt)
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

    /// Cut `cuts` in order, each stream from its floor towards its cut,
    /// removing at most `max` events in all, in one transaction that also
    /// moves every floor it passes ([`plan_batch`] decides how far).
    async fn cut_streams(&self, cuts: Vec<StreamCut>, max: i64) -> Result<CutBatch>;

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

    /// Keep `run` as the last run of the pruner (one row, replaced each
    /// time), so that it is still reported after a restart.
    async fn record_prune(&self, run: &PruneRun) -> Result<()>;

    /// The last run recorded (by any node of a shared store), if any.
    async fn last_prune(&self) -> Result<Option<PruneRun>>;

    /// Give the space of removed rows back to the file system where the
    /// backend does not do so by itself (SQLite's incremental vacuum, in
    /// small steps). How many bytes were given back.
    async fn reclaim(&self) -> Result<u64> {
        Ok(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A batch takes whole streams while they fit, then part of the next,
    /// and counts as done every stream already at its cut.
    #[test]
    fn a_batch_spans_streams_up_to_its_rows() {
        let streams = [(1, 0, 4), (2, 5, 6), (3, 10, 20), (4, 0, 3)];
        let (steps, done) = plan_batch(&streams, 6);
        let step = |key, floor, through| CutStep {
            key,
            floor,
            through,
        };
        assert_eq!(steps, vec![step(1, 0, 3), step(3, 10, 13)]);
        assert_eq!(
            done, 2,
            "stream 1 is cut, 2 was already there, 3 is not done"
        );
        // The next batch starts at stream 3, from its new floor.
        let (steps, done) = plan_batch(&[(3, 13, 20), (4, 0, 3)], 8);
        assert_eq!(steps, vec![step(3, 13, 19), step(4, 0, 2)]);
        assert_eq!(done, 2);
        // Nothing to do: every stream is done, no step.
        assert_eq!(plan_batch(&[(1, 3, 4), (2, 9, 2)], 6), (vec![], 2));
        // Exactly full: the stream that fills it is done, the next is not.
        let (steps, done) = plan_batch(&[(1, 0, 7), (2, 0, 2)], 6);
        assert_eq!((steps.len(), done), (1, 1));
        // A stream planned twice is cut once.
        let (steps, done) = plan_batch(&[(1, 0, 3), (1, 0, 3)], 10);
        assert_eq!((steps, done), (vec![step(1, 0, 2)], 2));
    }
}
