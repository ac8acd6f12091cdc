//! Retention on SQLite: plans on read connections, removes in small jobs
//! on the writer thread (each its own short transaction of at most a
//! thousand rows or so, between two group commits, spanning as many
//! streams as fit), and gives space back with `PRAGMA incremental_vacuum`.
//!
//! **Space.** A new database file is created with `auto_vacuum =
//! INCREMENTAL` (set in `migrate` before the first table exists), so that
//! after a prune the freed pages can be returned to the file system a few
//! hundred at a time, each step a short job on the writer. A file created
//! before that keeps `auto_vacuum = NONE`: SQLite cannot switch it without
//! a full `VACUUM`, which rewrites the whole file under an exclusive lock,
//! so the node never does that by itself. Such a file stops growing
//! instead (new rows reuse the freed pages); to convert it, stop the node,
//! back it up (`switchboard backup` writes INCREMENTAL copies) and put the
//! copy in place (the README's Retention section says how).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, params};
use uuid::Uuid;

use super::SqliteStore;
use crate::error::Result;
use crate::event::rfc3339;
use crate::protocol::storage::PruneRun;
use crate::store::retention::{
    CutBatch, PruneLock, Retention, StreamCut, TERMINAL, plan_batch, run_from_json, run_json,
};

/// Pages given back per writer job (4 KiB each: 1 MiB).
const VACUUM_STEP: i64 = 256;
/// Pages given back per run at most; the rest waits for the next run.
const VACUUM_MAX: i64 = 65_536;

#[async_trait]
impl Retention for SqliteStore {
    async fn stream_floor(&self, session_id: Uuid) -> Result<i64> {
        let id = session_id.to_string();
        self.read(move |c| {
            let floor = c
                .prepare_cached(
                    "SELECT f.pruned_through FROM stream_floor f \
                     JOIN sessions s ON s.sid = f.sid WHERE s.session_id = ?",
                )?
                .query_row([id], |r| r.get(0))
                .optional()?;
            Ok(floor.unwrap_or(0))
        })
        .await
    }

    async fn prune_lock(&self) -> Result<Option<PruneLock>> {
        // One node per file: nobody to share with.
        Ok(Some(PruneLock::local()))
    }

    async fn prunable_streams(&self, horizon: DateTime<Utc>, limit: i64) -> Result<Vec<StreamCut>> {
        let horizon = rfc3339(&horizon);
        self.read(move |c| {
            let heads = heads(c, &horizon, limit)?;
            heads
                .into_iter()
                .map(|(id, sid, first_tid)| {
                    Ok(StreamCut {
                        session_id: id,
                        cut: cut_of(c, sid, first_tid, &horizon)?,
                    })
                })
                .collect()
        })
        .await
    }

    async fn cut_streams(&self, cuts: Vec<StreamCut>, max: i64) -> Result<CutBatch> {
        // One writer job, so one short transaction between two group
        // commits, however many streams the batch spans.
        self.write(move |w| {
            let c = &w.conn;
            let mut streams = Vec::with_capacity(cuts.len());
            for cut in &cuts {
                let sid: Option<i64> = c
                    .prepare_cached("SELECT sid FROM sessions WHERE session_id = ?")?
                    .query_row([cut.session_id.to_string()], |r| r.get(0))
                    .optional()?;
                let floor = match sid {
                    Some(sid) => c
                        .prepare_cached("SELECT pruned_through FROM stream_floor WHERE sid = ?")?
                        .query_row([sid], |r| r.get(0))
                        .optional()?
                        .unwrap_or(0),
                    None => cut.cut - 1, // the session is gone: nothing to cut
                };
                streams.push((sid.unwrap_or(0), floor, cut.cut));
            }
            let (steps, done) = plan_batch(&streams, max);
            let mut removed = 0;
            for step in steps {
                removed += c
                    .prepare_cached("DELETE FROM events WHERE sid = ? AND seq > ? AND seq <= ?")?
                    .execute(params![step.key, step.floor, step.through])?
                    as u64;
                c.prepare_cached(
                    "INSERT INTO stream_floor (sid, pruned_through) VALUES (?, ?) \
                     ON CONFLICT (sid) DO UPDATE SET \
                     pruned_through = MAX(pruned_through, excluded.pruned_through)",
                )?
                .execute(params![step.key, step.through])?;
            }
            Ok(CutBatch { removed, done })
        })
        .await
    }

