//! A WebSocket client that follows one session through any number of
//! broken connections, resuming each time with `after_seq`, and records
//! every event seq it received, in order, for the test to check.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

/// What one client saw.
#[derive(Debug, Default)]
pub struct Report {
    /// Every event seq received, in arrival order, across connections.
    pub seqs: Vec<i64>,
    /// Connections that ended with an error, a close or end of stream.
    pub broken: u64,
    /// Connections given up because nothing came for two heartbeats.
    pub timed_out: u64,
    /// Connects or hellos that failed (the proxy cut them early).
    pub failed_connects: u64,
    /// The largest catch-up a resume asked for (`last_seq - after_seq`).
    pub max_catch_up: i64,
    /// Hellos answered (connections that resumed).
    pub resumes: u64,
}

/// How one connection ended.
enum End {
    /// The target was reached: the client is done.
    Done,
    /// Nothing for two heartbeats.
    Silent,
    /// Reset, closed or failed.
    Broken,
}

/// A client of session `session` through `url`.
pub struct ResumeClient {
    pub url: String,
    pub token: String,
    pub session: String,
    /// The node's heartbeat interval.
    pub heartbeat: Duration,
}

impl ResumeClient {
    /// Follow the session until `target` says the last seq and every event
    /// up to it has come.
    pub async fn run(self, mut target: watch::Receiver<Option<i64>>) -> Report {
        let mut r = Report::default();
        loop {
            if done(&r, &target) {
                return r;
            }
            match self.connection(&mut r, &mut target).await {
                Ok(End::Done) => return r,
                Ok(End::Silent) => r.timed_out += 1,
                Ok(End::Broken) => r.broken += 1,
                Err(()) => {
                    r.failed_connects += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }

    /// One connection: hello with `after_seq`, then events until it breaks.
    async fn connection(
        &self,
        r: &mut Report,
        target: &mut watch::Receiver<Option<i64>>,
    ) -> Result<End, ()> {
        let silence = 2 * self.heartbeat;
        let connect = tokio_tungstenite::connect_async(self.url.as_str());
        let (mut ws, _) = match tokio::time::timeout(silence, connect).await {
            Ok(Ok(c)) => c,
            _ => return Err(()),
        };
        let after = r.seqs.last().copied().unwrap_or(0);
        let hello = json!({"op": "hello", "id": 1, "token": self.token,
            "session_id": self.session, "after_seq": after});
        if ws.send(Message::text(hello.to_string())).await.is_err() {
            return Err(());
        }
        let mut last_frame = Instant::now();
        let mut ping = tokio::time::interval(self.heartbeat);
        loop {
            let msg = tokio::select! {
                m = ws.next() => m,
                _ = tokio::time::sleep_until(last_frame + silence) => return Ok(End::Silent),
                _ = ping.tick() => {
                    // Our own sign of life (the node's pings are answered
                    // by tungstenite as they are read).
                    let _ = tokio::time::timeout(silence, ws.send(Message::Ping(Default::default()))).await;
                    continue;
                }
                _ = target.changed() => {
                    if done(r, target) { return Ok(End::Done) }
                    continue;
                }
            };
            let text = match msg {
                Some(Ok(Message::Text(t))) => t,
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return Ok(End::Broken),
                Some(Ok(_)) => {
                    last_frame = Instant::now();
                    continue;
                }
            };
            last_frame = Instant::now();
            let v: Value = serde_json::from_str(text.as_str()).expect("frame is JSON");
            if v["op"] == "event" {
                r.seqs.push(v["seq"].as_i64().expect("event seq"));
            } else if v["id"] == 1 {
                if v["ok"] != true {
                    // A hello the node refused is a bug, not chaos.
                    panic!("resume refused: {v}");
                }
                r.resumes += 1;
                let last = v["result"]["last_seq"].as_i64().unwrap_or(0);
                r.max_catch_up = r.max_catch_up.max(last - after);
            }
            if done(r, target) {
                let _ = ws.close(None).await;
                return Ok(End::Done);
            }
        }
    }
}

/// Whether every event up to the target has come.
fn done(r: &Report, target: &watch::Receiver<Option<i64>>) -> bool {
    let Some(t) = *target.borrow() else {
        return false;
    };
    r.seqs.last().is_some_and(|&l| l >= t) || t == 0
}

/// Gaps, duplicates and out-of-order events in `seqs` against `1..=last`.
#[derive(Debug, Default, PartialEq)]
pub struct StreamCheck {
    pub gaps: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
}

/// Compare what a client received with the stored stream `1..=last`.
pub fn check(seqs: &[i64], last: i64) -> StreamCheck {
    let mut c = StreamCheck::default();
    let mut seen = std::collections::HashSet::new();
    let mut prev = 0;
    for &s in seqs {
        if !seen.insert(s) {
            c.duplicates += 1;
        } else if s < prev {
            c.out_of_order += 1;
        }
        prev = prev.max(s);
    }
    c.gaps = (1..=last).filter(|s| !seen.contains(s)).count() as u64;
    c
}
