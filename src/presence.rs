//! Who is connected now: the registry of live WebSocket connections, indexed
//! by connection and by user, so that a token revocation can close a user's
//! sockets and a role change can reach them at once.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::auth::Principal;
use crate::bus::{Inbox, Item};

/// Why the server closes a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The user's tokens were revoked (close 4401).
    Revoked,
    /// The node is shutting down (close 1001).
    Shutdown,
}

impl CloseReason {
    /// The close code and reason a connection closes with.
    pub fn close(self) -> (u16, &'static str) {
        match self {
            CloseReason::Revoked => (crate::ws::close::UNAUTHORIZED, "token revoked"),
            CloseReason::Shutdown => (crate::ws::close::GOING_AWAY, "server shutting down"),
        }
    }
}

/// One live connection, as the registry keeps it.
struct Entry {
    session_id: Uuid,
    since: DateTime<Utc>,
    /// Its principal now (user, device, peer).
    principal: Arc<Principal>,
    /// Where close requests and principal changes go.
    inbox: Arc<Inbox>,
}

impl Entry {
    fn close(&self, reason: CloseReason) {
        let (code, why) = reason.close();
        self.inbox.close(code, why);
    }
}

/// Presence as the API lists it.
#[derive(
    Debug, Clone, Serialize, serde::Deserialize, PartialEq, utoipa::ToSchema, schemars::JsonSchema,
)]
pub struct PresenceView {
    pub connection_id: u64,
    pub user_id: String,
    pub session_id: Uuid,
    pub device_id: Option<String>,
    #[serde(with = "crate::protocol::micros")]
    #[schemars(with = "chrono::DateTime<chrono::Utc>")]
    pub since: DateTime<Utc>,
    pub peer: Option<String>,
}

#[derive(Default)]
struct Indices {
    next_id: u64,
    by_id: HashMap<u64, Entry>,
    by_user: HashMap<String, BTreeSet<u64>>,
}

/// The registry. A std mutex is right: every method holds it for a few map
/// operations and never across an await, and connects and disconnects are
/// rare next to messages (which never touch it).
#[derive(Default)]
pub struct Presence {
    inner: Mutex<Indices>,
}

