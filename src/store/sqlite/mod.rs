//! The embedded store: one SQLite file in WAL mode, `synchronous = FULL`.
//!
//! One thread writes ([`writer`]): every write of the node is a job on its
//! queue, and the hot ones commit together (group commit). Reads run on a
//! small pool of read-only connections on tokio's blocking threads, and
//! proceed concurrently with the writer thanks to WAL.
//!
//! rusqlite rather than sqlx here: sqlx's SQLite driver runs each statement
//! through a worker thread and a channel, which cost about 60% of the
//! node's CPU in the stream benchmark; a thread that owns its connection
//! and prepared statements does the same work in a fraction of it (see the
//! README's performance section). sqlx still runs the migrations, and the
//! PostgreSQL store.

mod audit_keys;
mod counts;
mod hot;
mod projects;
mod prune;
pub(crate) use prune::usable_checkpoint;
mod read;
mod rest;
pub(crate) mod rows;
mod sessions;
mod storage;
mod writer;

use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dashmap::DashMap;
use rusqlite::{Connection, OpenFlags, OptionalExtension};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::audit::NewAudit;
use crate::bus::Bus;
use crate::error::{Error, Result};
use crate::store::writer::{EventWriter, QUEUE};

pub use audit_keys::MAX_TAIL as AUDIT_KEYS_MAX_TAIL;
pub use writer::{Job, Writer};
use writer::{SessionSlot, TaskSlot};

/// Read connections at most (each read runs on a blocking thread: the
/// binary sizes tokio's blocking pool from this).
pub const READERS: usize = 4;
/// Page cache of the writer, in KiB: the hot ends of the indexes.
const WRITER_CACHE_KIB: i64 = 4096;
/// Page cache of each reader, in KiB.
const READER_CACHE_KIB: i64 = 1024;

/// Whether stores opened from now on run their writer as a task of the
/// current runtime rather than on a thread of its own (see
/// [`Writer::run_inline`]). The binary's `serve --event-loop` sets it, with
/// a single-threaded runtime; it takes effect only on one.
static INLINE: AtomicBool = AtomicBool::new(false);

/// Ask for (or stop asking for) writers that commit on the runtime's thread.
pub fn commit_inline(on: bool) {
    INLINE.store(on, Ordering::Relaxed);
}

fn inline_writer() -> bool {
    use tokio::runtime::{Handle, RuntimeFlavor};
    INLINE.load(Ordering::Relaxed)
        && Handle::try_current().is_ok_and(|h| h.runtime_flavor() == RuntimeFlavor::CurrentThread)
}

/// The SQLite store.
pub struct SqliteStore {
    path: String,
    /// The writer thread's queue.
    jobs: mpsc::Sender<Job>,
    /// Idle read connections.
    readers: Mutex<Vec<Connection>>,
    /// Read connections in use at most.
    permits: Semaphore,
    /// Unfinished tasks per user, kept by the writer.
    active: Arc<DashMap<String, i64>>,
}

impl SqliteStore {
    /// Open (creating if missing) the database file at `path`, migrate it
    /// and start its writer thread.
    pub async fn open(path: &str, bus: Arc<Bus>) -> Result<Self, anyhow::Error> {
        migrate(path).await?;
        let conn = open_writer(path)?;
        let active = Arc::new(DashMap::new());
        load_active(&conn, &active)?;
        let (jobs, rx) = mpsc::channel(QUEUE);
        let writer = Writer::new(conn, bus, active.clone());
        rest::watch(&jobs, writer.served.clone());
        if inline_writer() {
            tracing::info!("SQLite commits run on the event loop's thread");
            tokio::spawn(writer.run_inline(rx));
        } else {
            std::thread::Builder::new()
                .name("sqlite-writer".into())
                .spawn(move || writer.run(rx))?;
        }
        Ok(SqliteStore {
            path: path.to_owned(),
            jobs,
            readers: Mutex::new(Vec::new()),
            permits: Semaphore::new(READERS),
            active,
        })
    }

    /// The event writer over this store's writer thread, and a task that
    /// ends once `stop` fired and everything queued before is committed.
    /// (The thread itself runs while the store or a writer exists: the
    /// store still writes after the event writer stops, e.g. the last audit
    /// checkpoint.)
    pub fn event_writer(
        &self,
        stop: CancellationToken,
    ) -> (EventWriter, tokio::task::JoinHandle<()>) {
        let jobs = self.jobs.clone();
        let done = tokio::spawn(async move {
            stop.cancelled().await;
            let (tx, rx) = oneshot::channel();
            if jobs.send(Job::Flush(tx)).await.is_ok() {
                let _ = rx.await;
            }
        });
        (EventWriter::sqlite(self.jobs.clone()), done)
    }

