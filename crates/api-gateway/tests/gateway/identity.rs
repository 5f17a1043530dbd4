//! What upstreams see: never a client's claim to be someone.

use crate::helpers::*;

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
    let sorted = |echo: &serde_json::Value| {
        let mut lines: Vec<String> = echo["headers"].as_array().unwrap().iter().map(|l| l.to_string()).collect();
        lines.sort();
        lines
    };
    let mut full_headers = sorted(&full);
    let declared = full_headers.iter().position(|l| l.starts_with(r#"["content-length""#));
    full_headers.remove(declared.expect("the second request declared no body"));
    assert_eq!(sorted(&own), full_headers);
    assert_eq!((&own["path"], &own["query"]), (&full["path"], &full["query"]));
    assert_eq!(seen(&own, "x-forwarded-for").as_deref(), Some("127.0.0.1"));
}

#[tokio::test]
async fn a_connection_header_cannot_remove_what_the_gateway_sets() {
    for fast_path in BOTH_PATHS {
        let h = echo_harness(on_path(fast_path)).await;
        let (token, claims) = h.token();
        let naming =
            "keep-alive, X-User-Id, X-User-Roles, X-Session-Id, X-Forwarded-For, X-Request-Id, X-Forwarded-Proto";
        let echo = json(h.get("/api/x").bearer_auth(&token).header("connection", naming).send().await.unwrap()).await;
        let on = path_name(fast_path);
        assert_eq!(seen(&echo, "x-user-id").as_deref(), Some(claims.sub.as_str()), "{on}");
        assert_eq!(seen(&echo, "x-user-roles").as_deref(), Some("viewer"), "{on}");
        assert_eq!(seen(&echo, "x-session-id").as_deref(), Some(claims.sid.as_str()), "{on}");
        assert_eq!(seen(&echo, "x-forwarded-for").as_deref(), Some("127.0.0.1"), "{on}");
        assert_eq!(seen(&echo, "x-forwarded-proto").as_deref(), Some("http"), "{on}");
        assert!(seen(&echo, "x-request-id").is_some(), "{on}");
        assert_eq!(seen(&echo, "connection"), None, "{on}");
    }
}

/// Every header line the echo upstream saw, as `name: value`.
fn all_lines(echo: &serde_json::Value) -> Vec<String> {
    echo["headers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| format!("{}: {}", l[0].as_str().unwrap(), l[1].as_str().unwrap()))
        .collect()
}

#[tokio::test]
async fn look_alike_identity_headers_spelled_with_underscores_never_reach_an_upstream() {
    for fast_path in BOTH_PATHS {
        let h = echo_harness(on_path(fast_path)).await;
        let (token, _) = h.token();
        let spoof = |r: reqwest::RequestBuilder| {
            r.header("X_User_Id", "victim")
                .header("X_User_Roles", "admin")
                .header("x-user_id", "victim")
                .header("X_Session_Id", "victim")
                .header("X_Forwarded_For", "victim")
                .header("X_Custom", "victim")
                .header("X.User.Id", "victim")
                .header("x~user~id", "victim")
        };
        for request in [spoof(h.get("/public/x")), spoof(h.get("/api/x").bearer_auth(&token))] {
            let lines = all_lines(&json(request.send().await.unwrap()).await);
            let on = path_name(fast_path);
            assert!(
                lines.iter().all(|l| !l.contains("victim") && !l.contains("admin") && !l.contains('_')),
                "{on}: {lines:?}"
            );
        }
    }
}

#[tokio::test]
async fn with_underscores_allowed_other_names_pass_but_look_alikes_never() {
    for fast_path in BOTH_PATHS {
        let settings = api_gateway::GatewaySettings { underscores_in_headers: true, ..on_path(fast_path) };
        let h = echo_harness(settings).await;
        let (token, claims) = h.token();
        let echo = json(
            h.get("/api/x")
                .bearer_auth(&token)
                .header("X_User_Id", "victim")
                .header("x_user_roles", "admin")
                .header("X_Custom", "kept")
                .send()
                .await
                .unwrap(),
        )
        .await;
        let on = path_name(fast_path);
        assert_eq!(seen(&echo, "x_custom").as_deref(), Some("kept"), "{on}");
        assert_eq!(seen(&echo, "x-user-id").as_deref(), Some(claims.sub.as_str()), "{on}");
        assert!(all_lines(&echo).iter().all(|l| !l.contains("victim") && !l.contains("admin")), "{on}");
    }
}

const PROXY_CLAIMS: [&str; 11] = [
    "x-real-ip",
    "true-client-ip",
    "x-client-ip",
    "cf-connecting-ip",
    "x-original-url",
    "x-rewrite-url",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-authenticated-user",
    "x-authenticated-groups",
    "forwarded",
];

#[tokio::test]
async fn client_address_and_url_claims_pass_from_trusted_proxies_only() {
    for (trusted, fast_path) in [(false, true), (false, false), (true, true), (true, false)] {
        let mut settings = on_path(fast_path);
        if trusted {
            settings.trusted_proxies = vec!["127.0.0.1".into()];
        }
        let h = echo_harness(settings).await;
        let mut request = h.get("/public/x").header("x-http-method-override", "DELETE");
        for name in PROXY_CLAIMS {
            request = request.header(name, "claimed");
        }
        let echo = json(request.send().await.unwrap()).await;
        let on = path_name(fast_path);
        for name in PROXY_CLAIMS {
            let want = trusted.then(|| "claimed".to_owned());
            assert_eq!(seen(&echo, name), want, "{name}, trusted: {trusted}, {on}");
        }
        assert_eq!(seen(&echo, "x-http-method-override"), None, "method overrides never pass ({on})");
    }
}

#[tokio::test]
async fn bearer_tokens_sent_to_public_routes_never_reach_their_upstream() {
    for fast_path in BOTH_PATHS {
        let h = echo_harness(on_path(fast_path)).await;
        let (token, _) = h.token();
        let on = path_name(fast_path);
        let echo = json(h.get("/public/x").bearer_auth(&token).send().await.unwrap()).await;
        assert_eq!(seen(&echo, "authorization"), None, "{on}: a replayable access token reached a public upstream");
        let echo = json(h.get("/public/x").header("authorization", "Basic YTpi").send().await.unwrap()).await;
        assert_eq!(
            seen(&echo, "authorization").as_deref(),
            Some("Basic YTpi"),
            "{on}: the upstream's own scheme passes"
        );
    }
}

#[tokio::test]
async fn the_gateways_own_answers_carry_the_security_headers_on_both_paths() {
    let h = harness().await;
    let answers = [
        h.get("/healthz").send().await.unwrap(),
        h.get("/readyz").send().await.unwrap(),
        h.get("/metrics").bearer_auth(METRICS_TOKEN).send().await.unwrap(),
        h.get("/metrics").send().await.unwrap(),
        h.get("/nowhere").send().await.unwrap(),
        // Bodiless GETs to an HTTP/1.1 upstream take the gateway's own path.
        h.get("/api/x").send().await.unwrap(),
        h.get("/api/x").bearer_auth("not.a.token").send().await.unwrap(),
        h.get("/api/../x").send().await.unwrap(),
    ];
    for answer in answers {
        let (status, headers) = (answer.status(), answer.headers());
        assert_eq!(headers["x-content-type-options"], "nosniff", "{status}");
        assert_eq!(headers["referrer-policy"], "no-referrer", "{status}");
        assert_eq!(headers["cache-control"], "no-store", "{status}");
        assert!(headers["content-security-policy"].to_str().unwrap().starts_with("default-src 'none'"), "{status}");
    }
    // An upstream's own answer is its own: the gateway adds nothing to it.
    let upstream = h.get("/public/x").send().await.unwrap();
    assert!(!upstream.headers().contains_key("content-security-policy"));
}
