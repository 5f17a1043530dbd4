//! What an upstream may see. Everything a client could use to pass itself off
//! as someone (identity headers, look-alikes spelled with `_`, our cookies,
//! forwarding and client-address headers from untrusted peers, method
//! overrides) is removed, and the client's hop-by-hop headers with it,
//! before the gateway adds its own values — so nothing the client sends can
//! remove or alter what the gateway sets.

use std::net::IpAddr;

use axum::http::{HeaderMap, HeaderName, HeaderValue, header};

pub const USER_ID: HeaderName = HeaderName::from_static("x-user-id");
pub const USER_ROLES: HeaderName = HeaderName::from_static("x-user-roles");
pub const SESSION_ID: HeaderName = HeaderName::from_static("x-session-id");
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Hop-by-hop headers (RFC 9110 §7.6.1) that never cross the gateway as
/// such, with the legacy `Proxy-Connection`. Lowercase.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Headers only the gateway sets, and names other authenticating proxies
/// use for the user they vouch for: whatever a client sends under these
/// names (or a spelling with `_`) never reaches an upstream.
const OWNED: [&str; 7] = [
    "x-session-id",
    "x-request-id",
    "x-forwarded-for",
    "x-remote-user",
    "x-remote-group",
    "x-webauth-user",
    "remote-user",
];
const OWNED_PREFIXES: [&str; 2] = ["x-user-", "x-auth-"];

/// Connection options of HTTP/2's cleartext upgrade (RFC 7540 §3.2.1),
/// which the gateway never performs: dropped like hop-by-hop headers.
const H2C_SETTINGS: &str = "http2-settings";

/// Method overrides: an upstream framework honouring them would run a
/// `DELETE` that the gateway checked as a `GET` (no CSRF check).
const METHOD_OVERRIDES: [&str; 3] = ["x-http-method-override", "x-http-method", "x-method-override"];

/// What proxies in front of the gateway say about the client: believed
/// from trusted proxies only (`X-Forwarded-For` is rebuilt either way).
const FROM_PROXIES: [&str; 8] = [
    "forwarded",
    "x-real-ip",
    "true-client-ip",
    "x-client-ip",
    "x-cluster-client-ip",
    "cf-connecting-ip",
    "fastly-client-ip",
    "x-rewrite-url",
];
/// Cloudflare Access's identity headers, believed from trusted proxies only.
const CF_ACCESS: &str = "cf-access-";
/// Prefixes of the above, and of the user and client-certificate headers
/// other authenticating proxies set (AWS ALB, Cloudflare Access, Azure App
/// Service, Kong, TLS terminators).
const FROM_PROXIES_PREFIXES: [&str; 8] = [
    "x-forwarded-",
    "x-authenticated-",
    "x-original-",
    "x-amzn-oidc-",
    "x-ms-client-principal",
    "x-consumer-",
    "x-ssl-client-",
    "x-client-cert",
];

/// Response headers an upstream's `Connection` may not remove: the framing
/// of the body the gateway relays, and the gateway's own request id.
const NEVER_CONNECTION_NAMED: [&str; 3] = ["content-length", "transfer-encoding", "x-request-id"];

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

/// `name` compared with `other` (lowercase) ignoring case and reading `_`
/// as `-`, as CGI-style servers do (`X_User_Id` is their `X-User-Id`).
fn folded_eq(name: &[u8], other: &str) -> bool {
    name.len() == other.len() && name.iter().zip(other.bytes()).all(|(a, b)| fold(*a) == b)
}

fn folded_starts(name: &[u8], prefix: &str) -> bool {
    name.get(..prefix.len()).is_some_and(|start| folded_eq(start, prefix))
}

fn fold(b: u8) -> u8 {
    if b == b'_' { b'-' } else { b.to_ascii_lowercase() }
}

/// What becomes of a client's header line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Pass,
    /// Never passes.
    Drop,
    /// Passes from trusted proxies only.
    FromProxies,
    Cookie,
    Authorization,
}

