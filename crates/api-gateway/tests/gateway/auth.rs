//! Authentication at the gateway: verification, revocation, CSRF, roles.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use api_gateway::{AuthMode, HttpJwks};
use auth_core::{Clock, ManualClock};
use auth_events::RevocationFeed as _;
use auth_tokens::{AccessClaims, KeyRing, b64url};
use serde_json::json;
use time::Duration;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::helpers::*;

#[tokio::test]
async fn a_valid_token_by_bearer_or_cookie_passes() {
    let h = harness().await;
    let (token, claims) = h.token();
    let by_bearer = h.get("/api/things").bearer_auth(&token).send().await.unwrap();
    assert_eq!(by_bearer.status(), 200);
    assert_eq!(seen(&json(by_bearer).await, "x-user-id").as_deref(), Some(claims.sub.as_str()));
    let by_cookie = h.get("/api/things").header("cookie", format!("__Host-access_token={token}")).send().await.unwrap();
    assert_eq!(by_cookie.status(), 200);
}

#[tokio::test]
async fn no_token_is_401_with_a_plain_bearer_challenge() {
    let h = harness().await;
    let response = h.get("/api/things").send().await.unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    assert_eq!(json(response).await["error"]["code"], "unauthenticated");
}

#[tokio::test]
async fn forged_expired_and_wrong_audience_tokens_get_the_same_401() {
    let h = harness().await;
    let (token, claims) = h.token();
    let mut forged = token.clone().into_bytes();
    let last = forged.len() - 3;
    forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
    let attacker = KeyRing::generate(h.clock.unix());
    let cases = vec![
        String::from_utf8(forged).unwrap(),
        h.sign(&AccessClaims { aud: "other-api".into(), ..claims.clone() }),
        h.sign(&AccessClaims { iss: "https://evil.example".into(), ..claims.clone() }),
        auth_tokens::TokenSigner::new(&attacker).sign(&claims).unwrap(),
        format!("{}.{}.", b64url(br#"{"alg":"none","typ":"at+jwt"}"#), token.split('.').nth(1).unwrap()),
        "not-a-token".to_owned(),
    ];
    for bad in cases {
        assert_unauthenticated(h.get("/api/x").bearer_auth(&bad).send().await.unwrap()).await;
    }
    h.clock.advance(Duration::seconds(661));
    assert_unauthenticated(h.get("/api/x").bearer_auth(&token).send().await.unwrap()).await;
}

#[tokio::test]
async fn a_token_with_a_critical_header_extension_is_refused_on_both_paths() {
    for fast_path in BOTH_PATHS {
        let h = echo_harness(on_path(fast_path)).await;
        let (_, claims) = h.token();
        let (control, critical) = {
            let ring = h.ring.lock().unwrap();
            let key = jsonwebtoken::EncodingKey::from_ed_der(&ring.active().pkcs8_der());
            let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
            header.typ = Some("at+jwt".into());
            header.kid = Some(ring.active().kid.clone());
            let control = jsonwebtoken::encode(&header, &claims, &key).unwrap();
            header.crit = Some(vec!["exp".into()]);
            (control, jsonwebtoken::encode(&header, &claims, &key).unwrap())
        };
        assert_eq!(h.get("/api/x").bearer_auth(&control).send().await.unwrap().status(), 200, "the control token");
        let cookie = format!("__Host-access_token={critical}");
        assert_unauthenticated(h.get("/api/x").bearer_auth(&critical).send().await.unwrap()).await;
        assert_unauthenticated(h.get("/api/x").header("cookie", cookie).send().await.unwrap()).await;
    }
}

#[tokio::test]
async fn a_revoked_session_or_user_is_refused_on_the_very_next_request() {
    let h = harness().await;
    let (token, claims) = h.token();
    assert_eq!(h.get("/api/x").bearer_auth(&token).send().await.unwrap().status(), 200);
    h.feed.set().revoke_session(&claims.sid, h.clock.unix() + 660);
    assert_unauthenticated(h.get("/api/x").bearer_auth(&token).send().await.unwrap()).await;

    let (other, other_claims) = h.token();
    assert_eq!(h.get("/api/x").bearer_auth(&other).send().await.unwrap().status(), 200);
    h.feed.set().revoke_user(&other_claims.sub, h.clock.unix(), h.clock.unix() + 660);
    assert_stale(h.get("/api/x").bearer_auth(&other).send().await.unwrap()).await;
    // A token issued after the cut-off stands.
    h.clock.advance(Duration::seconds(2));
    let fresh = h.sign(&AccessClaims {
        iat: h.clock.unix(),
        nbf: h.clock.unix(),
        sid: uuid::Uuid::new_v4().to_string(),
        ..other_claims
    });
    assert_eq!(h.get("/api/x").bearer_auth(&fresh).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn a_revocation_feed_that_is_not_current_fails_closed() {
    let h = harness().await;
    let (token, _) = h.token();
    h.feed.broken.store(true, Ordering::SeqCst);
    let response = h.get("/api/x").bearer_auth(&token).send().await.unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(json(response).await["error"]["code"], "revocation_unavailable");
    assert_eq!(h.get("/public/x").send().await.unwrap().status(), 200, "public routes need no revocations");
    h.feed.broken.store(false, Ordering::SeqCst);
    assert_eq!(h.get("/api/x").bearer_auth(&token).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn without_any_jwks_authenticated_routes_are_503_not_401() {
    let upstream = serve(echo_upstream()).await;
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let clock = Arc::new(ManualClock::starting_now());
    let ring = Arc::new(Mutex::new(KeyRing::generate(clock.unix())));
    let routes = vec![route("/api", &upstream, AuthMode::Required), route("/public", &upstream, AuthMode::Public)];
    let h = harness_full(routes, upstream, Arc::new(HttpJwks::new(&closed).unwrap()), clock, ring).await;
    let (token, _) = h.token();
    let response = h.get("/api/x").bearer_auth(&token).send().await.unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(json(response).await["error"]["code"], "jwks_unavailable");
    assert_eq!(h.get("/readyz").send().await.unwrap().status(), 503);
    assert_eq!(h.get("/public/x").send().await.unwrap().status(), 200);
}

/// A gateway that fetches its JWKS over HTTP from a server showing the
/// live keys of the returned ring, with `/api` required.
async fn harness_with_http_jwks() -> (Harness, Arc<Mutex<KeyRing>>, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::starting_now());
    let ring = Arc::new(Mutex::new(KeyRing::generate(clock.unix())));
    let jwks_server = {
        let (ring, clock) = (ring.clone(), clock.clone());
        axum::Router::new().route(
            "/.well-known/jwks.json",
            axum::routing::get(move || {
                let jwks = ring.lock().unwrap().jwks(clock.unix(), 660);
                async move { axum::Json(jwks) }
            }),
        )
    };
    let auth_url = serve(jwks_server).await;
    let upstream = serve(echo_upstream()).await;
    let routes = vec![route("/api", &upstream, AuthMode::Required)];
    let h =
        harness_full(routes, upstream, Arc::new(HttpJwks::new(&auth_url).unwrap()), clock.clone(), ring.clone()).await;
    (h, ring, clock)
}

#[tokio::test]
async fn the_jwks_is_fetched_over_http_and_refetched_for_an_unknown_kid() {
    let (h, ring, clock) = harness_with_http_jwks().await;
    let (old, _) = h.token();
    assert_eq!(h.get("/api/x").bearer_auth(&old).send().await.unwrap().status(), 200);
    ring.lock().unwrap().rotate(clock.unix(), 660);
    let (new, _) = h.token();
    assert_eq!(h.get("/api/x").bearer_auth(&new).send().await.unwrap().status(), 200, "unknown kid not refetched");
    assert_eq!(h.get("/api/x").bearer_auth(&old).send().await.unwrap().status(), 200, "retired key dropped early");
    assert_eq!(h.get("/readyz").send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn a_key_that_leaves_the_jwks_takes_its_cached_tokens_with_it() {
    let (h, ring, clock) = harness_with_http_jwks().await;
    let (old, _) = h.token();
    for _ in 0..2 {
        assert_eq!(h.get("/api/x").bearer_auth(&old).send().await.unwrap().status(), 200);
    }
    // No overlap: the old key is gone from the ring and the JWKS at once.
    ring.lock().unwrap().rotate(clock.unix(), 0);
    h.gateway.authenticator().refresh().await.unwrap();
    assert_unauthenticated(h.get("/api/x").bearer_auth(&old).send().await.unwrap()).await;
    let (new, _) = h.token();
    assert_eq!(h.get("/api/x").bearer_auth(&new).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn cookie_requests_that_change_state_need_a_csrf_token_of_their_session() {
    let h = harness().await;
    let (token, claims) = h.token();
    let cookie = format!("__Host-access_token={token}");
    let missing = h.post("/api/x").header("cookie", &cookie).send().await.unwrap();
    assert_eq!(missing.status(), 403);
    assert_eq!(json(missing).await["error"]["code"], "csrf_failed");

    let other_session = h.csrf.mint("another-session");
    let foreign = h
        .post("/api/x")
        .header("cookie", format!("{cookie}; __Host-csrf_token={other_session}"))
        .header("x-csrf-token", &other_session)
        .send()
        .await
        .unwrap();
    assert_eq!(foreign.status(), 403);

    let cross_site =
        h.cookie_post("/api/x", &token, &claims).header("sec-fetch-site", "cross-site").send().await.unwrap();
    assert_eq!(cross_site.status(), 403);
    let evil_origin =
        h.cookie_post("/api/x", &token, &claims).header("origin", "https://evil.example").send().await.unwrap();
    assert_eq!(evil_origin.status(), 403);

    let ok = h.cookie_post("/api/x", &token, &claims).json(&json!({"a": 1})).send().await.unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(h.post("/api/x").bearer_auth(&token).send().await.unwrap().status(), 200, "bearer needs no CSRF");
    let safe = h.get("/api/x").header("cookie", &cookie).send().await.unwrap();
    assert_eq!(safe.status(), 200, "GET needs no CSRF");
}

#[tokio::test]
async fn required_roles_are_any_of_and_403_when_missing() {
    let h = harness().await;
    let (viewer, _) = h.token();
    let response = h.get("/admin/panel").bearer_auth(&viewer).send().await.unwrap();
    assert_eq!(response.status(), 403);
    assert_eq!(json(response).await["error"]["code"], "forbidden");
    let admin = h.sign(&AccessClaims { roles: vec!["admin".into()], ..h.claims() });
    let response = h.get("/admin/panel").bearer_auth(&admin).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(seen(&json(response).await, "x-user-roles").as_deref(), Some("admin"));
}

#[tokio::test]
async fn required_permissions_are_all_of_and_the_refusal_names_none() {
    let upstream = serve(echo_upstream()).await;
    let mut notes = route("/notes", &upstream, AuthMode::Required);
    notes.require_permissions = vec!["notes:read".into(), "notes:write".into()];
    let h = harness_with(vec![notes], upstream).await;
    let with = |permissions: &[&str]| {
        let permissions = permissions.iter().map(|p| (*p).to_owned()).collect();
        h.sign(&AccessClaims { permissions, roles: vec!["notes-admin".into()], ..h.claims() })
    };
    for short in [with(&[]), with(&["notes:read"]), with(&["notes:write", "notes:readx"])] {
        let response = h.get("/notes/1").bearer_auth(&short).send().await.unwrap();
        assert_eq!(response.status(), 403);
        let body = json(response).await;
        assert_eq!(body["error"]["code"], "forbidden");
        let said = body.to_string();
        assert!(!said.contains("notes:") && !said.contains("notes-admin"), "names nothing: {said}");
    }
    let enough = with(&["billing:read", "notes:read", "notes:write"]);
    assert_eq!(h.get("/notes/1").bearer_auth(&enough).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn a_token_carrying_roles_only_is_judged_by_the_role_map_and_never_without_one() {
    let upstream = serve(echo_upstream()).await;
    let mut notes = route("/notes", &upstream, AuthMode::Required);
    notes.require_permissions = vec!["notes:write".into()];
    let h = harness_with(vec![notes, route("/api", &upstream, AuthMode::Required)], upstream).await;
    let big = |roles: &[&str]| {
        let roles = roles.iter().map(|r| (*r).to_owned()).collect();
        h.sign(&AccessClaims { roles, permissions: vec![], permissions_by_role: true, ..h.claims() })
    };
    let writer = big(&["user", "writer"]);
    // No map yet: neither a guess nor a 403, but "try again".
    let unknown = h.get("/notes/1").bearer_auth(&writer).send().await.unwrap();
    assert_eq!(unknown.status(), 503);
    assert_eq!(json(unknown).await["error"]["code"], "roles_unavailable");
    assert_eq!(h.get("/api/x").bearer_auth(&writer).send().await.unwrap().status(), 200, "no permission asked");

    let map = |writer: &[&str]| {
        let writer = writer.iter().map(|p| (*p).to_owned()).collect();
        Some(Permissions::from([("user".to_owned(), vec!["notes:read".to_owned()]), ("writer".to_owned(), writer)]))
    };
    *h.role_table.lock().unwrap() = map(&["notes:write"]);
    h.roles.refresh().await.unwrap();
    assert_eq!(h.get("/notes/1").bearer_auth(&writer).send().await.unwrap().status(), 200);
    assert_eq!(h.get("/notes/1").bearer_auth(big(&["user"])).send().await.unwrap().status(), 403);
    // The map changes, and with it the verdict; a failed fetch keeps the last map.
    *h.role_table.lock().unwrap() = map(&[]);
    h.roles.refresh().await.unwrap();
    assert_eq!(h.get("/notes/1").bearer_auth(&writer).send().await.unwrap().status(), 403);
    *h.role_table.lock().unwrap() = None;
    assert!(h.roles.refresh().await.is_err());
    assert_eq!(h.get("/notes/1").bearer_auth(&writer).send().await.unwrap().status(), 403);
    // A token that carries permissions is judged by them alone.
    let small = h.sign(&AccessClaims { permissions: vec!["notes:write".into()], ..h.claims() });
    assert_eq!(h.get("/notes/1").bearer_auth(&small).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn a_route_may_require_a_verified_email_whichever_path_serves_it() {
    let upstream = serve(echo_upstream()).await;
    let mut verified_only = route("/verified", &upstream, AuthMode::Required);
    verified_only.require_verified_email = true;
    let h = harness_with(vec![verified_only, route("/api", &upstream, AuthMode::Required)], upstream).await;
    let unverified = h.sign(&AccessClaims { email_verified: false, ..h.claims() });
    let verified = h.sign(&h.claims());
    for request in [|h: &Harness| h.get("/verified/x"), |h: &Harness| h.post("/verified/x")] {
        let refused = request(&h).bearer_auth(&unverified).send().await.unwrap();
        assert_eq!(refused.status(), 403);
        assert_eq!(json(refused).await["error"]["code"], "email_not_verified");
        assert_eq!(request(&h).bearer_auth(&verified).send().await.unwrap().status(), 200);
    }
    assert_eq!(h.get("/api/x").bearer_auth(&unverified).send().await.unwrap().status(), 200, "other routes do not ask");
}

#[tokio::test]
async fn metrics_show_failures_by_reason_revocations_and_jwks_age() {
    let h = harness().await;
    let (token, claims) = h.token();
    h.get("/api/x").bearer_auth(&token).send().await.unwrap();
    h.get("/api/x").bearer_auth("garbage").send().await.unwrap();
    h.feed.set().revoke_session(&claims.sid, h.clock.unix() + 600);
    h.get("/api/x").bearer_auth(&token).send().await.unwrap();
    let refused = h.get("/metrics").send().await.unwrap();
    assert_eq!(refused.status(), 404, "route names and counts are no one's business without the token");
    assert_eq!(h.get("/metrics").bearer_auth("a guess").send().await.unwrap().status(), 404);
    let text = h.get("/metrics").bearer_auth(METRICS_TOKEN).send().await.unwrap().text().await.unwrap();
    for line in [
        "gatehouse_gateway_requests_total{route=\"/api\",status=\"200\"} 1",
        "gatehouse_gateway_requests_total{route=\"/api\",status=\"401\"} 2",
        "gatehouse_gateway_auth_failures_total{reason=\"malformed\"} 1",
        "gatehouse_gateway_auth_failures_total{reason=\"revoked\"} 1",
        "gatehouse_gateway_revocations 1",
        "gatehouse_gateway_upstream_duration_seconds_count{route=\"/api\"} 1",
    ] {
        assert!(text.contains(line), "missing {line}\n{text}");
    }
    assert!(text.contains("gatehouse_gateway_jwks_age_seconds "));
    assert!(!text.contains("gatehouse_gateway_jwks_age_seconds -1"));
}

#[tokio::test]
async fn a_cookie_websocket_handshake_from_another_site_is_refused() {
    for fast_path in BOTH_PATHS {
        let h = echo_harness(on_path(fast_path)).await;
        let (token, _) = h.token();
        let handshake = |origin: &str| {
            format!(
                "GET /api/upgrade HTTP/1.1\r\nhost: gw\r\ncookie: __Host-access_token={token}\r\norigin: {origin}\r\n\
                 {WEBSOCKET}\r\n"
            )
        };
        let on = path_name(fast_path);
        let foreign = first_answer(&h, handshake("https://evil.example.com").as_bytes()).await;
        assert!(foreign.starts_with("HTTP/1.1 403") && foreign.contains("csrf_failed"), "{on}: {foreign}");
        let mut ours = TcpStream::connect(h.url.trim_start_matches("http://")).await.unwrap();
        ours.write_all(handshake(ISSUER).as_bytes()).await.unwrap();
        let mut head = [0u8; 12];
        ours.read_exact(&mut head).await.unwrap();
        assert_eq!(&head, b"HTTP/1.1 101", "{on}");
    }
}
