//! Login through a real OpenID provider (panva's oidc-provider): the whole
//! redirect chain, driven as a browser would, with the checks of each step.

use std::sync::LazyLock;

use auth_core::{EventKind, SessionId, UserId};
use auth_service::testing::OidcProvider;
use reqwest::{Method, Response, StatusCode, header};
use serde_json::json;

use crate::helpers::*;

const CALLBACK: &str = "http://127.0.0.1:8080/auth/oauth/test/callback";

static PROVIDER: LazyLock<OidcProvider> = LazyLock::new(|| OidcProvider::start(CALLBACK));

fn options() -> Options {
    Options { oauth_issuer: Some(PROVIDER.issuer.clone()), ..Options::default() }
}

fn location(response: &Response) -> String {
    response.headers()[header::LOCATION].to_str().unwrap().to_owned()
}

/// The browser at the provider: follows its redirects with its cookies
/// until it is sent back to us, and returns that URL.
async fn at_the_provider(url: &str) -> String {
    let browser = reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::custom(|attempt| {
            if attempt.url().as_str().starts_with(CALLBACK) { attempt.stop() } else { attempt.follow() }
        }))
        .build()
        .unwrap();
    let response = browser.get(url).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::SEE_OTHER, "the provider sends the browser back");
    let back = location(&response);
    assert!(back.starts_with(CALLBACK), "{back}");
    back
}

/// Starts a login (`query` for `start`), returns the state cookie and the
/// provider URL.
async fn start(app: &TestApp, query: &str) -> (Browser, String) {
    let started = app.request(Method::GET, &format!("/auth/oauth/test/start?{query}")).send().await.unwrap();
    assert_eq!(started.status(), StatusCode::SEE_OTHER);
    let mut browser = Browser::default();
    browser.absorb(&started);
    assert!(browser.get("__Host-oauth_state").is_some());
    (browser, location(&started))
}

/// Comes back to the callback with `query` and the browser's cookies.
async fn back(app: &TestApp, browser: &Browser, back_url: &str) -> Response {
    let path = back_url.strip_prefix("http://127.0.0.1:8080").unwrap();
    app.with_cookies(Method::GET, path, browser).send().await.unwrap()
}

/// A whole login as `hint`; the callback's answer.
async fn sign_in(app: &TestApp, hint: &str, return_to: &str) -> (Response, Browser) {
    let (mut browser, to_provider) = start(app, &format!("login_hint={hint}&return_to={return_to}")).await;
    let answer = back(app, &browser, &at_the_provider(&to_provider).await).await;
    browser.absorb(&answer);
    (answer, browser)
}

fn error_of(response: &Response) -> String {
    let to = location(response);
    assert!(to.starts_with("/login?error="), "{to}");
    to.trim_start_matches("/login?error=").to_owned()
}

#[tokio::test]
async fn a_first_login_creates_the_account_and_the_next_one_finds_it() {
    each_backend_with(options(), async |app: TestApp| {
        let email = email();
        let (answer, browser) = sign_in(&app, &email, "%2Fnotes%3Fx%3D1").await;
        assert_eq!(answer.status(), StatusCode::SEE_OTHER);
        assert_eq!(location(&answer), "/notes?x=1");
        let me = body(app.me(&browser).await).await;
        assert_eq!(me["email"], email.as_str());
        assert_eq!(me["email_verified"], true);
        let id: UserId = me["id"].as_str().unwrap().parse().unwrap();
        let events = app.stores.outbox.events_of(id).await.unwrap();
        assert_eq!(events[0].event.kind, EventKind::Registered);
        assert_eq!(events[0].event.data["method"], "oauth:test");
        assert!(browser.get("__Host-oauth_state").is_none(), "the attempt is cleared");

        let (again, second) = sign_in(&app, &email, "%2F").await;
        assert_eq!(again.status(), StatusCode::SEE_OTHER);
        assert_eq!(body(app.me(&second).await).await["id"], me["id"], "the same account");
        assert_eq!(app.login(&email, PASSWORD).await.status(), StatusCode::UNAUTHORIZED, "no password");

        // Each login's audit row, written with its session, names the
        // provider and the request its answer came back with.
        let entries = app.stores.roles.audit_page(None, 200).await.unwrap();
        let target = Some(id.to_string());
        let logins: Vec<_> =
            entries.iter().rev().filter(|e| e.action == "login.succeeded" && e.target == target).collect();
        assert_eq!(logins.len(), 2, "{entries:#?}");
        for (entry, answer) in logins.into_iter().zip([&answer, &again]) {
            assert_eq!((entry.detail["method"].as_str(), entry.actor), (Some("oauth:test"), Some(id)));
            let sent = answer.headers().get("x-request-id").and_then(|v| v.to_str().ok());
            assert_eq!(entry.request_id.as_deref(), sent, "the answer's request id");
            let session: SessionId = entry.detail["session"].as_str().unwrap().parse().unwrap();
            assert_eq!(app.stores.sessions.session(session).await.unwrap().map(|s| s.user_id), Some(id));
        }
    })
    .await;
}

