//! Storage figures of the PostgreSQL store (`GET /api/admin/storage`, the
//! `switchboard_storage_*` metrics). Which are estimates, and why, is
//! written in [`crate::protocol::storage`].

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use super::PostgresStore;
use crate::error::Result;
use crate::protocol::storage::{EXACT_ROWS_UP_TO, StorageReport};
use crate::store::StorageStats;

/// The tables holding each kind (its first table is the one counted).
const TABLES: [(&str, &[&str]); 7] = [
    ("events", &["events"]),
    ("tasks", &["tasks"]),
    ("sessions", &["sessions"]),
    ("audit", &["audit", "audit_checkpoints", "audit_head"]),
    ("devices", &["devices", "device_nonces"]),
    ("users", &["users"]),
    ("tokens", &["tokens"]),
];

/// The oldest item of the kinds that have one. An event's is found
/// through the oldest task that still has events (`tasks_by_time`, then
/// its session's stream from the task's `first_seq`): `events` has no
/// index on `at`, and a task's first event is written when it is created.
const OLDEST: [(&str, &str); 4] = [
    (
        "events",
        concat!(
            "SELECT e.at FROM tasks t CROSS JOIN LATERAL (SELECT at FROM events e WHERE ",
            events_of!("t"),
            " ORDER BY e.seq LIMIT 1) e ORDER BY t.created_at LIMIT 1"
        ),
    ),
    ("tasks", "SELECT MIN(created_at) FROM tasks"),
    // No index on it, but sessions are few next to tasks and events.
    ("sessions", "SELECT MIN(created_at) FROM sessions"),
    ("audit", "SELECT timestamp FROM audit ORDER BY seq LIMIT 1"),
];

#[async_trait]
impl StorageStats for PostgresStore {
    async fn storage(&self) -> Result<StorageReport> {
        let mut c = self.pool.acquire().await?;
        let c = &mut *c;
        let size: i64 = sqlx::query_scalar("SELECT pg_database_size(current_database())")
            .fetch_one(&mut *c)
            .await?;
        let mut report = StorageReport::empty("postgres", size);
        for (kind, tables) in TABLES {
            let names: Vec<String> = tables.iter().map(|t| (*t).to_owned()).collect();
            let bytes: Option<i64> = sqlx::query_scalar(
                "SELECT SUM(pg_total_relation_size(to_regclass(t)))::BIGINT FROM UNNEST($1::TEXT[]) t",
            )
            .bind(names)
            .fetch_one(&mut *c)
            .await?;
            report.kind(kind).bytes = bytes;
        }
        for kind in ["events", "tasks", "sessions"] {
            let (rows, estimated) = rows(c, kind).await?;
            let k = report.kind(kind);
            k.rows = rows;
            k.rows_estimated = estimated;
        }
        // Gapless and only ever trimmed from the front: the span is the count.
        report.kind("audit").rows = sqlx::query_scalar(
            "SELECT COALESCE((SELECT MAX(seq) FROM audit) - (SELECT MIN(seq) FROM audit) + 1, 0)",
        )
        .fetch_one(&mut *c)
        .await?;
        for kind in ["devices", "users", "tokens"] {
            report.kind(kind).rows = count(c, kind).await?;
        }
        for (kind, sql) in OLDEST {
            let oldest: Option<DateTime<Utc>> = sqlx::query_scalar(sql)
                .fetch_optional(&mut *c)
                .await?
                .flatten();
            report.kind(kind).oldest = oldest;
        }
        Ok(report)
    }
}

/// The statistics' estimate of a table's rows, and an exact count instead
/// while that estimate is small.
async fn rows(c: &mut PgConnection, table: &str) -> Result<(i64, bool)> {
    let estimate: Option<i64> = sqlx::query_scalar(
        "SELECT GREATEST(COALESCE(s.n_live_tup, 0), c.reltuples::BIGINT) \
         FROM pg_class c LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid \
         WHERE c.oid = to_regclass($1)",
    )
    .bind(table)
    .fetch_optional(&mut *c)
    .await?;
    match estimate {
        Some(n) if n > EXACT_ROWS_UP_TO => Ok((n, true)),
        _ => Ok((count(c, table).await?, false)),
    }
}

async fn count(c: &mut PgConnection, table: &str) -> Result<i64> {
    let sql = format!("SELECT COUNT(*) FROM {table}");
    Ok(sqlx::query_scalar(&sql).fetch_one(c).await?)
}
