//! Device operations: register, challenge, list, approve, revoke, and the
//! trust decision made when a session starts.

use chrono::Duration;
use serde::Deserialize;

use crate::audit::{AuditStatus, NewAudit, kind};
use crate::auth::Principal;
use crate::device::{
    Device, DeviceState, TrustPolicy, cap_untrusted, parse_public_key, verify_proof,
};
use crate::error::{Error, Result};
use crate::event::now;
use crate::presence::CloseReason;
use crate::rbac::{Action, Permission};
use crate::runtime::Runtime;

/// How long a challenge nonce is valid.
const NONCE_TTL_SECS: i64 = 300;

/// `POST /api/devices` body.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
pub struct RegisterDevice {
    /// 1 to 128 characters, no `/` nor control characters; unique across
    /// users.
    pub device_id: String,
    /// A label for people (default: the id).
    pub name: Option<String>,
    /// Hex Ed25519 public key.
    pub public_key: Option<String>,
}

/// `POST /api/devices/challenge` reply.
#[derive(Debug, Clone, serde::Serialize, Deserialize, utoipa::ToSchema)]
pub struct Challenge {
    /// Single use, for this user only.
    pub nonce: String,
    /// Until when it can be used.
    #[serde(with = "crate::protocol::micros")]
    pub expires_at: chrono::DateTime<chrono::Utc>,
    /// What to sign, with `<nonce>`, `<user_id>` and `<device_id>` filled in.
    pub sign: String,
}

/// A device's proof in `hello`.
#[derive(Debug, Clone, Default)]
pub struct Proof {
    pub nonce: Option<String>,
    pub signature: Option<String>,
}

fn check_device_id(id: &str) -> Result<()> {
    if id.is_empty() || id.len() > 128 || id.chars().any(|c| c.is_control() || c == '/') {
        return Err(Error::BadRequest(
            "device_id must be 1 to 128 characters without '/'".into(),
        ));
    }
    Ok(())
}

impl Runtime {
    /// Whether a pending request has expired.
    fn expired(&self, d: &Device) -> bool {
        d.state == DeviceState::Pending
            && now() - d.first_seen
                > Duration::seconds(self.security.device_pending_ttl_secs as i64)
    }

    /// Register (or rename) one of the caller's devices; it starts `pending`.
    pub async fn register_device(&self, p: &Principal, req: RegisterDevice) -> Result<Device> {
        self.authorize(p, Action::DeviceOwn).await?;
        check_device_id(&req.device_id)?;
        if let Some(k) = &req.public_key {
            parse_public_key(k).map_err(Error::BadRequest)?;
        }
        let at = now();
        let device = match self.store.get_device(&req.device_id).await? {
            Some(d) if d.user_id != p.user_id => {
                return Err(Error::Conflict(format!(
                    "device {} belongs to another user",
                    req.device_id
                )));
            }
            Some(d) if d.state == DeviceState::Revoked => {
                return Err(Error::Conflict(format!(
                    "device {} was revoked",
                    req.device_id
                )));
            }
            Some(d)
                if d.public_key.is_some()
                    && req.public_key.is_some()
                    && d.public_key != req.public_key =>
            {
                return Err(Error::Conflict(
                    "a device's key cannot change; register a new device".into(),
                ));
            }
            Some(d) => {
                let renewed = self.expired(&d);
                Device {
                    name: req.name.unwrap_or(d.name.clone()),
                    public_key: d.public_key.clone().or(req.public_key),
                    last_seen: at,
                    // An expired request starts over.
                    first_seen: if renewed { at } else { d.first_seen },
                    ..d
                }
            }
            None => Device {
                device_id: req.device_id.clone(),
                user_id: p.user_id.clone(),
                name: req.name.unwrap_or_else(|| req.device_id.clone()),
                public_key: req.public_key,
                state: DeviceState::Pending,
                first_seen: at,
                last_seen: at,
                decided_by: None,
            },
        };
        let audit = NewAudit::by(Some(p), kind::DEVICE_REGISTERED, "register_device")
            .resource("device", &device.device_id)
            .detail("has_key", device.public_key.is_some());
        self.store.put_device(&device, vec![audit]).await?;
        Ok(device)
    }

    /// A fresh single-use nonce for a device proof.
    pub async fn device_challenge(&self, p: &Principal) -> Result<Challenge> {
        self.authorize(p, Action::DeviceOwn).await?;
        let nonce = hex::encode(rand::random::<[u8; 24]>());
        let expires_at = now() + Duration::seconds(NONCE_TTL_SECS);
        self.store.add_nonce(&nonce, &p.user_id, expires_at).await?;
        Ok(Challenge {
            sign: crate::device::proof_message("<nonce>", "<user_id>", "<device_id>"),
            nonce,
            expires_at,
        })
    }

