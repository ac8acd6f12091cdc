//! The audit log is tamper-evident: every way of altering the stored rows is
//! caught by `switchboard audit verify`, offline, on the database file.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use serde_json::{Value, json};
use sqlx::sqlite::SqlitePool;
use sqlx::{Row, SqliteConnection};
use switchboard::audit::AuditRecord;

/// A stopped node's files: database, key and checkpoint file.
struct Files {
    _dir: tempfile::TempDir,
    db: PathBuf,
}

/// Run a node, make some audited activity, stop it (which writes a final
/// checkpoint), and keep its files.
async fn audited_node() -> Files {
    let server = TestServer::spawn().await;
    let dev = server.user("dev@team.com", &["developer"]).await;
    server.user("viewer@team.com", &["viewer"]).await;
    let t = server
        .submit(&dev, json!({"agent_type": "echo", "prompt": "audit me"}))
        .await;
    server
        .wait_terminal(&dev, t["task_id"].as_str().unwrap())
        .await;
    let (status, _) = server.get("/api/audit/events", &dev).await; // a denial, audited
    assert_eq!(status, 403);
    let db = PathBuf::from(switchboard::store::sqlite_path(&server.database_url).unwrap());
    let dir = server.stop().await.unwrap();
    Files { _dir: dir, db }
}

/// A copy of the node's files in a fresh directory.
fn copy(files: &Files) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("copy.db");
    for suffix in ["", "-wal", "-shm", ".audit-key", ".checkpoints.jsonl"] {
        let from = PathBuf::from(format!("{}{suffix}", files.db.display()));
        if from.exists() {
            std::fs::copy(&from, format!("{}{suffix}", db.display())).unwrap();
        }
    }
    (dir, db)
}