    async fn prune_tasks(&self, horizon: DateTime<Utc>, max: i64) -> Result<u64> {
        let h = rfc3339(&horizon);
        let tids: Vec<i64> = self
            .read(move |c| {
                let sql = format!(
                    "SELECT st.tid FROM task_state st WHERE st.state IN {TERMINAL} \
                     AND st.updated_at < ? \
                     AND NOT EXISTS ({HAS_EVENTS} WHERE t.tid = st.tid \
                         AND e.seq <= st.last_seq) LIMIT ?"
                );
                let mut stmt = c.prepare_cached(&sql)?;
                let rows = stmt.query_map(params![h, max], |r| r.get(0))?;
                Ok(rows.collect::<rusqlite::Result<Vec<i64>>>()?)
            })
            .await?;
        if tids.is_empty() {
            return Ok(0);
        }
        let h = rfc3339(&horizon);
        self.write(move |w| {
            // Checked again by key: the plan was read a moment ago.
            let sql = format!(
                "DELETE FROM task_state WHERE tid = ? AND state IN {TERMINAL} AND updated_at < ? \
                 AND NOT EXISTS ({HAS_EVENTS} WHERE t.tid = task_state.tid \
                     AND e.seq <= task_state.last_seq)"
            );
            let mut removed = 0;
            for tid in tids {
                if w.conn.prepare_cached(&sql)?.execute(params![tid, h])? == 1 {
                    w.conn
                        .prepare_cached("DELETE FROM tasks WHERE tid = ?")?
                        .execute([tid])?;
                    removed += 1;
                }
            }
            Ok(removed)
        })
        .await
    }

    async fn idle_sessions(&self, horizon: DateTime<Utc>, limit: i64) -> Result<Vec<Uuid>> {
        let h = rfc3339(&horizon);
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT s.session_id FROM sessions s WHERE s.last_activity < ? \
                 AND NOT EXISTS (SELECT 1 FROM tasks t WHERE t.sid = s.sid) LIMIT ?",
            )?;
            let rows = stmt.query_map(params![h, limit], |r| r.get::<_, String>(0))?;
            let mut out = Vec::new();
            for id in rows {
                out.push(id?.parse().map_err(crate::store::corrupt)?);
            }
            Ok(out)
        })
        .await
    }

    async fn prune_sessions(&self, ids: Vec<Uuid>, horizon: DateTime<Utc>) -> Result<u64> {
        let h = rfc3339(&horizon);
        self.write(move |w| {
            let mut removed = 0;
            for id in ids {
                let sid: Option<i64> = w
                    .conn
                    .prepare_cached(
                        "DELETE FROM sessions WHERE session_id = ? AND last_activity < ? \
                         AND NOT EXISTS (SELECT 1 FROM tasks t WHERE t.sid = sessions.sid) \
                         RETURNING sid",
                    )?
                    .query_row(params![id.to_string(), h], |r| r.get(0))
                    .optional()?;
                if let Some(sid) = sid {
                    w.conn
                        .prepare_cached("DELETE FROM stream_floor WHERE sid = ?")?
                        .execute([sid])?;
                    w.drop_session(id);
                    removed += 1;
                }
            }
            Ok(removed)
        })
        .await
    }

    async fn audit_prune_point(&self, horizon: DateTime<Utc>) -> Result<Option<i64>> {
        let h = rfc3339(&horizon);
        self.read(move |c| {
            let row: Option<(i64, String, Option<String>)> = c
                .prepare_cached(
                    "SELECT c.seq, c.head, (SELECT a.hash FROM audit a WHERE a.seq = c.seq) \
                     FROM audit_checkpoints c WHERE c.at < ? ORDER BY c.seq DESC LIMIT 1",
                )?
                .query_row([h], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .optional()?;
            Ok(usable_checkpoint(row))
        })
        .await
    }

    async fn prune_audit(&self, before: i64, max: i64) -> Result<u64> {
        self.write(move |w| {
            let first: Option<i64> = w
                .conn
                .query_row("SELECT MIN(seq) FROM audit", [], |r| r.get(0))?;
            let Some(first) = first else { return Ok(0) };
            let end = before.min(first + max);
            super::audit_keys::unfile(&w.conn, end)?;
            let n = w
                .conn
                .prepare_cached("DELETE FROM audit WHERE seq >= ? AND seq < ?")?
                .execute(params![first, end])?;
            Ok(n as u64)
        })
        .await
    }

    async fn record_prune(&self, run: &PruneRun) -> Result<()> {
        let text = run_json(run)?;
        self.write(move |w| {
            w.conn
                .prepare_cached(
                    "INSERT INTO prune_runs (id, run) VALUES (1, ?) \
                     ON CONFLICT (id) DO UPDATE SET run = excluded.run",
                )?
                .execute([text])?;
            Ok(())
        })
        .await
    }

    async fn last_prune(&self) -> Result<Option<PruneRun>> {
        let text: Option<String> = self
            .read(|c| {
                Ok(c.prepare_cached("SELECT run FROM prune_runs WHERE id = 1")?
                    .query_row([], |r| r.get(0))
                    .optional()?)
            })
            .await?;
        text.as_deref().map(run_from_json).transpose()
    }

    async fn reclaim(&self) -> Result<u64> {
        let (mode, page_size) = self
            .read(|c| {
                let mode: i64 = c.query_row("PRAGMA auto_vacuum", [], |r| r.get(0))?;
                let size: i64 = c.query_row("PRAGMA page_size", [], |r| r.get(0))?;
                Ok((mode, size))
            })
            .await?;
        if mode != 2 {
            return Ok(0); // not INCREMENTAL: freed pages are reused instead
        }
        let mut freed = 0;
        while freed < VACUUM_MAX {
            let step = self
                .write(|w| {
                    let before: i64 = w
                        .conn
                        .query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
                    w.conn
                        .execute_batch(&format!("PRAGMA incremental_vacuum({VACUUM_STEP})"))?;
                    let after: i64 = w
                        .conn
                        .query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
                    Ok(before - after)
                })
                .await?;
            if step <= 0 {
                break;
            }
            freed += step;
        }
        Ok((freed * page_size) as u64)
    }
}

