//! The gateway's own HTTP/1.1 path, for the requests that make most of the
//! traffic: `GET` or `HEAD`, no body, routed to a plain HTTP/1.1 upstream.
//! Such a request is parsed where it was read (httparse), checked like any
//! other, its head rewritten straight into the bytes sent upstream, and the
//! response relayed as it comes with its framing untouched — on the client
//! connection's task, with no header maps, connection tasks or channels.
//!
//! Everything else hands the connection, with the bytes already read, to
//! hyper ([`crate::server`]), which serves it from then on: request bodies,
//! upgrades, HTTP/2, HTTP/1.0, `Connection` options, unusual heads, the
//! gateway's own endpoints, unrouted paths and in-process upstreams. The
//! hand-over is decided before the request is acted on, so whatever the
//! answer to such a request, it is the one [`Gateway::handle`] gives.
//!
//! What the upstream sees is decided by the same code as on hyper's path
//! ([`crate::identity::Rewrite`], [`Gateway::authenticate_safe`]).
//!
//! Layout:
//! - this module: the connection loop (heads read, deadlines, hand-over) and
//!   one request's exchange;
//! - `head`: which request heads are served here;
//! - `upstream`: the request written to a pooled upstream connection, the
//!   final response head read;
//! - `framing`: how a response body ends, and which bytes belong to it;
//! - `chunked`: the chunked-body scanner;
//! - `relay`: the response rewritten and relayed to the client;
//! - `respond`: status and header lines, and the gateway's own answers.

mod chunked;
mod framing;
mod head;
mod relay;
mod respond;
mod upstream;

use std::pin::Pin;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use httparse::Status;
use memchr::memmem;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Sleep;

use self::head::Head;
use self::respond::{push_line, refuse};
use crate::config::AuthMode;
use crate::error::GatewayError;
use crate::gateway::{Gateway, serves_itself};
use crate::identity::{self, Peer};
use crate::routes::{Route, Upstream};

/// Header lines a request may have here; a request with more goes to hyper.
const MAX_HEADERS: usize = 64;
/// Header lines an upstream's response may have, as on hyper's path.
const MAX_RESPONSE_HEADERS: usize = 100;
/// The longest request head read here; a longer one goes to hyper.
const MAX_REQUEST_HEAD: usize = 16 * 1024;
/// The longest response head accepted from an upstream.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// How long a connection accepted as the server stops may take to send its request.
const FIRST_REQUEST_GRACE: Duration = Duration::from_secs(1);
/// How far a client connection's idle deadline may lag behind (see [`serve`]).
const IDLE_STEP: Duration = Duration::from_secs(1);
/// The whole HTTP/2 connection preface, `PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`.
const HTTP2_PREFACE_LEN: usize = 24;
/// Bytes read from an upstream at a time while relaying a body.
const RELAY_CHUNK: usize = 16 * 1024;

/// What hyper starts a connection from.
pub(crate) struct Handover {
    /// Bytes read and not yet served.
    pub read: BytesMut,
    /// When the head they begin must be whole, if they hold only part of
    /// one: the deadline does not start again with hyper.
    pub head_deadline: Option<tokio::time::Instant>,
}

impl Handover {
    fn of(read: BytesMut, expiry: &Sleep) -> Self {
        // An HTTP/2 preface's first half looks like a whole head.
        let half_preface = read.starts_with(b"PRI * HTTP/2.0\r\n\r\n") && read.len() < HTTP2_PREFACE_LEN;
        let whole = (has_head(&read) || has_bare_lf_head(&read)) && !half_preface;
        let head_deadline = (!read.is_empty() && !whole).then(|| expiry.deadline());
        Self { read, head_deadline }
    }
}

