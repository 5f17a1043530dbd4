//! A client's broken request is the client's error: 400 or 413, never a
//! 502 blamed on the upstream.

use api_gateway::{AuthMode, RouteConfig};
use axum::Router;
use axum::body::Bytes;
use axum::extract::DefaultBodyLimit;
use axum::routing::post;

use crate::helpers::*;

/// An upstream taking bodies of at most 1 KiB, as the auth-service takes 1 MiB.
async fn small_bodies_upstream() -> String {
    let app = Router::new().route("/public/upload", post(|body: Bytes| async move { body.len().to_string() }));
    serve(app.layer(DefaultBodyLimit::max(1024))).await
}

#[tokio::test]
async fn a_malformed_chunked_body_is_a_400_not_an_upstream_failure() {
    for fast_path in BOTH_PATHS {
        let upstream = small_bodies_upstream().await;
        let h = harness_with_settings(default_routes(&upstream), upstream, on_path(fast_path)).await;
        let request = b"POST /public/upload HTTP/1.1\r\nhost: gw\r\ntransfer-encoding: chunked\r\n\r\n\
            5\r\nhello\r\nzz\r\nworld\r\n0\r\n\r\n";
        let answer = first_answer(&h, request).await;
        let path = path_name(fast_path);
        assert!(answer.starts_with("HTTP/1.1 400"), "{path}: {answer}");
        assert!(answer.contains("\"invalid_body\""), "{path}: {answer}");
    }
}

/// The default routes, `/public` taking bodies of at most 1 KiB.
fn routes_with_a_body_limit(upstream: &str) -> Vec<RouteConfig> {
    let mut routes = default_routes(upstream);
    routes.retain(|r| r.prefix != "/public");
    routes.push(RouteConfig { max_body_bytes: Some(1024), ..route("/public", upstream, AuthMode::Public) });
    routes
}

#[tokio::test]
async fn a_body_over_the_routes_limit_is_a_413_whether_announced_or_streamed() {
    for fast_path in BOTH_PATHS {
        let upstream = small_bodies_upstream().await;
        let h = harness_with_settings(routes_with_a_body_limit(&upstream), upstream, on_path(fast_path)).await;
        let path = path_name(fast_path);
        let small = h.post("/public/upload").body(vec![b'x'; 1024]).send().await.unwrap();
        assert_eq!(small.status(), 200, "{path}");
        for size in [1025, 2 * 1024, 4 * 1024 * 1024] {
            let large = h.post("/public/upload").body(vec![b'x'; size]).send().await.unwrap();
            assert_eq!(large.status(), 413, "{path}: a {size}-byte body");
            assert!(large.text().await.unwrap().contains("\"body_too_large\""), "{path}");
        }
        // Chunked: no length to refuse early; refused when the count passes it.
        let mut chunked = b"POST /public/upload HTTP/1.1\r\nhost: gw\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
        for _ in 0..2 {
            chunked.extend_from_slice(b"400\r\n");
            chunked.extend_from_slice(&[b'x'; 1024]);
            chunked.extend_from_slice(b"\r\n");
        }
        chunked.extend_from_slice(b"0\r\n\r\n");
        let answer = first_answer(&h, &chunked).await;
        assert!(answer.starts_with("HTTP/1.1 413"), "{path}: a streamed body: {answer}");
        assert!(answer.contains("\"body_too_large\""), "{path}: a streamed body: {answer}");
    }
}
