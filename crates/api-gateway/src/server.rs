//! Serving the gateway. Each connection starts on the gateway's own
//! HTTP/1.1 path (`h1`), which serves the plain `GET`s and `HEAD`s
//! that make most traffic; at the first request it leaves to hyper, the
//! connection goes to hyper's connection handling, with the bytes already
//! read, straight into [`Gateway::handle`] — no router in between: the
//! gateway does its own routing, and every layer is paid on every request.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

use crate::client::{ClientIo, TunnelHold};
use crate::error::GatewayError;
use crate::identity::Peer;
use crate::{Gateway, h1};

/// Serves `gateway` on `listener` (HTTP/1.1 and HTTP/2, upgrades) until
/// `shutdown` resolves, then stops accepting and lets requests in flight
/// finish; idle keep-alive connections are closed at once.
pub async fn serve(
    listener: TcpListener,
    gateway: Gateway,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (acceptor, _) = workers(1);
    serve_accepting(listener, acceptor, gateway, shutdown).await
}

/// `threads` serving threads that share one listener: an [`Acceptor`] for
/// the thread that accepts (and serves too), and an [`Inbox`] for each other.
/// Each new connection goes to whichever thread has the fewest open —
/// unlike SO_REUSEPORT's hashing, which can leave one thread with half
/// again the connections of another, and the machine idle while it catches up.
pub fn workers(threads: usize) -> (Acceptor, Vec<Inbox>) {
    let open: Arc<[AtomicUsize]> = (0..threads.max(1)).map(|_| AtomicUsize::new(0)).collect();
    let (senders, inboxes) = (1..threads.max(1))
        .map(|_| {
            let (sender, receiver) = mpsc::unbounded_channel();
            (sender, Inbox { receiver })
        })
        .unzip();
    (Acceptor { senders, open }, inboxes)
}

/// The accepting thread's side of [`workers`].
pub struct Acceptor {
    senders: Vec<mpsc::UnboundedSender<Handed>>,
    open: Arc<[AtomicUsize]>,
}

impl Acceptor {
    /// Client connections open on all threads.
    fn open(&self) -> usize {
        self.open.iter().map(|n| n.load(Ordering::Relaxed)).sum()
    }

    /// The thread with the fewest open connections (0 is the acceptor's own),
    /// counted from now on.
    fn pick(&self) -> Load {
        let counts = self.open.iter().map(|n| n.load(Ordering::Relaxed));
        let index = counts.enumerate().min_by_key(|(_, n)| *n).map_or(0, |(i, _)| i);
        self.count(index)
    }

    fn count(&self, index: usize) -> Load {
        self.open[index].fetch_add(1, Ordering::Relaxed);
        Load { open: self.open.clone(), index }
    }
}

/// Another serving thread's side of [`workers`]: the connections handed to it.
pub struct Inbox {
    receiver: mpsc::UnboundedReceiver<Handed>,
}

/// A connection on its way from the accepting thread to another.
type Handed = (std::net::TcpStream, SocketAddr, Load);

/// One open connection on a serving thread, uncounted when dropped.
struct Load {
    open: Arc<[AtomicUsize]>,
    index: usize,
}

impl Drop for Load {
    fn drop(&mut self) {
        self.open[self.index].fetch_sub(1, Ordering::Relaxed);
    }
}

/// Accepts on `listener` and serves, here or on the thread `acceptor`
/// picks, until `shutdown` resolves (see [`serve`]).
pub async fn serve_accepting(
    listener: TcpListener,
    acceptor: Acceptor,
    gateway: Gateway,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let connections = Connections::new(gateway);
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
        if acceptor.open() >= connections.gateway.client_limits().max_connections {
            refuse_connection(stream, &connections.gateway);
            continue;
        }
        let load = acceptor.pick();
        if load.index == 0 {
            connections.start(stream, peer, load);
            continue;
        }
        match stream.into_std().map(|stream| acceptor.senders[load.index - 1].send((stream, peer, load))) {
            Ok(Ok(())) => {}
            // That thread has stopped; serve here.
            Ok(Err(mpsc::error::SendError(handed))) => connections.start_handed(handed),
            Err(error) => tracing::debug!(%error, "connection lost on its way to a serving thread"),
        }
    }
    // Connections the kernel has already taken in are served here, as the
    // other threads stop: their requests may be on the way. Asked of the
    // kernel itself: the runtime's readiness may not have seen them yet,
    // and closing the listener would reset them.
    let listener = listener.into_std()?;
    loop {
        match listener.accept() {
            Ok((stream, peer)) => {
                let load = acceptor.count(0);
                let registered = stream.set_nonblocking(true).and_then(|()| TcpStream::from_std(stream));
                match registered {
                    Ok(stream) => connections.start(stream, peer, load),
                    Err(error) => tracing::debug!(%error, "a connection accepted at shutdown was lost"),
                }
            }
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    drop(listener);
    connections.finish().await;
    Ok(())
}

/// Serves the connections handed to this thread until `shutdown` resolves
/// (see [`serve`]).
pub async fn serve_inbox(
    mut inbox: Inbox,
    gateway: Gateway,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let connections = Connections::new(gateway);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            handed = inbox.receiver.recv() => match handed {
                Some(handed) => connections.start_handed(handed),
                // The acceptor has stopped: no more connections will come.
                None => {
                    shutdown.as_mut().await;
                    break;
                }
            },
            () = &mut shutdown => break,
        }
    }
    // Connections already handed over are served: their requests may be on the way.
    inbox.receiver.close();
    while let Ok(handed) = inbox.receiver.try_recv() {
        connections.start_handed(handed);
    }
    connections.finish().await;
    Ok(())
}

