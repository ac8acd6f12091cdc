//! The audit log stays provable after retention pruned its oldest records:
//! `audit verify` (online and offline) proves the kept chain from the
//! signed checkpoint that vouches for its first record, and still catches
//! an edit, a deletion inside the kept range, a cut tail, and records
//! removed where no checkpoint vouches for the new start.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use sqlx::sqlite::SqlitePool;
use switchboard::config::FileConfig;

/// A node that checkpoints every second and prunes audit records older than 1 s.
async fn pruning_node() -> TestServer {
    let cfg = "[audit]\ncheckpoint_every_records = 5\ncheckpoint_every_secs = 1\n\
               [retention]\naudit = \"1s\"\nprune_every = \"1s\"\n";
    TestServer::spawn_with(FileConfig::parse(cfg).unwrap()).await
}

/// Audited activity: users, tasks, a denial.
async fn activity(server: &TestServer, round: usize) {
    let dev = server
        .user(&format!("dev{round}@team.com"), &["developer"])
        .await;
    let t = server
        .submit(&dev, json!({"agent_type": "echo", "prompt": "audit me"}))
        .await;
    server
        .wait_terminal(&dev, t["task_id"].as_str().unwrap())
        .await;
    let (status, _) = server.get("/api/audit/events", &dev).await;
    assert_eq!(status, 403);
}