#[tokio::test]
async fn the_authorization_request_uses_pkce_state_and_nonce() {
    each_backend_with(options(), async |app: TestApp| {
        let (browser, url) = start(&app, "login_hint=a%40example.com").await;
        assert!(url.starts_with(&format!("{}/auth?", PROVIDER.issuer)), "{url}");
        let query: Vec<(String, String)> = url
            .split_once('?')
            .unwrap()
            .1
            .split('&')
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap();
                (k.to_owned(), v.to_owned())
            })
            .collect();
        let get = |k: &str| query.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()).unwrap_or_default();
        assert_eq!(get("response_type"), "code");
        assert_eq!(get("code_challenge_method"), "S256");
        assert_eq!(get("code_challenge").len(), 43);
        assert_eq!(get("redirect_uri"), "http%3A%2F%2F127.0.0.1%3A8080%2Fauth%2Foauth%2Ftest%2Fcallback");
        assert_eq!(get("login_hint"), "a%40example.com");
        assert!(get("state").len() >= 22 && get("nonce").len() >= 22);
        let cookie = browser.get("__Host-oauth_state").unwrap();
        assert!(!cookie.contains(&get("code_challenge")), "the verifier, not the challenge, is kept");
        let (_, again) = start(&app, "login_hint=a%40example.com").await;
        assert_ne!(again, url, "every attempt has its own secrets");
    })
    .await;
}

#[tokio::test]
async fn a_callback_without_the_matching_state_is_refused() {
    each_backend_with(options(), async |app: TestApp| {
        let (browser, to_provider) = start(&app, "login_hint=eve%40example.com").await;
        let back_url = at_the_provider(&to_provider).await;
        let tampered = back_url.replace("state=", "state=x");
        assert_eq!(error_of(&back(&app, &browser, &tampered).await), "invalid_state");
        assert_eq!(error_of(&back(&app, &Browser::default(), &back_url).await), "invalid_state", "no cookie");
        let mut forged = browser.clone();
        forged.cookies.insert("__Host-oauth_state".into(), "e30.AAAA".into());
        assert_eq!(error_of(&back(&app, &forged, &back_url).await), "invalid_state", "a cookie we did not seal");
    })
    .await;
}

#[tokio::test]
async fn an_id_token_for_another_attempt_fails_the_nonce_check() {
    each_backend_with(options(), async |app: TestApp| {
        let (_, first) = start(&app, "login_hint=mallory%40example.com").await;
        let (browser, second) = start(&app, "login_hint=mallory%40example.com").await;
        let nonce_of = |url: &str| url.split("nonce=").nth(1).unwrap().split('&').next().unwrap().to_owned();
        // The second attempt's request (its state and PKCE challenge, so
        // only the nonce is wrong) carrying the first one's nonce.
        let spliced = second.replace(&nonce_of(&second), &nonce_of(&first));
        let answer = back(&app, &browser, &at_the_provider(&spliced).await).await;
        assert_eq!(error_of(&answer), "provider_response_invalid");
    })
    .await;
}

#[tokio::test]
async fn provider_errors_and_an_unreachable_provider_end_on_the_error_page() {
    each_backend_with(options(), async |app: TestApp| {
        let (browser, to_provider) = start(&app, "login_hint=a%40example.com").await;
        let state = to_provider.split("state=").nth(1).unwrap().split('&').next().unwrap();
        let denied = format!("{CALLBACK}?error=access_denied&state={state}");
        assert_eq!(error_of(&back(&app, &browser, &denied).await), "access_denied");
        // Without PKCE the provider refuses, and says so to the callback.
        let (browser, to_provider) = start(&app, "login_hint=a%40example.com").await;
        let without_pkce = to_provider.replace("code_challenge_method=S256", "").replace("code_challenge=", "x=");
        let refused = back(&app, &browser, &at_the_provider(&without_pkce).await).await;
        assert_eq!(error_of(&refused), "invalid_request");
        let down = app.request(Method::GET, "/auth/oauth/down/start").send().await.unwrap();
        assert_eq!(down.status(), StatusCode::SEE_OTHER);
        assert_eq!(error_of(&down), "provider_unavailable");
        let unknown = app.request(Method::GET, "/auth/oauth/nope/start").send().await.unwrap();
        assert_eq!(error_of(&unknown), "unknown_provider");
    })
    .await;
}