/// The class of a client header `name` (any case, `_` read as `-`).
/// Most names are decided by their first byte alone.
fn class(name: &[u8]) -> Class {
    let any = |names: &[&str]| names.iter().any(|n| folded_eq(name, n));
    let any_prefix = |prefixes: &[&str]| prefixes.iter().any(|p| folded_starts(name, p));
    match name.first().map(u8::to_ascii_lowercase) {
        Some(b'x') => {
            if any(&OWNED) || any_prefix(&OWNED_PREFIXES) || any(&METHOD_OVERRIDES) {
                Class::Drop
            } else if any(&FROM_PROXIES) || any_prefix(&FROM_PROXIES_PREFIXES) {
                Class::FromProxies
            } else {
                Class::Pass
            }
        }
        Some(b'c') if folded_eq(name, "cookie") => Class::Cookie,
        Some(b'a') if folded_eq(name, "authorization") => Class::Authorization,
        Some(b'c' | b'k' | b'p' | b't' | b'u') if any(&HOP_BY_HOP) => Class::Drop,
        Some(b'h') if folded_eq(name, H2C_SETTINGS) => Class::Drop,
        Some(b'r') if folded_eq(name, "remote-user") => Class::Drop,
        Some(b'f' | b't' | b'c') if any(&FROM_PROXIES) || folded_starts(name, CF_ACCESS) => Class::FromProxies,
        _ => Class::Pass,
    }
}

/// Whether a response header line lets an upstream touch the session the
/// gateway's cookies hold: a `Set-Cookie` that so much as names one of them
/// (in any case, quoted, nameless, comma-joined: browsers differ in how
/// they read odd lines), or `Clear-Site-Data`. Only the auth-service may:
/// another upstream could fix or end a user's session.
pub fn touches_our_session(name: &[u8], value: &[u8]) -> bool {
    name.eq_ignore_ascii_case(b"clear-site-data")
        || (name.eq_ignore_ascii_case(b"set-cookie") && names_our_cookie(value))
}

/// Whether a `Set-Cookie` value names one of the gateway's cookies anywhere.
fn names_our_cookie(value: &[u8]) -> bool {
    auth_tokens::cookies::ALL
        .iter()
        .any(|ours| value.windows(ours.len()).any(|w| w.eq_ignore_ascii_case(ours.as_bytes())))
}

/// Removes a response's header lines that touch the gateway's session (see
/// [`touches_our_session`]).
pub fn strip_session_headers(headers: &mut HeaderMap) {
    headers.remove("clear-site-data");
    if !headers.get_all(header::SET_COOKIE).iter().any(|v| names_our_cookie(v.as_bytes())) {
        return;
    }
    let kept: Vec<HeaderValue> =
        headers.get_all(header::SET_COOKIE).iter().filter(|v| !names_our_cookie(v.as_bytes())).cloned().collect();
    headers.remove(header::SET_COOKIE);
    for value in kept {
        headers.append(header::SET_COOKIE, value);
    }
}

/// Whether a client's header name may pass at all: letters, digits and
/// `-` (and `_` when allowed), as nginx's `ignore_invalid_headers`. Other
/// token characters (`.`, `~`, `!`…) are legal but unused, and a framework
/// that folds them (`X.User.Id`) would read a name the gateway manages.
fn valid_name(name: &str, underscores: bool) -> bool {
    name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || (b == b'_' && underscores))
}

/// Whether an `Authorization` value is a bearer token (any case, RFC 6750).
fn is_bearer(value: &[u8]) -> bool {
    value.get(..7).is_some_and(|scheme| scheme.eq_ignore_ascii_case(b"bearer "))
}

/// Whether `name` (any case) is a hop-by-hop header (RFC 9110 §7.6.1).
pub fn hop_by_hop(name: &str) -> bool {
    HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
}

/// Whether an upstream response's `Connection` header may remove the
/// header `name`: never the framing, never what the gateway sets.
pub fn connection_may_remove(name: &str) -> bool {
    !NEVER_CONNECTION_NAMED.iter().any(|n| name.eq_ignore_ascii_case(n))
}