/// Run until the online verify says the kept chain starts past seq 1.
async fn pruned(server: &TestServer) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut round = 0;
    loop {
        activity(server, round).await;
        round += 1;
        let (_, v) = server.get("/api/audit/verify", &server.admin).await;
        assert_eq!(v["ok"], true, "{v}");
        if v["first_seq"].as_i64().is_some_and(|s| s > 1) {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "audit never pruned: {v}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `switchboard audit <args> --database sqlite://db`: (exit code, stdout, stderr).
fn cli(db: &Path, args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .arg("audit")
        .args(args)
        .arg("--database")
        .arg(format!("sqlite://{}", db.display()))
        .env_remove("SWITCHBOARD_AUDIT_KEY")
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// A copy of the node's files (database, key, checkpoint file).
fn copy(db: &Path) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let to = dir.path().join("copy.db");
    for suffix in ["", "-wal", "-shm", ".audit-key", ".checkpoints.jsonl"] {
        let from = PathBuf::from(format!("{}{suffix}", db.display()));
        if from.exists() {
            std::fs::copy(&from, format!("{}{suffix}", to.display())).unwrap();
        }
    }
    (dir, to)
}

/// Open a copy with the append-only triggers dropped, as anyone with
/// write access to the file could.
async fn tamper(db: &Path, sql: &str) {
    let pool = SqlitePool::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    for t in ["audit_no_update", "audit_no_delete"] {
        sqlx::query(&format!("DROP TRIGGER {t}"))
            .execute(&pool)
            .await
            .unwrap();
    }
    sqlx::query(sql).execute(&pool).await.unwrap();
    pool.close().await;
}

async fn scalar(db: &Path, sql: &str) -> i64 {
    let pool = SqlitePool::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    let v = sqlx::query_scalar(sql).fetch_one(&pool).await.unwrap();
    pool.close().await;
    v
}

/// After a prune, verify passes online and offline from the anchoring
/// checkpoint; the prune left an `audit.pruned` record; a resume of the
/// audit stream from before it is told `earliest_seq`; and every kind of
/// tampering with the kept range is still caught.
#[tokio::test]
async fn verify_proves_the_kept_chain_and_catches_tampering_after_a_prune() {
    let server = pruning_node().await;
    let online = pruned(&server).await;
    let first = online["first_seq"].as_i64().unwrap();
    assert!(online["checkpoints"].as_u64().unwrap() > 0, "{online}");

    let (_, records) = server
        .get("/api/audit/events?event_type=audit.pruned", &server.admin)
        .await;
    let record = &records[0];
    assert!(
        record["details"]["before_seq"].as_i64().unwrap() > 1,
        "{record}"
    );
    assert!(
        record["details"]["removed"].as_i64().unwrap() > 0,
        "{record}"
    );

    let (mut ws, _) = server.ws(&server.admin, json!({})).await;
    let sub = ws
        .ok(json!({"op": "subscribe", "stream": "audit", "after_seq": 0}))
        .await;
    let earliest = sub["earliest_seq"]
        .as_i64()
        .expect("earliest_seq on the audit stream");
    assert!(earliest >= first, "{sub}");
    drop(ws);

    let db = PathBuf::from(switchboard::store::sqlite_path(&server.database_url).unwrap());
    let dir = server.stop().await.unwrap();

    // Offline, untouched: ok, from the first kept record.
    let (code, out, err) = cli(&db, &["verify"]);
    assert_eq!(code, 0, "{out} {err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let first = v["first_seq"].as_i64().unwrap();
    let last = scalar(&db, "SELECT MAX(seq) FROM audit").await;
    assert!(
        last > first + 4,
        "too little kept to tamper with: {first}..{last}"
    );

    // An edit inside the kept range.
    let (_d1, edited) = copy(&db);
    tamper(
        &edited,
        &format!(
            "UPDATE audit SET action = 'other' WHERE seq = {}",
            first + 2
        ),
    )
    .await;
    let (code, _, err) = cli(&edited, &["verify"]);
    assert_eq!(code, 1, "an edit went unnoticed: {err}");

    // A deletion inside the kept range.
    let (_d2, holed) = copy(&db);
    tamper(
        &holed,
        &format!("DELETE FROM audit WHERE seq = {}", first + 2),
    )
    .await;
    let (code, _, err) = cli(&holed, &["verify"]);
    assert_eq!(code, 1, "a deletion went unnoticed: {err}");

    // A cut tail (the shutdown checkpoint names the last record).
    let (_d3, cut) = copy(&db);
    tamper(&cut, &format!("DELETE FROM audit WHERE seq > {}", last - 2)).await;
    let (code, _, err) = cli(&cut, &["verify"]);
    assert_eq!(code, 1, "a cut tail went unnoticed: {err}");
    assert!(err.contains("truncated"), "{err}");

    // Records removed up to a seq no checkpoint vouches for.
    let (_d4, front) = copy(&db);
    let unvouched = scalar(
        &front,
        &format!(
            "SELECT MIN(seq) FROM audit WHERE seq > {first} \
             AND seq NOT IN (SELECT seq FROM audit_checkpoints)"
        ),
    )
    .await;
    tamper(
        &front,
        &format!("DELETE FROM audit WHERE seq < {unvouched}"),
    )
    .await;
    let (code, _, err) = cli(&front, &["verify"]);
    assert_eq!(code, 1, "an unvouched front cut went unnoticed: {err}");
    assert!(err.contains("no checkpoint vouches"), "{err}");

    // The export of what a prune would take: older records only, as JSON Lines.
    let (code, all, _) = cli(&db, &["export"]);
    assert_eq!(code, 0);
    let (code, old, _) = cli(&db, &["export", "--before", "2000-01-01T00:00:00Z"]);
    assert_eq!((code, old.as_str()), (0, ""));
    let lines: Vec<Value> = all
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["seq"], first);
    assert_eq!(lines.last().unwrap()["seq"], last);
    let (code, _, err) = cli(&db, &["export", "--before", "soon"]);
    assert_ne!(code, 0);
    assert!(err.contains("not a duration"), "{err}");
    drop(dir);
}

/// The same on PostgreSQL (skipped without `SWITCHBOARD_TEST_POSTGRES_URL`):
/// pruned audit records leave a chain that verifies online, and an edit or
/// a deletion inside the kept range is caught.
#[tokio::test]
async fn postgres_verify_proves_the_kept_chain_after_a_prune() {
    let Some(db) = PgDb::create().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("audit-key");
    let cfg = format!(
        "[audit]\nkey_file = \"{}\"\ncheckpoint_every_records = 5\ncheckpoint_every_secs = 1\n\
         [retention]\naudit = \"1s\"\nprune_every = \"1s\"\n",
        key.display()
    );
    let server = TestServer::spawn_on(&db.url, FileConfig::parse(&cfg).unwrap()).await;
    let v = pruned(&server).await;
    let first = v["first_seq"].as_i64().unwrap();
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    for t in ["audit_no_update", "audit_no_delete"] {
        sqlx::query(&format!("DROP TRIGGER {t} ON audit"))
            .execute(&pool)
            .await
            .unwrap();
    }
    sqlx::query("UPDATE audit SET action = 'other' WHERE seq = $1")
        .bind(first + 1)
        .execute(&pool)
        .await
        .unwrap();
    let (_, v) = server.get("/api/audit/verify", &server.admin).await;
    assert_eq!(v["ok"], false, "an edit went unnoticed: {v}");
    sqlx::query("DELETE FROM audit WHERE seq = $1")
        .bind(first + 1)
        .execute(&pool)
        .await
        .unwrap();
    let (_, v) = server.get("/api/audit/verify", &server.admin).await;
    assert_eq!(v["ok"], false, "a deletion went unnoticed: {v}");
    pool.close().await;
    server.stop().await;
}