#[tokio::test]
async fn return_to_elsewhere_is_ignored() {
    each_backend_with(options(), async |app: TestApp| {
        for evil in
            ["https%3A%2F%2Fevil.example%2F", "%2F%2Fevil.example", "https%3A%2F%2Fapp.example.com.evil.example"]
        {
            let (answer, _) = sign_in(&app, &email(), evil).await;
            assert_eq!(location(&answer), "/", "{evil}");
        }
        let (answer, _) = sign_in(&app, &email(), "https%3A%2F%2Fapp.example.com%2Fhome").await;
        assert_eq!(location(&answer), "https://app.example.com/home", "a trusted origin");
    })
    .await;
}

#[tokio::test]
async fn an_existing_account_is_linked_only_when_both_sides_verified_the_email() {
    each_backend_with(options(), async |app: TestApp| {
        // Local account not verified: no link, no login.
        let (unverified_local, _) = app.signed_in().await;
        let (answer, _) = sign_in(&app, &unverified_local, "%2F").await;
        assert_eq!(error_of(&answer), "link_required");

        // Verified locally, verified by the provider: linked.
        let (verified_local, browser) = app.signed_in().await;
        let token = token_in(&mail(&verified_local, 1).await);
        let verify = app.request(Method::POST, "/auth/email/verify").json(&json!({"token": token})).send().await;
        assert_eq!(verify.unwrap().status(), StatusCode::NO_CONTENT);
        let (answer, through_provider) = sign_in(&app, &verified_local, "%2F").await;
        assert_eq!(answer.status(), StatusCode::SEE_OTHER);
        assert_eq!(location(&answer), "/");
        let id = body(app.me(&browser).await).await["id"].clone();
        assert_eq!(body(app.me(&through_provider).await).await["id"], id);
        assert_eq!(mail(&verified_local, 2).await.subject, "A new way to sign in to your account");

        // The provider does not vouch for the address: no link, and no new
        // account either (whoever typed it at the provider would hold it).
        let (answer, _) = sign_in(&app, &format!("unverified%2B{}", verified_local.replace('@', "%40")), "%2F").await;
        assert_eq!(error_of(&answer), "link_required");
        let (answer, _) = sign_in(&app, &format!("unverified%2B{}", email().replace('@', "%40")), "%2F").await;
        assert_eq!(error_of(&answer), "email_not_verified");
    })
    .await;
}

#[tokio::test]
async fn a_provider_account_lists_its_identity_keeps_its_last_one_and_deletes_itself_after_a_fresh_login() {
    each_backend_with(options(), async |app: TestApp| {
        let (_, browser) = sign_in(&app, &email(), "%2F").await;
        let listed = body(app.me_identities(&browser).await).await;
        assert_eq!(listed["has_password"], false);
        let identity = listed["identities"][0]["id"].as_str().unwrap().to_owned();
        assert_eq!(listed["identities"][0]["provider"], "test");
        let unlink = |id: &str| app.as_page(Method::DELETE, &format!("/auth/me/identities/{id}"), &browser).send();
        let last = unlink(&identity).await.unwrap();
        assert_eq!((last.status(), code(last).await.as_str()), (StatusCode::CONFLICT, "last_login_method"));
        let unknown = unlink(&uuid::Uuid::new_v4().to_string()).await.unwrap();
        assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
        // Not even an id: the same JSON error, not the framework's text.
        let garbage = unlink("not-a-uuid").await.unwrap();
        assert_eq!((garbage.status(), code(garbage).await.as_str()), (StatusCode::NOT_FOUND, "identity_not_found"));
        let no_csrf = app.with_cookies(Method::DELETE, &format!("/auth/me/identities/{identity}"), &browser).send();
        assert_eq!(no_csrf.await.unwrap().status(), StatusCode::FORBIDDEN);

        // No password: deleting needs a login within five minutes.
        app.clock.advance(time::Duration::minutes(6));
        let (_, fresh_tokens) = {
            let refreshed = app.refresh(&browser).await;
            let mut b = browser.clone();
            b.absorb(&refreshed);
            (refreshed, b)
        };
        let stale = app.as_page(Method::DELETE, "/auth/delete", &fresh_tokens).json(&json!({})).send().await.unwrap();
        assert_eq!(code(stale).await, "reauthentication_required");
        let email = body(app.me(&fresh_tokens).await).await["email"].as_str().unwrap().to_owned();
        let (_, again) = sign_in(&app, &email, "%2F").await;
        let deleted = app.as_page(Method::DELETE, "/auth/delete", &again).json(&json!({})).send().await.unwrap();
        assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    })
    .await;
}

impl TestApp {
    async fn me_identities(&self, browser: &Browser) -> Response {
        self.with_cookies(Method::GET, "/auth/me/identities", browser).send().await.unwrap()
    }
}
