//! Device identity and trust.
//!
//! A device is registered per user with an id, a name and optionally an
//! Ed25519 public key. It is `pending` until a holder of `admin:users`
//! approves it (`trusted`) or revokes it (`revoked`). A device with a key
//! proves itself in `hello` by signing a single-use server nonce from
//! `POST /api/devices/challenge`: the signed message is
//! `switchboard-device-proof:<nonce>:<user_id>:<device_id>` (UTF-8).
//!
//! The trust policy (`[security] device_trust`) decides what an untrusted
//! device may do: `off` (nothing checked), `audit` (allowed, but every
//! session from it is audited as `device.untrusted`), `require` (its
//! sessions get no more than the `viewer` permissions).

use std::collections::BTreeSet;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::rbac::{Permission, Role};

/// Where a device stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DeviceState {
    Pending,
    Trusted,
    Revoked,
}

impl DeviceState {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceState::Pending => "pending",
            DeviceState::Trusted => "trusted",
            DeviceState::Revoked => "revoked",
        }
    }
}

impl FromStr for DeviceState {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "pending" => Ok(DeviceState::Pending),
            "trusted" => Ok(DeviceState::Trusted),
            "revoked" => Ok(DeviceState::Revoked),
            other => Err(format!("unknown device state `{other}`")),
        }
    }
}

/// A registered device, as stored and listed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Device {
    pub device_id: String,
    pub user_id: String,
    pub name: String,
    /// Hex Ed25519 public key.
    pub public_key: Option<String>,
    pub state: DeviceState,
    #[serde(with = "crate::protocol::micros")]
    pub first_seen: DateTime<Utc>,
    #[serde(with = "crate::protocol::micros")]
    pub last_seen: DateTime<Utc>,
    /// Who approved or revoked it.
    pub decided_by: Option<String>,
}

/// The trust policy: configuration, so it lives in [`crate::config`].
pub use crate::config::TrustPolicy;

/// The permissions a session keeps under `require` from an untrusted device.
pub fn cap_untrusted(perms: &BTreeSet<Permission>) -> BTreeSet<Permission> {
    let viewer: BTreeSet<Permission> = Role::Viewer.permissions().iter().copied().collect();
    perms.intersection(&viewer).copied().collect()
}

/// The message a device signs to prove itself.
pub fn proof_message(nonce: &str, user_id: &str, device_id: &str) -> String {
    format!("switchboard-device-proof:{nonce}:{user_id}:{device_id}")
}

/// Parse a hex Ed25519 public key.
pub fn parse_public_key(hex_key: &str) -> Result<VerifyingKey, String> {
    let bytes: [u8; 32] = hex::decode(hex_key.trim())
        .map_err(|_| "public_key must be hex".to_owned())?
        .try_into()
        .map_err(|_| "public_key must be 32 bytes (64 hex digits)".to_owned())?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| "public_key is not a valid Ed25519 key".to_owned())
}

/// Check a device's signature over the proof message.
pub fn verify_proof(
    public_key: &str,
    nonce: &str,
    user_id: &str,
    device_id: &str,
    signature_hex: &str,
) -> bool {
    let Ok(key) = parse_public_key(public_key) else {
        return false;
    };
    let Ok(sig) = hex::decode(signature_hex)
        .map_err(|_| ())
        .and_then(|b| Signature::from_slice(&b).map_err(|_| ()))
    else {
        return false;
    };
    key.verify(proof_message(nonce, user_id, device_id).as_bytes(), &sig)
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};

    /// A proof verifies only for its nonce, user, device and key.
    #[test]
    fn proofs_bind_nonce_user_and_device() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let public = hex::encode(key.verifying_key().as_bytes());
        let sig = hex::encode(
            key.sign(proof_message("n1", "u", "d").as_bytes())
                .to_bytes(),
        );
        assert!(verify_proof(&public, "n1", "u", "d", &sig));
        assert!(!verify_proof(&public, "n2", "u", "d", &sig));
        assert!(!verify_proof(&public, "n1", "v", "d", &sig));
        assert!(!verify_proof(&public, "n1", "u", "e", &sig));
        assert!(!verify_proof(&public, "n1", "u", "d", "00"));
        assert!(!verify_proof("zz", "n1", "u", "d", &sig));
    }

    /// Under `require`, an untrusted session keeps only viewer permissions.
    #[test]
    fn untrusted_sessions_are_capped_to_viewer() {
        let admin: BTreeSet<_> = Role::Admin.permissions().iter().copied().collect();
        let capped = cap_untrusted(&admin);
        assert_eq!(capped, Role::Viewer.permissions().iter().copied().collect());
        assert!(!capped.contains(&Permission::TaskSubmit));
    }
}
