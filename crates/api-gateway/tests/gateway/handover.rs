//! Revocations the auth-service hands over in `Gatehouse-Revoked`: applied
//! before its answer goes on, from the auth-service only, never shown to
//! clients.

use std::collections::HashMap;

use api_gateway::{AuthMode, RouteTable};
use axum::Router;
use axum::extract::Query;
use axum::http::HeaderMap;
use axum::routing::get;

use crate::helpers::*;

/// An upstream answering `/…/bye?entry=…` with `Gatehouse-Revoked: <entry>`.
fn handing_over() -> Router {
    let bye = |Query(q): Query<HashMap<String, String>>| async move {
        let mut headers = HeaderMap::new();
        headers.insert("gatehouse-revoked", q["entry"].parse().unwrap());
        (headers, "bye")
    };
    Router::new().route("/auth/bye", get(bye)).route("/public/bye", get(bye))
}

/// The default table, with `/auth` (the auth-service's routes) and
/// `/public` going to `upstream`, which hands revocations over.
async fn harness_handing_over(fast_path: bool) -> Harness {
    let h = echo_harness(on_path(fast_path)).await;
    let upstream = serve(handing_over()).await;
    let mut routes = default_routes(&h.upstream);
    routes.retain(|r| r.prefix != "/public");
    routes.push(route("/auth", &upstream, AuthMode::Public));
    routes.push(route("/public", &upstream, AuthMode::Public));
    h.gateway.replace_routes(RouteTable::build(&routes, &[upstream.as_str()], &HashMap::new()).unwrap());
    h
}

async fn bye(h: &Harness, path: &str, entry: &str) {
    let answer = h.get(&format!("{path}?entry={}", entry.replace(' ', "%20"))).send().await.unwrap();
    assert_eq!(answer.status(), 200);
    assert!(answer.headers().get("gatehouse-revoked").is_none(), "the header reached the client");
}

#[tokio::test]
async fn a_revocation_the_auth_service_hands_over_is_enforced_on_the_next_request() {
    for fast_path in BOTH_PATHS {
        let h = harness_handing_over(fast_path).await;
        let path = path_name(fast_path);
        let (session_token, session) = h.token();
        let (user_token, user) = h.token();
        for token in [&session_token, &user_token] {
            assert_eq!(h.get("/api/x").bearer_auth(token).send().await.unwrap().status(), 200, "{path}");
        }
        bye(&h, "/auth/bye", &format!("session {} {}", session.sid, session.exp)).await;
        assert_unauthenticated(h.get("/api/x").bearer_auth(&session_token).send().await.unwrap()).await;
        bye(&h, "/auth/bye", &format!("user {} {} {}", user.sub, user.iat, user.exp)).await;
        assert_stale(h.get("/api/x").bearer_auth(&user_token).send().await.unwrap()).await;
    }
}

#[tokio::test]
async fn a_revocation_from_any_other_upstream_is_ignored_and_never_reaches_the_client() {
    for fast_path in BOTH_PATHS {
        let h = echo_harness(on_path(fast_path)).await;
        let upstream = serve(handing_over()).await;
        let mut routes = default_routes(&h.upstream);
        routes.retain(|r| r.prefix != "/public");
        routes.push(route("/public", &upstream, AuthMode::Public));
        // The auth-service is elsewhere: `/public`'s upstream is just a service.
        h.gateway.replace_routes(RouteTable::build(&routes, &["http://127.0.0.1:9"], &HashMap::new()).unwrap());
        let (token, claims) = h.token();
        bye(&h, "/public/bye", &format!("session {} {}", claims.sid, claims.exp)).await;
        bye(&h, "/public/bye", &format!("user {} {} {}", claims.sub, claims.iat, claims.exp)).await;
        let status = h.get("/api/x").bearer_auth(&token).send().await.unwrap().status();
        assert_eq!(status, 200, "{}: a service revoked a session", path_name(fast_path));
    }
}
