//! `switchboard link`: a machine that accepts no inbound connection (a
//! laptop, a build box, a GPU server behind NAT) links out to a node and
//! runs the node's tasks for the agents of its own config file. The node's
//! side is [`crate::link`]; the frames are in `protocol/link.md`.
//!
//! - [`identity`]: the host's device key and its proof.
//! - [`session`]: one link: hello, then frames both ways.
//! - [`tasks`]: the tasks running here and their numbered reports.
//!
//! The host reconnects by itself with exponential backoff and jitter, and
//! says on stderr what it does. A link lost for longer than the node's
//! grace period makes the host stop the tasks it was running for it (the
//! node has failed them by then). Ctrl-C or SIGTERM reports the running
//! tasks failed, then exits.

pub mod identity;
mod io;
pub mod session;
pub mod tasks;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::OnceCell;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::agent::{AgentRegistry, Registered};
use crate::cli::client::Http;
use crate::cli::config::Target;
use crate::cli::{CliError, Common, exit};
use crate::config::FileConfig;
use crate::protocol::link::Offer;
use tasks::{Runner, status};

/// `switchboard link` flags (`--server`, `--token`, `--ca-cert` are the
/// global client ones).
#[derive(Debug, clap::Args)]
pub struct LinkArgs {
    /// The agents to offer: a config file of the node's format (`[[agents]]`;
    /// other sections are ignored). `echo` is always offered.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The host's name on the node (default: this machine's host name).
    #[arg(long)]
    pub name: Option<String>,
    /// The host's device key (default:
    /// `~/.config/switchboard/hosts/<name>.key`, made on first use).
    #[arg(long, value_name = "FILE")]
    pub key_file: Option<PathBuf>,
}

/// How one link ended.
pub enum Ended {
    /// Dropped or refused for a reason that waiting may fix.
    Retry(String),
    /// The device waits for an admin's approval.
    Untrusted(String),
    /// Refused for good (bad token, no `agent:configure`, bad config).
    Fatal(CliError),
    /// The host was told to stop.
    Stopped,
}

/// Everything a link needs, fixed for the life of the process.
pub struct Host {
    /// The host's name.
    pub name: String,
    /// The node and token.
    pub target: Target,
    /// REST to the node (device registration and challenges).
    pub http: Http,
    /// The device key.
    pub identity: identity::Identity,
    /// What it offers.
    pub offers: Vec<Offer>,
    /// The node's grace period, learnt at each link.
    pub grace_ms: AtomicU64,
    user: OnceCell<String>,
}

impl Host {
    /// The token's user (asked once).
    pub async fn user_id(&self) -> Result<String, CliError> {
        self.user
            .get_or_try_init(|| self.http.user_id())
            .await
            .cloned()
    }
}

/// The agents a host offers: those of its config file that can run here,
/// and `echo`. Ones that cannot run are left out, with a warning.
pub fn offered_agents(file: &FileConfig) -> (Vec<Offer>, BTreeMap<String, Arc<Registered>>) {
    let registry = AgentRegistry::build(file, &|k| std::env::var(k).ok(), None);
    let mut offers = Vec::new();
    let mut agents = BTreeMap::new();
    let mut names: Vec<&str> = file.agents.iter().map(|a| a.name.as_str()).collect();
    if !names.contains(&"echo") {
        names.insert(0, "echo");
    }
    for name in names {
        let Some(reg) = registry.get(name) else {
            continue;
        };
        let info = reg.agent.info();
        if !info.available {
            let why = info.metadata["reason"].as_str().unwrap_or("unavailable");
            status(&format!("not offering `{name}`: {why}"));
            continue;
        }
        let config = file.agents.iter().find(|a| a.name == name);
        offers.push(Offer {
            agent_type: name.to_owned(),
            description: info.description.clone(),
            capabilities: info.capabilities.clone(),
            max_concurrent: reg.slots.max(),
            kind: info.metadata["kind"].as_str().unwrap_or("echo").to_owned(),
            allowed_roles: config.and_then(|c| c.allowed_roles.clone()),
        });
        agents.insert(name.to_owned(), reg);
    }
    (offers, agents)
}

/// This machine's host name, as a valid host name.
fn default_name() -> String {
    let raw = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    let clean: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    if clean.is_empty() {
        "host".into()
    } else {
        clean
    }
}

