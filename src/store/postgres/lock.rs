//! The first statement of an append batch: take its row locks in the one
//! order every writer of every node uses (sessions by id, then the tasks it
//! changes by id, then its new task rows, then the audit chain's head) and
//! insert its new tasks, reading what it needs under those locks. One round
//! trip instead of four.

use std::collections::HashSet;

use sqlx::{Postgres, Row, Transaction};
use uuid::Uuid;

use super::plan::{Locked, SessionRow};
use crate::error::Result;
use crate::store::corrupt;
use crate::task::Task;

/// What the batch's locking statement returns.
#[derive(Debug, Default)]
pub(super) struct Held {
    /// The sessions and tasks read under their locks.
    pub locked: Locked,
    /// The new tasks the database took (the others' id or idempotency key
    /// is taken, or their session does not take them).
    pub inserted: Vec<Uuid>,
    /// The audit chain's head (seq, hash), when locked.
    pub head: Option<(i64, String)>,
}

/// What to lock and insert.
pub(super) struct Request<'a> {
    /// The batch's sessions, sorted.
    pub sessions: &'a [Uuid],
    /// The existing tasks it changes, sorted.
    pub tasks: &'a [Uuid],
    /// Its new tasks.
    pub new: &'a [&'a Task],
    /// Per new task, the node that claims it (it starts there now).
    pub claims: Vec<Option<&'a str>>,
    /// The claim's lease, in seconds.
    pub lease: f64,
    /// Whether it chains audit records (then the chain's head is locked).
    pub audit: bool,
}

