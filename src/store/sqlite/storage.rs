//! Storage figures of the SQLite store (`GET /api/admin/storage`, the
//! `switchboard_storage_*` metrics). Which are estimates, and why, is
//! written in [`crate::protocol::storage`].

use async_trait::async_trait;
use rusqlite::Connection;

use super::SqliteStore;
use super::rows::{from_micros, one, time};
use crate::error::Result;
use crate::protocol::storage::{DBSTAT_MAX_BYTES, EXACT_ROWS_UP_TO, StorageReport};
use crate::store::StorageStats;

/// The tables holding each kind (its first table is the one counted).
const TABLES: [(&str, &[&str]); 7] = [
    ("events", &["events"]),
    ("tasks", &["tasks", "task_state"]),
    ("sessions", &["sessions"]),
    ("audit", &["audit", "audit_checkpoints"]),
    ("devices", &["devices", "device_nonces"]),
    ("users", &["users"]),
    ("tokens", &["tokens"]),
];

/// The kinds keyed by an increasing integer, with that key: estimated by
/// its span once they are big.
const KEYED: [(&str, &str); 3] = [("events", "id"), ("tasks", "tid"), ("sessions", "sid")];

#[async_trait]
impl StorageStats for SqliteStore {
    async fn storage(&self) -> Result<StorageReport> {
        let mut report = self.read(measure).await?;
        // What is in the WAL and not yet checkpointed into the file.
        let wal = std::fs::metadata(format!("{}-wal", self.path)).map_or(0, |m| m.len() as i64);
        report.wal_bytes = Some(wal);
        report.database_bytes += wal;
        Ok(report)
    }
}

/// Every figure but the WAL's size, in one read transaction (one snapshot).
fn measure(c: &Connection) -> Result<StorageReport> {
    let tx = c.unchecked_transaction()?;
    let pragma = |name: &str| -> Result<i64> {
        Ok(tx.query_row(&format!("PRAGMA {name}"), [], |r| r.get(0))?)
    };
    let page = pragma("page_size")?;
    let file = pragma("page_count")? * page;
    let mut report = StorageReport::empty("sqlite", file);
    report.file_bytes = Some(file);
    report.free_bytes = Some(pragma("freelist_count")? * page);

    for (kind, key) in KEYED {
        let (rows, estimated) = keyed_rows(&tx, kind, key)?;
        let k = report.kind(kind);
        k.rows = rows;
        k.rows_estimated = estimated;
    }
    // Gapless and only ever trimmed from the front: the span is the count.
    report.kind("audit").rows = span(&tx, "audit", "seq")?;
    for kind in ["devices", "users", "tokens"] {
        report.kind(kind).rows = count(&tx, kind)?;
    }

    report.kind("events").oldest =
        one(&tx, "SELECT at FROM events ORDER BY id LIMIT 1", [], |r| {
            from_micros(r.get(0)?)
        })?;
    for (kind, sql) in [
        ("tasks", "SELECT created_at FROM tasks ORDER BY tid LIMIT 1"),
        (
            "sessions",
            "SELECT created_at FROM sessions ORDER BY sid LIMIT 1",
        ),
        ("audit", "SELECT timestamp FROM audit ORDER BY seq LIMIT 1"),
    ] {
        report.kind(kind).oldest = one(&tx, sql, [], |r| time(&r.get::<_, String>(0)?))?;
    }

    if file <= DBSTAT_MAX_BYTES {
        // Without the dbstat table (a SQLite built without it) the
        // per-kind bytes stay null; the file's size is still known.
        if let Ok(sizes) = table_bytes(&tx) {
            for (kind, tables) in TABLES {
                let bytes = tables
                    .iter()
                    .filter_map(|t| sizes.iter().find(|(n, _)| n == t).map(|(_, b)| *b))
                    .sum();
                report.kind(kind).bytes = Some(bytes);
            }
        }
    }
    Ok(report)
}

/// `max(key) - min(key) + 1` of a table (0 when empty). Two subqueries, so
/// that each reads one end of the key's B-tree.
fn span(c: &Connection, table: &str, key: &str) -> Result<i64> {
    let (lo, hi): (Option<i64>, Option<i64>) = c.query_row(
        &format!("SELECT (SELECT MIN({key}) FROM {table}), (SELECT MAX({key}) FROM {table})"),
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    Ok(match (lo, hi) {
        (Some(lo), Some(hi)) => hi - lo + 1,
        _ => 0,
    })
}

/// An exact count while the key span is small, the span above.
fn keyed_rows(c: &Connection, table: &str, key: &str) -> Result<(i64, bool)> {
    let span = span(c, table, key)?;
    if span <= EXACT_ROWS_UP_TO {
        Ok((count(c, table)?, false))
    } else {
        Ok((span, true))
    }
}

fn count(c: &Connection, table: &str) -> Result<i64> {
    Ok(c.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))?)
}

/// Bytes per table, its indexes included, from `dbstat` (reads every page).
fn table_bytes(c: &Connection) -> Result<Vec<(String, i64)>> {
    let mut stmt = c.prepare(
        "SELECT s.tbl_name, SUM(d.pgsize) FROM dbstat('main', 1) AS d \
         JOIN sqlite_schema AS s ON s.name = d.name GROUP BY s.tbl_name",
    )?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}
