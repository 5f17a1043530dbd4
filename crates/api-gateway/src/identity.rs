//! What an upstream may see. Everything a client could use to pass itself off
//! as someone (identity headers, our cookies, forwarding headers from
//! untrusted peers) is removed before the gateway sets its own values.

use std::net::IpAddr;

use axum::http::{HeaderMap, HeaderName, HeaderValue, header};

pub const USER_ID: HeaderName = HeaderName::from_static("x-user-id");
pub const USER_ROLES: HeaderName = HeaderName::from_static("x-user-roles");
pub const SESSION_ID: HeaderName = HeaderName::from_static("x-session-id");
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Hop-by-hop headers (RFC 9110 §7.6.1) that never cross the gateway as such.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// The identity the gateway vouches for.
#[derive(Debug, Clone)]
pub struct Identity<'a> {
    pub user_id: &'a str,
    pub roles: &'a [String],
    pub session_id: &'a str,
}

fn spoofable(name: &HeaderName) -> bool {
    let n = name.as_str();
    n.starts_with("x-user-") || n.starts_with("x-auth-") || n == "x-session-id"
}

/// Removes hop-by-hop headers, including those `Connection` names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in HOP_BY_HOP.iter().chain(&named) {
        headers.remove(name);
    }
}

/// A request id worth keeping: 1–128 characters of `[A-Za-z0-9._-]`.
fn valid_request_id(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty() && b.len() <= 128 && b.iter().all(|c| c.is_ascii_alphanumeric() || b"._-".contains(c))
}

/// Rewrites the request headers for the upstream. Returns the request id.
pub fn prepare(
    headers: &mut HeaderMap,
    identity: Option<&Identity<'_>>,
    forward_credentials: bool,
    peer: Option<IpAddr>,
    peer_trusted: bool,
) -> HeaderValue {
    if headers.keys().any(spoofable) {
        let spoofed: Vec<HeaderName> = headers.keys().filter(|n| spoofable(n)).cloned().collect();
        for name in spoofed {
            headers.remove(name);
        }
    }
    if !forward_credentials {
        strip_our_cookies(headers);
        if identity.is_some() {
            // The bearer token was ours; upstreams get identity headers instead.
            headers.remove(header::AUTHORIZATION);
        }
    }
    if let Some(id) = identity {
        insert(headers, USER_ID, id.user_id);
        insert(headers, USER_ROLES, &id.roles.join(","));
        insert(headers, SESSION_ID, id.session_id);
    }
    let request_id = headers.get(&REQUEST_ID).filter(|v| valid_request_id(v)).cloned().unwrap_or_else(new_request_id);
    headers.insert(REQUEST_ID, request_id.clone());
    forwarding(headers, peer, peer_trusted);
    request_id
}

/// A fresh request id: a random per-process prefix and a counter — unique,
/// and cheaper than asking the OS for randomness on every request.
fn new_request_id() -> HeaderValue {
    use std::sync::LazyLock;
    use std::sync::atomic::{AtomicU64, Ordering};
    static PREFIX: LazyLock<u64> = LazyLock::new(|| uuid::Uuid::new_v4().as_u64_pair().0);
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    HeaderValue::from_str(&format!("{:016x}-{n:x}", *PREFIX)).unwrap_or(HeaderValue::from_static("-"))
}

fn insert(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        headers.insert(name, v);
    }
}

fn strip_our_cookies(headers: &mut HeaderMap) {
    if !headers.get_all(header::COOKIE).iter().any(|v| v.as_bytes().windows(7).any(|w| w == b"__Host-")) {
        return;
    }
    let kept: Vec<HeaderValue> = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| auth_tokens::cookies::without(v, &auth_tokens::cookies::ALL))
        .filter_map(|v| HeaderValue::from_str(&v).ok())
        .collect();
    headers.remove(header::COOKIE);
    for v in kept {
        headers.append(header::COOKIE, v);
    }
}

/// `X-Forwarded-*`: believed from trusted proxies only, else set from the peer.
fn forwarding(headers: &mut HeaderMap, peer: Option<IpAddr>, peer_trusted: bool) {
    let peer = peer.map(|p| p.to_string());
    if peer_trusted {
        if let Some(peer) = peer {
            let chain = match headers.get(&FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
                Some(prior) => format!("{prior}, {peer}"),
                None => peer,
            };
            insert(headers, FORWARDED_FOR, &chain);
        }
        if !headers.contains_key(&FORWARDED_PROTO) {
            headers.insert(FORWARDED_PROTO, HeaderValue::from_static("http"));
        }
    } else {
        headers.remove(header::FORWARDED);
        match peer {
            Some(peer) => insert(headers, FORWARDED_FOR, &peer),
            None => {
                headers.remove(&FORWARDED_FOR);
            }
        }
        headers.insert(FORWARDED_PROTO, HeaderValue::from_static("http"));
        headers.remove(&FORWARDED_HOST);
    }
    if !headers.contains_key(&FORWARDED_HOST)
        && let Some(host) = headers.get(header::HOST).cloned()
    {
        headers.insert(FORWARDED_HOST, host);
    }
}

