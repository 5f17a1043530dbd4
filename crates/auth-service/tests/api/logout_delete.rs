use auth_core::{EventKind, SecretHash, SessionId, UserId};
use reqwest::{Method, header};
use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn logout_revokes_the_session_at_once_and_clears_the_cookies() {
    each_backend(async |app| {
        let (_, browser) = app.signed_in().await;
        let response = app.as_page(Method::DELETE, "/auth/logout", &browser).send().await.unwrap();
        assert_eq!(response.status(), 204);
        let cleared: Vec<String> =
            response.headers().get_all(header::SET_COOKIE).iter().map(|v| v.to_str().unwrap().to_owned()).collect();
        assert_eq!(
            cleared,
            [
                "__Host-access_token=; Max-Age=0; Path=/; Secure; HttpOnly; SameSite=Lax",
                "__Host-refresh_token=; Max-Age=0; Path=/; Secure; HttpOnly; SameSite=Lax",
                "__Host-csrf_token=; Max-Age=0; Path=/; Secure; SameSite=Lax",
            ]
        );
        // The captured cookies are dead, not merely dropped by the browser.
        assert_eq!(app.me(&browser).await.status(), 401);
        assert_eq!(app.me_bearer(browser.access()).await.status(), 401);
        assert_eq!(app.refresh(&browser).await.status(), 401);
        let user: UserId = claims(browser.access())["sub"].as_str().unwrap().parse().unwrap();
        let events = app.stores.outbox.events_of(user).await.unwrap();
        assert_eq!(events.last().unwrap().event.kind, EventKind::LoggedOut);
    })
    .await;
}

#[tokio::test]
async fn logout_without_a_token_is_401() {
    each_backend(async |app| {
        let response = app.request(Method::DELETE, "/auth/logout").send().await.unwrap();
        assert_eq!(response.status(), 401);
    })
    .await;
}

#[tokio::test]
async fn deleting_the_account_erases_it_and_kills_every_token() {
    each_backend(async |app| {
        let (email, browser) = app.signed_in().await;
        let other_device = app.log_in(&email).await;
        let user: UserId = claims(browser.access())["sub"].as_str().unwrap().parse().unwrap();
        let sessions: Vec<SessionId> = [&browser, &other_device]
            .iter()
            .map(|b| claims(b.access())["sid"].as_str().unwrap().parse().unwrap())
            .collect();

        let response = app
            .as_page(Method::DELETE, "/auth/delete", &browser)
            .json(&json!({"password": PASSWORD}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 204);
        assert_eq!(response.headers().get_all(header::SET_COOKIE).iter().count(), 3);

        for b in [&browser, &other_device] {
            assert_eq!(app.me(b).await.status(), 401);
            assert_eq!(app.me_bearer(b.access()).await.status(), 401);
            assert_eq!(app.refresh(b).await.status(), 401);
        }
        assert!(app.stores.users.user_by_id(user).await.unwrap().is_none());
        for s in sessions {
            assert!(app.stores.sessions.session(s).await.unwrap().is_none());
        }
        assert!(app.stores.sessions.refresh_record(&SecretHash::of(browser.refresh())).await.unwrap().is_none());
        let events = app.stores.outbox.events_of(user).await.unwrap();
        let deleted = events.last().unwrap();
        assert_eq!(deleted.event.kind, EventKind::Deleted);
        assert_eq!(deleted.event.data, json!({"user_id": user}));
        assert!(events.iter().all(|e| !e.event.data.to_string().contains(&email)), "PII left in the outbox");
        assert_eq!(app.login(&email, PASSWORD).await.status(), 401);
        assert_eq!(app.register(&email, PASSWORD).await.status(), 201, "the address is free again");
    })
    .await;
}

#[tokio::test]
async fn deleting_with_a_wrong_or_missing_password_is_403_and_changes_nothing() {
    each_backend(async |app| {
        let (_, browser) = app.signed_in().await;
        for body in [json!({"password": "wrong horse battery staple"}), json!({})] {
            let response = app.as_page(Method::DELETE, "/auth/delete", &browser).json(&body).send().await.unwrap();
            assert_eq!(response.status(), 403);
            assert_eq!(code(response).await, "wrong_password");
        }
        assert_eq!(app.me(&browser).await.status(), 200);
    })
    .await;
}
