//! Forwarding: pooled keep-alive connections (HTTP/1.1, or HTTP/2 prior
//! knowledge per route), bodies streamed both ways, WebSocket upgrades
//! tunnelled, per-route timeouts on the response headers.

use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderValue, Request, Response, StatusCode, Uri, Version, header};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tower::ServiceExt as _;

use crate::error::GatewayError;
use crate::identity::strip_hop_by_hop;
use crate::routes::{Route, Upstream};

#[derive(Clone)]
pub struct Forwarder {
    http1: Client<HttpConnector, Body>,
    http2: Client<HttpConnector, Body>,
}

impl Default for Forwarder {
    fn default() -> Self {
        Self::new()
    }
}

fn connector() -> HttpConnector {
    let mut c = HttpConnector::new();
    c.set_nodelay(true);
    c.set_connect_timeout(Some(Duration::from_secs(5)));
    c
}

impl Forwarder {
    pub fn new() -> Self {
        let mut builder = Client::builder(TokioExecutor::new());
        builder.pool_idle_timeout(Duration::from_secs(90)).pool_max_idle_per_host(256);
        let http1 = builder.build(connector());
        let http2 = builder.http2_only(true).build(connector());
        Self { http1, http2 }
    }

    /// Sends `request` (headers already prepared) to the route's upstream.
    pub async fn send(
        &self,
        route: &Route,
        mut request: Request<Body>,
        path_and_query: &str,
    ) -> Result<Response<Body>, GatewayError> {
        match &route.upstream {
            Upstream::Local(router) => {
                *request.uri_mut() = path_and_query.parse().map_err(|_| GatewayError::UpstreamUnavailable)?;
                let call = router.clone().oneshot(request);
                match tokio::time::timeout(route.timeout, call).await {
                    Ok(Ok(response)) => Ok(response),
                    Ok(Err(never)) => match never {},
                    Err(_) => Err(GatewayError::UpstreamTimeout),
                }
            }
            Upstream::Http { scheme, authority, base_path, http2 } => {
                let uri = Uri::builder()
                    .scheme(scheme.clone())
                    .authority(authority.clone())
                    .path_and_query(format!("{base_path}{path_and_query}"))
                    .build()
                    .map_err(|_| GatewayError::UpstreamUnavailable)?;
                *request.uri_mut() = uri;
                *request.version_mut() = if *http2 { Version::HTTP_2 } else { Version::HTTP_11 };
                request.headers_mut().remove(header::HOST);
                let client = if *http2 { &self.http2 } else { &self.http1 };
                self.exchange(client, route.timeout, request).await
            }
        }
    }

    async fn exchange(
        &self,
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
        let mut response = match tokio::time::timeout(timeout, client.request(request)).await {
            Err(_) => return Err(GatewayError::UpstreamTimeout),
            Ok(Err(error)) => {
                tracing::warn!(%error, "upstream request failed");
                return Err(GatewayError::UpstreamUnavailable);
            }
            Ok(Ok(response)) => response,
        };
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
            return Ok(response.map(Body::new));
        }
        strip_hop_by_hop(response.headers_mut());
        Ok(response.map(Body::new))
    }
}

fn wants_upgrade(request: &Request<Body>) -> bool {
    request.headers().contains_key(header::UPGRADE)
        && request
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade")))
}