/// Trusted proxies: single addresses or CIDR blocks.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<(IpAddr, u8)>);

impl TrustedProxies {
    pub fn parse(entries: &[String]) -> Result<Self, String> {
        let mut nets = Vec::with_capacity(entries.len());
        for e in entries {
            let (ip, bits) = match e.split_once('/') {
                Some((ip, bits)) => (ip, Some(bits)),
                None => (e.as_str(), None),
            };
            let ip: IpAddr = ip.parse().map_err(|_| format!("trusted proxy {e:?} is not an IP or CIDR"))?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            let bits = match bits {
                Some(b) => {
                    b.parse::<u8>().ok().filter(|b| *b <= max).ok_or_else(|| format!("bad prefix length in {e:?}"))?
                }
                None => max,
            };
            nets.push((ip, bits));
        }
        Ok(Self(nets))
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|(net, bits)| match (net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => prefix_eq(&n.octets(), &a.octets(), *bits),
            (IpAddr::V6(n), IpAddr::V6(a)) => prefix_eq(&n.octets(), &a.octets(), *bits),
            _ => false,
        })
    }
}

fn prefix_eq(a: &[u8], b: &[u8], bits: u8) -> bool {
    let (full, rest) = (usize::from(bits / 8), bits % 8);
    a[..full] == b[..full] && (rest == 0 || (a[full] ^ b[full]) >> (8 - rest) == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spoofed_identity_and_our_cookies_never_pass() {
        let mut h = HeaderMap::new();
        h.insert("x-user-id", HeaderValue::from_static("admin"));
        h.insert("x-user-roles", HeaderValue::from_static("admin"));
        h.insert("x-auth-user", HeaderValue::from_static("admin"));
        h.insert("x-session-id", HeaderValue::from_static("s"));
        h.insert(header::COOKIE, HeaderValue::from_static("a=1; __Host-access_token=t; __Host-csrf_token=c"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer t"));
        let roles = vec!["editor".to_owned(), "viewer".to_owned()];
        let id = Identity { user_id: "u1", roles: &roles, session_id: "s1" };
        prepare(&mut h, Some(&id), false, "10.0.0.9".parse().ok(), false);
        assert_eq!(h["x-user-id"], "u1");
        assert_eq!(h["x-user-roles"], "editor,viewer");
        assert_eq!(h["x-session-id"], "s1");
        assert!(h.get("x-auth-user").is_none());
        assert_eq!(h[header::COOKIE], "a=1");
        assert!(h.get(header::AUTHORIZATION).is_none());
        assert_eq!(h["x-forwarded-for"], "10.0.0.9");

        let mut public = HeaderMap::new();
        public.insert("x-user-id", HeaderValue::from_static("admin"));
        prepare(&mut public, None, false, None, false);
        assert!(public.get("x-user-id").is_none());
    }

    #[test]
    fn forwarding_headers_are_believed_from_trusted_proxies_only() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("6.6.6.6"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        prepare(&mut h, None, false, "192.0.2.1".parse().ok(), false);
        assert_eq!(h["x-forwarded-for"], "192.0.2.1");
        assert_eq!(h["x-forwarded-proto"], "http");

        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("203.0.113.5"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        prepare(&mut h, None, false, "10.1.2.3".parse().ok(), true);
        assert_eq!(h["x-forwarded-for"], "203.0.113.5, 10.1.2.3");
        assert_eq!(h["x-forwarded-proto"], "https");
    }

    #[test]
    fn request_ids_are_kept_when_sane_and_made_otherwise() {
        let mut h = HeaderMap::new();
        h.insert("x-request-id", HeaderValue::from_static("abc-123"));
        assert_eq!(prepare(&mut h, None, false, None, false), "abc-123");
        let mut h = HeaderMap::new();
        h.insert("x-request-id", HeaderValue::from_static("bad id with spaces"));
        let first = prepare(&mut h, None, false, None, false);
        assert!(valid_request_id(&first));
        let mut again = HeaderMap::new();
        assert_ne!(prepare(&mut again, None, false, None, false), first);
    }

    #[test]
    fn cidrs_match_by_prefix() {
        let t = TrustedProxies::parse(&["10.0.0.0/8".into(), "192.168.1.7".into(), "fd00::/8".into()]).unwrap();
        assert!(t.contains("10.200.3.4".parse().unwrap()));
        assert!(t.contains("192.168.1.7".parse().unwrap()));
        assert!(!t.contains("192.168.1.8".parse().unwrap()));
        assert!(t.contains("fd12::1".parse().unwrap()));
        assert!(!t.contains("11.0.0.1".parse().unwrap()));
        assert!(TrustedProxies::parse(&["10.0.0.0/33".into()]).is_err());
    }

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, x-secret-hop"));
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }
}
