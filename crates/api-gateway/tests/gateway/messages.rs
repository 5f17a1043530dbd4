//! Messages framed once and correctly: no request body where the upstream
//! may not expect one, one valid `Host`, responses relayed with exactly one
//! framing, and an `X-Request-Id` on every response the gateway makes.

use std::sync::atomic::Ordering;

use api_gateway::AuthMode;

use crate::helpers::*;

#[tokio::test]
async fn a_body_on_get_head_options_or_trace_is_refused_and_never_forwarded() {
    for fast_path in BOTH_PATHS {
        let upstream =
            scripted_upstream(|_, _| vec![Step::Send(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec())])
                .await;
        let h = harness_with_settings(default_routes(&upstream.url), upstream.url.clone(), on_path(fast_path)).await;
        // The body is a second request the gateway never checked.
        let hidden = "GET /api/secret HTTP/1.1\r\nhost: gw\r\n\r\n";
        for method in ["GET", "HEAD", "OPTIONS", "TRACE"] {
            for framing in [format!("content-length: {}\r\n", hidden.len()), "transfer-encoding: chunked\r\n".into()] {
                let body = if framing.starts_with("content") {
                    hidden.to_owned()
                } else {
                    format!("{:x}\r\n{hidden}\r\n0\r\n\r\n", hidden.len())
                };
                let request =
                    format!("{method} /public/x HTTP/1.1\r\nhost: gw\r\n{framing}connection: close\r\n\r\n{body}");
                let answer = one_connection(&h, request.as_bytes()).await;
                let on = path_name(fast_path);
                assert!(answer.starts_with("HTTP/1.1 400"), "{method} with {framing} on {on}: {answer}");
                if method != "HEAD" {
                    assert!(answer.contains("body_not_allowed"), "{method} with {framing} on {on}: {answer}");
                }
            }
        }
        assert_eq!(upstream.connections.load(Ordering::SeqCst), 0, "nothing reached the upstream");
        let empty =
            one_connection(&h, b"GET /public/x HTTP/1.1\r\nhost: gw\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                .await;
        assert!(empty.starts_with("HTTP/1.1 200"), "an empty body is no body: {empty}");
    }
}

#[tokio::test]
async fn requests_need_exactly_one_valid_host() {
    for fast_path in BOTH_PATHS {
        let h = echo_harness(on_path(fast_path)).await;
        for (request, status) in [
            ("GET /public/x HTTP/1.1\r\nhost: a\r\nhost: b\r\n", "400"),
            ("GET /public/x HTTP/1.1\r\n", "400"),
            ("POST /public/x HTTP/1.1\r\nhost: a\r\nhost: a\r\ncontent-length: 0\r\n", "400"),
            ("GET /public/x HTTP/1.1\r\nhost: evil.example/x\r\n", "400"),
            ("GET /public/x HTTP/1.1\r\nhost: user@evil.example\r\n", "400"),
            ("GET /public/x HTTP/1.1\r\nhost: gw.example:8080\r\n", "200"),
            ("GET /public/x HTTP/1.1\r\nhost: [::1]:8080\r\n", "200"),
            ("GET /public/x HTTP/1.0\r\n", "200"),
        ] {
            let answer = one_connection(&h, format!("{request}connection: close\r\n\r\n").as_bytes()).await;
            let on = path_name(fast_path);
            assert!(answer.get(9..12) == Some(status), "{request:?} on {on}: {answer}");
            if status == "400" {
                assert!(answer.contains("invalid_host"), "{request:?} on {on}: {answer}");
            }
        }
    }
}

/// Answers by path with responses whose framing needs care.
fn framings(_: usize, head: &str) -> Vec<Step> {
    let answer: &[u8] = match head.split(' ').nth(1).unwrap() {
        // Transfer-Encoding overrides the (wrong) length.
        "/api/chunked-and-length" => {
            b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
        }
        // A Connection header naming the framing cannot remove it.
        "/api/connection-names-length" => {
            b"HTTP/1.1 200 OK\r\nconnection: content-length, x-hop\r\nx-hop: 1\r\ncontent-length: 5\r\n\r\nhello"
        }
        "/api/bare-lf-in-chunk" => b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n",
        "/api/junk-in-size-line" => b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5 x\r\nhello\r\n0\r\n\r\n",
        "/api/lengths-disagree" => b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello!",
        "/api/length-list-disagrees" => b"HTTP/1.1 200 OK\r\ncontent-length: 5, 6\r\n\r\nhello!",
        "/api/signed-length" => b"HTTP/1.1 200 OK\r\ncontent-length: +5\r\n\r\nhello",
        "/api/not-http" => b"ok",
        "/api/trailers" => b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: set-cookie\r\n\r\n\
              5\r\nhello\r\n0\r\nset-cookie: __Host-access_token=forged\r\n\r\n",
        "/api/no-content-length" => b"HTTP/1.1 204 No Content\r\ncontent-length: 2\r\n\r\n",
        _ => b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
    };
    vec![Step::Send(answer.to_vec())]
}

#[tokio::test]
async fn responses_reach_the_client_framed_once_and_correctly() {
    for fast_path in BOTH_PATHS {
        let upstream = scripted_upstream(framings).await;
        let routes = vec![route("/api", &upstream.url, AuthMode::Public)];
        let h = harness_with_settings(routes, upstream.url.clone(), on_path(fast_path)).await;
        let on = path_name(fast_path);
        // Read raw, as the gateway sent them: a lenient client could read
        // an ambiguous framing differently than a strict one.
        let get = |path: &str| {
            let request = format!("GET {path} HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n");
            let h = &h;
            async move { one_connection(h, request.as_bytes()).await.to_ascii_lowercase() }
        };
        let both = get("/api/chunked-and-length").await;
        assert!(!both.contains("content-length"), "{on}: {both}");
        assert!(
            both.contains("\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n") || both.contains("hello world"),
            "{on}: {both}"
        );
        let named = get("/api/connection-names-length").await;
        assert!(named.contains("content-length: 5\r\n") && named.ends_with("\r\n\r\nhello"), "{on}: {named}");
        assert!(!named.contains("x-hop"), "{on}: {named}");
        for path in [
            "/api/bare-lf-in-chunk",
            "/api/junk-in-size-line",
            "/api/lengths-disagree",
            "/api/length-list-disagrees",
            "/api/signed-length",
        ] {
            // Refused: a 502 when nothing was sent yet, else a message cut
            // short; never a body one reader would end elsewhere than another.
            let answer = get(path).await;
            let bad_gateway = answer.starts_with("http/1.1 502") && answer.contains("upstream_unavailable");
            let cut_short = !answer.contains("hello") && !answer.ends_with("0\r\n\r\n");
            assert!(bad_gateway || cut_short, "{path} on {on}: {answer}");
        }
        let trailers = get("/api/trailers").await;
        assert!(trailers.contains("hello") && !trailers.contains("forged"), "{on}: {trailers}");
        let no_content = get("/api/no-content-length").await;
        assert!(no_content.starts_with("http/1.1 204") && !no_content.contains("content-length"), "{on}: {no_content}");
        // An answer that is not HTTP is refused at once, not at the route's timeout.
        let not_http = get("/api/not-http").await;
        assert!(not_http.starts_with("http/1.1 502"), "{on}: {not_http}");
        // Every refused answer closed its upstream connection: the next
        // request is served on a new one.
        let before = upstream.connections.load(Ordering::SeqCst);
        assert!(get("/api/fine").await.ends_with("\r\n\r\nok"), "{on}");
        assert_eq!(upstream.connections.load(Ordering::SeqCst), before + 1, "{on}");
    }
}

#[tokio::test]
async fn every_response_the_gateway_makes_itself_carries_a_request_id() {
    for fast_path in BOTH_PATHS {
        let upstream = serve(echo_upstream()).await;
        let mut routes = default_routes(&upstream);
        let mut slow = route("/slow", &upstream, AuthMode::Public);
        slow.timeout = 1;
        routes.push(slow);
        routes.push(route("/down", "http://127.0.0.1:9", AuthMode::Public));
        let h = harness_with_settings(routes, upstream, on_path(fast_path)).await;
        let (token, _) = h.token();
        let on = path_name(fast_path);
        let cases = [
            (h.get("/nowhere"), 404),
            (h.get("/public/a%2fb"), 400),
            (h.get("/api/x"), 401),
            (h.get("/admin/x").bearer_auth(&token), 403),
            (h.get("/down/x"), 502),
            (h.get("/slow"), 504),
            (h.post("/public/x").header("host", "a b"), 400),
        ];
        for (request, status) in cases {
            let response = request.header("x-request-id", "trace-7").send().await.unwrap();
            assert_eq!(response.status(), status, "{on}");
            assert_eq!(
                response.headers().get("x-request-id").map(|v| v.to_str().unwrap()),
                Some("trace-7"),
                "{status} on {on}"
            );
            let made = h.get("/nowhere").send().await.unwrap();
            assert!(made.headers().get("x-request-id").is_some_and(|v| v.len() == 33), "{on}");
        }
        h.feed.broken.store(true, Ordering::SeqCst);
        let unavailable = h.get("/api/x").bearer_auth(&token).header("x-request-id", "trace-8").send().await.unwrap();
        assert_eq!(unavailable.status(), 503, "{on}");
        assert_eq!(unavailable.headers()["x-request-id"], "trace-8", "{on}");
    }
}

#[tokio::test]
async fn upstreams_cannot_set_the_gateways_session_cookies() {
    let sets_cookies = |_: usize, _: &str| {
        vec![Step::Send(
            b"HTTP/1.1 200 OK\r\nset-cookie: __Host-access_token=forged; Path=/; Secure\r\nset-cookie: theme=dark\r\n\
              Set-Cookie: __host-refresh_token=x\r\nset-cookie: \"__Host-csrf_token\"=x\r\n\
              clear-site-data: \"cookies\"\r\ncontent-length: 2\r\n\r\nok"
                .to_vec(),
        )]
    };
    for fast_path in BOTH_PATHS {
        let upstream = scripted_upstream(sets_cookies).await;
        let h = harness_with_settings(default_routes(&upstream.url), upstream.url.clone(), on_path(fast_path)).await;
        for request in [h.get("/public/x"), h.post("/public/x").body("")] {
            let response = request.send().await.unwrap();
            let set: Vec<_> =
                response.headers().get_all("set-cookie").iter().map(|v| v.to_str().unwrap().to_owned()).collect();
            assert!(response.headers().get("clear-site-data").is_none(), "{}", path_name(fast_path));
            assert_eq!(set, ["theme=dark"], "{}", path_name(fast_path));
        }
    }
}
