//! The `switchboard` binary: a thin command line over the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use switchboard::config::{Config, FileConfig, default_node_id};

/// A WebSocket-first real-time server for AI agent work.
#[derive(Parser)]
#[command(name = "switchboard", version, about)]
struct Cli {
    #[command(flatten)]
    client: switchboard::cli::Common,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node.
    Serve(ServeArgs),
    /// Work with the audit log of a database, offline.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Copy a live SQLite node's database to FILE, consistently, without
    /// stopping the node (PostgreSQL: use pg_dump or pg_basebackup).
    Backup(switchboard::cli::backup::BackupArgs),
    /// Client commands: talk to a node (see protocol/cli.md).
    #[command(flatten)]
    Client(switchboard::cli::Command),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "SWITCHBOARD_LISTEN", default_value = "127.0.0.1:8787")]
    listen: SocketAddr,
    /// `sqlite://PATH` or `postgres://...` (also read from DATABASE_URL).
    #[arg(long, env = "SWITCHBOARD_DATABASE_URL")]
    database: Option<String>,
    /// TOML file with agents, skills and limits.
    #[arg(long, env = "SWITCHBOARD_CONFIG")]
    config: Option<PathBuf>,
    /// This node's id (default: host name + random suffix).
    #[arg(long, env = "SWITCHBOARD_NODE_ID")]
    node_id: Option<String>,
    /// Run the node as one event loop: sockets, ops and (on SQLite) the
    /// group commits on a single thread, as an event-loop server does.
    /// Less CPU per event; a commit holds up every socket while it runs.
    #[arg(long, env = "SWITCHBOARD_EVENT_LOOP")]
    event_loop: bool,
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check the hash chain and the signed checkpoints, offline; exits 1
    /// naming the first bad record.
    Verify(VerifyArgs),
    /// Print the audit log as JSON Lines, oldest first (to archive what
    /// `[retention] audit` is about to prune: `--before 365d`).
    Export {
        /// The database to read.
        #[arg(long, env = "SWITCHBOARD_DATABASE_URL")]
        database: String,
        /// Only records after this seq.
        #[arg(long, default_value_t = 0)]
        after: i64,
        /// Only records older than this: an RFC 3339 time, or an age
        /// written as in `[retention]` (`30d`, `12h`: older than that).
        #[arg(long, value_parser = parse_before)]
        before: Option<chrono::DateTime<chrono::Utc>>,
    },
}

#[derive(clap::Args)]
struct VerifyArgs {
    /// The database to check.
    #[arg(long, env = "SWITCHBOARD_DATABASE_URL")]
    database: String,
    /// A checkpoint file (JSON Lines) kept outside the database. Default:
    /// the one next to a SQLite file, when present.
    #[arg(long)]
    checkpoints: Option<PathBuf>,
    /// The node's audit key file (its public half is used). Default:
    /// SWITCHBOARD_AUDIT_KEY, else the key file next to a SQLite file.
    #[arg(long, conflicts_with = "public_key")]
    key_file: Option<PathBuf>,
    /// The node's public audit key, as hex.
    #[arg(long)]
    public_key: Option<String>,
}

fn database_url(flag: Option<String>) -> String {
    flag.or_else(|| std::env::var("DATABASE_URL").ok())
        .unwrap_or_else(|| "sqlite://switchboard.db".into())
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("SWITCHBOARD_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,tower_http=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colour only for people: log files and pipes get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if std::env::var("SWITCHBOARD_LOG_FORMAT").is_ok_and(|f| f == "json") {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let file = match &args.config {
        Some(path) => FileConfig::load(path)?,
        None => FileConfig::default(),
    };
    let config = Config {
        database_url: database_url(args.database),
        node_id: args.node_id.unwrap_or_else(default_node_id),
        admin_token: std::env::var("SWITCHBOARD_ADMIN_TOKEN")
            .ok()
            .filter(|t| !t.is_empty()),
        file,
    };
    let listener = switchboard::bind(args.listen)
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", args.listen))?;
    switchboard::serve(listener, config, shutdown_signal()).await
}

