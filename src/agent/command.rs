//! The `command` kind: runs a local program, such as `claude -p`, `goose
//! run`, `aider` or `ollama run`, once per task.
//!
//! - argv comes from the config with `{prompt}` replaced as one argument,
//!   never through a shell; or the prompt goes to stdin (`stdin = true`).
//! - The program runs in its own process group, in `cwd`, with only the
//!   allow-listed environment ([`DEFAULT_ENV`] when the config says nothing).
//! - stdout streams as output chunks; the last [`STDERR_TAIL`] bytes of
//!   stderr are kept for the error.
//! - Exit 0 completes with the whole stdout; anything else fails with the
//!   exit status and the stderr tail.
//! - Stopping (cancel, deny, timeout, shutdown: the future is dropped) sends
//!   SIGTERM to the whole group, then SIGKILL after the grace period. When
//!   the program exits by itself, whatever it left running in its group is
//!   stopped the same way: no orphan survives.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use async_trait::async_trait;
use nix::unistd::Pid;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};
use tokio_util::task::TaskTracker;

use crate::agent::coalesce::Output;
use crate::agent::{Agent, AgentError, AgentInfo, Context, Job};
use crate::config::AgentConfig;

mod group;
mod utf8;

use group::GroupGuard;
pub use group::stop_group;
use utf8::Utf8Stream;

/// Environment variables passed when the config has no `env` list: enough
/// for a program to find its tools, its home and its locale; no secrets.
pub const DEFAULT_ENV: [&str; 10] = [
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LC_ALL", "LC_CTYPE", "TERM", "TMPDIR",
];
/// Bytes of stderr kept for the error message.
pub const STDERR_TAIL: usize = 4096;
/// Time between SIGTERM and SIGKILL when the config does not say.
pub const DEFAULT_KILL_GRACE: Duration = Duration::from_secs(2);

/// The reapers still escalating SIGTERM to SIGKILL; `serve` waits for them
/// before it returns so that a node shutting down leaves no orphan either.
pub fn reapers() -> &'static TaskTracker {
    static REAPERS: OnceLock<TaskTracker> = OnceLock::new();
    REAPERS.get_or_init(TaskTracker::new)
}

/// A configured command agent whose program was found.
pub struct CommandAgent {
    info: AgentInfo,
    program: PathBuf,
    args: Vec<String>,
    stdin: bool,
    cwd: Option<PathBuf>,
    env: Vec<(String, String)>,
    grace: Duration,
}

impl CommandAgent {
    /// Build from the config, or say why it cannot run here.
    pub fn new(c: &AgentConfig) -> Result<Self, String> {
        let wanted = c.command.first().ok_or("no command is configured")?;
        let program = find_program(wanted)?;
        if let Some(dir) = &c.cwd {
            if !dir.is_dir() {
                return Err(format!(
                    "working directory `{}` does not exist",
                    dir.display()
                ));
            }
        }
        let env = match &c.env {
            Some(list) => resolve_env(list.iter().map(String::as_str)),
            None => resolve_env(DEFAULT_ENV.iter().copied()),
        };
        Ok(CommandAgent {
            info: AgentInfo::configured(
                &c.name,
                &c.description,
                &c.capabilities,
                json!({"kind": "command", "program": program.display().to_string()}),
            ),
            program,
            args: c.command[1..].to_vec(),
            stdin: c.stdin,
            cwd: c.cwd.clone(),
            env,
            grace: c
                .kill_grace_ms
                .map(Duration::from_millis)
                .unwrap_or(DEFAULT_KILL_GRACE),
        })
    }

    fn spawn(&self, prompt: &str) -> std::io::Result<Child> {
        let mut cmd = Command::new(&self.program);
        cmd.args(self.args.iter().map(|a| a.replace("{prompt}", prompt)))
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .process_group(0)
            .stdin(if self.stdin {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(dir) = &self.cwd {
            cmd.current_dir(dir);
        }
        cmd.spawn()
    }
}

/// The params a command task accepts.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    /// Handled by the gate; accepted here.
    #[serde(default)]
    #[expect(dead_code, reason = "read by the gate, accepted here")]
    timeout_ms: Option<u64>,
}

#[async_trait]
impl Agent for CommandAgent {
    fn info(&self) -> AgentInfo {
        let mut info = self.info.clone();
        // Removed (or made not executable) since the node started: say so
        // now, not when a task fails to spawn it.
        if !executable(&self.program) {
            info.available = false;
            info.metadata["reason"] = json!(format!(
                "program `{}` is gone (removed or no longer executable since the node started)",
                self.program.display()
            ));
        }
        info
    }

    fn validate(&self, params: &Value) -> Result<(), String> {
        serde_json::from_value::<Params>(params.clone())
            .map(|_| ())
            .map_err(|e| format!("bad params for a command agent: {e}"))
    }

