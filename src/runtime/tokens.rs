//! A short-lived memory of resolved bearer tokens, so that a burst of
//! connections (a dashboard wall reconnecting, a load test) does not read
//! the store once per `hello`.
//!
//! Entries live [`TTL`] at most and are dropped at once when this node
//! changes the user (roles, grants, revoked tokens). On a cluster, a change
//! made on another node reaches this node's new connections within [`TTL`].

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use dashmap::DashMap;

use crate::auth::User;

/// How long a resolved token is trusted without asking the store again.
pub const TTL: Duration = Duration::from_secs(5);
/// Entries kept at most; past it the cache starts over.
const CAPACITY: usize = 10_000;

#[derive(Clone)]
struct Entry {
    user: User,
    expires_at: Option<DateTime<Utc>>,
    at: Instant,
}

/// Token hash → user and token expiry.
#[derive(Default)]
pub struct TokenCache {
    entries: DashMap<String, Entry>,
}

impl TokenCache {
    /// The user of a live token and when the token expires, if known.
    pub fn get(&self, hash: &str) -> Option<(User, Option<DateTime<Utc>>)> {
        let e = self.entries.get(hash)?.clone();
        let expired = e.expires_at.is_some_and(|t| t <= Utc::now());
        if e.at.elapsed() > TTL || expired {
            self.entries.remove(hash);
            return None;
        }
        Some((e.user, e.expires_at))
    }

    /// Remember what the store said of a live token.
    pub fn put(&self, hash: &str, user: &User, expires_at: Option<DateTime<Utc>>) {
        if self.entries.len() >= CAPACITY {
            self.entries.clear();
        }
        self.entries.insert(
            hash.to_owned(),
            Entry {
                user: user.clone(),
                expires_at,
                at: Instant::now(),
            },
        );
    }

    /// Forget every token of a user (its roles changed, or its tokens were
    /// revoked).
    pub fn forget_user(&self, user_id: &str) {
        self.entries.retain(|_, e| e.user.user_id != user_id);
    }
}
