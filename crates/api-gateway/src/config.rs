//! Gateway settings as written in the config file (`[gateway]`, `[[gateway.routes]]`).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// A valid, unrevoked access token is needed.
    #[default]
    Required,
    /// Anyone may pass; no identity is asserted.
    Public,
}

fn default_timeout() -> u64 {
    30
}

/// One `[[gateway.routes]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Path prefix, e.g. `/api/notes`; matches itself and everything below it.
    pub prefix: String,
    /// `http://host:port[/base]`, or `inproc://NAME` for a service in this process.
    pub upstream: String,
    #[serde(default)]
    pub auth: AuthMode,
    /// Any of these roles lets the request through; empty means any user.
    #[serde(default)]
    pub require_roles: Vec<String>,
    /// All of these permissions (`resource:action`) are needed; empty: none.
    #[serde(default)]
    pub require_permissions: Vec<String>,
    /// Only users who have verified their email address (the token's
    /// `email_verified`); others get 403 `email_not_verified`.
    #[serde(default)]
    pub require_verified_email: bool,
    /// Remove the prefix from the path before forwarding.
    #[serde(default)]
    pub strip_prefix: bool,
    /// Seconds to wait for the upstream's response headers (504 after).
    #[serde(default = "default_timeout")]
    pub timeout: u64,
    /// Speak HTTP/2 (prior knowledge, h2c) to this upstream.
    #[serde(default)]
    pub http2: bool,
    /// The largest request body passed on (413 `body_too_large` beyond);
    /// unset: any. Set it to the upstream's own limit, so a client sending
    /// more hears it from the gateway instead of a connection the upstream
    /// cut mid-body (which could only be reported as a 502).
    #[serde(default)]
    pub max_body_bytes: Option<u64>,
}

impl RouteConfig {
    pub fn new(prefix: &str, upstream: &str, auth: AuthMode) -> Self {
        Self {
            prefix: prefix.into(),
            upstream: upstream.into(),
            auth,
            require_roles: Vec::new(),
            require_permissions: Vec::new(),
            require_verified_email: false,
            strip_prefix: false,
            timeout: default_timeout(),
            http2: false,
            max_body_bytes: None,
        }
    }
}

/// Everything the gateway needs besides its routes and collaborators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewaySettings {
    /// Origins allowed to send unsafe cookie requests (besides the request's own host).
    pub allowed_origins: Vec<String>,
    /// Peers whose `X-Forwarded-*` headers are believed: IPs or CIDRs.
    pub trusted_proxies: Vec<String>,
    /// Verified tokens remembered until they expire.
    pub token_cache_size: usize,
    /// Seconds between background JWKS refreshes.
    pub jwks_refresh_secs: u64,
    /// Seconds a client connection may sit idle between requests before it is
    /// closed (nginx's `keepalive_timeout`).
    pub client_idle_timeout_secs: u64,
    /// Seconds a request head may take to arrive whole, from its first byte
    /// (from the connection's start for its first request), however slowly
    /// it trickles in (nginx's `client_header_timeout`). On connections
    /// served by hyper this also bounds the idle time between requests.
    pub client_header_timeout_secs: u64,
    /// Seconds a write to a client may wait for the client to read before the
    /// connection is dropped, with the upstream connection serving it
    /// (nginx's `send_timeout`).
    pub client_send_timeout_secs: u64,
    /// Client connections served at once by the whole gateway; one more is
    /// answered 503 `too_many_connections` and closed.
    pub max_connections: usize,
    /// Whether client header names with `_` reach upstreams. Off by default
    /// (nginx's `underscores_in_headers off`): CGI-style servers read
    /// `X_User_Id` as `X-User-Id`.
    pub underscores_in_headers: bool,
    /// Whether bodiless `GET`/`HEAD` requests to HTTP/1.1 upstreams take the
    /// gateway's own HTTP/1.1 path; off, hyper serves every request.
    pub fast_path: bool,
    /// Seconds the gateway waits at shutdown for requests already sent
    /// before it closes every connection left (under Kubernetes' 30 s).
    pub shutdown_grace_secs: u64,
    /// `/metrics` on the client port answers only this bearer token; unset,
    /// it is not served there (the operator port serves it).
    pub metrics_token: Option<String>,
}

impl Default for GatewaySettings {
    fn default() -> Self {
        Self {
            allowed_origins: Vec::new(),
            trusted_proxies: Vec::new(),
            token_cache_size: 10_000,
            jwks_refresh_secs: 60,
            client_idle_timeout_secs: 75,
            client_header_timeout_secs: 10,
            client_send_timeout_secs: 60,
            max_connections: 10_000,
            underscores_in_headers: false,
            fast_path: true,
            shutdown_grace_secs: 25,
            metrics_token: None,
        }
    }
}
