//! Login through OpenID Connect providers and through GitHub and Facebook
//! (RFC 9700, OIDC Core): the authorization code flow with PKCE (S256),
//! `state` and (OpenID) `nonce` bound to the browser by a signed,
//! short-lived `__Host-oauth_state` cookie.
//!
//! `GET /auth/oauth/{provider}/start?return_to=…&login_hint=…` sends the
//! browser to the provider; `GET /auth/oauth/{provider}/callback` checks
//! what comes back, signs the user in exactly as a password login does and
//! sends the browser to `return_to`. `POST /auth/me/identities/{provider}/link`
//! starts the same flow for a signed-in user, whose callback adds the
//! identity to that account instead. Every failure goes to the configured
//! error page with a code, never to a 500.

pub mod identities;
mod oidc;
mod provider;
pub mod routes;
mod user_api;

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

#[cfg(feature = "testing")]
pub(crate) use provider::encode;
pub use provider::{
    Endpoints, FACEBOOK, FACEBOOK_GRAPH, GITHUB, GOOGLE, GRAPH_VERSION, Protocol, Provider, ProviderError,
    ProviderSettings, secure_url,
};

/// The cookie holding one login attempt's secrets.
pub const STATE_COOKIE: &str = "__Host-oauth_state";
/// How long an attempt may take, in seconds.
pub const STATE_LIFETIME: i64 = 600;
const SEAL_LABEL: &str = "gatehouse-oauth-state";

/// The providers and where failures go.
#[derive(Default, Clone)]
pub struct OAuth {
    pub providers: BTreeMap<String, Arc<Provider>>,
    /// A path (or configured origin) failures are sent to, with `?error=CODE`.
    pub error_url: String,
}

impl std::fmt::Debug for OAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuth").field("providers", &self.providers.keys()).finish_non_exhaustive()
    }
}

/// What the state cookie carries, sealed with the server's key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Attempt {
    /// The provider's name.
    pub p: String,
    /// `state`, `nonce` and the PKCE verifier.
    pub s: String,
    pub n: String,
    pub v: String,
    /// Where to go after.
    pub r: String,
    /// Unix time after which the attempt is void.
    pub e: i64,
    /// For a link from a signed-in account: its user and session ids.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub l: Option<(String, String)>,
}

impl Attempt {
    pub(crate) fn seal(&self, key: &auth_tokens::CsrfKey) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        let mac = key.seal(SEAL_LABEL, &json);
        format!("{}.{}", auth_tokens::b64url(&json), auth_tokens::b64url(&mac))
    }

    /// The attempt in `cookie`, if this server sealed it and it is not void at `now`.
    pub(crate) fn open(cookie: &str, key: &auth_tokens::CsrfKey, now: i64) -> Option<Self> {
        let (json, mac) = cookie.split_once('.')?;
        let (json, mac) = (auth_tokens::b64url_decode(json)?, auth_tokens::b64url_decode(mac)?);
        if !key.check_seal(SEAL_LABEL, &json, &mac) {
            return None;
        }
        let attempt: Self = serde_json::from_slice(&json).ok()?;
        (now < attempt.e).then_some(attempt)
    }
}

/// The PKCE challenge of `verifier` (RFC 7636 §4.2, S256).
pub(crate) fn challenge(verifier: &str) -> String {
    use sha2::Digest as _;
    auth_tokens::b64url(&sha2::Sha256::digest(verifier.as_bytes()))
}

/// `return_to` if it is a path on this site or a URL on an allowed origin;
/// otherwise `/` (no open redirect).
pub(crate) fn safe_return(return_to: Option<&str>, allowed_origins: &[String]) -> String {
    let Some(target) = return_to.filter(|t| !t.is_empty() && t.len() <= 2048) else { return "/".into() };
    if target.chars().any(|c| c.is_control() || c == '\\') {
        return "/".into();
    }
    if target.starts_with('/') && !target.starts_with("//") {
        return target.to_owned();
    }
    let origin_of = |url: &str| -> Option<String> {
        let (scheme, rest) = url.split_once("://")?;
        let authority = rest.split(['/', '?', '#']).next()?;
        (!authority.is_empty() && !authority.contains('@')).then(|| format!("{scheme}://{authority}").to_lowercase())
    };
    match origin_of(target) {
        Some(origin) if allowed_origins.contains(&origin) => target.to_owned(),
        _ => "/".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn return_to_is_a_local_path_or_an_allowed_origin() {
        let allowed = vec!["https://app.example.com".to_owned()];
        for (given, expected) in [
            (Some("/notes?x=1"), "/notes?x=1"),
            (Some("https://app.example.com/after"), "https://app.example.com/after"),
            (Some("HTTPS://APP.example.com/x"), "HTTPS://APP.example.com/x"),
            (Some("https://evil.example/"), "/"),
            (Some("//evil.example/"), "/"),
            (Some("/\\evil.example"), "/"),
            (Some("https://app.example.com@evil.example/"), "/"),
            (Some("javascript:alert(1)"), "/"),
            (Some("https://app.example.com.evil.example/"), "/"),
            (None, "/"),
        ] {
            assert_eq!(safe_return(given, &allowed), expected, "{given:?}");
        }
    }

    #[test]
    fn an_attempt_opens_only_with_its_key_untouched_and_in_time() {
        let key = auth_tokens::CsrfKey::generate();
        let attempt = Attempt {
            p: "corp".into(),
            s: "st".into(),
            n: "nn".into(),
            v: "vv".into(),
            r: "/".into(),
            e: 100,
            l: None,
        };
        let sealed = attempt.seal(&key);
        assert_eq!(Attempt::open(&sealed, &key, 99), Some(attempt.clone()));
        assert_eq!(Attempt::open(&sealed, &key, 100), None, "expired");
        assert_eq!(Attempt::open(&sealed, &auth_tokens::CsrfKey::generate(), 99), None, "another key");
        let (json, mac) = sealed.split_once('.').unwrap();
        let forged = serde_json::to_vec(&Attempt { r: "https://evil.example".into(), ..attempt }).unwrap();
        assert_eq!(Attempt::open(&format!("{}.{mac}", auth_tokens::b64url(&forged)), &key, 99), None);
        assert!(Attempt::open(&format!("{json}.{mac}x"), &key, 99).is_none());
        // As `openssl dgst -sha256 -binary | base64url` computes it.
        assert_eq!(
            challenge("abcdefghijklmnopqrstuvwxyzabcdefghijklmnopqrstu"),
            "HCnw2JQoM6j2jBOYfBtVGkHO83BD1VmZ30QuSt5rKK0"
        );
    }
}