/// `switchboard audit verify` on `db`: (exit code, JSON verdict, stderr).
fn verify(db: &Path, extra: &[&str]) -> (i32, Value, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["audit", "verify", "--database"])
        .arg(format!("sqlite://{}", db.display()))
        .args(extra)
        .env_remove("SWITCHBOARD_AUDIT_KEY")
        .output()
        .unwrap();
    let verdict = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (
        out.status.code().unwrap(),
        verdict,
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// Open the copy for tampering, with the append-only triggers dropped (as
/// anyone with write access to the file could).
async fn tamper(db: &Path) -> SqlitePool {
    let pool = SqlitePool::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    sqlx::query("DROP TRIGGER audit_no_update")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("DROP TRIGGER audit_no_delete")
        .execute(&pool)
        .await
        .unwrap();
    pool
}

async fn event_id(pool: &SqlitePool, seq: i64) -> String {
    sqlx::query_scalar("SELECT event_id FROM audit WHERE seq = ?")
        .bind(seq)
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn records(conn: &mut SqliteConnection) -> Vec<AuditRecord> {
    let rows = sqlx::query("SELECT * FROM audit ORDER BY seq")
        .fetch_all(conn)
        .await
        .unwrap();
    rows.iter()
        .map(|r| AuditRecord {
            event_id: r.get::<String, _>("event_id").parse().unwrap(),
            event_type: r.get("event_type"),
            timestamp: r.get::<String, _>("timestamp").parse().unwrap(),
            user_id: r.get("user_id"),
            session_id: r
                .get::<Option<String>, _>("session_id")
                .map(|s| s.parse().unwrap()),
            resource_type: r.get("resource_type"),
            resource_id: r.get("resource_id"),
            action: r.get("action"),
            status: r.get("status"),
            details: serde_json::from_str(&r.get::<String, _>("details")).unwrap(),
            seq: r.get("seq"),
            hash: r.get("hash"),
            prev_hash: r.get("prev_hash"),
        })
        .collect()
}

/// Rewrite every hash from `from_seq` on so the bare chain is consistent
/// again: what an attacker without the checkpoint key would do.
async fn recompute_chain(pool: &SqlitePool, from_seq: i64) {
    let mut conn = pool.acquire().await.unwrap();
    let mut prev = switchboard::audit::GENESIS.to_owned();
    for mut r in records(&mut conn).await {
        if r.seq >= from_seq {
            r.prev_hash = prev.clone();
            r.hash = r.compute_hash();
            sqlx::query("UPDATE audit SET prev_hash = ?, hash = ? WHERE seq = ?")
                .bind(&r.prev_hash)
                .bind(&r.hash)
                .bind(r.seq)
                .execute(&mut *conn)
                .await
                .unwrap();
        }
        prev = r.hash;
    }
}

/// The untouched log verifies, checkpoints included; export prints every
/// record as one JSON line.
#[tokio::test]
async fn untouched_log_verifies_and_exports() {
    let files = audited_node().await;
    let (code, v, err) = verify(&files.db, &[]);
    assert_eq!(code, 0, "{v} {err}");
    assert_eq!(v["ok"], true);
    assert!(v["checked"].as_u64().unwrap() >= 8, "{v}");
    assert!(v["checkpoints"].as_u64().unwrap() >= 1, "{v}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["audit", "export", "--database"])
        .arg(format!("sqlite://{}", files.db.display()))
        .output()
        .unwrap();
    assert!(out.status.success());
    let lines: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len() as u64, v["checked"].as_u64().unwrap());
    assert_eq!(lines[0]["seq"], 1);
    assert_eq!(lines.last().unwrap()["hash"], v["head"]);
    let types: Vec<_> = lines
        .iter()
        .map(|l| l["event_type"].as_str().unwrap())
        .collect();
    for t in [
        "user.created",
        "token.issued",
        "role.assigned",
        "session.created",
        "task.submitted",
        "task.started",
        "task.completed",
        "permission.denied",
    ] {
        assert!(types.contains(&t), "{t} missing from {types:?}");
    }
}

/// A changed field is caught at that record.
#[tokio::test]
async fn changed_row_is_caught() {
    let files = audited_node().await;
    let (_d, db) = copy(&files);
    let pool = tamper(&db).await;
    let bad = event_id(&pool, 3).await;
    sqlx::query("UPDATE audit SET user_id = 'mallory' WHERE seq = 3")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let (code, v, err) = verify(&db, &[]);
    assert_eq!(code, 1);
    assert_eq!(v["first_bad_event_id"], bad.as_str());
    assert!(err.contains(&bad), "{err}");
}

/// A deleted row is caught at the record after the gap.
#[tokio::test]
async fn deleted_row_is_caught() {
    let files = audited_node().await;
    let (_d, db) = copy(&files);
    let pool = tamper(&db).await;
    let next = event_id(&pool, 4).await;
    sqlx::query("DELETE FROM audit WHERE seq = 3")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let (code, v, _) = verify(&db, &[]);
    assert_eq!(code, 1);
    assert_eq!(v["first_bad_event_id"], next.as_str());
}

/// A row inserted into the middle (later rows renumbered) is caught.
#[tokio::test]
async fn inserted_row_is_caught() {
    let files = audited_node().await;
    let (_d, db) = copy(&files);
    let pool = tamper(&db).await;
    let max: i64 = sqlx::query_scalar("SELECT MAX(seq) FROM audit")
        .fetch_one(&pool)
        .await
        .unwrap();
    for seq in (4..=max).rev() {
        sqlx::query("UPDATE audit SET seq = seq + 1 WHERE seq = ?")
            .bind(seq)
            .execute(&pool)
            .await
            .unwrap();
    }
    sqlx::query(
        "INSERT INTO audit (seq, event_id, event_type, timestamp, user_id, action, status, details, hash, prev_hash) \
         SELECT 4, '00000000-0000-4000-8000-000000000001', 'user.created', timestamp, 'mallory', 'create_user', 'success', '{}', hash, prev_hash FROM audit WHERE seq = 3",
    )
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
    let (code, v, _) = verify(&db, &[]);
    assert_eq!(code, 1);
    assert_eq!(
        v["first_bad_event_id"],
        "00000000-0000-4000-8000-000000000001"
    );
}

/// Two rows swapped (content moved between seqs) are caught.
#[tokio::test]
async fn reordered_rows_are_caught() {
    let files = audited_node().await;
    let (_d, db) = copy(&files);
    let pool = tamper(&db).await;
    let third = event_id(&pool, 3).await;
    let fourth = event_id(&pool, 4).await;
    sqlx::query("UPDATE audit SET seq = -1 WHERE seq = 3")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("UPDATE audit SET seq = 3 WHERE seq = 4")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("UPDATE audit SET seq = 4 WHERE seq = -1")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let (code, v, _) = verify(&db, &[]);
    assert_eq!(code, 1);
    assert_eq!(
        v["first_bad_event_id"],
        fourth.as_str(),
        "the record now at seq 3"
    );
    assert_ne!(v["first_bad_event_id"], third.as_str());
}

/// An edit followed by recomputing every later hash passes the bare chain,
/// but not the signed checkpoints.
#[tokio::test]
async fn recomputed_chain_is_caught_by_checkpoints() {
    let files = audited_node().await;
    let (_d, db) = copy(&files);
    let pool = tamper(&db).await;
    sqlx::query("UPDATE audit SET user_id = 'mallory' WHERE seq = 3")
        .execute(&pool)
        .await
        .unwrap();
    recompute_chain(&pool, 3).await;
    pool.close().await;
    // Without the key only the chain is checked, and it is consistent.
    let key_file = PathBuf::from(format!("{}.audit-key", db.display()));
    let moved = db.with_extension("key-elsewhere");
    std::fs::rename(&key_file, &moved).unwrap();
    assert_eq!(verify(&db, &[]).0, 0);
    let (code, v, err) = verify(&db, &["--key-file", moved.to_str().unwrap()]);
    assert_eq!(code, 1, "{v}");
    assert!(err.contains("rewritten"), "{err}");
}

/// Cutting the tail (up to the last checkpoint) is caught.
#[tokio::test]
async fn truncated_tail_is_caught() {
    let files = audited_node().await;
    let (_d, db) = copy(&files);
    let pool = tamper(&db).await;
    let max: i64 = sqlx::query_scalar("SELECT MAX(seq) FROM audit")
        .fetch_one(&pool)
        .await
        .unwrap();
    sqlx::query("DELETE FROM audit WHERE seq > ?")
        .bind(max - 2)
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let (code, v, err) = verify(&db, &[]);
    assert_eq!(code, 1, "{v}");
    assert!(err.contains("truncated"), "{err}");
}

/// Checkpoints forged in the database (wrong key) are rejected, and
/// deleting the database's checkpoints does not help: the file keeps them.
#[tokio::test]
async fn forged_or_deleted_checkpoints_are_caught() {
    let files = audited_node().await;
    let (_d, db) = copy(&files);
    let pool = tamper(&db).await;
    sqlx::query("UPDATE audit SET action = 'nothing to see' WHERE seq = 2")
        .execute(&pool)
        .await
        .unwrap();
    recompute_chain(&pool, 2).await;
    // Forge: replace the stored checkpoints with ones signed by another key.
    let forger = switchboard::audit::checkpoint::CheckpointKey::from_hex(&"42".repeat(32)).unwrap();
    let head: (i64, String) =
        sqlx::query_as("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")
            .fetch_one(&pool)
            .await
            .unwrap();
    let forged = forger.sign(head.0, &head.1, chrono::Utc::now());
    sqlx::query("DELETE FROM audit_checkpoints")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO audit_checkpoints (seq, head, at, key_id, signature) VALUES (?,?,?,?,?)",
    )
    .bind(forged.seq)
    .bind(&forged.head)
    .bind(switchboard::event::rfc3339(&forged.at))
    .bind(&forged.key_id)
    .bind(&forged.signature)
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
    let checkpoint_file = PathBuf::from(format!("{}.checkpoints.jsonl", db.display()));
    let file_elsewhere = db.with_extension("cp-elsewhere");
    std::fs::rename(&checkpoint_file, &file_elsewhere).unwrap();
    let (code, _, err) = verify(&db, &[]);
    assert_eq!(code, 1);
    assert!(err.contains("bad signature"), "{err}");

    // Remove the forgery too: the external file still catches the rewrite.
    let pool = SqlitePool::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    sqlx::query("DELETE FROM audit_checkpoints")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let (code, _, err) = verify(&db, &["--checkpoints", file_elsewhere.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("rewritten"), "{err}");
}

/// `GET /api/audit/verify` reports the chain and checkpoints of a live node.
#[tokio::test]
async fn verify_endpoint_reports_ok() {
    let server = TestServer::spawn().await;
    server.user("a@b.c", &["viewer"]).await;
    let (status, v) = server.get("/api/audit/verify", &server.admin).await;
    assert_eq!(status, 200);
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["first_bad_event_id"], Value::Null);
    assert_eq!(v["head"].as_str().unwrap().len(), 64);
    server.stop().await;
}

/// The `audit` stream over WebSocket: replay after a seq, then live
/// records, with seq rising by one; only for admin:system.
#[tokio::test]
async fn audit_stream_replays_then_goes_live() {
    let server = TestServer::spawn().await;
    let (mut ws, _) = server.ws(&server.admin, json!({})).await;
    let sub = ws
        .ok(json!({"op": "subscribe", "stream": "audit", "after_seq": 1}))
        .await;
    let head = sub["last_seq"].as_i64().unwrap();
    assert!(head >= 2);
    let replayed = ws
        .events_until(|e| e["stream"] == "audit" && e["seq"] == head)
        .await;
    let replayed: Vec<_> = replayed
        .into_iter()
        .filter(|e| e["stream"] == "audit")
        .collect();
    assert_eq!(seqs(&replayed), (2..=head).collect::<Vec<_>>());
    assert_eq!(replayed[0]["type"], "audit");
    server.user("new@team.com", &["viewer"]).await;
    let live = ws
        .events_until(|e| e["stream"] == "audit" && e["data"]["event_type"] == "user.created")
        .await;
    let live: Vec<_> = live
        .into_iter()
        .filter(|e| e["stream"] == "audit")
        .collect();
    assert_eq!(live[0]["seq"].as_i64().unwrap(), head + 1);
    assert_eq!(live.last().unwrap()["data"]["resource_id"], "new@team.com");

    let dev = server.user("dev@team.com", &["developer"]).await;
    let (mut dws, _) = server.ws(&dev, json!({})).await;
    let r = dws
        .call(json!({"op": "subscribe", "stream": "audit"}))
        .await;
    assert_eq!(r["error"]["code"], "forbidden");
    server.stop().await;
}
