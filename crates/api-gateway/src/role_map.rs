//! What each role allows, for tokens too large to carry their permissions
//! (`permissions_by_role`): fetched from the auth-service at start and
//! every [`REFRESH`], the last good map kept when a fetch fails, for at
//! most [`MAX_AGE`]. Before a first map arrives, and once the last one is
//! older than that, such a token on a route that requires permissions gets
//! 503 `roles_unavailable`, never a guess.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use axum::body::Body;
use axum::http::{Request, Uri, header};
use http_body_util::BodyExt as _;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use serde::Deserialize;

/// How often the map is fetched again: a permission taken from a role
/// still counts for such tokens for at most this long (the role's holders'
/// tokens are stale at once, but their refreshed ones rely on the map).
pub const REFRESH: Duration = Duration::from_secs(5);

/// How long a map stands while fetches fail: a few missed refreshes ride
/// out a restart of the auth-service; longer, and a permission taken away
/// could keep counting for as long as the outage lasts.
pub const MAX_AGE: Duration = Duration::from_secs(3 * REFRESH.as_secs());

/// The longest one fetch may take, answer and body.
pub const FETCH_LIMIT: Duration = Duration::from_secs(4);

/// Role name → its permissions.
pub type Permissions = BTreeMap<String, Vec<String>>;

#[async_trait]
pub trait RoleMapSource: Send + Sync + 'static {
    async fn fetch(&self) -> Result<Permissions, String>;
}

/// The auth-service's `/auth/gateway/roles`, with the gateway's credential.
pub struct HttpRoleMap {
    url: Uri,
    credential: String,
    client: Client<HttpConnector, Body>,
}

impl HttpRoleMap {
    pub fn new(auth_service_url: &str, credential: String) -> Result<Self, String> {
        let url = format!("{}/auth/gateway/roles", auth_service_url.trim_end_matches('/'));
        let url = url.parse().map_err(|_| format!("{auth_service_url:?} is not a URL"))?;
        Ok(Self { url, credential, client: Client::builder(hyper_util::rt::TokioExecutor::new()).build_http() })
    }
}

#[derive(Deserialize)]
struct Answer {
    roles: Permissions,
}

#[async_trait]
impl RoleMapSource for HttpRoleMap {
    async fn fetch(&self) -> Result<Permissions, String> {
        let request = Request::get(self.url.clone())
            .header(header::AUTHORIZATION, format!("Bearer {}", self.credential))
            .body(Body::empty())
            .map_err(|e| e.to_string())?;
        // Bounded as a whole, body included, by [`RoleMap::refresh`].
        let response = self.client.request(request).await.map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("status {}", response.status()));
        }
        let body = response.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
        serde_json::from_slice::<Answer>(&body).map(|a| a.roles).map_err(|e| e.to_string())
    }
}

/// A fetch that runs on its own.
pub type Fetching = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Permissions, String>> + Send>>;

type Fetch = dyn Fn() -> Fetching + Send + Sync;

/// The map of an auth-service in the same process.
pub struct LocalRoleMap(Box<Fetch>);

impl LocalRoleMap {
    pub fn new(fetch: impl Fn() -> Fetching + Send + Sync + 'static) -> Self {
        Self(Box::new(fetch))
    }
}

#[async_trait]
impl RoleMapSource for LocalRoleMap {
    async fn fetch(&self) -> Result<Permissions, String> {
        (self.0)().await
    }
}

pub struct RoleMap {
    source: Arc<dyn RoleMapSource>,
    /// The last good map and when it was fetched.
    current: RwLock<Option<(Arc<Permissions>, Instant)>>,
}

impl RoleMap {
    pub fn new(source: Arc<dyn RoleMapSource>) -> Self {
        Self { source, current: RwLock::new(None) }
    }

