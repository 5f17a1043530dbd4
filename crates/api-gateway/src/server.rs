//! Serving the gateway: hyper's connection handling straight into
//! [`Gateway::handle`], without a router in between — the gateway does its
//! own routing, and every layer on this path is paid on every request.

use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use axum::body::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use crate::Gateway;
use crate::identity::Peer;

/// Serves `gateway` on `listener` (HTTP/1.1 and HTTP/2, upgrades) until
/// `shutdown` resolves, then stops accepting and lets requests in flight
/// finish; idle keep-alive connections are closed at once.
pub async fn serve(
    listener: TcpListener,
    gateway: Gateway,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let builder = auto::Builder::new(TokioExecutor::new());
    let graceful = GracefulShutdown::new();
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
        // Responses are written whole; waiting for more to send only adds latency.
        let _ = stream.set_nodelay(true);
        let gateway = gateway.clone();
        let peer = Peer::new(peer.ip());
        let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            let gateway = gateway.clone();
            let peer = peer.clone();
            async move { Ok::<_, Infallible>(gateway.handle(request.map(Body::new), Some(peer)).await) }
        });
        let connection =
            graceful.watch(builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned());
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
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
