//! The request path, in order:
//!
//! 1. the gateway's own endpoints (`/healthz`, `/readyz`, `/metrics`);
//! 2. the message itself: one valid `Host` (RFC 9112 §3.2), no body on
//!    `GET`/`HEAD`/`OPTIONS`/`TRACE` (400);
//! 3. the path made canonical (400 `invalid_path` when it cannot be), then
//!    route lookup on it, longest prefix (404 when none; 400 when the path
//!    in other letter case would match another route);
//! 4. on `auth = "required"` routes: token from bearer header or cookie →
//!    verify against the JWKS (503 when no keys yet) → revocation feed current
//!    (503 otherwise: fail closed) → not revoked (401; `token_stale` for a
//!    token older than a change to its user) → CSRF for cookie-borne unsafe
//!    requests, the site for cookie-borne WebSocket handshakes → roles (any
//!    of) and permissions (all of; from the role map for a token carrying
//!    roles only, 503 before the map) → a verified email if the route asks;
//! 5. strip the client's hop-by-hop headers, spoofable identity (and its
//!    `_` look-alikes), our cookies and untrusted forwarding headers; set
//!    `X-User-Id`, `X-User-Roles`, `X-Session-Id`, `X-Request-Id`,
//!    `X-Forwarded-*`;
//! 6. forward the canonical path, streaming, within the route's timeout
//!    (502/504).
//!
//! Every response, the gateway's own included, carries `X-Request-Id`.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use auth_core::Clock;
use auth_events::{Revocation, RevocationFeed, handover};
use auth_tokens::csrf::{check_pair, check_site};
use auth_tokens::proxies::TrustedProxies;
use auth_tokens::{Credential, CsrfKey, cookies};
use axum::extract::{ConnectInfo, Request};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Version, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::auth::{AuthFailure, Authenticator, Verified};
use crate::config::{AuthMode, GatewaySettings};
use crate::error::GatewayError;
use crate::forward;
use crate::identity::{self, Peer};
use crate::local::PerThread;
use crate::metrics::GatewayMetrics;
use crate::role_map::RoleMap;
use crate::routes::{Route, RouteTable, Upstream};

/// What a gateway is built from.
pub struct GatewayParts {
    pub routes: RouteTable,
    pub authenticator: Arc<Authenticator>,
    pub revocations: Arc<dyn RevocationFeed>,
    pub csrf: CsrfKey,
    pub clock: Arc<dyn Clock>,
    pub settings: GatewaySettings,
    /// What each role allows, for tokens too large to carry permissions;
    /// without it such tokens pass no route that requires permissions.
    pub roles: Option<Arc<RoleMap>>,
    /// More Prometheus text appended to `/metrics` (the in-process auth-service's).
    pub extra_metrics: Option<Box<dyn Fn() -> String + Send + Sync>>,
}

#[derive(Clone)]
pub struct Gateway(Arc<Inner>);

struct Inner {
    routes: RwLock<Arc<RouteTable>>,
    /// Each thread's copy of the table, remade after a reload (see [`Gateway::routes`]).
    route_copies: PerThread,
    auth: Arc<Authenticator>,
    roles: Option<Arc<RoleMap>>,
    revocations: Arc<dyn RevocationFeed>,
    csrf: CsrfKey,
    clock: Arc<dyn Clock>,
    metrics: GatewayMetrics,
    trusted: TrustedProxies,
    allowed_origins: Vec<String>,
    jwks_refresh: Duration,
    client: ClientLimits,
    underscores: bool,
    fast_path: bool,
    metrics_token: Option<String>,
    extra_metrics: Option<Box<dyn Fn() -> String + Send + Sync>>,
}

impl Gateway {
    pub fn new(parts: GatewayParts) -> Result<Self, String> {
        let trusted = TrustedProxies::parse(&parts.settings.trusted_proxies)?;
        let allowed_origins = auth_tokens::csrf::allowed_origins(&parts.settings.allowed_origins);
        let metrics = GatewayMetrics::default();
        let routes = parts.routes.attach(&metrics);
        Ok(Self(Arc::new(Inner {
            routes: RwLock::new(Arc::new(routes)),
            route_copies: PerThread::new(),
            auth: parts.authenticator,
            roles: parts.roles,
            revocations: parts.revocations,
            csrf: parts.csrf,
            clock: parts.clock,
            metrics,
            trusted,
            allowed_origins,
            jwks_refresh: Duration::from_secs(parts.settings.jwks_refresh_secs.max(1)),
            client: ClientLimits::of(&parts.settings),
            underscores: parts.settings.underscores_in_headers,
            fast_path: parts.settings.fast_path,
            metrics_token: parts.settings.metrics_token.clone(),
            extra_metrics: parts.extra_metrics,
        })))
    }

