//! Route lookup and live reload.

use std::collections::HashMap;

use api_gateway::{AuthMode, RouteTable};

use crate::helpers::*;

#[tokio::test]
async fn no_route_is_a_404_json() {
    let h = harness().await;
    let response = h.get("/nowhere").send().await.unwrap();
    assert_eq!(response.status(), 404);
    assert_eq!(json(response).await["error"]["code"], "no_route");
    assert_eq!(h.get("/apis").send().await.unwrap().status(), 404, "prefixes match whole segments");
}

#[tokio::test]
async fn the_longest_prefix_wins_and_strip_prefix_rewrites_the_path() {
    let upstream = serve(echo_upstream()).await;
    let mut stripped = route("/public/stripped", &upstream, AuthMode::Public);
    stripped.strip_prefix = true;
    let routes =
        vec![route("/public", &upstream, AuthMode::Public), stripped, route("/api", &upstream, AuthMode::Required)];
    let h = harness_with(routes, upstream).await;
    let echo = json(h.get("/public/stripped/7?x=1&y=2").send().await.unwrap()).await;
    assert_eq!(echo["path"], "/7");
    assert_eq!(echo["query"], "x=1&y=2");
    let echo = json(h.get("/public/other").send().await.unwrap()).await;
    assert_eq!(echo["path"], "/public/other");
}

#[tokio::test]
async fn routes_are_replaced_live_and_kept_alive_connections_carry_on() {
    let h = harness().await;
    assert_eq!(h.get("/public/x").send().await.unwrap().status(), 200);
    assert_eq!(h.get("/v2/x").send().await.unwrap().status(), 404);
    let table = RouteTable::build(&[route("/v2", &h.upstream, AuthMode::Public)], &[], &HashMap::new()).unwrap();
    h.gateway.replace_routes(table);
    // The same client (and pooled connection) sees the new table at once.
    assert_eq!(h.get("/v2/x").send().await.unwrap().status(), 200);
    assert_eq!(h.get("/public/x").send().await.unwrap().status(), 404);
}

#[tokio::test]
async fn the_gateway_answers_its_own_health_endpoints() {
    let h = harness().await;
    assert_eq!(h.get("/healthz").send().await.unwrap().status(), 200);
    assert_eq!(h.get("/readyz").send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn paths_with_dot_segments_are_refused_whichever_path_serves_them() {
    let h = harness().await;
    // Sent raw: an HTTP client library would resolve the dots itself.
    for path in ["/public/../api/x", "/public/%2e%2E/api/x", "/public/..%2fapi/x", "/public/./x"] {
        for request in [
            format!("GET {path} HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n"),
            format!("POST {path} HTTP/1.1\r\nhost: gw\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"),
        ] {
            let answer = one_connection(&h, request.as_bytes()).await;
            assert!(answer.starts_with("HTTP/1.1 400") && answer.contains("invalid_path"), "{request}: {answer}");
        }
    }
    let fine = one_connection(&h, b"GET /public/a..b/c.js HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n").await;
    assert!(fine.starts_with("HTTP/1.1 200"), "{fine}");
}

/// Seed paths known to trouble matchers; proptest explores around them.
const PATH_CORPUS: [&str; 12] = [
    "/api",
    "/api/",
    "/apix",
    "/API/x",
    "/admin/../api",
    "//api",
    "/api%2f..",
    "/",
    "",
    "/adm\u{0}in",
    "/api/\u{202E}x",
    "/public/./x",
];

use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// The route matcher takes any path without panicking, and a match is
    /// always a whole-segment prefix of the path.
    #[test]
    fn any_path_matches_a_whole_segment_prefix_or_nothing(
        path in prop_oneof![
            proptest::sample::select(PATH_CORPUS.to_vec()).prop_map(|p: &str| p.to_owned()),
            "/[a-zA-Z/._%-]{0,40}",
            ".{0,60}",
        ]
    ) {
        let table = RouteTable::build(&default_routes("http://127.0.0.1:9"), &[], &HashMap::new()).unwrap();
        if let Ok(Some(route)) = table.route_for(&path) {
            let prefix = route.prefix.as_str();
            prop_assert!(
                prefix == "/" || path == prefix || path.starts_with(&format!("{prefix}/")),
                "{:?} matched {:?}", path, prefix
            );
        }
    }
}
