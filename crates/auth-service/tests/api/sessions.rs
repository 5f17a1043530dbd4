use reqwest::Method;

use crate::helpers::*;

fn sid(browser: &Browser) -> String {
    claims(browser.access())["sid"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn the_session_list_shows_the_callers_sessions_and_marks_the_current_one() {
    each_backend(async |app| {
        let (email, laptop) = app.signed_in().await;
        let phone = app.log_in(&email).await;
        let (_, stranger) = app.signed_in().await;
        let response = app.with_cookies(Method::GET, "/auth/sessions", &laptop).send().await.unwrap();
        assert_eq!(response.status(), 200);
        let listed = body(response).await["sessions"].as_array().unwrap().clone();
        let ids: Vec<&str> = listed.iter().map(|s| s["id"].as_str().unwrap()).collect();
        assert_eq!(ids.len(), 2);
        assert!(ids.contains(&sid(&laptop).as_str()) && ids.contains(&sid(&phone).as_str()));
        assert!(!ids.contains(&sid(&stranger).as_str()));
        for s in &listed {
            assert_eq!(s["current"], s["id"] == sid(&laptop).as_str());
            assert_eq!(s["ip"], "127.0.0.1");
            for field in ["created_at", "last_seen_at", "expires_at"] {
                assert!(s[field].is_string(), "{field}");
            }
        }
    })
    .await;
}

#[tokio::test]
async fn revoking_one_session_ends_only_that_one() {
    each_backend(async |app| {
        let (email, laptop) = app.signed_in().await;
        let phone = app.log_in(&email).await;
        let path = format!("/auth/sessions/{}", sid(&phone));
        let response = app.as_page(Method::DELETE, &path, &laptop).send().await.unwrap();
        assert_eq!(response.status(), 204);
        assert_eq!(app.me(&phone).await.status(), 401);
        assert_eq!(app.me(&laptop).await.status(), 200);
        let again = app.as_page(Method::DELETE, &path, &laptop).send().await.unwrap();
        assert_eq!(again.status(), 404);
    })
    .await;
}

#[tokio::test]
async fn another_users_session_is_404_and_survives() {
    each_backend(async |app| {
        let (_, mine) = app.signed_in().await;
        let (_, theirs) = app.signed_in().await;
        for id in [sid(&theirs), uuid::Uuid::new_v4().to_string(), "not-a-uuid".into()] {
            let response = app.as_page(Method::DELETE, &format!("/auth/sessions/{id}"), &mine).send().await.unwrap();
            assert_eq!(response.status(), 404, "{id}");
            assert_eq!(code(response).await, "session_not_found");
        }
        assert_eq!(app.me(&theirs).await.status(), 200);
    })
    .await;
}

#[tokio::test]
async fn revoking_all_other_sessions_keeps_the_current_one() {
    each_backend(async |app| {
        let (email, laptop) = app.signed_in().await;
        let phone = app.log_in(&email).await;
        let tablet = app.log_in(&email).await;
        let (_, stranger) = app.signed_in().await;
        let response = app.as_page(Method::DELETE, "/auth/sessions", &laptop).send().await.unwrap();
        assert_eq!(response.status(), 204);
        assert_eq!(app.me(&laptop).await.status(), 200);
        assert_eq!(app.me(&phone).await.status(), 401);
        assert_eq!(app.me(&tablet).await.status(), 401);
        assert_eq!(app.me(&stranger).await.status(), 200);
    })
    .await;
}

/// The address the auth-service recorded for the session a login from
/// `forwarded_for` (an `X-Forwarded-For` value) opened.
async fn recorded_address(app: &TestApp, forwarded_for: &str) -> String {
    let email = email();
    assert_eq!(app.register(&email, PASSWORD).await.status(), 201);
    let response = app
        .request(Method::POST, "/auth/login")
        .header("x-forwarded-for", forwarded_for)
        .json(&serde_json::json!({"email": email, "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut browser = Browser::default();
    browser.absorb(&response);
    let listed = body(app.with_cookies(Method::GET, "/auth/sessions", &browser).send().await.unwrap()).await;
    listed["sessions"][0]["ip"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn x_forwarded_for_is_believed_only_from_trusted_proxies() {
    each_backend(async |app| {
        // The test client (127.0.0.1) is no trusted proxy: its claim is ignored.
        assert_eq!(recorded_address(&app, "203.0.113.9").await, "127.0.0.1");
    })
    .await;
    let behind_a_gateway = Options { trusted_proxies: vec!["127.0.0.0/8".into()], ..Default::default() };
    each_backend_with(behind_a_gateway, async |app| {
        // From a trusted proxy: the first address from the right it did not add.
        assert_eq!(recorded_address(&app, "198.51.100.1, 203.0.113.9").await, "203.0.113.9");
        assert_eq!(recorded_address(&app, "203.0.113.9, 127.0.0.5").await, "203.0.113.9");
        assert_eq!(recorded_address(&app, "garbage").await, "127.0.0.1");
    })
    .await;
}