impl Presence {
    /// An empty registry.
    pub fn new() -> Self {
        Presence::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Indices> {
        // A panic while holding the lock leaves plain maps behind, still usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Register a connection of `principal` to `session_id`, reached
    /// through `inbox`; returns its id.
    pub fn register(
        &self,
        principal: Arc<Principal>,
        session_id: Uuid,
        now: DateTime<Utc>,
        inbox: Arc<Inbox>,
    ) -> u64 {
        let mut idx = self.lock();
        idx.next_id += 1;
        let id = idx.next_id;
        idx.by_user
            .entry(principal.user_id.clone())
            .or_default()
            .insert(id);
        idx.by_id.insert(
            id,
            Entry {
                session_id,
                since: now,
                principal,
                inbox,
            },
        );
        metrics::gauge!("switchboard_connections").set(idx.by_id.len() as f64);
        id
    }

    /// Forget a connection.
    pub fn unregister(&self, id: u64) {
        let mut idx = self.lock();
        if let Some(e) = idx.by_id.remove(&id) {
            let user = &e.principal.user_id;
            if let Some(set) = idx.by_user.get_mut(user) {
                set.remove(&id);
                if set.is_empty() {
                    idx.by_user.remove(user);
                }
            }
            shrink_when_sparse(&mut idx.by_id);
            shrink_when_sparse(&mut idx.by_user);
        }
        metrics::gauge!("switchboard_connections").set(idx.by_id.len() as f64);
    }

    /// Close every connection of a user.
    pub fn close_user(&self, user_id: &str, reason: CloseReason) -> usize {
        let idx = self.lock();
        let ids = idx.by_user.get(user_id).cloned().unwrap_or_default();
        for id in &ids {
            if let Some(e) = idx.by_id.get(id) {
                e.close(reason);
            }
        }
        ids.len()
    }

    /// Close every connection from a device.
    pub fn close_device(&self, device_id: &str, reason: CloseReason) -> usize {
        let idx = self.lock();
        let mut n = 0;
        for e in idx
            .by_id
            .values()
            .filter(|e| e.principal.device_id.as_deref() == Some(device_id))
        {
            e.close(reason);
            n += 1;
        }
        n
    }

    /// Give a user's open connections their new permissions.
    pub fn update_user(&self, user: &crate::auth::User) {
        let mut idx = self.lock();
        let ids: Vec<u64> = idx
            .by_user
            .get(&user.user_id)
            .into_iter()
            .flatten()
            .copied()
            .collect();
        for id in ids {
            if let Some(e) = idx.by_id.get_mut(&id) {
                let mut p = Principal::clone(&e.principal);
                p.roles = user.roles.clone();
                p.permissions = user.permissions();
                // An untrusted device stays capped whatever the roles say.
                if p.device_capped {
                    p.permissions = crate::device::cap_untrusted(&p.permissions);
                }
                e.principal = Arc::new(p);
                e.inbox.push(Item::Principal(e.principal.clone()));
            }
        }
    }

    /// Close everything (shutdown).
    pub fn close_all(&self, reason: CloseReason) {
        for e in self.lock().by_id.values() {
            e.close(reason);
        }
    }

    /// Who is connected; one user's connections, or everyone's.
    pub fn list(&self, user_id: Option<&str>) -> Vec<PresenceView> {
        let idx = self.lock();
        let mut out: Vec<_> = idx
            .by_id
            .iter()
            .filter(|(_, e)| user_id.is_none_or(|u| e.principal.user_id == u))
            .map(|(id, e)| PresenceView {
                connection_id: *id,
                user_id: e.principal.user_id.clone(),
                session_id: e.session_id,
                device_id: e.principal.device_id.clone(),
                since: e.since,
                peer: e.principal.peer.clone(),
            })
            .collect();
        out.sort_by_key(|p| p.connection_id);
        out
    }

    /// How many connections a user has open.
    pub fn count_user(&self, user_id: &str) -> usize {
        self.lock().by_user.get(user_id).map_or(0, |s| s.len())
    }

    /// How many connections are open.
    pub fn count(&self) -> usize {
        self.lock().by_id.len()
    }

    /// Panics when the two indices disagree (tests only).
    pub fn check_invariants(&self) {
        let idx = self.lock();
        let mut seen = 0;
        for (user, ids) in &idx.by_user {
            assert!(!ids.is_empty(), "empty id set kept for {user}");
            for id in ids {
                let e = idx
                    .by_id
                    .get(id)
                    .expect("by_user names a missing connection");
                assert_eq!(&e.principal.user_id, user);
                seen += 1;
            }
        }
        assert_eq!(
            seen,
            idx.by_id.len(),
            "a connection is missing from by_user"
        );
    }
}

/// Give back what a burst of connections grew `map` to once it is down to
/// an eighth of that (halving then leaves room to grow again).
fn shrink_when_sparse<K: Eq + std::hash::Hash, V>(map: &mut HashMap<K, V>) {
    if map.capacity() > 64 && map.len() * 8 < map.capacity() {
        map.shrink_to(map.len() * 2);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::User;
    use crate::rbac::Role;
    use std::collections::VecDeque;

    fn principal(user: &str) -> Arc<Principal> {
        Arc::new(Principal::of(&User::new(
            user,
            [Role::Viewer].into(),
            Utc::now(),
        )))
    }

    fn drained(inbox: &Inbox) -> (crate::bus::Drained, VecDeque<Item>) {
        let mut out = VecDeque::new();
        let cx = std::task::Context::from_waker(futures_util::task::noop_waker_ref());
        (inbox.drain(&cx, &mut out), out)
    }

    /// Registering, closing and unregistering keep both indices in step.
    #[test]
    fn indices_stay_consistent() {
        let p = Presence::new();
        let inboxes: Vec<Arc<Inbox>> = (0..3).map(|_| Arc::new(Inbox::new(4))).collect();
        let a1 = p.register(
            principal("a"),
            Uuid::new_v4(),
            Utc::now(),
            inboxes[0].clone(),
        );
        let a2 = p.register(
            principal("a"),
            Uuid::new_v4(),
            Utc::now(),
            inboxes[1].clone(),
        );
        let b = p.register(
            principal("b"),
            Uuid::new_v4(),
            Utc::now(),
            inboxes[2].clone(),
        );
        p.check_invariants();
        assert_eq!(p.close_user("a", CloseReason::Revoked), 2);
        assert_eq!(drained(&inboxes[0]).0.close, Some((4401, "token revoked")));
        assert!(drained(&inboxes[1]).0.close.is_some());
        assert!(drained(&inboxes[2]).0.close.is_none());
        p.unregister(a1);
        p.check_invariants();
        p.unregister(a2);
        p.unregister(b);
        p.unregister(b);
        p.check_invariants();
        assert_eq!(p.count(), 0);
    }

    /// A burst of connections that went away leaves small indices behind,
    /// and the ones still open are all there.
    #[test]
    fn indices_shrink_after_a_burst() {
        let p = Presence::new();
        let inbox = Arc::new(Inbox::new(4));
        let ids: Vec<u64> = (0..3000)
            .map(|i| {
                p.register(
                    principal(&format!("u{}", i % 300)),
                    Uuid::new_v4(),
                    Utc::now(),
                    inbox.clone(),
                )
            })
            .collect();
        let grown = p.lock().by_id.capacity();
        for id in &ids[10..] {
            p.unregister(*id);
        }
        p.check_invariants();
        assert_eq!(p.count(), 10);
        let idx = p.lock();
        assert!(
            idx.by_id.capacity() <= 64,
            "{} of {grown}",
            idx.by_id.capacity()
        );
        assert!(idx.by_user.capacity() <= 64, "{}", idx.by_user.capacity());
    }

    /// A role change reaches open connections.
    #[test]
    fn role_changes_reach_connections() {
        let p = Presence::new();
        let inbox = Arc::new(Inbox::new(4));
        p.register(principal("a"), Uuid::new_v4(), Utc::now(), inbox.clone());
        let mut u = User::new("a", [Role::Admin].into(), Utc::now());
        u.revoke(crate::rbac::Permission::AdminSystem);
        p.update_user(&u);
        let (_, items) = drained(&inbox);
        let Some(Item::Principal(now)) = items.front() else {
            panic!("no principal change: {items:?}");
        };
        assert!(now.roles.contains(&Role::Admin));
        assert!(
            !now.permissions
                .contains(&crate::rbac::Permission::AdminSystem)
        );
    }
}
