//! The audit trail of authentication events, read back through the admin
//! API as an operator would: who, what, from which client, under which
//! request, why, and nothing secret.

use auth_core::throttling::Limits;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use time::Duration;

use crate::helpers::*;

const NEW_PASSWORD: &str = "a brand new passphrase for the account";
const AGENT: &str = "Audit-Probe/1.0 (\"quoted\")";

/// The real limits; the test stands as the trusted proxy in front, so the
/// client addresses it names in `X-Forwarded-For` are believed.
fn options() -> Options {
    Options {
        limits: Some(Limits::default()),
        trusted_proxies: vec!["127.0.0.1/32".into(), "::1/128".into()],
        ..Options::default()
    }
}

/// Every entry of the audit log, oldest first.
async fn entries(app: &TestApp) -> Vec<Value> {
    let page = app.request(Method::GET, "/auth/admin/audit?limit=200").bearer_auth(OPERATOR_TOKEN).send().await;
    let page = body(page.unwrap()).await;
    assert!(page["next"].is_null(), "one page holds them all");
    let mut entries = page["entries"].as_array().unwrap().clone();
    entries.reverse();
    entries
}

/// The entries of `action`, oldest first.
fn of<'a>(entries: &'a [Value], action: &str) -> Vec<&'a Value> {
    entries.iter().filter(|e| e["action"] == action).collect()
}

