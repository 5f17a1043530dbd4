//! The headers every answer carries, and CORS for trusted origins only.

use reqwest::{Method, StatusCode, header};
use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn every_answer_carries_the_security_headers_whatever_its_status() {
    each_backend(async |app: TestApp| {
        let (_, browser) = app.signed_in().await;
        let answers = [
            app.me(&browser).await,
            app.request(Method::GET, "/auth/me").send().await.unwrap(),
            app.login("nobody@example.com", "not the password at all").await,
            app.request(Method::POST, "/auth/login").body("not json").send().await.unwrap(),
            app.request(Method::GET, "/.well-known/jwks.json").send().await.unwrap(),
            app.request(Method::GET, "/healthz").send().await.unwrap(),
            app.request(Method::GET, "/no/such/route").send().await.unwrap(),
            app.request(Method::OPTIONS, "/auth/login").header("origin", "https://evil.example").send().await.unwrap(),
        ];
        for answer in answers {
            let (status, h) = (answer.status(), answer.headers());
            assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff", "{status}");
            assert_eq!(h[header::REFERRER_POLICY], "no-referrer", "{status}");
            assert_eq!(h[header::STRICT_TRANSPORT_SECURITY], "max-age=31536000; includeSubDomains", "{status}");
            let csp = h[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
            assert!(csp.starts_with("default-src 'none'") && csp.contains("frame-ancestors 'none'"), "{csp}");
            assert!(h.contains_key(header::CACHE_CONTROL), "{status}");
            assert!(!h.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN), "{status}: no origin asked");
        }
        let me = app.me(&browser).await;
        assert_eq!(me.headers()[header::CACHE_CONTROL], "no-store", "user data is never cached");
    })
    .await;
}

#[tokio::test]
async fn a_trusted_origin_may_call_with_credentials_and_any_other_gets_no_cors_header() {
    each_backend(async |app: TestApp| {
        let preflight = |origin: &str| {
            app.request(Method::OPTIONS, "/auth/login")
                .header("origin", origin)
                .header("access-control-request-method", "POST")
                .header("access-control-request-headers", "content-type, x-csrf-token")
                .send()
        };
        let trusted = preflight("https://app.example.com").await.unwrap();
        assert_eq!(trusted.status(), StatusCode::NO_CONTENT);
        let h = trusted.headers();
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_ORIGIN], "https://app.example.com");
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
        assert!(h[header::ACCESS_CONTROL_ALLOW_HEADERS].to_str().unwrap().contains("x-csrf-token"));

        for foreign in
            ["https://evil.example", "https://app.example.com.evil.example", "null", "http://app.example.com"]
        {
            let refused = preflight(foreign).await.unwrap();
            assert_eq!(refused.status(), StatusCode::FORBIDDEN, "{foreign}");
            let leaked: Vec<_> =
                refused.headers().keys().filter(|k| k.as_str().starts_with("access-control-")).collect();
            assert!(leaked.is_empty(), "{foreign}: {leaked:?}");
        }
        // The public URL itself is same-origin: it needs no CORS.
        assert_eq!(preflight(ISSUER).await.unwrap().status(), StatusCode::FORBIDDEN);

        let (_, browser) = app.signed_in().await;
        let read = app.with_cookies(Method::GET, "/auth/me", &browser).header("origin", "https://app.example.com");
        let read = read.send().await.unwrap();
        assert_eq!(read.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN], "https://app.example.com");
        let foreign = app.with_cookies(Method::GET, "/auth/me", &browser).header("origin", "https://evil.example");
        let foreign = foreign.send().await.unwrap();
        assert!(!foreign.headers().contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN));
        // And a foreign page still cannot change anything (CSRF, rule F).
        let post = app
            .as_page(Method::DELETE, "/auth/logout", &browser)
            .header("origin", "https://evil.example")
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(post.status(), StatusCode::FORBIDDEN);
    })
    .await;
}
