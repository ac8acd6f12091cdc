//! The audit log's lookups, filed in batches off the commit path.
//!
//! A record is found by session, user or type through `audit_keys`, one
//! B-tree of `('s:' | 'u:' | 't:') || value, seq` entries. The writer files
//! the keys of the records written since the last batch when [`BATCH`] of
//! them have gathered or [`EVERY`] has passed, inside an ordinary commit,
//! and moves `audit_indexed.through` with them. So a commit that writes
//! audit records touches the audit table's right edge and nothing else,
//! where four index B-trees used to take a page each. A query reads the
//! keys up to the mark and scans the records after it, at most a batch
//! and a commit's worth, by their integer key.

use std::time::{Duration, Instant};

use rusqlite::{Connection, params};

use super::rows::{self, AUDIT_COLUMNS, all};
use super::writer::Writer;
use crate::audit::AuditRecord;
use crate::error::Result;
use crate::store::AuditQuery;
use crate::store::query::{self, Arg, Dialect, Filtered};

/// Records that make a batch of keys.
pub const BATCH: i64 = 4096;

/// How long a smaller batch may wait.
const EVERY: Duration = Duration::from_secs(1);

/// How far the keys go, and since when.
#[derive(Debug, Default)]
pub(super) struct Mark {
    /// Every record up to this seq has its keys filed; `None` until read.
    through: Option<i64>,
    filed_at: Option<Instant>,
}

impl Mark {
    /// Read the mark again from the database (a transaction failed).
    pub(super) fn forget(&mut self) {
        self.through = None;
    }
}

impl Writer {
    /// File the keys of the records after the mark, inside the open
    /// transaction, when a batch of them has gathered or it is time.
    pub(super) fn file_audit_keys(&mut self) -> Result<()> {
        let Some(head) = self.audit_head() else {
            return Ok(());
        };
        let through = match self.mark.through {
            Some(t) => t,
            None => {
                self.conn
                    .query_row("SELECT through FROM audit_indexed WHERE id = 1", [], |r| {
                        r.get(0)
                    })?
            }
        };
        self.mark.through = Some(through);
        let due = self.mark.filed_at.is_none_or(|at| at.elapsed() >= EVERY);
        if head <= through || (head - through < BATCH && !due) {
            return Ok(());
        }
        self.conn
            .prepare_cached(&format!(
                "INSERT OR IGNORE INTO audit_keys (key, seq) {KEYS}"
            ))?
            .execute(params![through, head])?;
        self.conn
            .prepare_cached("UPDATE audit_indexed SET through = ? WHERE id = 1")?
            .execute([head])?;
        self.mark = Mark {
            through: Some(head),
            filed_at: Some(Instant::now()),
        };
        Ok(())
    }
}

/// The lookup keys of the records with `?1 < seq <= ?2`.
const KEYS: &str = "SELECT 's:' || session_id, seq FROM audit \
       WHERE seq > ?1 AND seq <= ?2 AND session_id IS NOT NULL \
     UNION ALL SELECT 'u:' || user_id, seq FROM audit \
       WHERE seq > ?1 AND seq <= ?2 AND user_id IS NOT NULL \
     UNION ALL SELECT 't:' || event_type, seq FROM audit WHERE seq > ?1 AND seq <= ?2";

