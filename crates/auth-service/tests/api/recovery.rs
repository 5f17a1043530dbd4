//! Password reset by emailed link, password change, email verification and
//! their rate limits, with the mail read from a real SMTP server.

use auth_core::EventKind;
use auth_core::recovery::Limit;
use auth_core::{RecoverySettings, UserId};
use reqwest::{Method, Response, StatusCode, header};
use serde_json::json;
use time::Duration;

use crate::helpers::*;

const NEW_PASSWORD: &str = "a brand new passphrase for tests";

impl TestApp {
    async fn post(&self, path: &str, body: serde_json::Value) -> Response {
        self.request(Method::POST, path).json(&body).send().await.unwrap()
    }

    pub async fn forgot(&self, email: &str) -> Response {
        self.post("/auth/password/forgot", json!({"email": email})).await
    }

    pub async fn reset(&self, token: &str, password: &str) -> Response {
        self.post("/auth/password/reset", json!({"token": token, "password": password})).await
    }
}

fn kinds_of(events: &[auth_core::events::StoredEvent]) -> Vec<EventKind> {
    events.iter().map(|e| e.event.kind).collect()
}

#[tokio::test]
async fn a_reset_link_sets_a_new_password_once_ends_every_session_and_signs_nobody_in() {
    each_backend(async |app: TestApp| {
        let (email, first) = app.signed_in().await;
        let second = app.log_in(&email).await;
        let forgot = app.forgot(&email).await;
        assert_eq!(forgot.status(), StatusCode::ACCEPTED);
        // The first message is the verification link of the registration.
        let message = mail(&email, 2).await;
        assert_eq!(message.subject, "Reset your password");
        let link = message.link(&format!("{ISSUER}/reset-password")).unwrap();
        assert!(link.starts_with(&format!("{ISSUER}/reset-password#token=")), "{link}");
        let token = token_in(&message);
        assert_eq!(token.len(), 43, "256 bits, base64url");
        assert!(message.html.contains(&token), "the HTML part carries the same link");

        let weak = app.reset(&token, "short").await;
        assert_eq!((weak.status(), code(weak).await.as_str()), (StatusCode::BAD_REQUEST, "password_too_short"));
        let reset = app.reset(&token, NEW_PASSWORD).await;
        assert_eq!(reset.status(), StatusCode::NO_CONTENT);
        let set: Vec<&str> = reset.headers().get_all(header::SET_COOKIE).iter().map(|v| v.to_str().unwrap()).collect();
        assert!(set.iter().all(|c| c.contains("Max-Age=0")), "nobody is signed in: {set:?}");

        for browser in [&first, &second] {
            assert_eq!(app.me(browser).await.status(), StatusCode::UNAUTHORIZED, "every session ended");
            assert_eq!(app.refresh(browser).await.status(), StatusCode::UNAUTHORIZED);
        }
        assert_eq!(app.login(&email, PASSWORD).await.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(app.login(&email, NEW_PASSWORD).await.status(), StatusCode::OK);
        let again = app.reset(&token, "yet another passphrase here").await;
        assert_eq!((again.status(), code(again).await.as_str()), (StatusCode::BAD_REQUEST, "invalid_token"));

        let notice = mail(&email, 3).await;
        assert_eq!(notice.subject, "Your password was changed");
        let me = app.log_in_with(&email, NEW_PASSWORD).await;
        assert_eq!(body(app.me(&me).await).await["email_verified"], true, "the link proved the address");
        let id: UserId = body(app.me(&me).await).await["id"].as_str().unwrap().parse().unwrap();
        let kinds = kinds_of(&app.stores.outbox.events_of(id).await.unwrap());
        assert_eq!(kinds.iter().filter(|k| **k == EventKind::PasswordReset).count(), 1);
        assert_eq!(kinds.iter().filter(|k| **k == EventKind::LoggedOut).count(), 2);
    })
    .await;
}

#[tokio::test]
async fn forgot_answers_alike_for_unknown_and_known_addresses_and_mails_only_an_account() {
    each_backend(async |app: TestApp| {
        let (known, _) = app.signed_in().await;
        let unknown = email();
        let strip = |response: &Response| {
            let mut headers: Vec<(String, String)> = response
                .headers()
                .iter()
                .filter(|(n, _)| *n != header::DATE && n.as_str() != "x-request-id")
                .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_owned()))
                .collect();
            headers.sort();
            (response.status(), headers)
        };
        let (a, b) = (app.forgot(&known).await, app.forgot(&unknown).await);
        assert_eq!(strip(&a), strip(&b));
        assert_eq!(a.status(), StatusCode::ACCEPTED);
        assert_eq!(a.bytes().await.unwrap(), b.bytes().await.unwrap());
        mail(&known, 2).await;
        assert!(SMTP.messages_to(&unknown).is_empty());
        let bad = app.forgot("not an address").await;
        assert_eq!(code(bad).await, "invalid_email");
    })
    .await;
}

