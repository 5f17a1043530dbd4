//! The route table: longest prefix wins; built whole and swapped whole, so a
//! reload never leaves half a table in place.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::uri::{Authority, PathAndQuery, Scheme};
use axum::http::{HeaderValue, Uri};

use crate::config::{AuthMode, RouteConfig};
use crate::metrics::{GatewayMetrics, RouteStats};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RouteError {
    #[error(
        "route prefix {0:?} must be a path in canonical form: '/' first, no '//', ';', '\\', dot segments or needless %-encoding"
    )]
    Prefix(String),
    #[error("route {prefix}: upstream {upstream:?} is not http://HOST:PORT[/PATH] or inproc://NAME")]
    Upstream { prefix: String, upstream: String },
    #[error("route {prefix}: no in-process service named {name:?}")]
    UnknownLocal { prefix: String, name: String },
    #[error("two routes have the prefix {0:?}")]
    Duplicate(String),
    #[error("route {0}: timeout must be between 1 and 3600 seconds")]
    Timeout(String),
}

#[derive(Clone)]
pub enum Upstream {
    /// `host` is the `Host` header for the upstream, made once.
    Http {
        scheme: Scheme,
        authority: Authority,
        host: HeaderValue,
        base_path: String,
        http2: bool,
    },
    Local(Router),
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Http { scheme, authority, base_path, .. } => write!(f, "{scheme}://{authority}{base_path}"),
            Self::Local(_) => f.write_str("inproc"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Route {
    pub prefix: String,
    pub upstream: Upstream,
    pub auth: AuthMode,
    pub require_roles: Vec<String>,
    pub require_permissions: Vec<String>,
    pub require_verified_email: bool,
    pub strip_prefix: bool,
    pub timeout: Duration,
    /// The largest request body passed on.
    pub max_body_bytes: Option<u64>,
    /// The auth-service's own routes receive the session cookies and
    /// `Authorization`; every other upstream gets identity headers instead.
    pub forward_credentials: bool,
    /// This route's counters; attached by the gateway when the table goes live.
    pub stats: Arc<RouteStats>,
}

impl Route {
    fn matches(&self, path: &str) -> bool {
        match path.strip_prefix(self.prefix.as_str()) {
            Some(rest) => self.on_boundary(rest),
            None => false,
        }
    }

    fn matches_ignoring_case(&self, path: &str) -> bool {
        match path.get(..self.prefix.len()) {
            Some(start) if start.eq_ignore_ascii_case(&self.prefix) => self.on_boundary(&path[self.prefix.len()..]),
            _ => false,
        }
    }

    /// Whether a path going on with `rest` after the prefix is below it.
    fn on_boundary(&self, rest: &str) -> bool {
        self.prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/')
    }

    /// Whether the path sent upstream differs from the request's.
    pub fn rewrites_path(&self) -> bool {
        self.strip_prefix || matches!(&self.upstream, Upstream::Http { base_path, .. } if !base_path.is_empty())
    }

    /// The upstream's base path and the request's path as the upstream gets
    /// it: sent one after the other, then the request's query.
    pub fn target_parts<'a>(&'a self, path: &'a str) -> (&'a str, &'a str) {
        let base = match &self.upstream {
            Upstream::Http { base_path, .. } => base_path.as_str(),
            Upstream::Local(_) => "",
        };
        (base, self.upstream_path(path))
    }

    /// The path to send upstream.
    pub fn upstream_path<'a>(&self, path: &'a str) -> &'a str {
        if !self.strip_prefix {
            return path;
        }
        let rest = path.strip_prefix(self.prefix.trim_end_matches('/')).unwrap_or(path);
        if rest.is_empty() { "/" } else { rest }
    }

    /// The path and query to send upstream for a request to `uri` whose
    /// canonical path is `path`: the upstream's base path, `path` (less the
    /// prefix when stripped), the request's query. Most requests send their
    /// own, which costs no copy.
    pub fn upstream_target(&self, uri: &Uri, path: &str) -> Option<PathAndQuery> {
        if !self.rewrites_path() && path == uri.path() {
            return Some(uri.path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/")));
        }
        let (base, path) = self.target_parts(path);
        match uri.query() {
            Some(query) => format!("{base}{path}?{query}"),
            None => format!("{base}{path}"),
        }
        .parse()
        .ok()
    }
}

