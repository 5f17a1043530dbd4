//! Forwarding: pooled keep-alive connections (HTTP/1.1 through the
//! gateway's own per-thread pool, HTTP/2 prior knowledge per route), bodies
//! streamed both ways, WebSocket upgrades tunnelled, per-route timeouts on
//! the response headers.

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::body::Body;
use axum::http::uri::{self, PathAndQuery};
use axum::http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, Version, header};
use hyper::upgrade::OnUpgrade;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tower::ServiceExt as _;

use crate::client::TunnelHold;
use crate::error::GatewayError;
use crate::identity::{self, connection_tokens, strip_hop_by_hop};
use crate::pool;
use crate::routes::{Route, Upstream};

thread_local! {
    /// HTTP/2 upstreams go through hyper's pooled client, HTTP/1.1 (upgrades
    /// included) through [`crate::pool`]. One client per thread: a pooled
    /// connection is driven by a task on the thread that opened it, so a
    /// request on a single-threaded worker runtime never waits on another.
    static HTTP2: Client<HttpConnector, Body> = {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(256)
            .http2_only(true)
            .build(connector)
    };
}

/// Sends `request` (headers already prepared) to the route's upstream, at
/// `target` (path and query), within the route's timeout. `upgrade` is the
/// client's WebSocket handshake ([`websocket_handshake`]). A body over the
/// route's `max_body_bytes` is refused (413), and an exchange that failed
/// because the client's body did (malformed, cut short, too long) is the
/// client's error, not the upstream's.
pub async fn send(
    route: &Route,
    request: Request<Body>,
    target: PathAndQuery,
    upgrade: Option<Handshake>,
) -> Result<Response<Body>, GatewayError> {
    use hyper::body::Body as _;
    if route.max_body_bytes.is_some_and(|limit| request.body().size_hint().lower() > limit) {
        linger(request.into_body());
        return Err(GatewayError::BodyTooLarge);
    }
    if request.body().is_end_stream() {
        return exchange(route, request, target, upgrade).await;
    }
    let fault = Arc::new(OnceLock::new());
    let (limit, watching) = (route.max_body_bytes, fault.clone());
    let request = request.map(|body| Body::new(WatchedBody { body, fault: watching, limit, seen: 0 }));
    let exchanged = exchange(route, request, target, upgrade).await;
    match (exchanged, fault.get()) {
        (Err(GatewayError::UpstreamUnavailable | GatewayError::UpstreamTimeout), Some(BodyFault::TooLarge)) => {
            Err(GatewayError::BodyTooLarge)
        }
        (Err(GatewayError::UpstreamUnavailable | GatewayError::UpstreamTimeout), Some(BodyFault::Broken)) => {
            Err(GatewayError::InvalidBody)
        }
        (exchanged, _) => exchanged,
    }
}

/// What went wrong with a client's body on its way upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyFault {
    /// Malformed (a bad chunk) or cut short.
    Broken,
    /// Longer than the route takes.
    TooLarge,
}

/// A client's request body, passed on as it comes and counted against
/// `limit`; its first fault is noted in `fault`.
struct WatchedBody {
    body: Body,
    fault: Arc<OnceLock<BodyFault>>,
    limit: Option<u64>,
    seen: u64,
}

impl hyper::body::Body for WatchedBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        use std::task::Poll;
        let this = &mut *self;
        match std::pin::Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.seen += frame.data_ref().map_or(0, |d| d.len() as u64);
                if this.limit.is_some_and(|limit| this.seen > limit) {
                    let _ = this.fault.set(BodyFault::TooLarge);
                    linger(std::mem::replace(&mut this.body, Body::empty()));
                    return Poll::Ready(Some(Err(axum::Error::new("the request body is over the route's limit"))));
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => {
                let _ = this.fault.set(BodyFault::Broken);
                Poll::Ready(Some(Err(error)))
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        hyper::body::Body::is_end_stream(&self.body)
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::Body::size_hint(&self.body)
    }
}

/// How long, and how much of, a refused body is still read after the
/// refusal, as nginx's lingering close: a client that is still sending
/// when the 413 comes would otherwise meet a reset and never read it.
const LINGER: Duration = Duration::from_secs(5);
const LINGER_BYTES: u64 = 64 * 1024 * 1024;

/// Reads and drops the rest of a refused body in the background, bounded
/// by [`LINGER`] and [`LINGER_BYTES`].
fn linger(body: Body) {
    use http_body_util::BodyExt as _;
    tokio::spawn(async move {
        let mut body = body;
        let _ = tokio::time::timeout(LINGER, async {
            let mut read = 0u64;
            while let Some(Ok(frame)) = body.frame().await {
                read += frame.data_ref().map_or(0, |d| d.len() as u64);
                if read > LINGER_BYTES {
                    break;
                }
            }
        })
        .await;
    });
}

