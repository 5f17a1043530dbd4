//! The API gateway (DESIGN §8): every request is routed, authenticated,
//! checked against revocations and CSRF, stripped of spoofable identity, and
//! forwarded with trusted identity headers.
//!
//! Layout:
//! - [`config`]: route and gateway settings as they appear in the config file.
//! - `path`: the canonical form of request paths, the one routes match.
//! - [`routes`]: the route table, longest prefix wins, swappable at runtime.
//! - [`auth`]: token verification against the JWKS, with a verified-token cache.
//! - [`identity`]: what upstreams may and may not see (headers, cookies).
//! - [`forward`]: pooled, streaming forwarding to HTTP or in-process upstreams.
//! - `h1`: the gateway's own HTTP/1.1 path for bodiless `GET`/`HEAD` requests.
//! - `pool`: the per-thread HTTP/1.1 connection pool.
//! - [`metrics`]: Prometheus metrics of the gateway.
//! - `local`: per-thread state, so serving threads share no written memory.
//! - [`gateway`]: [`Gateway`], the request path in one place.
//! - `client`: a client connection as hyper takes it over from the own path.
//! - [`server`]: serving threads fed by one acceptor; each connection on the
//!   own path first, then hyper straight into [`Gateway::handle`]; shutdown
//!   that answers every request already sent.
//! - [`error`]: [`GatewayError`], classified by who is at fault.

pub mod auth;
mod client;
pub mod config;
pub mod error;
pub mod forward;
pub mod gateway;
mod h1;
pub mod identity;
mod local;
pub mod metrics;
mod path;
mod pool;
pub mod role_map;
pub mod routes;
pub mod server;

pub use auth::{Authenticator, HttpJwks, JwksSource, LocalJwks};
pub use config::{AuthMode, GatewaySettings, RouteConfig};
pub use error::GatewayError;
pub use gateway::Gateway;
pub use role_map::{HttpRoleMap, LocalRoleMap, RoleMap, RoleMapSource};
pub use routes::{RouteError, RouteTable};
pub use server::serve;

/// A poisoned lock means a panic elsewhere; the data is still the best we have.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
