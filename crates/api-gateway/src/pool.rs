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

use std::cell::{Cell, RefCell};
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::time::Instant;

use axum::body::Body;
use axum::http::uri::Authority;
use axum::http::{Request, Response, StatusCode};
use bytes::Bytes;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
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
    static IDLE: RefCell<Vec<Upstream>> = const { RefCell::new(Vec::new()) };
    /// Whether this thread's pool has a sweeper running (a runtime that
    /// ends takes its sweeper with it; the next request starts another).
    static SWEEPING: Cell<bool> = const { Cell::new(false) };
}

/// An upstream's authority and its idle connections, with when each went idle.
type Upstream = (Box<str>, Vec<(SendRequest<Body>, Instant)>);

/// This thread's pool, by number. On a multi-threaded runtime a request
/// may move between threads; a connection only ever returns to the pool of
/// the thread it left, and is closed otherwise.
fn pool_id() -> u64 {
    crate::local::thread_number()
}

/// Where an upstream's idle connections are: a pool and a slot in it.
#[derive(Debug, Clone, Copy)]
struct Slot {
    pool: u64,
    index: usize,
}

impl Slot {
    /// The slot of `authority` in this thread's pool, made on first use.
    fn of(authority: &Authority) -> Self {
        let index = IDLE.with(|idle| {
            let mut idle = idle.borrow_mut();
            if !SWEEPING.with(Cell::get) {
                spawn_sweeper();
            }
            match idle.iter().position(|(name, _)| **name == *authority.as_str()) {
                Some(index) => index,
                None => {
                    idle.push((authority.as_str().into(), Vec::new()));
                    idle.len() - 1
                }
            }
        });
        Self { pool: pool_id(), index }
    }

    /// `f` on the slot's idle list, if this is the slot's thread.
    fn with<R>(self, f: impl FnOnce(&mut Vec<(SendRequest<Body>, Instant)>) -> R) -> Option<R> {
        if self.pool != pool_id() {
            return None;
        }
        IDLE.with(|idle| idle.borrow_mut().get_mut(self.index).map(|(_, senders)| f(senders)))
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
    let (mut sender, reused) = match checkout(slot).await {
        Some(sender) => (sender, true),
        None => (connect(authority).await?, false),
    };
    let response = match sender.try_send_request(request).await {
        Ok(response) => response,
        Err(mut error) => match error.take_message() {
            // A kept connection closed before taking the request: once more on a new one.
            Some(request) if reused => {
                sender = connect(authority).await?;
                sender.send_request(request).await.map_err(ExchangeError::Http)?
            }
            _ => return Err(ExchangeError::Http(error.into_error())),
        },
    };
    // After a 101 the connection belongs to the tunnel, never to the pool.
    let home = (response.status() != StatusCode::SWITCHING_PROTOCOLS).then_some((slot, sender));
    Ok(response.map(|body| {
        let mut body = Returning { body, home };
        body.return_if_done();
        Body::new(body)
    }))
}

/// An idle connection to `authority` that is ready for a request.
async fn checkout(slot: Slot) -> Option<SendRequest<Body>> {
    loop {
        let (mut sender, _) = slot.with(Vec::pop).flatten()?;
        if sender.is_closed() {
            continue;
        }
        if sender.ready().await.is_ok() {
            return Some(sender);
        }
    }
}

async fn connect(authority: &Authority) -> Result<SendRequest<Body>, ExchangeError> {
    let address = (authority.host().trim_start_matches('[').trim_end_matches(']'), authority.port_u16().unwrap_or(80));
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(address))
        .await
        .map_err(|_| ExchangeError::Connect(std::io::ErrorKind::TimedOut.into()))?
        .map_err(ExchangeError::Connect)?;
    let _ = stream.set_nodelay(true);
    let (sender, connection) = http1::handshake(TokioIo::new(stream)).await.map_err(ExchangeError::Http)?;
    tokio::spawn(async move {
        // An upgraded connection (101) leaves this task for the tunnel.
        if let Err(error) = connection.with_upgrades().await {
            tracing::debug!(%error, "upstream connection ended with an error");
        }
    });
    Ok(sender)
}

fn checkin(slot: Slot, sender: SendRequest<Body>) {
    if sender.is_closed() {
        return;
    }
    slot.with(|senders| {
        if senders.len() < MAX_IDLE {
            senders.push((sender, Instant::now()));
        }
    });
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
                for (_, senders) in idle.borrow_mut().iter_mut() {
                    senders.retain(|(sender, since)| !sender.is_closed() && since.elapsed() < IDLE_TIMEOUT);
                }
            });
        }
    });
}

/// A response body that hands its connection back once read to the end.
struct Returning {
    body: Incoming,
    home: Option<(Slot, SendRequest<Body>)>,
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