    /// Swaps in a new route table; requests in flight finish on the old one.
    pub fn replace_routes(&self, table: RouteTable) {
        let table = table.attach(&self.0.metrics);
        *self.0.routes.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(table);
        self.0.route_copies.changed();
    }

    /// This thread's copy of the route table. A shared `Arc` would have
    /// every request on every thread write its reference count.
    pub(crate) fn routes(&self) -> Arc<RouteTable> {
        let copy = || Some(Arc::new(self.shared_routes()));
        let table = self.0.route_copies.with(copy, |table: &mut Arc<RouteTable>| table.clone());
        // `copy` always makes one.
        table.unwrap_or_else(|| Arc::new(self.shared_routes()))
    }

    fn shared_routes(&self) -> RouteTable {
        RouteTable::clone(&self.0.routes.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// What client connections are allowed.
    pub(crate) fn client_limits(&self) -> &ClientLimits {
        &self.0.client
    }

    /// Whether bodiless `GET`/`HEAD` requests take the own HTTP/1.1 path.
    pub(crate) fn fast_path(&self) -> bool {
        self.0.fast_path
    }

    /// Counts a request answered before any route was found.
    pub(crate) fn unrouted(&self, status: StatusCode) {
        self.0.metrics.unrouted().status(status.as_u16());
    }

    /// Unix seconds by the gateway's clock.
    pub(crate) fn now(&self) -> i64 {
        self.0.clock.unix()
    }

    pub fn authenticator(&self) -> &Arc<Authenticator> {
        &self.0.auth
    }

    /// Refreshes the JWKS and the role map and prunes expired revocations
    /// periodically.
    pub fn spawn_background(&self) -> tokio::task::JoinHandle<()> {
        let gateway = self.clone();
        if let Some(roles) = &self.0.roles {
            roles.spawn_refresher();
        }
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(gateway.0.jwks_refresh);
            loop {
                tick.tick().await;
                let _ = gateway.0.auth.refresh().await;
                gateway.0.revocations.set().prune(gateway.0.clock.unix());
            }
        })
    }

    /// One request from `peer` (the TCP peer, if known), all the way: see the
    /// module documentation. [`crate::serve`] calls this for every request.
    pub async fn handle(&self, request: Request, peer: Option<Peer>) -> Response {
        let request_id = identity::request_id(request.headers().get(identity::REQUEST_ID).map(HeaderValue::as_bytes));
        let mut response = self.answer(request, peer, &request_id).await;
        response.headers_mut().insert(identity::REQUEST_ID, request_id);
        response
    }

    async fn answer(&self, request: Request, peer: Option<Peer>, request_id: &HeaderValue) -> Response {
        if request.method() == Method::GET
            && let Some(response) = self.own_endpoint(request.uri().path(), request.headers())
        {
            return response;
        }
        // The URI is cheap to clone (shared bytes); the request moves on.
        let uri = request.uri().clone();
        let path = match check_message(&request).and_then(|()| canonical_path(uri.path())) {
            Ok(path) => path,
            Err(error) => {
                self.unrouted(StatusCode::BAD_REQUEST);
                return error.into_response();
            }
        };
        let routes = self.routes();
        let route = match routes.route_for(&path) {
            Ok(Some(route)) => route,
            Ok(None) => {
                self.unrouted(StatusCode::NOT_FOUND);
                return GatewayError::NoRoute.into_response();
            }
            Err(_) => {
                self.unrouted(StatusCode::BAD_REQUEST);
                return GatewayError::InvalidPath.into_response();
            }
        };
        let response = match self.pass(route, request, &path, peer.as_ref(), request_id).await {
            Ok(response) => response,
            Err(error) => error.into_response(),
        };
        route.stats.status(response.status().as_u16());
        response
    }

    fn own_endpoint(&self, path: &str, headers: &axum::http::HeaderMap) -> Option<Response> {
        let mut response = self.own_answer(path, headers)?;
        crate::error::own_headers(response.headers_mut());
        Some(response)
    }

