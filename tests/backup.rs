//! `switchboard backup` copies a live SQLite node without stopping it: taken
//! twice while clients submit tasks without pause (some of them still
//! running at the time), each copy holds every task acknowledged before the
//! backup began, with its events (1..N with no gap in every session, the
//! terminal event of every task that had ended),
//! passes SQLite's integrity check, and a new node started on it serves
//! those tasks and verifies its audit log, online and offline, signed
//! checkpoints included. An existing file and a PostgreSQL URL are refused.

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

/// Clients submitting at once.
const WRITERS: usize = 4;
/// Acknowledged tasks to wait for before each backup.
const PER_ROUND: usize = 60;

const TERMINAL: [&str; 3] = ["completed", "failed", "cancelled"];

/// A task the node acknowledged.
#[derive(Debug, Clone)]
struct Acked {
    task_id: String,
}

/// What one backup must hold.
struct Snapshot {
    file: PathBuf,
    /// Acknowledged before the backup started.
    acked: Vec<Acked>,
    /// Of those, the ones seen ended before the backup started.
    ended: HashSet<String>,
}

/// Two backups of a node under a steady stream of submits restore every
/// acknowledged task with its events, and verify.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_of_a_busy_node_restores_everything_acknowledged_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let db = db_in(&dir);
    let config = dir.path().join("limits.toml");
    std::fs::write(
        &config,
        "[security]\nsubmits_per_minute = 1000000\nmax_active_tasks_per_user = 1000000\n\
         [audit]\ncheckpoint_every_records = 50\n",
    )
    .unwrap();
    let args = ["--config", config.to_str().unwrap()];
    let node = BinaryServer::start(&db, &args).await;

    let acked = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = tokio::task::JoinSet::new();
    for token in common::durable::developers(&node.base, "writer", WRITERS).await {
        let (base, acked, stop) = (node.base.clone(), acked.clone(), stop.clone());
        writers.spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                // Every fourth task is slow, so that some are running
                // while a backup is taken.
                let delay_ms = if n % 4 == 0 { 100 } else { 0 };
                let task = json!({"agent_type": "echo", "prompt": format!("task {n} of {token}"),
                                  "params": {"chunk_size": 3, "delay_ms": delay_ms}});
                let (status, body) = send(
                    http()
                        .post(format!("{base}/api/runtime/tasks/submit"))
                        .bearer_auth(&token)
                        .json(&task),
                )
                .await;
                assert_eq!(status, 200, "{body}");
                acked.lock().unwrap().push(Acked {
                    task_id: body["task_id"].as_str().unwrap().to_owned(),
                });
                n += 1;
            }
        });
    }

    let mut snapshots = Vec::new();
    for round in 1..=2 {
        wait_for(|| acked.lock().unwrap().len() >= PER_ROUND * round).await;
        let before = acked.lock().unwrap().clone();
        let ended = ended_among(&node, &before).await;
        let file = dir.path().join(format!("backup-{round}.db"));
        let started_with = acked.lock().unwrap().len();
        let (code, out, err) = backup(&db, &file, &[]).await;
        assert_eq!(code, 0, "{out} {err}");
        assert!(out.contains(&file.display().to_string()), "{out}");
        assert!(out.contains("audit key"), "{out}");
        println!(
            "backup {round}: {} tasks acknowledged before it ({} ended), {} during it; {}",
            before.len(),
            ended.len(),
            acked.lock().unwrap().len() - started_with,
            out.trim()
        );
        assert!(
            ended.len() < before.len(),
            "some tasks were still running when the backup began"
        );
        snapshots.push(Snapshot {
            file,
            acked: before,
            ended,
        });
    }
    stop.store(true, Ordering::Relaxed);
    while let Some(r) = writers.join_next().await {
        r.expect("a writer panicked");
    }
    node.kill9().await;

    for s in &snapshots {
        check_file(&s.file);
        restore_and_check(s, &args).await;
    }
}