/// Answers a connection beyond `gateway.max_connections` with a 503 and
/// closes it, reading (and dropping) what the client sent for a moment
/// first, so that closing does not reset the connection before the client
/// has read the answer.
fn refuse_connection(stream: TcpStream, gateway: &Gateway) {
    let body = GatewayError::TooManyConnections.body();
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         retry-after: 1\r\ncache-control: no-store\r\nx-request-id: {}\r\nconnection: close\r\n\r\n{body}",
        body.len(),
        crate::identity::request_id(None).to_str().unwrap_or("-"),
    );
    // Once a second at most: a flood of connections is no flood of log lines.
    static LOGGED: AtomicU64 = AtomicU64::new(0);
    let second = u64::try_from(gateway.now()).unwrap_or(0);
    if LOGGED.swap(second, Ordering::Relaxed) != second {
        tracing::warn!("refusing connections: gateway.max_connections reached");
    }
    tokio::spawn(async move {
        let mut stream = stream;
        let _ = tokio::time::timeout(REFUSAL_LINGER, async {
            stream.write_all(answer.as_bytes()).await?;
            stream.shutdown().await?;
            let mut sink = [0u8; 4096];
            while stream.read(&mut sink).await? > 0 {}
            Ok::<_, std::io::Error>(())
        })
        .await;
    });
}

/// How long a refused connection is read from before it is closed.
const REFUSAL_LINGER: Duration = Duration::from_millis(500);

/// The connections one serving thread serves.
struct Connections {
    gateway: Gateway,
    builder: Arc<auto::Builder<TokioExecutor>>,
    /// Turns true at shutdown. Every connection holds a receiver until it
    /// ends, so the sender also tells when the last one has.
    stop: watch::Sender<bool>,
}

impl Connections {
    fn new(gateway: Gateway) -> Self {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        // hyper's head timeout runs from the moment it waits for a request,
        // idle or half sent: it bounds both.
        let limits = gateway.client_limits();
        builder.http1().timer(TokioTimer::new()).header_read_timeout(limits.idle.min(limits.head));
        let builder = Arc::new(builder);
        Self { gateway, builder, stop: watch::Sender::new(false) }
    }

    /// Serves a connection another thread accepted, once this runtime has taken it on.
    fn start_handed(&self, (stream, peer, load): Handed) {
        match TcpStream::from_std(stream) {
            Ok(stream) => self.start(stream, peer, load),
            Err(error) => tracing::debug!(%error, "a handed connection could not be registered"),
        }
    }

    /// Serves `stream` on this thread: the gateway's own path first, then hyper.
    fn start(&self, stream: TcpStream, peer: SocketAddr, load: Load) {
        // Responses are written whole; waiting for more to send only adds latency.
        let _ = stream.set_nodelay(true);
        let gateway = self.gateway.clone();
        let peer = Peer::new(peer.ip());
        let builder = self.builder.clone();
        let mut stopped = self.stop.subscribe();
        tokio::spawn(async move {
            let load = Arc::new(load);
            let mut stream = stream;
            let Some(handover) = h1::serve(&gateway, &mut stream, &peer, &mut stopped).await else {
                return;
            };
            let limits = gateway.client_limits().clone();
            let hold = TunnelHold { _load: load.clone(), _stopped: stopped.clone(), idle: limits.idle };
            let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
                // An upgraded connection outlives this task: its tunnel keeps
                // the connection counted, and shutdown waiting, until it ends.
                if request.headers().contains_key(axum::http::header::UPGRADE) {
                    request.extensions_mut().insert(hold.clone());
                }
                let gateway = gateway.clone();
                let peer = peer.clone();
                async move { Ok::<_, Infallible>(gateway.handle(request.map(Body::new), Some(peer)).await) }
            });
            let io = TokioIo::new(ClientIo::new(handover, stream, limits.send, limits.idle));
            let mut connection = std::pin::pin!(builder.serve_connection_with_upgrades(io, service));
            // The connection is polled first, so a request already read is
            // under way before a shutdown asks hyper to close when idle.
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

    /// Closes idle connections and waits for requests in flight, for at
    /// most the shutdown grace; connections left then are dropped with the
    /// runtime that serves them.
    async fn finish(self) {
        self.stop.send_replace(true);
        let grace = self.gateway.client_limits().shutdown_grace;
        if tokio::time::timeout(grace, self.stop.closed()).await.is_err() {
            tracing::warn!(
                connections = self.stop.receiver_count(),
                "shutdown grace is over; closing the connections left"
            );
        }
    }
}

/// Errors of one connection are that connection's; anything else (out of file
/// descriptors, say) gets a pause before the next accept instead of a busy loop.
async fn accept_failed(error: std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(error.kind(), ConnectionAborted | ConnectionRefused | ConnectionReset) {
        return;
    }
    tracing::error!(%error, "accept failed; retrying in a second");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_connection_goes_to_the_thread_with_the_fewest_open() {
        let (acceptor, inboxes) = workers(3);
        assert_eq!(inboxes.len(), 2);
        let mut open: Vec<Load> = (0..6).map(|_| acceptor.pick()).collect();
        let per_thread = |open: &[Load], i| open.iter().filter(|l| l.index == i).count();
        assert_eq!([0, 1, 2].map(|i| per_thread(&open, i)), [2, 2, 2]);
        // Thread 1's connections close: the next two go there.
        open.retain(|l| l.index != 1);
        let next = [acceptor.pick(), acceptor.pick()];
        assert!(next.iter().all(|l| l.index == 1));
        drop(next);
        assert_eq!(acceptor.open.iter().map(|n| n.load(Ordering::Relaxed)).collect::<Vec<_>>(), [2, 0, 2]);
    }
}
