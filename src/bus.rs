//! Live fan-out of stored events to the consumers on this node.
//!
//! The bus is only an optimisation of reading the store. Each consumer (a
//! WebSocket connection, an SSE response) owns one [`Inbox`]; the bus keeps,
//! per stream, the inboxes subscribed to it, and [`Bus::publish`] puts the
//! event's [`Frame`] (serialized once, shared by every subscriber) into each
//! of them. An inbox is bounded: when its consumer falls behind, further
//! events are dropped and the inbox is marked lagged, and the consumer's
//! [`Follower`] reads what it missed back from the store. So nothing is lost,
//! memory per slow consumer is bounded, and an idle consumer costs one small
//! queue that holds no buffer.
//!
//! A stream's entry lives exactly as long as it has subscribers: the last
//! unsubscribe removes it.
//!
//! The store depends on the bus (it publishes what it commits), never the
//! other way round: the bus reads stored events through [`Backlog`].

mod follow;

use std::collections::VecDeque;
use std::sync::Mutex;
use std::task::Context;

use dashmap::DashMap;
use futures_util::task::AtomicWaker;

use crate::event::StreamKey;
use crate::ws::frame::Frame;

pub use follow::{Cursor, Follower};

/// What the bus needs of the store: a stream's stored events, to catch a
/// consumer up when live delivery skipped some. Defined here so that the
/// bus does not depend on the store; every [`crate::store::Store`]
/// provides it.
#[async_trait::async_trait]
pub trait Backlog: Send + Sync + 'static {
    /// Up to `limit` stored events of `key` after `after`, in order, as
    /// `event` frames (none for the live-only `tasks` stream).
    async fn stored_after(
        &self,
        key: StreamKey,
        after: i64,
        limit: i64,
    ) -> crate::error::Result<Vec<Delivery>>;
}

/// How many events an inbox holds before its consumer counts as lagging
/// (the default of `[limits] stream_ring`).
pub const RING_CAPACITY: usize = crate::config::DEFAULT_STREAM_RING;
/// How many bytes of events an inbox holds before the same.
const MAX_INBOX_BYTES: usize = 1 << 20;

/// One event, ready to send: its position and its serialized frame.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Position in its stream.
    pub seq: i64,
    /// The `event` frame (its payload is the JSON text).
    pub frame: Frame,
}

/// What a consumer finds in its inbox.
#[derive(Debug)]
pub enum Item {
    /// A live event of a stream it subscribed to.
    Event(StreamKey, Delivery),
    /// The reply to one of its requests.
    Reply(Frame),
    /// A `subscribe` finished: when `after` is set, the subscription is in
    /// place on the bus and `key` is delivered after that seq. Then `reply`.
    Subscribed {
        /// The stream.
        key: StreamKey,
        /// Deliver what comes after this seq; `None` when refused.
        after: Option<i64>,
        /// The reply to the `subscribe` request.
        reply: Frame,
    },
    /// The consumer's principal changed (a role change).
    Principal(std::sync::Arc<crate::auth::Principal>),
}

