//! `switchboard backup`: a consistent copy of a live SQLite node's database,
//! taken without stopping the node.
//!
//! The copy is made with `VACUUM INTO` on a connection of its own. That
//! statement reads the database inside one read transaction, so the copy
//! is the database as of one commit: every write acknowledged before the
//! backup began is in it, none is half in it. Thanks to WAL the node keeps
//! writing meanwhile (its WAL only grows until the copy is done). The copy
//! is written to a temporary file beside the target, synced, checked with
//! `PRAGMA quick_check`, and renamed into place, so FILE is never a
//! half-written database.
//!
//! The node's audit key file (`DB.audit-key`), when there is one, is copied
//! to `FILE.audit-key` (mode 0600): the copy's signed audit checkpoints were
//! made with that key, and a node started on the copy without it would make
//! a new key and find its own checkpoints "forged". The checkpoint file
//! (`DB.checkpoints.jsonl`) is not copied: it may name records written after
//! the snapshot, and the copy holds its checkpoints in its own table.
//!
//! A copy is always `auto_vacuum = INCREMENTAL`, even of a file made before
//! that was the default (converted on the copy, never on the live file): a
//! node restored from it gives pruned space back, and backing up a stopped
//! node and putting the copy in place converts such a file with the tools
//! we ship (the README's Retention section says so).
//!
//! PostgreSQL is refused with a pointer to its own tools (`pg_dump`,
//! `pg_basebackup`), which do this job better than anything we could.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rusqlite::{Connection, OpenFlags};

use crate::config::{redact_url, suffixed};

/// `switchboard backup --database URL --to FILE [--force]`.
#[derive(Debug, Clone, clap::Args)]
pub struct BackupArgs {
    /// The database to copy: `sqlite://PATH`. A node may be running on it.
    #[arg(long, env = "SWITCHBOARD_DATABASE_URL")]
    pub database: String,
    /// The file to write the copy to.
    #[arg(long, value_name = "FILE")]
    pub to: PathBuf,
    /// Replace FILE (and FILE.audit-key) when they exist.
    #[arg(long)]
    pub force: bool,
}

/// What a backup did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Backup {
    /// The database that was copied.
    pub source: PathBuf,
    /// The copy.
    pub path: PathBuf,
    /// The copy's size in bytes.
    pub bytes: u64,
    /// How long it took, in seconds.
    pub seconds: f64,
    /// Where the audit key was copied to, when the source had one beside it.
    pub audit_key: Option<PathBuf>,
}

/// Run the command: copy, then print what was done (JSON with `--json`).
pub async fn run(args: BackupArgs, json: bool) -> anyhow::Result<()> {
    let done = tokio::task::spawn_blocking(move || backup(&args))
        .await
        .context("the backup thread failed")??;
    if json {
        println!("{}", serde_json::to_string(&done)?);
    } else {
        println!(
            "backed up {} to {} ({}) in {:.2} s",
            done.source.display(),
            done.path.display(),
            human_bytes(done.bytes),
            done.seconds
        );
        if let Some(key) = &done.audit_key {
            println!("copied the audit key to {} (mode 0600)", key.display());
        }
    }
    Ok(())
}

/// Copy the database `args.database` names to `args.to` (blocking).
pub fn backup(args: &BackupArgs) -> anyhow::Result<Backup> {
    let started = Instant::now();
    let source = source_path(&args.database)?;
    let key_from = suffixed(&source, ".audit-key");
    let key_to = suffixed(&args.to, ".audit-key");
    let copy_key = key_from.is_file();
    check_target(
        &source,
        &args.to,
        copy_key.then_some(key_to.as_path()),
        args.force,
    )?;

    let tmp = suffixed(&args.to, &format!(".partial-{:08x}", rand::random::<u32>()));
    let made = snapshot(&source, &tmp).and_then(|()| {
        if args.force {
            // A WAL left by an old database at FILE would be replayed into
            // the new one: it must go with the file it belonged to.
            for suffix in ["-wal", "-shm"] {
                remove_if_exists(&suffixed(&args.to, suffix))?;
            }
        }
        std::fs::rename(&tmp, &args.to)
            .with_context(|| format!("cannot move the copy to {}", args.to.display()))?;
        sync_dir(&args.to)
    });
    if let Err(e) = made {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    let audit_key = if copy_key {
        let key = std::fs::read_to_string(&key_from)
            .with_context(|| format!("cannot read the audit key {}", key_from.display()))?;
        crate::write_secret(&key_to, key.trim())
            .with_context(|| format!("cannot write the audit key {}", key_to.display()))?;
        Some(key_to)
    } else {
        None
    };
    let bytes = std::fs::metadata(&args.to)?.len();
    Ok(Backup {
        source,
        path: args.to.clone(),
        bytes,
        seconds: started.elapsed().as_secs_f64(),
        audit_key,
    })
}

/// The SQLite file of a database URL, refusing PostgreSQL with the tools
/// that back it up.
fn source_path(url: &str) -> anyhow::Result<PathBuf> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        bail!(
            "switchboard backup copies SQLite databases only; back up PostgreSQL ({}) with its \
             own tools: `pg_dump --format=custom --file=switchboard.dump URL` for a logical copy \
             of this database, or `pg_basebackup --pgdata=DIR` for the whole server \
             (see the README, \"Backup and restore\")",
            redact_url(url)
        );
    }
    let Some(path) = crate::store::sqlite_path(url) else {
        bail!(
            "unsupported database URL `{}`: expected sqlite://PATH",
            redact_url(url)
        );
    };
    let path = PathBuf::from(path);
    if !path.is_file() {
        bail!("no database at {}", path.display());
    }
    Ok(path)
}

