//! The route table: longest prefix wins; built whole and swapped whole, so a
//! reload never leaves half a table in place.

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
    #[error("route prefix {0:?} must start with '/'")]
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
    pub strip_prefix: bool,
    pub timeout: Duration,
    /// The auth-service's own routes receive the session cookies and
    /// `Authorization`; every other upstream gets identity headers instead.
    pub forward_credentials: bool,
    /// This route's counters; attached by the gateway when the table goes live.
    pub stats: Arc<RouteStats>,
}

impl Route {
    fn matches(&self, path: &str) -> bool {
        match path.strip_prefix(self.prefix.as_str()) {
            Some(rest) => self.prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'),
            None => false,
        }
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

    /// The path and query to send upstream: the upstream's base path, the
    /// request's path (less the prefix when stripped), the request's query.
    /// Most routes send the request's own, which costs no copy.
    pub fn upstream_target(&self, uri: &Uri) -> Option<PathAndQuery> {
        if !self.rewrites_path() {
            return Some(uri.path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/")));
        }
        let (base, path) = self.target_parts(uri.path());
        match uri.query() {
            Some(query) => format!("{base}{path}?{query}"),
            None => format!("{base}{path}"),
        }
        .parse()
        .ok()
    }
}

/// Whether `path` has a `.` or `..` segment, counting `%2e` as a dot and
/// `%2f`, `%5c` and `\` as separators, as some upstreams decode them.
/// Routing matches prefixes as sent; an upstream that resolved
/// `/public/../admin` would serve a path the `/admin` route guards.
pub fn has_dot_segment(path: &str) -> bool {
    let bytes = path.as_bytes();
    if !bytes.iter().any(|b| matches!(b, b'.' | b'%' | b'\\')) {
        return false;
    }
    let (mut dots, mut other, mut i) = (0, false, 0);
    while i <= bytes.len() {
        let (byte, width) = match bytes.get(i) {
            None => (b'/', 1),
            Some(b'%') => match bytes.get(i + 1..i + 3).map(|hex| hex.to_ascii_lowercase()).as_deref() {
                Some(b"2e") => (b'.', 3),
                Some(b"2f") => (b'/', 3),
                Some(b"5c") => (b'\\', 3),
                _ => (b'%', 1),
            },
            Some(byte) => (*byte, 1),
        };
        match byte {
            b'/' | b'\\' => {
                if !other && (dots == 1 || dots == 2) {
                    return true;
                }
                (dots, other) = (0, false);
            }
            b'.' => dots += 1,
            _ => other = true,
        }
        i += width;
    }
    false
}

#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    /// Longest prefix first.
    routes: Vec<Route>,
}

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
            if !c.prefix.starts_with('/') {
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
                strip_prefix: c.strip_prefix,
                timeout: Duration::from_secs(c.timeout),
                forward_credentials: credentials.contains(&c.upstream.as_str()),
                stats: Arc::default(),
            });
        }
        routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        Ok(Self { routes })
    }

    /// Gives every route the counters `metrics` keeps for its prefix.
    pub(crate) fn attach(mut self, metrics: &GatewayMetrics) -> Self {
        for route in &mut self.routes {
            route.stats = metrics.route(&route.prefix);
        }
        self
    }

    pub fn find(&self, path: &str) -> Option<&Route> {
        self.routes.iter().find(|r| r.matches(path))
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

    #[test]
    fn dot_segments_are_found_plain_or_encoded() {
        for path in
            ["/a/../b", "/a/./b", "/a/..", "/..", "/a/%2e%2E/b", "/a/.%2e", "/a/..%2fb", "/a/..%5Cb", "/a\\..\\b"]
        {
            assert!(has_dot_segment(path), "{path}");
        }
        for path in ["/", "/a/b", "/a/b.js", "/a/...", "/a/..b/c", "/.well-known/jwks.json", "/a/%2e%2e%2e", "/a/%2"] {
            assert!(!has_dot_segment(path), "{path}");
        }
    }

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
        assert!(matches!(build(RouteConfig::new("api", "http://a:1", AuthMode::Public)), RouteError::Prefix(_)));
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