    /// The Prometheus text of `/metrics`: the gateway's, and what
    /// `extra_metrics` adds.
    pub fn metrics_text(&self) -> String {
        let mut text = self.0.metrics.render(self.0.revocations.set().len(), self.0.auth.jwks_age());
        if let Some(extra) = &self.0.extra_metrics {
            text.push_str(&extra());
        }
        text
    }

    /// Whether `headers` carry the bearer token `/metrics` answers on this
    /// port (none is, unless configured).
    fn may_read_metrics(&self, headers: &axum::http::HeaderMap) -> bool {
        let authorization = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        auth_tokens::bearer_is(authorization, self.0.metrics_token.as_deref())
    }

    fn own_answer(&self, path: &str, headers: &axum::http::HeaderMap) -> Option<Response> {
        match path {
            "/healthz" => Some(axum::Json(json!({"status": "ok"})).into_response()),
            "/readyz" if self.0.auth.has_keys() && self.0.revocations.is_current() => {
                Some(axum::Json(json!({"status": "ready"})).into_response())
            }
            "/readyz" => Some(GatewayError::KeysUnavailable.into_response()),
            // Route names and counts are the operator's: on this port only
            // with the token, else the path is routed like any other.
            "/metrics" if self.may_read_metrics(headers) => {
                let mut response = self.metrics_text().into_response();
                response
                    .headers_mut()
                    .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
                Some(response)
            }
            _ => None,
        }
    }

    async fn pass(
        &self,
        route: &Route,
        mut request: Request,
        path: &str,
        peer: Option<&Peer>,
        request_id: &HeaderValue,
    ) -> Result<Response, GatewayError> {
        let verified = match route.auth {
            AuthMode::Required => Some(self.authenticate(route, request.method(), request.headers()).await?),
            AuthMode::Public => None,
        };
        // Asked for before the rewrite drops the client's hop-by-hop headers.
        let upgrade = forward::websocket_handshake(request.method(), request.headers());
        identity::prepare(request.headers_mut(), self.rewrite(route, verified.as_deref(), peer, request_id));
        if let (Upstream::Local(_), Some(peer)) = (&route.upstream, peer) {
            // An in-process service sees the client as its peer, as if served directly.
            request.extensions_mut().insert(ConnectInfo(SocketAddr::new(peer.ip, 0)));
        }
        let target = route.upstream_target(request.uri(), path).ok_or(GatewayError::UpstreamUnavailable)?;
        let started = Instant::now();
        let mut response = forward::send(route, request, target, upgrade).await?;
        route.stats.upstream_latency(started.elapsed());
        if response.headers().contains_key(handover::HEADER) {
            for revoked in response.headers().get_all(handover::HEADER) {
                self.take_revocations(route, revoked.as_bytes());
            }
            response.headers_mut().remove(handover::HEADER);
        }
        Ok(response)
    }

