//! The last statement of an append batch, one round trip whatever the
//! batch's size: store every row and send the notifications (after
//! [`super::lock`] took the locks and inserted the new tasks, and the audit
//! records were chained).

use sqlx::{Postgres, Transaction};

use super::EVENTS_CHANNEL;
use super::TASKS_CHANNEL;
use super::notify::payloads;
use super::plan::Plan;
use crate::audit::{AuditRecord, NewAudit};
use crate::error::Result;

type Tx<'c> = Transaction<'c, Postgres>;

/// Chain `records` onto the audit log, holding the chain's head row until
/// commit so that writers on every node take turns. (Taken after the
/// session locks, as every writer does.) Stored by [`write`].
pub(super) async fn chain_audit(
    tx: &mut Tx<'_>,
    records: Vec<NewAudit>,
) -> Result<Vec<AuditRecord>> {
    if records.is_empty() {
        return Ok(Vec::new());
    }
    let head = sqlx::query_as("SELECT seq, hash FROM audit_head WHERE id = 1 FOR UPDATE")
        .fetch_one(&mut **tx)
        .await?;
    Ok(chain(head, records))
}

/// Chain `records` onto the audit chain whose head is `head` (seq, hash),
/// locked by the caller.
pub(super) fn chain(head: (i64, String), records: Vec<NewAudit>) -> Vec<AuditRecord> {
    let (mut seq, mut prev) = head;
    let mut out = Vec::with_capacity(records.len());
    for new in records {
        seq += 1;
        let r = new.chain(seq, &prev);
        prev.clone_from(&r.hash);
        out.push(r);
    }
    out
}

/// Store everything `plan` decided and the chained `audit` records, and
/// send the batch's notifications, in one statement.
pub(super) async fn write(tx: &mut Tx<'_>, plan: &Plan, audit: &[AuditRecord]) -> Result<()> {
    let (channels, notes) = notifications(plan, audit);
    let (e, s, t) = (&plan.events, &plan.sessions, &plan.tasks);
    let q = sqlx::query(WRITE)
        .bind(&e.session_id)
        .bind(&e.seq)
        .bind(&e.task_id)
        .bind(&e.event_type)
        .bind(&e.data)
        .bind(&e.at)
        .bind(&s.session_id)
        .bind(&s.last_seq)
        .bind(&s.last_activity)
        .bind(&t.task_id)
        .bind(&t.state)
        .bind(&t.result)
        .bind(&t.error)
        .bind(&t.execution_time)
        .bind(&t.updated_at);
    bind_audit(q, audit)
        .bind(channels)
        .bind(notes)
        .bind(&t.last_seq)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Audit records only (with their notification), for writes that store no
/// events.
pub(super) async fn write_audit(
    tx: &mut Tx<'_>,
    records: Vec<NewAudit>,
) -> Result<Vec<AuditRecord>> {
    let audit = chain_audit(tx, records).await?;
    if !audit.is_empty() {
        write(tx, &Plan::default(), &audit).await?;
    }
    Ok(audit)
}

type Query<'q> = sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>;

fn bind_audit<'q>(q: Query<'q>, audit: &[AuditRecord]) -> Query<'q> {
    let col = |f: fn(&AuditRecord) -> Option<String>| audit.iter().map(f).collect::<Vec<_>>();
    q.bind(audit.iter().map(|r| r.seq).collect::<Vec<_>>())
        .bind(audit.iter().map(|r| r.event_id).collect::<Vec<_>>())
        .bind(col(|r| Some(r.event_type.clone())))
        .bind(audit.iter().map(|r| r.timestamp).collect::<Vec<_>>())
        .bind(col(|r| r.user_id.clone()))
        .bind(audit.iter().map(|r| r.session_id).collect::<Vec<_>>())
        .bind(col(|r| r.resource_type.clone()))
        .bind(col(|r| r.resource_id.clone()))
        .bind(col(|r| Some(r.action.clone())))
        .bind(col(|r| Some(r.status.clone())))
        .bind(col(|r| Some(r.details.to_string())))
        .bind(col(|r| Some(r.hash.clone())))
        .bind(col(|r| Some(r.prev_hash.clone())))
}

/// The batch's notifications, as (channel, payload) columns: its stored
/// ranges, and a wake-up per agent type of its new pending tasks.
fn notifications(plan: &Plan, audit: &[AuditRecord]) -> (Vec<&'static str>, Vec<String>) {
    let range = audit.first().zip(audit.last()).map(|(a, b)| (a.seq, b.seq));
    let mut notes = payloads(&plan.events.session_id, &plan.events.seq, range);
    let mut channels = vec![EVENTS_CHANNEL; notes.len()];
    for agent_type in &plan.pending {
        channels.push(TASKS_CHANNEL);
        notes.push(agent_type.clone());
    }
    (channels, notes)
}

/// Every row of a batch and its notifications. Data-modifying `WITH`
/// clauses all run, whether or not the final `SELECT` reads them; empty
/// arrays write nothing.
const WRITE: &str = "WITH ev AS (\
    INSERT INTO events (session_id, seq, task_id, event_type, data, at) \
    SELECT s, q, t, k, d::jsonb, a FROM UNNEST($1::uuid[], $2::int8[], $3::uuid[], $4::text[], \
    $5::text[], $6::timestamptz[]) AS u(s, q, t, k, d, a)\
), se AS (\
    UPDATE sessions SET last_seq = u.q, last_activity = u.a \
    FROM UNNEST($7::uuid[], $8::int8[], $9::timestamptz[]) AS u(s, q, a) WHERE session_id = u.s\
), ta AS (\
    UPDATE tasks SET state = u.st, result = COALESCE(u.r, tasks.result), \
    error = COALESCE(u.e, tasks.error), execution_time = COALESCE(u.x, tasks.execution_time), \
    updated_at = u.a, last_seq = COALESCE(u.l, tasks.last_seq) FROM UNNEST($10::uuid[], \
    $11::text[], $12::text[], $13::text[], $14::float8[], $15::timestamptz[], $31::int8[]) \
    AS u(t, st, r, e, x, a, l) WHERE task_id = u.t\
), au AS (\
    INSERT INTO audit (seq, event_id, event_type, timestamp, user_id, session_id, resource_type, \
    resource_id, action, status, details, hash, prev_hash) \
    SELECT q, i, k, ts, us, se, rt, ri, ac, st, d::jsonb, h, p FROM UNNEST($16::int8[], \
    $17::uuid[], $18::text[], $19::timestamptz[], $20::text[], $21::uuid[], $22::text[], \
    $23::text[], $24::text[], $25::text[], $26::text[], $27::text[], $28::text[]) \
    AS u(q, i, k, ts, us, se, rt, ri, ac, st, d, h, p)\
), ah AS (\
    UPDATE audit_head SET seq = u.q, hash = u.h FROM (SELECT q, h FROM UNNEST($16::int8[], \
    $27::text[]) AS x(q, h) ORDER BY q DESC LIMIT 1) AS u WHERE id = 1\
) SELECT pg_notify(c, p) FROM UNNEST($29::text[], $30::text[]) AS n(c, p)";
