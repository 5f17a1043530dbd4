//! Login throttling per account and token buckets per client, as an
//! attacker meets them: guesses in parallel from many addresses, one
//! password sprayed over many accounts, and the owner finding the way back.

use std::sync::Arc;

use auth_core::throttling::{Bucket, Limits};
use reqwest::{Method, StatusCode, header};
use serde_json::json;

use crate::helpers::*;

const NEW_PASSWORD: &str = "a brand new passphrase for the account";

/// The real defaults: 5 free failures, doubling waits up to 15 minutes,
/// 100 at most; 20 logins at once per client, then 10 a minute.
fn real() -> Options {
    Options {
        limits: Some(Limits::default()),
        trusted_proxies: vec!["127.0.0.1/32".into(), "::1/128".into()],
        ..Options::default()
    }
}

/// A login as the client at `ip` (the test is the trusted proxy in front).
async fn login_from(app: &TestApp, ip: &str, email: &str, password: &str) -> reqwest::Response {
    app.request(Method::POST, "/auth/login")
        .header("x-forwarded-for", ip)
        .json(&json!({"email": email, "password": password}))
        .send()
        .await
        .unwrap()
}

/// `count` logins to `email`, at most 100 at once, from 50 addresses of
/// `net` (a /24 prefix) in turn; the statuses, and each distinct 429 body with its Retry-After.
async fn flood(app: &Arc<TestApp>, net: &str, email: &str, count: usize) -> (Vec<StatusCode>, Vec<(String, String)>) {
    let gate = Arc::new(tokio::sync::Semaphore::new(100));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..count {
        let (app, gate, email) = (app.clone(), gate.clone(), email.to_owned());
        let ip = format!("{net}{}", i % 50);
        tasks.spawn(async move {
            let _permit = gate.acquire().await.unwrap();
            let answer = login_from(&app, &ip, &email, "not the password at all").await;
            let retry = answer.headers().get(header::RETRY_AFTER).map(|v| v.to_str().unwrap().to_owned());
            let status = answer.status();
            (status, retry, answer.text().await.unwrap())
        });
    }
    let (mut statuses, mut throttled) = (Vec::new(), Vec::new());
    while let Some(done) = tasks.join_next().await {
        let (status, retry, text) = done.unwrap();
        statuses.push(status);
        if status == StatusCode::TOO_MANY_REQUESTS {
            let retry = retry.expect("a 429 without Retry-After");
            assert!(retry.parse::<u32>().unwrap() >= 1, "{retry}");
            if !throttled.iter().any(|(t, _)| *t == text) {
                throttled.push((text, retry));
            }
        }
    }
    (statuses, throttled)
}

