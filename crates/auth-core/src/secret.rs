//! Opaque bearer secrets (refresh tokens): 256 random bits, shown to the client
//! once, stored only as their SHA-256.

use sha2::{Digest, Sha256};

/// A freshly minted secret in its base64url form. Not `Debug`-printable.
pub struct OpaqueSecret(String);

impl std::fmt::Debug for OpaqueSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OpaqueSecret(..)")
    }
}

impl OpaqueSecret {
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        #[allow(clippy::expect_used)] // no entropy means no safe way to continue
        getrandom::fill(&mut bytes).expect("the operating system's random source failed");
        use base64::Engine as _;
        Self(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn hash(&self) -> SecretHash {
        SecretHash::of(&self.0)
    }
}

/// SHA-256 of a secret, hex-encoded: what the database stores and looks up by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SecretHash(String);

impl SecretHash {
    pub fn of(presented: &str) -> Self {
        let digest = Sha256::digest(presented.as_bytes());
        Self(digest.iter().map(|b| format!("{b:02x}")).collect())
    }

    pub fn from_stored(hex: String) -> Self {
        Self(hex)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_256_bits_and_hash_deterministically() {
        let s = OpaqueSecret::generate();
        assert_eq!(s.expose().len(), 43);
        assert_eq!(s.hash(), SecretHash::of(s.expose()));
        assert_eq!(s.hash().as_str().len(), 64);
        assert_ne!(s.expose(), OpaqueSecret::generate().expose());
    }
}
