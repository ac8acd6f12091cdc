//! Abuse limits: per-user submit rates, per-connection frame rates and
//! failed authentications per peer address.
//!
//! Rates are token buckets (`governor`, keyed, lock-free per key). Failed
//! authentications use a fixed one-minute window per address, because the
//! check must look without counting (only failures count).

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::config::SecurityConfig;

/// The node's limiters.
pub struct Throttle {
    submits: DefaultKeyedRateLimiter<String>,
    auth_failures: DashMap<IpAddr, (Instant, u32)>,
    max_auth_failures: u32,
    frames_per_second: NonZeroU32,
    /// One clock for every limiter: making one calibrates it (CPUID, slow
    /// in a VM), which cost a tenth of a connection's CPU when each
    /// connection made its own.
    clock: DefaultClock,
}

const WINDOW: Duration = Duration::from_secs(60);

fn nonzero(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n.max(1)).unwrap_or(NonZeroU32::MIN)
}

impl Throttle {
    /// Limiters for `cfg`.
    pub fn new(cfg: &SecurityConfig) -> Self {
        Throttle {
            submits: RateLimiter::keyed(Quota::per_minute(nonzero(cfg.submits_per_minute))),
            auth_failures: DashMap::new(),
            max_auth_failures: cfg.auth_failures_per_minute.max(1),
            frames_per_second: nonzero(cfg.frames_per_second),
            clock: DefaultClock::default(),
        }
    }

    /// Take one submit from `user_id`'s budget; `Err(seconds)` to wait.
    pub fn submit(&self, user_id: &str) -> Result<(), u64> {
        self.submits
            .check_key(&user_id.to_owned())
            .map_err(|not_until| {
                let wait = not_until.wait_time_from(self.clock.now());
                wait.as_secs().max(1)
            })
    }

    /// A per-connection frame limiter.
    pub fn frame_limiter(&self) -> FrameLimiter {
        FrameLimiter(RateLimiter::direct_with_clock(
            Quota::per_second(self.frames_per_second)
                .allow_burst(nonzero(self.frames_per_second.get() * 2)),
            self.clock.clone(),
        ))
    }

    /// Whether `peer` failed to authenticate too often lately; `Err(seconds)`.
    pub fn auth_allowed(&self, peer: Option<IpAddr>) -> Result<(), u64> {
        let Some(ip) = peer else { return Ok(()) };
        match self.auth_failures.get(&ip) {
            Some(e) if e.0.elapsed() < WINDOW && e.1 >= self.max_auth_failures => {
                Err(WINDOW.saturating_sub(e.0.elapsed()).as_secs().max(1))
            }
            _ => Ok(()),
        }
    }

    /// Count a failed authentication from `peer`.
    pub fn auth_failed(&self, peer: Option<IpAddr>) {
        let Some(ip) = peer else { return };
        let mut e = self.auth_failures.entry(ip).or_insert((Instant::now(), 0));
        if e.0.elapsed() >= WINDOW {
            *e = (Instant::now(), 0);
        }
        e.1 += 1;
        drop(e);
        // Keep the map from growing without bound under a spray of addresses.
        if self.auth_failures.len() > 100_000 {
            self.auth_failures.retain(|_, v| v.0.elapsed() < WINDOW);
        }
    }
}

/// The frame budget of one WebSocket connection.
pub struct FrameLimiter(governor::DefaultDirectRateLimiter);

impl FrameLimiter {
    /// Take one frame; false when over the limit.
    pub fn allow(&self) -> bool {
        self.0.check().is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Submits are limited per user, independently.
    #[test]
    fn submits_are_limited_per_user() {
        let t = Throttle::new(&SecurityConfig {
            submits_per_minute: 2,
            ..Default::default()
        });
        assert!(t.submit("a").is_ok());
        assert!(t.submit("a").is_ok());
        assert!(t.submit("a").unwrap_err() >= 1);
        assert!(t.submit("b").is_ok());
    }

    /// An address is refused after too many failures; others are not.
    #[test]
    fn auth_failures_block_the_address() {
        let t = Throttle::new(&SecurityConfig {
            auth_failures_per_minute: 2,
            ..Default::default()
        });
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        t.auth_failed(Some(a));
        assert!(t.auth_allowed(Some(a)).is_ok());
        t.auth_failed(Some(a));
        assert!(t.auth_allowed(Some(a)).is_err());
        assert!(t.auth_allowed(Some(b)).is_ok());
        assert!(t.auth_allowed(None).is_ok());
    }
}
