//! User administration: users, roles, grants, tokens.

use std::collections::BTreeSet;

use crate::audit::{NewAudit, kind};
use crate::auth::{Principal, User, hash_token, new_token, validate_user_id};
use crate::error::{Error, Result};
use crate::event::now;
use crate::presence::CloseReason;
use crate::protocol::{
    CreateUserRequest, CreatedUser, PermissionRequest, TokenRequest, TokenView, TokensRevoked,
    UserView,
};
use crate::rbac::{Action, Permission, Role};
use crate::runtime::Runtime;

fn parse_role(name: &str) -> Result<Role> {
    name.parse().map_err(|_| {
        Error::BadRequest(format!(
            "unknown role `{name}`: expected admin, developer, viewer or guest"
        ))
    })
}

fn parse_permission(name: &str) -> Result<Permission> {
    name.parse()
        .map_err(|_| Error::BadRequest(format!("unknown permission `{name}`")))
}

impl Runtime {
    /// First start on an empty database: create `admin`. Returns the token
    /// when it was generated (so the caller can show it once).
    pub async fn bootstrap(&self, admin_token: Option<&str>) -> anyhow::Result<Option<String>> {
        if self.store.user_count().await? > 0 {
            return Ok(None);
        }
        let (token, generated) = match admin_token {
            Some(t) => (t.to_owned(), false),
            None => (new_token().0, true),
        };
        let user = User::new("admin", [Role::Admin].into(), now());
        let audit = vec![
            NewAudit::by(None, kind::USER_CREATED, "bootstrap")
                .for_user("admin")
                .resource("user", "admin")
                .detail("roles", ["admin"]),
            NewAudit::by(None, kind::TOKEN_ISSUED, "bootstrap")
                .for_user("admin")
                .resource("user", "admin"),
        ];
        match self
            .store
            .create_user(&user, &hash_token(&token), audit)
            .await
        {
            Ok(()) => Ok(generated.then_some(token)),
            // Another node sharing this empty database bootstrapped it at
            // the same moment: its admin stands.
            Err(Error::Conflict(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn user(&self, user_id: &str) -> Result<User> {
        self.store
            .get_user(user_id)
            .await?
            .ok_or_else(|| Error::not_found(format!("user {user_id}")))
    }

    /// Store a changed user and let their open connections know.
    async fn save_user(&self, user: &User, audit: NewAudit) -> Result<UserView> {
        self.store.update_user(user, vec![audit]).await?;
        self.tokens.forget_user(&user.user_id);
        self.presence.update_user(user);
        Ok(user.into())
    }

    /// Create a user and their first token.
    pub async fn create_user(&self, p: &Principal, req: CreateUserRequest) -> Result<CreatedUser> {
        self.authorize(p, Action::UserAdmin).await?;
        validate_user_id(&req.user_id).map_err(Error::BadRequest)?;
        let roles: BTreeSet<Role> = req
            .roles
            .iter()
            .map(|r| parse_role(r))
            .collect::<Result<_>>()?;
        let user = User::new(&req.user_id, roles.clone(), now());
        let (token, hash) = new_token();
        let mut audit = vec![
            NewAudit::by(Some(p), kind::USER_CREATED, "create_user")
                .resource("user", &req.user_id)
                .detail("roles", &roles),
            NewAudit::by(Some(p), kind::TOKEN_ISSUED, "create_user").resource("user", &req.user_id),
        ];
        audit.extend(roles.iter().map(|r| {
            NewAudit::by(Some(p), kind::ROLE_ASSIGNED, "create_user")
                .resource("user", &req.user_id)
                .detail("role", r)
        }));
        self.store
            .create_user(&user, &hash, audit)
            .await
            .map_err(|e| match e {
                Error::Conflict(_) => {
                    Error::Conflict(format!("user {} already exists", req.user_id))
                }
                other => other,
            })?;
        Ok(CreatedUser {
            user_id: user.user_id,
            roles,
            token,
        })
    }

    /// Every user.
    pub async fn list_users(&self, p: &Principal) -> Result<Vec<UserView>> {
        self.authorize(p, Action::UserAdmin).await?;
        Ok(self
            .store
            .list_users()
            .await?
            .iter()
            .map(Into::into)
            .collect())
    }

    /// Give a user a role.
    pub async fn assign_role(&self, p: &Principal, user_id: &str, role: &str) -> Result<UserView> {
        self.authorize(p, Action::UserAdmin).await?;
        let role = parse_role(role)?;
        let mut user = self.user(user_id).await?;
        user.roles.insert(role);
        let audit = NewAudit::by(Some(p), kind::ROLE_ASSIGNED, "assign_role")
            .resource("user", user_id)
            .detail("role", role);
        self.save_user(&user, audit).await
    }

    /// Take a role from a user.
    pub async fn revoke_role(&self, p: &Principal, user_id: &str, role: &str) -> Result<UserView> {
        self.authorize(p, Action::UserAdmin).await?;
        let role = parse_role(role)?;
        let mut user = self.user(user_id).await?;
        if !user.roles.remove(&role) {
            return Err(Error::not_found(format!("role {role} of user {user_id}")));
        }
        let audit = NewAudit::by(Some(p), kind::ROLE_REVOKED, "revoke_role")
            .resource("user", user_id)
            .detail("role", role);
        self.save_user(&user, audit).await
    }

    /// Grant or revoke one permission for one user.
    pub async fn adjust_permission(
        &self,
        p: &Principal,
        user_id: &str,
        req: PermissionRequest,
    ) -> Result<UserView> {
        self.authorize(p, Action::UserAdmin).await?;
        let mut user = self.user(user_id).await?;
        let audit = match (req.grant.as_deref(), req.revoke.as_deref()) {
            (Some(g), None) => {
                let perm = parse_permission(g)?;
                user.grant(perm);
                NewAudit::by(Some(p), kind::PERMISSION_GRANTED, "grant").detail("permission", perm)
            }
            (None, Some(r)) => {
                let perm = parse_permission(r)?;
                user.revoke(perm);
                NewAudit::by(Some(p), kind::PERMISSION_REVOKED, "revoke").detail("permission", perm)
            }
            _ => {
                return Err(Error::BadRequest(
                    "give exactly one of `grant` or `revoke`, with a permission name".into(),
                ));
            }
        };
        self.save_user(&user, audit.resource("user", user_id)).await
    }

    /// Issue another token for a user.
    pub async fn issue_token(
        &self,
        p: &Principal,
        user_id: &str,
        req: TokenRequest,
    ) -> Result<TokenView> {
        self.authorize(p, Action::UserAdmin).await?;
        self.user(user_id).await?;
        let (token, hash) = new_token();
        let at = now();
        let expires_at = match req.expires_in_secs {
            Some(0) => {
                return Err(Error::BadRequest(
                    "expires_in_secs must be at least 1".into(),
                ));
            }
            Some(secs) => Some(at + chrono::Duration::seconds(secs.min(10 * 365 * 86_400) as i64)),
            None => None,
        };
        let audit = NewAudit::by(Some(p), kind::TOKEN_ISSUED, "issue_token")
            .resource("user", user_id)
            .detail("expires_at", expires_at.as_ref().map(crate::event::rfc3339));
        self.store
            .add_token(user_id, &hash, at, expires_at, vec![audit])
            .await?;
        Ok(TokenView { token, expires_at })
    }

    /// Revoke every token of a user and close their open sockets.
    pub async fn revoke_tokens(&self, p: &Principal, user_id: &str) -> Result<TokensRevoked> {
        self.authorize(p, Action::UserAdmin).await?;
        self.user(user_id).await?;
        let audit =
            NewAudit::by(Some(p), kind::TOKEN_REVOKED, "revoke_tokens").resource("user", user_id);
        let revoked = self
            .store
            .revoke_tokens(user_id, now(), vec![audit])
            .await?;
        self.tokens.forget_user(user_id);
        let closed = self.presence.close_user(user_id, CloseReason::Revoked);
        tracing::info!(user = user_id, revoked, closed, "tokens revoked");
        Ok(TokensRevoked {
            user_id: user_id.to_owned(),
            revoked,
        })
    }
}