/// An existing file is refused (unless `--force`), and so is PostgreSQL,
/// with the tools to use instead; `--json` says what was written.
#[tokio::test]
async fn backup_refuses_an_existing_file_and_postgres() {
    let server = TestServer::spawn().await;
    let t = server
        .submit(
            &server.admin,
            json!({"agent_type": "echo", "prompt": "keep me"}),
        )
        .await;
    server
        .wait_terminal(&server.admin, t["task_id"].as_str().unwrap())
        .await;
    let db = PathBuf::from(switchboard::store::sqlite_path(&server.database_url).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("copy.db");

    let (code, out, err) = backup(&db, &file, &["--json"]).await;
    assert_eq!(code, 0, "{out} {err}");
    let done: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(done["path"], file.display().to_string());
    assert_eq!(done["bytes"], std::fs::metadata(&file).unwrap().len());
    assert!(done["seconds"].as_f64().unwrap() >= 0.0);
    let written = std::fs::read(&file).unwrap();

    let (code, _, err) = backup(&db, &file, &[]).await;
    assert_ne!(code, 0);
    assert!(
        err.contains("already exists") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(&file).unwrap(),
        written,
        "a refused backup left the file alone"
    );
    let (code, out, err) = backup(&db, &file, &["--force"]).await;
    assert_eq!(code, 0, "{out} {err}");

    let (code, _, err) = run(&[
        "backup",
        "--database",
        "postgres://sb:hunter2@localhost/sb",
        "--to",
        dir.path().join("pg.dump").to_str().unwrap(),
    ])
    .await;
    assert_ne!(code, 0);
    assert!(
        err.contains("pg_dump") && err.contains("pg_basebackup"),
        "{err}"
    );
    assert!(!err.contains("hunter2"), "the password is not shown: {err}");
    assert!(!dir.path().join("pg.dump").exists());

    let missing = dir.path().join("nothing-here.db");
    let (code, _, err) = backup(&missing, &dir.path().join("x.db"), &[]).await;
    assert_ne!(code, 0);
    assert!(err.contains("no database"), "{err}");
    assert!(!missing.exists(), "backup does not create a database");
    server.stop().await;
}

/// A file made before `auto_vacuum = INCREMENTAL` was the default (NONE)
/// is backed up as an INCREMENTAL copy that holds the same tasks, and the
/// live file is left as it was: backing up is how such a file is
/// converted (README, Retention: Space).
#[tokio::test]
async fn a_backup_of_an_old_file_is_an_incremental_copy() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("old.db");
    let auto_vacuum = |file: &Path| -> i64 {
        let c = rusqlite::Connection::open(file).unwrap();
        c.query_row("PRAGMA auto_vacuum", [], |r| r.get(0)).unwrap()
    };
    {
        // A table before the node's own: the file keeps auto_vacuum NONE,
        // as every file made before it was switched on.
        let c = rusqlite::Connection::open(&db).unwrap();
        c.execute_batch("PRAGMA auto_vacuum = NONE; CREATE TABLE old_times (a);")
            .unwrap();
    }
    let node = BinaryServer::start(&db, &[]).await;
    let (status, t) = node
        .post(
            "/api/runtime/tasks/submit",
            ADMIN_TOKEN,
            json!({"agent_type": "echo", "prompt": "kept in the copy"}),
        )
        .await;
    assert_eq!(status, 200, "{t}");
    let id = t["task_id"].as_str().unwrap().to_owned();
    let file = dir.path().join("copy.db");
    let (code, out, err) = backup(&db, &file, &[]).await;
    assert_eq!(code, 0, "{out} {err}");
    node.kill9().await;
    assert_eq!(auto_vacuum(&db), 0, "the live file is not rewritten");
    assert_eq!(auto_vacuum(&file), 2, "the copy is INCREMENTAL");
    let restored = BinaryServer::start(&file, &[]).await;
    let (status, task) = restored
        .get(&format!("/api/runtime/tasks/{id}"), ADMIN_TOKEN)
        .await;
    assert_eq!(status, 200, "{task}");
    restored.kill9().await;
}