    /// Applies the revocations an answer of the auth-service hands over
    /// (`Gatehouse-Revoked`) before the answer goes on, so the client's next
    /// request is refused; from any other upstream they are ignored.
    pub(crate) fn take_revocations(&self, route: &Route, value: &[u8]) {
        if route.forward_credentials {
            handover::apply(value, self.0.revocations.set());
            return;
        }
        // Once a second at most: a hostile upstream is no flood of log lines.
        static LOGGED: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);
        let second = self.now();
        if LOGGED.swap(second, std::sync::atomic::Ordering::Relaxed) != second {
            tracing::warn!(prefix = %route.prefix, "ignoring Gatehouse-Revoked from an upstream that is not the auth-service");
        }
    }

    /// How the request's headers are rewritten for the route's upstream.
    pub(crate) fn rewrite<'a>(
        &self,
        route: &Route,
        verified: Option<&'a Verified>,
        peer: Option<&'a Peer>,
        request_id: &'a HeaderValue,
    ) -> identity::Rewrite<'a> {
        identity::Rewrite {
            identity: verified.map(|v| &v.identity),
            forward_credentials: route.forward_credentials,
            peer,
            peer_trusted: peer.is_some_and(|p| self.0.trusted.contains(p.ip)),
            underscores: self.0.underscores,
            request_id,
        }
    }

    async fn authenticate(
        &self,
        route: &Route,
        method: &Method,
        headers: &HeaderMap,
    ) -> Result<Arc<Verified>, GatewayError> {
        let authorization = headers.get(header::AUTHORIZATION).map(HeaderValue::as_bytes);
        let (token, by_cookie) = presented(authorization, identity::cookie_lines(headers))?;
        let verified = self.verified(token, self.now()).await?;
        if by_cookie && auth_tokens::csrf::changes_state(method.as_str()) {
            self.check_csrf(headers, &verified.claims.sid)?;
        } else if by_cookie && headers.contains_key(header::UPGRADE) {
            // A WebSocket handshake is a GET that a page of another site
            // (a sibling subdomain: SameSite=Lax lets its cookies go) can
            // open; it cannot carry a CSRF header, but it always has Origin.
            self.check_site(headers)?;
        }
        check_route_requirements(route, &verified, self.0.roles.as_deref())?;
        Ok(verified)
    }

    /// A request that changes nothing (`GET`, `HEAD`) on a route that
    /// requires a token: the token verified, not revoked, with a role the
    /// route asks for, at `now` (Unix seconds). Such a request needs no CSRF
    /// check. The gateway's HTTP/1.1 path calls this with the raw header values.
    pub(crate) async fn authenticate_safe<'a>(
        &self,
        route: &Route,
        authorization: Option<&'a [u8]>,
        cookie_lines: impl Iterator<Item = &'a str>,
        now: i64,
    ) -> Result<Arc<Verified>, GatewayError> {
        let (token, _) = presented(authorization, cookie_lines)?;
        let verified = self.verified(token, now).await?;
        check_route_requirements(route, &verified, self.0.roles.as_deref())?;
        Ok(verified)
    }

    /// The token verified (cached or not) and checked against revocations.
    async fn verified(&self, token: &str, now: i64) -> Result<Arc<Verified>, GatewayError> {
        let verified = self.0.auth.verify(token, now).await.map_err(|failure| match failure {
            AuthFailure::NoKeys => GatewayError::KeysUnavailable,
            AuthFailure::Invalid(reason) => {
                self.0.metrics.auth_failure(reason.reason());
                GatewayError::Unauthenticated { presented: true }
            }
        })?;
        if !self.0.revocations.is_current() {
            return Err(GatewayError::RevocationUnavailable);
        }
        // Revocations only ever add entries: a token found not revoked stays so
        // until the set's generation moves, and most requests only read it.
        let set = self.0.revocations.set();
        let generation = set.generation();
        let claims = &verified.claims;
        if !verified.unrevoked_at(generation) {
            match set.revocation(&claims.sid, &claims.sub, claims.iat, claims.ver) {
                Some(Revocation::Session) => {
                    self.0.metrics.auth_failure("revoked");
                    return Err(GatewayError::Unauthenticated { presented: true });
                }
                Some(Revocation::User) => {
                    self.0.metrics.auth_failure("stale");
                    return Err(GatewayError::Stale);
                }
                None => verified.mark_unrevoked_at(generation),
            }
        }
        Ok(verified)
    }

    fn check_csrf(&self, headers: &HeaderMap, sid: &str) -> Result<(), GatewayError> {
        self.check_site(headers)?;
        let cookie = cookies::find(identity::cookie_lines(headers), cookies::CSRF);
        check_pair(&self.0.csrf, header_text(headers, "x-csrf-token"), cookie, sid).map_err(csrf_refused)
    }

    /// No `Sec-Fetch-Site: cross-site`, no foreign `Origin`.
    fn check_site(&self, headers: &HeaderMap) -> Result<(), GatewayError> {
        let text = |name: &str| header_text(headers, name);
        check_site(text("sec-fetch-site"), text("origin"), text("host"), &self.0.allowed_origins).map_err(csrf_refused)
    }
}

/// The gateway's own endpoints, answered on `GET` before any route (the
/// paths [`Gateway::own_endpoint`] answers), which its HTTP/1.1 path leaves to hyper.
pub(crate) fn serves_itself(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz" | "/metrics")
}

/// Deadlines and limits for client connections, from the settings.
#[derive(Debug, Clone)]
pub(crate) struct ClientLimits {
    /// Idle between requests.
    pub idle: Duration,
    /// A request head, whole.
    pub head: Duration,
    /// One write to the client.
    pub send: Duration,
    pub max_connections: usize,
    pub shutdown_grace: Duration,
}