async fn metric(app: &TestApp, name: &str) -> u64 {
    let text = app.request(Method::GET, "/metrics").bearer_auth(METRICS_TOKEN).send().await.unwrap();
    let text = text.text().await.unwrap();
    let line = text.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("no {name} in {text}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

#[tokio::test]
async fn a_thousand_parallel_guesses_from_fifty_addresses_check_at_most_five_passwords() {
    each_backend_with(real(), async |app: TestApp| {
        let app = Arc::new(app);
        let owner = email();
        assert_eq!(app.register(&owner, PASSWORD).await.status(), StatusCode::CREATED);
        let stranger = email();
        for (net, target) in [("198.51.100.", &owner), ("192.0.2.", &stranger)] {
            let checked_before = metric(&app, "gatehouse_password_hash_operations_total").await;
            let (statuses, throttled) = flood(&app, net, target, 1000).await;
            let checked = metric(&app, "gatehouse_password_hash_operations_total").await - checked_before;
            let refused = statuses.iter().filter(|s| **s == StatusCode::UNAUTHORIZED).count();
            let throttled_count = statuses.iter().filter(|s| **s == StatusCode::TOO_MANY_REQUESTS).count();
            assert_eq!((refused, throttled_count), (5, 995), "{target}: {statuses:?}");
            assert_eq!(checked, 5, "{target}: passwords checked");
            assert_eq!(throttled.len(), 1, "one 429 body for all: {throttled:?}");
            assert!(throttled[0].0.contains("too_many_requests"), "{throttled:?}");
        }
        assert_eq!(metric(&app, "gatehouse_logins_total{result=\"throttled_account\"}").await, 1990);

        // The owner waits out the delay (1 s after five failures) and is in;
        // the count starts again.
        let fresh = "203.0.113.9";
        let early = login_from(&app, fresh, &owner, PASSWORD).await;
        assert_eq!(early.status(), StatusCode::TOO_MANY_REQUESTS, "a right password waits like a wrong one");
        app.clock.advance(time::Duration::seconds(2));
        assert_eq!(login_from(&app, fresh, &owner, PASSWORD).await.status(), StatusCode::OK);
        for _ in 0..5 {
            let wrong = login_from(&app, fresh, &owner, "still not the password").await;
            assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED, "five free failures again");
        }
        assert_eq!(login_from(&app, fresh, &owner, PASSWORD).await.status(), StatusCode::TOO_MANY_REQUESTS);
    })
    .await;
}

#[tokio::test]
async fn one_password_sprayed_over_many_accounts_throttles_its_client_and_no_one_else() {
    each_backend_with(real(), async |app: TestApp| {
        let victim = email();
        assert_eq!(app.register(&victim, PASSWORD).await.status(), StatusCode::CREATED);
        let sprayer = "192.0.2.66";
        let mut statuses = Vec::new();
        for i in 0..1000 {
            let target = if i == 500 { victim.clone() } else { format!("spray-{i}-{}", email()) };
            statuses.push(login_from(&app, sprayer, &target, PASSWORD).await.status());
        }
        let refused = statuses.iter().filter(|s| **s == StatusCode::UNAUTHORIZED).count();
        let throttled = statuses.iter().filter(|s| **s == StatusCode::TOO_MANY_REQUESTS).count();
        assert_eq!((refused, throttled), (20, 980), "the burst, then the client waits");
        assert_eq!(statuses[500], StatusCode::TOO_MANY_REQUESTS, "the victim's right password was never tried");
        assert_eq!(metric(&app, "gatehouse_logins_total{result=\"throttled_client\"}").await, 980);
        // Another client, even on the next address, is not held back.
        assert_eq!(login_from(&app, "192.0.2.67", &victim, PASSWORD).await.status(), StatusCode::OK);
        // An IPv6 client counts per /64: another address in it waits too.
        for i in 0..20 {
            let ip = format!("2001:db8:7:7::{i:x}");
            assert_eq!(login_from(&app, &ip, &email(), PASSWORD).await.status(), StatusCode::UNAUTHORIZED);
        }
        let same_64 = login_from(&app, "2001:db8:7:7:ffff::1", &victim, PASSWORD).await;
        assert_eq!(same_64.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(login_from(&app, "2001:db8:7:8::1", &victim, PASSWORD).await.status(), StatusCode::OK);
        // The bucket refills: 10 a minute.
        app.clock.advance(time::Duration::seconds(6));
        assert_eq!(login_from(&app, sprayer, &victim, PASSWORD).await.status(), StatusCode::OK);
    })
    .await;
}

#[tokio::test]
async fn the_hundredth_failure_leaves_a_reset_as_the_only_way_in_and_a_reset_is_never_throttled() {
    each_backend_with(real(), async |app: TestApp| {
        let owner = email();
        assert_eq!(app.register(&owner, PASSWORD).await.status(), StatusCode::CREATED);
        let attacker = |i: usize| format!("198.51.100.{}", i % 200);
        let mut failures = 0;
        let mut i = 0;
        while failures < 100 {
            i += 1;
            match login_from(&app, &attacker(i), &owner, "a wrong guess").await.status() {
                StatusCode::UNAUTHORIZED => failures += 1,
                StatusCode::TOO_MANY_REQUESTS => app.clock.advance(time::Duration::minutes(15)),
                other => panic!("{other}"),
            }
        }
        // A day later the right password still waits: only a reset helps.
        app.clock.advance(time::Duration::days(1));
        let locked = login_from(&app, "203.0.113.1", &owner, PASSWORD).await;
        assert_eq!(locked.status(), StatusCode::TOO_MANY_REQUESTS);
        let retry: u32 = locked.headers()[header::RETRY_AFTER].to_str().unwrap().parse().unwrap();
        assert!(retry <= 900, "the ceiling reads like any other wait: {retry}");

        // The attacker cannot keep the owner from the reset.
        assert_eq!(app.forgot(&owner).await.status(), StatusCode::ACCEPTED);
        let token = token_in(&mail(&owner, 2).await);
        assert_eq!(app.reset(&token, NEW_PASSWORD).await.status(), StatusCode::NO_CONTENT);
        assert_eq!(login_from(&app, "203.0.113.1", &owner, NEW_PASSWORD).await.status(), StatusCode::OK);
    })
    .await;
}

#[tokio::test]
async fn a_wrong_current_password_on_a_change_counts_as_a_failed_login() {
    each_backend_with(real(), async |app: TestApp| {
        let (email, browser) = app.signed_in().await;
        let change = |current: &'static str| {
            app.as_page(Method::POST, "/auth/password/change", &browser)
                .json(&json!({"current_password": current, "password": NEW_PASSWORD}))
                .send()
        };
        for _ in 0..5 {
            assert_eq!(change("not it at all").await.unwrap().status(), StatusCode::FORBIDDEN);
        }
        let throttled = change(PASSWORD).await.unwrap();
        assert_eq!(
            (throttled.status(), code(throttled).await.as_str()),
            (StatusCode::TOO_MANY_REQUESTS, "too_many_requests")
        );
        let login = login_from(&app, "203.0.113.2", &email, PASSWORD).await;
        assert_eq!(login.status(), StatusCode::TOO_MANY_REQUESTS, "the same count as login's");
        app.clock.advance(time::Duration::seconds(2));
        assert_eq!(change(PASSWORD).await.unwrap().status(), StatusCode::NO_CONTENT);
    })
    .await;
}

#[tokio::test]
async fn registration_forgot_and_refresh_have_buckets_per_client() {
    let small = Bucket { burst: 3, per_minute: 1 };
    let limits = Limits { register: small, forgot: small, refresh: small, ..Limits::default() };
    each_backend_with(Options { limits: Some(limits), ..real() }, async |app: TestApp| {
        let register = |ip: &'static str| {
            app.request(Method::POST, "/auth/register")
                .header("x-forwarded-for", ip)
                .json(&json!({"email": email(), "password": PASSWORD}))
                .send()
        };
        for _ in 0..3 {
            assert_eq!(register("192.0.2.10").await.unwrap().status(), StatusCode::CREATED);
        }
        let fourth = register("192.0.2.10").await.unwrap();
        assert_eq!(fourth.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(fourth.headers()[header::RETRY_AFTER], "60");
        assert_eq!(register("192.0.2.11").await.unwrap().status(), StatusCode::CREATED);

        let forgot = |ip: &'static str| {
            app.request(Method::POST, "/auth/password/forgot")
                .header("x-forwarded-for", ip)
                .json(&json!({"email": email()}))
                .send()
        };
        for _ in 0..3 {
            assert_eq!(forgot("192.0.2.12").await.unwrap().status(), StatusCode::ACCEPTED);
        }
        assert_eq!(forgot("192.0.2.12").await.unwrap().status(), StatusCode::TOO_MANY_REQUESTS);

        let (_, mut browser) = app.signed_in().await;
        for _ in 0..3 {
            let refreshed =
                app.as_page(Method::POST, "/auth/refresh", &browser).header("x-forwarded-for", "192.0.2.13");
            let refreshed = refreshed.send().await.unwrap();
            assert_eq!(refreshed.status(), StatusCode::OK);
            browser.absorb(&refreshed);
        }
        let over = app.as_page(Method::POST, "/auth/refresh", &browser).header("x-forwarded-for", "192.0.2.13");
        let over = over.send().await.unwrap();
        assert_eq!(over.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(app.refresh(&browser).await.status(), StatusCode::OK, "the refused refresh used nothing up");
    })
    .await;
}

#[tokio::test]
async fn an_attackers_own_case_variant_account_cannot_clear_the_victims_count() {
    each_backend_with(real(), async |app: TestApp| {
        let victim = format!("victim-{}@example.com", uuid::Uuid::new_v4().simple());
        let variant = victim.replacen("victim", "VICTIM", 1);
        assert_eq!(app.register(&victim, PASSWORD).await.status(), StatusCode::CREATED);
        let own = "the attackers own passphrase";
        assert_eq!(app.register(&variant, own).await.status(), StatusCode::CREATED, "another account");
        for _ in 0..5 {
            let guess = login_from(&app, "198.51.100.1", &victim, "a wrong guess").await;
            assert_eq!(guess.status(), StatusCode::UNAUTHORIZED);
            assert_eq!(login_from(&app, "198.51.100.2", &variant, own).await.status(), StatusCode::OK);
        }
        let sixth = login_from(&app, "198.51.100.1", &victim, "a wrong guess").await;
        assert_eq!(sixth.status(), StatusCode::TOO_MANY_REQUESTS, "the variant's logins cleared the victim's count");
    })
    .await;
}

#[tokio::test]
async fn a_wrong_password_on_account_deletion_counts_as_a_failed_login() {
    each_backend_with(real(), async |app: TestApp| {
        let (_, browser) = app.signed_in().await;
        let delete = |password: &'static str| {
            app.as_page(Method::DELETE, "/auth/delete", &browser).json(&json!({"password": password})).send()
        };
        for _ in 0..5 {
            assert_eq!(delete("not it at all").await.unwrap().status(), StatusCode::FORBIDDEN);
        }
        let throttled = delete(PASSWORD).await.unwrap();
        assert_eq!(throttled.status(), StatusCode::TOO_MANY_REQUESTS);
        assert!(app.me(&browser).await.status().is_success(), "nothing was deleted");
        app.clock.advance(time::Duration::seconds(2));
        assert_eq!(delete(PASSWORD).await.unwrap().status(), StatusCode::NO_CONTENT);
    })
    .await;
}