/// Serves `client`'s requests until the connection ends, `stop` turns true
/// while it is idle, or a request is one for hyper: then the bytes read and
/// not yet served are handed over, for hyper to start from. Once `stop` is
/// true, a request already read is still answered (with `Connection:
/// close`), as is the first request of a connection that has just been
/// accepted, if it comes within [`FIRST_REQUEST_GRACE`]; then the connection closes.
/// With the own path turned off (`gateway.fast_path = false`), every
/// connection goes to hyper as soon as its first bytes are read.
pub(crate) async fn serve(
    gateway: &Gateway,
    client: &mut TcpStream,
    peer: &Peer,
    stop: &mut watch::Receiver<bool>,
) -> Option<Handover> {
    let limits = gateway.client_limits();
    let mut input = BytesMut::with_capacity(4096);
    let mut work = Work { send_timeout: limits.send, ..Work::default() };
    let mut fresh = true;
    // A new connection has `limits.head` (or `limits.idle`, if shorter) to
    // send its first head whole. Later it may be idle up to `limits.idle`
    // between requests, and then has `limits.head` from the first bytes of
    // the next head, however slowly the rest trickles in. The idle deadline
    // moves in steps of IDLE_STEP, not on every request, to spare the timer.
    let mut expiry = std::pin::pin!(tokio::time::sleep(limits.head.min(limits.idle)));
    loop {
        let mut head_timed = fresh;
        while !has_head(&input) {
            if input.len() >= MAX_REQUEST_HEAD || has_bare_lf_head(&input) {
                return Some(Handover::of(input, &expiry));
            }
            let now = tokio::time::Instant::now();
            if !input.is_empty() && !head_timed {
                expiry.as_mut().reset(now + limits.head);
                head_timed = true;
            } else if input.is_empty() && !fresh && now + limits.idle >= expiry.deadline() + IDLE_STEP {
                expiry.as_mut().reset(now + limits.idle);
            }
            if !read_more(client, &mut input, expiry.as_mut(), stop, fresh).await {
                return None;
            }
            // Without the own path, hyper takes over once the first bytes
            // are in hand (a shutdown now cannot drop them).
            if !gateway.fast_path() {
                return Some(Handover::of(input, &expiry));
            }
        }
        let mut lines = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut lines);
        let Ok(Status::Complete(head_len)) = request.parse(&input) else {
            return Some(Handover::of(input, &expiry));
        };
        let Some(head) = Head::of(&request) else {
            return Some(Handover::of(input, &expiry));
        };
        let routes = gateway.routes();
        let Ok(Some(route)) = routes.route_for(head.path) else {
            return Some(Handover::of(input, &expiry));
        };
        if !ours(route, head.path) {
            return Some(Handover::of(input, &expiry));
        }
        work.closing = *stop.borrow();
        let served = exchange(gateway, route, &head, request.headers, peer, &mut work, client).await;
        if !served || work.closing {
            return None;
        }
        fresh = false;
        input.advance(head_len);
    }
}

/// Reads more of a request head into `input`. `false` when the connection
/// is done: closed, broken, past `expiry`, or stopping with nothing sent.
async fn read_more(
    client: &mut TcpStream,
    input: &mut BytesMut,
    expiry: Pin<&mut Sleep>,
    stop: &mut watch::Receiver<bool>,
    fresh: bool,
) -> bool {
    input.reserve(4096);
    if !input.is_empty() {
        return tokio::select! {
            biased;
            read = client.read_buf(input) => matches!(read, Ok(n) if n > 0),
            () = expiry => false,
        };
    }
    // Between requests, a shutdown ends the wait too.
    if !*stop.borrow() {
        tokio::select! {
            biased;
            read = client.read_buf(input) => return matches!(read, Ok(n) if n > 0),
            () = expiry => return false,
            _ = stop.wait_for(|stop| *stop) => {}
        }
    }
    // Stopping. A client that has just connected did so to send a request.
    fresh && matches!(tokio::time::timeout(FIRST_REQUEST_GRACE, client.read_buf(input)).await, Ok(Ok(n)) if n > 0)
}

/// Whether a routed request is served here: a plain HTTP/1.1 upstream, not
/// one of the gateway's own endpoints.
fn ours(route: &Route, path: &str) -> bool {
    matches!(route.upstream, Upstream::Http { http2: false, .. }) && !serves_itself(path)
}

