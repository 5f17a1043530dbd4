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
//! ([`identity::Rewrite`], [`Gateway::authenticate_safe`]).

use std::cell::RefCell;
use std::pin::Pin;
use std::sync::LazyLock;
use std::time::{Duration, Instant, SystemTime};

use axum::http::uri::Authority;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use bytes::{Buf, BytesMut};
use httparse::Status;
use memchr::memmem;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Sleep;

use crate::config::AuthMode;
use crate::error::GatewayError;
use crate::gateway::{Gateway, serves_itself};
use crate::identity::{self, Peer};
use crate::pool::{self, Slot};
use crate::routes::{Route, Upstream, has_dot_segment};

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
/// Bytes read from an upstream at a time while relaying a body.
const RELAY_CHUNK: usize = 16 * 1024;

/// Serves `client`'s requests until the connection ends, `stop` turns true
/// while it is idle, or a request is one for hyper: then the bytes read and
/// not yet served are returned, for hyper to start from. Once `stop` is
/// true, a request already read is still answered (with `Connection:
/// close`), as is the first request of a connection that has just been
/// accepted, if it comes within [`FIRST_REQUEST_GRACE`]; then the connection closes.
pub(crate) async fn serve(
    gateway: &Gateway,
    client: &mut TcpStream,
    peer: &Peer,
    stop: &mut watch::Receiver<bool>,
) -> Option<BytesMut> {
    let mut input = BytesMut::with_capacity(4096);
    let mut work = Work::default();
    let mut fresh = true;
    // Idle between requests, or slow to send one: closed alike. The deadline
    // moves in steps of IDLE_STEP, not on every read, to spare the timer.
    let idle = gateway.client_idle();
    let mut expiry = std::pin::pin!(tokio::time::sleep(idle));
    loop {
        // A whole head first (or the end, or hyper's turn).
        while !has_head(&input) {
            if input.len() >= MAX_REQUEST_HEAD || has_bare_lf_head(&input) {
                return Some(input);
            }
            let deadline = tokio::time::Instant::now() + idle;
            if deadline >= expiry.deadline() + IDLE_STEP {
                expiry.as_mut().reset(deadline);
            }
            if !read_more(client, &mut input, expiry.as_mut(), stop, fresh).await {
                return None;
            }
        }
        let mut lines = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut lines);
        let Ok(Status::Complete(head_len)) = request.parse(&input) else {
            return Some(input);
        };
        let Some(head) = Head::of(&request) else {
            return Some(input);
        };
        let routes = gateway.routes();
        let Some(route) = routes.find(head.path).filter(|route| ours(route, head.path)) else {
            return Some(input);
        };
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

/// What this path needs of a request head it serves.
struct Head<'a> {
    head_only: bool,
    method: &'a str,
    path: &'a str,
    query: Option<&'a str>,
    authorization: Option<&'a [u8]>,
}