/// The condition that an event `e` is one of task `t`'s: in its session's
/// stream from its `first_seq` on (migration 0008: events have no index by
/// task). Callers add the upper bound they need.
macro_rules! events_of_t {
    () => {
        "e.sid = t.sid AND e.seq >= t.first_seq AND e.tid = t.tid"
    };
}

/// Whether a task (`t`, joined by the caller's `WHERE`) still has events;
/// the caller bounds them above by the task's `last_seq`.
const HAS_EVENTS: &str = concat!(
    "SELECT 1 FROM tasks t CROSS JOIN events e ON ",
    events_of_t!()
);

/// Streams whose oldest stored event belongs to a task that ended before
/// `horizon`: `(session_id, sid, that task's tid)`.
///
/// Driven from the sessions, one index probe each for its first event
/// (`CROSS JOIN` fixes that join order in SQLite): left to itself the
/// planner scanned the whole events table with a subquery per row, a
/// second per run at a million events, holding a read snapshot (and so
/// the WAL) all along. Measured in the README's Retention section.
fn heads(c: &rusqlite::Connection, horizon: &str, limit: i64) -> Result<Vec<(Uuid, i64, i64)>> {
    let sql = format!(
        "SELECT s.session_id, s.sid, f.tid FROM sessions s \
         CROSS JOIN events f ON f.id = \
             (SELECT e.id FROM events e WHERE e.sid = s.sid ORDER BY e.seq LIMIT 1) \
         CROSS JOIN task_state st ON st.tid = f.tid \
         WHERE st.state IN {TERMINAL} AND st.updated_at < ? LIMIT ?"
    );
    let mut stmt = c.prepare_cached(&sql)?;
    let rows = stmt.query_map(params![horizon, limit], |r| {
        Ok((r.get::<_, String>(0)?, r.get(1)?, r.get(2)?))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (id, sid, tid) = row?;
        out.push((id.parse().map_err(crate::store::corrupt)?, sid, tid));
    }
    Ok(out)
}

/// How far stream `sid` may be cut: the first event of its oldest task
/// that has not ended before `horizon`, else past its last event. Tasks
/// older than `first_tid` (the task of the oldest stored event) started
/// before everything stored, so they have no event left to hold the cut.
fn cut_of(c: &rusqlite::Connection, sid: i64, first_tid: i64, horizon: &str) -> Result<i64> {
    // A task's first stored event: its session's stream from the task's
    // `first_seq` on (migration 0008).
    let of_t = events_of_t!();
    let sql = format!(
        "SELECT COALESCE( \
           (SELECT MIN((SELECT e.seq FROM events e WHERE {of_t} ORDER BY e.seq LIMIT 1)) \
            FROM tasks t JOIN task_state st ON st.tid = t.tid \
            WHERE t.sid = ?1 AND t.tid >= ?2 \
            AND NOT (st.state IN {TERMINAL} AND st.updated_at < ?3)), \
           (SELECT MAX(seq) + 1 FROM events WHERE sid = ?1), 0)"
    );
    Ok(c.prepare_cached(&sql)?
        .query_row(params![sid, first_tid, horizon], |r| r.get(0))?)
}

/// The seq of a checkpoint row `(seq, head, stored hash at seq)` when its
/// head is what is stored there.
pub(crate) fn usable_checkpoint(row: Option<(i64, String, Option<String>)>) -> Option<i64> {
    match row {
        Some((seq, head, Some(hash))) if head == hash => Some(seq),
        Some((seq, _, _)) => {
            tracing::warn!(
                seq,
                "the newest audit checkpoint does not match the stored record: audit is not pruned"
            );
            None
        }
        None => None,
    }
}
