//! `GET /api/admin/storage`: an admin gets rows, bytes and the oldest item
//! per kind of data and the database's size, on SQLite and PostgreSQL, and
//! the figures follow the work done; without `admin:system` it is 403; a big
//! table is estimated and says so; `/metrics` exports the same figures.

mod common;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use common::*;
use serde_json::{Value, json};
use switchboard::config::FileConfig;

const KINDS: [&str; 7] = [
    "events", "tasks", "sessions", "audit", "devices", "users", "tokens",
];

/// The report, checked for its shape.
async fn report(server: &TestServer) -> Value {
    let (status, body) = server.get("/api/admin/storage", &server.admin).await;
    assert_eq!(status, 200, "{body}");
    for kind in KINDS {
        let k = &body["kinds"][kind];
        assert!(k["rows"].as_i64().unwrap() >= 0, "{kind}: {body}");
        assert_eq!(
            k["rows_estimated"], false,
            "small tables are counted: {body}"
        );
        assert!(k["bytes"].as_i64().is_some(), "{kind} bytes: {body}");
        assert!(k.get("oldest").is_some(), "{kind}: {body}");
    }
    assert!(body["database_bytes"].as_i64().unwrap() > 0, "{body}");
    assert_eq!(body["last_prune"], Value::Null, "no prune ran: {body}");
    time(&body["measured_at"]);
    body
}

fn rows(report: &Value, kind: &str) -> i64 {
    report["kinds"][kind]["rows"].as_i64().unwrap()
}

fn time(v: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(v.as_str().unwrap_or_else(|| panic!("not a time: {v}")))
        .unwrap()
        .with_timezone(&Utc)
}

/// Three tasks later: three more tasks, their events, audit records and
/// bytes, and an oldest item for each kind that has one.
async fn figures_follow_the_work(server: &TestServer) -> Value {
    let before = report(server).await;
    assert!(rows(&before, "users") >= 1, "the admin: {before}");
    assert!(rows(&before, "tokens") >= 1, "{before}");
    let started = Utc::now();
    for i in 0..3 {
        let t = server
            .submit(
                &server.admin,
                json!({"agent_type": "echo", "prompt": format!("count me {i}"), "params": {"chunk_size": 4}}),
            )
            .await;
        server
            .wait_terminal(&server.admin, t["task_id"].as_str().unwrap())
            .await;
    }
    let after = report(server).await;
    assert_eq!(rows(&after, "tasks") - rows(&before, "tasks"), 3, "{after}");
    // pending, planning, running, 3 chunks, completed: 7 per task.
    assert_eq!(
        rows(&after, "events") - rows(&before, "events"),
        21,
        "{after}"
    );
    assert!(
        rows(&after, "audit") >= rows(&before, "audit") + 9,
        "{after}"
    );
    assert!(rows(&after, "sessions") >= 1, "{after}");
    for kind in ["events", "tasks", "sessions", "audit"] {
        let oldest = time(&after["kinds"][kind]["oldest"]);
        assert!(oldest <= Utc::now(), "{kind}: {after}");
    }
    assert!(
        time(&after["kinds"]["events"]["oldest"]) >= started - chrono::Duration::seconds(1),
        "the first event is one of these tasks': {after}"
    );
    assert!(
        time(&after["kinds"]["audit"]["oldest"]) <= started,
        "{after}"
    );
    for kind in ["devices", "users", "tokens"] {
        assert_eq!(after["kinds"][kind]["oldest"], Value::Null, "{after}");
    }
    let grew = |kind: &str| {
        after["kinds"][kind]["bytes"].as_i64().unwrap()
            >= before["kinds"][kind]["bytes"].as_i64().unwrap()
    };
    assert!(
        grew("events") && grew("tasks") && grew("audit"),
        "{before} {after}"
    );
    after
}

