use std::sync::Arc;

use auth_core::hashing::HashingSettings;
use reqwest::{Method, header};
use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn health_and_readiness_answer() {
    each_backend(async |app| {
        let health = app.request(Method::GET, "/healthz").send().await.unwrap();
        assert_eq!(health.status(), 200);
        let ready = app.request(Method::GET, "/readyz").send().await.unwrap();
        assert_eq!(ready.status(), 200);
        assert_eq!(body(ready).await, json!({"status": "ready", "database": "ok"}));
    })
    .await;
}

#[tokio::test]
async fn metrics_count_requests_logins_and_hashes_in_flight() {
    each_backend(async |app| {
        let (email, _) = app.signed_in().await;
        app.login(&email, "wrong horse battery staple").await;
        // Not for anyone on this port: only to the configured token.
        for refused in [app.request(Method::GET, "/metrics"), app.request(Method::GET, "/metrics").bearer_auth("guess")] {
            let refused = refused.send().await.unwrap();
            assert_eq!((refused.status().as_u16(), code(refused).await.as_str()), (404, "not_found"));
        }
        let response = app.request(Method::GET, "/metrics").bearer_auth(METRICS_TOKEN).send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert!(response.headers()[header::CONTENT_TYPE].to_str().unwrap().starts_with("text/plain; version=0.0.4"));
        let text = response.text().await.unwrap();
        for line in [
            "gatehouse_http_requests_total{route=\"/auth/login\",method=\"POST\",status=\"200\"} 1",
            "gatehouse_http_requests_total{route=\"/auth/login\",method=\"POST\",status=\"401\"} 1",
            "gatehouse_http_requests_total{route=\"/auth/register\",method=\"POST\",status=\"201\"} 1",
            "gatehouse_logins_total{result=\"success\"} 1",
            "gatehouse_logins_total{result=\"failure\"} 1",
            "gatehouse_password_hashes_in_flight 0",
        ] {
            assert!(text.contains(line), "missing {line}\n{text}");
        }
        assert!(text.contains("gatehouse_http_request_duration_seconds_bucket{route=\"/auth/login\",method=\"POST\",status=\"401\",le=\"+Inf\"} 1"));
    })
    .await;
}

#[tokio::test]
async fn the_openapi_document_covers_every_route_and_the_error_body() {
    each_backend(async |app| {
        let doc = body(app.request(Method::GET, "/openapi.json").send().await.unwrap()).await;
        assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
        let routes = [
            ("/auth/register", "post"),
            ("/auth/login", "post"),
            ("/auth/refresh", "post"),
            ("/auth/logout", "delete"),
            ("/auth/delete", "delete"),
            ("/auth/me", "get"),
            ("/auth/sessions", "get"),
            ("/auth/sessions", "delete"),
            ("/auth/sessions/{id}", "delete"),
            ("/auth/password/forgot", "post"),
            ("/auth/password/reset", "post"),
            ("/auth/password/change", "post"),
            ("/auth/email/verify", "post"),
            ("/auth/email/resend", "post"),
            ("/auth/oauth/{provider}/start", "get"),
            ("/auth/oauth/{provider}/callback", "get"),
            ("/auth/me/identities", "get"),
            ("/auth/me/identities/{id}", "delete"),
            ("/auth/me/identities/{provider}/link", "post"),
            ("/.well-known/jwks.json", "get"),
            ("/auth/admin/deletions/{user_id}", "get"),
            ("/auth/admin/users", "get"),
            ("/auth/admin/users/{id}", "get"),
            ("/auth/admin/users/{id}", "delete"),
            ("/auth/admin/users/{id}/roles/{role}", "put"),
            ("/auth/admin/users/{id}/roles/{role}", "delete"),
            ("/auth/admin/users/{id}/disable", "post"),
            ("/auth/admin/users/{id}/enable", "post"),
            ("/auth/admin/roles", "get"),
            ("/auth/admin/roles/{name}", "put"),
            ("/auth/admin/roles/{name}", "delete"),
            ("/auth/admin/audit", "get"),
            ("/auth/gateway/roles", "get"),
            ("/healthz", "get"),
            ("/readyz", "get"),
            ("/metrics", "get"),
            ("/openapi.json", "get"),
        ];
        let paths = doc["paths"].as_object().unwrap();
        for (path, method) in routes {
            assert!(paths.get(path).and_then(|p| p.get(method)).is_some(), "{method} {path} undocumented");
        }
        let documented: usize = paths.values().map(|p| p.as_object().unwrap().len()).sum();
        assert_eq!(documented, routes.len(), "a documented route is not in this test's list");
        assert!(doc["components"]["schemas"]["ErrorBody"].is_object());
        assert!(doc["components"]["schemas"]["Credentials"].is_object());
        let login = &paths["/auth/login"]["post"]["responses"];
        assert!(login["401"].is_object() && login["200"].is_object());
    })
    .await;
}

