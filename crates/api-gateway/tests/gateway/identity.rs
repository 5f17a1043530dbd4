//! What upstreams see: never a client's claim to be someone.

use serde_json::Value;

use crate::helpers::*;

fn seen(echo: &Value, header: &str) -> Option<String> {
    echo["headers"][header].as_str().map(str::to_owned)
}

#[tokio::test]
async fn a_spoofed_user_id_never_reaches_an_upstream() {
    let h = harness().await;
    let (token, claims) = h.token();
    let spoof = |r: reqwest::RequestBuilder| {
        r.header("x-user-id", "admin")
            .header("x-user-roles", "admin")
            .header("x-session-id", "s")
            .header("x-auth-request-user", "admin")
    };
    let echo = json(spoof(h.get("/api/x").bearer_auth(&token)).send().await.unwrap()).await;
    assert_eq!(seen(&echo, "x-user-id").as_deref(), Some(claims.sub.as_str()));
    assert_eq!(seen(&echo, "x-user-roles").as_deref(), Some("viewer"));
    assert_eq!(seen(&echo, "x-session-id").as_deref(), Some(claims.sid.as_str()));
    assert_eq!(seen(&echo, "x-auth-request-user"), None);

    let public = json(spoof(h.get("/public/x")).send().await.unwrap()).await;
    for header in ["x-user-id", "x-user-roles", "x-session-id", "x-auth-request-user"] {
        assert_eq!(seen(&public, header), None, "{header} reached a public upstream");
    }
}

#[tokio::test]
async fn our_cookies_and_bearer_token_stay_at_the_gateway() {
    let h = harness().await;
    let (token, _) = h.token();
    let cookie = format!("theme=dark; __Host-access_token={token}; __Host-refresh_token=r; __Host-csrf_token=c");
    let echo = json(h.get("/api/x").header("cookie", &cookie).send().await.unwrap()).await;
    assert_eq!(seen(&echo, "cookie").as_deref(), Some("theme=dark"));
    let echo = json(h.get("/api/x").bearer_auth(&token).send().await.unwrap()).await;
    assert_eq!(seen(&echo, "authorization"), None);
    let echo = json(h.get("/public/x").header("cookie", "__Host-refresh_token=r").send().await.unwrap()).await;
    assert_eq!(seen(&echo, "cookie"), None);
}

#[tokio::test]
async fn request_ids_are_kept_when_valid_made_otherwise_and_returned() {
    let h = harness().await;
    let response = h.get("/public/x").header("x-request-id", "trace-42").send().await.unwrap();
    assert_eq!(response.headers()["x-request-id"], "trace-42");
    assert_eq!(seen(&json(response).await, "x-request-id").as_deref(), Some("trace-42"));
    let response = h.get("/public/x").header("x-request-id", "no spaces allowed").send().await.unwrap();
    let id = response.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert!(!id.is_empty() && id != "no spaces allowed");
    assert_eq!(seen(&json(response).await, "x-request-id"), Some(id));
}

#[tokio::test]
async fn forwarding_headers_from_an_untrusted_client_are_replaced() {
    let h = harness().await;
    let echo = json(
        h.get("/public/x")
            .header("x-forwarded-for", "6.6.6.6")
            .header("x-forwarded-proto", "https")
            .header("x-forwarded-host", "evil.example")
            .header("forwarded", "for=6.6.6.6")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(seen(&echo, "x-forwarded-for").as_deref(), Some("127.0.0.1"));
    assert_eq!(seen(&echo, "x-forwarded-proto").as_deref(), Some("http"));
    assert_eq!(seen(&echo, "x-forwarded-host"), Some(h.url.trim_start_matches("http://").to_owned()));
    assert_eq!(seen(&echo, "forwarded"), None);
}

#[tokio::test]
async fn both_request_paths_show_an_upstream_the_same_headers() {
    let h = harness().await;
    let (token, _) = h.token();
    let request = || {
        h.get("/api/x?q=1")
            .header("cookie", format!("theme=dark; __Host-access_token={token}; __Host-csrf_token=c"))
            .header("x-user-id", "admin")
            .header("x-forwarded-for", "6.6.6.6")
            .header("forwarded", "for=6.6.6.6")
            .header("x-request-id", "trace-1")
            .header("accept", "text/plain")
    };
    // A bodiless GET takes the gateway's own path; a declared body, hyper's.
    let own = json(request().send().await.unwrap()).await;
    let full = json(request().header("content-length", "0").send().await.unwrap()).await;
    let mut full_headers = full["headers"].as_object().unwrap().clone();
    assert!(full_headers.remove("content-length").is_some(), "the second request declared no body");
    assert_eq!(own["headers"].as_object().unwrap(), &full_headers);
    assert_eq!((&own["path"], &own["query"]), (&full["path"], &full["query"]));
    assert_eq!(seen(&own, "x-forwarded-for").as_deref(), Some("127.0.0.1"));
}
