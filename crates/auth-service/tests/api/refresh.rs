use reqwest::{Method, header};
use time::Duration;

use crate::helpers::*;

#[tokio::test]
async fn refresh_rotates_the_refresh_token_and_issues_a_new_access_token() {
    each_backend(async |app| {
        let (_, mut browser) = app.signed_in().await;
        let before = browser.clone();
        app.clock.advance(Duration::seconds(30));
        let response = app.refresh(&browser).await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()[header::CACHE_CONTROL], "no-store");
        browser.absorb(&response);
        assert_ne!(browser.refresh(), before.refresh());
        assert_ne!(browser.access(), before.access());
        assert_eq!(claims(browser.access())["sid"], claims(before.access())["sid"]);
        assert_eq!(app.me(&browser).await.status(), 200);
        // The new token refreshes in turn.
        app.clock.advance(Duration::seconds(30));
        assert_eq!(app.refresh(&browser).await.status(), 200);
    })
    .await;
}

#[tokio::test]
async fn a_rotated_token_used_after_the_grace_window_revokes_the_whole_session() {
    each_backend(async |app| {
        let (_, first) = app.signed_in().await;
        let mut current = first.clone();
        current.absorb(&app.refresh(&first).await);
        app.clock.advance(Duration::seconds(6));

        let replay = app.refresh(&first).await;
        assert_eq!(replay.status(), 401);
        // Every token of the session is now dead: the current refresh token,
        // and the access token issued with it.
        assert_eq!(app.refresh(&current).await.status(), 401);
        assert_eq!(app.me(&current).await.status(), 401);
    })
    .await;
}

#[tokio::test]
async fn two_refreshes_racing_with_the_same_token_keep_the_session() {
    each_backend(async |app| {
        let (_, browser) = app.signed_in().await;
        let (a, b) = tokio::join!(app.refresh(&browser), app.refresh(&browser));
        assert_eq!((a.status().as_u16(), b.status().as_u16()), (200, 200));
        let rotated = |r: &reqwest::Response| {
            r.headers()
                .get_all(header::SET_COOKIE)
                .iter()
                .any(|c| c.to_str().unwrap().starts_with("__Host-refresh_token="))
        };
        // One won and rotated; the other lost within the grace window and got
        // an access token only, leaving the winner's refresh cookie in place.
        assert_eq!(u8::from(rotated(&a)) + u8::from(rotated(&b)), 1);
        let winner = if rotated(&a) { a } else { b };
        let mut after = browser.clone();
        after.absorb(&winner);
        app.clock.advance(Duration::seconds(10));
        assert_eq!(app.refresh(&after).await.status(), 200);
    })
    .await;
}

#[tokio::test]
async fn a_refresh_needs_the_csrf_header_and_a_refused_one_does_not_use_the_token_up() {
    each_backend(async |app| {
        let (_, browser) = app.signed_in().await;
        let no_header = app.with_cookies(Method::POST, "/auth/refresh", &browser).send().await.unwrap();
        assert_eq!(no_header.status(), 403);
        assert_eq!(code(no_header).await, "csrf_failed");
        app.clock.advance(Duration::seconds(60));
        assert_eq!(app.refresh(&browser).await.status(), 200);
    })
    .await;
}

#[tokio::test]
async fn an_access_token_or_garbage_as_refresh_token_is_401() {
    each_backend(async |app| {
        let (_, browser) = app.signed_in().await;
        let mut swapped = browser.clone();
        swapped.cookies.insert("__Host-refresh_token".into(), browser.access().to_owned());
        assert_eq!(app.refresh(&swapped).await.status(), 401);
        swapped.cookies.remove("__Host-refresh_token");
        assert_eq!(app.refresh(&swapped).await.status(), 401);
    })
    .await;
}

#[tokio::test]
async fn sessions_end_after_the_idle_period_and_after_the_absolute_lifetime() {
    each_backend(async |app| {
        let (_, idle) = app.signed_in().await;
        app.clock.advance(Duration::days(7) + Duration::seconds(1));
        let response = app.refresh(&idle).await;
        assert_eq!(response.status(), 401);

        let (_, mut busy) = app.signed_in().await;
        // Active every six days: never idle, yet the 30-day limit ends it.
        for _ in 0..4 {
            app.clock.advance(Duration::days(6));
            let response = app.refresh(&busy).await;
            assert_eq!(response.status(), 200);
            busy.absorb(&response);
        }
        app.clock.advance(Duration::days(6));
        assert_eq!(app.refresh(&busy).await.status(), 401, "refreshed past the 30-day lifetime");
    })
    .await;
}