/// Whether `input` holds the end of a head. A request read whole ends
/// with it, which is quicker to see than to search for.
fn has_head(input: &[u8]) -> bool {
    static END: LazyLock<memmem::Finder<'static>> = LazyLock::new(|| memmem::Finder::new(b"\r\n\r\n"));
    input.ends_with(b"\r\n\r\n") || END.find(input).is_some()
}

/// A head ended by bare line feeds: valid, rare, hyper's to parse.
fn has_bare_lf_head(input: &[u8]) -> bool {
    static ENDS: LazyLock<[memmem::Finder<'static>; 2]> =
        LazyLock::new(|| [memmem::Finder::new(b"\n\n"), memmem::Finder::new(b"\n\r\n")]);
    ENDS.iter().any(|end| end.find(input).is_some())
}

/// Buffers kept for the life of a client connection.
#[derive(Default)]
struct Work {
    /// What is written next: the upstream request, then the client response.
    out: Vec<u8>,
    /// What the upstream sent.
    from_upstream: BytesMut,
    /// When the request being served arrived (Unix seconds, the gateway's clock).
    now: i64,
    /// Whether the connection closes after this response (the server is stopping).
    closing: bool,
    /// How long one write to the client may wait for it to read.
    send_timeout: Duration,
}

/// Serves one request whose head is `head`/`lines`: authenticated, forwarded,
/// answered. Returns whether the client connection can take another request.
async fn exchange(
    gateway: &Gateway,
    route: &Route,
    head: &Head<'_>,
    lines: &[httparse::Header<'_>],
    peer: &Peer,
    work: &mut Work,
    client: &mut TcpStream,
) -> bool {
    work.now = gateway.now();
    let request_id = identity::request_id(head.request_id);
    let cookie_lines = || {
        lines.iter().filter(|l| l.name.eq_ignore_ascii_case("cookie")).filter_map(|l| std::str::from_utf8(l.value).ok())
    };
    let verified = match route.auth {
        AuthMode::Required => {
            match gateway.authenticate_safe(route, head.authorization, cookie_lines(), work.now).await {
                Ok(verified) => Some(verified),
                Err(error) => return refuse(route, error, head, &request_id, work, client).await,
            }
        }
        AuthMode::Public => None,
    };
    let Upstream::Http { authority, host, .. } = &route.upstream else {
        return false;
    };

    // The upstream's request: the target, the client's headers as the
    // rewrite lets them pass (less `Host` and `Connection`), then ours.
    let out = &mut work.out;
    out.clear();
    out.extend_from_slice(head.method.as_bytes());
    out.push(b' ');
    let (base, path) = route.target_parts(head.path);
    out.extend_from_slice(base.as_bytes());
    out.extend_from_slice(path.as_bytes());
    if let Some(query) = head.query {
        out.push(b'?');
        out.extend_from_slice(query.as_bytes());
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let rewrite = gateway.rewrite(route, verified.as_deref(), Some(peer), &request_id);
    let pairs = lines.iter().map(|l| (l.name, l.value));
    rewrite.apply(pairs, |name, value| {
        if !name.eq_ignore_ascii_case(b"host") {
            push_line(out, name, value);
        }
    });
    push_line(out, b"host", host.as_bytes());
    out.extend_from_slice(b"\r\n");

    let started = Instant::now();
    let answered = tokio::time::timeout(route.timeout, upstream::send(authority, out, &mut work.from_upstream)).await;
    let upstream = match answered {
        Ok(Ok(upstream)) => upstream,
        Ok(Err(error)) => {
            tracing::warn!(%error, "upstream request failed");
            return refuse(route, GatewayError::UpstreamUnavailable, head, &request_id, work, client).await;
        }
        Err(_) => return refuse(route, GatewayError::UpstreamTimeout, head, &request_id, work, client).await,
    };
    route.stats.upstream_latency(started.elapsed());
    relay::relay(gateway, route, head, upstream, &request_id, work, client).await
}