#[tokio::test]
async fn every_operation_documents_the_refusals_made_before_its_handler() {
    each_backend(async |app| {
        let doc = body(app.request(Method::GET, "/openapi.json").send().await.unwrap()).await;
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                let responses = &operation["responses"];
                let described = |status: &str| responses[status]["description"].as_str().unwrap_or("").to_owned();
                assert!(described("400").contains("invalid_path"), "{method} {path}");
                if method != "get" {
                    assert!(described("403").contains("csrf_failed"), "{method} {path}");
                    assert!(described("415").contains("unsupported_media_type"), "{method} {path}");
                }
                if operation.get("requestBody").is_some() {
                    assert!(described("400").contains("invalid_body"), "{method} {path}");
                    assert!(described("413").contains("body_too_large"), "{method} {path}");
                }
            }
        }
        // A documented answer keeps its own words.
        let login = &doc["paths"]["/auth/login"]["post"]["responses"];
        assert!(login["401"]["description"].as_str().unwrap().contains("invalid_credentials"));
    })
    .await;
}

#[tokio::test]
async fn a_path_or_query_the_framework_cannot_read_gets_the_one_error_body() {
    each_backend(async |app| {
        let (_, browser) = app.signed_in().await;
        for (method, path) in [
            (Method::DELETE, "/auth/me/identities/not-a-uuid"),
            (Method::DELETE, "/auth/sessions/%FF%FE"),
            (Method::GET, "/auth/admin/users/%C3%28"),
        ] {
            let response =
                app.as_page(method.clone(), path, &browser).bearer_auth(OPERATOR_TOKEN).send().await.unwrap();
            let status = response.status();
            let content_type = response.headers()["content-type"].to_str().unwrap().to_owned();
            assert_eq!(content_type, "application/json", "{method} {path}");
            assert_eq!(response.headers()["x-content-type-options"], "nosniff", "{method} {path}");
            assert!(response.headers().contains_key("content-security-policy"), "{method} {path}");
            assert!(status.is_client_error(), "{method} {path}: {status}");
            assert!(!code(response).await.is_empty(), "{method} {path}");
        }
    })
    .await;
}

#[tokio::test]
async fn unknown_routes_are_404_json() {
    each_backend(async |app| {
        let response = app.request(Method::GET, "/no/such/thing").send().await.unwrap();
        assert_eq!(response.status(), 404);
        assert_eq!(code(response).await, "not_found");
    })
    .await;
}

#[tokio::test]
async fn a_flood_of_logins_gets_503_busy_while_health_stays_up() {
    let options = Options {
        hashing: HashingSettings { permits: 1, max_wait_ms: 20, ..Default::default() },
        ..Default::default()
    };
    each_backend_with(options, async |app| {
        let email = email();
        app.register(&email, PASSWORD).await;
        let app = Arc::new(app);
        let logins: Vec<_> = (0..12)
            .map(|_| {
                let (app, email) = (app.clone(), email.clone());
                tokio::spawn(async move { app.login(&email, "wrong horse battery staple").await })
            })
            .collect();
        let health = app.request(Method::GET, "/healthz").send().await.unwrap();
        assert_eq!(health.status(), 200);
        let mut busy = 0;
        for login in logins {
            let response = login.await.unwrap();
            match response.status().as_u16() {
                401 => {}
                503 => {
                    busy += 1;
                    assert_eq!(response.headers()[header::RETRY_AFTER], "1");
                    assert_eq!(code(response).await, "busy");
                }
                other => panic!("unexpected {other}"),
            }
        }
        assert!(busy > 0, "twelve logins through one hashing slot never had to wait 20 ms");
    })
    .await;
}