/// Lock, insert and read, in one statement.
pub(super) async fn lock(tx: &mut Transaction<'_, Postgres>, r: Request<'_>) -> Result<Held> {
    let text = |v: &serde_json::Value| v.to_string();
    let t = r.new;
    let col = |f: fn(&Task) -> Uuid| t.iter().map(|t| f(t)).collect::<Vec<_>>();
    let rows = sqlx::query(LOCK)
        .bind(r.sessions)
        .bind(r.tasks)
        .bind(r.audit)
        .bind(r.lease)
        .bind(col(|t| t.task_id))
        .bind(col(|t| t.execution_uuid))
        .bind(col(|t| t.session_id))
        .bind(t.iter().map(|t| t.user_id.as_str()).collect::<Vec<_>>())
        .bind(t.iter().map(|t| t.agent_type.as_str()).collect::<Vec<_>>())
        .bind(t.iter().map(|t| t.prompt.as_str()).collect::<Vec<_>>())
        .bind(t.iter().map(|t| text(&t.context)).collect::<Vec<_>>())
        .bind(t.iter().map(|t| text(&t.params)).collect::<Vec<_>>())
        .bind(t.iter().map(|t| t.state.as_str()).collect::<Vec<_>>())
        .bind(t.iter().map(|t| t.result.as_deref()).collect::<Vec<_>>())
        .bind(t.iter().map(|t| t.error.as_deref()).collect::<Vec<_>>())
        .bind(t.iter().map(|t| text(&t.metadata)).collect::<Vec<_>>())
        .bind(
            t.iter()
                .map(|t| t.idempotency_key.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind(t.iter().map(|t| t.created_at).collect::<Vec<_>>())
        .bind(t.iter().map(|t| t.updated_at).collect::<Vec<_>>())
        .bind(t.iter().map(|t| t.execution_time).collect::<Vec<_>>())
        .bind(&r.claims)
        .fetch_all(&mut **tx)
        .await?;
    let mut held = Held::default();
    for row in rows {
        let id: Option<Uuid> = row.try_get("id")?;
        let state: Option<String> = row.try_get("state")?;
        match row.try_get::<i32, _>("k")? {
            0 => {
                let session = SessionRow {
                    user_id: row
                        .try_get::<Option<String>, _>("user_id")?
                        .unwrap_or_default(),
                    active: state.as_deref() == Some("active"),
                    last_seq: row.try_get::<Option<i64>, _>("n")?.unwrap_or(0),
                };
                held.locked
                    .sessions
                    .insert(id.ok_or_else(|| corrupt("no session id"))?, session);
            }
            1 => {
                let state = state.unwrap_or_default().parse().map_err(corrupt)?;
                held.locked
                    .tasks
                    .insert(id.ok_or_else(|| corrupt("no task id"))?, state);
            }
            2 => held.inserted.extend(id),
            _ => {
                let seq: Option<i64> = row.try_get("n")?;
                let hash: Option<String> = row.try_get("hash")?;
                held.head = seq.zip(hash);
            }
        }
    }
    Ok(held)
}

/// The locking statement. `UNION ALL` runs its branches in order, and a
/// `WITH` query runs when first read, so the locks are taken in the order
/// of the branches. A new task goes in only into an active session of its
/// own user (as `rules::may_insert` says; its session is locked above),
/// its `first_seq` the seq after its session's last: its events come after
/// (see migration 0007).
const LOCK: &str = "WITH s AS (\
    SELECT session_id, user_id, state, last_seq FROM sessions \
    WHERE session_id = ANY($1) ORDER BY session_id FOR UPDATE\
), t AS (\
    SELECT task_id, state FROM tasks WHERE task_id = ANY($2) ORDER BY task_id FOR UPDATE\
), ins AS (\
    INSERT INTO tasks (task_id, execution_uuid, session_id, user_id, agent_type, prompt, context, \
    params, state, result, error, metadata, idempotency_key, created_at, updated_at, execution_time, \
    node_id, lease_until, first_seq) \
    SELECT n.t, n.x, n.s, n.u, n.a, n.p, n.c::jsonb, n.pa::jsonb, n.st, n.r, n.e, n.m::jsonb, n.k, \
    n.ca, n.ua, n.et, n.n, CASE WHEN n.n IS NULL THEN NULL ELSE now() + make_interval(secs => $4) END, \
    s.last_seq + 1 \
    FROM UNNEST($5::uuid[], $6::uuid[], $7::uuid[], $8::text[], $9::text[], $10::text[], $11::text[], \
    $12::text[], $13::text[], $14::text[], $15::text[], $16::text[], $17::text[], $18::timestamptz[], \
    $19::timestamptz[], $20::float8[], $21::text[]) \
    AS n(t, x, s, u, a, p, c, pa, st, r, e, m, k, ca, ua, et, n) \
    JOIN s ON s.session_id = n.s AND s.state = 'active' AND s.user_id = n.u \
    ON CONFLICT DO NOTHING RETURNING task_id\
), h AS (\
    SELECT seq, hash FROM audit_head WHERE id = 1 AND $3 FOR UPDATE\
) SELECT 0 AS k, session_id AS id, user_id, state, last_seq AS n, NULL::text AS hash FROM s \
UNION ALL SELECT 1, task_id, NULL, state, NULL, NULL FROM t \
UNION ALL SELECT 2, task_id, NULL, NULL, NULL, NULL FROM ins \
UNION ALL SELECT 3, NULL, NULL, NULL, seq, hash FROM h";

/// Lock and read the tasks of `touched` (sorted) that the locking
/// statement did not see. A statement sees the rows committed when it
/// began: a task inserted by a batch committing just before this one is
/// new to it, though its session's lock, taken in the same statement,
/// waited for that commit. (This node's committer waits for its own batch
/// in flight first, see [`super::plan::changes_any`]; another node's batch
/// can still be that one.) A second statement sees it. Tasks the locking statement inserted itself (`inserted`) are
/// not read: the plan knows them from their insert, and a statement does
/// not see the rows of its own `INSERT` clause (reading them again cost a
/// round trip in most batches of a submit run). Usually there is none to
/// read (no round trip).
///
/// Taken after the audit head, out of the usual order; that cannot
/// deadlock: every other writer that locks a task of this batch and then
/// waits locks its session first, and this batch holds that.
pub(super) async fn relock_missing(
    tx: &mut Transaction<'_, Postgres>,
    touched: &[Uuid],
    inserted: &[Uuid],
    locked: &mut Locked,
) -> Result<()> {
    let inserted: HashSet<&Uuid> = inserted.iter().collect();
    let missing: Vec<Uuid> = touched
        .iter()
        .filter(|id| !locked.tasks.contains_key(id) && !inserted.contains(id))
        .copied()
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let rows: Vec<(Uuid, String)> = sqlx::query_as(
        "SELECT task_id, state FROM tasks WHERE task_id = ANY($1) ORDER BY task_id FOR UPDATE",
    )
    .bind(&missing)
    .fetch_all(&mut **tx)
    .await?;
    for (id, state) in rows {
        locked.tasks.insert(id, state.parse().map_err(corrupt)?);
    }
    Ok(())
}
