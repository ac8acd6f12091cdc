//! Reading streams in order, without gaps or duplicates: live events from
//! an [`Inbox`], and whatever the inbox missed read back from the store
//! through [`Backlog`], the one thing the bus asks of it.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use crate::bus::{Backlog, Bus, Delivery, Inbox, Item};
use crate::error::Result;
use crate::event::StreamKey;
use crate::protocol::ws::{stream_pruned_frame, tasks_lagged_frame};

/// How many stored events a catch-up reads at a time.
pub const PAGE: i64 = 256;
/// Live events kept aside while a stream catches up from the store.
const HOLD: usize = 256;

type Fill = Pin<Box<dyn Future<Output = (StreamKey, Result<Vec<Delivery>>)> + Send>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Delivering live events.
    Live,
    /// Missed something: read the store after `last`.
    Stale,
    /// Reading the store; `again` when it must read once more after.
    Filling { again: bool },
}

#[derive(Debug)]
struct Sub {
    key: StreamKey,
    last: i64,
    state: State,
    /// Live events that came during a fill, applied after it.
    held: Vec<Delivery>,
}

/// The positions of one consumer in the streams it follows, and the
/// catch-up from the store when live delivery skipped.
pub struct Follower {
    store: Arc<dyn Backlog>,
    subs: Vec<Sub>,
    fill: Option<Fill>,
}

impl Follower {
    /// A follower of no stream yet.
    pub fn new(store: Arc<dyn Backlog>) -> Self {
        Follower {
            store,
            subs: Vec::new(),
            fill: None,
        }
    }

    /// Follow `key` after `after`: what is stored comes first. Replaces the
    /// position when `key` is already followed.
    pub fn add(&mut self, key: StreamKey, after: i64) {
        self.remove(key);
        // Most consumers follow one stream: room for exactly one, not the
        // four a first push would make.
        self.subs.reserve_exact(1);
        self.subs.push(Sub {
            key,
            last: after.max(0),
            // `tasks` is live only: nothing stored to read first.
            state: if key == StreamKey::Tasks {
                State::Live
            } else {
                State::Stale
            },
            held: Vec::new(),
        });
    }

    /// Follow `key` live from `last`, reading nothing stored first.
    pub fn add_live(&mut self, key: StreamKey, last: i64) {
        self.add(key, last);
        if let Some(s) = self.subs.last_mut() {
            s.state = State::Live;
        }
    }

    /// Stop following `key`.
    pub fn remove(&mut self, key: StreamKey) {
        self.subs.retain(|s| s.key != key);
    }

    /// Whether `key` is followed.
    pub fn contains(&self, key: StreamKey) -> bool {
        self.subs.iter().any(|s| s.key == key)
    }

    /// How many streams are followed.
    pub fn len(&self) -> usize {
        self.subs.len()
    }

    /// Whether no stream is followed.
    pub fn is_empty(&self) -> bool {
        self.subs.is_empty()
    }

    /// The followed streams.
    pub fn keys(&self) -> impl Iterator<Item = StreamKey> + '_ {
        self.subs.iter().map(|s| s.key)
    }

    /// A live event: `deliver` gets it when it is the next of its stream.
    pub fn live(&mut self, key: StreamKey, d: Delivery, deliver: &mut impl FnMut(Delivery)) {
        let Some(sub) = self.subs.iter_mut().find(|s| s.key == key) else {
            return; // not (or no longer) followed; a later store read covers it
        };
        match sub.state {
            // Events of every session, in publish order, each once.
            State::Live if key == StreamKey::Tasks => deliver(d),
            State::Live => next_in_order(sub, d, deliver),
            State::Filling { .. } if sub.held.len() < HOLD => sub.held.push(d),
            State::Filling { .. } => sub.state = State::Filling { again: true },
            State::Stale => {}
        }
    }

    /// The inbox dropped events: every stream catches up from the store.
    pub fn lagged(&mut self) {
        for sub in &mut self.subs {
            sub.state = match sub.state {
                State::Live | State::Stale => State::Stale,
                State::Filling { .. } => State::Filling { again: true },
            };
        }
    }

    /// Whether a store read is running.
    pub fn is_filling(&self) -> bool {
        self.fill.is_some()
    }

    /// Whether a store read is running or due.
    pub fn needs_fill(&self) -> bool {
        self.fill.is_some() || self.subs.iter().any(|s| s.state == State::Stale)
    }

    /// Run the store catch-up: start a read for a stale stream, or finish
    /// the running one and hand its events to `deliver`. Ready when nothing
    /// is left to read; an error when the store could not be read.
    pub fn poll_fill(
        &mut self,
        cx: &mut Context<'_>,
        deliver: &mut impl FnMut(Delivery),
    ) -> Poll<Result<()>> {
        loop {
            if let Some(fill) = self.fill.as_mut() {
                let (key, read) = std::task::ready!(fill.as_mut().poll(cx));
                self.fill = None;
                self.filled(key, read?, deliver);
                continue;
            }
            let Some(sub) = self.subs.iter_mut().find(|s| s.state == State::Stale) else {
                return Poll::Ready(Ok(()));
            };
            if sub.key == StreamKey::Tasks {
                // Nothing to read back: say that state changes were missed.
                sub.state = State::Live;
                deliver(Delivery {
                    seq: 0,
                    frame: tasks_lagged_frame(),
                });
                continue;
            }
            sub.state = State::Filling { again: false };
            let (store, key, after) = (self.store.clone(), sub.key, sub.last);
            // On its own task: the read holds a pooled store connection
            // until it completes, and this follower's owner may stop polling
            // it for a long time (a socket that does not drain).
            let read = tokio::spawn(async move { store.stored_after(key, after, PAGE).await });
            self.fill = Some(Box::pin(async move {
                let read = match read.await {
                    Ok(r) => r,
                    Err(e) => Err(crate::error::Error::internal(format!(
                        "store read failed: {e}"
                    ))),
                };
                (key, read)
            }));
        }
    }

    /// A store read of `key` came back.
    fn filled(&mut self, key: StreamKey, read: Vec<Delivery>, deliver: &mut impl FnMut(Delivery)) {
        let Some(sub) = self.subs.iter_mut().find(|s| s.key == key) else {
            return;
        };
        let full = read.len() as i64 == PAGE;
        for d in read {
            if d.seq > sub.last {
                if d.seq > sub.last + 1 {
                    // A stored stream has no holes: only retention removes
                    // events, from its front. Say so rather than skip.
                    deliver(Delivery {
                        seq: 0,
                        frame: stream_pruned_frame(sub.key, d.seq),
                    });
                }
                sub.last = d.seq;
                deliver(d);
            }
        }
        let again = matches!(sub.state, State::Filling { again: true });
        sub.state = State::Live;
        let held = std::mem::take(&mut sub.held);
        if full || again {
            sub.state = State::Stale;
            return;
        }
        for d in held {
            next_in_order(sub, d, deliver);
        }
    }
}

