//! A TCP proxy that breaks every connection at a random moment, in one of
//! two ways:
//!
//! - **reset**: both sockets are closed with `SO_LINGER 0`, so each side
//!   gets an RST and notices at once;
//! - **blackhole**: nothing is forwarded any more in either direction and
//!   both sockets stay open, as when a network path dies without a word.
//!   Only heartbeats can notice. The proxy's socket to the node has a small
//!   receive buffer, so that its kernel stops acknowledging the node's data
//!   a few KiB after the blackhole, as a dead path would at once.
//!
//! The proxy notes when each blackhole began, by the address the node sees
//! as the peer, so that a test can tell how long the node took to close it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rand::Rng;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// Receive buffer of the proxy's socket to the node (the kernel doubles it).
const UPSTREAM_RCVBUF: usize = 8 * 1024;

/// How a connection ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    Reset,
    Blackhole,
}

/// What the proxy did, for the test's checks and figures.
#[derive(Default)]
pub struct ChaosLog {
    /// Connections made through the proxy.
    pub connections: AtomicU64,
    /// Connections reset.
    pub resets: AtomicU64,
    /// Connections blackholed.
    pub blackholes: AtomicU64,
    /// When each blackhole began, by the node's view of the peer (the
    /// proxy's local address towards the node).
    // A std mutex: held for an insert or a copy, never across an await.
    pub blackholed: Mutex<HashMap<SocketAddr, SystemTime>>,
}

/// When and how the proxy breaks a new connection.
#[derive(Clone, Copy, Debug)]
pub enum Doom {
    /// 0.5 to 3 s after it was made, reset or blackhole at even odds.
    Random,
    /// This long after it was made, this way.
    Fixed(Duration, Fate),
}

impl Doom {
    fn pick(self) -> (Duration, Fate) {
        match self {
            Doom::Fixed(after, fate) => (after, fate),
            Doom::Random => {
                let mut rng = rand::rng();
                let after = Duration::from_millis(rng.random_range(500..=3000));
                let fate = if rng.random_bool(0.5) {
                    Fate::Reset
                } else {
                    Fate::Blackhole
                };
                (after, fate)
            }
        }
    }
}

/// A proxy in front of a node that breaks each connection as its [`Doom`]
/// says, until [`ChaosProxy::calm`] is called.
pub struct ChaosProxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    /// What it did so far.
    pub log: Arc<ChaosLog>,
    calm: Arc<AtomicBool>,
    // A std mutex: only locked to spawn or to abort everything.
    tasks: Arc<Mutex<JoinSet<()>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl ChaosProxy {
    /// Start a proxy in front of `target`.
    pub async fn start(target: SocketAddr, doom: Doom) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let log = Arc::new(ChaosLog::default());
        let calm = Arc::new(AtomicBool::new(false));
        let tasks = Arc::new(Mutex::new(JoinSet::new()));
        let accept = tokio::spawn(accept_loop(
            listener,
            target,
            doom,
            log.clone(),
            calm.clone(),
            tasks.clone(),
        ));
        ChaosProxy {
            addr,
            log,
            calm,
            tasks,
            accept,
        }
    }

    /// Stop cutting: connections made from now on are left alone (those
    /// already doomed still meet their fate).
    pub fn calm(&self) {
        self.calm.store(true, Ordering::SeqCst);
    }

    /// `ws://ADDR/ws` through the proxy.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }
}

impl Drop for ChaosProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.tasks.lock().unwrap().abort_all();
    }
}

async fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    doom: Doom,
    log: Arc<ChaosLog>,
    calm: Arc<AtomicBool>,
    tasks: Arc<Mutex<JoinSet<()>>>,
) {
    while let Ok((inbound, _)) = listener.accept().await {
        log.connections.fetch_add(1, Ordering::Relaxed);
        let fate = (!calm.load(Ordering::SeqCst)).then(|| doom.pick());
        let log = log.clone();
        let mut set = tasks.lock().unwrap();
        // Forget the connections that are over.
        while set.try_join_next().is_some() {}
        set.spawn(pipe(inbound, target, fate, log));
    }
}

/// Forward between the client and the node until either closes or the
/// connection's fate comes.
async fn pipe(
    mut inbound: TcpStream,
    target: SocketAddr,
    doom: Option<(Duration, Fate)>,
    log: Arc<ChaosLog>,
) {
    let Ok(mut outbound) = connect_small(target).await else {
        return;
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let Some((after, fate)) = doom else {
        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
        return;
    };
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => return,
        _ = tokio::time::sleep(after) => {}
    }
    match fate {
        Fate::Reset => {
            log.resets.fetch_add(1, Ordering::Relaxed);
            for s in [&inbound, &outbound] {
                let _ = socket2::SockRef::from(s).set_linger(Some(Duration::ZERO));
            }
        }
        Fate::Blackhole => {
            log.blackholes.fetch_add(1, Ordering::Relaxed);
            if let Ok(local) = outbound.local_addr() {
                let mut map = log.blackholed.lock().unwrap();
                map.insert(local, SystemTime::now());
            }
            // Hold both sockets open, reading nothing, until the proxy goes.
            std::future::pending::<()>().await;
        }
    }
}

/// A connection to the node whose receive buffer is small.
async fn connect_small(target: SocketAddr) -> std::io::Result<TcpStream> {
    let s = tokio::net::TcpSocket::new_v4()?;
    s.set_recv_buffer_size(UPSTREAM_RCVBUF as u32)?;
    s.connect(target).await
}

/// When the node dropped each peer for silence, by peer address, from its
/// log lines (`2025-…Z  INFO …: peer silent for two heartbeats; …
/// peer=127.0.0.1:PORT`). The node's clock is this machine's.
pub fn silent_drops(log: &str) -> HashMap<SocketAddr, SystemTime> {
    log.lines()
        .filter(|l| l.contains("peer silent for two heartbeats"))
        .map(|line| {
            let stamp = line.split_whitespace().next().unwrap();
            let at = chrono::DateTime::parse_from_rfc3339(stamp)
                .unwrap_or_else(|e| panic!("{e}: {line}"))
                .into();
            let peer = line
                .split("peer=")
                .nth(1)
                .and_then(|p| p.split_whitespace().next())
                .and_then(|p| p.trim_matches('"').parse().ok())
                .unwrap_or_else(|| panic!("no peer in {line}"));
            (peer, at)
        })
        .collect()
}
