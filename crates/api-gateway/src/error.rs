//! `GatewayError`: classified by source (client → 4xx, upstream → 502/504,
//! our own dependencies → 503), always the same JSON shape as the auth-service.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    #[error("no route")]
    NoRoute,
    /// A path without an unambiguous canonical form (see [`crate::path`]),
    /// or one whose letters in another case would match another route.
    #[error("invalid path")]
    InvalidPath,
    /// A body on a `GET`, `HEAD`, `OPTIONS` or `TRACE`: an upstream that
    /// ignores it would read it as a second request the gateway never checked.
    #[error("body not allowed")]
    BodyNotAllowed,
    /// No `Host` on an HTTP/1.1 request, more than one, or an invalid one
    /// (RFC 9112 §3.2).
    #[error("invalid host")]
    InvalidHost,
    /// The client's body broke off or was malformed (a bad chunk).
    #[error("invalid body")]
    InvalidBody,
    /// Over the route's `max_body_bytes`.
    #[error("body too large")]
    BodyTooLarge,
    /// The gateway serves `gateway.max_connections` already.
    #[error("too many connections")]
    TooManyConnections,
    /// Missing, invalid, expired or revoked token: one answer for all.
    /// `presented` says whether a token was sent at all (RFC 6750 §3.1).
    #[error("unauthenticated")]
    Unauthenticated { presented: bool },
    /// A genuine token older than a change to its user (roles changed,
    /// account disabled or deleted, password reset): refresh for a current
    /// one, which fails when the session is gone. Only a token with a valid
    /// signature can get this answer, so it tells a forger nothing.
    #[error("token stale")]
    Stale,
    #[error("forbidden")]
    Forbidden,
    #[error("email not verified")]
    EmailNotVerified,
    #[error("csrf: {0}")]
    Csrf(String),
    #[error("signing keys not yet obtained")]
    KeysUnavailable,
    #[error("revocation feed not current")]
    RevocationUnavailable,
    /// A token carrying roles only, before the gateway has a role map.
    #[error("role map not yet obtained")]
    RolesUnavailable,
    #[error("upstream unavailable")]
    UpstreamUnavailable,
    #[error("upstream timeout")]
    UpstreamTimeout,
}

impl GatewayError {
    fn parts(&self) -> (StatusCode, &'static str, String) {
        match self {
            Self::NoRoute => (StatusCode::NOT_FOUND, "no_route", "no route for this path".into()),
            Self::InvalidPath => (
                StatusCode::BAD_REQUEST,
                "invalid_path",
                "this path could be read more than one way (dot segments, encoded separators, \
                 parameters, double encoding, or a case that matches another route)"
                    .into(),
            ),
            Self::BodyNotAllowed => (
                StatusCode::BAD_REQUEST,
                "body_not_allowed",
                "GET, HEAD, OPTIONS and TRACE requests may not have a body".into(),
            ),
            Self::InvalidHost => (
                StatusCode::BAD_REQUEST,
                "invalid_host",
                "an HTTP/1.1 request needs exactly one valid Host header".into(),
            ),
            Self::InvalidBody => {
                (StatusCode::BAD_REQUEST, "invalid_body", "the request body was malformed or cut short".into())
            }
            Self::BodyTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                "the request body is larger than this route takes".into(),
            ),
            Self::TooManyConnections => (
                StatusCode::SERVICE_UNAVAILABLE,
                "too_many_connections",
                "the gateway is serving as many connections as it may; try again".into(),
            ),
            Self::Unauthenticated { .. } => {
                (StatusCode::UNAUTHORIZED, "unauthenticated", "authentication is required".into())
            }
            Self::Stale => (
                StatusCode::UNAUTHORIZED,
                "token_stale",
                "the account changed since this token was issued; refresh it".into(),
            ),
            Self::Forbidden => (StatusCode::FORBIDDEN, "forbidden", "you are not allowed to do this".into()),
            Self::EmailNotVerified => {
                (StatusCode::FORBIDDEN, "email_not_verified", "confirm your email address first".into())
            }
            Self::Csrf(why) => (StatusCode::FORBIDDEN, "csrf_failed", why.clone()),
            Self::KeysUnavailable => {
                (StatusCode::SERVICE_UNAVAILABLE, "jwks_unavailable", "token keys are not available yet".into())
            }
            Self::RevocationUnavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "revocation_unavailable",
                "revocations cannot be checked right now".into(),
            ),
            Self::RolesUnavailable => {
                (StatusCode::SERVICE_UNAVAILABLE, "roles_unavailable", "permissions cannot be checked right now".into())
            }
            Self::UpstreamUnavailable => {
                (StatusCode::BAD_GATEWAY, "upstream_unavailable", "the service behind this route is unavailable".into())
            }
            Self::UpstreamTimeout => {
                (StatusCode::GATEWAY_TIMEOUT, "upstream_timeout", "the service behind this route timed out".into())
            }
        }
    }
}

impl GatewayError {
    /// The JSON body of the answer, `{"error": {"code", "message"}}`.
    pub(crate) fn body(&self) -> String {
        let (_, code, message) = self.parts();
        json!({"error": {"code": code, "message": message}}).to_string()
    }
}

impl IntoResponse for GatewayError {
    fn into_response(self) -> Response {
        let (status, code, message) = self.parts();
        let mut response = (status, axum::Json(json!({"error": {"code": code, "message": message}}))).into_response();
        let headers = response.headers_mut();
        match self {
            Self::Unauthenticated { presented: true } | Self::Stale => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer error=\"invalid_token\""));
            }
            Self::Unauthenticated { presented: false } => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            Self::KeysUnavailable | Self::RevocationUnavailable | Self::RolesUnavailable | Self::TooManyConnections => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        own_headers(headers);
        response
    }
}

/// What every answer the gateway makes itself (errors, `/healthz`,
/// `/readyz`, `/metrics`) carries: no caching, no sniffing, no referrer,
/// nothing loaded or framed.
pub(crate) fn own_headers(headers: &mut axum::http::HeaderMap) {
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"),
    );
}
