//! Forwarding: pooled keep-alive connections (HTTP/1.1 through the
//! gateway's own per-thread pool, HTTP/2 prior knowledge per route), bodies
//! streamed both ways, WebSocket upgrades tunnelled, per-route timeouts on
//! the response headers.

use std::future::Future;
use std::time::Duration;

use axum::body::Body;
use axum::http::uri::{self, PathAndQuery};
use axum::http::{HeaderValue, Request, Response, StatusCode, Uri, Version, header};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tower::ServiceExt as _;

use crate::error::GatewayError;
use crate::identity::{connection_tokens, strip_hop_by_hop};
use crate::pool;
use crate::routes::{Route, Upstream};

/// HTTP/2 upstreams and upgrades (WebSocket) go through hyper's pooled
/// client; plain HTTP/1.1 through [`crate::pool`]. One client per thread: a
/// pooled connection is driven by a task on the thread that opened it, so a
/// request on a single-threaded worker runtime never waits on another thread.
#[derive(Clone)]
struct Clients {
    http1: Client<HttpConnector, Body>,
    http2: Client<HttpConnector, Body>,
}

thread_local! {
    static CLIENTS: Clients = Clients::new();
}

fn connector() -> HttpConnector {
    let mut c = HttpConnector::new();
    c.set_nodelay(true);
    c.set_connect_timeout(Some(Duration::from_secs(5)));
    c
}

impl Clients {
    fn new() -> Self {
        let mut builder = Client::builder(TokioExecutor::new());
        builder.pool_idle_timeout(Duration::from_secs(90)).pool_max_idle_per_host(256);
        let http1 = builder.build(connector());
        let http2 = builder.http2_only(true).build(connector());
        Self { http1, http2 }
    }
}

/// Sends `request` (headers already prepared) to the route's upstream, at
/// `target` (path and query), within the route's timeout.
pub async fn send(
    route: &Route,
    mut request: Request<Body>,
    target: PathAndQuery,
) -> Result<Response<Body>, GatewayError> {
    match &route.upstream {
        Upstream::Local(router) => {
            *request.uri_mut() = Uri::from(target);
            let call = router.clone().oneshot(request);
            match tokio::time::timeout(route.timeout, call).await {
                Ok(Ok(response)) => Ok(response),
                Ok(Err(never)) => match never {},
                Err(_) => Err(GatewayError::UpstreamTimeout),
            }
        }
        Upstream::Http { authority, host, http2: false, .. } if !wants_upgrade(&request) => {
            *request.uri_mut() = Uri::from(target);
            *request.version_mut() = Version::HTTP_11;
            strip_hop_by_hop(request.headers_mut());
            request.headers_mut().insert(header::HOST, host.clone());
            let mut response = within(route.timeout, pool::send(authority, request)).await?;
            strip_hop_by_hop(response.headers_mut());
            Ok(response)
        }
        Upstream::Http { scheme, authority, http2, .. } => {
            let mut uri = uri::Parts::default();
            uri.scheme = Some(scheme.clone());
            uri.authority = Some(authority.clone());
            uri.path_and_query = Some(target);
            *request.uri_mut() = Uri::from_parts(uri).map_err(|_| GatewayError::UpstreamUnavailable)?;
            *request.version_mut() = if *http2 { Version::HTTP_2 } else { Version::HTTP_11 };
            request.headers_mut().remove(header::HOST);
            let client = CLIENTS.with(|c| if *http2 { c.http2.clone() } else { c.http1.clone() });
            exchange(&client, route.timeout, request).await
        }
    }
}

/// The upstream's answer within `timeout`: 504 after it, 502 when it fails.
async fn within<B, E: std::fmt::Display>(
    timeout: Duration,
    exchange: impl Future<Output = Result<Response<B>, E>>,
) -> Result<Response<Body>, GatewayError>
where
    B: hyper::body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    match tokio::time::timeout(timeout, exchange).await {
        Err(_) => Err(GatewayError::UpstreamTimeout),
        Ok(Err(error)) => {
            tracing::warn!(%error, "upstream request failed");
            Err(GatewayError::UpstreamUnavailable)
        }
        Ok(Ok(response)) => Ok(response.map(Body::new)),
    }
}

async fn exchange(
    client: &Client<HttpConnector, Body>,
    timeout: Duration,
    mut request: Request<Body>,
) -> Result<Response<Body>, GatewayError> {
    let upgrade = wants_upgrade(&request).then(|| request.headers().get(header::UPGRADE).cloned()).flatten();
    let downstream = upgrade.is_some().then(|| hyper::upgrade::on(&mut request));
    strip_hop_by_hop(request.headers_mut());
    if let Some(protocol) = &upgrade {
        request.headers_mut().insert(header::UPGRADE, protocol.clone());
        request.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    let mut response = within(timeout, client.request(request)).await?;
    if response.status() == StatusCode::SWITCHING_PROTOCOLS
        && let Some(downstream) = downstream
    {
        let upstream = hyper::upgrade::on(&mut response);
        tokio::spawn(async move {
            match tokio::try_join!(downstream, upstream) {
                Ok((down, up)) => {
                    let (mut down, mut up) = (TokioIo::new(down), TokioIo::new(up));
                    let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                }
                Err(error) => tracing::debug!(%error, "upgrade failed"),
            }
        });
        return Ok(response);
    }
    strip_hop_by_hop(response.headers_mut());
    Ok(response)
}

fn wants_upgrade(request: &Request<Body>) -> bool {
    request.headers().contains_key(header::UPGRADE)
        && connection_tokens(request.headers()).any(|t| t.eq_ignore_ascii_case("upgrade"))
}