#[tokio::test]
async fn expired_superseded_and_other_purpose_tokens_are_all_invalid() {
    each_backend(async |app: TestApp| {
        let (email, _) = app.signed_in().await;
        let verification = token_in(&mail(&email, 1).await);
        assert_eq!(code(app.reset(&verification, NEW_PASSWORD).await).await, "invalid_token", "another purpose");

        app.forgot(&email).await;
        let expired = token_in(&mail(&email, 2).await);
        app.clock.advance(Duration::minutes(15));
        assert_eq!(code(app.reset(&expired, NEW_PASSWORD).await).await, "invalid_token", "15 minutes, no more");

        app.forgot(&email).await;
        let older = token_in(&mail(&email, 3).await);
        app.forgot(&email).await;
        let newer = token_in(&mail(&email, 4).await);
        assert_eq!(code(app.reset(&older, NEW_PASSWORD).await).await, "invalid_token", "superseded");
        assert_eq!(code(app.reset("made-up-token", NEW_PASSWORD).await).await, "invalid_token");
        app.clock.advance(Duration::minutes(14));
        assert_eq!(app.reset(&newer, NEW_PASSWORD).await.status(), StatusCode::NO_CONTENT);
    })
    .await;
}

#[tokio::test]
async fn the_link_is_built_from_the_public_url_whatever_the_request_says() {
    each_backend(async |app: TestApp| {
        let (email, _) = app.signed_in().await;
        let forgot = app
            .request(Method::POST, "/auth/password/forgot")
            .header(header::HOST, "evil.example")
            .header("x-forwarded-host", "evil.example")
            .header("forwarded", "host=evil.example")
            .json(&json!({"email": email}))
            .send()
            .await
            .unwrap();
        assert_eq!(forgot.status(), StatusCode::ACCEPTED);
        let message = mail(&email, 2).await;
        assert!(!message.raw.contains("evil.example"), "{}", message.raw);
        assert!(message.link(&format!("{ISSUER}/reset-password#token=")).is_some());
    })
    .await;
}

#[tokio::test]
async fn changing_the_password_needs_the_current_one_and_ends_the_other_sessions() {
    each_backend(async |app: TestApp| {
        let (email, here) = app.signed_in().await;
        let elsewhere = app.log_in(&email).await;
        app.forgot(&email).await;
        let pending_reset = token_in(&mail(&email, 2).await);
        let change = |browser: &Browser, current: &str, csrf: bool| {
            let builder = if csrf {
                app.as_page(Method::POST, "/auth/password/change", browser)
            } else {
                app.with_cookies(Method::POST, "/auth/password/change", browser)
            };
            builder.json(&json!({"current_password": current, "password": NEW_PASSWORD})).send()
        };
        let wrong = change(&here, "not the password at all", true).await.unwrap();
        assert_eq!((wrong.status(), code(wrong).await.as_str()), (StatusCode::FORBIDDEN, "wrong_password"));
        let no_csrf = change(&here, PASSWORD, false).await.unwrap();
        assert_eq!((no_csrf.status(), code(no_csrf).await.as_str()), (StatusCode::FORBIDDEN, "csrf_failed"));
        let missing =
            app.as_page(Method::POST, "/auth/password/change", &here).json(&json!({"password": NEW_PASSWORD}));
        assert_eq!(missing.send().await.unwrap().status(), StatusCode::BAD_REQUEST);
        assert_eq!(change(&here, PASSWORD, true).await.unwrap().status(), StatusCode::NO_CONTENT);
        assert_eq!(app.me(&here).await.status(), StatusCode::OK, "this session stays");
        assert_eq!(app.me(&elsewhere).await.status(), StatusCode::UNAUTHORIZED, "the others end");
        assert_eq!(app.login(&email, NEW_PASSWORD).await.status(), StatusCode::OK);
        assert_eq!(mail(&email, 3).await.subject, "Your password was changed");
        let stale = app.reset(&pending_reset, "an attacker's new passphrase").await;
        assert_eq!(code(stale).await, "invalid_token", "a reset asked for before the change cannot undo it");
        let id: UserId = body(app.me(&here).await).await["id"].as_str().unwrap().parse().unwrap();
        let kinds = kinds_of(&app.stores.outbox.events_of(id).await.unwrap());
        assert!(kinds.contains(&EventKind::PasswordChanged));
    })
    .await;
}

#[tokio::test]
async fn a_verification_link_marks_the_address_verified_in_me_and_in_new_tokens() {
    each_backend(async |app: TestApp| {
        let (email, browser) = app.signed_in().await;
        let message = mail(&email, 1).await;
        assert_eq!(message.subject, "Confirm your email address");
        assert!(message.link(&format!("{ISSUER}/verify-email#token=")).is_some());
        assert_eq!(body(app.me(&browser).await).await["email_verified"], false);
        assert_eq!(claims(browser.access())["email_verified"], false);
        let verify = |token: String| app.post("/auth/email/verify", json!({"token": token}));
        assert_eq!(verify(token_in(&message)).await.status(), StatusCode::NO_CONTENT);
        assert_eq!(code(verify(token_in(&message)).await).await, "invalid_token", "single use");
        assert_eq!(body(app.me(&browser).await).await["email_verified"], true);
        let refreshed = app.refresh(&browser).await;
        let mut after = browser.clone();
        after.absorb(&refreshed);
        assert_eq!(claims(after.access())["email_verified"], true);
        // A verified address gets no more links.
        assert_eq!(app.post("/auth/email/resend", json!({"email": email})).await.status(), StatusCode::ACCEPTED);
        let (other, _) = app.signed_in().await;
        assert_eq!(app.post("/auth/email/resend", json!({"email": other})).await.status(), StatusCode::ACCEPTED);
        let resent = mail(&other, 2).await;
        assert_eq!(resent.subject, "Confirm your email address");
        assert_eq!(SMTP.messages_to(&email).len(), 1);
    })
    .await;
}

