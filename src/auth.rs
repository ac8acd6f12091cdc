//! Users, opaque bearer tokens and the authenticated [`Principal`].
//!
//! Tokens are 32 random bytes, shown to their owner once and stored only as a
//! SHA-256 hash: they carry 256 bits of entropy, so a slow password hash would
//! add cost without adding safety.

use std::collections::BTreeSet;

use base64::Engine;
use chrono::{DateTime, Utc};
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::rbac::{Action, Permission, Role, effective_permissions};

/// A stored user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// Often an e-mail address.
    pub user_id: String,
    /// Assigned roles.
    pub roles: BTreeSet<Role>,
    /// Permissions granted on top of the roles.
    pub grants: BTreeSet<Permission>,
    /// Permissions taken away from the roles.
    pub revokes: BTreeSet<Permission>,
    /// When the user was created.
    pub created_at: DateTime<Utc>,
}

impl User {
    /// A new user with the given roles and no adjustments.
    pub fn new(user_id: impl Into<String>, roles: BTreeSet<Role>, now: DateTime<Utc>) -> Self {
        User {
            user_id: user_id.into(),
            roles,
            grants: BTreeSet::new(),
            revokes: BTreeSet::new(),
            created_at: now,
        }
    }

    /// The effective permission set.
    pub fn permissions(&self) -> BTreeSet<Permission> {
        effective_permissions(&self.roles, &self.grants, &self.revokes)
    }

    /// Grant `p`, undoing an earlier revoke of it.
    pub fn grant(&mut self, p: Permission) {
        self.revokes.remove(&p);
        self.grants.insert(p);
    }

    /// Revoke `p`, undoing an earlier grant of it.
    pub fn revoke(&mut self, p: Permission) {
        self.grants.remove(&p);
        self.revokes.insert(p);
    }
}

/// Who is making a request: a user resolved from a valid token.
#[derive(Debug, Clone)]
pub struct Principal {
    /// The user's id.
    pub user_id: String,
    /// Their roles, for display.
    pub roles: BTreeSet<Role>,
    /// Their effective permissions, the only thing checks look at.
    pub permissions: BTreeSet<Permission>,
    /// The device the request comes from, when the client named one.
    pub device_id: Option<String>,
    /// The peer address, for audit records.
    pub peer: Option<String>,
    /// Capped to viewer permissions because the device is not trusted
    /// (`device_trust = "require"`); role changes keep the cap.
    pub device_capped: bool,
}

impl Principal {
    /// The principal for `user`.
    pub fn of(user: &User) -> Self {
        Principal {
            user_id: user.user_id.clone(),
            roles: user.roles.clone(),
            permissions: user.permissions(),
            device_id: None,
            peer: None,
            device_capped: false,
        }
    }

    /// Whether this principal may perform `action` (never audited; use
    /// `Runtime::authorize` for checks that should be).
    pub fn may(&self, action: Action) -> bool {
        action.missing(&self.permissions).is_none()
    }

    /// Whether this principal sees every user's sessions, tasks and events.
    pub fn sees_all(&self) -> bool {
        self.may(Action::ReadAll)
    }

    /// Whether the principal may see something owned by `owner`.
    pub fn can_see(&self, owner: &str) -> bool {
        self.user_id == owner || self.sees_all()
    }
}

/// Prefix of every token, so that secret scanners can recognise them.
pub const TOKEN_PREFIX: &str = "sb_";

/// A fresh random token and its hash.
pub fn new_token() -> (String, String) {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let token = format!(
        "{TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    );
    let hash = hash_token(&token);
    (token, hash)
}

/// The stored form of a token.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Validate a user id: 1..=255 printable characters without whitespace or `/`.
pub fn validate_user_id(user_id: &str) -> Result<(), String> {
    if user_id.is_empty() || user_id.len() > 255 {
        return Err("user_id must be 1 to 255 characters".into());
    }
    if user_id
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == '/')
    {
        return Err("user_id must not contain whitespace, control characters or '/'".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tokens are unique, prefixed, and their hash is stable and not the token.
    #[test]
    fn tokens_are_random_and_hashed() {
        let (a, ha) = new_token();
        let (b, hb) = new_token();
        assert_ne!(a, b);
        assert_ne!(ha, hb);
        assert!(a.starts_with(TOKEN_PREFIX));
        assert_eq!(hash_token(&a), ha);
        assert!(!ha.contains(&a));
        assert_eq!(ha.len(), 64);
    }

    /// A later grant undoes a revoke and vice versa.
    #[test]
    fn grant_and_revoke_are_exclusive() {
        let mut u = User::new("a", [Role::Viewer].into(), Utc::now());
        u.revoke(Permission::TaskView);
        assert!(!u.permissions().contains(&Permission::TaskView));
        u.grant(Permission::TaskView);
        assert!(u.permissions().contains(&Permission::TaskView));
        assert!(u.revokes.is_empty());
    }

    /// User ids are checked.
    #[test]
    fn user_ids_are_validated() {
        assert!(validate_user_id("dev@team.com").is_ok());
        assert!(validate_user_id("").is_err());
        assert!(validate_user_id("a b").is_err());
        assert!(validate_user_id("a/b").is_err());
        assert!(validate_user_id(&"x".repeat(256)).is_err());
    }
}