#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    /// Longest prefix first.
    routes: Vec<Route>,
    /// Whether any prefix has an upper-case letter.
    mixed_case: bool,
}

/// A path that matches one route as written and another in other letter
/// case: an upstream matching paths without regard to case would serve it
/// under a route the gateway did not check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CaseConflict;

impl RouteTable {
    /// Builds and validates the table. `credentials` lists the upstreams that
    /// are the auth-service itself; `locals` the in-process services by name.
    pub fn build(
        configs: &[RouteConfig],
        credentials: &[&str],
        locals: &HashMap<String, Router>,
    ) -> Result<Self, RouteError> {
        let mut routes = Vec::with_capacity(configs.len());
        for c in configs {
            if !matches!(crate::path::canonical(&c.prefix), Ok(Cow::Borrowed(_))) {
                return Err(RouteError::Prefix(c.prefix.clone()));
            }
            if !(1..=3600).contains(&c.timeout) {
                return Err(RouteError::Timeout(c.prefix.clone()));
            }
            if routes.iter().any(|r: &Route| r.prefix == c.prefix) {
                return Err(RouteError::Duplicate(c.prefix.clone()));
            }
            routes.push(Route {
                prefix: c.prefix.clone(),
                upstream: upstream(c, locals)?,
                auth: c.auth,
                require_roles: c.require_roles.clone(),
                require_permissions: c.require_permissions.clone(),
                require_verified_email: c.require_verified_email,
                strip_prefix: c.strip_prefix,
                timeout: Duration::from_secs(c.timeout),
                max_body_bytes: c.max_body_bytes,
                forward_credentials: credentials.contains(&c.upstream.as_str()),
                stats: Arc::default(),
            });
        }
        routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        let mixed_case = routes.iter().any(|r| r.prefix.bytes().any(|b| b.is_ascii_uppercase()));
        Ok(Self { routes, mixed_case })
    }

    /// Gives every route the counters `metrics` keeps for its prefix.
    pub(crate) fn attach(mut self, metrics: &GatewayMetrics) -> Self {
        for route in &mut self.routes {
            route.stats = metrics.route(&route.prefix);
        }
        self
    }

    /// The route for `path` as written (routes match with case), longest prefix first.
    pub fn find(&self, path: &str) -> Option<&Route> {
        self.routes.iter().find(|r| r.matches(path))
    }

