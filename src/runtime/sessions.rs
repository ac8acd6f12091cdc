//! Session operations.

use uuid::Uuid;

use crate::audit::{NewAudit, kind};
use crate::auth::Principal;
use crate::bus::Cursor;
use crate::error::{Error, Result};
use crate::event::{StreamKey, now};
use crate::protocol::{CreateSessionRequest, EventList, SessionView};
use crate::rbac::Action;
use crate::runtime::retention::resume_from;
use crate::runtime::{Runtime, is_active};
use crate::session::Session;
use crate::store::TaskFilter;

/// Longest device id accepted.
const MAX_DEVICE_ID: usize = 128;

impl Runtime {
    /// Open a session for the caller, optionally bound to a device.
    pub async fn create_session(
        &self,
        p: &Principal,
        req: CreateSessionRequest,
    ) -> Result<SessionView> {
        self.authorize(p, Action::SessionCreate).await?;
        if let Some(u) = req.user_id.as_deref().filter(|u| *u != p.user_id) {
            return Err(self
                .deny(
                    p,
                    Action::SessionCreate,
                    &format!("cannot open a session for {u}"),
                )
                .await);
        }
        let device_id = req.device_id.or_else(|| p.device_id.clone());
        if let Some(d) = &device_id {
            if d.is_empty() || d.len() > MAX_DEVICE_ID {
                return Err(Error::BadRequest(format!(
                    "device_id must be 1 to {MAX_DEVICE_ID} characters"
                )));
            }
        }
        let session = Session::new(&p.user_id, device_id, p.permissions.clone(), false, now());
        self.store_session(p, &session).await?;
        Ok((&session).into())
    }

    async fn store_session(&self, p: &Principal, session: &Session) -> Result<()> {
        let mut audit = NewAudit::by(Some(p), kind::SESSION_CREATED, "create_session")
            .resource("session", session.session_id)
            .session(session.session_id);
        if session.is_default {
            audit = audit.detail("default", true);
        }
        self.store.create_session(session, vec![audit]).await?;
        metrics::counter!("switchboard_sessions_created_total").increment(1);
        Ok(())
    }

    /// The caller's default session, created on first use.
    pub(crate) async fn default_session(&self, p: &Principal) -> Result<Session> {
        if let Some(s) = self.store.default_session(&p.user_id).await? {
            return Ok(s);
        }
        let session = Session::new(
            &p.user_id,
            p.device_id.clone(),
            p.permissions.clone(),
            true,
            now(),
        );
        match self.store_session(p, &session).await {
            Ok(()) => Ok(session),
            // Another request created it first.
            Err(Error::Conflict(_)) => self
                .store
                .default_session(&p.user_id)
                .await?
                .ok_or(Error::Internal),
            Err(e) => Err(e),
        }
    }

    /// Attach to an existing session of the caller (WebSocket `hello`).
    pub async fn attach_session(&self, p: &Principal, id: Uuid) -> Result<Session> {
        self.authorize(p, Action::SessionRead).await?;
        let s = self.visible_session(p, id).await?;
        if s.user_id != p.user_id {
            // Even an admin attaches only to their own sessions; they may
            // subscribe to others' streams.
            return Err(Error::not_found(format!("session {id}")));
        }
        if s.state != crate::session::SessionState::Active {
            // Its tasks were cancelled and it takes no new ones: attaching
            // would open a stream nothing will ever be written to.
            return Err(Error::Conflict(format!(
                "session {id} has ended; say hello without a session_id to open a new one \
                 (its events stay readable with GET /api/runtime/sessions/{id}/events)"
            )));
        }
        Ok(s)
    }

    /// Sessions: the caller's, or everyone's with `admin:system`.
    pub async fn list_sessions(&self, p: &Principal) -> Result<Vec<SessionView>> {
        self.authorize(p, Action::SessionRead).await?;
        let owner = (!p.sees_all()).then_some(p.user_id.as_str());
        Ok(self
            .store
            .list_sessions(owner)
            .await?
            .iter()
            .map(Into::into)
            .collect())
    }

    /// One session.
    pub async fn get_session(&self, p: &Principal, id: Uuid) -> Result<SessionView> {
        self.authorize(p, Action::SessionRead).await?;
        Ok((&self.visible_session(p, id).await?).into())
    }

