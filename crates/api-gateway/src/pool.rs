//! Keep-alive HTTP/1.1 connections to upstreams, one pool per serving thread.
//!
//! Each serving thread runs its own single-threaded runtime, so its pool
//! needs no lock: a connection is opened, driven (by a task on this thread),
//! reused and closed here. A connection goes back to the pool as soon as
//! the response body it carried has been read to the end; one whose body
//! was dropped half-read is closed instead. Before reuse it must report
//! ready, and a request a closed connection never took is retried once on
//! a new one, so an upstream closing idle connections costs no request.
//! Connections idle for 90 s are closed by a sweep on the thread's runtime.
//!
//! A connection is reused only when it is provably clean: nothing may be
//! readable on it when it goes back to the pool nor when it is taken out
//! (a real non-blocking read of the socket, [`quiet`]), and one whose
//! response announced a body that never came (a reply to `HEAD`, a 204 or
//! 304 with a length) is not kept at all. Bytes an upstream sends past the
//! end of a response would otherwise be read as the answer to the next
//! request — another user's.
//!
//! Beside hyper's client connections, each upstream keeps plain TCP streams
//! for the gateway's own HTTP/1.1 exchanges ([`crate::h1`]): a stream is
//! idle between two exchanges and has no task of its own.

use std::cell::{Cell, RefCell};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::time::Instant;

use axum::body::Body;
use axum::http::uri::Authority;
use axum::http::{Method, Request, Response, StatusCode, header};
use bytes::Bytes;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use socket2::SockRef;
use tokio::net::TcpStream;

/// Idle connections kept per upstream and thread; more are closed.
const MAX_IDLE: usize = 256;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection idle this long is closed (by a sweep every `SWEEP_EVERY`).
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
const SWEEP_EVERY: Duration = Duration::from_secs(15);

thread_local! {
    /// Idle connections by upstream. A gateway has few upstreams, so a list
    /// searched by exact text beats hashing; slots are never removed, so a
    /// slot's index names its upstream for the thread's lifetime.
    static IDLE: RefCell<Vec<Idle>> = const { RefCell::new(Vec::new()) };
    /// Whether this thread's pool has a sweeper running (a runtime that
    /// ends takes its sweeper with it; the next request starts another).
    static SWEEPING: Cell<bool> = const { Cell::new(false) };
}

/// An upstream's idle connections, with when each went idle.
struct Idle {
    authority: Box<str>,
    senders: Vec<(Sender, Instant)>,
    streams: Vec<(TcpStream, Instant)>,
}

/// A hyper client connection, with a second handle on its socket to look
/// at it while hyper owns it.
struct Sender {
    send: SendRequest<Body>,
    socket: OwnedFd,
}

/// Whether nothing at all can be read from `socket` now: no byte, no end,
/// no error. A real `recv(MSG_PEEK)` on the (non-blocking) socket, not the
/// runtime's idea of its readiness, which lags behind what has arrived.
pub(crate) fn quiet(socket: &impl AsFd) -> bool {
    let mut byte = [MaybeUninit::<u8>::uninit()];
    matches!(SockRef::from(socket).peek(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

/// This thread's pool, by number. On a multi-threaded runtime a request
/// may move between threads; a connection only ever returns to the pool of
/// the thread it left, and is closed otherwise.
fn pool_id() -> u64 {
    crate::local::thread_number()
}

/// Where an upstream's idle connections are: a pool and a slot in it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Slot {
    pool: u64,
    index: usize,
}

impl Slot {
    /// The slot of `authority` in this thread's pool, made on first use.
    pub(crate) fn of(authority: &Authority) -> Self {
        let index = IDLE.with(|idle| {
            let mut idle = idle.borrow_mut();
            if !SWEEPING.with(Cell::get) {
                spawn_sweeper();
            }
            match idle.iter().position(|i| *i.authority == *authority.as_str()) {
                Some(index) => index,
                None => {
                    idle.push(Idle { authority: authority.as_str().into(), senders: Vec::new(), streams: Vec::new() });
                    idle.len() - 1
                }
            }
        });
        Self { pool: pool_id(), index }
    }

    /// `f` on the slot's idle connections, if this is the slot's thread.
    fn with<R>(self, f: impl FnOnce(&mut Idle) -> R) -> Option<R> {
        if self.pool != pool_id() {
            return None;
        }
        IDLE.with(|idle| idle.borrow_mut().get_mut(self.index).map(f))
    }

    /// The stream that went idle last and is still [`quiet`], if any;
    /// those that are not are closed. It may yet be closed by the upstream
    /// before it takes the request: [`crate::h1`] retries a request such a
    /// stream never answered.
    pub(crate) fn take_stream(self) -> Option<TcpStream> {
        self.with(|idle| {
            while let Some((stream, _)) = idle.streams.pop() {
                if quiet(&stream) {
                    return Some(stream);
                }
            }
            None
        })
        .flatten()
    }

    /// Keeps `stream`, whose response has just been read to its framed end,
    /// for the next exchange, if nothing more is readable on it.
    pub(crate) fn put_stream(self, stream: TcpStream) {
        if quiet(&stream) {
            self.with(|idle| keep(&mut idle.streams, stream));
        }
    }
}

/// Why an exchange failed.
#[derive(Debug)]
pub enum ExchangeError {
    Connect(std::io::Error),
    Http(hyper::Error),
}

impl std::fmt::Display for ExchangeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Connect(e) => write!(f, "connect: {e}"),
            Self::Http(e) => write!(f, "{e}"),
        }
    }
}