impl<'a> Head<'a> {
    /// The head, if it is one this path serves: `GET` or `HEAD` in HTTP/1.1,
    /// origin-form target without dot segments, one `Host`, no body, no
    /// hop-by-hop header other than `Connection: keep-alive`, no `Expect`.
    fn of(request: &httparse::Request<'_, 'a>) -> Option<Self> {
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
        if has_dot_segment(path) {
            return None;
        }
        let mut hosts = 0;
        let mut authorization = None;
        for line in request.headers.iter() {
            let is = |name: &str| line.name.eq_ignore_ascii_case(name);
            if is("host") {
                hosts += 1;
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
        (hosts == 1).then_some(Self { head_only: method == "HEAD", method, path, query, authorization })
    }
}

/// Request headers that send a request to hyper besides the hop-by-hop
/// ones: bodies, expectations, legacy and HTTP/2 connection options.
const REFUSED: [&str; 4] = ["content-length", "expect", "proxy-connection", "http2-settings"];

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
    let cookie_lines = || {
        lines.iter().filter(|l| l.name.eq_ignore_ascii_case("cookie")).filter_map(|l| std::str::from_utf8(l.value).ok())
    };
    let verified = match route.auth {
        AuthMode::Required => {
            match gateway.authenticate_safe(route, head.authorization, cookie_lines(), work.now).await {
                Ok(verified) => Some(verified),
                Err(error) => return refuse(route, error, head, work, client).await,
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
    let rewrite = gateway.rewrite(route, verified.as_deref(), Some(peer));
    let pairs = lines.iter().map(|l| (l.name, l.value));
    let request_id = rewrite.apply(pairs, |name, value| {
        if !name.eq_ignore_ascii_case(b"host") && !name.eq_ignore_ascii_case(b"connection") {
            push_line(out, name, value);
        }
    });
    push_line(out, b"host", host.as_bytes());
    out.extend_from_slice(b"\r\n");

    let started = Instant::now();
    let answered = tokio::time::timeout(route.timeout, send(authority, out, &mut work.from_upstream)).await;
    let upstream = match answered {
        Ok(Ok(upstream)) => upstream,
        Ok(Err(error)) => {
            tracing::warn!(%error, "upstream request failed");
            return refuse(route, GatewayError::UpstreamUnavailable, head, work, client).await;
        }
        Err(_) => return refuse(route, GatewayError::UpstreamTimeout, head, work, client).await,
    };
    route.stats.upstream_latency(started.elapsed());
    relay(route, head, upstream, &request_id, work, client).await
}

/// Sends `request` over a kept connection to `authority` (a new one if none,
/// or if the kept one closed without answering: `GET` and `HEAD` may be
/// sent again) and reads up to the end of the final response head into `input`.
async fn send(authority: &Authority, request: &[u8], input: &mut BytesMut) -> std::io::Result<Kept> {
    let slot = Slot::of(authority);
    let (mut stream, mut reused) = match slot.take_stream() {
        Some(stream) => (stream, true),
        None => (pool::open(authority).await?, false),
    };
    loop {
        input.clear();
        match ask(&mut stream, request, input).await {
            Ok(()) => return Ok(Kept { stream, slot }),
            Err(_) if reused && input.is_empty() => {
                stream = pool::open(authority).await?;
                reused = false;
            }
            Err(error) => return Err(error),
        }
    }
}

/// A connection to an upstream that answered, and the pool slot it goes back to.
struct Kept {
    stream: TcpStream,
    slot: Slot,
}

/// Writes `request` and reads until `input` starts with a final response
/// head (interim 1xx responses are read and dropped).
async fn ask(stream: &mut TcpStream, request: &[u8], input: &mut BytesMut) -> std::io::Result<()> {
    stream.write_all(request).await?;
    loop {
        while !has_head(input) && !has_bare_lf_head(input) {
            if input.len() >= MAX_RESPONSE_HEAD {
                return Err(std::io::Error::other("response head too long"));
            }
            input.reserve(4096);
            if stream.read_buf(input).await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
        // "HTTP/1.1 1xx": an interim response, except 101, which ends the exchange.
        if input.get(9) != Some(&b'1') || input.get(9..12) == Some(b"101") {
            return Ok(());
        }
        let mut lines = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
        match httparse::Response::new(&mut lines).parse(input) {
            Ok(Status::Complete(interim)) => input.advance(interim),
            _ => return Err(std::io::Error::other("malformed interim response")),
        }
    }
}

/// How a response body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Empty,
    Length(u64),
    Chunked,
    /// When the upstream closes: the client connection closes after it too.
    ToClose,
}

/// Relays the upstream's response (head in `work.from_upstream`) to the
/// client, with hop-by-hop headers stripped and `X-Request-Id` set, the body
/// as the upstream frames it. Keeps the upstream connection if it can serve
/// again. Returns whether the client connection can.
async fn relay(
    route: &Route,
    head: &Head<'_>,
    mut upstream: Kept,
    request_id: &HeaderValue,
    work: &mut Work,
    client: &mut TcpStream,
) -> bool {
    let Work { out, from_upstream: input, now, closing } = work;
    let mut lines = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
    let mut response = httparse::Response::new(&mut lines);
    let parsed = response.parse(input);
    let (Ok(Status::Complete(head_len)), Some(code)) = (parsed, response.code) else {
        tracing::warn!("upstream sent a malformed response head");
        return refuse(route, GatewayError::UpstreamUnavailable, head, work, client).await;
    };
    let Some(mut framing) = framing(head, code, response.headers) else {
        tracing::warn!(code, "upstream response has an unusable framing");
        return refuse(route, GatewayError::UpstreamUnavailable, head, work, client).await;
    };
    let mut reusable = response.version == Some(1);

    out.clear();
    push_status(out, code, response.reason.unwrap_or_default());
    let connection = |l: &&httparse::Header<'_>| l.name.eq_ignore_ascii_case("connection");
    let named = |name: &str| {
        response
            .headers
            .iter()
            .filter(connection)
            .flat_map(|l| l.value.split(|b| *b == b','))
            .any(|token| token.trim_ascii().eq_ignore_ascii_case(name.as_bytes()))
    };
    reusable &= !named("close");
    let mut dated = false;
    for line in response.headers.iter() {
        let name = line.name;
        let dropped = dropped_from_response(name)
            || name.eq_ignore_ascii_case(identity::REQUEST_ID.as_str())
            || (framing == Framing::Chunked && name.eq_ignore_ascii_case("content-length"))
            || named(name);
        if !dropped {
            dated |= name.eq_ignore_ascii_case("date");
            push_line(out, name.as_bytes(), line.value);
        }
    }
    push_line(out, identity::REQUEST_ID.as_str().as_bytes(), request_id.as_bytes());
    if !dated {
        push_date(out, *now);
    }
    if framing == Framing::ToClose || *closing {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");

    // The body: what came with the head, then the rest as it arrives.
    input.advance(head_len);
    let mut chunks = Chunks::default();
    let mut done = take_body(&mut framing, &mut chunks, input, out, &mut reusable);
    let sent = client.write_all(out).await;
    route.stats.status(code);
    if sent.is_err() {
        return false;
    }
    while done == Some(false) {
        input.clear();
        input.reserve(RELAY_CHUNK);
        match upstream.stream.read_buf(input).await {
            Ok(0) if framing == Framing::ToClose => done = Some(true),
            Ok(n) if n > 0 => {
                out.clear();
                done = take_body(&mut framing, &mut chunks, input, out, &mut reusable);
                if client.write_all(out).await.is_err() {
                    return false;
                }
            }
            // Ended or broke mid-body: the client cannot be told otherwise.
            _ => done = None,
        }
    }
    if done.is_none() {
        return false;
    }
    if framing == Framing::ToClose {
        let _ = client.shutdown().await;
        return false;
    }
    if reusable {
        upstream.slot.put_stream(upstream.stream);
    }
    true
}

/// Response headers never relayed as they are: the hop-by-hop ones, but for
/// the framing headers, relayed because they describe the body, which is
/// relayed as it is; and the legacy `Proxy-Connection`.
fn dropped_from_response(name: &str) -> bool {
    let framing = name.eq_ignore_ascii_case("transfer-encoding") || name.eq_ignore_ascii_case("trailer");
    (identity::hop_by_hop(name) && !framing) || name.eq_ignore_ascii_case("proxy-connection")
}

/// How the body of a response to `head` with status `code` ends (RFC 9112
/// §6.3); `None` for a response this path cannot relay safely.
fn framing(head: &Head<'_>, code: u16, lines: &[httparse::Header<'_>]) -> Option<Framing> {
    if code < 200 {
        // A 101 to a request that asked for no upgrade.
        return None;
    }
    let mut coding = None;
    let mut length: Option<u64> = None;
    for line in lines {
        if line.name.eq_ignore_ascii_case("transfer-encoding") {
            coding = Some(line.value);
        } else if line.name.eq_ignore_ascii_case("content-length") {
            for value in line.value.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
                let n = std::str::from_utf8(value).ok().filter(|v| v.bytes().all(|b| b.is_ascii_digit()))?;
                let n = n.parse().ok()?;
                if length.is_some_and(|l| l != n) {
                    return None;
                }
                length = Some(n);
            }
        }
    }
    if head.head_only || code == 204 || code == 304 {
        return Some(Framing::Empty);
    }
    if let Some(coding) = coding {
        let last = coding.rsplit(|b| *b == b',').next().unwrap_or_default().trim_ascii();
        return Some(if last.eq_ignore_ascii_case(b"chunked") { Framing::Chunked } else { Framing::ToClose });
    }
    Some(length.map_or(Framing::ToClose, Framing::Length))
}

/// Moves the part of `input` that belongs to the body into `out`. Returns
/// whether the body is complete (`None`: malformed). Bytes past the body
/// make the connection unfit for reuse.
fn take_body(
    framing: &mut Framing,
    chunks: &mut Chunks,
    input: &[u8],
    out: &mut Vec<u8>,
    reusable: &mut bool,
) -> Option<bool> {
    let (taken, done) = match framing {
        Framing::Empty => (0, true),
        Framing::Length(left) => {
            let taken = input.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
            *left -= taken as u64;
            (taken, *left == 0)
        }
        Framing::Chunked => {
            let taken = chunks.scan(input)?;
            (taken, chunks.done())
        }
        Framing::ToClose => (input.len(), false),
    };
    out.extend_from_slice(&input[..taken]);
    if taken < input.len() {
        *reusable = false;
    }
    Some(done)
}

/// Where a relayed chunked body is (RFC 9112 §7.1), to know where it ends.
#[derive(Debug, Default)]
struct Chunks {
    state: ChunkState,
    size: u64,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    #[default]
    Size,
    SizeDigits,
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    /// In the trailer section; `true` at the start of a line.
    Trailer(bool),
    TrailerLf(bool),
    Done,
}

impl Chunks {
    fn done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Follows `bytes`; returns how many belong to the body (all of them
    /// until it ends), `None` if the framing is malformed.
    fn scan(&mut self, bytes: &[u8]) -> Option<usize> {
        use ChunkState::*;
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            self.state = match self.state {
                Size | SizeDigits if b.is_ascii_hexdigit() => {
                    let digit = (b as char).to_digit(16).map(u64::from)?;
                    self.size = self.size.checked_mul(16)?.checked_add(digit)?;
                    SizeDigits
                }
                SizeDigits if b == b';' || b == b' ' || b == b'\t' => Extension,
                SizeDigits | Extension if b == b'\r' => SizeLf,
                Extension => Extension,
                SizeDigits | SizeLf if b == b'\n' => self.after_size(),
                Data => {
                    let taken = (bytes.len() - i).min(usize::try_from(self.size).unwrap_or(usize::MAX));
                    self.size -= taken as u64;
                    i += taken;
                    if self.size == 0 {
                        self.state = DataCr;
                    }
                    continue;
                }
                DataCr if b == b'\r' => DataLf,
                DataCr | DataLf if b == b'\n' => Size,
                Trailer(start) if b == b'\r' => TrailerLf(start),
                Trailer(true) | TrailerLf(true) if b == b'\n' => Done,
                Trailer(false) | TrailerLf(false) if b == b'\n' => Trailer(true),
                Trailer(_) => Trailer(false),
                Done => return Some(i),
                _ => return None,
            };
            i += 1;
            if self.state == Done {
                return Some(i);
            }
        }
        Some(i)
    }

    fn after_size(&mut self) -> ChunkState {
        if self.size == 0 { ChunkState::Trailer(true) } else { ChunkState::Data }
    }
}

/// Answers with `error` as the gateway would on any path, counted on the
/// route. Returns whether the client connection can take another request.
async fn refuse(route: &Route, error: GatewayError, head: &Head<'_>, work: &mut Work, client: &mut TcpStream) -> bool {
    let response = error.into_response();
    route.stats.status(response.status().as_u16());
    respond(response, head.head_only, work, client).await
}

/// Writes a small response the gateway made itself, whole.
async fn respond(response: Response, head_only: bool, work: &mut Work, client: &mut TcpStream) -> bool {
    let out = &mut work.out;
    let (parts, body) = response.into_parts();
    let Ok(body) = axum::body::to_bytes(body, 64 * 1024).await else {
        return false;
    };
    out.clear();
    push_status(out, parts.status.as_u16(), parts.status.canonical_reason().unwrap_or(""));
    for (name, value) in &parts.headers {
        if name != header::CONTENT_LENGTH {
            push_line(out, name.as_str().as_bytes(), value.as_bytes());
        }
    }
    push_line(out, b"content-length", body.len().to_string().as_bytes());
    push_date(out, work.now);
    if work.closing {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !head_only {
        out.extend_from_slice(&body);
    }
    client.write_all(out).await.is_ok()
}

/// The status line for a three-digit `code` (as httparse and `StatusCode` have it).
fn push_status(out: &mut Vec<u8>, code: u16, reason: &str) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(&[b'0' + (code / 100 % 10) as u8, b'0' + (code / 10 % 10) as u8, b'0' + (code % 10) as u8]);
    out.push(b' ');
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\n");
}

fn push_line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

thread_local! {
    /// The `Date` value for responses that lack one, and its second.
    static DATE: RefCell<(u64, String)> = const { RefCell::new((0, String::new())) };
}

/// Adds a `Date` line for `now` (Unix seconds), made once a second per thread.
fn push_date(out: &mut Vec<u8>, now: i64) {
    let second = u64::try_from(now).unwrap_or(0);
    DATE.with(|date| {
        let mut date = date.borrow_mut();
        if date.0 != second || date.1.is_empty() {
            *date = (second, httpdate::fmt_http_date(SystemTime::UNIX_EPOCH + Duration::from_secs(second)));
        }
        push_line(out, b"date", date.1.as_bytes());
    });
}