/// Poll until `done` (the writers are on other threads).
async fn wait_for(mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "timed out");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The tasks among `acked` that the node says have ended, asked now.
async fn ended_among(node: &BinaryServer, acked: &[Acked]) -> HashSet<String> {
    let mut ended = HashSet::new();
    for a in acked {
        let (status, body) = node
            .get(
                &format!("/api/runtime/tasks/{}/state", a.task_id),
                ADMIN_TOKEN,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        if TERMINAL.contains(&body["state"].as_str().unwrap()) {
            ended.insert(a.task_id.clone());
        }
    }
    ended
}

/// `switchboard ARGS...`: (exit code, stdout, stderr).
async fn run(args: &[&str]) -> (i32, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("SWITCHBOARD_DATABASE_URL")
        .env_remove("SWITCHBOARD_AUDIT_KEY")
        .output()
        .await
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// `switchboard backup --database sqlite://DB --to FILE EXTRA...`.
async fn backup(db: &Path, file: &Path, extra: &[&str]) -> (i32, String, String) {
    let url = format!("sqlite://{}", db.display());
    let mut args = vec!["backup", "--database", &url, "--to", file.to_str().unwrap()];
    args.extend_from_slice(extra);
    run(&args).await
}

/// The copy on its own: intact, and every session's events 1..N.
fn check_file(file: &Path) {
    let conn =
        rusqlite::Connection::open_with_flags(file, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let integrity: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(integrity, "ok");
    let mut q = conn
        .prepare("SELECT sid, COUNT(*), MIN(seq), MAX(seq) FROM events GROUP BY sid")
        .unwrap();
    let streams: Vec<(i64, i64, i64, i64)> = q
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert!(streams.len() >= WRITERS, "{streams:?}");
    for (sid, n, lo, hi) in streams {
        assert_eq!((lo, hi), (1, n), "session {sid} has a gap or a duplicate");
    }
    let key = PathBuf::from(format!("{}.audit-key", file.display()));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&key).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the audit key copy is private");
}

/// A new node on the copy serves every task acknowledged before the backup,
/// with its events, and its audit log verifies.
async fn restore_and_check(s: &Snapshot, args: &[&str]) {
    let node = BinaryServer::start(&s.file, args).await;
    for a in &s.acked {
        let (status, task) = node
            .get(&format!("/api/runtime/tasks/{}", a.task_id), ADMIN_TOKEN)
            .await;
        assert_eq!(status, 200, "task {} is missing: {task}", a.task_id);
        let events = task["events"].as_array().unwrap();
        assert_eq!(events[0]["state"], "pending", "{task}");
        if s.ended.contains(&a.task_id) {
            let last = events.last().unwrap();
            assert_eq!(last["event_type"], "state_change", "{task}");
            assert!(
                TERMINAL.contains(&last["state"].as_str().unwrap()),
                "the terminal event of {} is missing: {task}",
                a.task_id
            );
            assert_eq!(task["state"], last["state"]);
        }
    }
    let (status, online) = node.get("/api/audit/verify", ADMIN_TOKEN).await;
    assert_eq!(status, 200, "{online}");
    assert_eq!(online["ok"], true, "{online}");
    assert!(online["checkpoints"].as_u64().unwrap() >= 1, "{online}");

    let url = format!("sqlite://{}", s.file.display());
    let (code, out, err) = run(&["audit", "verify", "--database", &url]).await;
    assert_eq!(code, 0, "{out} {err}");
    let offline: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(offline["ok"], true, "{offline}");
    assert!(
        !err.contains("no audit key"),
        "the key was found beside the copy: {err}"
    );
    node.kill9().await;
}
