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
/// Lowercase, as `HeaderName`s are; compared by length first.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// The identity the gateway vouches for, as header values: made once per
/// verified token, not once per request.
#[derive(Debug, Clone)]
pub struct IdentityHeaders {
    user_id: Option<HeaderValue>,
    roles: Option<HeaderValue>,
    session_id: Option<HeaderValue>,
}

impl IdentityHeaders {
    pub fn new(user_id: &str, roles: &[String], session_id: &str) -> Self {
        Self {
            user_id: HeaderValue::from_str(user_id).ok(),
            roles: HeaderValue::from_str(&roles.join(",")).ok(),
            session_id: HeaderValue::from_str(session_id).ok(),
        }
    }
}

/// The TCP peer of a connection, with its address already written out for
/// `X-Forwarded-For`: made once per connection, not once per request.
#[derive(Debug, Clone)]
pub struct Peer {
    pub ip: IpAddr,
    text: HeaderValue,
}

impl Peer {
    pub fn new(ip: IpAddr) -> Self {
        let text = HeaderValue::from_str(&ip.to_string()).unwrap_or(HeaderValue::from_static("unknown"));
        Self { ip, text }
    }
}

fn spoofable(name: &str) -> bool {
    let starts = |prefix: &str| name.get(..prefix.len()).is_some_and(|n| n.eq_ignore_ascii_case(prefix));
    starts("x-user-") || starts("x-auth-") || name.eq_ignore_ascii_case("x-session-id")
}

/// Whether `name` (any case) is a hop-by-hop header (RFC 9110 §7.6.1).
pub fn hop_by_hop(name: &str) -> bool {
    HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
}

/// Removes hop-by-hop headers, including those `Connection` names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none: one pass over the names instead of a removal per kind.
    if !headers.keys().any(|name| hop_by_hop(name.as_str())) {
        return;
    }
    // Names `Connection` lists go too; the usual `keep-alive` and `close`
    // need no list (the first goes below, the second names no header).
    let named: Vec<String> = connection_tokens(headers)
        .filter(|n| !n.eq_ignore_ascii_case("keep-alive") && !n.eq_ignore_ascii_case("close"))
        .map(str::to_owned)
        .collect();
    for name in &named {
        headers.remove(name.as_str());
    }
    while let Some(name) = headers.keys().find(|name| hop_by_hop(name.as_str())).cloned() {
        headers.remove(name);
    }
}

/// The comma-separated tokens of the `Connection` header lines, trimmed.
pub fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::CONNECTION)
        .into_iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
}

/// The `Cookie` header lines as text. Cookie values may hold UTF-8, which
/// the header API's visible-ASCII check (byte by byte, slow on a long token)
/// would refuse; our cookies are ASCII either way.
pub fn cookie_lines(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers.get_all(header::COOKIE).into_iter().filter_map(|v| std::str::from_utf8(v.as_bytes()).ok())
}

/// A request id worth keeping: 1–128 characters of `[A-Za-z0-9._-]`.
fn valid_request_id(b: &[u8]) -> bool {
    !b.is_empty() && b.len() <= 128 && b.iter().all(|c| c.is_ascii_alphanumeric() || b"._-".contains(c))
}

/// How a request's headers are rewritten for its upstream.
#[derive(Debug, Clone, Copy)]
pub struct Rewrite<'a> {
    /// Whom the gateway vouches for (`None` on public routes).
    pub identity: Option<&'a IdentityHeaders>,
    /// The auth-service's own routes keep the session cookies and `Authorization`.
    pub forward_credentials: bool,
    pub peer: Option<&'a Peer>,
    /// Whether `peer` is a trusted proxy, whose forwarding headers are believed.
    pub peer_trusted: bool,
}

