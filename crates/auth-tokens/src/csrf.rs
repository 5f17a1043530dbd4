//! Session-bound CSRF tokens: `nonce.mac` where `mac = HMAC-SHA256(key, sid ‖ nonce)`.
//!
//! A token minted for one session never validates for another, so an attacker's
//! own valid cookie/header pair is useless against a victim (signed double submit).

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

type HmacSha256 = Hmac<Sha256>;

/// The server-side secret for CSRF tokens.
#[derive(Clone)]
pub struct CsrfKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for CsrfKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CsrfKey(..)")
    }
}

impl CsrfKey {
    pub fn generate() -> Self {
        Self(Zeroizing::new(crate::random_bytes::<32>()))
    }

    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(Zeroizing::new(bytes))
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// A new token for the session `sid`.
    pub fn mint(&self, sid: &str) -> String {
        let nonce = crate::random_bytes::<16>();
        let mac = self.mac(sid, &nonce);
        format!("{}.{}", crate::b64url(&nonce), crate::b64url(&mac))
    }

    /// Whether `token` was minted by this key for the session `sid`.
    pub fn verify(&self, token: &str, sid: &str) -> bool {
        let Some((nonce, mac)) = token.split_once('.') else {
            return false;
        };
        let (Some(nonce), Some(mac)) = (crate::b64url_decode(nonce), crate::b64url_decode(mac)) else {
            return false;
        };
        nonce.len() == 16 && self.mac(sid, &nonce).ct_eq(&mac).into()
    }

    /// A MAC of `data` for the use named `label` (length-prefixed, so one
    /// made for a use, or a CSRF token, never passes for another).
    pub fn seal(&self, label: &str, data: &[u8]) -> [u8; 32] {
        self.mac(label, data)
    }

    /// The bearer credential a gateway holding this key presents to the
    /// auth-service for what only gateways may read (the role map).
    pub fn gateway_credential(&self) -> String {
        crate::b64url(&self.seal("gatehouse-gateway", b""))
    }

    /// Whether `mac` is [`Self::seal`] of `data` for `label`, in constant time.
    pub fn check_seal(&self, label: &str, data: &[u8], mac: &[u8]) -> bool {
        self.mac(label, data).ct_eq(mac).into()
    }

    fn mac(&self, sid: &str, nonce: &[u8]) -> [u8; 32] {
        #[allow(clippy::expect_used)] // HMAC accepts keys of any length
        let mut mac = HmacSha256::new_from_slice(&self.0[..]).expect("HMAC takes any key length");
        mac.update(&(sid.len() as u64).to_be_bytes());
        mac.update(sid.as_bytes());
        mac.update(nonce);
        mac.finalize().into_bytes().into()
    }
}

/// Compares two CSRF strings (cookie and header) in constant time.
pub fn same_token(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// Whether a request with this method may change state, and so falls under
/// the CSRF rules (everything but GET, HEAD, OPTIONS and TRACE).
pub fn changes_state(method: &str) -> bool {
    !matches!(method, "GET" | "HEAD" | "OPTIONS" | "TRACE")
}

/// Why an unsafe request was refused as a possible forgery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CsrfRefusal {
    #[error("the X-CSRF-Token header is missing")]
    MissingHeader,
    #[error("the CSRF token is not valid for this session")]
    Invalid,
    #[error("cross-site requests may not change state")]
    CrossSite,
    #[error("requests from this origin may not change state")]
    ForeignOrigin,
}

/// Signed double submit: the header equals the cookie, and the token was
/// minted by `key` for session `sid`.
pub fn check_pair(key: &CsrfKey, header: Option<&str>, cookie: Option<&str>, sid: &str) -> Result<(), CsrfRefusal> {
    match (header, cookie) {
        (None, _) => Err(CsrfRefusal::MissingHeader),
        (Some(h), Some(c)) if same_token(h, c) && key.verify(h, sid) => Ok(()),
        _ => Err(CsrfRefusal::Invalid),
    }
}

