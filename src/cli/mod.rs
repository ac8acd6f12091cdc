//! The `switchboard` binary as a terminal client of any node, local or
//! remote. `protocol/cli.md` documents every command, flag and exit code.
//!
//! - [`config`]: stored servers, tokens and reused sessions (`servers.toml`,
//!   mode 0600) and which server and token a command uses.
//! - [`client`]: REST calls, and a WebSocket connection that reuses the
//!   user's session on the node, reconnects and resumes with `hello`
//!   `session_id` + `after_seq`.
//! - [`tls`]: `https://` and `wss://` with rustls, and `--ca-cert`.
//! - One file per command group: [`login`], [`run`] (`run`, `attach`),
//!   [`watch`], [`tasks`] (tasks, cancel, approve, deny, agents, skills,
//!   sessions), [`admin`] (users, devices), [`console`], [`hosts`]
//!   (`host list`; `link` itself is [`crate::host`]).
//! - [`output`]: human rendering and `--json`.
//! - [`backup`]: `switchboard backup`, a copy of a live SQLite database
//!   (a local command, not a client of a node).

pub mod admin;
pub mod backup;
pub mod client;
pub mod config;
pub mod console;
pub mod hosts;
pub mod login;
pub mod output;
pub mod run;
pub mod tasks;
pub mod tls;
pub mod watch;

use std::fmt;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use serde_json::Value;
use uuid::Uuid;

/// Exit codes of the client commands (documented in `protocol/cli.md`).
pub mod exit {
    /// Success; for `run` and `attach`: the task completed.
    pub const OK: u8 = 0;
    /// The task failed.
    pub const TASK_FAILED: u8 = 1;
    /// Bad usage or a local problem (flags, config file, stdin).
    pub const USAGE: u8 = 2;
    /// The node could not be reached (or not securely: TLS failed).
    pub const UNREACHABLE: u8 = 3;
    /// The token was refused (401).
    pub const UNAUTHORIZED: u8 = 4;
    /// The action is not allowed for this user (403).
    pub const FORBIDDEN: u8 = 5;
    /// No such task, session, user or endpoint (404).
    pub const NOT_FOUND: u8 = 6;
    /// Any other error answered by the node (bad request, unknown agent,
    /// conflict, server error).
    pub const SERVER: u8 = 7;
    /// The task was cancelled, or the command was interrupted (Ctrl-C).
    pub const INTERRUPTED: u8 = 130;
}

/// The exit codes, for `--help`.
const EXIT_CODES: &str = "Exit codes: 0 completed, 1 failed, 130 cancelled or Ctrl-C; \
2 usage, 3 node unreachable, 4 bad token, 5 forbidden, 6 not found, 7 other node error.";

/// Options every client command takes. They are global: they may come
/// before or after the subcommand.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Common {
    /// Client commands: the node, as a name stored by `login` or a URL.
    #[arg(
        long,
        global = true,
        env = "SWITCHBOARD_SERVER",
        value_name = "NAME|URL"
    )]
    pub server: Option<String>,
    /// Client commands: the bearer token, overriding the stored one.
    #[arg(long, global = true, env = "SWITCHBOARD_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Client commands: print JSON (one object per line for streams).
    #[arg(long, global = true)]
    pub json: bool,
    /// Client commands: a PEM file of CA certificates to trust besides the
    /// public ones, for an https:// node with a private or self-signed
    /// certificate (`login` stores it with the server).
    #[arg(long, global = true, env = "SWITCHBOARD_CA_CERT", value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,
}

/// The client commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Store a node's URL and token (verified with GET /api/me).
    Login(login::LoginArgs),
    /// Submit a task and stream its output until it ends.
    #[command(after_help = EXIT_CODES)]
    Run(run::RunArgs),
    /// Show a task's events so far, then follow it until it ends.
    #[command(after_help = EXIT_CODES)]
    Attach(run::AttachArgs),
    /// Tail a session's events or the audit log, live.
    Watch(watch::WatchArgs),
    /// List tasks, newest first.
    Tasks(tasks::TasksArgs),
    /// Cancel a task.
    Cancel {
        /// The task.
        task_id: Uuid,
    },
    /// Approve a waiting task.
    Approve {
        /// The task.
        task_id: Uuid,
        /// Text to hand to the agent with the approval.
        #[arg(long)]
        input: Option<String>,
    },
    /// Deny a waiting task (it fails).
    Deny {
        /// The task.
        task_id: Uuid,
    },
    /// List the node's agents.
    Agents,
    /// List the node's skills.
    Skills,
    /// List sessions (your own; everyone's with admin:system).
    Sessions,
    /// Manage users, roles, grants and tokens (admin:users).
    User {
        #[command(subcommand)]
        command: admin::UserCommand,
    },
    /// Manage devices (admin:users).
    Device {
        #[command(subcommand)]
        command: admin::DeviceCommand,
    },
    /// An interactive prompt: each line goes to an agent, answered live.
    Console(console::ConsoleArgs),
    /// Offer this machine's agents to a node: link out and run its tasks
    /// (needs agent:configure; see protocol/link.md).
    Link(crate::host::LinkArgs),
    /// Remote agent hosts linked to the node.
    Host {
        #[command(subcommand)]
        command: hosts::HostCommand,
    },
}

/// Run a client command and turn its outcome into an exit code, printing
/// errors as `switchboard: error: ...` on stderr.
pub async fn main(common: Common, command: Command) -> ExitCode {
    match dispatch(&common, command).await {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            if common.json {
                eprintln!(
                    "{}",
                    serde_json::json!({"error": {"code": e.code(), "message": e.to_string()}})
                );
            } else {
                eprintln!("switchboard: error: {e}");
            }
            ExitCode::from(e.exit_code())
        }
    }
}