/// Sends `request` (origin-form URI, `Host` set) to `authority` over a pooled
/// connection and returns the response with its body streaming.
pub async fn send(authority: &Authority, request: Request<Body>) -> Result<Response<Body>, ExchangeError> {
    let slot = Slot::of(authority);
    let head_only = request.method() == Method::HEAD;
    let (mut sender, reused) = match checkout(slot).await {
        Some(sender) => (sender, true),
        None => (connect(authority).await?, false),
    };
    // A kept connection the upstream closes as the request goes out never
    // answers it. A bodiless GET or HEAD may then go again on a new one,
    // as on the own path; so a copy is kept until an answer comes.
    let again = if reused { copy_if_repeatable(&request) } else { None };
    let response = match sender.send.try_send_request(request).await {
        Ok(response) => response,
        Err(mut error) => match error.take_message().or(again.filter(|_| unanswered(error.error()))) {
            Some(request) if reused => {
                tracing::debug!(error = %error.into_error(), "a kept upstream connection failed; once more on a new one");
                sender = connect(authority).await?;
                sender.send.send_request(request).await.map_err(ExchangeError::Http)?
            }
            _ => return Err(ExchangeError::Http(error.into_error())),
        },
    };
    // After a 101 the connection belongs to the tunnel, never to the pool;
    // after a response that announced a body that never came, nowhere.
    let keep = response.status() != StatusCode::SWITCHING_PROTOCOLS && !announces_unsent_body(head_only, &response);
    let home = keep.then_some((slot, sender));
    Ok(response.map(|body| {
        let mut body = Returning { body, home };
        body.return_if_done();
        Body::new(body)
    }))
}

/// Whether `error` says the connection ended with no answer: closed before
/// a response came, or reset.
fn unanswered(error: &hyper::Error) -> bool {
    use std::error::Error as _;
    let reset = error
        .source()
        .and_then(|e| e.downcast_ref::<std::io::Error>())
        .is_some_and(|e| matches!(e.kind(), std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe));
    error.is_incomplete_message() || error.is_canceled() || reset
}

/// A copy of `request` if it may be sent twice: a `GET` or `HEAD` with no body.
fn copy_if_repeatable(request: &Request<Body>) -> Option<Request<Body>> {
    let method = request.method();
    if (method != Method::GET && method != Method::HEAD) || !hyper::body::Body::is_end_stream(request.body()) {
        return None;
    }
    let mut copy = Request::new(Body::empty());
    *copy.method_mut() = method.clone();
    *copy.uri_mut() = request.uri().clone();
    *copy.version_mut() = request.version();
    *copy.headers_mut() = request.headers().clone();
    Some(copy)
}

/// Whether a response says a body follows where none does: a reply to
/// `HEAD`, a 204 or a 304, with a non-zero `Content-Length` or a
/// `Transfer-Encoding`. An upstream that says so may send one anyway.
fn announces_unsent_body<B>(head_only: bool, response: &Response<B>) -> bool {
    let status = response.status();
    let bodiless = head_only || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
    let headers = response.headers();
    let length = headers.get(header::CONTENT_LENGTH).is_some_and(|v| v.as_bytes() != b"0");
    bodiless && (length || headers.contains_key(header::TRANSFER_ENCODING))
}

