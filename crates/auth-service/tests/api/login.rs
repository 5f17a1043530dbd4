use auth_core::UserId;
use reqwest::{Method, header};
use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn login_sets_exactly_the_three_host_cookies_and_no_store() {
    each_backend(async |app| {
        let email = email();
        app.register(&email, PASSWORD).await;
        let response = app.login(&email, PASSWORD).await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()[header::CACHE_CONTROL], "no-store");
        let cookies: Vec<String> =
            response.headers().get_all(header::SET_COOKIE).iter().map(|v| v.to_str().unwrap().to_owned()).collect();
        assert_eq!(cookies.len(), 3);
        let attributes = |name: &str| -> Vec<String> {
            let cookie = cookies.iter().find(|c| c.starts_with(&format!("{name}="))).unwrap();
            let mut attrs: Vec<String> = cookie.split("; ").skip(1).map(str::to_owned).collect();
            attrs.sort();
            attrs
        };
        assert_eq!(attributes("__Host-access_token"), ["HttpOnly", "Max-Age=600", "Path=/", "SameSite=Lax", "Secure"]);
        let refresh = attributes("__Host-refresh_token");
        assert_eq!(
            refresh.iter().filter(|a| !a.starts_with("Max-Age=")).collect::<Vec<_>>(),
            ["HttpOnly", "Path=/", "SameSite=Lax", "Secure"]
        );
        let csrf = attributes("__Host-csrf_token");
        assert_eq!(
            csrf.iter().filter(|a| !a.starts_with("Max-Age=")).collect::<Vec<_>>(),
            ["Path=/", "SameSite=Lax", "Secure"]
        );
        for c in &cookies {
            assert!(!c.to_lowercase().contains("domain="), "{c}");
        }
        let mut browser = Browser::default();
        browser.absorb(&response);
        let body = body(response).await;
        assert_eq!(body["user"]["email"], email);
        assert!(body["session"]["id"].is_string());
        assert!(body["session"]["expires_at"].is_string());
        // The refresh token is 256 random bits; the database holds only its hash.
        assert_eq!(auth_tokens::b64url_decode(browser.refresh()).unwrap().len(), 32);
        let stored = auth_core::SecretHash::of(browser.refresh());
        assert!(app.stores.sessions.refresh_record(&stored).await.unwrap().is_some());
        let raw = auth_core::SecretHash::from_stored(browser.refresh().to_owned());
        assert!(app.stores.sessions.refresh_record(&raw).await.unwrap().is_none());
    })
    .await;
}

#[tokio::test]
async fn unknown_email_and_wrong_password_get_identical_401s_after_the_same_work() {
    each_backend(async |app| {
        let email = email();
        app.register(&email, PASSWORD).await;
        let mut answers = Vec::new();
        for (who, password) in [
            (email.as_str(), "wrong horse battery staple"),
            ("nobody@example.com", PASSWORD),
            ("not an email", PASSWORD),
        ] {
            let before = app.hash_operations();
            let response = app.login(who, password).await;
            assert_eq!(app.hash_operations(), before + 1, "{who}: no hash was verified");
            let status = response.status();
            let mut headers: Vec<(String, String)> = response
                .headers()
                .iter()
                .filter(|(k, _)| *k != header::DATE)
                .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_owned()))
                // Made for each request, so it says nothing of the account.
                .map(|(k, v)| if k == "x-request-id" { (k, "(per request)".to_owned()) } else { (k, v) })
                .collect();
            headers.sort();
            answers.push((status, headers, response.bytes().await.unwrap()));
        }
        assert_eq!(answers[0].0, 401);
        assert!(answers[0].1.contains(&("www-authenticate".into(), "Bearer".into())));
        assert_eq!(answers[0], answers[1]);
        assert_eq!(answers[0], answers[2]);
        let body: serde_json::Value = serde_json::from_slice(&answers[0].2).unwrap();
        assert_eq!(body["error"]["code"], "invalid_credentials");
    })
    .await;
}

#[tokio::test]
async fn the_whole_password_is_checked_exactly_after_nfc() {
    each_backend(async |app| {
        let email = email();
        let long = format!("{}{}", "a".repeat(72), "b".repeat(28));
        assert_eq!(app.register(&email, &long).await.status(), 201);
        assert_eq!(app.login(&email, &"a".repeat(72)).await.status(), 401);
        assert_eq!(app.login(&email, &long.to_uppercase()).await.status(), 401);
        assert_eq!(app.login(&email, &long).await.status(), 200);

        let other = crate::helpers::email();
        assert_eq!(app.register(&other, "caf\u{e9} caf\u{e9} caf\u{e9} caf\u{e9}").await.status(), 201);
        assert_eq!(app.login(&other, "cafe\u{301} cafe\u{301} cafe\u{301} cafe\u{301}").await.status(), 200);
    })
    .await;
}

