use reqwest::Method;
use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn cookie_authenticated_unsafe_requests_need_a_csrf_token_of_their_own_session() {
    each_backend(async |app| {
        let (_, victim) = app.signed_in().await;
        let (_, attacker) = app.signed_in().await;
        for (method, path) in
            [(Method::DELETE, "/auth/logout"), (Method::DELETE, "/auth/sessions"), (Method::POST, "/auth/refresh")]
        {
            let missing = app.with_cookies(method.clone(), path, &victim).send().await.unwrap();
            assert_eq!(missing.status(), 403, "{method} {path} without header");
            assert_eq!(code(missing).await, "csrf_failed");

            let mismatch = app
                .with_cookies(method.clone(), path, &victim)
                .header("x-csrf-token", attacker.csrf())
                .send()
                .await
                .unwrap();
            assert_eq!(mismatch.status(), 403, "{method} {path} with another header");

            // The attacker plants their own valid pair: bound to the wrong session.
            let mut planted = victim.clone();
            planted.cookies.insert("__Host-csrf_token".into(), attacker.csrf().to_owned());
            let foreign_pair = app.as_page(method.clone(), path, &planted).send().await.unwrap();
            assert_eq!(foreign_pair.status(), 403, "{method} {path} with a pair of another session");
        }
        // Nothing above took effect.
        assert_eq!(app.me(&victim).await.status(), 200);
        assert_eq!(app.refresh(&victim).await.status(), 200);
    })
    .await;
}

#[tokio::test]
async fn an_unprefixed_csrf_cookie_is_ignored() {
    each_backend(async |app| {
        let (_, browser) = app.signed_in().await;
        let mut lookalike = browser.clone();
        let token = lookalike.cookies.remove("__Host-csrf_token").unwrap();
        lookalike.cookies.insert("csrf_token".into(), token.clone());
        let response = app
            .with_cookies(Method::DELETE, "/auth/logout", &lookalike)
            .header("x-csrf-token", token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 403);
    })
    .await;
}

#[tokio::test]
async fn bearer_requests_need_no_csrf_token() {
    each_backend(async |app| {
        let (_, browser) = app.signed_in().await;
        let response = app.request(Method::DELETE, "/auth/logout").bearer_auth(browser.access()).send().await.unwrap();
        assert_eq!(response.status(), 204);
        assert_eq!(app.me(&browser).await.status(), 401);
    })
    .await;
}

#[tokio::test]
async fn cross_site_requests_are_refused_even_with_a_valid_pair() {
    each_backend(async |app| {
        let (_, browser) = app.signed_in().await;
        for (name, value) in [("sec-fetch-site", "cross-site"), ("origin", "https://evil.example")] {
            let response = app
                .as_page(Method::DELETE, "/auth/delete", &browser)
                .header(name, value)
                .json(&json!({"password": PASSWORD}))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 403, "{name}: {value}");
        }
        assert_eq!(app.me(&browser).await.status(), 200);
    })
    .await;
}

#[tokio::test]
async fn safe_methods_never_need_a_csrf_token() {
    each_backend(async |app| {
        let (_, browser) = app.signed_in().await;
        for path in ["/auth/me", "/auth/sessions"] {
            let response = app
                .with_cookies(Method::GET, path, &browser)
                .header("sec-fetch-site", "cross-site")
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200, "{path}");
        }
    })
    .await;
}