/// Deliver `d` if it is the next of `sub`'s stream; skip a duplicate; on a
/// gap, fall back to the store.
fn next_in_order(sub: &mut Sub, d: Delivery, deliver: &mut impl FnMut(Delivery)) {
    if sub.state != State::Live || d.seq <= sub.last {
        return;
    }
    if d.seq == sub.last + 1 {
        sub.last = d.seq;
        deliver(d);
    } else {
        // A gap: publish follows commit, so the missing events are stored.
        sub.state = State::Stale;
    }
}

/// One stream read in order (SSE, internal followers): an inbox on the bus
/// and a [`Follower`]. Unsubscribes when dropped.
pub struct Cursor {
    bus: Arc<Bus>,
    key: StreamKey,
    inbox: Arc<Inbox>,
    follower: Follower,
    items: VecDeque<Item>,
    ready: VecDeque<Delivery>,
}

impl Cursor {
    /// Start reading `key` after `after_seq`. Subscribes to the bus before
    /// reading the store, so that nothing committed in between is missed.
    pub fn new(bus: &Arc<Bus>, store: Arc<dyn Backlog>, key: StreamKey, after_seq: i64) -> Self {
        let inbox = Arc::new(Inbox::new(super::RING_CAPACITY));
        bus.subscribe(key, &inbox);
        let mut follower = Follower::new(store);
        follower.add(key, after_seq);
        Cursor {
            bus: bus.clone(),
            key,
            inbox,
            follower,
            items: VecDeque::new(),
            ready: VecDeque::new(),
        }
    }

    /// The stream this cursor reads.
    pub fn key(&self) -> StreamKey {
        self.key
    }

    /// The next event. `Ok(None)` is reserved for a closed stream.
    pub async fn next(&mut self) -> Result<Option<Delivery>> {
        std::future::poll_fn(|cx| self.poll_next(cx)).await
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Delivery>>> {
        loop {
            if let Some(d) = self.ready.pop_front() {
                return Poll::Ready(Ok(Some(d)));
            }
            let drained = self.inbox.drain(cx, &mut self.items);
            if drained.lagged {
                self.follower.lagged();
            }
            let ready = &mut self.ready;
            for item in self.items.drain(..) {
                if let Item::Event(key, d) = item {
                    self.follower.live(key, d, &mut |d| ready.push_back(d));
                }
            }
            if !self.ready.is_empty() {
                continue;
            }
            if !self.follower.needs_fill() {
                return Poll::Pending;
            }
            let ready = &mut self.ready;
            let filled = self.follower.poll_fill(cx, &mut |d| ready.push_back(d));
            match filled {
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending if self.ready.is_empty() => return Poll::Pending,
                _ => continue,
            }
        }
    }
}

impl Drop for Cursor {
    fn drop(&mut self) {
        self.bus.unsubscribe(self.key, &self.inbox);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ws::frame::Frame;

    /// A store with nothing in it.
    struct Nothing;

    #[async_trait::async_trait]
    impl Backlog for Nothing {
        async fn stored_after(&self, _: StreamKey, _: i64, _: i64) -> Result<Vec<Delivery>> {
            Ok(Vec::new())
        }
    }

    /// The `tasks` stream is live only: events of any session pass in the
    /// order they come, and a lag becomes one `tasks.lagged` event instead
    /// of a store read.
    #[tokio::test]
    async fn the_tasks_stream_delivers_as_published_and_says_when_it_lagged() {
        let mut f = Follower::new(Arc::new(Nothing));
        f.add(StreamKey::Tasks, 0);
        assert!(!f.needs_fill());
        let mut got = Vec::new();
        for seq in [7, 3, 9] {
            let d = Delivery {
                seq,
                frame: Frame::text("{}"),
            };
            f.live(StreamKey::Tasks, d, &mut |d| got.push(d.seq));
        }
        assert_eq!(got, [7, 3, 9]);

        f.lagged();
        let mut frames = Vec::new();
        let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
        let done = f.poll_fill(&mut cx, &mut |d| frames.push(d.frame));
        assert!(matches!(done, Poll::Ready(Ok(()))));
        assert_eq!(frames.len(), 1);
        assert!(frames[0].payload_str().contains(r#""type":"tasks.lagged""#));
        assert!(!f.needs_fill());
    }
}
