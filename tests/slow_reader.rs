//! A live peer on a slow link is not taken for a dead one: a client with a
//! 4 KiB receive buffer that reads a long catch-up slowly but steadily is
//! never dropped as silent, and gets every event once, in order.

mod common;

use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use switchboard::config::FileConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tokio_tungstenite::tungstenite::Message;

/// Heartbeat of the node under test: short, so that a slow read spans
/// dozens of intervals.
const HEARTBEAT_MS: u64 = 200;
/// What the slow client reads per tick, and how often.
const BYTES_PER_TICK: usize = 4096;
const TICK: Duration = Duration::from_millis(50);

/// A socket whose reads are throttled to `BYTES_PER_TICK` per `TICK`.
struct Throttled {
    inner: TcpStream,
    budget: usize,
    tick: Pin<Box<Sleep>>,
}

impl Throttled {
    fn new(inner: TcpStream) -> Self {
        Throttled {
            inner,
            budget: BYTES_PER_TICK,
            tick: Box::pin(tokio::time::sleep(TICK)),
        }
    }
}

impl AsyncRead for Throttled {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.budget == 0 {
            ready!(self.tick.as_mut().poll(cx));
            self.budget = BYTES_PER_TICK;
            self.tick.as_mut().reset(Instant::now() + TICK);
        }
        let mut tmp = [0u8; BYTES_PER_TICK];
        let n = self.budget.min(buf.remaining());
        let mut small = ReadBuf::new(&mut tmp[..n]);
        ready!(Pin::new(&mut self.inner).poll_read(cx, &mut small))?;
        let got = small.filled().len();
        buf.put_slice(small.filled());
        self.budget -= got;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Throttled {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A TCP connection to `addr` with a 4 KiB receive buffer, set before
/// connecting so that the window the node sees is small from the start.
fn small_socket(addr: std::net::SocketAddr) -> TcpStream {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.set_recv_buffer_size(4096).unwrap();
    s.connect(&addr.into()).unwrap();
    s.set_nonblocking(true).unwrap();
    TcpStream::from_std(s.into()).unwrap()
}

/// A session with one task of `chunks` one-character outputs, finished;
/// returns (session id, last seq).
async fn session_with_events(server: &TestServer, chunks: usize) -> (String, i64) {
    let (mut ws, hello) = server.ws(&server.admin, json!({})).await;
    let session = hello["session_id"].as_str().unwrap().to_owned();
    let task = ws
        .ok(json!({"op": "task.submit", "agent_type": "echo",
            "prompt": "s".repeat(chunks), "params": {"chunk_size": 1}}))
        .await;
    let id = task["task_id"].as_str().unwrap();
    server.wait_terminal(&server.admin, id).await;
    let (_, s) = server
        .get(&format!("/api/runtime/sessions/{session}"), &server.admin)
        .await;
    let last = s["last_seq"].as_i64().unwrap_or_else(|| panic!("{s}"));
    (session, last)
}

/// A client with a 4 KiB receive buffer reading about 80 KB/s replays a
/// stored stream of several megabytes (about a minute of reading, some 250
/// heartbeat intervals): the node keeps it (no close, no reset), every
/// event arrives once and in order, and the connection still answers ops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_steady_reader_is_not_dropped() {
    let mut file = FileConfig::default();
    file.limits.heartbeat_ms = HEARTBEAT_MS;
    let server = TestServer::spawn_with(file).await;
    let (session, last) = session_with_events(&server, 3000).await;
    let addr = server.base.trim_start_matches("http://").parse().unwrap();
    let stream = Throttled::new(small_socket(addr));
    let (mut ws, _) = tokio_tungstenite::client_async(server.ws_url.as_str(), stream)
        .await
        .unwrap();
    let hello = json!({"op": "hello", "id": 1, "token": server.admin,
        "session_id": session, "after_seq": 0});
    ws.send(Message::text(hello.to_string())).await.unwrap();
    let started = Instant::now();
    let mut seqs = Vec::new();
    while seqs.last() != Some(&last) {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("no frame for 30 s")
            .unwrap_or_else(|| panic!("stream ended after {} events", seqs.len()))
            .unwrap_or_else(|e| panic!("error after {} events: {e}", seqs.len()));
        let text = match msg {
            Message::Text(t) => t,
            Message::Close(c) => panic!(
                "the node closed a live slow reader after {} of {last} events, {:?} in: {c:?}",
                seqs.len(),
                started.elapsed()
            ),
            _ => continue,
        };
        let v: Value = serde_json::from_str(text.as_str()).unwrap();
        if v["op"] == "event" {
            seqs.push(v["seq"].as_i64().unwrap());
        }
    }
    assert_eq!(seqs, (1..=last).collect::<Vec<_>>());
    // The connection is still open and answering.
    ws.send(Message::text(r#"{"op":"ping","id":2}"#)).await.unwrap();
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next()).await.unwrap();
        if let Some(Ok(Message::Text(t))) = msg {
            let v: Value = serde_json::from_str(t.as_str()).unwrap();
            if v["id"] == 2 {
                assert_eq!(v["result"]["pong"], true, "{v}");
                break;
            }
        } else if !matches!(msg, Some(Ok(Message::Ping(_) | Message::Pong(_)))) {
            panic!("connection ended after the catch-up: {msg:?}");
        }
    }
    eprintln!(
        "{last} events read in {:?} ({} heartbeat intervals)",
        started.elapsed(),
        started.elapsed().as_millis() / HEARTBEAT_MS as u128
    );
    server.stop().await;
}