#[tokio::test]
async fn a_deployment_can_require_a_verified_address_before_login() {
    let options = Options { require_verified_email: true, ..Options::default() };
    each_backend_with(options, async |app: TestApp| {
        let email = email();
        assert_eq!(app.register(&email, PASSWORD).await.status(), StatusCode::CREATED);
        let refused = app.login(&email, PASSWORD).await;
        assert_eq!((refused.status(), code(refused).await.as_str()), (StatusCode::FORBIDDEN, "email_not_verified"));
        assert_eq!(code(app.login(&email, "wrong wrong wrong wrong").await).await, "invalid_credentials");
        let token = token_in(&mail(&email, 1).await);
        assert_eq!(app.post("/auth/email/verify", json!({"token": token})).await.status(), StatusCode::NO_CONTENT);
        assert_eq!(app.login(&email, PASSWORD).await.status(), StatusCode::OK);
    })
    .await;
}

#[tokio::test]
async fn requests_that_send_mail_are_limited_per_address_and_per_client_without_locking_anyone_out() {
    let recovery = RecoverySettings {
        per_email: Limit { max: 2, window: Duration::hours(1) },
        per_ip: Limit { max: 6, window: Duration::minutes(15) },
        ..RecoverySettings::default()
    };
    each_backend_with(Options { recovery: Some(recovery), ..Options::default() }, async |app: TestApp| {
        let (known, _) = app.signed_in().await;
        let unknown = email();
        for sent in 2..=3 {
            assert_eq!(app.forgot(&known).await.status(), StatusCode::ACCEPTED);
            assert_eq!(app.forgot(&unknown).await.status(), StatusCode::ACCEPTED);
            // Each delivered before the next voids it.
            mail(&known, sent).await;
        }
        for address in [&known, &unknown] {
            let third = app.forgot(address).await;
            assert_eq!(third.status(), StatusCode::TOO_MANY_REQUESTS, "alike for both");
            let wait: i64 = third.headers()[header::RETRY_AFTER].to_str().unwrap().parse().unwrap();
            assert!((1..=3600).contains(&wait), "{wait}");
            assert_eq!(code(third).await, "too_many_requests");
        }
        assert_eq!(app.login(&known, PASSWORD).await.status(), StatusCode::OK, "no lockout");
        let third_address = email();
        assert_eq!(app.forgot(&third_address).await.status(), StatusCode::TOO_MANY_REQUESTS, "this client used its 6");
        // Guessing reset tokens runs into the same per-client limit.
        let guesses = futures_statuses(&app, 8).await;
        assert!(guesses.contains(&StatusCode::TOO_MANY_REQUESTS), "{guesses:?}");
        app.clock.advance(Duration::hours(1));
        assert_eq!(app.forgot(&known).await.status(), StatusCode::ACCEPTED, "a new window");
        let sent = mail(&known, 4).await;
        assert_eq!(sent.subject, "Reset your password");
        assert_eq!(SMTP.messages_to(&known).len(), 4, "1 verification + 3 resets, never more");
    })
    .await;
}

async fn futures_statuses(app: &TestApp, n: usize) -> Vec<StatusCode> {
    let mut statuses = Vec::new();
    for i in 0..n {
        statuses.push(app.reset(&format!("guess-{i}"), NEW_PASSWORD).await.status());
    }
    statuses
}

#[tokio::test]
async fn no_login_racing_a_reset_keeps_a_session_afterwards() {
    each_backend(async |app: TestApp| {
        let (email, _) = app.signed_in().await;
        app.forgot(&email).await;
        let token = token_in(&mail(&email, 2).await);
        let logins: Vec<_> = (0..12)
            .map(|_| {
                let request =
                    app.request(Method::POST, "/auth/login").json(&json!({"email": email, "password": PASSWORD}));
                tokio::spawn(async move { request.send().await.unwrap() })
            })
            .collect();
        assert_eq!(app.reset(&token, NEW_PASSWORD).await.status(), StatusCode::NO_CONTENT);
        for login in logins {
            let login = login.await.unwrap();
            if login.status() == StatusCode::OK {
                let mut browser = Browser::default();
                browser.absorb(&login);
                assert_eq!(app.me(&browser).await.status(), StatusCode::UNAUTHORIZED, "a session outlived the reset");
            } else {
                assert_eq!(login.status(), StatusCode::UNAUTHORIZED);
            }
        }
    })
    .await;
}