    /// Fetches the map; on failure the previous one stays in force until
    /// it is [`MAX_AGE`] old.
    pub async fn refresh(&self) -> Result<(), String> {
        // The map is as old as the question: a slow answer vouches for less.
        let asked = Instant::now();
        let fetched = match tokio::time::timeout(FETCH_LIMIT, self.source.fetch()).await {
            Ok(fetched) => fetched,
            Err(_) => Err(format!("no answer within {FETCH_LIMIT:?}")),
        };
        let map = fetched.inspect_err(|error| {
            tracing::warn!(%error, "role map fetch failed; keeping the last good one for at most {MAX_AGE:?}");
        })?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some((Arc::new(map), asked));
        Ok(())
    }

    /// Refreshes every [`REFRESH`] for as long as the runtime lives.
    pub fn spawn_refresher(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let map = self.clone();
        tokio::spawn(async move {
            loop {
                let _ = map.refresh().await;
                tokio::time::sleep(REFRESH).await;
            }
        })
    }

    /// Every permission of `roles`; `None` before any map arrived or once
    /// the last one is too old to vouch for.
    pub fn permissions_of(&self, roles: &[String]) -> Option<BTreeSet<String>> {
        self.permissions_at(roles, Instant::now())
    }

    fn permissions_at(&self, roles: &[String], now: Instant) -> Option<BTreeSet<String>> {
        let (map, fetched) = self.current.read().unwrap_or_else(|e| e.into_inner()).clone()?;
        if now.saturating_duration_since(fetched) > MAX_AGE {
            return None;
        }
        Some(roles.iter().filter_map(|r| map.get(r)).flatten().cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn permissions_are_the_union_of_the_roles_and_unknown_roles_give_none() {
        let map = RoleMap::new(Arc::new(LocalRoleMap::new(|| {
            Box::pin(async {
                Ok(Permissions::from([
                    ("a".to_owned(), vec!["x:read".to_owned(), "y:read".to_owned()]),
                    ("b".to_owned(), vec!["y:read".to_owned(), "z:write".to_owned()]),
                ]))
            })
        })));
        assert_eq!(map.permissions_of(&["a".into()]), None, "no map yet");
        map.refresh().await.unwrap();
        let both = map.permissions_of(&["a".into(), "b".into(), "gone".into()]).unwrap();
        assert_eq!(both.into_iter().collect::<Vec<_>>(), ["x:read", "y:read", "z:write"]);
        assert!(map.permissions_of(&["gone".into()]).unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_map_that_cannot_be_refreshed_stops_vouching_after_max_age() {
        let fails = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let source = {
            let fails = fails.clone();
            LocalRoleMap::new(move || {
                let fails = fails.load(std::sync::atomic::Ordering::SeqCst);
                Box::pin(async move {
                    match fails {
                        true => Err("refused".to_owned()),
                        false => Ok(Permissions::from([("a".to_owned(), vec!["x:read".to_owned()])])),
                    }
                })
            })
        };
        let map = RoleMap::new(Arc::new(source));
        map.refresh().await.unwrap();
        fails.store(true, std::sync::atomic::Ordering::SeqCst);
        assert!(map.refresh().await.is_err());
        let a = ["a".to_owned()];
        let now = Instant::now();
        assert!(map.permissions_at(&a, now + REFRESH * 2).is_some(), "a failed fetch keeps the last map");
        assert_eq!(map.permissions_at(&a, now + MAX_AGE + REFRESH), None, "kept past its age");
        fails.store(false, std::sync::atomic::Ordering::SeqCst);
        map.refresh().await.unwrap();
        assert!(map.permissions_of(&a).is_some(), "a good fetch vouches again");
    }

    #[tokio::test(start_paused = true)]
    async fn a_fetch_that_never_finishes_is_given_up_and_the_next_one_runs() {
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let source = {
            let calls = calls.clone();
            LocalRoleMap::new(move || {
                let first = calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0;
                Box::pin(async move {
                    if first {
                        std::future::pending::<()>().await;
                    }
                    Ok(Permissions::from([("a".to_owned(), vec!["x:read".to_owned()])]))
                })
            })
        };
        let map = RoleMap::new(Arc::new(source));
        let hung = map.refresh().await;
        assert!(hung.unwrap_err().contains("no answer"), "a hung fetch held the refresher");
        map.refresh().await.unwrap();
        assert!(map.permissions_of(&["a".to_owned()]).is_some());
    }
}
