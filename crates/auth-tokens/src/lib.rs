//! Access tokens, signing keys and CSRF tokens, and the other rules the
//! auth-service and the gateway must apply alike at the HTTP edge.
//!
//! Layout:
//! - [`claims`]: the access-token claim set Gatehouse issues and accepts.
//! - [`keys`]: Ed25519 signing keys, the key ring with overlapping rotation, the JWKS.
//! - [`keyfile`]: the key ring and CSRF secret persisted as one 0600 file.
//! - [`jwt`]: signing ([`TokenSigner`]) and strict verification ([`TokenVerifier`]).
//! - [`csrf`]: CSRF tokens bound to a session by HMAC, and the request checks around them.
//! - [`cookies`]: the session cookies' names and `Cookie` header parsing.
//! - [`proxies`]: trusted proxies, and the client's address by their word.
//!
//! Time is always a parameter (unix seconds): nothing here reads the clock.

pub mod claims;
pub mod cookies;
pub mod csrf;
pub mod jwt;
pub mod keyfile;
pub mod keys;
pub mod proxies;

pub use claims::AccessClaims;
pub use csrf::CsrfKey;
pub use jwt::{TokenSettings, TokenSigner, TokenVerifier, VerifyError};
pub use keys::{Jwk, Jwks, KeyRing, SigningKey};

/// Fills a fresh buffer from the operating system's CSPRNG.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut buf = [0u8; N];
    // getrandom only fails when the OS has no entropy source at all; there is
    // nothing sensible to fall back to, so abort rather than issue weak secrets.
    #[allow(clippy::expect_used)]
    getrandom::fill(&mut buf).expect("the operating system's random source failed");
    buf
}

/// The token of an `Authorization: Bearer <token>` header value (the scheme
/// in either case, RFC 6750); `None` for another scheme or an empty token.
pub fn bearer_token(authorization: &str) -> Option<&str> {
    authorization
        .strip_prefix("Bearer ")
        .or_else(|| authorization.strip_prefix("bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Whether an `Authorization` header value is `Bearer <expected>`, compared
/// without an early exit: the check of every configured operator secret
/// (the operator token, the metrics token). An unset or empty secret
/// matches nothing.
pub fn bearer_is(authorization: Option<&str>, expected: Option<&str>) -> bool {
    match (authorization.and_then(bearer_token), expected) {
        (Some(presented), Some(expected)) => !expected.is_empty() && csrf::same_token(presented, expected),
        _ => false,
    }
}

/// How a request presented its access token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    Cookie,
    Bearer,
}

/// An `Authorization` header that is not `Bearer <token>` (or not text).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MalformedAuthorization;

/// The access token a request presents: when there is an `Authorization`
/// header (`None` only when absent; pass `""` for one that is not text), it
/// must be `Bearer <token>`, and a malformed one is refused rather than
/// passed over for the cookie; otherwise the access cookie from the `Cookie`
/// header lines. `Ok(None)` when there is neither.
pub fn presented_token<'a>(
    authorization: Option<&'a str>,
    cookie_lines: impl IntoIterator<Item = &'a str>,
) -> Result<Option<(&'a str, Credential)>, MalformedAuthorization> {
    if let Some(authorization) = authorization {
        return bearer_token(authorization).map(|t| Some((t, Credential::Bearer))).ok_or(MalformedAuthorization);
    }
    Ok(cookies::find(cookie_lines, cookies::ACCESS).map(|t| (t, Credential::Cookie)))
}

/// Base64url without padding, as JOSE uses it.
pub fn b64url(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Decodes base64url without padding; `None` on any malformed input.
pub fn b64url_decode(text: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_header_wins_and_a_malformed_one_is_refused_not_skipped() {
        let cookie = ["__Host-access_token=from-cookie"];
        assert_eq!(presented_token(Some("Bearer b"), cookie), Ok(Some(("b", Credential::Bearer))));
        assert_eq!(presented_token(Some("Basic b"), cookie), Err(MalformedAuthorization));
        assert_eq!(presented_token(Some(""), cookie), Err(MalformedAuthorization));
        assert_eq!(presented_token(None, cookie), Ok(Some(("from-cookie", Credential::Cookie))));
        assert_eq!(presented_token(None, ["theme=dark"]), Ok(None));
    }

    #[test]
    fn bearer_tokens_are_read_from_either_case_of_the_scheme_only() {
        assert_eq!(super::bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(super::bearer_token("bearer  abc "), Some("abc"));
        assert_eq!(super::bearer_token("Basic abc"), None);
        assert_eq!(super::bearer_token("Bearer  "), None);
        assert_eq!(super::bearer_token("Bearerabc"), None);
    }
}