/// `switchboard link`.
pub async fn link(common: &Common, args: LinkArgs) -> Result<u8, CliError> {
    let target = crate::cli::config::resolve(common)?;
    let file = match &args.config {
        Some(path) => FileConfig::load(path).map_err(|e| CliError::Usage(format!("{e:#}")))?,
        None => FileConfig::default(),
    };
    let name = args.name.unwrap_or_else(default_name);
    if !crate::runtime::hosts::valid_host_name(&name) {
        return Err(CliError::Usage(format!(
            "--name `{name}`: use 1 to 64 of A-Z a-z 0-9 . _ -"
        )));
    }
    let key_file = match args.key_file {
        Some(f) => f,
        None => identity::default_key_file(&name)?,
    };
    let identity = identity::Identity::load_or_create(&name, key_file)?;
    let (offers, agents) = offered_agents(&file);
    let host = Host {
        http: Http::new(&target),
        name: name.clone(),
        target,
        identity,
        offers,
        grace_ms: AtomicU64::new(60_000),
        user: OnceCell::new(),
    };
    let runner = Runner::new(&name, agents);
    let stop = CancellationToken::new();
    let signals = tokio::spawn(stop_on_signal(stop.clone()));
    let outcome = run(&host, &runner, &stop).await;
    signals.abort();
    runner.abandon_all("the host is exiting");
    runner.wait().await;
    // Stopped command agents get SIGKILL after their grace period.
    crate::agent::command::reapers().close();
    crate::agent::command::reapers().wait().await;
    outcome.map(|()| exit::OK)
}

async fn stop_on_signal(stop: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        return;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    stop.cancel();
}

/// The pause before attempt `attempt` (from 0): doubling from 250 ms up to
/// 30 s, each drawn between half and all of that so that many hosts cut off
/// at once do not come back in step.
pub fn backoff(attempt: u32) -> Duration {
    let cap = Duration::from_millis(250u64 << attempt.min(7)).min(Duration::from_secs(30));
    cap.mul_f64(0.5 + rand::random::<f64>() / 2.0)
}

/// Link, serve, and relink until stopped or refused for good.
pub async fn run(
    host: &Host,
    runner: &Arc<Runner>,
    stop: &CancellationToken,
) -> Result<(), CliError> {
    let mut attempt = 0u32;
    let mut away_since: Option<Instant> = None;
    loop {
        let started = Instant::now();
        // The session watches `stop` itself, to say goodbye when linked.
        let ended = session::session(host, runner, stop).await;
        let delay = match ended {
            Ended::Stopped => {
                if !runner.is_empty() {
                    status(
                        "stopped while not linked: the node fails this host's tasks after its grace period",
                    );
                }
                return Ok(());
            }
            Ended::Fatal(e) => return Err(e),
            Ended::Untrusted(message) => {
                let delay = backoff(attempt.max(4));
                status(&format!(
                    "waiting for approval: {message}; asking again in {:.1} s",
                    delay.as_secs_f64()
                ));
                delay
            }
            Ended::Retry(why) => {
                // A link that held a while starts the backoff over.
                if started.elapsed() > Duration::from_secs(10) {
                    attempt = 0;
                    away_since = Some(Instant::now());
                }
                let delay = backoff(attempt);
                status(&format!(
                    "{why}; reconnecting in {:.1} s",
                    delay.as_secs_f64()
                ));
                delay
            }
        };
        attempt = attempt.saturating_add(1);
        let since = *away_since.get_or_insert_with(Instant::now);
        let grace = Duration::from_millis(host.grace_ms.load(Ordering::Relaxed));
        if !runner.is_empty() && since.elapsed() > grace {
            runner.abandon_all("the link was down longer than the node's grace period");
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.cancelled() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Backoff doubles to a cap, with jitter between half and all of it.
    #[test]
    fn backoff_grows_with_jitter() {
        for attempt in 0..12 {
            let d = backoff(attempt);
            let cap = Duration::from_millis(250u64 << attempt.min(7)).min(Duration::from_secs(30));
            assert!(d >= cap / 2 && d <= cap, "{attempt}: {d:?}");
        }
    }

    /// `echo` is always offered; configured agents are added.
    #[test]
    fn offers_echo_and_configured_agents() {
        let file = FileConfig::parse(
            "[[agents]]\nname = \"hecho\"\nkind = \"echo\"\nmax_concurrent = 3\n",
        )
        .unwrap();
        let (offers, agents) = offered_agents(&file);
        let names: Vec<_> = offers.iter().map(|o| o.agent_type.as_str()).collect();
        assert_eq!(names, ["echo", "hecho"]);
        assert_eq!(offers[1].max_concurrent, 3);
        assert!(agents.contains_key("hecho"));
    }
}