/// [`send`] itself.
async fn exchange(
    route: &Route,
    mut request: Request<Body>,
    target: PathAndQuery,
    upgrade: Option<Handshake>,
) -> Result<Response<Body>, GatewayError> {
    let mut response = match &route.upstream {
        Upstream::Local(router) => {
            *request.uri_mut() = Uri::from(target);
            let call = router.clone().oneshot(request);
            match tokio::time::timeout(route.timeout, call).await {
                Ok(Ok(response)) => response,
                Ok(Err(never)) => match never {},
                Err(_) => return Err(GatewayError::UpstreamTimeout),
            }
        }
        Upstream::Http { authority, host, http2: false, .. } => {
            *request.uri_mut() = Uri::from(target);
            *request.version_mut() = Version::HTTP_11;
            let tunnel = ask_upgrade(&mut request, upgrade);
            request.headers_mut().insert(header::HOST, host.clone());
            let response = within(route.timeout, pool::send(authority, request)).await?;
            answer(response, tunnel)?
        }
        Upstream::Http { scheme, authority, http2: true, .. } => {
            let mut uri = uri::Parts::default();
            uri.scheme = Some(scheme.clone());
            uri.authority = Some(authority.clone());
            uri.path_and_query = Some(target);
            *request.uri_mut() = Uri::from_parts(uri).map_err(|_| GatewayError::UpstreamUnavailable)?;
            *request.version_mut() = Version::HTTP_2;
            request.headers_mut().remove(header::HOST);
            let tunnel = ask_upgrade(&mut request, upgrade);
            let client = HTTP2.with(Client::clone);
            let response = within(route.timeout, client.request(request)).await?;
            answer(response, tunnel)?
        }
    };
    if !route.forward_credentials {
        identity::strip_session_headers(response.headers_mut());
    }
    Ok(response)
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

/// A client's upgrade on its way upstream: its handshake, the client's side
/// of the connection, and what the connection held.
struct Tunnel {
    handshake: Handshake,
    downstream: OnUpgrade,
    hold: Option<TunnelHold>,
}

/// An upgrade request asks for its protocol upstream too (its hop-by-hop
/// headers are gone by now); its client side is kept, to be joined to the
/// upstream's if the answer is a 101 to that protocol.
fn ask_upgrade(request: &mut Request<Body>, upgrade: Option<Handshake>) -> Option<Tunnel> {
    let handshake = upgrade?;
    let downstream = hyper::upgrade::on(&mut *request);
    let hold = request.extensions_mut().remove::<TunnelHold>();
    request.headers_mut().insert(header::UPGRADE, handshake.protocol.clone());
    request.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    Some(Tunnel { handshake, downstream, hold })
}

/// The response for the client. A 101 that completes the client's WebSocket
/// handshake (the protocol asked, and the `Sec-WebSocket-Accept` for its
/// key: a WebSocket server, not one that would go on reading HTTP) joins
/// both sides into a tunnel; any other 101 is the upstream's fault, as is
/// a malformed or conflicting `Content-Length` (hyper checks it only where
/// a body follows). Otherwise hop-by-hop headers go and the length is made one.
fn answer(mut response: Response<Body>, tunnel: Option<Tunnel>) -> Result<Response<Body>, GatewayError> {
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        let headers = response.headers();
        let completes = |t: &Tunnel| {
            let switched = headers.get(header::UPGRADE).map(HeaderValue::as_bytes);
            let accept = headers.get(header::SEC_WEBSOCKET_ACCEPT).map(HeaderValue::as_bytes);
            switched.is_some_and(|s| s.eq_ignore_ascii_case(t.handshake.protocol.as_bytes()))
                && accept == Some(t.handshake.accept.as_slice())
        };
        let Some(tunnel) = tunnel.filter(completes) else {
            tracing::warn!("upstream switched protocols where no such upgrade was asked");
            return Err(GatewayError::UpstreamUnavailable);
        };
        let upstream = hyper::upgrade::on(&mut response);
        tokio::spawn(async move {
            match tokio::try_join!(tunnel.downstream, upstream) {
                Ok((down, up)) => {
                    let idle = tunnel.hold.as_ref().map_or(TUNNEL_IDLE, |hold| hold.idle);
                    relay_tunnel(TokioIo::new(down), TokioIo::new(up), idle).await;
                }
                Err(error) => tracing::debug!(%error, "upgrade failed"),
            }
            // The client connection is counted, and waited for at shutdown, until here.
            drop(tunnel.hold);
        });
        return Ok(response);
    }
    let lines = response.headers().get_all(header::CONTENT_LENGTH).into_iter().map(HeaderValue::as_bytes);
    let length = content_length(lines).map_err(|()| {
        tracing::warn!("upstream sent a malformed or conflicting Content-Length");
        GatewayError::UpstreamUnavailable
    })?;
    // hyper has decoded the upstream's framing and frames the body anew; a
    // length beside a transfer coding is overridden by it (RFC 9112 §6.3)
    // and not relayed; several equal lengths become one.
    let headers = response.headers_mut();
    if headers.contains_key(header::TRANSFER_ENCODING) {
        headers.remove(header::CONTENT_LENGTH);
    } else if let Some(length) = length {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    }
    strip_hop_by_hop(response.headers_mut());
    Ok(response)
}

