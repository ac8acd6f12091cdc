//! `GET /api/admin/storage`: what the node keeps and how much room it takes.
//!
//! **Row counts.** Counting every row of a big table is slow (`COUNT(*)`
//! reads a whole index), and these figures are also exported on every
//! `/metrics` scrape. So each kind is counted exactly while it is small
//! (up to [`EXACT_ROWS_UP_TO`] rows) and estimated above that, and
//! [`KindStorage::rows_estimated`] says which one a figure is:
//! - SQLite estimates the tables keyed by an increasing integer (events,
//!   tasks, sessions) by the span of their keys, `max - min + 1`: exact
//!   until rows are deleted from the middle, an upper bound after.
//! - PostgreSQL estimates from its statistics (`pg_stat_user_tables.n_live_tup`,
//!   or `pg_class.reltuples` when larger), which lag a little behind.
//! - The audit log is always exact: its `seq` is gapless by construction
//!   (the hash chain) and it is only ever trimmed from the front, so
//!   `max - min + 1` is its count.
//!
//! **Bytes.** PostgreSQL gives every table's size with its indexes and
//! TOAST (`pg_total_relation_size`). SQLite measures per-table sizes with
//! its `dbstat` table, which reads every page; it does so only for files up
//! to [`DBSTAT_MAX_BYTES`] and leaves `bytes` null above, where the file
//! and WAL sizes still say how big the whole database is.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The kinds of data reported.
pub const KINDS: [&str; 7] = [
    "events", "tasks", "sessions", "audit", "devices", "users", "tokens",
];

/// Kinds are counted exactly up to this many rows, estimated above.
pub const EXACT_ROWS_UP_TO: i64 = 100_000;

/// SQLite measures per-kind bytes (a walk over every page) only for
/// database files up to this size.
pub const DBSTAT_MAX_BYTES: i64 = 256 * 1024 * 1024;

/// `GET /api/admin/storage` reply.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StorageReport {
    /// `sqlite` or `postgres`.
    pub backend: String,
    /// Per kind of data: `events`, `tasks`, `sessions`, `audit`, `devices`,
    /// `users`, `tokens`.
    pub kinds: BTreeMap<String, KindStorage>,
    /// The whole database, in bytes. SQLite: the file plus its WAL;
    /// PostgreSQL: `pg_database_size`.
    pub database_bytes: i64,
    /// SQLite: the database file (`page_count * page_size`); null on PostgreSQL.
    pub file_bytes: Option<i64>,
    /// SQLite: the write-ahead log not yet checkpointed into the file; null
    /// on PostgreSQL.
    pub wal_bytes: Option<i64>,
    /// SQLite: pages of the file that are free for reuse (after deletions),
    /// in bytes; `VACUUM` would give them back. Null on PostgreSQL.
    pub free_bytes: Option<i64>,
    /// The last run of the pruner (data retention) on this node, or null
    /// when none ran since it started.
    pub last_prune: Option<PruneRun>,
    /// When these figures were taken.
    #[serde(with = "crate::protocol::micros")]
    pub measured_at: DateTime<Utc>,
}

/// The figures of one kind of data.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct KindStorage {
    /// How many rows (records) of this kind are kept.
    pub rows: i64,
    /// Whether `rows` is an estimate rather than a count. Tables up to
    /// 100,000 rows are counted; bigger ones are estimated (SQLite: the span
    /// of the table's increasing key, exact until rows are deleted from its
    /// middle; PostgreSQL: its statistics). The audit log is always exact.
    pub rows_estimated: bool,
    /// The space its tables and indexes take, in bytes; null when the
    /// backend cannot say cheaply.
    pub bytes: Option<i64>,
    /// The oldest item kept: the first stored event's `at`, the oldest
    /// task's and session's `created_at`, the first audit record's
    /// `timestamp`. Null when there is none, and for devices, users and
    /// tokens, which are kept until deleted.
    #[serde(with = "crate::protocol::micros_opt")]
    pub oldest: Option<DateTime<Utc>>,
}

/// What one run of the pruner did.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PruneRun {
    /// When it finished.
    #[serde(with = "crate::protocol::micros")]
    pub at: DateTime<Utc>,
    /// How long it took, in seconds.
    pub seconds: f64,
    /// Rows removed per kind configured in `[retention]`: `events`,
    /// `tasks`, `sessions`, `audit`.
    pub removed: BTreeMap<String, i64>,
    /// Bytes given back to the file system afterwards (SQLite's incremental
    /// vacuum; 0 on PostgreSQL, whose autovacuum makes the space reusable).
    pub reclaimed_bytes: i64,
}

impl StorageReport {
    /// A report of `backend` with every kind present and empty.
    pub fn empty(backend: &str, database_bytes: i64) -> Self {
        StorageReport {
            backend: backend.to_owned(),
            kinds: KINDS
                .iter()
                .map(|k| ((*k).to_owned(), KindStorage::default()))
                .collect(),
            database_bytes,
            file_bytes: None,
            wal_bytes: None,
            free_bytes: None,
            last_prune: None,
            measured_at: crate::event::now(),
        }
    }

    /// The figures of `kind` (one of [`KINDS`]), to fill in.
    pub fn kind(&mut self, kind: &str) -> &mut KindStorage {
        self.kinds.entry(kind.to_owned()).or_default()
    }
}
