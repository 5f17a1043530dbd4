//! A client connection as hyper serves it, after the own HTTP/1.1 path has
//! handed it over: the bytes already read come first, a head begun before
//! keeps its deadline, writes the client does not take time out, an HTTP/2
//! connection closes when idle; and what an upgraded connection's tunnel
//! holds on to.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};

use crate::h1::Handover;

/// How an HTTP/2 client connection starts (RFC 9113 §3.4).
const HTTP2_PREFACE_START: &[u8] = b"PRI * HTTP/2.0";

/// What a client connection's upgrade tunnel holds on to: the connection's
/// place among those counted against `max_connections`, its part in the
/// wait at shutdown, and how long the tunnel may sit idle.
#[derive(Clone)]
pub(crate) struct TunnelHold {
    pub(crate) _load: Arc<dyn Send + Sync>,
    pub(crate) _stopped: watch::Receiver<bool>,
    pub idle: Duration,
}

/// A client connection handed to hyper: the bytes the gateway's own path
/// read and did not serve come first; a head begun before the hand-over
/// keeps its deadline; a write the client does not take within the send
/// timeout, or an HTTP/2 connection idle for its limit, fails the connection.
pub(crate) struct ClientIo {
    read: Bytes,
    stream: TcpStream,
    send_timeout: Duration,
    /// Since when a write has been waiting for the client, as a deadline.
    stalled: Option<Pin<Box<Sleep>>>,
    /// When the head begun before the hand-over must be whole, and the last
    /// two bytes read of it (to find its end across reads).
    head: Option<(Pin<Box<Sleep>>, [u8; 2])>,
    /// On HTTP/2 connections, which hyper never closes for idleness.
    idle: Option<Idle>,
}

/// How long a connection may carry nothing either way, when it last
/// carried something, and the timer that looks again then.
struct Idle {
    limit: Duration,
    last: Instant,
    timer: Pin<Box<Sleep>>,
}

impl ClientIo {
    /// The connection `stream` as hyper takes it over; `idle` bounds the
    /// time an HTTP/2 connection may carry nothing either way.
    pub(crate) fn new(handover: Handover, stream: TcpStream, send_timeout: Duration, idle: Duration) -> Self {
        let read = handover.read.freeze();
        let head = handover.head_deadline.map(|deadline| {
            let tail = [
                read.len().checked_sub(2).and_then(|i| read.get(i)).copied().unwrap_or(0),
                read.last().copied().unwrap_or(0),
            ];
            (Box::pin(tokio::time::sleep_until(deadline)), tail)
        });
        let idle = read.starts_with(HTTP2_PREFACE_START).then(|| Idle {
            limit: idle,
            last: Instant::now(),
            timer: Box::pin(tokio::time::sleep(idle)),
        });
        Self { read, stream, send_timeout, stalled: None, head, idle }
    }

    /// Notes that bytes moved, for the idle limit.
    fn moved(&mut self) {
        if let Some(idle) = &mut self.idle {
            idle.last = Instant::now();
        }
    }

    /// Whether the connection has carried nothing for its idle limit; if
    /// not, the timer is set to look again when it could have.
    fn idled_out(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(idle) = &mut self.idle else {
            return false;
        };
        while idle.timer.as_mut().poll(cx).is_ready() {
            let due = idle.last + idle.limit;
            if Instant::now() >= due {
                return true;
            }
            idle.timer.as_mut().reset(due);
        }
        false
    }

    /// Follows the unfinished head through `bytes` just read: once its end
    /// (an empty line) has gone by, its deadline no longer applies.
    fn follow_head(&mut self, bytes: &[u8]) {
        let Some((_, tail)) = &mut self.head else {
            return;
        };
        let mut window = tail.to_vec();
        window.extend_from_slice(bytes);
        if window.windows(2).any(|w| w == b"\n\n") || window.windows(3).any(|w| w == b"\n\r\n") {
            self.head = None;
        } else if let [.., a, b] = window[..] {
            *tail = [a, b];
        }
    }

    /// `poll` (a write), failed with `TimedOut` once writes have waited
    /// for the client longer than the send timeout.
    fn within_send_timeout<T>(
        &mut self,
        cx: &mut Context<'_>,
        poll: impl FnOnce(Pin<&mut TcpStream>, &mut Context<'_>) -> Poll<std::io::Result<T>>,
    ) -> Poll<std::io::Result<T>> {
        let polled = poll(Pin::new(&mut self.stream), cx);
        if polled.is_ready() {
            self.stalled = None;
            self.moved();
            return polled;
        }
        let timeout = self.send_timeout;
        let stalled = self.stalled.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match stalled.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(std::io::ErrorKind::TimedOut.into())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncRead for ClientIo {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.read.is_empty() {
            if let Some((deadline, _)) = &mut this.head
                && deadline.as_mut().poll(cx).is_ready()
            {
                // The head's time ran out on the own path's clock.
                return Poll::Ready(Err(std::io::ErrorKind::TimedOut.into()));
            }
            let before = buf.filled().len();
            let polled = Pin::new(&mut this.stream).poll_read(cx, buf);
            if polled.is_pending() {
                return if this.idled_out(cx) { Poll::Ready(Err(std::io::ErrorKind::TimedOut.into())) } else { polled };
            }
            this.moved();
            if this.head.is_some() {
                let read = buf.filled()[before..].to_vec();
                this.follow_head(&read);
            }
            return polled;
        }
        let n = this.read.len().min(buf.remaining());
        buf.put_slice(&this.read[..n]);
        this.read.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for ClientIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.get_mut().within_send_timeout(cx, |stream, cx| stream.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.get_mut().within_send_timeout(cx, |stream, cx| stream.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.get_mut().within_send_timeout(cx, |stream, cx| stream.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.get_mut().within_send_timeout(cx, |stream, cx| stream.poll_shutdown(cx))
    }
}
