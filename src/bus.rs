//! Live fan-out of stored events to the subscribers on this node.
//!
//! The bus is only an optimisation of reading the store: a [`Cursor`] delivers
//! a stream in `seq` order from the store and switches to the bus for live
//! events, and whenever the bus skips (a subscriber lagged behind the bounded
//! ring, or a node's notification was lost) it reads the missing range back
//! from the store. So nothing is ever dropped, and memory per subscriber is
//! bounded by the ring size, shared by every subscriber of a stream.
//!
//! Each event is serialized once at publish time and the bytes are shared by
//! every subscriber.

use std::collections::VecDeque;
use std::sync::Arc;

use axum::extract::ws::Utf8Bytes;
use dashmap::DashMap;
use tokio::sync::broadcast;

use crate::error::Result;
use crate::event::StreamKey;
use crate::protocol::ws::{audit_event_frame, session_event_frame};
use crate::store::Store;

/// How many events a stream's ring keeps for slow subscribers before they
/// fall back to the store.
/// Small on purpose: `broadcast` allocates the ring up front for every
/// stream (a session each), and a subscriber that falls behind it loses
/// nothing, it only reads from the store for a while.
pub const RING_CAPACITY: usize = 64;

/// How many stored events a catch-up reads at a time.
const PAGE: i64 = 256;

/// One event, ready to send: its position and its serialized frame.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Position in its stream.
    pub seq: i64,
    /// The JSON text of the `event` frame.
    pub frame: Utf8Bytes,
}

/// Per-stream broadcast rings, created on first subscribe.
#[derive(Debug)]
pub struct Bus {
    streams: DashMap<StreamKey, broadcast::Sender<Delivery>>,
    ring: usize,
}

impl Default for Bus {
    fn default() -> Self {
        Bus::with_ring(RING_CAPACITY)
    }
}

impl Bus {
    /// A new, empty bus.
    pub fn new() -> Self {
        Bus::default()
    }

    /// A bus whose per-stream rings hold `ring` events.
    pub fn with_ring(ring: usize) -> Self {
        Bus {
            streams: DashMap::new(),
            ring: ring.max(1),
        }
    }

    /// Receive the live events of `key` from now on.
    pub fn subscribe(&self, key: StreamKey) -> broadcast::Receiver<Delivery> {
        self.streams
            .entry(key)
            .or_insert_with(|| broadcast::channel(self.ring).0)
            .subscribe()
    }

    /// Whether anyone listens to `key`, so that publishers can skip
    /// serializing events nobody will read.
    pub fn has_subscribers(&self, key: &StreamKey) -> bool {
        self.streams
            .get(key)
            .is_some_and(|tx| tx.receiver_count() > 0)
    }

    /// Publish an event that is already stored. `frame` is called at most
    /// once, and only when someone listens.
    pub fn publish(&self, key: StreamKey, seq: i64, frame: impl FnOnce() -> String) {
        let Some(tx) = self.streams.get(&key).map(|tx| tx.clone()) else {
            return;
        };
        if tx.receiver_count() == 0 {
            // The last subscriber left: forget the ring.
            self.streams
                .remove_if(&key, |_, tx| tx.receiver_count() == 0);
            return;
        }
        metrics::counter!("switchboard_events_published_total").increment(1);
        let _ = tx.send(Delivery {
            seq,
            frame: frame().into(),
        });
    }

    /// The streams that have a ring (someone subscribed at some point).
    pub fn keys(&self) -> Vec<StreamKey> {
        self.streams.iter().map(|e| *e.key()).collect()
    }

    /// Number of streams with a ring (for metrics and tests).
    pub fn stream_count(&self) -> usize {
        self.streams.len()
    }
}

