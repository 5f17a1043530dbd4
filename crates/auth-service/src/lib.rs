//! The auth-service HTTP API (DESIGN §3): accounts, sessions, tokens in cookies
//! with a session-bound CSRF token, JWKS, OpenAPI, health and metrics.
//!
//! Layout:
//! - [`state`]: [`AppState`] and the settings the service runs with.
//! - [`routes`]: one `router()` per area beside its handlers, merged in [`router`].
//! - [`caller`]: the [`caller::Caller`] extractor: token from cookie or bearer,
//!   verification, session check, CSRF on unsafe cookie requests.
//! - [`audit`]: the audit trail of authentication events, one layer writing
//!   what each handler noted.
//! - [`guard`]: refusals before any handler runs (cross-site requests, non-JSON bodies).
//! - [`cookies`]: the three `__Host-` cookies.
//! - [`keys`]: the live signing keys, reloaded when the key file changes.
//! - [`ledger`]: the deletion ledger's intake of `user.deletion_completed`.
//! - [`mail`]: the SMTP and file mailers and the relay draining the mail queue.
//! - [`oauth`]: login through OpenID Connect providers (PKCE, state, nonce).
//! - [`error`]: [`error::ApiError`], the one error body.
//! - [`metrics`]: the Prometheus registry.
//! - [`serve`]: the listener of the standalone auth-service, with its limits.
//! - [`openapi`]: the OpenAPI 3.1 document, generated from the handlers.
//! - [`pages`]: the hosted pages (sign in, sign up, reset, account), built in.

pub mod audit;
pub mod breached;
pub mod caller;
pub mod cookies;
pub mod error;
pub mod guard;
pub mod keys;
pub mod ledger;
pub mod mail;
pub mod metrics;
pub mod oauth;
pub mod openapi;
pub mod pages;
pub mod routes;
pub mod serve;
pub mod state;
#[cfg(feature = "testing")]
pub mod testing;

use axum::Router;
use axum::extract::DefaultBodyLimit;

pub use serve::{Limits, serve};
pub use state::{AppState, AuthSettings};

/// Request bodies larger than this are refused with 413 before parsing.
pub const BODY_LIMIT: usize = 16 * 1024;

/// The whole auth-service application. Middleware order, outermost first:
pub fn router(state: AppState) -> Router {
    routes::router(state.clone())
        // Before the layers, so an unknown path's 404 carries their headers.
        .fallback(routes::not_found)
        // Per-route metrics: inside routing, so the matched path is known.
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), metrics::track))
        // The framework's own refusals (a path or query it cannot parse) in
        // the one error body, inside the guard that adds the headers.
        .layer(axum::middleware::from_fn(error::framework_refusals))
        // Cross-site and non-JSON unsafe requests never reach a handler;
        // every answer gets the security headers.
        .layer(axum::middleware::from_fn_with_state(state.clone(), guard::protect))
        // Authentication events, with the client they came from.
        .layer(axum::middleware::from_fn_with_state(state.clone(), audit::record))
        // Bounded bodies: a 1 MiB password is refused before any hashing.
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state)
        // Outermost: every revocation an answer made rides on it to the gateway.
        .layer(axum::middleware::from_fn(hand_over_revocations))
}

/// Adds `Gatehouse-Revoked` to an answer that revoked sessions or users
/// (through [`auth_events::handover::Recording`]), so the gateway relaying
/// it enforces them before the next request.
async fn hand_over_revocations(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let (mut response, revoked) = auth_events::handover::recording(next.run(request)).await;
    if let Some(value) = revoked.and_then(|v| axum::http::HeaderValue::from_str(&v).ok()) {
        response.headers_mut().insert(auth_events::handover::HEADER, value);
    }
    response
}