#[tokio::test]
async fn a_hash_with_weaker_parameters_is_upgraded_at_login() {
    each_backend(async |app| {
        let email = email();
        let id: UserId = body(app.register(&email, PASSWORD).await).await["id"].as_str().unwrap().parse().unwrap();
        let weak = auth_core::Argon2Hasher::new(&auth_core::hashing::HashingSettings {
            memory_kib: 12_288,
            iterations: 3,
            ..Default::default()
        })
        .unwrap();
        let weak_hash =
            auth_core::PasswordHasher::hash(&weak, &auth_core::Password::for_login(PASSWORD)).await.unwrap();
        app.stores.users.set_password_hash(id, &weak_hash).await.unwrap();
        // Logins at once, each upgrading the same old hash: every one that
        // loses the upgrade to another still signs in.
        let logins: Vec<_> = (0..6)
            .map(|_| {
                let request =
                    app.request(Method::POST, "/auth/login").json(&json!({"email": email, "password": PASSWORD}));
                tokio::spawn(async move { request.send().await.unwrap().status() })
            })
            .collect();
        for login in logins {
            assert_eq!(login.await.unwrap(), 200);
        }
        let stored = app.stores.users.user_by_id(id).await.unwrap().unwrap().password_hash.unwrap();
        assert!(stored.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{stored}");
        assert_eq!(app.login(&email, PASSWORD).await.status(), 200);
    })
    .await;
}

#[tokio::test]
async fn login_and_register_are_refused_cross_site() {
    each_backend(async |app| {
        let email = email();
        app.register(&email, PASSWORD).await;
        let creds = json!({"email": email, "password": PASSWORD});
        for (name, value) in [("sec-fetch-site", "cross-site"), ("origin", "https://evil.example"), ("origin", "null")]
        {
            for path in ["/auth/login", "/auth/register"] {
                let response = app.request(Method::POST, path).header(name, value).json(&creds).send().await.unwrap();
                assert_eq!(response.status(), 403, "{path} with {name}: {value}");
                assert_eq!(code(response).await, "csrf_failed");
            }
        }
        let host = app.address.trim_start_matches("http://").to_owned();
        for (name, value) in [
            ("sec-fetch-site", "same-origin".to_owned()),
            ("origin", app.address.clone()),
            ("origin", "https://app.example.com".to_owned()),
            ("origin", ISSUER.to_owned()),
        ] {
            let response =
                app.request(Method::POST, "/auth/login").header(name, &value).json(&creds).send().await.unwrap();
            assert_eq!(response.status(), 200, "{name}: {value} (host {host})");
        }
    })
    .await;
}

#[tokio::test]
async fn credentials_are_not_accepted_in_a_get() {
    each_backend(async |app| {
        let response = app
            .request(Method::GET, "/auth/login?email=a@example.com&password=correct+horse+battery+staple")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 405);
    })
    .await;
}

#[tokio::test]
async fn me_answers_with_cookie_or_bearer_and_401_without() {
    each_backend(async |app| {
        let (email, browser) = app.signed_in().await;
        let by_cookie = app.me(&browser).await;
        assert_eq!(by_cookie.status(), 200);
        let me = body(by_cookie).await;
        assert_eq!(me["email"], email);
        assert_eq!(me["email_verified"], false);
        assert_eq!(me["roles"], json!(["user"]), "granted on registration");
        assert_eq!(me["permissions"], json!([]));
        assert!(me["id"].is_string() && me["created_at"].is_string());
        assert_eq!(body(app.me_bearer(browser.access()).await).await, me);

        let anonymous = app.request(Method::GET, "/auth/me").send().await.unwrap();
        assert_eq!(anonymous.status(), 401);
        assert_eq!(anonymous.headers()[header::WWW_AUTHENTICATE], "Bearer");
        assert_eq!(code(anonymous).await, "unauthenticated");
        let basic = app.request(Method::GET, "/auth/me").basic_auth("a", Some("b")).send().await.unwrap();
        assert_eq!(basic.status(), 401);
    })
    .await;
}

#[tokio::test]
async fn every_login_opens_a_fresh_session_with_fresh_tokens() {
    each_backend(async |app| {
        let (email, first) = app.signed_in().await;
        let mut planted = first.clone();
        planted.cookies.insert("__Host-csrf_token".into(), "attacker.chosen".into());
        let response = app
            .with_cookies(Method::POST, "/auth/login", &planted)
            .json(&json!({"email": email, "password": PASSWORD}))
            .send()
            .await
            .unwrap();
        let mut second = planted.clone();
        second.absorb(&response);
        assert_ne!(second.access(), first.access());
        assert_ne!(second.csrf(), "attacker.chosen");
        assert_ne!(second.refresh(), first.refresh());
        assert_ne!(claims(second.access())["sid"], claims(first.access())["sid"]);
        assert_ne!(claims(second.access())["jti"], claims(first.access())["jti"]);
    })
    .await;
}

#[tokio::test]
async fn a_login_never_keeps_session_material_the_browser_brought() {
    each_backend(async |app| {
        // An attacker plants cookies (a token of its own session, a CSRF
        // value it knows) in the victim's browser before the victim logs in.
        let (_, attacker) = app.signed_in().await;
        let email = email();
        app.register(&email, PASSWORD).await;
        let planted = format!(
            "__Host-access_token={}; __Host-refresh_token={}; __Host-csrf_token={}",
            attacker.access(),
            attacker.refresh(),
            attacker.csrf()
        );
        let login = app
            .request(Method::POST, "/auth/login")
            .header(header::COOKIE, &planted)
            .json(&json!({"email": email, "password": PASSWORD}))
            .send()
            .await
            .unwrap();
        assert_eq!(login.status(), 200);
        let mut victim = Browser::default();
        victim.absorb(&login);
        assert_ne!(victim.access(), attacker.access());
        assert_ne!(victim.refresh(), attacker.refresh());
        assert_ne!(victim.csrf(), attacker.csrf());
        let (theirs, ours) = (claims(attacker.access()), claims(victim.access()));
        assert_ne!(theirs["jti"], ours["jti"]);
        assert_ne!(theirs["sid"], ours["sid"], "a session of its own");
        // The planted CSRF value does not work for the victim's session.
        let mixed = app
            .with_cookies(Method::DELETE, "/auth/logout", &victim)
            .header("x-csrf-token", attacker.csrf())
            .send()
            .await
            .unwrap();
        assert_eq!(code(mixed).await, "csrf_failed");
        assert_eq!(body(app.me(&victim).await).await["email"], email.as_str());
    })
    .await;
}