async fn login_from(app: &TestApp, ip: &str, request_id: &str, email: &str, password: &str) -> reqwest::Response {
    app.request(Method::POST, "/auth/login")
        .header("x-forwarded-for", ip)
        .header("user-agent", AGENT)
        .header("x-request-id", request_id)
        .json(&json!({"email": email, "password": password}))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn every_authentication_event_is_in_the_audit_log_with_its_client_request_and_reason() {
    each_backend_with(options(), async |app: TestApp| {
        let owner = email();
        assert_eq!(app.register(&owner, PASSWORD).await.status(), StatusCode::CREATED);
        let wrong = login_from(&app, "203.0.113.10", "req-wrong", &owner, "not the password").await;
        assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
        let stranger = login_from(&app, "2001:db8::7", "req-unknown", &email(), PASSWORD).await;
        assert_eq!(stranger.status(), StatusCode::UNAUTHORIZED);

        // A login without a request id is given one, in the answer and the row.
        let right = app.request(Method::POST, "/auth/login").json(&json!({"email": owner, "password": PASSWORD}));
        let right = right.send().await.unwrap();
        assert_eq!(right.status(), StatusCode::OK);
        let made_id = right.headers()["x-request-id"].to_str().unwrap().to_owned();
        let mut browser = Browser::default();
        browser.absorb(&right);
        let id = body(app.me(&browser).await).await["id"].as_str().unwrap().to_owned();
        let first_session = claims(browser.access())["sid"].as_str().unwrap().to_owned();

        // A stolen refresh token played back after its rotation.
        let stolen = browser.clone();
        browser.absorb(&app.refresh(&stolen).await);
        app.clock.advance(Duration::seconds(6));
        assert_eq!(app.refresh(&stolen).await.status(), StatusCode::UNAUTHORIZED);

        let browser = app.log_in(&owner).await;
        let change = |current: &'static str| {
            app.as_page(Method::POST, "/auth/password/change", &browser)
                .json(&json!({"current_password": current, "password": NEW_PASSWORD}))
                .send()
        };
        assert_eq!(change("not it either").await.unwrap().status(), StatusCode::FORBIDDEN);
        assert_eq!(change(PASSWORD).await.unwrap().status(), StatusCode::NO_CONTENT);
        let logout = app.as_page(Method::DELETE, "/auth/logout", &browser).send().await.unwrap();
        assert_eq!(logout.status(), StatusCode::NO_CONTENT);

        assert_eq!(app.forgot(&owner).await.status(), StatusCode::ACCEPTED);
        // After the verification link and the notice of the change.
        let token = token_in(&mail(&owner, 3).await);
        assert_eq!(app.reset("a guessed token", PASSWORD).await.status(), StatusCode::BAD_REQUEST);
        let verify = app.request(Method::POST, "/auth/email/verify").json(&json!({"token": "another guess"}));
        assert_eq!(verify.send().await.unwrap().status(), StatusCode::BAD_REQUEST);
        assert_eq!(app.reset(&token, PASSWORD).await.status(), StatusCode::NO_CONTENT);

        // Five failures since the reset; the sixth attempt waits.
        for i in 0..5 {
            let failed = login_from(&app, "203.0.113.10", &format!("req-more-{i}"), &owner, "still wrong").await;
            assert_eq!(failed.status(), StatusCode::UNAUTHORIZED);
        }
        let throttled = login_from(&app, "203.0.113.10", "req-throttled", &owner, PASSWORD).await;
        assert_eq!(throttled.status(), StatusCode::TOO_MANY_REQUESTS);

        app.clock.advance(Duration::seconds(2));
        let last = app.log_in(&owner).await;
        let delete = app.as_page(Method::DELETE, "/auth/delete", &last).json(&json!({"password": PASSWORD}));
        assert_eq!(delete.send().await.unwrap().status(), StatusCode::NO_CONTENT);

        let log = entries(&app).await;
        let registered = of(&log, "account.registered");
        assert_eq!((registered.len(), &registered[0]["target"]), (1, &json!(id)));
        let failed = of(&log, "login.failed");
        assert_eq!(failed.len(), 7, "{failed:?}");
        let first = failed[0];
        assert_eq!(first["target"], id.as_str());
        assert_eq!(first["actor"], Value::Null, "nobody was signed in");
        assert_eq!(first["reason"], "wrong_password");
        assert_eq!(first["ip"], "203.0.113.10");
        assert_eq!(first["user_agent"], AGENT);
        assert_eq!(first["request_id"], "req-wrong");
        let unknown = failed[1];
        assert_eq!((&unknown["target"], &unknown["reason"]), (&Value::Null, &json!("unknown_account")));
        assert_eq!((&unknown["ip"], &unknown["request_id"]), (&json!("2001:db8::7"), &json!("req-unknown")));

        let succeeded = of(&log, "login.succeeded");
        assert_eq!(succeeded.len(), 3);
        assert_eq!(succeeded[0]["request_id"], made_id.as_str());
        assert_eq!(succeeded[0]["actor"], id.as_str());
        assert_eq!(succeeded[0]["ip"], "127.0.0.1", "no forwarded address: the peer");
        assert_eq!(succeeded[0]["detail"], json!({"session": first_session, "method": "password"}));

        let reused = of(&log, "refresh.reused");
        assert_eq!(reused.len(), 1);
        assert_eq!(reused[0]["target"], id.as_str());
        assert_eq!(reused[0]["detail"]["session"], first_session.as_str());
        assert_eq!(reused[0]["reason"], "refresh_token_reuse");

        let guessed = of(&log, "password.reset_refused");
        assert_eq!(
            (guessed.len(), &guessed[0]["reason"], &guessed[0]["target"]),
            (1, &json!("invalid_token"), &Value::Null)
        );
        assert_eq!(of(&log, "email.verify_refused")[0]["reason"], "invalid_token");
        let refused = of(&log, "password.change_refused");
        assert_eq!((refused.len(), &refused[0]["reason"]), (1, &json!("wrong_password")));
        for action in ["password.changed", "logout", "password.reset", "account.deleted"] {
            let found = of(&log, action);
            assert_eq!(found.len(), 1, "{action}: {log:?}");
            assert_eq!(found[0]["target"], id.as_str(), "{action}");
        }
        let throttled = of(&log, "login.throttled");
        assert_eq!(throttled.len(), 1);
        assert_eq!(
            (&throttled[0]["reason"], &throttled[0]["request_id"]),
            (&json!("account_throttled"), &json!("req-throttled"))
        );

        // In the order they happened.
        let order: Vec<&str> = log.iter().map(|e| e["action"].as_str().unwrap()).collect();
        let position = |action: &str| order.iter().position(|a| *a == action).unwrap();
        assert!(position("refresh.reused") < position("password.changed"), "{order:?}");
        assert!(position("password.reset") < position("login.throttled"), "{order:?}");
        assert!(position("login.throttled") < position("account.deleted"), "{order:?}");

        // Nothing secret: no password, no address typed, no token.
        let text = serde_json::to_string(&log).unwrap();
        let tokens = [browser.access(), browser.refresh(), stolen.refresh(), token.as_str()];
        for secret in [PASSWORD, NEW_PASSWORD, owner.as_str()].into_iter().chain(tokens) {
            assert!(!text.contains(secret), "the audit log holds {secret}");
        }
    })
    .await;
}

#[tokio::test]
async fn a_flooding_clients_refusals_cost_no_audit_row() {
    each_backend_with(options(), async |app: TestApp| {
        let target = email();
        let mut statuses = Vec::new();
        for i in 0..21 {
            let attempt = login_from(&app, "198.51.100.9", &format!("req-{i}"), &format!("{i}{target}"), "guess").await;
            statuses.push(attempt.status());
        }
        assert_eq!(statuses.last(), Some(&StatusCode::TOO_MANY_REQUESTS), "{statuses:?}");
        // The 20 its bucket let through are rows; the refusal is a log line
        // only, or a flood would cost a write per refused request.
        let log = entries(&app).await;
        assert_eq!(of(&log, "login.failed").len(), 20);
        assert!(of(&log, "login.throttled").is_empty(), "{log:?}");
    })
    .await;
}