    /// Run `f` on a read connection, on a blocking thread.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let _permit = self.permits.acquire().await.map_err(|_| Error::Internal)?;
        let idle = self.readers.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let conn = match idle {
            Some(c) => c,
            None => open_reader(&self.path)?,
        };
        let (conn, out) = tokio::task::spawn_blocking(move || {
            let out = f(&conn);
            crate::alloc::collect_when_idle();
            (conn, out)
        })
        .await
        .map_err(|e| Error::internal(format!("a store read failed: {e}")))?;
        self.readers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(conn);
        out
    }

    /// Send a job to the writer thread.
    async fn send(&self, job: Job) -> Result<()> {
        self.jobs
            .send(job)
            .await
            .map_err(|_| Error::Unavailable("the node is shutting down".into()))
    }

    /// Run `f` in a transaction of its own on the writer thread; it commits
    /// when `f` returns `Ok`, with the audit records `f` chained.
    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Writer) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        let job: writer::WriteFn = Box::new(move |w| {
            let out = f(w);
            let ok = out.is_ok();
            let finish: Box<dyn FnOnce(Result<()>) + Send> = Box::new(move |committed| {
                let _ = tx.send(committed.and(out));
            });
            (ok, finish)
        });
        self.send(Job::Write(job)).await?;
        rx.await
            .map_err(|_| Error::Unavailable("the node is shutting down".into()))?
    }

    /// Run one statement and its audit records (only when it touched a row);
    /// whether it did.
    async fn change_one(
        &self,
        sql: &'static str,
        params: Vec<rusqlite::types::Value>,
        audit: Vec<NewAudit>,
    ) -> Result<bool> {
        self.write(move |w| {
            let n = w
                .conn
                .prepare_cached(sql)?
                .execute(rusqlite::params_from_iter(params))?;
            if n > 0 {
                w.audit(audit)?;
            }
            Ok(n > 0)
        })
        .await
    }
}

/// Run the migrations (through sqlx, which has always run them, so that
/// existing databases keep their history).
async fn migrate(path: &str) -> Result<(), anyhow::Error> {
    use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
    let options = SqliteConnectOptions::from_str(&format!("sqlite://{path}"))?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        // Takes effect only on a new, empty file (retention gives the
        // space of pruned rows back in small steps, see `prune.rs`); an
        // older file keeps `NONE` and reuses freed pages instead.
        .auto_vacuum(sqlx::sqlite::SqliteAutoVacuum::Incremental)
        .busy_timeout(Duration::from_secs(10));
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await?;
    sqlx::migrate!("src/store/migrations/sqlite")
        .run(&pool)
        .await?;
    pool.close().await;
    Ok(())
}

fn open_writer(path: &str) -> Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(10))?;
    // FULL: a commit is on disk before anyone is told it happened.
    conn.execute_batch(&format!(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON; \
         PRAGMA temp_store = MEMORY; PRAGMA cache_size = -{WRITER_CACHE_KIB};"
    ))?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

fn open_reader(path: &str) -> Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | OpenFlags::SQLITE_OPEN_URI;
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.execute_batch(&format!("PRAGMA cache_size = -{READER_CACHE_KIB};"))?;
    conn.set_prepared_statement_cache_capacity(32);
    Ok(conn)
}

/// Count every user's unfinished tasks into `active`.
pub(crate) fn load_active(conn: &Connection, active: &DashMap<String, i64>) -> Result<()> {
    active.clear();
    let mut stmt = conn.prepare(
        "SELECT t.user_id, COUNT(*) FROM tasks t JOIN task_state s ON s.tid = t.tid \
         WHERE s.state NOT IN ('completed', 'failed', 'cancelled') GROUP BY t.user_id",
    )?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
    for row in rows {
        let (user, n) = row?;
        active.insert(user, n);
    }
    Ok(())
}

/// What the writer needs of a stored session.
fn load_session(conn: &Connection, id: Uuid) -> Result<Option<SessionSlot>> {
    let row = conn
        .prepare_cached(
            "SELECT s.sid, s.user_id, s.state, s.last_activity, \
             COALESCE((SELECT MAX(e.seq) FROM events e WHERE e.sid = s.sid), \
             (SELECT f.pruned_through FROM stream_floor f WHERE f.sid = s.sid), 0) \
             FROM sessions s WHERE s.session_id = ?",
        )?
        .query_row([id.to_string()], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, i64>(4)?,
            ))
        })
        .optional()?;
    Ok(
        row.map(|(sid, user_id, state, activity, last_seq)| SessionSlot {
            sid,
            last_seq,
            user_id,
            active: state == "active",
            activity: rows::time(&activity).map_or(0, |t| t.timestamp()),
        }),
    )
}

/// What the writer needs of a stored task.
fn load_task(conn: &Connection, id: Uuid) -> Result<Option<TaskSlot>> {
    let row = conn
        .prepare_cached(
            "SELECT t.tid, s.state, t.user_id FROM tasks t JOIN task_state s ON s.tid = t.tid \
             WHERE t.task_id = ?",
        )?
        .query_row([id.to_string()], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
            ))
        })
        .optional()?;
    row.map(|(tid, state, user_id)| {
        Ok(TaskSlot {
            tid,
            state: state.parse().map_err(crate::store::corrupt)?,
            user_id,
        })
    })
    .transpose()
}
