//! The path the gateway authorises is the path the upstream receives:
//! routes match the canonical path, the canonical path is forwarded, and
//! what has no unambiguous canonical form is refused with 400 `invalid_path`.

use api_gateway::AuthMode;

use crate::helpers::*;

/// A public catch-all and a guarded admin area, as the attacks need them.
async fn catch_all_and_admin(fast_path: bool) -> Harness {
    let upstream = serve(echo_upstream()).await;
    let mut strip = route("/svc", &upstream, AuthMode::Public);
    strip.strip_prefix = true;
    let routes =
        vec![route("/", &upstream, AuthMode::Public), route("/api/admin", &upstream, AuthMode::Required), strip];
    harness_with_settings(routes, upstream, on_path(fast_path)).await
}

/// The status line and body of `method target` sent raw (an HTTP client
/// library would tidy the target up itself).
async fn raw(h: &Harness, method: &str, target: &str, extra: &str) -> String {
    let body = if method == "POST" { "content-length: 0\r\n" } else { "" };
    let request = format!("{method} {target} HTTP/1.1\r\nhost: gw\r\n{body}{extra}connection: close\r\n\r\n");
    one_connection(h, request.as_bytes()).await
}

/// Spellings of `/api/admin/users` an upstream decodes to the admin area.
const DISGUISED: [&str; 6] = [
    "/api/%61dmin/users",
    "//api/admin/users",
    "/api//admin/users",
    "/%61pi/admin/users",
    "/api/%61%64%6d%69%6e",
    "///api/admin",
];

/// Spellings that have no one meaning: refused whatever route they seem to take.
const AMBIGUOUS: [&str; 18] = [
    "/api/adm%C4%B1n/users",
    "/api/%E2%84%AAey",
    "/api%2fadmin/users",
    "/api/admin%2Fusers",
    "/api/%2561dmin/users",
    "/api%2Fadmin/users",
    "/api%5cadmin/users",
    "/api\\admin/users",
    "/api;x=1/admin/users",
    "/api/admin;jsessionid=1/users",
    "/public/..;/api/admin/users",
    "/api/admin%00/users",
    "/api/%252fadmin",
    "/public/%2e%2e/api/admin/users",
    "/public/../api/admin/users",
    "/api/./admin/users",
    "/API/admin/users",
    "/api/Admin/users",
];

#[tokio::test]
async fn disguised_paths_to_a_guarded_route_are_guarded_or_refused_never_served_anonymously() {
    for fast_path in BOTH_PATHS {
        let h = catch_all_and_admin(fast_path).await;
        for method in ["GET", "POST"] {
            for target in DISGUISED.iter().chain(&AMBIGUOUS) {
                let answer = raw(&h, method, target, "").await;
                let refused = answer.starts_with("HTTP/1.1 401") || answer.starts_with("HTTP/1.1 400");
                assert!(refused, "{method} {target} on {}: {answer}", path_name(fast_path));
            }
            for target in AMBIGUOUS {
                let answer = raw(&h, method, target, "").await;
                assert!(answer.contains("invalid_path"), "{method} {target} on {}: {answer}", path_name(fast_path));
            }
        }
    }
}

#[tokio::test]
async fn the_canonical_path_is_the_one_matched_and_forwarded() {
    for fast_path in BOTH_PATHS {
        let h = catch_all_and_admin(fast_path).await;
        let (token, _) = h.token();
        let bearer = format!("authorization: Bearer {token}\r\n");
        for (target, want) in [
            ("/api/%61dmin/users?q=%61", "/api/admin/users"),
            ("//api//admin/users", "/api/admin/users"),
            ("/a/%7euser/%c3%a9", "/a/~user/%C3%A9"),
            ("/svc//x/%7ey", "/x/~y"),
            ("/svc", "/"),
        ] {
            for method in ["GET", "POST"] {
                let answer = raw(&h, method, target, &bearer).await;
                let on = path_name(fast_path);
                assert!(answer.starts_with("HTTP/1.1 200"), "{method} {target} on {on}: {answer}");
                assert!(answer.contains(&format!(r#""path":"{want}""#)), "{method} {target} on {on}: {answer}");
            }
        }
        let answer = raw(&h, "GET", "/api/%61dmin/users?q=%61", &bearer).await;
        assert!(answer.contains(r#""query":"q=%61""#), "the query goes as it came: {answer}");
    }
}

#[tokio::test]
async fn letter_case_that_would_reach_a_stricter_route_is_refused_and_other_case_is_served() {
    for fast_path in BOTH_PATHS {
        let h = catch_all_and_admin(fast_path).await;
        let answer = raw(&h, "GET", "/API/ADMIN", "").await;
        assert!(answer.starts_with("HTTP/1.1 400") && answer.contains("invalid_path"), "{answer}");
        let answer = raw(&h, "GET", "/Static/App.JS", "").await;
        assert!(answer.starts_with("HTTP/1.1 200") && answer.contains(r#""path":"/Static/App.JS""#), "{answer}");
    }
}
