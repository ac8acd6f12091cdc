//! Who calls: bearer tokens resolved to principals, and the one
//! permission check.

use chrono::{DateTime, Utc};

use crate::audit::{AuditStatus, NewAudit, kind};
use crate::auth::{Principal, User, hash_token};
use crate::error::{Error, Result};
use crate::event::now;
use crate::protocol::UserView;
use crate::rbac::Action;
use crate::runtime::Runtime;

impl Runtime {
    /// Resolve a bearer token. A bad one is audited as `auth.failed` with
    /// the peer address.
    pub async fn authenticate(
        &self,
        token: Option<&str>,
        peer: Option<String>,
    ) -> Result<Principal> {
        Ok(self.authenticate_until(token, peer).await?.0)
    }

    /// [`Runtime::authenticate`], with when the token expires (`None`:
    /// never), from the same lookup.
    pub async fn authenticate_until(
        &self,
        token: Option<&str>,
        peer: Option<String>,
    ) -> Result<(Principal, Option<DateTime<Utc>>)> {
        let ip = peer
            .as_deref()
            .and_then(|p| p.parse::<std::net::SocketAddr>().ok())
            .map(|a| a.ip());
        if let Err(retry_after) = self.throttle.auth_allowed(ip) {
            metrics::counter!("switchboard_rate_limited_total", "what" => "auth").increment(1);
            return Err(Error::RateLimited {
                message: "too many failed authentications from this address; try again later"
                    .into(),
                retry_after,
            });
        }
        let Some(token) = token.map(str::trim).filter(|t| !t.is_empty()) else {
            return Err(Error::Unauthorized("a bearer token is required".into()));
        };
        match self.resolve_token(token).await? {
            Some((user, expires_at)) => {
                let mut p = Principal::of(&user);
                p.peer = peer;
                Ok((p, expires_at))
            }
            None => {
                self.throttle.auth_failed(ip);
                metrics::counter!("switchboard_auth_failures_total").increment(1);
                let record = NewAudit::by(None, kind::AUTH_FAILED, "authenticate")
                    .status(AuditStatus::Failure)
                    .detail("peer", peer.as_deref().unwrap_or("unknown"))
                    .detail("reason", "unknown, expired or revoked token");
                self.audit_or_warn(record, "a failed authentication").await;
                Err(Error::Unauthorized(
                    "the token is unknown, expired or revoked".into(),
                ))
            }
        }
    }

    /// The user of a live token and its expiry, from the cache or the store.
    async fn resolve_token(&self, token: &str) -> Result<Option<(User, Option<DateTime<Utc>>)>> {
        let hash = hash_token(token);
        if let Some(hit) = self.tokens.get(&hash) {
            return Ok(Some(hit));
        }
        let Some((user, expires_at)) = self.store.token_owner(&hash, now()).await? else {
            return Ok(None);
        };
        self.tokens.put(&hash, &user, expires_at);
        Ok(Some((user, expires_at)))
    }

    /// The one permission check. A denial is audited as `permission.denied`.
    pub async fn authorize(&self, p: &Principal, action: Action) -> Result<()> {
        match action.missing(&p.permissions) {
            None => Ok(()),
            Some(missing) => Err(self
                .deny(p, action, &format!("missing permission {missing}"))
                .await),
        }
    }

    /// Record a denial and return the `forbidden` error for it.
    pub(super) async fn deny(&self, p: &Principal, action: Action, why: &str) -> Error {
        metrics::counter!("switchboard_denied_total", "action" => action.as_str()).increment(1);
        let record = NewAudit::by(Some(p), kind::PERMISSION_DENIED, action.as_str())
            .status(AuditStatus::Denied)
            .detail("reason", why);
        self.audit_or_warn(record, "a denial").await;
        Error::Forbidden(format!("{} is not allowed: {why}", action.as_str()))
    }

    /// `GET /api/me`.
    pub async fn me(&self, p: &Principal) -> Result<UserView> {
        self.authorize(p, Action::WhoAmI).await?;
        Ok(UserView {
            user_id: p.user_id.clone(),
            roles: p.roles.clone(),
            permissions: p.permissions.clone(),
            grants: Default::default(),
            revokes: Default::default(),
        })
    }

    /// Store an audit record whose loss must not fail the operation it
    /// records (a refusal is answered all the same): a failure is logged.
    pub(super) async fn audit_or_warn(&self, record: NewAudit, what: &str) {
        if let Err(e) = self.store.audit(vec![record]).await {
            tracing::warn!(error = %e, "could not audit {what}");
        }
    }
}
