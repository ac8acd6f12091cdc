//! Who is connected now: the registry of live WebSocket connections, indexed
//! by connection and by user, so that a token revocation can close a user's
//! sockets and a role change can reach them at once.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::auth::Principal;

/// Why the server closes a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The user's tokens were revoked (close 4401).
    Revoked,
    /// The node is shutting down (close 1001).
    Shutdown,
}

/// One live connection, as the registry keeps it.
struct Entry {
    user_id: String,
    session_id: Uuid,
    device_id: Option<String>,
    since: DateTime<Utc>,
    peer: Option<String>,
    principal: watch::Sender<Principal>,
    close: CancellationToken,
    reason: watch::Sender<Option<CloseReason>>,
}

/// A connection's view of its registration.
pub struct Registration {
    /// The connection id.
    pub id: u64,
    /// The current principal, updated when the user's roles change.
    pub principal: watch::Receiver<Principal>,
    /// Fires when the server wants the connection closed.
    pub close: CancellationToken,
    /// Why it was closed.
    pub reason: watch::Receiver<Option<CloseReason>>,
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

    /// Register a connection of `principal` to `session_id`.
    pub fn register(
        &self,
        principal: Principal,
        session_id: Uuid,
        now: DateTime<Utc>,
    ) -> Registration {
        let mut idx = self.lock();
        idx.next_id += 1;
        let id = idx.next_id;
        let (ptx, prx) = watch::channel(principal.clone());
        let (rtx, rrx) = watch::channel(None);
        let close = CancellationToken::new();
        idx.by_user
            .entry(principal.user_id.clone())
            .or_default()
            .insert(id);
        idx.by_id.insert(
            id,
            Entry {
                user_id: principal.user_id.clone(),
                session_id,
                device_id: principal.device_id.clone(),
                since: now,
                peer: principal.peer.clone(),
                principal: ptx,
                close: close.clone(),
                reason: rtx,
            },
        );
        metrics::gauge!("switchboard_connections").set(idx.by_id.len() as f64);
        Registration {
            id,
            principal: prx,
            close,
            reason: rrx,
        }
    }

    /// Forget a connection.
    pub fn unregister(&self, id: u64) {
        let mut idx = self.lock();
        if let Some(e) = idx.by_id.remove(&id) {
            if let Some(set) = idx.by_user.get_mut(&e.user_id) {
                set.remove(&id);
                if set.is_empty() {
                    idx.by_user.remove(&e.user_id);
                }
            }
        }
        metrics::gauge!("switchboard_connections").set(idx.by_id.len() as f64);
    }

    /// Close every connection of a user.
    pub fn close_user(&self, user_id: &str, reason: CloseReason) -> usize {
        let idx = self.lock();
        let ids = idx.by_user.get(user_id).cloned().unwrap_or_default();
        for id in &ids {
            if let Some(e) = idx.by_id.get(id) {
                let _ = e.reason.send(Some(reason));
                e.close.cancel();
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
            .filter(|e| e.device_id.as_deref() == Some(device_id))
        {
            let _ = e.reason.send(Some(reason));
            e.close.cancel();
            n += 1;
        }
        n
    }

    /// Give a user's open connections their new permissions.
    pub fn update_user(&self, user: &crate::auth::User) {
        let idx = self.lock();
        for id in idx.by_user.get(&user.user_id).into_iter().flatten() {
            if let Some(e) = idx.by_id.get(id) {
                e.principal.send_modify(|p| {
                    p.roles = user.roles.clone();
                    p.permissions = user.permissions();
                    // An untrusted device stays capped whatever the roles say.
                    if p.device_capped {
                        p.permissions = crate::device::cap_untrusted(&p.permissions);
                    }
                });
            }
        }
    }

    /// Close everything (shutdown).
    pub fn close_all(&self, reason: CloseReason) {
        for e in self.lock().by_id.values() {
            let _ = e.reason.send(Some(reason));
            e.close.cancel();
        }
    }

    /// Who is connected; one user's connections, or everyone's.
    pub fn list(&self, user_id: Option<&str>) -> Vec<PresenceView> {
        let idx = self.lock();
        let mut out: Vec<_> = idx
            .by_id
            .iter()
            .filter(|(_, e)| user_id.is_none_or(|u| e.user_id == u))
            .map(|(id, e)| PresenceView {
                connection_id: *id,
                user_id: e.user_id.clone(),
                session_id: e.session_id,
                device_id: e.device_id.clone(),
                since: e.since,
                peer: e.peer.clone(),
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
                assert_eq!(&e.user_id, user);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::User;
    use crate::rbac::Role;

    fn principal(user: &str) -> Principal {
        Principal::of(&User::new(user, [Role::Viewer].into(), Utc::now()))
    }

    /// Registering, closing and unregistering keep both indices in step.
    #[test]
    fn indices_stay_consistent() {
        let p = Presence::new();
        let a1 = p.register(principal("a"), Uuid::new_v4(), Utc::now());
        let a2 = p.register(principal("a"), Uuid::new_v4(), Utc::now());
        let b = p.register(principal("b"), Uuid::new_v4(), Utc::now());
        p.check_invariants();
        assert_eq!(p.close_user("a", CloseReason::Revoked), 2);
        assert!(a1.close.is_cancelled() && a2.close.is_cancelled());
        assert!(!b.close.is_cancelled());
        assert_eq!(*a1.reason.borrow(), Some(CloseReason::Revoked));
        p.unregister(a1.id);
        p.check_invariants();
        p.unregister(a2.id);
        p.unregister(b.id);
        p.unregister(b.id);
        p.check_invariants();
        assert_eq!(p.count(), 0);
    }

    /// A role change reaches open connections.
    #[test]
    fn role_changes_reach_connections() {
        let p = Presence::new();
        let reg = p.register(principal("a"), Uuid::new_v4(), Utc::now());
        let mut u = User::new("a", [Role::Admin].into(), Utc::now());
        u.revoke(crate::rbac::Permission::AdminSystem);
        p.update_user(&u);
        let now = reg.principal.borrow().clone();
        assert!(now.roles.contains(&Role::Admin));
        assert!(
            !now.permissions
                .contains(&crate::rbac::Permission::AdminSystem)
        );
    }
}