    /// Devices: one's own, or everyone's with `admin:users`.
    pub async fn list_devices(&self, p: &Principal) -> Result<Vec<Device>> {
        self.authorize(p, Action::DeviceOwn).await?;
        let owner =
            (!p.permissions.contains(&Permission::AdminUsers)).then_some(p.user_id.as_str());
        self.store.list_devices(owner).await
    }

    async fn device_for(&self, p: &Principal, id: &str) -> Result<Device> {
        match self.store.get_device(id).await? {
            Some(d)
                if d.user_id == p.user_id || p.permissions.contains(&Permission::AdminUsers) =>
            {
                Ok(d)
            }
            _ => Err(Error::not_found(format!("device {id}"))),
        }
    }

    /// Trust a device (`admin:users`). An expired request cannot be approved.
    pub async fn approve_device(&self, p: &Principal, id: &str) -> Result<Device> {
        self.authorize(p, Action::UserAdmin).await?;
        let d = self.device_for(p, id).await?;
        if d.state == DeviceState::Revoked {
            return Err(Error::Conflict(format!(
                "device {id} was revoked; it cannot be trusted again"
            )));
        }
        if self.expired(&d) {
            return Err(Error::Conflict(format!(
                "the request of device {id} expired; the device must register again"
            )));
        }
        if self.security.device_trust == TrustPolicy::Require && d.public_key.is_none() {
            // A device id without a key is a label anyone holding the
            // owner's token can type: trusting it would let a stolen token
            // past the device check.
            return Err(Error::Conflict(format!(
                "device {id} has no public key, and under device_trust = \"require\" trust \
                 must be proved: register the device with its Ed25519 public key \
                 (`switchboard login` does) and approve that one"
            )));
        }
        let d = Device {
            state: DeviceState::Trusted,
            decided_by: Some(p.user_id.clone()),
            ..d
        };
        let audit = NewAudit::by(Some(p), kind::DEVICE_TRUSTED, "approve_device")
            .resource("device", id)
            .detail("owner", &d.user_id);
        self.store.put_device(&d, vec![audit]).await?;
        Ok(d)
    }

    /// Revoke a device (its owner, or `admin:users`): its live sessions end
    /// at once.
    pub async fn revoke_device(&self, p: &Principal, id: &str) -> Result<Device> {
        self.authorize(p, Action::DeviceOwn).await?;
        let d = self.device_for(p, id).await?;
        let d = Device {
            state: DeviceState::Revoked,
            decided_by: Some(p.user_id.clone()),
            ..d
        };
        let audit = NewAudit::by(Some(p), kind::DEVICE_REVOKED, "revoke_device")
            .resource("device", id)
            .detail("owner", &d.user_id);
        self.store.put_device(&d, vec![audit]).await?;
        self.presence.close_device(id, CloseReason::Revoked);
        for s in self.store.list_sessions(Some(&d.user_id)).await? {
            if s.device_id.as_deref() == Some(id) && s.state == crate::session::SessionState::Active
            {
                let audit = NewAudit::by(Some(p), kind::SESSION_DELETED, "revoke_device")
                    .resource("session", s.session_id)
                    .session(s.session_id);
                self.store
                    .end_session(s.session_id, now(), vec![audit])
                    .await?;
            }
        }
        Ok(d)
    }

    /// Under `require`, trust is enforced once some device is trusted. Until
    /// then (a fresh node) nobody could approve anything, so the first admin
    /// approves their own device first, which closes this window.
    async fn trust_enforced(&self) -> Result<bool> {
        Ok(self
            .store
            .list_devices(None)
            .await?
            .iter()
            .any(|d| d.state == DeviceState::Trusted))
    }

    /// Who is connected: one's own connections, or everyone's with
    /// `admin:system`.
    pub async fn presence_list(&self, p: &Principal) -> Result<Vec<crate::presence::PresenceView>> {
        self.authorize(p, Action::DeviceOwn).await?;
        let only = (!p.sees_all()).then_some(p.user_id.as_str());
        Ok(self.presence.list(only))
    }