/// How long a tunnel may carry nothing either way when the connection it
/// came from said nothing (it always does when served by [`crate::serve`]).
const TUNNEL_IDLE: Duration = Duration::from_secs(75);

/// Copies bytes both ways between `down` and `up` until either ends, or
/// nothing has moved either way for `idle` (a write the other side does not
/// take counts as nothing moving).
async fn relay_tunnel(
    mut down: impl AsyncRead + AsyncWrite + Unpin,
    mut up: impl AsyncRead + AsyncWrite + Unpin,
    idle: Duration,
) {
    let (mut from_down, mut from_up) = (vec![0u8; 16 * 1024], vec![0u8; 16 * 1024]);
    loop {
        let moved = tokio::time::timeout(idle, async {
            tokio::select! {
                read = down.read(&mut from_down) => match read {
                    Ok(n) if n > 0 => up.write_all(&from_down[..n]).await.is_ok(),
                    _ => false,
                },
                read = up.read(&mut from_up) => match read {
                    Ok(n) if n > 0 => down.write_all(&from_up[..n]).await.is_ok(),
                    _ => false,
                },
            }
        })
        .await;
        if moved != Ok(true) {
            break;
        }
    }
    let _ = tokio::join!(down.shutdown(), up.shutdown());
}

/// The one length the `Content-Length` lines give (`5`, `5, 5`, two lines
/// of `5`), `None` without one; `Err` when they are not all the same plain
/// number. Both request paths judge an upstream's lengths by this.
pub(crate) fn content_length<'a>(lines: impl Iterator<Item = &'a [u8]>) -> Result<Option<u64>, ()> {
    let mut length: Option<&[u8]> = None;
    for value in lines.flat_map(|line| line.split(|b| *b == b',')).map(<[u8]>::trim_ascii) {
        if value.is_empty() || !value.iter().all(u8::is_ascii_digit) || length.is_some_and(|l| l != value) {
            return Err(());
        }
        length = Some(value);
    }
    length.map(|l| std::str::from_utf8(l).ok().and_then(|l| l.parse().ok()).ok_or(())).transpose()
}

/// A WebSocket handshake (RFC 6455 §4.1): a `GET` with `Connection:
/// upgrade`, `Upgrade: websocket`, `Sec-WebSocket-Version: 13` and a key of
/// 16 bytes in base64. The only upgrade the gateway tunnels: others (`h2c`
/// above all, whose upstream would go on serving requests inside the tunnel,
/// unchecked) are not asked for upstream, and the request goes as a plain one.
pub struct Handshake {
    protocol: HeaderValue,
    /// The `Sec-WebSocket-Accept` a WebSocket server answers this key with.
    accept: Vec<u8>,
}

/// The WebSocket handshake a request makes, if it makes a valid one.
pub fn websocket_handshake(method: &Method, headers: &HeaderMap) -> Option<Handshake> {
    use base64::Engine as _;
    let asked = connection_tokens(headers).any(|t| t.eq_ignore_ascii_case(b"upgrade"));
    let protocol = headers.get(header::UPGRADE).filter(|p| p.as_bytes().eq_ignore_ascii_case(b"websocket"))?;
    let version = headers.get(header::SEC_WEBSOCKET_VERSION).is_some_and(|v| v.as_bytes() == b"13");
    let key = headers.get(header::SEC_WEBSOCKET_KEY)?.as_bytes();
    let key_ok = base64::engine::general_purpose::STANDARD.decode(key).is_ok_and(|k| k.len() == 16);
    if !asked || !version || !key_ok || method != Method::GET {
        return None;
    }
    const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, &[key, GUID].concat());
    let accept = base64::engine::general_purpose::STANDARD.encode(digest.as_ref()).into_bytes();
    Some(Handshake { protocol: protocol.clone(), accept })
}

#[cfg(test)]
mod tests {
    use super::content_length;

    #[test]
    fn a_length_counts_only_when_every_line_says_the_same_plain_number() {
        let length = |lines: &[&str]| content_length(lines.iter().map(|l| l.as_bytes()));
        assert_eq!(length(&[]), Ok(None));
        assert_eq!(length(&["5"]), Ok(Some(5)));
        assert_eq!(length(&["5, 5", " 5 "]), Ok(Some(5)));
        for bad in [&["5", "6"][..], &["5, 6"], &["+5"], &["5,"], &[""], &["005, 5"], &["99999999999999999999"]] {
            assert_eq!(length(bad), Err(()), "{bad:?}");
        }
    }
}