async fn dispatch(common: &Common, command: Command) -> Result<u8, CliError> {
    let out = output::Out::new(common.json);
    match command {
        Command::Login(args) => login::login(common, args, out).await,
        Command::Run(args) => run::run(common, args, out).await,
        Command::Attach(args) => run::attach(common, args, out).await,
        Command::Watch(args) => watch::watch(common, args, out).await,
        Command::Tasks(args) => tasks::list(common, args, out).await,
        Command::Cancel { task_id } => tasks::cancel(common, task_id, out).await,
        Command::Approve { task_id, input } => {
            tasks::respond(common, task_id, true, input, out).await
        }
        Command::Deny { task_id } => tasks::respond(common, task_id, false, None, out).await,
        Command::Agents => tasks::agents(common, out).await,
        Command::Skills => tasks::skills(common, out).await,
        Command::Sessions => tasks::sessions(common, out).await,
        Command::User { command } => admin::user(common, command, out).await,
        Command::Device { command } => admin::device(common, command, out).await,
        Command::Console(args) => console::console(common, args, out).await,
        Command::Link(args) => crate::host::link(common, args).await,
        Command::Host { command } => hosts::host(common, command, out).await,
    }
}

/// What can go wrong in a client command.
#[derive(Debug)]
pub enum CliError {
    /// Bad flags or a local problem.
    Usage(String),
    /// The node did not answer.
    Unreachable {
        /// The node's base URL.
        url: String,
        /// Why, e.g. "connection refused".
        reason: String,
    },
    /// No trusted TLS connection could be made (most often: the node's
    /// certificate is not signed by a CA the client trusts).
    Tls {
        /// The node's base URL.
        url: String,
        /// What went wrong, and the fix.
        reason: String,
    },
    /// The node answered with an error.
    Server {
        /// The HTTP status, when the error came over REST.
        status: Option<u16>,
        /// The error code (`forbidden`, `unknown_agent`, ...).
        code: String,
        /// The node's message.
        message: String,
        /// The node's base URL.
        url: String,
    },
    /// Anything else.
    Other(String),
}

impl CliError {
    /// A connection failure, worded from the innermost cause.
    pub fn unreachable(url: &str, err: &(dyn std::error::Error + 'static)) -> Self {
        if let Some(tls) = tls::tls_cause(err) {
            return CliError::Tls {
                url: url.to_owned(),
                reason: tls::describe(tls),
            };
        }
        let mut reason = err.to_string();
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
        while let Some(e) = cur {
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                reason = match io.kind() {
                    std::io::ErrorKind::ConnectionRefused => "connection refused".into(),
                    std::io::ErrorKind::ConnectionReset => "connection reset".into(),
                    std::io::ErrorKind::TimedOut => "timed out".into(),
                    _ => io.to_string(),
                };
                break;
            }
            reason = e.to_string();
            cur = e.source();
        }
        CliError::Unreachable {
            url: url.to_owned(),
            reason,
        }
    }

    /// An error from a reply body `{"error":{"code","message"}}`.
    pub fn from_body(status: Option<u16>, body: &Value, url: &str) -> Self {
        let code = body["error"]["code"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| match status {
                Some(401) => "unauthorized".into(),
                Some(403) => "forbidden".into(),
                Some(404) => "not_found".into(),
                _ => "error".into(),
            });
        let message = body["error"]["message"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| match status {
                Some(s) => format!("HTTP {s}"),
                None => "request failed".into(),
            });
        CliError::Server {
            status,
            code,
            message,
            url: url.to_owned(),
        }
    }

    /// The error code: the node's, or `usage`, `unreachable`, `error`.
    pub fn code(&self) -> &str {
        match self {
            CliError::Usage(_) => "usage",
            CliError::Unreachable { .. } => "unreachable",
            CliError::Tls { .. } => "tls",
            CliError::Server { code, .. } => code,
            CliError::Other(_) => "error",
        }
    }

    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) | CliError::Other(_) => exit::USAGE,
            CliError::Unreachable { .. } | CliError::Tls { .. } => exit::UNREACHABLE,
            CliError::Server { code, .. } => match code.as_str() {
                "unauthorized" => exit::UNAUTHORIZED,
                "forbidden" => exit::FORBIDDEN,
                "not_found" => exit::NOT_FOUND,
                _ => exit::SERVER,
            },
        }
    }

    /// Whether waiting and retrying may help (for reconnects).
    pub fn is_transient(&self) -> bool {
        match self {
            CliError::Unreachable { .. } => true,
            CliError::Server { code, .. } => matches!(code.as_str(), "unavailable" | "internal"),
            _ => false,
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Usage(m) | CliError::Other(m) => f.write_str(m),
            CliError::Unreachable { url, reason } => write!(f, "cannot reach {url}: {reason}"),
            CliError::Tls { url, reason } => {
                write!(f, "cannot connect securely to {url}: {reason}")
            }
            CliError::Server {
                code, message, url, ..
            } => match code.as_str() {
                "unauthorized" => write!(
                    f,
                    "authentication failed{}: {message} (check --token, SWITCHBOARD_TOKEN or `switchboard login`)",
                    if url.is_empty() {
                        String::new()
                    } else {
                        format!(" at {url}")
                    }
                ),
                "forbidden" => write!(f, "forbidden: {message}"),
                "not_found" => write!(f, "not found: {message}"),
                "unknown_agent" => write!(f, "unknown agent: {message}"),
                _ => write!(f, "{message} ({code})"),
            },
        }
    }
}

impl std::error::Error for CliError {}

/// The exit code for a task's final state.
pub fn exit_for_state(state: &str) -> u8 {
    match state {
        "completed" => exit::OK,
        "cancelled" => exit::INTERRUPTED,
        _ => exit::TASK_FAILED,
    }
}
