//! Token verification at the gateway: the shared `auth-tokens` verifier over
//! the auth-service's JWKS, plus a cache of verified tokens.
//!
//! The JWKS is fetched at start, refreshed in the background, refetched at
//! once (at most every few seconds) when a token names an unknown `kid`, and
//! the last good set is kept when a fetch fails. Until a first set arrives,
//! authenticated routes answer 503, not 401.
//!
//! Verified tokens are cached per serving thread, so the hot path of a
//! request touches no memory another thread writes: the cache is found by
//! the authenticator's id, and is valid while the authenticator's key
//! generation (one atomic read) has not moved. A new key set clears every
//! thread's cache, because a key that left must not keep its tokens alive.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use auth_tokens::{AccessClaims, Jwks, TokenSettings, TokenVerifier, VerifyError};
use axum::body::Body;
use axum::http::{Request, Uri};
use http_body_util::BodyExt as _;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;

use crate::identity::IdentityHeaders;
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

/// One thread's cache for one authenticator.
struct ThreadCache {
    owner: Weak<()>,
    id: u64,
    generation: u64,
    verifier: Arc<TokenVerifier>,
    entries: HashMap<u64, Arc<Verified>>,
}

thread_local! {
    static CACHES: RefCell<Vec<ThreadCache>> = const { RefCell::new(Vec::new()) };
}

pub struct Authenticator {
    source: Arc<dyn JwksSource>,
    settings: TokenSettings,
    verifier: RwLock<Option<Arc<TokenVerifier>>>,
    /// Moves whenever `verifier` changes; thread caches of another generation are stale.
    generation: AtomicU64,
    id: u64,
    /// Thread caches hold a weak reference, so those of a dropped authenticator can go.
    alive: Arc<()>,
    /// Keys the caches by a keyed hash of the token's tail (its signature).
    hasher: RandomState,
    fetched_at: Mutex<Option<Instant>>,
    refetched_at: Mutex<Option<Instant>>,
    cache_size: usize,
}

impl Authenticator {
    /// `cache_size` bounds each serving thread's cache of verified tokens.
    pub fn new(source: Arc<dyn JwksSource>, settings: TokenSettings, cache_size: usize) -> Self {
        static IDS: AtomicU64 = AtomicU64::new(0);
        Self {
            source,
            settings,
            verifier: RwLock::new(None),
            generation: AtomicU64::new(0),
            id: IDS.fetch_add(1, Ordering::Relaxed),
            alive: Arc::new(()),
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
            // Cached verdicts were made with the old keys: moving the
            // generation empties every thread's cache before its next use.
            *self.verifier.write().unwrap_or_else(|e| e.into_inner()) = Some(verifier);
            self.generation.fetch_add(1, Ordering::Release);
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

    /// Runs `f` on this thread's cache, made or emptied first if the keys
    /// changed; `None` when there are no keys at all.
    fn with_cache<R>(&self, f: impl FnOnce(&mut ThreadCache) -> R) -> Option<R> {
        let generation = self.generation.load(Ordering::Acquire);
        CACHES.with(|caches| {
            let mut caches = caches.borrow_mut();
            let index = match caches.iter().position(|c| c.id == self.id) {
                Some(i) => i,
                None => {
                    caches.retain(|c| c.owner.strong_count() > 0);
                    caches.push(ThreadCache {
                        owner: Arc::downgrade(&self.alive),
                        id: self.id,
                        generation,
                        verifier: self.current()?,
                        entries: HashMap::new(),
                    });
                    caches.len() - 1
                }
            };
            let cache = &mut caches[index];
            if cache.generation != generation {
                cache.verifier = self.current()?;
                cache.entries.clear();
                cache.generation = generation;
            }
            Some(f(cache))
        })
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