    /// Under `require`, a REST caller keeps its permissions only when it
    /// names (header `X-Switchboard-Session`) an active session of its own
    /// opened from a device that is trusted now; otherwise it gets at most
    /// the viewer permissions, so a stolen token alone cannot act.
    pub async fn admit_rest(
        &self,
        mut p: Principal,
        session: Option<uuid::Uuid>,
    ) -> Result<Principal> {
        if self.security.device_trust != TrustPolicy::Require || !self.trust_enforced().await? {
            return Ok(p);
        }
        let trusted = match session {
            Some(id) => match self.store.get_session(id).await? {
                Some(s)
                    if s.user_id == p.user_id
                        && s.state == crate::session::SessionState::Active =>
                {
                    match &s.device_id {
                        Some(d) => self
                            .store
                            .get_device(d)
                            .await?
                            .is_some_and(|d| proves_trust(&d) && d.user_id == p.user_id),
                        None => false,
                    }
                }
                _ => false,
            },
            None => false,
        };
        if !trusted {
            p.permissions = cap_untrusted(&p.permissions);
        }
        Ok(p)
    }

    /// Decide what a session from `p.device_id` may do under the trust
    /// policy, checking the device's proof when it has a key. Returns the
    /// principal to use (capped under `require` when untrusted).
    pub async fn admit_device(&self, mut p: Principal, proof: Proof) -> Result<Principal> {
        let policy = self.security.device_trust;
        let device = self.session_device(&p, policy).await?;
        if let Some(d) = &device {
            if d.state == DeviceState::Revoked {
                return Err(Error::Forbidden(format!(
                    "device {} was revoked",
                    d.device_id
                )));
            }
            if let Some(key) = &d.public_key {
                self.check_proof(&p, d, key, &proof).await?;
            }
        }
        // Under `require`, only a device that proved its key is trusted
        // (one approved without a key, before approval needed one, is not).
        let trusted = device.as_ref().is_some_and(|d| {
            d.state == DeviceState::Trusted
                && (policy != TrustPolicy::Require || d.public_key.is_some())
        });
        if trusted || policy == TrustPolicy::Off {
            return Ok(p);
        }
        let record = NewAudit::by(
            Some(&p),
            kind::DEVICE_UNTRUSTED,
            "session_from_untrusted_device",
        )
        .status(if policy == TrustPolicy::Require {
            AuditStatus::Denied
        } else {
            AuditStatus::Success
        })
        .detail("policy", policy.to_string());
        self.store.audit(vec![record]).await?;
        if policy == TrustPolicy::Require && self.trust_enforced().await? {
            p.permissions = cap_untrusted(&p.permissions);
            p.device_capped = true;
        }
        Ok(p)
    }

    /// The device a session of `p` comes from: none without a device id,
    /// the stored one (which must be `p`'s), or, under a trust policy, one
    /// registered now.
    async fn session_device(&self, p: &Principal, policy: TrustPolicy) -> Result<Option<Device>> {
        let Some(id) = &p.device_id else {
            return Ok(None);
        };
        check_device_id(id)?;
        match self.store.get_device(id).await? {
            Some(d) if d.user_id != p.user_id => Err(Error::Forbidden(format!(
                "device {id} belongs to another user"
            ))),
            Some(d) => Ok(Some(d)),
            None if policy == TrustPolicy::Off => Ok(None),
            None => {
                let register = RegisterDevice {
                    device_id: id.clone(),
                    ..Default::default()
                };
                Ok(Some(self.register_device(p, register).await?))
            }
        }
    }

    /// Check that `proof` is a fresh nonce signed with device `d`'s `key`.
    /// The nonce is spent even by a wrong signature, so it cannot be
    /// retried; a failure is audited.
    async fn check_proof(&self, p: &Principal, d: &Device, key: &str, proof: &Proof) -> Result<()> {
        let (Some(nonce), Some(sig)) = (&proof.nonce, &proof.signature) else {
            return Err(Error::DeviceProof(
                "this device has a key: sign a nonce from POST /api/devices/challenge and send device_nonce and device_signature".into(),
            ));
        };
        let valid = verify_proof(key, nonce, &p.user_id, &d.device_id, sig);
        let fresh = self.store.use_nonce(nonce, &p.user_id, now()).await?;
        if valid && fresh {
            return Ok(());
        }
        let reason = if valid {
            "replayed or expired nonce"
        } else {
            "bad signature"
        };
        let record = NewAudit::by(Some(p), kind::AUTH_FAILED, "device_proof")
            .resource("device", &d.device_id)
            .status(AuditStatus::Failure)
            .detail("reason", reason);
        self.store.audit(vec![record]).await?;
        Err(Error::DeviceProof(if valid {
            "the nonce was already used or expired; fetch a new challenge".into()
        } else {
            "the device signature does not verify".into()
        }))
    }
}

/// Whether a device's sessions carry full trust under `require`: it is
/// trusted and has a key, which every `hello` from it had to prove.
fn proves_trust(d: &Device) -> bool {
    d.state == DeviceState::Trusted && d.public_key.is_some()
}
