//! Token verification at the gateway: the shared `auth-tokens` verifier over
//! the auth-service's JWKS, plus a cache of verified tokens.
//!
//! The JWKS is fetched at start, refreshed in the background, refetched at
//! once (at most every few seconds) when a token names an unknown `kid`, and
//! the last good set is kept when a fetch fails. Until a first set arrives,
//! authenticated routes answer 503, not 401.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use auth_tokens::{AccessClaims, Jwks, TokenSettings, TokenVerifier, VerifyError};
use axum::body::Body;
use axum::http::{Request, Uri};
use http_body_util::BodyExt as _;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;

use crate::lock;

/// The least time between two refetches triggered by unknown `kid`s.
const REFETCH_SPACING: Duration = Duration::from_secs(5);

#[async_trait]
pub trait JwksSource: Send + Sync + 'static {
    async fn fetch(&self) -> Result<Jwks, String>;
}

/// The JWKS of an auth-service reached over HTTP.
pub struct HttpJwks {
    url: Uri,
    client: Client<HttpConnector, Body>,
}

impl HttpJwks {
    pub fn new(auth_service_url: &str) -> Result<Self, String> {
        let url = format!("{}/.well-known/jwks.json", auth_service_url.trim_end_matches('/'));
        let url = url.parse().map_err(|_| format!("{auth_service_url:?} is not a URL"))?;
        Ok(Self { url, client: Client::builder(hyper_util::rt::TokioExecutor::new()).build_http() })
    }
}

#[async_trait]
impl JwksSource for HttpJwks {
    async fn fetch(&self) -> Result<Jwks, String> {
        let request = Request::get(self.url.clone()).body(Body::empty()).map_err(|e| e.to_string())?;
        let response = tokio::time::timeout(Duration::from_secs(5), self.client.request(request))
            .await
            .map_err(|_| "timed out".to_owned())?
            .map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("status {}", response.status()));
        }
        let body = response.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
        serde_json::from_slice(&body).map_err(|e| e.to_string())
    }
}

/// The JWKS of an auth-service in the same process.
pub struct LocalJwks(Box<dyn Fn() -> Jwks + Send + Sync>);

impl LocalJwks {
    pub fn new(current: impl Fn() -> Jwks + Send + Sync + 'static) -> Self {
        Self(Box::new(current))
    }
}

#[async_trait]
impl JwksSource for LocalJwks {
    async fn fetch(&self) -> Result<Jwks, String> {
        Ok((self.0)())
    }
}

/// Why a request's token was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// No JWKS has ever been obtained: our fault, not the client's.
    NoKeys,
    Invalid(VerifyError),
}

pub struct Authenticator {
    source: Arc<dyn JwksSource>,
    settings: TokenSettings,
    verifier: RwLock<Option<Arc<TokenVerifier>>>,
    fetched_at: Mutex<Option<Instant>>,
    refetched_at: Mutex<Option<Instant>>,
    cache: RwLock<HashMap<Arc<str>, Arc<AccessClaims>>>,
    cache_size: usize,
}

impl Authenticator {
    pub fn new(source: Arc<dyn JwksSource>, settings: TokenSettings, cache_size: usize) -> Self {
        Self {
            source,
            settings,
            verifier: RwLock::new(None),
            fetched_at: Mutex::new(None),
            refetched_at: Mutex::new(None),
            cache: RwLock::new(HashMap::new()),
            cache_size,
        }
    }

    /// Fetches the JWKS; on failure the previous set stays in force.
    pub async fn refresh(&self) -> Result<(), String> {
        let jwks = self.source.fetch().await.inspect_err(|error| {
            tracing::warn!(%error, "JWKS fetch failed; keeping the last good set");
        })?;
        let verifier = Arc::new(TokenVerifier::from_jwks(&jwks, &self.settings));
        let changed = {
            let current = self.verifier.read().unwrap_or_else(|e| e.into_inner());
            let kids = |v: &TokenVerifier| {
                let mut k: Vec<String> = v.kids().map(str::to_owned).collect();
                k.sort();
                k
            };
            current.as_ref().is_none_or(|c| kids(c) != kids(&verifier))
        };
        if changed {
            // Cached verdicts were made with the old keys; a key that left
            // must not keep its tokens alive through the cache.
            self.cache.write().unwrap_or_else(|e| e.into_inner()).clear();
            *self.verifier.write().unwrap_or_else(|e| e.into_inner()) = Some(verifier);
        }
        *lock(&self.fetched_at) = Some(Instant::now());
        Ok(())
    }

    pub fn has_keys(&self) -> bool {
        self.verifier.read().unwrap_or_else(|e| e.into_inner()).is_some()
    }

    /// Time since the last successful fetch.
    pub fn jwks_age(&self) -> Option<Duration> {
        lock(&self.fetched_at).map(|t| t.elapsed())
    }

    fn current(&self) -> Option<Arc<TokenVerifier>> {
        self.verifier.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub async fn verify(&self, token: &str, now: i64) -> Result<Arc<AccessClaims>, AuthFailure> {
        let verifier = self.current().ok_or(AuthFailure::NoKeys)?;
        let cached = self.cache.read().unwrap_or_else(|e| e.into_inner()).get(token).cloned();
        if let Some(claims) = cached {
            verifier.check_time(&claims, now).map_err(AuthFailure::Invalid)?;
            return Ok(claims);
        }
        let claims = match verifier.verify(token, now) {
            Err(VerifyError::UnknownKey) if self.may_refetch() => {
                let _ = self.refresh().await;
                self.current().ok_or(AuthFailure::NoKeys)?.verify(token, now)
            }
            other => other,
        }
        .map_err(AuthFailure::Invalid)?;
        let claims = Arc::new(claims);
        let mut cache = self.cache.write().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= self.cache_size {
            cache.clear();
        }
        cache.insert(Arc::from(token), claims.clone());
        Ok(claims)
    }

    fn may_refetch(&self) -> bool {
        let mut last = lock(&self.refetched_at);
        if last.is_some_and(|t| t.elapsed() < REFETCH_SPACING) {
            return false;
        }
        *last = Some(Instant::now());
        true
    }
}