async fn open_existing(
    database: &str,
) -> anyhow::Result<std::sync::Arc<dyn switchboard::store::Store>> {
    if let Some(path) = switchboard::store::sqlite_path(database) {
        anyhow::ensure!(std::path::Path::new(path).exists(), "no database at {path}");
    }
    let bus = std::sync::Arc::new(switchboard::bus::Bus::new());
    switchboard::store::open(database, bus).await
}

async fn audit_verify(args: VerifyArgs) -> anyhow::Result<bool> {
    use switchboard::audit::checkpoint::{
        CheckpointKey, public_key_from_hex, read_file, verify_with_checkpoints,
    };
    use switchboard::config::suffixed;
    let store = open_existing(&args.database).await?;
    let beside = switchboard::store::sqlite_path(&args.database).map(PathBuf::from);
    let key = if let Some(hex) = &args.public_key {
        Some(public_key_from_hex(hex)?)
    } else if let Some(file) = &args.key_file {
        Some(CheckpointKey::from_hex(&std::fs::read_to_string(file)?)?.public())
    } else if let Some(hex) = std::env::var("SWITCHBOARD_AUDIT_KEY")
        .ok()
        .filter(|k| !k.is_empty())
    {
        Some(CheckpointKey::from_hex(&hex)?.public())
    } else {
        match beside
            .as_ref()
            .map(|p| suffixed(p, ".audit-key"))
            .filter(|p| p.exists())
        {
            Some(file) => Some(CheckpointKey::from_hex(&std::fs::read_to_string(file)?)?.public()),
            None => None,
        }
    };
    let file = args.checkpoints.clone().or_else(|| {
        beside
            .as_ref()
            .map(|p| suffixed(p, ".checkpoints.jsonl"))
            .filter(|p| p.exists())
    });
    let extra = match &file {
        Some(f) => read_file(f)?,
        None => Vec::new(),
    };
    if key.is_none() {
        eprintln!(
            "warning: no audit key given; only the hash chain is checked, not the signed checkpoints"
        );
    }
    let v = verify_with_checkpoints(store.as_ref(), key.as_ref(), &extra).await?;
    println!("{}", serde_json::to_string_pretty(&v)?);
    if !v.ok {
        let at = v
            .first_bad_event_id
            .map(|id| format!(" at event {id}"))
            .unwrap_or_default();
        eprintln!(
            "audit log does not verify{at}: {}",
            v.reason.as_deref().unwrap_or("mismatch")
        );
    }
    Ok(v.ok)
}

/// `--before`: an RFC 3339 time, or an age (`30d`) before now.
fn parse_before(text: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&chrono::Utc));
    }
    let age: switchboard::config::Window = text
        .parse()
        .map_err(|e| format!("{e}, or an RFC 3339 time"))?;
    let age = chrono::Duration::from_std(age.0).map_err(|e| e.to_string())?;
    Ok(chrono::Utc::now() - age)
}

async fn audit_export(
    database: String,
    after: i64,
    before: Option<chrono::DateTime<chrono::Utc>>,
) -> anyhow::Result<()> {
    use std::io::Write;
    let store = open_existing(&database).await?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut after = after;
    loop {
        let page = store.audit_after(after, 1000).await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        for r in page
            .iter()
            .filter(|r| before.is_none_or(|b| r.timestamp < b))
        {
            writeln!(out, "{}", serde_json::to_string(r)?)?;
        }
    }
    out.flush()?;
    Ok(())
}