impl ClientLimits {
    fn of(settings: &GatewaySettings) -> Self {
        let secs = |n: u64| Duration::from_secs(n.max(1));
        Self {
            idle: secs(settings.client_idle_timeout_secs),
            head: secs(settings.client_header_timeout_secs),
            send: secs(settings.client_send_timeout_secs),
            max_connections: settings.max_connections.max(1),
            shutdown_grace: Duration::from_secs(settings.shutdown_grace_secs),
        }
    }
}

/// Methods whose requests carry no body (RFC 9110 §9.3: a body on them has
/// no defined meaning, and upstreams differ on whether they read one).
fn bodiless(method: &str) -> bool {
    matches!(method, "GET" | "HEAD" | "OPTIONS" | "TRACE")
}

/// A `Host` value that is a host and maybe a port (RFC 9110 §7.2), nothing
/// else: no user info, path, spaces or control characters.
pub(crate) fn valid_host(host: &[u8]) -> bool {
    !host.is_empty() && host.iter().all(|b| b.is_ascii_alphanumeric() || b"-._~:[]%!$&'()*+,;=".contains(b))
}

/// RFC 9112 §3.2 (one valid `Host`; none only before HTTP/1.1 or with
/// HTTP/2's `:authority`) and no body on a method that has none.
fn check_message(request: &Request) -> Result<(), GatewayError> {
    let mut hosts = request.headers().get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (None, None) if request.version() == Version::HTTP_11 => return Err(GatewayError::InvalidHost),
        (Some(host), None) if !valid_host(host.as_bytes()) => return Err(GatewayError::InvalidHost),
        (Some(_), Some(_)) => return Err(GatewayError::InvalidHost),
        _ => {}
    }
    let body =
        request.headers().contains_key(header::TRANSFER_ENCODING) || !hyper::body::Body::is_end_stream(request.body());
    if bodiless(request.method().as_str()) && body {
        return Err(GatewayError::BodyNotAllowed);
    }
    Ok(())
}

fn canonical_path(path: &str) -> Result<std::borrow::Cow<'_, str>, GatewayError> {
    crate::path::canonical(path).map_err(|_| GatewayError::InvalidPath)
}

fn header_text<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn csrf_refused(refusal: auth_tokens::csrf::CsrfRefusal) -> GatewayError {
    GatewayError::Csrf(refusal.to_string())
}

/// The route's `require_roles` (any of), `require_permissions` (all of;
/// from the role map for a token that carries roles only) and
/// `require_verified_email`.
fn check_route_requirements(route: &Route, verified: &Verified, map: Option<&RoleMap>) -> Result<(), GatewayError> {
    let claims = &verified.claims;
    if !route.require_roles.is_empty() && !claims.roles.iter().any(|r| route.require_roles.contains(r)) {
        return Err(GatewayError::Forbidden);
    }
    if !route.require_permissions.is_empty() {
        let held = match claims.permissions_by_role {
            false => route.require_permissions.iter().all(|p| claims.permissions.contains(p)),
            true => {
                let resolved = map.and_then(|m| m.permissions_of(&claims.roles));
                let resolved = resolved.ok_or(GatewayError::RolesUnavailable)?;
                route.require_permissions.iter().all(|p| resolved.contains(p))
            }
        };
        if !held {
            return Err(GatewayError::Forbidden);
        }
    }
    if route.require_verified_email && !verified.claims.email_verified {
        return Err(GatewayError::EmailNotVerified);
    }
    Ok(())
}

/// The presented token and whether it came in the cookie. An `Authorization`
/// value that is not visible ASCII is malformed.
fn presented<'a>(
    authorization: Option<&'a [u8]>,
    cookie_lines: impl Iterator<Item = &'a str>,
) -> Result<(&'a str, bool), GatewayError> {
    let visible = |v: &&[u8]| v.iter().all(|b| *b == b'\t' || (b' '..=b'~').contains(b));
    let authorization =
        authorization.map(|v| Some(v).filter(visible).and_then(|v| std::str::from_utf8(v).ok()).unwrap_or_default());
    match auth_tokens::presented_token(authorization, cookie_lines) {
        Ok(Some((token, via))) => Ok((token, via == Credential::Cookie)),
        Ok(None) => Err(GatewayError::Unauthenticated { presented: false }),
        Err(_) => Err(GatewayError::Unauthenticated { presented: true }),
    }
}