/// What [`Inbox::drain`] found besides items.
#[derive(Debug, Default, Clone, Copy)]
pub struct Drained {
    /// Events were dropped since the last drain: catch up from the store.
    pub lagged: bool,
    /// The node asks the consumer to close with this code and reason.
    pub close: Option<(u16, &'static str)>,
}

#[derive(Debug, Default)]
struct Queue {
    items: VecDeque<Item>,
    events: usize,
    bytes: usize,
    lagged: bool,
    close: Option<(u16, &'static str)>,
}

/// A consumer's bounded queue of events and replies, and its wake-up.
#[derive(Debug)]
pub struct Inbox {
    /// A std mutex is right: it is held for one push or one drain, never
    /// across an await, and only the publisher and the consumer take it.
    queue: Mutex<Queue>,
    waker: AtomicWaker,
    max_events: usize,
}

impl Inbox {
    /// An inbox holding up to `max_events` events.
    pub fn new(max_events: usize) -> Self {
        Inbox {
            queue: Mutex::new(Queue::default()),
            waker: AtomicWaker::new(),
            max_events: max_events.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queue a live event, or drop it and mark the inbox lagged when full.
    fn push_event(&self, key: StreamKey, seq: i64, frame: &Frame) {
        let mut q = self.lock();
        if q.events >= self.max_events || q.bytes + frame.len() > MAX_INBOX_BYTES {
            if !q.lagged {
                q.lagged = true;
                metrics::counter!("switchboard_subscriber_lagged_total").increment(1);
                drop(q);
                self.waker.wake();
            }
            return;
        }
        let was_empty = q.items.is_empty();
        q.events += 1;
        q.bytes += frame.len();
        q.items.push_back(Item::Event(
            key,
            Delivery {
                seq,
                frame: frame.clone(),
            },
        ));
        drop(q);
        if was_empty {
            self.waker.wake();
        }
    }

    /// Queue a reply or a notice; these are never dropped (a consumer has a
    /// bounded number of requests in flight).
    pub fn push(&self, item: Item) {
        let mut q = self.lock();
        let was_empty = q.items.is_empty();
        q.items.push_back(item);
        drop(q);
        if was_empty {
            self.waker.wake();
        }
    }

    /// Ask the consumer to close with `code` and `reason`.
    pub fn close(&self, code: u16, reason: &'static str) {
        self.lock().close.get_or_insert((code, reason));
        self.waker.wake();
    }

    /// Move everything queued into `out`; registers `cx` to be woken when
    /// more arrives.
    pub fn drain(&self, cx: &Context<'_>, out: &mut VecDeque<Item>) -> Drained {
        self.waker.register(cx.waker());
        let mut q = self.lock();
        if out.is_empty() {
            // Hand the queue over whole: nothing is copied, and an idle
            // inbox keeps no buffer.
            std::mem::swap(out, &mut q.items);
        } else {
            out.extend(q.items.drain(..));
            q.items = VecDeque::new();
        }
        q.events = 0;
        q.bytes = 0;
        Drained {
            lagged: std::mem::take(&mut q.lagged),
            close: q.close,
        }
    }

    /// The close request, if any, without draining; registers `cx`.
    pub fn close_requested(&self, cx: &Context<'_>) -> Option<(u16, &'static str)> {
        self.waker.register(cx.waker());
        self.lock().close
    }
}

/// The subscribers of every stream that has some.
#[derive(Debug, Default)]
pub struct Bus {
    streams: DashMap<StreamKey, Vec<std::sync::Arc<Inbox>>>,
}

impl Bus {
    /// A new, empty bus.
    pub fn new() -> Self {
        Bus::default()
    }

    /// Deliver the live events of `key` to `inbox` from now on.
    pub fn subscribe(&self, key: StreamKey, inbox: &std::sync::Arc<Inbox>) {
        let mut subs = self.streams.entry(key).or_default();
        if !subs.iter().any(|i| std::sync::Arc::ptr_eq(i, inbox)) {
            subs.push(inbox.clone());
        }
    }

    /// Stop delivering `key` to `inbox`; the stream's entry goes with its
    /// last subscriber.
    pub fn unsubscribe(&self, key: StreamKey, inbox: &std::sync::Arc<Inbox>) {
        if let Some(mut subs) = self.streams.get_mut(&key) {
            subs.retain(|i| !std::sync::Arc::ptr_eq(i, inbox));
        }
        self.streams.remove_if(&key, |_, subs| subs.is_empty());
    }

    /// Whether anyone listens to `key`, so that publishers can skip
    /// serializing events nobody will read.
    pub fn has_subscribers(&self, key: &StreamKey) -> bool {
        self.streams.get(key).is_some_and(|s| !s.is_empty())
    }

    /// Publish an event that is already stored. `frame` is called at most
    /// once, and only when someone listens.
    pub fn publish(&self, key: StreamKey, seq: i64, frame: impl FnOnce() -> Frame) {
        let Some(subs) = self.streams.get(&key) else {
            return;
        };
        if subs.is_empty() {
            return;
        }
        let frame = frame();
        for inbox in subs.iter() {
            inbox.push_event(key, seq, &frame);
        }
    }

    /// The streams that have subscribers.
    pub fn keys(&self) -> Vec<StreamKey> {
        self.streams.iter().map(|e| *e.key()).collect()
    }

    /// Number of streams with subscribers (for metrics and tests).
    pub fn stream_count(&self) -> usize {
        self.streams.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn noop_cx() -> Context<'static> {
        Context::from_waker(futures_util::task::noop_waker_ref())
    }

    /// Events reach every subscriber; a full inbox drops and says lagged;
    /// the stream's entry goes with its last subscriber.
    #[test]
    fn publish_subscribe_lag_and_forget() {
        let bus = Bus::new();
        let key = StreamKey::Session(uuid::Uuid::new_v4());
        let (a, b) = (Arc::new(Inbox::new(2)), Arc::new(Inbox::new(8)));
        bus.subscribe(key, &a);
        bus.subscribe(key, &b);
        bus.subscribe(key, &b);
        for seq in 1..=3 {
            bus.publish(key, seq, || Frame::text("{}"));
        }
        let mut out = VecDeque::new();
        let d = a.drain(&noop_cx(), &mut out);
        assert!(d.lagged);
        assert_eq!(out.len(), 2);
        out.clear();
        let d = b.drain(&noop_cx(), &mut out);
        assert!(!d.lagged);
        assert_eq!(out.len(), 3);
        bus.unsubscribe(key, &a);
        assert!(bus.has_subscribers(&key));
        bus.unsubscribe(key, &b);
        assert_eq!(bus.stream_count(), 0);
    }
}