/// Removes a response's hop-by-hop headers, and those its `Connection`
/// names where [`connection_may_remove`] allows.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none: one pass over the names instead of a removal per kind.
    if !headers.keys().any(|name| hop_by_hop(name.as_str())) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| connection_names(v.as_bytes()))
        .filter_map(|n| HeaderName::from_bytes(n).ok())
        .filter(|n| connection_may_remove(n.as_str()))
        .collect();
    for name in named {
        headers.remove(name);
    }
    while let Some(name) = headers.keys().find(|name| hop_by_hop(name.as_str())).cloned() {
        headers.remove(name);
    }
}

/// The items of a comma-separated header value (RFC 9110 §5.6.1), trimmed,
/// empty ones skipped.
pub fn list_items(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|b| *b == b',').map(<[u8]>::trim_ascii).filter(|item| !item.is_empty())
}

/// The header names a `Connection` value lists, to be dropped with it: its
/// items but the usual `keep-alive` (a hop-by-hop header anyway) and
/// `close`, which name nothing else.
pub fn connection_names(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    list_items(value).filter(|t| !t.eq_ignore_ascii_case(b"keep-alive") && !t.eq_ignore_ascii_case(b"close"))
}

/// The items of the `Connection` header lines.
pub fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &[u8]> {
    headers.get_all(header::CONNECTION).into_iter().flat_map(|v| list_items(v.as_bytes()))
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

/// The request's id: the client's `X-Request-Id` when it is a sane one
/// (so traces join up), a fresh one otherwise. It goes upstream and comes
/// back on every response, the gateway's own answers included.
pub fn request_id(client: Option<&[u8]>) -> HeaderValue {
    client.filter(|v| valid_request_id(v)).and_then(|v| HeaderValue::from_bytes(v).ok()).unwrap_or_else(new_request_id)
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
    /// Whether header names with `_` may pass (those that read as one the
    /// gateway manages never do).
    pub underscores: bool,
    /// See [`request_id`].
    pub request_id: &'a HeaderValue,
}

impl Rewrite<'_> {
    /// Calls `emit` with every header the upstream gets, given the client's
    /// `headers` (names in any case, raw values): the client's that may pass,
    /// in their order, then the gateway's own. `Host` passes as it came.
    /// Both the gateway's HTTP/1.1 path (on raw bytes) and [`prepare`] (on a
    /// `HeaderMap`) go through here, so what an upstream may see is decided
    /// in one place.
    pub fn apply<'h, I>(&self, headers: I, mut emit: impl FnMut(&[u8], &[u8]))
    where
        I: Iterator<Item = (&'h str, &'h [u8])> + Clone,
    {
        let lines = |name: &'static str| headers.clone().filter(move |(n, _)| n.eq_ignore_ascii_case(name));
        let trusted = self.peer_trusted && self.peer.is_some();
        // Headers the client's `Connection` names are hop-by-hop too (no
        // list, so no allocation, for the usual `keep-alive`).
        let named: Vec<&[u8]> = lines("connection").flat_map(|(_, value)| connection_names(value)).collect();
        for (name, value) in headers.clone() {
            if !valid_name(name, self.underscores) {
                continue;
            }
            if named.iter().any(|n| n.eq_ignore_ascii_case(name.as_bytes())) {
                continue;
            }
            match class(name.as_bytes()) {
                Class::Pass => emit(name.as_bytes(), value),
                // Only the exact spelling: `_` look-alikes would merge with ours.
                Class::FromProxies if trusted && !name.contains('_') => emit(name.as_bytes(), value),
                Class::FromProxies | Class::Drop => {}
                Class::Cookie => self.cookie(value, &mut emit),
                // A bearer token may be ours, which only the auth-service
                // sees (others get identity headers); on a route that
                // checked a token no other credential passes either.
                Class::Authorization if self.forward_credentials => emit(name.as_bytes(), value),
                Class::Authorization if self.identity.is_some() || is_bearer(value) => {}
                Class::Authorization => emit(name.as_bytes(), value),
            }
        }
        if let Some(id) = self.identity {
            for (name, value) in [(USER_ID, &id.user_id), (USER_ROLES, &id.roles), (SESSION_ID, &id.session_id)] {
                if let Some(value) = value {
                    emit(name.as_str().as_bytes(), value.as_bytes());
                }
            }
        }
        emit(REQUEST_ID.as_str().as_bytes(), self.request_id.as_bytes());
        // `X-Forwarded-*`: believed from trusted proxies only, else set from the peer.
        let believed = |name: &'static str| if trusted { lines(name).next().map(|(_, v)| v) } else { None };
        if let Some(peer) = self.peer {
            let mut chain = Vec::new();
            for (_, prior) in lines("x-forwarded-for").filter(|_| trusted) {
                chain.extend_from_slice(prior);
                chain.extend_from_slice(b", ");
            }
            if chain.is_empty() {
                emit(FORWARDED_FOR.as_str().as_bytes(), peer.text.as_bytes());
            } else {
                chain.extend_from_slice(peer.text.as_bytes());
                emit(FORWARDED_FOR.as_str().as_bytes(), &chain);
            }
        }
        if believed("x-forwarded-proto").is_none() {
            emit(FORWARDED_PROTO.as_str().as_bytes(), b"http");
        }
        if believed("x-forwarded-host").is_none()
            && let Some((_, host)) = lines("host").next()
        {
            emit(FORWARDED_HOST.as_str().as_bytes(), host);
        }
    }

    /// A `Cookie` line without the gateway's own cookies (unless the
    /// upstream is the auth-service); a line that is not text cannot be
    /// vetted, so it goes.
    fn cookie(&self, value: &[u8], emit: &mut impl FnMut(&[u8], &[u8])) {
        if self.forward_credentials {
            return emit(b"cookie", value);
        }
        match std::str::from_utf8(value) {
            Ok(line) if !line.contains("__Host-") => emit(b"cookie", value),
            Ok(line) => {
                if let Some(rest) = auth_tokens::cookies::without(line, &auth_tokens::cookies::ALL) {
                    emit(b"cookie", rest.as_bytes());
                }
            }
            Err(_) => {}
        }
    }
}