/// Configured origins in the form [`check_site`] compares them: lower-case,
/// without a trailing slash.
pub fn allowed_origins<'a>(configured: impl IntoIterator<Item = &'a String>) -> Vec<String> {
    configured.into_iter().map(|o| o.trim_end_matches('/').to_ascii_lowercase()).collect()
}

/// Fetch metadata and `Origin` for an unsafe request: refuse
/// `Sec-Fetch-Site: cross-site`, and an `Origin` that is neither one of
/// `allowed` (lower-case `scheme://host[:port]`) nor the host the browser is
/// talking to (a page cannot make the browser lie about `Host`).
pub fn check_site(
    sec_fetch_site: Option<&str>,
    origin: Option<&str>,
    host: Option<&str>,
    allowed: &[String],
) -> Result<(), CsrfRefusal> {
    if sec_fetch_site.is_some_and(|v| v.eq_ignore_ascii_case("cross-site")) {
        return Err(CsrfRefusal::CrossSite);
    }
    let Some(origin) = origin else { return Ok(()) };
    let origin = origin.to_ascii_lowercase();
    if allowed.contains(&origin) {
        return Ok(());
    }
    let authority = origin.strip_prefix("http://").or_else(|| origin.strip_prefix("https://"));
    match (authority, host) {
        (Some(authority), Some(host)) if authority.eq_ignore_ascii_case(host) => Ok(()),
        _ => Err(CsrfRefusal::ForeignOrigin),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_verifies_for_its_own_session_only() {
        let key = CsrfKey::generate();
        let token = key.mint("session-a");
        assert!(key.verify(&token, "session-a"));
        assert!(!key.verify(&token, "session-b"));
    }

    #[test]
    fn a_token_from_another_key_or_tampered_is_refused() {
        let key = CsrfKey::generate();
        let other = CsrfKey::generate();
        let token = other.mint("s");
        assert!(!key.verify(&token, "s"));
        let mut good = key.mint("s");
        good.push('A');
        assert!(!key.verify(&good, "s"));
        assert!(!key.verify("", "s"));
        assert!(!key.verify("no-dot", "s"));
    }

    #[test]
    fn the_pair_must_match_and_belong_to_the_session() {
        let key = CsrfKey::generate();
        let t = key.mint("s");
        assert_eq!(check_pair(&key, Some(&t), Some(&t), "s"), Ok(()));
        assert_eq!(check_pair(&key, None, Some(&t), "s"), Err(CsrfRefusal::MissingHeader));
        assert_eq!(check_pair(&key, Some(&t), None, "s"), Err(CsrfRefusal::Invalid));
        assert_eq!(check_pair(&key, Some(&t), Some(&key.mint("s")), "s"), Err(CsrfRefusal::Invalid));
        assert_eq!(check_pair(&key, Some(&t), Some(&t), "other"), Err(CsrfRefusal::Invalid));
    }

    #[test]
    fn cross_site_and_foreign_origins_are_refused() {
        let allowed = vec!["https://app.example.com".to_owned()];
        let check = |site, origin, host| check_site(site, origin, host, &allowed);
        assert_eq!(check(Some("cross-site"), None, None), Err(CsrfRefusal::CrossSite));
        assert_eq!(check(Some("same-origin"), None, None), Ok(()));
        assert_eq!(check(None, Some("https://evil.example"), Some("127.0.0.1:8080")), Err(CsrfRefusal::ForeignOrigin));
        assert_eq!(check(None, Some("null"), Some("127.0.0.1:8080")), Err(CsrfRefusal::ForeignOrigin));
        assert_eq!(check(None, Some("https://APP.example.com"), None), Ok(()));
        assert_eq!(check(None, Some("http://127.0.0.1:8080"), Some("127.0.0.1:8080")), Ok(()));
    }

    #[test]
    fn tokens_are_fresh_each_time() {
        let key = CsrfKey::generate();
        assert_ne!(key.mint("s"), key.mint("s"));
    }
}