    async fn run(&self, job: Job, ctx: Context) -> Result<String, AgentError> {
        let mut child = self.spawn(&job.prompt).map_err(|e| {
            AgentError::Failed(format!("cannot start `{}`: {e}", self.program.display()))
        })?;
        let Some(pid) = child.id() else {
            return Err(AgentError::Failed("the program exited at once".into()));
        };
        let pgid = Pid::from_raw(pid as i32);
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let stdin = child.stdin.take();
        // From here on, however this future ends (dropped on cancel or
        // timeout included), the group is stopped.
        let mut guard = GroupGuard {
            child: Some(child),
            pgid,
            grace: self.grace,
        };
        if let Some(mut w) = stdin {
            let prompt = job.prompt.clone();
            // A separate task: the program may write before it reads all of
            // stdin. A program that never reads gets EPIPE, which is fine.
            tokio::spawn(async move {
                let _ = w.write_all(prompt.as_bytes()).await;
                let _ = w.shutdown().await;
            });
        }
        let tail = tokio::spawn(stderr_tail(stderr));
        let status = stream_stdout(&mut guard, stdout, &ctx).await?;
        let text = status.1;
        let status = status.0;
        let tail = tail.await.unwrap_or_default();
        if status.success() {
            Ok(text)
        } else {
            let how = match (
                status.code(),
                std::os::unix::process::ExitStatusExt::signal(&status),
            ) {
                (Some(code), _) => format!("exited with status {code}"),
                (None, Some(sig)) => format!("was killed by signal {sig}"),
                _ => "ended abnormally".to_owned(),
            };
            let tail = tail.trim();
            Err(AgentError::Failed(if tail.is_empty() {
                format!("`{}` {how}", self.program.display())
            } else {
                format!("`{}` {how}; stderr: {tail}", self.program.display())
            }))
        }
    }
}

/// Stream stdout as coalesced output until the program has exited and
/// stdout is closed. Returns the exit status and the whole stdout.
async fn stream_stdout(
    guard: &mut GroupGuard,
    stdout: Option<tokio::process::ChildStdout>,
    ctx: &Context,
) -> Result<(std::process::ExitStatus, String), AgentError> {
    let mut out = Output::new(ctx);
    let mut decoder = Utf8Stream::default();
    let mut stdout = stdout;
    let mut buf = vec![0u8; 8192];
    let mut status = None;
    let child = guard
        .child
        .as_mut()
        .expect("the child is held until the end");
    while status.is_none() || stdout.is_some() {
        tokio::select! {
            n = read_some(&mut stdout, &mut buf), if stdout.is_some() => match n {
                Ok(0) | Err(_) => stdout = None,
                Ok(n) => out.push(&decoder.push(&buf[..n])).await?,
            },
            s = child.wait(), if status.is_none() => {
                let s = s.map_err(|e| AgentError::Failed(format!("cannot wait for the program: {e}")))?;
                status = Some(s);
                // The leader is gone; whatever it left in its group (which
                // may be holding stdout open) is stopped in the background.
                reapers().spawn(stop_group(guard.pgid, guard.grace));
            }
            _ = out.due() => out.flush().await?,
        }
    }
    guard.disarm();
    out.push(&decoder.finish()).await?;
    let text = out.finish().await?;
    Ok((status.expect("loop ends after exit"), text))
}

async fn read_some(
    r: &mut Option<tokio::process::ChildStdout>,
    buf: &mut [u8],
) -> std::io::Result<usize> {
    match r {
        Some(r) => r.read(buf).await,
        None => std::future::pending().await,
    }
}

/// Read a stream to its end, keeping its last [`STDERR_TAIL`] bytes.
async fn stderr_tail(r: Option<impl AsyncRead + Unpin>) -> String {
    let Some(mut r) = r else {
        return String::new();
    };
    let mut tail = VecDeque::with_capacity(STDERR_TAIL);
    let mut buf = [0u8; 4096];
    while let Ok(n) = r.read(&mut buf).await {
        if n == 0 {
            break;
        }
        for &b in &buf[..n] {
            if tail.len() == STDERR_TAIL {
                tail.pop_front();
            }
            tail.push_back(b);
        }
    }
    String::from_utf8_lossy(tail.make_contiguous()).into_owned()
}

/// Whether `p` is an executable file.
fn executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Find `program` the way a shell would, on the node's PATH.
fn find_program(program: &str) -> Result<PathBuf, String> {
    if program.contains('/') {
        let p = PathBuf::from(program);
        return if executable(&p) {
            Ok(p)
        } else {
            Err(format!("program `{program}` not found or not executable"))
        };
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(program))
        .find(|p| executable(p))
        .ok_or_else(|| format!("program `{program}` not found on PATH"))
}

/// The child's environment from an allow-list: `NAME` passes the node's
/// value when it has one, `NAME=value` sets it.
fn resolve_env<'a>(list: impl Iterator<Item = &'a str>) -> Vec<(String, String)> {
    list.filter_map(|entry| match entry.split_once('=') {
        Some((k, v)) => Some((k.to_owned(), v.to_owned())),
        None => std::env::var(entry).ok().map(|v| (entry.to_owned(), v)),
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Programs are looked up on PATH; a missing one says so.
    #[test]
    fn programs_are_found_on_path() {
        assert!(find_program("sh").is_ok());
        let e = find_program("no-such-program-here").unwrap_err();
        assert_eq!(e, "program `no-such-program-here` not found on PATH");
        assert!(find_program("/no/such/file").is_err());
    }

    /// The allow-list passes named variables and sets literal ones.
    #[test]
    fn env_allow_list() {
        let env = resolve_env(["PATH", "SB_SURELY_UNSET_VAR", "FIXED=1"].into_iter());
        assert!(env.iter().any(|(k, _)| k == "PATH"));
        assert!(!env.iter().any(|(k, _)| k == "SB_SURELY_UNSET_VAR"));
        assert!(env.contains(&("FIXED".into(), "1".into())));
    }
}