impl Rewrite<'_> {
    /// Calls `emit` with every header the upstream gets, given the client's
    /// `headers` (names in any case, raw values): the client's that may pass,
    /// in their order, then the gateway's own. `Host` passes as it came.
    /// Returns the request id. Both the gateway's HTTP/1.1 path (on raw
    /// bytes) and [`prepare`] (on a `HeaderMap`) go through here, so what an
    /// upstream may see is decided in one place.
    pub fn apply<'h, I>(&self, headers: I, mut emit: impl FnMut(&[u8], &[u8])) -> HeaderValue
    where
        I: Iterator<Item = (&'h str, &'h [u8])> + Clone,
    {
        let first =
            |name: &HeaderName| headers.clone().find(|(n, _)| n.eq_ignore_ascii_case(name.as_str())).map(|h| h.1);
        let trusted = self.peer_trusted && self.peer.is_some();
        for (name, value) in headers.clone() {
            if !self.passes(name, trusted) {
                continue;
            }
            if !self.forward_credentials && name.eq_ignore_ascii_case("cookie") {
                match std::str::from_utf8(value) {
                    Ok(line) if !line.contains("__Host-") => emit(b"cookie", value),
                    // A line that is not text cannot be vetted, so it goes.
                    Ok(line) => {
                        if let Some(rest) = auth_tokens::cookies::without(line, &auth_tokens::cookies::ALL) {
                            emit(b"cookie", rest.as_bytes());
                        }
                    }
                    Err(_) => {}
                }
                continue;
            }
            emit(name.as_bytes(), value);
        }
        if let Some(id) = self.identity {
            for (name, value) in [(USER_ID, &id.user_id), (USER_ROLES, &id.roles), (SESSION_ID, &id.session_id)] {
                if let Some(value) = value {
                    emit(name.as_str().as_bytes(), value.as_bytes());
                }
            }
        }
        let request_id = first(&REQUEST_ID)
            .filter(|v| valid_request_id(v))
            .and_then(|v| HeaderValue::from_bytes(v).ok())
            .unwrap_or_else(new_request_id);
        emit(REQUEST_ID.as_str().as_bytes(), request_id.as_bytes());
        // `X-Forwarded-*`: believed from trusted proxies only, else set from the peer.
        match (self.peer, if trusted { first(&FORWARDED_FOR) } else { None }) {
            (Some(peer), Some(prior)) => {
                let mut chain = prior.to_vec();
                chain.extend_from_slice(b", ");
                chain.extend_from_slice(peer.text.as_bytes());
                emit(FORWARDED_FOR.as_str().as_bytes(), &chain);
            }
            (Some(peer), _) => emit(FORWARDED_FOR.as_str().as_bytes(), peer.text.as_bytes()),
            (None, _) => {}
        }
        if !trusted || first(&FORWARDED_PROTO).is_none() {
            emit(FORWARDED_PROTO.as_str().as_bytes(), b"http");
        }
        if (!trusted || first(&FORWARDED_HOST).is_none())
            && let Some(host) = first(&header::HOST)
        {
            emit(FORWARDED_HOST.as_str().as_bytes(), host);
        }
        request_id
    }

    /// Whether a client's header line may reach the upstream as it is
    /// (cookies are then filtered by [`Rewrite::apply`]).
    fn passes(&self, name: &str, trusted: bool) -> bool {
        let is = |other: &HeaderName| name.eq_ignore_ascii_case(other.as_str());
        if spoofable(name) || is(&REQUEST_ID) || is(&FORWARDED_FOR) {
            return false;
        }
        if !trusted && (is(&header::FORWARDED) || is(&FORWARDED_PROTO) || is(&FORWARDED_HOST)) {
            return false;
        }
        // A bearer token was ours; upstreams get identity headers instead.
        !(is(&header::AUTHORIZATION) && !self.forward_credentials && self.identity.is_some())
    }
}

/// Rewrites the request headers for the upstream (see [`Rewrite::apply`]).
/// Returns the request id.
pub fn prepare(headers: &mut HeaderMap, rewrite: Rewrite<'_>) -> HeaderValue {
    let mut out = HeaderMap::with_capacity(headers.len() + 7);
    let lines: Vec<(&str, &[u8])> = headers.iter().map(|(n, v)| (n.as_str(), v.as_bytes())).collect();
    let request_id = rewrite.apply(lines.into_iter(), |name, value| {
        if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
            out.append(name, value);
        }
    });
    *headers = out;
    request_id
}

/// A fresh request id: a random per-thread prefix and a per-thread counter —
/// unique, cheaper than asking the OS for randomness on every request, and
/// touching no memory another thread writes.
fn new_request_id() -> HeaderValue {
    use std::cell::Cell;
    thread_local! {
        static NEXT: Cell<(u64, u64)> = Cell::new((uuid::Uuid::new_v4().as_u64_pair().0, 0));
    }
    let (prefix, n) = NEXT.get();
    NEXT.set((prefix, n.wrapping_add(1)));
    let mut id = [0u8; 33];
    hex(&mut id[..16], prefix);
    id[16] = b'-';
    hex(&mut id[17..], n);
    HeaderValue::from_bytes(&id).unwrap_or(HeaderValue::from_static("-"))
}