/// On SQLite: the figures follow the work, the file and WAL sizes add up
/// to the database's, and `/metrics` has the storage gauges.
#[tokio::test]
async fn admin_sees_storage_figures_that_follow_the_work() {
    let server = TestServer::spawn().await;
    let after = figures_follow_the_work(&server).await;
    assert_eq!(after["backend"], "sqlite");
    let (file, wal) = (
        after["file_bytes"].as_i64().unwrap(),
        after["wal_bytes"].as_i64().unwrap(),
    );
    assert!(file > 0, "{after}");
    assert_eq!(after["database_bytes"].as_i64().unwrap(), file + wal);
    assert!(after["free_bytes"].as_i64().unwrap() >= 0, "{after}");
    let kinds: i64 = KINDS
        .iter()
        .map(|k| after["kinds"][k]["bytes"].as_i64().unwrap())
        .sum();
    assert!(kinds <= file, "the kinds fit in the file: {after}");

    let text = server.metrics().await;
    for metric in [
        "switchboard_storage_rows{kind=\"events\"}",
        "switchboard_storage_rows{kind=\"audit\"}",
        "switchboard_storage_bytes{kind=\"tasks\"}",
        "switchboard_storage_database_bytes",
    ] {
        assert!(text.contains(metric), "{metric} missing from /metrics");
    }
    server.stop().await;
}

/// Without `admin:system` the figures are refused (and no token is 401).
#[tokio::test]
async fn storage_needs_admin_system() {
    let server = TestServer::spawn().await;
    for role in ["developer", "viewer"] {
        let token = server.user(&format!("{role}@team.com"), &[role]).await;
        let (status, body) = server.get("/api/admin/storage", &token).await;
        assert_eq!(status, 403, "{role}: {body}");
        assert_eq!(body["error"]["code"], "forbidden");
    }
    let (status, _) = send(server.req(reqwest::Method::GET, "/api/admin/storage", None)).await;
    assert_eq!(status, 401);
    server.stop().await;
}

/// A big events table is estimated by its key span, and says so; small
/// tables beside it are still counted.
#[tokio::test]
async fn big_tables_are_estimated_and_say_so() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.db");
    let url = format!("sqlite://{}", path.display());
    let store = switchboard::store::open(&url, Arc::new(switchboard::bus::Bus::new()))
        .await
        .unwrap();
    let big = switchboard::protocol::storage::EXACT_ROWS_UP_TO + 1000;
    {
        let mut conn = rusqlite::Connection::open(&path).unwrap();
        let tx = conn.transaction().unwrap();
        let mut insert = tx
            .prepare(
                "INSERT INTO events (sid, seq, tid, at, kind, data) VALUES (1, ?1, 1, ?2, 1, '{}')",
            )
            .unwrap();
        for seq in 1..=big {
            insert.execute([seq, 1_700_000_000_000_000 + seq]).unwrap();
        }
        drop(insert);
        tx.commit().unwrap();
    }
    let report = store.storage().await.unwrap();
    let events = &report.kinds["events"];
    assert_eq!((events.rows, events.rows_estimated), (big, true));
    assert_eq!(
        events.oldest.unwrap().timestamp_micros(),
        1_700_000_000_000_001
    );
    assert!(!report.kinds["tasks"].rows_estimated);
    assert!(events.bytes.unwrap() > big * 10, "{events:?}");
    store.close().await;
}

/// On PostgreSQL: the same figures, sizes from `pg_total_relation_size`.
#[tokio::test]
async fn postgres_reports_storage_too() {
    let Some(pg) = PgDb::create().await else {
        return;
    };
    let server = TestServer::spawn_on(&pg.url, FileConfig::default()).await;
    let after = figures_follow_the_work(&server).await;
    assert_eq!(after["backend"], "postgres");
    for field in ["file_bytes", "wal_bytes", "free_bytes"] {
        assert_eq!(after[field], Value::Null, "{field}: {after}");
    }
    server.stop().await;
}
