//! A host's device identity: an Ed25519 key kept in a file of its own
//! (mode 0600), registered with the node as the device `host-<name>`, and
//! proved at every link by signing a fresh challenge nonce.
//!
//! The key is what makes a host name hard to take over: the device id is
//! bound to the first key registered for it, and to its user.

use std::path::{Path, PathBuf};

use ed25519_dalek::{Signer, SigningKey};
use serde_json::json;

use crate::cli::CliError;
use crate::cli::client::Http;

/// A host's key and the device it proves.
pub struct Identity {
    key: SigningKey,
    /// `host-<name>`.
    pub device_id: String,
    /// Where the key lives.
    pub key_file: PathBuf,
}

/// What goes into `hello` to prove the device.
pub struct Proof {
    /// The nonce from `POST /api/devices/challenge`.
    pub nonce: String,
    /// Hex signature of the proof message.
    pub signature: String,
}

/// The default key file of host `name`:
/// `$XDG_CONFIG_HOME/switchboard/hosts/<name>.key`.
pub fn default_key_file(name: &str) -> Result<PathBuf, CliError> {
    let dir = crate::cli::config::path()?
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    Ok(dir.join("hosts").join(format!("{name}.key")))
}

impl Identity {
    /// The key in `key_file`, made (and saved with mode 0600) when missing.
    pub fn load_or_create(name: &str, key_file: PathBuf) -> Result<Self, CliError> {
        let bad = |why: String| CliError::Usage(format!("key file {}: {why}", key_file.display()));
        let key = match std::fs::read_to_string(&key_file) {
            Ok(text) => {
                let bytes: [u8; 32] = hex::decode(text.trim())
                    .map_err(|_| bad("not hex".into()))?
                    .try_into()
                    .map_err(|_| bad("not a 32-byte key".into()))?;
                SigningKey::from_bytes(&bytes)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = SigningKey::from_bytes(&rand::random::<[u8; 32]>());
                if let Some(dir) = key_file.parent() {
                    std::fs::create_dir_all(dir).map_err(|e| bad(e.to_string()))?;
                }
                crate::write_secret(&key_file, &hex::encode(key.to_bytes()))
                    .map_err(|e| bad(format!("cannot write it: {e}")))?;
                key
            }
            Err(e) => return Err(bad(format!("cannot read it: {e}"))),
        };
        Ok(Identity {
            key,
            device_id: format!("host-{name}"),
            key_file,
        })
    }

    /// The public key, hex.
    pub fn public_key(&self) -> String {
        hex::encode(self.key.verifying_key().as_bytes())
    }

    /// Register the device with its key (a no-op when it already is), then
    /// sign a fresh challenge for `user_id`.
    pub async fn prove(&self, http: &Http, name: &str, user_id: &str) -> Result<Proof, CliError> {
        let body = json!({
            "device_id": self.device_id,
            "name": format!("switchboard link host `{name}`"),
            "public_key": self.public_key(),
        });
        http.post("/api/devices", body).await.map_err(|e| match e {
            CliError::Server { code, message, .. } if code == "conflict" => CliError::Usage(format!(
                "the node refuses device `{}`: {message} (use another --name, or the key file that registered it)",
                self.device_id
            )),
            other => other,
        })?;
        let challenge = http.post("/api/devices/challenge", json!({})).await?;
        let nonce = challenge["nonce"]
            .as_str()
            .ok_or_else(|| CliError::Other(format!("unexpected challenge reply: {challenge}")))?
            .to_owned();
        let message = crate::device::proof_message(&nonce, user_id, &self.device_id);
        let signature = hex::encode(self.key.sign(message.as_bytes()).to_bytes());
        Ok(Proof { nonce, signature })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key is made once, kept with mode 0600, and read back the same.
    #[test]
    fn keys_persist() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("hosts").join("h.key");
        let a = Identity::load_or_create("h", file.clone()).unwrap();
        let b = Identity::load_or_create("h", file.clone()).unwrap();
        assert_eq!(a.public_key(), b.public_key());
        assert_eq!(a.device_id, "host-h");
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(&file, "zz").unwrap();
        assert!(Identity::load_or_create("h", file).is_err());
    }
}