/// A reader of one stream, in order, without gaps or duplicates: stored
/// events after a position first, then live ones.
pub struct Cursor {
    key: StreamKey,
    last: i64,
    rx: broadcast::Receiver<Delivery>,
    backlog: VecDeque<Delivery>,
    /// Whether the last store read may have left events behind; true at
    /// first, so that the first `next` replays what is stored.
    more_stored: bool,
    store: Arc<dyn Store>,
}

impl Cursor {
    /// Start reading `key` after `after_seq`. Subscribes to the bus before
    /// reading the store, so that nothing committed in between is missed.
    pub fn new(bus: &Bus, store: Arc<dyn Store>, key: StreamKey, after_seq: i64) -> Self {
        Cursor {
            key,
            last: after_seq.max(0),
            rx: bus.subscribe(key),
            backlog: VecDeque::new(),
            more_stored: true,
            store,
        }
    }

    /// The stream this cursor reads.
    pub fn key(&self) -> StreamKey {
        self.key
    }

    /// The seq of the last event returned.
    pub fn position(&self) -> i64 {
        self.last
    }

    /// Read the store after the cursor's position into the backlog.
    async fn fill(&mut self) -> Result<()> {
        let after = self.backlog.back().map_or(self.last, |d| d.seq);
        // On its own task: the read holds a pooled store connection until it
        // completes, and this cursor's owner may stop polling it for a long
        // time (a socket that does not drain). Spawned, the connection goes
        // back to the pool as soon as the rows are read.
        let (store, key) = (self.store.clone(), self.key);
        let frames =
            tokio::spawn(async move { read_stored(store.as_ref(), key, after, PAGE).await })
                .await
                .map_err(|e| {
                    crate::error::Error::internal(format!("store read task failed: {e}"))
                })??;
        self.more_stored = frames.len() as i64 == PAGE;
        self.backlog.extend(frames);
        Ok(())
    }

    /// The next event. Returns `Ok(None)` only when the bus is gone
    /// (shutdown).
    pub async fn next(&mut self) -> Result<Option<Delivery>> {
        loop {
            if self.backlog.is_empty() && self.more_stored {
                // The last read filled a whole page: there may be more.
                self.fill().await?;
            }
            if let Some(d) = self.backlog.pop_front() {
                if d.seq <= self.last {
                    continue;
                }
                self.last = d.seq;
                return Ok(Some(d));
            }
            match self.rx.recv().await {
                Ok(d) if d.seq <= self.last => continue,
                Ok(d) if d.seq == self.last + 1 => {
                    self.last = d.seq;
                    return Ok(Some(d));
                }
                Ok(d) => {
                    // A gap: the missing events are stored (publish follows
                    // commit), so read them back, then the live one.
                    self.fill().await?;
                    if self.backlog.front().is_none_or(|f| f.seq > d.seq) {
                        tracing::warn!(stream = %self.key, from = self.last, to = d.seq, "gap not found in store");
                        self.backlog.push_front(d);
                    }
                }
                Err(broadcast::error::RecvError::Lagged(skipped)) => {
                    metrics::counter!("switchboard_subscriber_lagged_total").increment(1);
                    tracing::debug!(stream = %self.key, skipped, "subscriber lagged; catching up from the store");
                    self.fill().await?;
                }
                Err(broadcast::error::RecvError::Closed) => return Ok(None),
            }
        }
    }
}

/// Stored events of `key` after `after`, as frames.
pub async fn read_stored(
    store: &dyn Store,
    key: StreamKey,
    after: i64,
    limit: i64,
) -> Result<Vec<Delivery>> {
    Ok(match key {
        StreamKey::Session(id) => store
            .events_after(id, after, limit)
            .await?
            .iter()
            .map(|e| Delivery {
                seq: e.seq,
                frame: session_event_frame(e).into(),
            })
            .collect(),
        StreamKey::Audit => store
            .audit_after(after, limit)
            .await?
            .iter()
            .map(|r| Delivery {
                seq: r.seq,
                frame: audit_event_frame(r).into(),
            })
            .collect(),
    })
}