    /// End a session; its unfinished tasks are cancelled.
    pub async fn end_session(&self, p: &Principal, id: Uuid) -> Result<SessionView> {
        self.authorize(p, Action::SessionEnd).await?;
        let session = self.visible_session(p, id).await?;
        if is_active(&session) {
            let audit = NewAudit::by(Some(p), kind::SESSION_DELETED, "end_session")
                .resource("session", id)
                .session(id)
                .detail("owner", &session.user_id);
            self.store.end_session(id, now(), vec![audit]).await?;
            let open = self
                .store
                .list_tasks(&TaskFilter {
                    session_id: Some(id),
                    limit: i64::MAX,
                    ..Default::default()
                })
                .await?;
            for task in open.iter().filter(|t| !t.state.is_terminal()) {
                // A task that ends on its own meanwhile is fine.
                let _ = self.cancel_task(p, task, "the session was ended").await;
            }
        }
        Ok((&self.visible_session(p, id).await?).into())
    }

    /// Stored events of a session after `after_seq`, as event frames, and
    /// the `earliest_seq` signal when some it asked for were pruned.
    pub async fn session_events(
        &self,
        p: &Principal,
        id: Uuid,
        after_seq: i64,
        limit: Option<i64>,
    ) -> Result<EventList> {
        self.authorize(p, Action::SessionRead).await?;
        self.visible_session(p, id).await?;
        let limit = self.page_limit(limit, 100)?;
        let after = after_seq.max(0);
        let read = self
            .store
            .stored_after(StreamKey::Session(id), after, limit)
            .await?;
        // A stored stream has no holes: a first event past `after + 1`
        // means the ones between were pruned (exact even when a prune
        // commits between two reads); with none, the floor says.
        let earliest_seq = match read.first() {
            Some(d) => (d.seq > after + 1).then_some(d.seq),
            None => {
                self.earliest_seq(StreamKey::Session(id), Some(after))
                    .await?
            }
        };
        let events = read
            .iter()
            .map(|d| serde_json::from_str(d.frame.payload_str()).map_err(Error::internal))
            .collect::<Result<_>>()?;
        Ok(EventList {
            events,
            earliest_seq,
        })
    }

    /// Check that `p` may read a stream: a session's (own, or any with
    /// `admin:system`), the audit log or every task's state (both
    /// `admin:system`). Returns the stream's newest seq now (0 for `tasks`,
    /// which has none).
    pub async fn open_stream(&self, p: &Principal, stream: StreamKey) -> Result<i64> {
        match stream {
            StreamKey::Session(id) => {
                self.authorize(p, Action::SessionRead).await?;
                Ok(self.visible_session(p, id).await?.last_seq)
            }
            StreamKey::Audit => {
                self.authorize(p, Action::AuditRead).await?;
                self.store.audit_last_seq().await
            }
            StreamKey::Tasks => {
                self.authorize(p, Action::ReadAll).await?;
                Ok(0)
            }
        }
    }

    /// Start reading a stream after `after_seq` (without it: live events
    /// from now on). Returns the cursor, the stream's newest seq now, and
    /// `earliest_seq` when events asked for were pruned (the cursor then
    /// starts there).
    pub async fn subscribe(
        &self,
        p: &Principal,
        stream: StreamKey,
        after_seq: Option<i64>,
    ) -> Result<(Cursor, i64, Option<i64>)> {
        let last_seq = self.open_stream(p, stream).await?;
        let earliest = self.earliest_seq(stream, after_seq).await?;
        let start = resume_from(after_seq, earliest).unwrap_or(last_seq);
        Ok((
            Cursor::new(&self.bus, self.store.clone(), stream, start),
            last_seq,
            earliest,
        ))
    }

    /// A connection's `subscribe`: checks, then delivers the stream's live
    /// events to `inbox`. Returns the position to deliver after (the
    /// client's `after_seq`, or the newest seq), the newest seq, and
    /// `earliest_seq` when events asked for were pruned.
    pub async fn subscribe_inbox(
        &self,
        p: &Principal,
        stream: StreamKey,
        after_seq: Option<i64>,
        inbox: &std::sync::Arc<crate::bus::Inbox>,
    ) -> Result<(i64, i64, Option<i64>)> {
        let last_seq = self.open_stream(p, stream).await?;
        let earliest = self.earliest_seq(stream, after_seq).await?;
        self.bus.subscribe(stream, inbox);
        let after = resume_from(after_seq, earliest).unwrap_or(last_seq);
        Ok((after, last_seq, earliest))
    }

    /// Check a `limit` against the node's page size.
    pub(crate) fn page_limit(&self, limit: Option<i64>, default: i64) -> Result<i64> {
        match limit {
            None => Ok(default),
            Some(n) if (1..=self.limits.max_page).contains(&n) => Ok(n),
            Some(n) => Err(Error::BadRequest(format!(
                "limit must be 1 to {}, not {n}",
                self.limits.max_page
            ))),
        }
    }
}
