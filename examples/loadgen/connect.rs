//! Reaching the node: resolving `--url`, the source address of each
//! connection, opening a WebSocket and saying hello, creating `--users`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use anyhow::{Context as _, bail};
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use uuid::Uuid;

use super::session::Frame;
use super::{Args, Shared};

/// A connection to the node's `/ws`.
pub(super) type Ws = WebSocketStream<TcpStream>;

/// The hello's id; submits count up from 1, subscribes use 0.
pub(super) const HELLO_ID: u64 = u64::MAX;

/// Create `--users` developers and return their tokens.
pub(super) async fn create_users(args: &Args) -> anyhow::Result<Vec<String>> {
    let http = reqwest::Client::new();
    let run = &Uuid::new_v4().simple().to_string()[..8];
    let base = args.url.trim_end_matches('/');
    let mut tokens = Vec::with_capacity(args.users);
    for k in 0..args.users {
        let resp = http
            .post(format!("{base}/api/admin/users"))
            .bearer_auth(&args.token)
            .json(&serde_json::json!({"user_id": format!("loadgen-{run}-{k}"), "roles": ["developer"]}))
            .send()
            .await
            .context("cannot reach the node")?;
        let status = resp.status();
        let body: serde_json::Value = resp.json().await.unwrap_or_default();
        match body["token"].as_str() {
            Some(token) if status.is_success() => tokens.push(token.to_owned()),
            _ => bail!("creating user {k} failed ({status}): {body}"),
        }
    }
    println!(
        "users            created {} developers loadgen-{run}-*",
        args.users
    );
    Ok(tokens)
}

/// The target's socket address and the WebSocket URL.
pub(super) async fn resolve(url: &str) -> anyhow::Result<(SocketAddr, String)> {
    let rest = url
        .trim_end_matches('/')
        .strip_prefix("http://")
        .context("--url must be http://HOST:PORT (TLS is not supported by this tool)")?;
    let hostport = rest.split('/').next().unwrap_or(rest);
    let with_port = if hostport
        .rsplit(':')
        .next()
        .is_some_and(|p| p.parse::<u16>().is_ok())
        && !hostport.ends_with(']')
    {
        hostport.to_owned()
    } else {
        format!("{hostport}:80")
    };
    let addr = tokio::net::lookup_host(&with_port)
        .await
        .with_context(|| format!("cannot resolve {with_port}"))?
        .next()
        .with_context(|| format!("{with_port} has no address"))?;
    Ok((addr, format!("ws://{hostport}/ws")))
}

pub(super) fn is_loopback_v4(addr: SocketAddr) -> bool {
    matches!(addr.ip(), IpAddr::V4(ip) if ip.is_loopback())
}

/// The source address of connection `i`: the default for the first
/// `conns_per_ip`, then 127.0.0.2, 127.0.0.3, ... towards a loopback target.
fn source_ip(i: usize, shared: &Shared) -> Option<IpAddr> {
    let k = i / shared.args.conns_per_ip.max(1);
    if k == 0 || !is_loopback_v4(shared.target) || k > 250 {
        return None;
    }
    Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + k as u8)))
}

/// Small socket buffers: the defaults (128 KiB each) would cost this process
/// gigabytes at 10k connections.
fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
}

/// Open a connection and say hello; returns the socket and its session id.
pub(super) async fn open(i: usize, shared: &Shared) -> anyhow::Result<(Ws, String)> {
    let _slot = shared.connect_slots.acquire().await?;
    let socket = if shared.target.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = source_ip(i, shared) {
        socket
            .bind(SocketAddr::new(ip, 0))
            .with_context(|| format!("cannot bind source address {ip}"))?;
    }
    let tcp = socket.connect(shared.target).await.context("connect")?;
    tcp.set_nodelay(true)?;
    let (mut ws, _) =
        tokio_tungstenite::client_async_with_config(shared.ws_url.as_str(), tcp, Some(ws_config()))
            .await
            .context("WebSocket handshake")?;
    let hello = &shared.hellos[i % shared.hellos.len()];
    ws.send(Message::text(hello.clone())).await?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => {
                let f: Frame = serde_json::from_str(text.as_str())?;
                if f.op != "reply" || f.id != Some(HELLO_ID) {
                    continue;
                }
                if let Some(e) = f.error {
                    bail!("hello refused: {} ({})", e.message, e.code);
                }
                let sid = f
                    .result
                    .and_then(|r| r.session_id)
                    .context("hello reply without session_id")?;
                return Ok((ws, sid.to_owned()));
            }
            Some(Ok(Message::Close(c))) => bail!("closed during hello: {c:?}"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => bail!("during hello: {e}"),
            None => bail!("connection ended during hello"),
        }
    }
}
