//! The audit log's lookups, filed a chunk at a time off the commit path.
//!
//! A record is found by session, user or type through `audit_keys`, one
//! B-tree of `bucket, ('s:' | 'u:' | 't:') || value, seq` entries, where
//! the bucket is `seq >> 10`: keys filed together land near the right edge
//! in key order, a few pages, where without the bucket it would land on a
//! page per session and user. A lookup visits the buckets newest first.
//! The writer files the keys of the oldest unfiled records, [`CHUNK`] at
//! a time, inside an ordinary commit, whenever that many have gathered
//! (or [`EVERY`] has passed), and moves `audit_indexed.through` with them;
//! more at once only when the unfiled tail would pass [`MAX_TAIL`]. Filing
//! costs about 7 µs a record (three keys), so it is spread thin: filing a
//! second's 3,000 records in one commit held that commit up for 20 ms,
//! which was the submit run's p99. So a commit that writes audit records
//! touches the audit table's right edge and, now and then, a few pages of
//! keys, where four index B-trees used to take a page each. A query reads
//! the keys up to the mark and scans the records after it (at most
//! [`MAX_TAIL`] and a chunk) by their integer key.

use std::time::{Duration, Instant};

use rusqlite::{Connection, params};

use super::rows::{self, AUDIT_COLUMNS, all};
use super::writer::Writer;
use crate::audit::AuditRecord;
use crate::error::Result;
use crate::store::AuditQuery;
use crate::store::query::{self, Arg, Dialect, Filtered};

/// Records filed at a time.
const CHUNK: i64 = 64;

/// The most records left unfiled: past it, a commit files all but these.
pub const MAX_TAIL: i64 = 4096;

/// How long fewer than a chunk may wait.
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
    /// File the keys of the oldest records after the mark, inside the open
    /// transaction, when a chunk of them has gathered or it is time.
    pub(super) fn file_audit_keys(&mut self) -> Result<()> {
        let Some(head) = self.audit_head() else {
            return Ok(());
        };
        let through = match self.mark.through {
            Some(t) => t,
            None => read_mark(&self.conn)?,
        };
        self.mark.through = Some(through);
        let due = self.mark.filed_at.is_none_or(|at| at.elapsed() >= EVERY);
        let lag = head - through;
        if lag <= 0 || (lag < CHUNK && !due) {
            return Ok(());
        }
        let to = through + lag.min(CHUNK.max(lag - MAX_TAIL));
        self.conn
            .prepare_cached(&format!(
                "INSERT OR IGNORE INTO audit_keys (bucket, key, seq) \
                 SELECT * FROM ({KEYS}) ORDER BY 1, 2, 3"
            ))?
            .execute(params![through, to])?;
        self.conn
            .prepare_cached("UPDATE audit_indexed SET through = ? WHERE id = 1")?
            .execute([to])?;
        self.mark = Mark {
            through: Some(to),
            filed_at: Some(Instant::now()),
        };
        Ok(())
    }
}

/// The seq up to which every record has its keys filed.
fn read_mark(c: &Connection) -> Result<i64> {
    let sql = "SELECT through FROM audit_indexed WHERE id = 1";
    Ok(c.prepare_cached(sql)?.query_row([], |r| r.get(0))?)
}

/// How many bits of a record's seq its bucket drops.
const BUCKET_BITS: u32 = 10;

/// The lookup keys (bucket, key, seq) of the records with `?1 < seq <= ?2`.
const KEYS: &str = "SELECT seq >> 10, 's:' || session_id, seq FROM audit \
       WHERE seq > ?1 AND seq <= ?2 AND session_id IS NOT NULL \
     UNION ALL SELECT seq >> 10, 'u:' || user_id, seq FROM audit \
       WHERE seq > ?1 AND seq <= ?2 AND user_id IS NOT NULL \
     UNION ALL SELECT seq >> 10, 't:' || event_type, seq FROM audit \
       WHERE seq > ?1 AND seq <= ?2";

/// Remove the keys of every record before `end` (they are being pruned,
/// from the front): whole buckets by range, then the rest of `end`'s.
pub(super) fn unfile(conn: &Connection, end: i64) -> Result<()> {
    let bucket = end >> BUCKET_BITS;
    conn.prepare_cached("DELETE FROM audit_keys WHERE bucket < ?")?
        .execute([bucket])?;
    conn.prepare_cached("DELETE FROM audit_keys WHERE bucket = ? AND seq < ?")?
        .execute([bucket, end])?;
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
    let through = read_mark(c)?;
    let mut tail = Filtered::new(Dialect::Sqlite, rows::AUDIT);
    tail.and("seq > ?", Some(Arg::Int(through)));
    let mut found = run(c, ordered(tail, f, "seq", f.limit))?;
    let upper = f.before_seq.map_or(through, |b| through.min(b - 1));
    let first: Option<i64> = c.query_row("SELECT MIN(bucket) FROM audit_keys", [], |r| r.get(0))?;
    let Some(first) = first else {
        return Ok(found);
    };
    let keyed = select(
        "(SELECT bucket AS kb, key AS kkey, seq AS kseq FROM audit_keys) JOIN audit ON seq = kseq",
    );
    let mut bucket = upper >> BUCKET_BITS;
    while found.len() < f.limit as usize && bucket >= first {
        let mut q = Filtered::new(Dialect::Sqlite, &keyed);
        q.and("kb = ?", Some(Arg::Int(bucket)))
            .and("kkey = ?", Some(Arg::Text(key.clone())))
            .and("kseq <= ?", Some(Arg::Int(upper)));
        let left = f.limit - found.len() as i64;
        found.extend(run(c, ordered(q, f, "kseq", left))?);
        bucket -= 1;
    }
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

    /// Filing orders keys by bucket and key; unfiling removes exactly
    /// the keys of the records before its end, whole buckets and part of
    /// one.
    #[test]
    fn unfile_removes_exactly_the_keys_before_its_end() {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch(
            "CREATE TABLE audit (seq INTEGER PRIMARY KEY, event_type TEXT NOT NULL, \
               user_id TEXT, session_id TEXT); \
             CREATE TABLE audit_keys (bucket INTEGER NOT NULL, key TEXT NOT NULL, \
               seq INTEGER NOT NULL, PRIMARY KEY (bucket, key, seq)) WITHOUT ROWID; \
             INSERT INTO audit VALUES (1, 'a', 'u', 's'), (2, 'a', NULL, 's'), \
               (1025, 'b', 'u', NULL), (1026, 'b', 'v', 't'), (1027, 'a', NULL, NULL);",
        )
        .unwrap();
        assert!(KEYS.contains(&format!("seq >> {BUCKET_BITS},")));
        let file = format!("INSERT INTO audit_keys (bucket, key, seq) {KEYS}");
        assert_eq!(c.execute(&file, params![0, 2000]).unwrap(), 11);
        unfile(&c, 1026).unwrap();
        let left: Vec<(i64, String, i64)> = c
            .prepare("SELECT * FROM audit_keys")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        let left: Vec<_> = left.iter().map(|(b, k, s)| (*b, k.as_str(), *s)).collect();
        assert_eq!(
            left,
            [
                (1, "s:t", 1026),
                (1, "t:a", 1027),
                (1, "t:b", 1026),
                (1, "u:v", 1026)
            ]
        );
    }
}
