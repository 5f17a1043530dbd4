//! Token verification at the gateway: the shared `auth-tokens` verifier over
//! the auth-service's JWKS, plus a cache of verified tokens.
//!
//! The JWKS is fetched at start, refreshed in the background, refetched at
//! once (at most every few seconds) when a token names an unknown `kid`, and
//! the last good set is kept when a fetch fails. Until a first set arrives,
//! authenticated routes answer 503, not 401.
//!
//! Verified tokens are cached per serving thread (`PerThread`), so the
//! hot path of a request touches no memory another thread writes. A new key
//! set empties every thread's cache, because a key that left must not keep
//! its tokens alive.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use auth_tokens::{AccessClaims, Jwks, TokenSettings, TokenVerifier, VerifyError};
use axum::body::Body;
use axum::http::{Request, Uri};
use http_body_util::BodyExt as _;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;

use crate::identity::IdentityHeaders;
use crate::local::PerThread;
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

/// A token the gateway has verified: its claims, the identity headers made
/// from them once, and how far the revocation set has been checked for it.
#[derive(Debug)]
pub struct Verified {
    pub claims: AccessClaims,
    pub identity: IdentityHeaders,
    token: Box<str>,
    /// The revocation set's generation at the last check that found this
    /// token not revoked (`u64::MAX`: never checked).
    unrevoked_at: AtomicU64,
}

impl Verified {
    fn new(token: &str, claims: AccessClaims) -> Self {
        let identity = IdentityHeaders::new(&claims.sub, &claims.roles, &claims.sid);
        Self { claims, identity, token: token.into(), unrevoked_at: AtomicU64::new(u64::MAX) }
    }

    /// Whether this token was found not revoked when the set was at `generation`.
    pub fn unrevoked_at(&self, generation: u64) -> bool {
        self.unrevoked_at.load(Ordering::Relaxed) == generation
    }

    pub fn mark_unrevoked_at(&self, generation: u64) {
        self.unrevoked_at.store(generation, Ordering::Relaxed);
    }
}

/// One thread's cache for one authenticator, made with the key set in force.
struct ThreadCache {
    verifier: Arc<TokenVerifier>,
    entries: HashMap<u64, Arc<Verified>>,
}

pub struct Authenticator {
    source: Arc<dyn JwksSource>,
    settings: TokenSettings,
    verifier: RwLock<Option<Arc<TokenVerifier>>>,
    /// The thread caches, remade whenever `verifier` changes.
    caches: PerThread,
    /// Keys the caches by a keyed hash of the token's tail (its signature).
    hasher: RandomState,
    fetched_at: Mutex<Option<Instant>>,
    refetched_at: Mutex<Option<Instant>>,
    cache_size: usize,
}

impl Authenticator {
    /// `cache_size` bounds each serving thread's cache of verified tokens.
    pub fn new(source: Arc<dyn JwksSource>, settings: TokenSettings, cache_size: usize) -> Self {
        Self {
            source,
            settings,
            verifier: RwLock::new(None),
            caches: PerThread::new(),
            hasher: RandomState::new(),
            fetched_at: Mutex::new(None),
            refetched_at: Mutex::new(None),
            cache_size: cache_size.max(1),
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
            // Cached verdicts were made with the old keys: every thread's
            // cache is remade, empty, before its next use.
            *self.verifier.write().unwrap_or_else(|e| e.into_inner()) = Some(verifier);
            self.caches.changed();
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

    pub async fn verify(&self, token: &str, now: i64) -> Result<Arc<Verified>, AuthFailure> {
        let key = self.key(token);
        let cached = self.with_cache(|cache| {
            let hit = cache.entries.get(&key).filter(|v| *v.token == *token)?;
            Some(cache.verifier.check_time(&hit.claims, now).map(|()| hit.clone()))
        });
        match cached {
            None => return Err(AuthFailure::NoKeys),
            Some(Some(verdict)) => return verdict.map_err(AuthFailure::Invalid),
            Some(None) => {}
        }
        let verifier = self.current().ok_or(AuthFailure::NoKeys)?;
        let claims = match verifier.verify(token, now) {
            Err(VerifyError::UnknownKey) if self.may_refetch() => {
                let _ = self.refresh().await;
                self.current().ok_or(AuthFailure::NoKeys)?.verify(token, now)
            }
            other => other,
        }
        .map_err(AuthFailure::Invalid)?;
        let verified = Arc::new(Verified::new(token, claims));
        let size = self.cache_size;
        self.with_cache(|cache| {
            if cache.entries.len() >= size {
                cache.entries.clear();
            }
            cache.entries.insert(key, verified.clone());
        });
        Ok(verified)
    }

    /// A keyed hash of the token's last bytes, which are its signature:
    /// cheaper than hashing the whole token, and a collision only costs a
    /// verification, since hits are compared in full.
    fn key(&self, token: &str) -> u64 {
        let tail = &token.as_bytes()[token.len().saturating_sub(32)..];
        self.hasher.hash_one((token.len(), tail))
    }

    /// Runs `f` on this thread's cache, made (empty) first if the keys
    /// changed; `None` when there are no keys at all.
    fn with_cache<R>(&self, f: impl FnOnce(&mut ThreadCache) -> R) -> Option<R> {
        let fresh = || Some(ThreadCache { verifier: self.current()?, entries: HashMap::new() });
        self.caches.with(fresh, f)
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
