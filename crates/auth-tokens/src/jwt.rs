//! Signing and strict verification of access tokens (DESIGN §5, RFC 8725).
//!
//! Verification pins EdDSA, requires `typ: at+jwt`, refuses any `crit`
//! header (we understand no extension), takes the key only from our
//! own set by `kid` (never from `jku`/`x5u`/`jwk`/`x5c`), requires every claim,
//! checks `iss` and `aud` exactly and applies the time rules against the
//! caller's clock with a bounded leeway.

use std::collections::HashMap;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};

use crate::{AccessClaims, Jwks, KeyRing};

/// The `typ` header value of an access token (RFC 9068).
pub const ACCESS_TOKEN_TYPE: &str = "at+jwt";
/// Tokens longer than this are refused before any parsing.
const MAX_TOKEN_LEN: usize = 8 * 1024;

/// What every issuer and verifier of access tokens agrees on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSettings {
    pub issuer: String,
    pub audience: String,
    /// Access-token lifetime in seconds.
    pub lifetime: i64,
    /// Allowed clock skew in seconds.
    pub leeway: i64,
}

impl TokenSettings {
    /// How long a retired key must keep verifying: its last token's lifetime plus skew.
    pub fn key_overlap(&self) -> i64 {
        self.lifetime + self.leeway
    }
}

#[derive(Debug, thiserror::Error)]
#[error("could not sign the access token: {0}")]
pub struct SignError(String);

/// Signs access tokens with the ring's active key.
#[derive(Clone)]
pub struct TokenSigner {
    kid: String,
    key: EncodingKey,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSigner").field("kid", &self.kid).finish_non_exhaustive()
    }
}

impl TokenSigner {
    pub fn new(ring: &KeyRing) -> Self {
        let active = ring.active();
        Self { kid: active.kid.clone(), key: EncodingKey::from_ed_der(&active.pkcs8_der()) }
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub fn sign(&self, claims: &AccessClaims) -> Result<String, SignError> {
        let mut header = Header::new(Algorithm::EdDSA);
        header.typ = Some(ACCESS_TOKEN_TYPE.into());
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.key).map_err(|e| SignError(e.to_string()))
    }
}

/// Why a token was refused. Callers answer every variant with the same 401;
/// the variant is for metrics and logs only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("malformed token")]
    Malformed,
    #[error("algorithm not allowed")]
    Algorithm,
    #[error("wrong token type")]
    Type,
    #[error("unknown key id")]
    UnknownKey,
    #[error("bad signature")]
    Signature,
    #[error("missing or malformed claims")]
    Claims,
    #[error("wrong issuer")]
    Issuer,
    #[error("wrong audience")]
    Audience,
    #[error("expired")]
    Expired,
    #[error("not yet valid")]
    NotYetValid,
    /// A `crit` header: it names extensions the verifier must understand,
    /// and Gatehouse understands none (RFC 7515 §4.1.11).
    #[error("critical header extension")]
    Critical,
}

impl VerifyError {
    /// A short stable label for metrics.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::Algorithm => "algorithm",
            Self::Type => "type",
            Self::UnknownKey => "unknown_kid",
            Self::Signature => "signature",
            Self::Claims => "claims",
            Self::Issuer => "issuer",
            Self::Audience => "audience",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::Critical => "crit",
        }
    }
}

/// Verifies access tokens against a fixed set of public keys.
#[derive(Clone)]
pub struct TokenVerifier {
    keys: HashMap<String, DecodingKey>,
    validation: Validation,
    leeway: i64,
}

impl std::fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenVerifier").field("kids", &self.keys.keys()).finish_non_exhaustive()
    }
}

impl TokenVerifier {
    /// A verifier trusting exactly the Ed25519 keys of `jwks`; other key types are ignored.
    pub fn from_jwks(jwks: &Jwks, settings: &TokenSettings) -> Self {
        let keys = jwks
            .keys
            .iter()
            .filter(|k| k.kty == "OKP" && k.crv == "Ed25519" && k.alg == "EdDSA")
            .filter_map(|k| {
                let x = crate::b64url_decode(&k.x).filter(|x| x.len() == 32)?;
                Some((k.kid.clone(), DecodingKey::from_ed_der(&x)))
            })
            .collect();
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.algorithms = vec![Algorithm::EdDSA];
        // Time is checked below against the caller's clock, not the system's.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "nbf", "iat", "iss", "aud", "sub"]);
        validation.set_issuer(&[&settings.issuer]);
        validation.set_audience(&[&settings.audience]);
        Self { keys, validation, leeway: settings.leeway }
    }

    /// A verifier for every live key of `ring` at `now`.
    pub fn from_ring(ring: &KeyRing, settings: &TokenSettings, now: i64) -> Self {
        Self::from_jwks(&ring.jwks(now, settings.key_overlap()), settings)
    }

    pub fn kids(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(String::as_str)
    }

    pub fn verify(&self, token: &str, now: i64) -> Result<AccessClaims, VerifyError> {
        if token.is_empty() || token.len() > MAX_TOKEN_LEN {
            return Err(VerifyError::Malformed);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|e| match e.kind() {
            ErrorKind::InvalidAlgorithmName | ErrorKind::MissingAlgorithm => VerifyError::Algorithm,
            _ => VerifyError::Malformed,
        })?;
        if header.alg != Algorithm::EdDSA {
            return Err(VerifyError::Algorithm);
        }
        if header.crit.is_some() {
            return Err(VerifyError::Critical);
        }
        let typ_ok = header
            .typ
            .as_deref()
            .is_some_and(|t| t.eq_ignore_ascii_case(ACCESS_TOKEN_TYPE) || t.eq_ignore_ascii_case("application/at+jwt"));
        if !typ_ok {
            return Err(VerifyError::Type);
        }
        let key = header.kid.as_deref().and_then(|kid| self.keys.get(kid)).ok_or(VerifyError::UnknownKey)?;
        let claims = jsonwebtoken::decode::<AccessClaims>(token, key, &self.validation)
            .map_err(|e| match e.kind() {
                ErrorKind::InvalidSignature => VerifyError::Signature,
                ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => VerifyError::Algorithm,
                ErrorKind::InvalidIssuer => VerifyError::Issuer,
                ErrorKind::InvalidAudience => VerifyError::Audience,
                ErrorKind::Base64(_) | ErrorKind::InvalidToken | ErrorKind::Utf8(_) => VerifyError::Malformed,
                _ => VerifyError::Claims,
            })?
            .claims;
        self.check_time(&claims, now)?;
        Ok(claims)
    }

    /// The time rules alone, for callers that cache verified claims.
    pub fn check_time(&self, claims: &AccessClaims, now: i64) -> Result<(), VerifyError> {
        if now > claims.exp + self.leeway {
            return Err(VerifyError::Expired);
        }
        if claims.nbf > now + self.leeway || claims.iat > now + self.leeway {
            return Err(VerifyError::NotYetValid);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
