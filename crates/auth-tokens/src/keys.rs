//! Ed25519 signing keys, the key ring and its JWKS.
//!
//! The ring holds the active key (the newest) and retired keys. A retired key
//! keeps verifying — and stays in the JWKS — until the last token it signed has
//! expired (`retired_at + overlap`), then it leaves both.

use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair as _};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// DER prefix of a PKCS#8 v1 Ed25519 private key; the 32-byte seed follows.
const PKCS8_V1_PREFIX: [u8; 16] =
    [0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];

#[derive(Debug, thiserror::Error)]
#[error("invalid Ed25519 key material")]
pub struct InvalidKey;

/// One Ed25519 key pair with its id and lifetime.
#[derive(Clone)]
pub struct SigningKey {
    pub kid: String,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds; `None` while the key is the active one.
    pub retired_at: Option<i64>,
    seed: Zeroizing<[u8; 32]>,
    public: [u8; 32],
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("created_at", &self.created_at)
            .field("retired_at", &self.retired_at)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    pub fn generate(now: i64) -> Self {
        let seed = crate::random_bytes::<32>();
        let kid = crate::b64url(&crate::random_bytes::<12>());
        // A fresh 32-byte seed is always a valid Ed25519 private key.
        #[allow(clippy::expect_used)]
        Self::from_seed(kid, now, None, seed).expect("a random seed is a valid Ed25519 key")
    }

    pub fn from_seed(
        kid: String,
        created_at: i64,
        retired_at: Option<i64>,
        seed: [u8; 32],
    ) -> Result<Self, InvalidKey> {
        let pair = Ed25519KeyPair::from_seed_unchecked(&seed).map_err(|_| InvalidKey)?;
        let public: [u8; 32] = pair.public_key().as_ref().try_into().map_err(|_| InvalidKey)?;
        Ok(Self { kid, created_at, retired_at, seed: Zeroizing::new(seed), public })
    }

    pub fn seed(&self) -> &[u8; 32] {
        &self.seed
    }

    pub fn public_key(&self) -> &[u8; 32] {
        &self.public
    }

    /// The private key as PKCS#8 v1 DER, the form the JWT library signs with.
    pub fn pkcs8_der(&self) -> Zeroizing<Vec<u8>> {
        let mut der = Zeroizing::new(Vec::with_capacity(48));
        der.extend_from_slice(&PKCS8_V1_PREFIX);
        der.extend_from_slice(&self.seed[..]);
        der
    }

    pub fn jwk(&self) -> Jwk {
        Jwk {
            kty: "OKP".into(),
            crv: "Ed25519".into(),
            x: crate::b64url(&self.public),
            kid: self.kid.clone(),
            use_: "sig".into(),
            alg: "EdDSA".into(),
        }
    }
}

/// A public JWK (RFC 8037). It has no field for private material.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwk {
    pub kty: String,
    pub crv: String,
    pub x: String,
    pub kid: String,
    #[serde(rename = "use")]
    pub use_: String,
    pub alg: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwks {
    pub keys: Vec<Jwk>,
}

/// The signing keys, oldest first; the last one signs.
#[derive(Debug, Clone)]
pub struct KeyRing {
    keys: Vec<SigningKey>,
}

impl KeyRing {
    /// A ring with one fresh key.
    pub fn generate(now: i64) -> Self {
        Self { keys: vec![SigningKey::generate(now)] }
    }

    /// A ring from stored keys; `None` when there is no active key.
    pub fn from_keys(mut keys: Vec<SigningKey>) -> Option<Self> {
        keys.sort_by_key(|k| k.created_at);
        keys.last().filter(|k| k.retired_at.is_none())?;
        Some(Self { keys })
    }

    pub fn keys(&self) -> &[SigningKey] {
        &self.keys
    }

    pub fn active(&self) -> &SigningKey {
        // `from_keys` and `generate` guarantee at least one key.
        &self.keys[self.keys.len() - 1]
    }

    /// Retires the active key and makes a new one active. Keys retired longer
    /// than `overlap` ago can no longer have live tokens and are dropped.
    pub fn rotate(&mut self, now: i64, overlap: i64) -> &SigningKey {
        for key in &mut self.keys {
            key.retired_at.get_or_insert(now);
        }
        self.keys.retain(|k| k.retired_at.is_some_and(|r| r + overlap > now));
        let mut fresh = SigningKey::generate(now);
        // Keep the order strict even when two rotations fall in one second.
        if let Some(last) = self.keys.last() {
            fresh.created_at = fresh.created_at.max(last.created_at + 1);
        }
        self.keys.push(fresh);
        self.active()
    }

    /// Keys that may still have live tokens: the active one and those retired
    /// less than `overlap` seconds ago.
    pub fn live(&self, now: i64, overlap: i64) -> impl Iterator<Item = &SigningKey> {
        self.keys.iter().filter(move |k| k.retired_at.is_none_or(|r| r + overlap > now))
    }

    pub fn jwks(&self, now: i64, overlap: i64) -> Jwks {
        Jwks { keys: self.live(now, overlap).map(SigningKey::jwk).collect() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_jwks_carries_public_members_only() {
        let ring = KeyRing::generate(1000);
        let json = serde_json::to_value(ring.jwks(1000, 660)).unwrap();
        let key = &json["keys"][0];
        assert_eq!(key["kty"], "OKP");
        assert_eq!(key["crv"], "Ed25519");
        assert_eq!(key["use"], "sig");
        assert_eq!(key["alg"], "EdDSA");
        assert!(key.get("d").is_none());
        assert_eq!(crate::b64url_decode(key["x"].as_str().unwrap()).unwrap().len(), 32);
    }

    #[test]
    fn a_rotated_key_stays_published_for_the_overlap_then_leaves() {
        let mut ring = KeyRing::generate(1000);
        let old = ring.active().kid.clone();
        let new = ring.rotate(2000, 660).kid.clone();
        assert_ne!(old, new);
        let kids = |now| ring.jwks(now, 660).keys.into_iter().map(|k| k.kid).collect::<Vec<_>>();
        assert_eq!(kids(2659), vec![old.clone(), new.clone()]);
        assert_eq!(kids(2660), vec![new.clone()]);
        assert_eq!(ring.active().kid, new);
    }

    #[test]
    fn rotation_drops_keys_whose_tokens_are_all_expired() {
        let mut ring = KeyRing::generate(0);
        ring.rotate(10, 100);
        ring.rotate(500, 100);
        assert_eq!(ring.keys().len(), 2);
    }

    #[test]
    fn a_ring_needs_an_active_key() {
        let mut key = SigningKey::generate(0);
        key.retired_at = Some(5);
        assert!(KeyRing::from_keys(vec![key]).is_none());
    }
}