/// Remove the keys of the records with `first <= seq < end` (before they
/// are pruned), one by one: SQLite would scan the whole key table for a
/// `DELETE ... WHERE (key, seq) IN (...)`.
pub(super) fn unfile(conn: &Connection, first: i64, end: i64) -> Result<()> {
    let keys = conn
        .prepare_cached(KEYS)?
        .query_map(params![first - 1, end - 1], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut delete = conn.prepare_cached("DELETE FROM audit_keys WHERE key = ? AND seq = ?")?;
    for (key, seq) in keys {
        delete.execute(params![key, seq])?;
    }
    Ok(())
}

/// The key that finds the fewest records for `f`: its session, else its
/// user, else its type.
fn lookup(f: &AuditQuery) -> Option<String> {
    let session = f.session_id.map(|s| format!("s:{s}"));
    let user = || f.user_id.as_ref().map(|u| format!("u:{u}"));
    let kind = || f.event_type.as_ref().map(|t| format!("t:{t}"));
    session.or_else(user).or_else(kind)
}

/// The records matching `f`, newest first: those after the mark by a scan
/// of the table's tail, then, while the page is not full, the older ones
/// through their key.
pub(super) fn query(c: &Connection, f: &AuditQuery) -> Result<Vec<AuditRecord>> {
    let Some(key) = lookup(f) else {
        return run(c, query::audit(Dialect::Sqlite, rows::AUDIT, f));
    };
    let through: i64 = c.query_row("SELECT through FROM audit_indexed WHERE id = 1", [], |r| {
        r.get(0)
    })?;
    let mut tail = Filtered::new(Dialect::Sqlite, &select("audit"));
    tail.and("seq > ?", Some(Arg::Int(through)));
    let mut found = run(c, ordered(tail, f, "seq", f.limit))?;
    let left = f.limit - found.len() as i64;
    if left <= 0 {
        return Ok(found);
    }
    let upper = f.before_seq.map_or(through, |b| through.min(b - 1));
    let mut keyed = Filtered::new(
        Dialect::Sqlite,
        &select("(SELECT key AS kkey, seq AS kseq FROM audit_keys) JOIN audit ON seq = kseq"),
    );
    keyed
        .and("kkey = ?", Some(Arg::Text(key)))
        .and("kseq <= ?", Some(Arg::Int(upper)));
    found.extend(run(c, ordered(keyed, f, "kseq", left))?);
    Ok(found)
}

/// The audit columns `FROM` `from`.
fn select(from: &str) -> String {
    format!("SELECT {AUDIT_COLUMNS} FROM {from}")
}

/// `q` with the filters of `f`, newest (by `seq`, a column equal to the
/// record's) first, at most `limit`.
fn ordered(mut q: Filtered, f: &AuditQuery, seq: &str, limit: i64) -> Filtered {
    let order = format!(" ORDER BY {seq} DESC LIMIT ?");
    query::audit_filters(&mut q, f).push(&order, Some(Arg::Int(limit)));
    q
}

fn run(c: &Connection, q: Filtered) -> Result<Vec<AuditRecord>> {
    let args = rows::values(q.args);
    all(c, &q.sql, rusqlite::params_from_iter(args), rows::audit)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Filing and unfiling name the same keys: after records are unfiled,
    /// only the keys of the others are left.
    #[test]
    fn unfile_removes_exactly_the_keys_of_its_records() {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch(
            "CREATE TABLE audit (seq INTEGER PRIMARY KEY, event_type TEXT NOT NULL, \
               user_id TEXT, session_id TEXT); \
             CREATE TABLE audit_keys (key TEXT NOT NULL, seq INTEGER NOT NULL, \
               PRIMARY KEY (key, seq)) WITHOUT ROWID; \
             INSERT INTO audit VALUES (1, 'a', 'u', 's'), (2, 'a', NULL, 's'), \
               (3, 'b', 'u', NULL), (4, 'b', 'v', 't');",
        )
        .unwrap();
        let file = format!("INSERT INTO audit_keys (key, seq) {KEYS}");
        assert_eq!(c.execute(&file, params![0, 4]).unwrap(), 10);
        unfile(&c, 1, 3).unwrap();
        let left: Vec<(String, i64)> = c
            .prepare("SELECT key, seq FROM audit_keys ORDER BY seq, key")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        let left: Vec<_> = left.iter().map(|(k, s)| (k.as_str(), *s)).collect();
        assert_eq!(
            left,
            [("t:b", 3), ("u:u", 3), ("s:t", 4), ("t:b", 4), ("u:v", 4)]
        );
    }
}
