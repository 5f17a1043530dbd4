//! Serving the auth-service on its own (`gatehouse auth-service`) with the
//! limits a public listener needs, as the gateway has them: a client gets
//! `header` to send a request head (from the moment it connects, and to
//! start the next one on a kept-alive connection), a request body that
//! stops arriving for `idle` fails, no write of an answer waits longer than
//! `send`, and connections beyond `max_connections` are answered 503 and
//! closed instead of being queued. HTTP/1.1 only: the gateway speaks it to
//! the auth-service, and a protocol guess would read bytes before any
//! deadline runs.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::time::Sleep;
use tower::ServiceExt as _;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// To send a whole request head, or to start the next one.
    pub header: Duration,
    /// The longest a request body may stop arriving.
    pub idle: Duration,
    /// The longest one write may wait for the client to read.
    pub send: Duration,
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header: Duration::from_secs(10),
            idle: Duration::from_secs(75),
            send: Duration::from_secs(60),
            max_connections: 10_000,
        }
    }
}

/// Serves `app` on `listener` until `shutdown` resolves, then stops
/// accepting, closes idle connections and waits for requests in flight.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let mut builder = http1::Builder::new();
    // hyper runs this from the moment it waits for a head: a silent new
    // connection, a kept-alive one between requests, a head trickling in.
    builder.timer(TokioTimer::new()).header_read_timeout(limits.header.min(limits.idle));
    let builder = Arc::new(builder);
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    // Every connection holds a receiver until it ends: the sender tells when the last one has.
    let stop = watch::Sender::new(false);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    accept_failed(error).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            refuse(stream);
            continue;
        };
        let (builder, app, limits, mut stopped) = (builder.clone(), app.clone(), limits.clone(), stop.subscribe());
        tokio::spawn(async move {
            let _slot = slot;
            let idle = limits.idle;
            let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
                request.extensions_mut().insert(ConnectInfo(peer));
                let request = request.map(|body| Body::new(Stalling { body, idle, timer: None }));
                let app = app.clone();
                async move { Ok::<_, Infallible>(app.oneshot(request).await.unwrap_or_else(|e| match e {})) }
            });
            let io = TokioIo::new(Bounded { stream, send: limits.send, writing: None });
            let mut connection = std::pin::pin!(builder.serve_connection(io, service));
            let ended = tokio::select! {
                biased;
                ended = connection.as_mut() => ended,
                () = async { drop(stopped.wait_for(|stop| *stop).await) } => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(error) = ended {
                tracing::debug!(%error, "connection ended with an error");
            }
        });
    }
    drop(listener);
    stop.send_replace(true);
    stop.closed().await;
    Ok(())
}

/// Answers a connection beyond the limit with a 503 and closes it, reading
/// what the client sent for a moment first so the answer is not lost to a reset.
fn refuse(mut stream: TcpStream) {
    const BODY: &str = r#"{"error":{"code":"too_many_connections","message":"the server is at its connection limit"}}"#;
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         retry-after: 1\r\ncache-control: no-store\r\nconnection: close\r\n\r\n{BODY}",
        BODY.len()
    );
    tokio::spawn(async move {
        let _ = tokio::time::timeout(Duration::from_millis(500), async {
            stream.write_all(answer.as_bytes()).await?;
            stream.shutdown().await?;
            let mut sink = [0u8; 4096];
            while stream.read(&mut sink).await? > 0 {}
            Ok::<_, std::io::Error>(())
        })
        .await;
    });
}

/// Errors of one connection are that connection's; anything else (out of
/// file descriptors, say) gets a pause before the next accept.
async fn accept_failed(error: std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(error.kind(), ConnectionAborted | ConnectionRefused | ConnectionReset) {
        return;
    }
    tracing::error!(%error, "accept failed; retrying shortly");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// A request body that fails once it has stopped arriving for `idle`; the
/// clock runs only while the handler waits for it, never while the
/// service works.
struct Stalling {
    body: Incoming,
    idle: Duration,
    timer: Option<Pin<Box<Sleep>>>,
}

impl hyper::body::Body for Stalling {
    type Data = axum::body::Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.timer = None;
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                let timer = this.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(this.idle)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err("the request body stopped arriving".into()))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// A client connection whose writes fail with `TimedOut` once one has
/// waited for the client to read longer than `send`.
struct Bounded {
    stream: TcpStream,
    send: Duration,
    writing: Option<Pin<Box<Sleep>>>,
}

/// `result` of a poll, or `TimedOut` once `timer` (armed at the first
/// `Pending`) has run out; a ready poll disarms it.
fn bounded<T>(
    result: Poll<std::io::Result<T>>,
    timer: &mut Option<Pin<Box<Sleep>>>,
    limit: Duration,
    cx: &mut Context<'_>,
) -> Poll<std::io::Result<T>> {
    if result.is_ready() {
        *timer = None;
        return result;
    }
    let timer = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
    match timer.as_mut().poll(cx) {
        Poll::Ready(()) => Poll::Ready(Err(std::io::ErrorKind::TimedOut.into())),
        Poll::Pending => Poll::Pending,
    }
}

impl AsyncRead for Bounded {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Bounded {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let result = Pin::new(&mut this.stream).poll_write(cx, buf);
        bounded(result, &mut this.writing, this.send, cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let result = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        bounded(result, &mut this.writing, this.send, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