/// An idle connection to `authority` that is ready for a request.
async fn checkout(slot: Slot) -> Option<Sender> {
    loop {
        let (mut sender, _) = slot.with(|idle| idle.senders.pop()).flatten()?;
        if sender.send.is_closed() || !quiet(&sender.socket) {
            continue;
        }
        if sender.send.ready().await.is_ok() {
            return Some(sender);
        }
    }
}

/// A new TCP connection to `authority`, within the connect timeout.
pub(crate) async fn open(authority: &Authority) -> std::io::Result<TcpStream> {
    let address = (authority.host().trim_start_matches('[').trim_end_matches(']'), authority.port_u16().unwrap_or(80));
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(address))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

async fn connect(authority: &Authority) -> Result<Sender, ExchangeError> {
    let stream = open(authority).await.map_err(ExchangeError::Connect)?;
    let socket = stream.as_fd().try_clone_to_owned().map_err(ExchangeError::Connect)?;
    let (send, connection) = http1::handshake(TokioIo::new(stream)).await.map_err(ExchangeError::Http)?;
    tokio::spawn(async move {
        // An upgraded connection (101) leaves this task for the tunnel.
        if let Err(error) = connection.with_upgrades().await {
            tracing::debug!(%error, "upstream connection ended with an error");
        }
    });
    Ok(Sender { send, socket })
}

/// Keeps `sender`, whose response body has been read to its end, if it is
/// open and nothing more is readable on it.
fn checkin(slot: Slot, sender: Sender) {
    if sender.send.is_closed() || !quiet(&sender.socket) {
        return;
    }
    slot.with(|idle| keep(&mut idle.senders, sender));
}

/// Keeps `connection` idle from now on, unless `list` is full.
fn keep<C>(list: &mut Vec<(C, Instant)>, connection: C) {
    if list.len() < MAX_IDLE {
        list.push((connection, Instant::now()));
    }
}

/// Closes this thread's connections that have been idle too long (or that
/// the upstream closed), every `SWEEP_EVERY`, on this thread's runtime. On a
/// multi-threaded runtime the sweeper may wake elsewhere; it stops then, and
/// the idle connections of that thread wait for their upstream to close them.
fn spawn_sweeper() {
    if tokio::runtime::Handle::try_current().is_err() {
        return;
    }
    /// Marks the sweeper gone when its task is dropped.
    struct Running;
    impl Drop for Running {
        fn drop(&mut self) {
            SWEEPING.with(|s| s.set(false));
        }
    }
    SWEEPING.with(|s| s.set(true));
    let pool = pool_id();
    let running = Running;
    tokio::spawn(async move {
        let _running = running;
        let mut tick = tokio::time::interval(SWEEP_EVERY);
        loop {
            tick.tick().await;
            if pool_id() != pool {
                return;
            }
            IDLE.with(|idle| {
                for idle in idle.borrow_mut().iter_mut() {
                    idle.senders.retain(|(sender, since)| {
                        !sender.send.is_closed() && quiet(&sender.socket) && since.elapsed() < IDLE_TIMEOUT
                    });
                    // A stream with nothing to read is open; one the upstream
                    // closed reads its end (or an error) at once.
                    idle.streams.retain(|(stream, since)| since.elapsed() < IDLE_TIMEOUT && quiet(stream));
                }
            });
        }
    });
}

/// A response body that hands its connection back once read to the end.
struct Returning {
    body: Incoming,
    home: Option<(Slot, Sender)>,
}

impl Returning {
    fn return_if_done(&mut self) {
        if hyper::body::Body::is_end_stream(&self.body)
            && let Some((slot, sender)) = self.home.take()
        {
            checkin(slot, sender);
        }
    }
}

impl hyper::body::Body for Returning {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let frame = ready!(Pin::new(&mut self.body).poll_frame(cx));
        match &frame {
            None => {
                if let Some((slot, sender)) = self.home.take() {
                    checkin(slot, sender);
                }
            }
            Some(Ok(_)) => self.return_if_done(),
            // A broken body leaves the connection in no state to reuse.
            Some(Err(_)) => self.home = None,
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