    /// The route for a canonical `path`, unless the path in other letter
    /// case would match another route (see [`CaseConflict`]).
    pub fn route_for(&self, path: &str) -> Result<Option<&Route>, CaseConflict> {
        let found = self.find(path);
        if !self.mixed_case && !path.bytes().any(|b| b.is_ascii_uppercase()) {
            return Ok(found);
        }
        let folded = self.routes.iter().find(|r| r.matches_ignoring_case(path));
        if folded.map(|r| &r.prefix) != found.map(|r| &r.prefix) {
            return Err(CaseConflict);
        }
        Ok(found)
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}

fn upstream(c: &RouteConfig, locals: &HashMap<String, Router>) -> Result<Upstream, RouteError> {
    if let Some(name) = c.upstream.strip_prefix("inproc://") {
        return locals
            .get(name)
            .cloned()
            .map(Upstream::Local)
            .ok_or_else(|| RouteError::UnknownLocal { prefix: c.prefix.clone(), name: name.into() });
    }
    let bad = || RouteError::Upstream { prefix: c.prefix.clone(), upstream: c.upstream.clone() };
    let uri: Uri = c.upstream.parse().map_err(|_| bad())?;
    let (Some(scheme), Some(authority)) = (uri.scheme().cloned(), uri.authority().cloned()) else {
        return Err(bad());
    };
    if scheme != Scheme::HTTP || uri.query().is_some() {
        return Err(bad());
    }
    let base_path = uri.path().trim_end_matches('/').to_owned();
    let host = authority.as_str().rsplit('@').next().unwrap_or_default();
    let host = HeaderValue::from_str(host).map_err(|_| bad())?;
    Ok(Upstream::Http { scheme, authority, host, base_path, http2: c.http2 })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(routes: &[(&str, &str)]) -> RouteTable {
        let configs: Vec<RouteConfig> =
            routes.iter().map(|(p, u)| RouteConfig::new(p, u, AuthMode::Required)).collect();
        RouteTable::build(&configs, &[], &HashMap::new()).unwrap()
    }

    #[test]
    fn the_longest_matching_prefix_wins_on_segment_boundaries() {
        let t = table(&[("/api", "http://a:1"), ("/api/notes", "http://b:2"), ("/auth/", "http://c:3")]);
        let found = |p: &str| t.find(p).map(|r| r.prefix.as_str());
        assert_eq!(found("/api/notes"), Some("/api/notes"));
        assert_eq!(found("/api/notes/7"), Some("/api/notes"));
        assert_eq!(found("/api/notesx"), Some("/api"));
        assert_eq!(found("/api"), Some("/api"));
        assert_eq!(found("/auth/login"), Some("/auth/"));
        assert_eq!(found("/apis"), None);
        assert_eq!(found("/"), None);
    }

    #[test]
    fn a_path_matching_another_route_in_other_case_is_a_conflict() {
        let t = table(&[("/", "http://a:1"), ("/api/admin", "http://b:2")]);
        let prefix = |p: &str| t.route_for(p).map(|r| r.map(|r| r.prefix.as_str()));
        assert_eq!(prefix("/api/admin/users"), Ok(Some("/api/admin")));
        assert_eq!(prefix("/API/admin/users"), Err(CaseConflict));
        assert_eq!(prefix("/api/Admin"), Err(CaseConflict));
        assert_eq!(prefix("/Static/App.js"), Ok(Some("/")));
        let upper = table(&[("/API", "http://a:1")]);
        assert_eq!(upper.route_for("/api/x").map(|r| r.is_some()), Err(CaseConflict));
        assert_eq!(upper.route_for("/API/x").map(|r| r.is_some()), Ok(true));
    }

    #[test]
    fn strip_prefix_leaves_the_rest_of_the_path() {
        let mut c = RouteConfig::new("/api/notes", "http://b:2", AuthMode::Public);
        c.strip_prefix = true;
        let t = RouteTable::build(&[c], &[], &HashMap::new()).unwrap();
        let r = t.find("/api/notes/7").unwrap();
        assert_eq!(r.upstream_path("/api/notes/7"), "/7");
        assert_eq!(r.upstream_path("/api/notes"), "/");
    }

    #[test]
    fn bad_tables_are_refused_whole() {
        let build = |c: RouteConfig| RouteTable::build(&[c], &[], &HashMap::new()).unwrap_err();
        for prefix in ["api", "/a//b", "/a/../b", "/a/%61", "/a;b", "/a\\b"] {
            assert!(matches!(build(RouteConfig::new(prefix, "http://a:1", AuthMode::Public)), RouteError::Prefix(_)));
        }
        for bad in ["ftp://a:1", "a:1", "http://", "https://a:1", "http://a:1/?x=1"] {
            assert!(
                matches!(build(RouteConfig::new("/a", bad, AuthMode::Public)), RouteError::Upstream { .. }),
                "{bad}"
            );
        }
        assert!(matches!(
            build(RouteConfig::new("/a", "inproc://nope", AuthMode::Public)),
            RouteError::UnknownLocal { .. }
        ));
        let twice = [
            RouteConfig::new("/a", "http://a:1", AuthMode::Public),
            RouteConfig::new("/a", "http://b:1", AuthMode::Public),
        ];
        assert!(matches!(RouteTable::build(&twice, &[], &HashMap::new()), Err(RouteError::Duplicate(_))));
    }
}