/// Writes `n` as lowercase hex, zero-padded to the width of `out`.
fn hex(out: &mut [u8], mut n: u64) {
    for byte in out.iter_mut().rev() {
        *byte = b"0123456789abcdef"[(n & 0xf) as usize];
        n >>= 4;
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

    fn peer(ip: &str) -> Peer {
        Peer::new(ip.parse().unwrap())
    }

    fn rewrite<'a>(identity: Option<&'a IdentityHeaders>, peer: Option<&'a Peer>, peer_trusted: bool) -> Rewrite<'a> {
        Rewrite { identity, forward_credentials: false, peer, peer_trusted }
    }

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
        let id = IdentityHeaders::new("u1", &roles, "s1");
        prepare(&mut h, rewrite(Some(&id), Some(&peer("10.0.0.9")), false));
        assert_eq!(h["x-user-id"], "u1");
        assert_eq!(h["x-user-roles"], "editor,viewer");
        assert_eq!(h["x-session-id"], "s1");
        assert!(h.get("x-auth-user").is_none());
        assert_eq!(h[header::COOKIE], "a=1");
        assert!(h.get(header::AUTHORIZATION).is_none());
        assert_eq!(h["x-forwarded-for"], "10.0.0.9");

        let mut public = HeaderMap::new();
        public.insert("x-user-id", HeaderValue::from_static("admin"));
        prepare(&mut public, rewrite(None, None, false));
        assert!(public.get("x-user-id").is_none());
    }

    #[test]
    fn our_cookies_go_from_every_cookie_line_and_the_rest_stay_in_order() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("a=1"));
        h.append(header::COOKIE, HeaderValue::from_static("__Host-access_token=t; b=2"));
        h.append(header::COOKIE, HeaderValue::from_static("__Host-csrf_token=c"));
        h.append(header::COOKIE, HeaderValue::from_bytes(b"x=\xff; __Host-refresh_token=r").unwrap());
        h.append(header::COOKIE, HeaderValue::from_static("c=3"));
        prepare(&mut h, rewrite(None, None, false));
        let lines: Vec<_> = h.get_all(header::COOKIE).iter().map(|v| v.to_str().unwrap()).collect();
        assert_eq!(lines, ["a=1", "b=2", "c=3"]);

        let mut untouched = HeaderMap::new();
        untouched.append(header::COOKIE, HeaderValue::from_static("a=1; b=2"));
        prepare(&mut untouched, rewrite(None, None, false));
        assert_eq!(untouched[header::COOKIE], "a=1; b=2");
    }

    #[test]
    fn forwarding_headers_are_believed_from_trusted_proxies_only() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("6.6.6.6"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        prepare(&mut h, rewrite(None, Some(&peer("192.0.2.1")), false));
        assert_eq!(h["x-forwarded-for"], "192.0.2.1");
        assert_eq!(h["x-forwarded-proto"], "http");

        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("203.0.113.5"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        prepare(&mut h, rewrite(None, Some(&peer("10.1.2.3")), true));
        assert_eq!(h["x-forwarded-for"], "203.0.113.5, 10.1.2.3");
        assert_eq!(h["x-forwarded-proto"], "https");
    }

    #[test]
    fn request_ids_are_kept_when_sane_and_made_otherwise() {
        let mut h = HeaderMap::new();
        h.insert("x-request-id", HeaderValue::from_static("abc-123"));
        assert_eq!(prepare(&mut h, rewrite(None, None, false)), "abc-123");
        let mut h = HeaderMap::new();
        h.insert("x-request-id", HeaderValue::from_static("bad id with spaces"));
        let first = prepare(&mut h, rewrite(None, None, false));
        assert!(valid_request_id(first.as_bytes()));
        let mut again = HeaderMap::new();
        let second = prepare(&mut again, rewrite(None, None, false));
        assert_ne!(second, first);
        assert!(valid_request_id(second.as_bytes()));
        assert_eq!(first.len(), 33);
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