/// Rewrites the request headers for the upstream (see [`Rewrite::apply`]).
pub fn prepare(headers: &mut HeaderMap, rewrite: Rewrite<'_>) {
    let mut out = HeaderMap::with_capacity(headers.len() + 7);
    let lines: Vec<(&str, &[u8])> = headers.iter().map(|(n, v)| (n.as_str(), v.as_bytes())).collect();
    rewrite.apply(lines.into_iter(), |name, value| {
        if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
            out.append(name, value);
        }
    });
    *headers = out;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(ip: &str) -> Peer {
        Peer::new(ip.parse().unwrap())
    }

    static ID: std::sync::LazyLock<HeaderValue> = std::sync::LazyLock::new(|| HeaderValue::from_static("req-1"));

    fn rewrite<'a>(identity: Option<&'a IdentityHeaders>, peer: Option<&'a Peer>, peer_trusted: bool) -> Rewrite<'a> {
        Rewrite { identity, forward_credentials: false, peer, peer_trusted, underscores: false, request_id: &ID }
    }

    /// The header lines `prepare` leaves, as (name, value) text, in order.
    fn lines(h: &HeaderMap) -> Vec<(String, String)> {
        h.iter().map(|(n, v)| (n.to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned())).collect()
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
        h.append("x-forwarded-for", HeaderValue::from_static("203.0.113.5"));
        h.append("x-forwarded-for", HeaderValue::from_static("198.51.100.7"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        prepare(&mut h, rewrite(None, Some(&peer("10.1.2.3")), true));
        assert_eq!(h["x-forwarded-for"], "203.0.113.5, 198.51.100.7, 10.1.2.3");
        assert_eq!(h["x-forwarded-proto"], "https");
    }

    #[test]
    fn request_ids_are_kept_when_sane_and_made_otherwise() {
        assert_eq!(request_id(Some(b"abc-123")), "abc-123");
        let first = request_id(Some(b"bad id with spaces"));
        assert!(valid_request_id(first.as_bytes()));
        let second = request_id(None);
        assert_ne!(second, first);
        assert!(valid_request_id(second.as_bytes()));
        assert_eq!(first.len(), 33);
        let mut h = HeaderMap::new();
        h.insert("x-request-id", HeaderValue::from_static("client-chose-this"));
        prepare(&mut h, rewrite(None, None, false));
        assert_eq!(h["x-request-id"], "req-1");
    }

    #[test]
    fn look_alikes_spelled_with_underscores_never_pass() {
        let mut h = HeaderMap::new();
        for name in ["x_user_id", "X_User_Roles", "x-user_id", "x_session_id", "x_auth_user", "x_forwarded_for"] {
            h.append(HeaderName::from_bytes(name.as_bytes()).unwrap(), HeaderValue::from_static("victim"));
        }
        h.append("x_custom", HeaderValue::from_static("1"));
        let id = IdentityHeaders::new("me", &[], "s");
        let mut off = h.clone();
        prepare(&mut off, rewrite(Some(&id), None, false));
        assert_eq!(
            lines(&off),
            [
                ("x-user-id", "me"),
                ("x-user-roles", ""),
                ("x-session-id", "s"),
                ("x-request-id", "req-1"),
                ("x-forwarded-proto", "http")
            ]
            .map(|(n, v)| (n.to_owned(), v.to_owned()))
        );
        // Allowed underscores let other names through, never the look-alikes.
        let mut on = h.clone();
        prepare(&mut on, Rewrite { underscores: true, ..rewrite(Some(&id), Some(&peer("10.0.0.1")), true) });
        assert_eq!(on["x_custom"], "1");
        assert_eq!(on.get_all("x-user-id").iter().collect::<Vec<_>>(), ["me"]);
        assert!(lines(&on).iter().all(|(_, v)| v != "victim"), "{:?}", lines(&on));
    }

    #[test]
    fn client_address_and_url_claims_pass_from_trusted_proxies_only() {
        let names = [
            "x-real-ip",
            "true-client-ip",
            "x-client-ip",
            "cf-connecting-ip",
            "x-original-url",
            "x-rewrite-url",
            "x-original-host",
            "x-forwarded-port",
            "x-forwarded-prefix",
            "x-authenticated-user",
            "x-authenticated-groups",
            "forwarded",
            "x-amzn-oidc-identity",
            "cf-access-authenticated-user-email",
            "x-ms-client-principal-name",
            "x-consumer-username",
            "x-ssl-client-s-dn",
        ];
        let mut h = HeaderMap::new();
        for name in names {
            h.insert(name, HeaderValue::from_static("claimed"));
        }
        let mut untrusted = h.clone();
        prepare(&mut untrusted, rewrite(None, Some(&peer("192.0.2.1")), false));
        assert!(lines(&untrusted).iter().all(|(_, v)| v != "claimed"), "{:?}", lines(&untrusted));
        let mut trusted = h.clone();
        prepare(&mut trusted, rewrite(None, Some(&peer("10.0.0.1")), true));
        for name in names {
            assert_eq!(trusted[name], "claimed", "{name}");
        }
    }

    #[test]
    fn bearer_tokens_reach_only_the_auth_service_and_other_schemes_only_public_routes() {
        let lines_of = |rewrite: Rewrite<'_>, value: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(header::AUTHORIZATION, HeaderValue::from_static(value));
            prepare(&mut h, rewrite);
            h.get(header::AUTHORIZATION).map(|v| v.to_str().unwrap().to_owned())
        };
        let id = IdentityHeaders::new("u1", &[], "s1");
        let public = rewrite(None, None, false);
        let required = rewrite(Some(&id), None, false);
        let auth_service = Rewrite { forward_credentials: true, ..rewrite(None, None, false) };
        assert_eq!(lines_of(public, "Bearer eyJ.a.b"), None);
        assert_eq!(lines_of(public, "bearer eyJ.a.b"), None);
        assert_eq!(lines_of(public, "Basic YTpi").as_deref(), Some("Basic YTpi"));
        assert_eq!(lines_of(required, "Basic YTpi"), None);
        assert_eq!(lines_of(auth_service, "Bearer eyJ.a.b").as_deref(), Some("Bearer eyJ.a.b"));
    }

    #[test]
    fn other_proxies_user_headers_and_h2c_settings_never_pass() {
        let mut h = HeaderMap::new();
        for name in
            ["remote-user", "x-remote-user", "x-remote-group", "x-webauth-user", "http2-settings", "Remote_User"]
        {
            h.append(HeaderName::from_bytes(name.as_bytes()).unwrap(), HeaderValue::from_static("admin"));
        }
        prepare(&mut h, Rewrite { underscores: true, ..rewrite(None, Some(&peer("10.0.0.1")), true) });
        assert!(lines(&h).iter().all(|(_, v)| v != "admin"), "{:?}", lines(&h));
    }

    #[test]
    fn only_our_session_cookies_are_taken_out_of_a_response() {
        let mut h = HeaderMap::new();
        for value in [
            "theme=dark; Path=/",
            "__Host-access_token=forged; Path=/; Secure",
            " __host-csrf_token =x",
            "__Host-refresh_token=r",
            "\"__Host-access_token\"=x",
            "=__Host-access_token=x",
            "__Host-access_token; Path=/",
            "a=1, __Host-access_token=x",
            "__Host-other=1",
        ] {
            h.append(header::SET_COOKIE, HeaderValue::from_static(value));
        }
        h.insert("clear-site-data", HeaderValue::from_static("\"cookies\""));
        strip_session_headers(&mut h);
        let left: Vec<_> = h.get_all(header::SET_COOKIE).iter().map(|v| v.to_str().unwrap()).collect();
        assert_eq!(left, ["theme=dark; Path=/", "__Host-other=1"]);
        assert!(h.get("clear-site-data").is_none());
    }

    #[test]
    fn header_names_other_than_letters_digits_and_dashes_never_pass() {
        let mut h = HeaderMap::new();
        for name in ["x.user.id", "x~user~id", "x-user!id", "x-ok"] {
            h.append(HeaderName::from_bytes(name.as_bytes()).unwrap(), HeaderValue::from_static("admin"));
        }
        prepare(&mut h, rewrite(None, None, false));
        assert_eq!(h.get_all("x-ok").iter().count(), 1);
        assert!(lines(&h).iter().all(|(n, v)| v != "admin" || n == "x-ok"), "{:?}", lines(&h));
    }

    #[test]
    fn method_overrides_never_pass() {
        let mut h = HeaderMap::new();
        for name in ["x-http-method-override", "X-HTTP-Method", "x-method-override", "x_http_method_override"] {
            h.append(HeaderName::from_bytes(name.as_bytes()).unwrap(), HeaderValue::from_static("DELETE"));
        }
        prepare(&mut h, Rewrite { underscores: true, ..rewrite(None, Some(&peer("10.0.0.1")), true) });
        assert!(lines(&h).iter().all(|(_, v)| v != "DELETE"), "{:?}", lines(&h));
    }

    #[test]
    fn a_connection_header_cannot_remove_what_the_gateway_sets() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, X-User-Id, x-user-roles, X-Forwarded-For, x-request-id, x-hop"),
        );
        h.insert("x-hop", HeaderValue::from_static("1"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        let id = IdentityHeaders::new("u1", &["viewer".to_owned()], "s1");
        prepare(&mut h, rewrite(Some(&id), Some(&peer("192.0.2.1")), false));
        assert_eq!(h["x-user-id"], "u1");
        assert_eq!(h["x-user-roles"], "viewer");
        assert_eq!(h["x-forwarded-for"], "192.0.2.1");
        assert_eq!(h["x-request-id"], "req-1");
        assert_eq!(h["x-kept"], "1");
        for gone in ["connection", "x-hop", "te", "upgrade"] {
            assert!(h.get(gone).is_none(), "{gone}");
        }
    }

    #[test]
    fn a_response_connection_header_cannot_remove_the_framing() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("content-length, x-request-id, x-hop"));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
        h.insert("x-hop", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(lines(&h), [("content-length".to_owned(), "5".to_owned())]);
    }

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_removed() {
        let mut h = HeaderMap::new();
        h.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
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
