//! Audit log queries and verification.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::audit::{AuditRecord, Verification, Verifier};
use crate::auth::Principal;
use crate::error::{Error, Result};

use crate::rbac::{Action, Permission};
use crate::runtime::Runtime;
use crate::store::AuditQuery;

/// Query of `GET /api/audit/events`.
#[derive(Debug, Clone, Default, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditFilter {
    pub session_id: Option<Uuid>,
    pub user_id: Option<String>,
    pub event_type: Option<String>,
    pub resource_type: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    pub limit: Option<i64>,
    /// A seq: list records older than it (cursor pagination, newest first).
    pub after: Option<i64>,
}

/// How many records verification reads at a time.
const VERIFY_PAGE: i64 = 1000;

impl Runtime {
    /// Audit records of everyone, filtered, newest first.
    pub async fn audit_events(&self, p: &Principal, f: AuditFilter) -> Result<Vec<AuditRecord>> {
        self.authorize(p, Action::AuditRead).await?;
        let query = AuditQuery {
            session_id: f.session_id,
            user_id: f.user_id,
            event_type: f.event_type,
            resource_type: f.resource_type,
            since: f.since,
            until: f.until,
            before_seq: f.after,
            limit: self.page_limit(f.limit, 100)?,
        };
        self.store.audit_query(&query).await
    }

    /// One user's activity: one's own, or anyone's with `admin:users`.
    pub async fn user_activity(
        &self,
        p: &Principal,
        user_id: &str,
        limit: Option<i64>,
    ) -> Result<Vec<AuditRecord>> {
        self.authorize(p, Action::AuditOwn).await?;
        if user_id != p.user_id && !p.permissions.contains(&Permission::AdminUsers) {
            return Err(self
                .deny(
                    p,
                    Action::AuditOwn,
                    "another user's activity needs admin:users",
                )
                .await);
        }
        let query = AuditQuery {
            user_id: Some(user_id.to_owned()),
            limit: self.page_limit(limit, 100)?,
            ..Default::default()
        };
        self.store.audit_query(&query).await
    }

    /// One session's activity: one's own session, or any with `admin:system`.
    pub async fn session_activity(
        &self,
        p: &Principal,
        id: Uuid,
        limit: Option<i64>,
    ) -> Result<Vec<AuditRecord>> {
        self.authorize(p, Action::AuditOwn).await?;
        self.visible_session(p, id).await?;
        let query = AuditQuery {
            session_id: Some(id),
            limit: self.page_limit(limit, 100)?,
            ..Default::default()
        };
        self.store.audit_query(&query).await
    }

    /// Check the whole chain and, with the node's key, every signed
    /// checkpoint (from the database and the checkpoint file).
    pub async fn verify_audit(&self, p: &Principal) -> Result<Verification> {
        self.authorize(p, Action::AuditRead).await?;
        let Some(cfg) = &self.checkpoints else {
            return verify_store(self.store.as_ref()).await;
        };
        let from_file = match &cfg.file {
            Some(f) if f.exists() => {
                crate::audit::checkpoint::read_file(f).map_err(Error::internal)?
            }
            _ => Vec::new(),
        };
        crate::audit::checkpoint::verify_with_checkpoints(
            self.store.as_ref(),
            Some(&cfg.key.public()),
            &from_file,
        )
        .await
    }
}

/// Check the whole audit chain of a store, page by page: from seq 1, or
/// after a prune from the first record kept, which a stored checkpoint
/// must vouch for (its signature is not checked: there is no key).
pub async fn verify_store(store: &dyn crate::store::Store) -> Result<Verification> {
    if store
        .audit_after(0, 1)
        .await?
        .first()
        .is_some_and(|r| r.seq > 1)
    {
        return crate::audit::checkpoint::verify_with_checkpoints(store, None, &[]).await;
    }
    let mut verifier = Verifier::default();
    let mut after = 0;
    loop {
        let page = store.audit_after(after, VERIFY_PAGE).await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        let full = page.len() as i64 == VERIFY_PAGE;
        for r in &page {
            if !verifier.feed(r) {
                return Ok(verifier.finish());
            }
        }
        if !full {
            break;
        }
    }
    Ok(verifier.finish())
}
