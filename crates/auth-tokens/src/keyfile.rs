//! The key ring and the CSRF secret stored together in one JSON file, mode 0600.
//!
//! Used by `gatehouse up` (file in the data dir) and by `gatehouse keys`. Writes
//! go to a temporary file that is renamed over the old one, so a reader never
//! sees half a file.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{CsrfKey, KeyRing, SigningKey};

#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("cannot read or write {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a valid Gatehouse key file: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error(
        "{path} holds the signing keys but others may read or write it (mode {mode:03o}); make it private: chmod 600 {path}"
    )]
    Exposed { path: PathBuf, mode: u32 },
}

/// Everything secret the auth-service signs with.
#[derive(Debug, Clone)]
pub struct Secrets {
    pub ring: KeyRing,
    pub csrf: CsrfKey,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredKey {
    kid: String,
    created_at: i64,
    retired_at: Option<i64>,
    seed: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Stored {
    signing_keys: Vec<StoredKey>,
    csrf_secret: String,
}

/// Loads the file, or creates it with fresh secrets when it does not exist.
pub fn load_or_create(path: &Path, now: i64) -> Result<Secrets, KeyFileError> {
    if path.exists() {
        return load(path);
    }
    let secrets = Secrets { ring: KeyRing::generate(now), csrf: CsrfKey::generate() };
    save(path, &secrets)?;
    Ok(secrets)
}

/// Reads the file, refusing one that its group or others may read or
/// write, as OpenSSH refuses a private key they can.
pub fn load(path: &Path) -> Result<Secrets, KeyFileError> {
    let io = |source| KeyFileError::Io { path: path.to_owned(), source };
    let invalid = |reason: &str| KeyFileError::Invalid { path: path.to_owned(), reason: reason.into() };
    // The mode of the file read, not of whatever the path names a moment later.
    let mut file = std::fs::File::open(path).map_err(io)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = file.metadata().map_err(io)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyFileError::Exposed { path: path.to_owned(), mode });
        }
    }
    let mut text = String::new();
    std::io::Read::read_to_string(&mut file, &mut text).map_err(io)?;
    let stored: Stored = serde_json::from_str(&text).map_err(|e| invalid(&e.to_string()))?;
    let mut keys = Vec::with_capacity(stored.signing_keys.len());
    for k in stored.signing_keys {
        let seed = decode32(&k.seed).ok_or_else(|| invalid("a seed is not 32 bytes of base64url"))?;
        let key = SigningKey::from_seed(k.kid, k.created_at, k.retired_at, seed)
            .map_err(|_| invalid("a seed is not an Ed25519 key"))?;
        keys.push(key);
    }
    let ring = KeyRing::from_keys(keys).ok_or_else(|| invalid("no active signing key"))?;
    let csrf = decode32(&stored.csrf_secret)
        .map(CsrfKey::from_bytes)
        .ok_or_else(|| invalid("csrf_secret is not 32 bytes of base64url"))?;
    Ok(Secrets { ring, csrf })
}

pub fn save(path: &Path, secrets: &Secrets) -> Result<(), KeyFileError> {
    let io = |source| KeyFileError::Io { path: path.to_owned(), source };
    let stored = Stored {
        signing_keys: secrets
            .ring
            .keys()
            .iter()
            .map(|k| StoredKey {
                kid: k.kid.clone(),
                created_at: k.created_at,
                retired_at: k.retired_at,
                seed: crate::b64url(k.seed()),
            })
            .collect(),
        csrf_secret: crate::b64url(secrets.csrf.as_bytes()),
    };
    let text = serde_json::to_string_pretty(&stored)
        .map_err(|e| KeyFileError::Invalid { path: path.to_owned(), reason: e.to_string() })?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let tmp = path.with_extension("tmp");
    write_private(&tmp, text.as_bytes()).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

fn decode32(text: &str) -> Option<[u8; 32]> {
    crate::b64url_decode(text)?.try_into().ok()
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let _ = std::fs::remove_file(path);
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_survive_a_round_trip_through_a_private_file() {
        let dir = std::env::temp_dir().join(format!("gh-keys-{}", crate::b64url(&crate::random_bytes::<8>())));
        let path = dir.join("keys.json");
        let first = load_or_create(&path, 100).unwrap();
        let again = load_or_create(&path, 200).unwrap();
        assert_eq!(first.ring.active().kid, again.ring.active().kid);
        assert_eq!(first.ring.active().public_key(), again.ring.active().public_key());
        assert_eq!(first.csrf.as_bytes(), again.csrf.as_bytes());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn a_key_file_others_may_read_or_write_is_refused_with_the_fix() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(format!("gh-keys-{}", crate::b64url(&crate::random_bytes::<8>())));
        let path = dir.join("keys.json");
        load_or_create(&path, 100).unwrap();
        for mode in [0o644, 0o640, 0o604, 0o620, 0o602] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let error = load(&path).unwrap_err().to_string();
            assert!(error.contains(&format!("chmod 600 {}", path.display())), "{error}");
            assert!(error.contains(&format!("{mode:03o}")), "{error}");
        }
        for mode in [0o600, 0o400] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            load(&path).unwrap();
        }
        std::fs::remove_dir_all(dir).unwrap();
    }
}