/// mimalloc rather than the system allocator: it gives freed pages back
/// to the OS, so a node returns to its idle footprint after a burst of
/// connections (glibc's malloc kept that memory for good; see the README's
/// performance section).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's options for a server holding many idle sockets: give freed
/// memory back at once rather than a second later, and commit arena memory
/// as it is used. mimalloc reads them from the environment as the process
/// starts, before `main`, so `serve` executes itself once more with them
/// set (an option the caller set is left alone).
fn tune_allocator() {
    use std::os::unix::process::CommandExt;
    const OPTIONS: [(&str, &str); 2] = [
        ("MIMALLOC_PURGE_DELAY", "0"),
        ("MIMALLOC_ARENA_EAGER_COMMIT", "0"),
    ];
    const DONE: &str = "SWITCHBOARD_ALLOCATOR_TUNED";
    if std::env::var_os(DONE).is_some() {
        return;
    }
    let missing: Vec<_> = OPTIONS
        .iter()
        .filter(|(k, _)| std::env::var_os(k).is_none())
        .collect();
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    if missing.is_empty() {
        return;
    }
    let mut args = std::env::args_os();
    let arg0 = args.next().unwrap_or_else(|| exe.clone().into());
    let mut cmd = std::process::Command::new(&exe);
    cmd.arg0(arg0).args(args).env(DONE, "1");
    for (k, v) in missing {
        cmd.env(k, v);
    }
    // `exec` returns only when it failed.
    let err = cmd.exec();
    eprintln!("switchboard: could not tune the allocator ({err}); going on with its defaults");
}

/// The node's async worker threads: one per core but one, which is left to
/// the store's writer thread (SQLite's commits and their `fsync`s; on
/// PostgreSQL, the database's own work). Measured on two cores with the
/// bench client beside the node: one worker instead of two gave 15 to 30 %
/// more stream deliveries/s for 5 to 10 % less CPU, and the same submit
/// latency; more workers than free cores only add context switches.
/// `TOKIO_WORKER_THREADS`, when set, decides instead.
fn worker_threads() -> Option<usize> {
    if std::env::var_os("TOKIO_WORKER_THREADS").is_some() {
        return None;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    Some(cores.saturating_sub(1).max(1))
}

/// Blocking threads at most: the SQLite store's reads and as many again for
/// file work. Each thread that ever ran keeps a heap of its own, so a burst
/// that spawned dozens left their partly used pages behind.
const BLOCKING_THREADS: usize = 2 * switchboard::store::sqlite::READERS;

/// mimalloc's collection of the calling thread's heap (see `alloc.rs`).
fn collect_heap() {
    // SAFETY: takes no pointers; it only walks the calling thread's heap.
    unsafe { libmimalloc_sys::mi_collect(false) }
}

/// glibc's trim of every malloc arena: SQLite allocates its page caches
/// there, and a freed cache stays in the arena until trimmed.
fn trim_c_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: takes no pointers; glibc locks each arena while it trims it.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(cli.command, Command::Serve(_)) {
        tune_allocator();
    }
    switchboard::alloc::install(collect_heap, trim_c_heap);
    let single = matches!(&cli.command, Command::Serve(args) if args.event_loop);
    switchboard::store::sqlite::commit_inline(single);
    let mut builder = if single {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    builder
        .enable_all()
        .on_thread_park(switchboard::alloc::collect_when_idle)
        .max_blocking_threads(BLOCKING_THREADS);
    if matches!(cli.command, Command::Serve(_)) && !single {
        if let Some(n) = worker_threads() {
            builder.worker_threads(n);
        }
    }
    let runtime = builder.build();
    match runtime {
        Ok(rt) => rt.block_on(run(cli)),
        Err(e) => {
            eprintln!("switchboard: cannot start: {e}");
            ExitCode::from(2)
        }
    }
}

async fn run(cli: Cli) -> ExitCode {
    let command = match cli.command {
        Command::Client(command) => return switchboard::cli::main(cli.client, command).await,
        other => other,
    };
    init_tracing();
    let json = cli.client.json;
    let result = match command {
        Command::Serve(args) => serve(args).await.map(|_| true),
        Command::Audit {
            command: AuditCommand::Verify(args),
        } => audit_verify(args).await,
        Command::Audit {
            command:
                AuditCommand::Export {
                    database,
                    after,
                    before,
                },
        } => audit_export(database, after, before).await.map(|_| true),
        Command::Backup(args) => switchboard::cli::backup::run(args, json)
            .await
            .map(|_| true),
        Command::Client(_) => unreachable!("handled above"),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("switchboard: {e:#}");
            ExitCode::from(2)
        }
    }
}
