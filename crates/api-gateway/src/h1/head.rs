//! The request heads the own path serves, and what it needs of them.

use std::borrow::Cow;

use crate::gateway::valid_host;
use crate::identity;

/// What this path needs of a request head it serves.
pub(super) struct Head<'a> {
    pub head_only: bool,
    pub method: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub authorization: Option<&'a [u8]>,
    pub request_id: Option<&'a [u8]>,
}

impl<'a> Head<'a> {
    /// The head, if it is one this path serves: `GET` or `HEAD` in HTTP/1.1,
    /// origin-form target whose path is canonical already, one valid `Host`,
    /// no body, no hop-by-hop header other than `Connection: keep-alive`, no
    /// `Expect`. Whatever else, well-formed or not, hyper's path judges.
    pub fn of(request: &httparse::Request<'_, 'a>) -> Option<Self> {
        let method = request.method?;
        if !matches!(method, "GET" | "HEAD") || request.version != Some(1) {
            return None;
        }
        let target = request.path?;
        if !target.starts_with('/') || !target.bytes().all(|b| (b'!'..=b'~').contains(&b) && b != b'#') {
            return None;
        }
        let (path, query) = match target.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (target, None),
        };
        if !matches!(crate::path::canonical(path), Ok(Cow::Borrowed(_))) {
            return None;
        }
        let mut hosts = 0;
        let mut authorization = None;
        let mut request_id = None;
        for line in request.headers.iter() {
            let is = |name: &str| line.name.eq_ignore_ascii_case(name);
            if is("host") {
                if !valid_host(line.value) {
                    return None;
                }
                hosts += 1;
            } else if is("x-request-id") {
                request_id = request_id.or(Some(line.value));
            } else if is("authorization") {
                if authorization.is_some() {
                    return None;
                }
                authorization = Some(line.value);
            } else if is("connection") {
                if !line.value.eq_ignore_ascii_case(b"keep-alive") {
                    return None;
                }
            } else if identity::hop_by_hop(line.name) || REFUSED.iter().any(|name| is(name)) {
                return None;
            }
        }
        (hosts == 1).then_some(Self { head_only: method == "HEAD", method, path, query, authorization, request_id })
    }
}

/// Request headers that send a request to hyper besides the hop-by-hop
/// ones: bodies, expectations, legacy and HTTP/2 connection options.
const REFUSED: [&str; 4] = ["content-length", "expect", "proxy-connection", "http2-settings"];