/// Refuse to overwrite anything without `--force`, and the source always.
fn check_target(source: &Path, to: &Path, key: Option<&Path>, force: bool) -> anyhow::Result<()> {
    if let (Ok(a), Ok(b)) = (source.canonicalize(), to.canonicalize()) {
        if a == b {
            bail!(
                "{} is the database itself: choose another file",
                to.display()
            );
        }
    }
    for path in std::iter::once(to).chain(key) {
        if path.exists() && !force {
            bail!(
                "{} already exists; pass --force to replace it",
                path.display()
            );
        }
    }
    if to.is_dir() {
        bail!("{} is a directory; give a file name", to.display());
    }
    Ok(())
}

/// `VACUUM INTO tmp` from a read-only connection of our own, then sync the
/// copy and check it.
fn snapshot(source: &Path, tmp: &Path) -> anyhow::Result<()> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(source, flags)
        .with_context(|| format!("cannot open {}", source.display()))?;
    // The node's writer holds the write lock only while it commits; a read
    // transaction waits at most this long for the rare moment it needs.
    conn.busy_timeout(Duration::from_secs(30))?;
    let tables: i64 = conn.query_row(
        "SELECT COUNT(*) FROM sqlite_schema WHERE type = 'table' \
         AND name IN ('audit', 'events', 'tasks', 'sessions')",
        [],
        |r| r.get(0),
    )?;
    if tables != 4 {
        bail!("{} is not a Switchboard database", source.display());
    }
    let target = tmp
        .to_str()
        .context("the backup file name is not valid UTF-8")?;
    conn.execute("VACUUM INTO ?1", [target])
        .with_context(|| format!("cannot copy {} to {}", source.display(), tmp.display()))?;
    drop(conn);
    incremental(tmp)?;
    // SQLite does not sync what VACUUM INTO wrote.
    std::fs::File::open(tmp)?.sync_all()?;
    let copy = Connection::open_with_flags(tmp, flags)?;
    let check: String = copy.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
    if check != "ok" {
        bail!("the copy failed its integrity check: {check}");
    }
    Ok(())
}

/// Make the copy `auto_vacuum = INCREMENTAL` when its source was made
/// before that was the default (`NONE`), so that a node restored from it
/// gives pruned space back. SQLite changes that only with a full `VACUUM`,
/// which is done here on the copy (no one else has it open), never on the
/// live database.
fn incremental(copy: &Path) -> anyhow::Result<()> {
    let conn = Connection::open(copy)?;
    let mode: i64 = conn.query_row("PRAGMA auto_vacuum", [], |r| r.get(0))?;
    if mode != 2 {
        conn.execute_batch("PRAGMA auto_vacuum = INCREMENTAL; VACUUM;")
            .context("cannot make the copy auto_vacuum = INCREMENTAL")?;
    }
    Ok(())
}

fn remove_if_exists(path: &Path) -> anyhow::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("cannot remove {}", path.display()))
        }
        _ => Ok(()),
    }
}

/// Sync the directory holding `file`, so that its rename survives a crash.
fn sync_dir(file: &Path) -> anyhow::Result<()> {
    let dir = match file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

/// `1.2 MiB`.
fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut size = n as f64;
    let mut unit = 0;
    while size >= 1024.0 && unit + 1 < UNITS.len() {
        size /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{size:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sizes read the way `ls -h` would print them.
    #[test]
    fn sizes_are_human() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 * 1024 * 1024), "3.0 MiB");
    }

    /// PostgreSQL is refused with the tools that back it up, and without
    /// the password.
    #[test]
    fn postgres_is_refused_with_a_pointer() {
        let err = source_path("postgres://sb:secret@db/sb")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("pg_dump") && err.contains("pg_basebackup"),
            "{err}"
        );
        assert!(!err.contains("secret"), "{err}");
    }
}
