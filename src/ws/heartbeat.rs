//! A connection's clock: when to ping, when a silent peer is dropped and
//! when its token expires, on one timer.
//!
//! The timer is set to whichever comes first: the next ping, two intervals
//! after the peer's last sign of life, or expiry. So a silent peer is
//! dropped two intervals after it went quiet, not at the first ping after
//! that (which would make it two to three).

use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// What is due.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Beat {
    /// Send a ping.
    Ping,
    /// The peer showed no sign of life for two intervals.
    Silent,
    /// The connection's token expired.
    Expired,
}

pub(super) struct Heartbeat {
    timer: Pin<Box<Sleep>>,
    next_ping: Instant,
    period: Duration,
    expires: Option<Instant>,
}

impl Heartbeat {
    /// Pings every `period`, from now; `expires` ends the connection.
    pub fn new(period: Duration, expires: Option<Instant>) -> Self {
        let next_ping = Instant::now() + period;
        let first = expires.map_or(next_ping, |e| e.min(next_ping));
        Heartbeat {
            timer: Box::pin(tokio::time::sleep_until(first)),
            next_ping,
            period,
            expires,
        }
    }

    /// The next thing due, given when the peer last showed life.
    pub fn poll(&mut self, cx: &mut Context<'_>, last_seen: Instant) -> Poll<Beat> {
        loop {
            ready!(self.timer.as_mut().poll(cx));
            let now = Instant::now();
            let silent_at = last_seen + 2 * self.period;
            let beat = if self.expires.is_some_and(|e| now >= e) {
                Some(Beat::Expired)
            } else if now >= silent_at {
                Some(Beat::Silent)
            } else if now >= self.next_ping {
                self.next_ping = now + self.period;
                Some(Beat::Ping)
            } else {
                // The peer spoke since the deadline was set: a later one.
                None
            };
            let mut next = self.next_ping.min(silent_at.max(now));
            if let Some(e) = self.expires {
                next = next.min(e);
            }
            self.timer.as_mut().reset(next);
            if let Some(beat) = beat {
                return Poll::Ready(beat);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: Duration = Duration::from_secs(10);

    async fn next(h: &mut Heartbeat, last_seen: Instant) -> (Beat, Duration) {
        let start = Instant::now();
        let beat = std::future::poll_fn(|cx| h.poll(cx, last_seen)).await;
        (beat, start.elapsed())
    }

    /// A peer that answers every ping is pinged once an interval and never
    /// dropped; one that goes quiet is dropped exactly two intervals after
    /// its last sign of life, between pings.
    #[tokio::test(start_paused = true)]
    async fn a_silent_peer_is_dropped_two_intervals_after_its_last_sign() {
        let mut h = Heartbeat::new(P, None);
        for _ in 0..5 {
            assert_eq!(next(&mut h, Instant::now()).await, (Beat::Ping, P));
        }
        let quiet = Instant::now() - Duration::from_secs(3);
        assert_eq!(next(&mut h, quiet).await, (Beat::Ping, P));
        let (beat, _) = next(&mut h, quiet).await;
        assert_eq!(beat, Beat::Silent);
        assert_eq!(Instant::now() - quiet, 2 * P);
    }

    /// Expiry comes at its moment, ahead of pings.
    #[tokio::test(start_paused = true)]
    async fn expiry_comes_on_time() {
        let at = Instant::now() + Duration::from_secs(25);
        let mut h = Heartbeat::new(P, Some(at));
        assert_eq!(next(&mut h, Instant::now()).await.0, Beat::Ping);
        assert_eq!(next(&mut h, Instant::now()).await.0, Beat::Ping);
        assert_eq!(next(&mut h, Instant::now()).await.0, Beat::Expired);
        assert_eq!(Instant::now(), at);
    }
}
