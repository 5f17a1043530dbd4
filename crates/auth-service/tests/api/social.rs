//! GitHub, Facebook, linking from a signed-in account, and spoiled
//! `id_token`s, against a local stub of the providers' documented API
//! shapes (`auth_service::testing::provider_stub`).

use auth_core::{EventKind, UserId};
use auth_service::testing::provider_stub::{ProviderStub, Spoil};
use reqwest::{Method, Response, StatusCode, header};
use serde_json::json;

use crate::helpers::*;

const SITE: &str = "http://127.0.0.1:8080";

fn options(stub: &ProviderStub) -> Options {
    Options { oauth_stub: Some(stub.url.clone()), ..Options::default() }
}

fn location(response: &Response) -> String {
    response.headers()[header::LOCATION].to_str().unwrap().to_owned()
}

fn error_of(response: &Response) -> String {
    error_at(response, "/login")
}

/// The error `response` sends the browser to `page` with.
fn error_at(response: &Response, page: &str) -> String {
    let to = location(response);
    let prefix = format!("{page}?error=");
    assert!(to.starts_with(&prefix), "{to}");
    to.trim_start_matches(&prefix).to_owned()
}

/// The browser at the provider, which answers at once: the URL it is sent back to.
async fn at_the_provider(url: &str) -> String {
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let answer = client.get(url).send().await.unwrap();
    assert_eq!(answer.status(), StatusCode::FOUND, "{url}");
    location(&answer)
}

/// The browser back at our callback with its cookies.
async fn back(app: &TestApp, browser: &Browser, url: &str) -> Response {
    let path = url.strip_prefix(SITE).unwrap_or_else(|| panic!("not back here: {url}"));
    app.with_cookies(Method::GET, path, browser).send().await.unwrap()
}

/// A whole login at `provider` (`query` for `start`); the callback's answer
/// and the browser after it.
async fn sign_in(app: &TestApp, provider: &str, query: &str) -> (Response, Browser) {
    let started = app.request(Method::GET, &format!("/auth/oauth/{provider}/start?{query}")).send().await.unwrap();
    assert_eq!(started.status(), StatusCode::SEE_OTHER);
    let mut browser = Browser::default();
    browser.absorb(&started);
    let answer = back(app, &browser, &at_the_provider(&location(&started)).await).await;
    browser.absorb(&answer);
    (answer, browser)
}

async fn user_of(app: &TestApp, browser: &Browser) -> (UserId, String, bool) {
    let me = body(app.me(browser).await).await;
    (
        me["id"].as_str().unwrap().parse().unwrap(),
        me["email"].as_str().unwrap().to_owned(),
        me["email_verified"] == true,
    )
}

/// A signed-in account with its email verified.
async fn verified_account(app: &TestApp) -> (String, Browser) {
    let (address, browser) = app.signed_in().await;
    let token = token_in(&mail(&address, 1).await);
    let verify = app.request(Method::POST, "/auth/email/verify").json(&json!({"token": token})).send().await;
    assert_eq!(verify.unwrap().status(), StatusCode::NO_CONTENT);
    (address, browser)
}

/// Starts linking `provider` to `browser`'s account: the provider URL, and
/// the browser with the attempt's cookie.
async fn start_link(app: &TestApp, browser: &Browser, provider: &str) -> (String, Browser) {
    let path = format!("/auth/me/identities/{provider}/link?return_to=%2Faccount");
    let started = app.as_page(Method::POST, &path, browser).send().await.unwrap();
    assert_eq!(started.status(), StatusCode::OK);
    let mut with_attempt = browser.clone();
    with_attempt.absorb(&started);
    assert!(with_attempt.get("__Host-oauth_state").is_some());
    (body(started).await["location"].as_str().unwrap().to_owned(), with_attempt)
}

#[tokio::test]
async fn github_signs_in_by_its_numeric_id_with_the_verified_primary_email() {
    let stub = ProviderStub::start().await;
    each_backend_with(options(&stub), async |app: TestApp| {
        let address = email();
        let hint = address.replace('@', "%40");
        let (answer, browser) = sign_in(&app, "github", &format!("login_hint={hint}&return_to=%2Fnotes")).await;
        assert_eq!((answer.status(), location(&answer)), (StatusCode::SEE_OTHER, "/notes".to_owned()));
        let asked = stub.last_request();
        assert_eq!(asked["login"], address, "GitHub's name for the hint");
        assert_eq!(asked["scope"], "read:user user:email");
        assert_eq!(asked["code_challenge_method"], "S256");
        assert_eq!(asked["redirect_uri"], format!("{SITE}/auth/oauth/github/callback"));
        assert!(!asked.contains_key("nonce") && !asked.contains_key("login_hint"), "{asked:?}");
        // The primary address, not the verified secondary one listed first.
        let (id, shown, verified) = user_of(&app, &browser).await;
        assert_eq!((shown.as_str(), verified), (address.as_str(), true));
        let events = app.stores.outbox.events_of(id).await.unwrap();
        assert_eq!(
            (events[0].event.kind, &events[0].event.data["method"]),
            (EventKind::Registered, &json!("oauth:github"))
        );

        let (_, again) = sign_in(&app, "github", &format!("login_hint={hint}")).await;
        assert_eq!(user_of(&app, &again).await.0, id, "the same account next time");
        let listed = body(app.with_cookies(Method::GET, "/auth/me/identities", &again).send().await.unwrap()).await;
        assert_eq!(listed["identities"].as_array().unwrap().len(), 1);
        assert_eq!(listed["identities"][0]["provider"], "github");
    })
    .await;
}

#[tokio::test]
async fn a_disabled_account_signs_in_through_no_provider_and_gets_none_linked() {
    let stub = ProviderStub::start().await;
    each_backend_with(options(&stub), async |app: TestApp| {
        let (_, admin) = app.signed_in_admin().await;
        let address = email();
        let hint = format!("login_hint={}", address.replace('@', "%40"));
        let (_, browser) = sign_in(&app, "github", &hint).await;
        let id = user_of(&app, &browser).await.0;
        let disable = app.as_page(Method::POST, &format!("/auth/admin/users/{id}/disable"), &admin).send().await;
        assert_eq!(disable.unwrap().status(), StatusCode::NO_CONTENT);
        let (answer, after) = sign_in(&app, "github", &hint).await;
        assert_eq!(error_of(&answer), "access_denied");
        assert!(after.get("__Host-access_token").is_none());
        // Nor may another provider join it by email.
        let (answer, _) = sign_in(&app, "stub-oidc", &hint).await;
        assert_eq!(error_of(&answer), "access_denied");
        let identities = app.stores.identities.identities_of(id).await.unwrap();
        assert_eq!(identities.len(), 1, "only github's");
    })
    .await;
}

#[tokio::test]
async fn github_without_a_verified_primary_email_makes_no_account() {
    let stub = ProviderStub::start().await;
    each_backend_with(options(&stub), async |app: TestApp| {
        let unverified = format!("unverified%2B{}", email().replace('@', "%40"));
        let (answer, browser) = sign_in(&app, "github", &format!("login_hint={unverified}")).await;
        assert_eq!(error_of(&answer), "email_not_verified");
        assert!(browser.get("__Host-access_token").is_none() && browser.get("__Host-oauth_state").is_none());
        let (answer, _) =
            sign_in(&app, "github", &format!("login_hint=noemail%2B{}", email().replace('@', "%40"))).await;
        assert_eq!(error_of(&answer), "email_required");
    })
    .await;
}

#[tokio::test]
async fn facebook_signs_in_through_the_graph_api_with_the_appsecret_proof() {
    let stub = ProviderStub::start().await;
    each_backend_with(options(&stub), async |app: TestApp| {
        let address = email();
        stub.sign_in_as(&address);
        // The stub answers 400 to a /me without the right appsecret_proof.
        let (answer, browser) = sign_in(&app, "facebook", "login_hint=ignored%40example.com").await;
        assert_eq!((answer.status(), location(&answer)), (StatusCode::SEE_OTHER, "/".to_owned()));
        let asked = stub.last_request();
        assert_eq!((asked["scope"].as_str(), asked["response_type"].as_str()), ("email", "code"));
        assert!(!asked.contains_key("login_hint") && !asked.contains_key("nonce"), "{asked:?}");
        let (_, shown, verified) = user_of(&app, &browser).await;
        assert_eq!((shown.as_str(), verified), (address.as_str(), true));
        // Facebook shares no address it has not confirmed.
        stub.sign_in_as(&format!("unverified+{}", email()));
        let (answer, _) = sign_in(&app, "facebook", "").await;
        assert_eq!(error_of(&answer), "email_required");
    })
    .await;
}

#[tokio::test]
async fn a_spent_code_or_a_spoiled_id_token_is_refused_and_signs_nobody_in() {
    let stub = ProviderStub::start().await;
    each_backend_with(options(&stub), async |app: TestApp| {
        // GitHub refuses a spent code with status 200 and an `error`.
        let started = app.request(Method::GET, "/auth/oauth/github/start").send().await.unwrap();
        let mut browser = Browser::default();
        browser.absorb(&started);
        let callback = at_the_provider(&location(&started)).await;
        assert_eq!(back(&app, &browser, &callback).await.status(), StatusCode::SEE_OTHER);
        let replayed = back(&app, &browser, &callback).await;
        assert_eq!(error_of(&replayed), "provider_response_invalid");
        assert!(
            replayed
                .headers()
                .get_all(header::SET_COOKIE)
                .iter()
                .all(|c| !c.to_str().unwrap().contains("__Host-access_token=ey"))
        );

        for spoil in [
            Spoil::Audience,
            Spoil::Issuer,
            Spoil::Expired,
            Spoil::Signature,
            Spoil::AuthorizedParty,
            Spoil::ManyAudiences,
            Spoil::KeyForEncryption,
        ] {
            stub.spoil(spoil);
            let (answer, browser) =
                sign_in(&app, "stub-oidc", &format!("login_hint={}", email().replace('@', "%40"))).await;
            assert_eq!(error_of(&answer), "provider_response_invalid", "{spoil:?}");
            assert!(browser.get("__Host-access_token").is_none(), "{spoil:?}");
        }
        stub.spoil(Spoil::Nothing);
        let (answer, _) = sign_in(&app, "stub-oidc", &format!("login_hint={}", email().replace('@', "%40"))).await;
        assert_eq!(location(&answer), "/", "the same provider, unspoiled");
        // `"true"` for a verified email (Amazon Cognito) is understood.
        stub.spoil(Spoil::VerifiedAsText);
        let (answer, browser) =
            sign_in(&app, "stub-oidc", &format!("login_hint={}", email().replace('@', "%40"))).await;
        assert_eq!(location(&answer), "/");
        assert!(user_of(&app, &browser).await.2, "verified");
        stub.spoil(Spoil::Nothing);
    })
    .await;
}

#[tokio::test]
async fn a_provider_whose_discovery_failed_is_not_asked_again_by_every_attempt() {
    let stub = ProviderStub::start().await;
    each_backend_with(options(&stub), async |app: TestApp| {
        stub.discovery_down(true);
        let before = stub.discoveries();
        for _ in 0..3 {
            let started = app.request(Method::GET, "/auth/oauth/stub-oidc/start").send().await.unwrap();
            assert_eq!(error_of(&started), "provider_unavailable");
        }
        assert_eq!(stub.discoveries() - before, 1, "one request, its failure held for the next attempts");
        stub.discovery_down(false);
    })
    .await;
}

#[tokio::test]
async fn a_provider_kept_from_linking_by_email_is_linked_by_the_signed_in_owner() {
    let stub = ProviderStub::start().await;
    each_backend_with(options(&stub), async |app: TestApp| {
        // `facebook` has link_by_email = false: both sides verified, still no link.
        let (address, owner) = verified_account(&app).await;
        stub.sign_in_as(&address);
        let (answer, _) = sign_in(&app, "facebook", "").await;
        assert_eq!(error_of(&answer), "link_required");

        let (to_provider, with_attempt) = start_link(&app, &owner, "facebook").await;
        let linked = back(&app, &with_attempt, &at_the_provider(&to_provider).await).await;
        assert_eq!((linked.status(), location(&linked)), (StatusCode::SEE_OTHER, "/account".to_owned()));
        let set: Vec<_> = linked.headers().get_all(header::SET_COOKIE).iter().map(|c| c.to_str().unwrap()).collect();
        assert!(set.iter().all(|c| c.starts_with("__Host-oauth_state=;")), "no new session: {set:?}");
        let owner_id = user_of(&app, &owner).await.0;

        let (answer, through_facebook) = sign_in(&app, "facebook", "").await;
        assert_eq!(location(&answer), "/");
        assert_eq!(user_of(&app, &through_facebook).await.0, owner_id);
        // Linking it again is no change.
        let (to_provider, with_attempt) = start_link(&app, &owner, "facebook").await;
        let again = back(&app, &with_attempt, &at_the_provider(&to_provider).await).await;
        assert_eq!(location(&again), "/account");
        let listed = body(app.with_cookies(Method::GET, "/auth/me/identities", &owner).send().await.unwrap()).await;
        assert_eq!(listed["identities"].as_array().unwrap().len(), 1);
        assert_eq!(listed["has_password"], true);
        // The owner is told, once.
        let notice = mail(&address, 2).await;
        assert_eq!(notice.subject, "A new way to sign in to your account");
        assert!(notice.text.contains("through facebook"), "{}", notice.text);
    })
    .await;
}

#[tokio::test]
async fn linking_needs_csrf_and_a_live_session_and_never_takes_another_accounts_identity() {
    let stub = ProviderStub::start().await;
    each_backend_with(options(&stub), async |app: TestApp| {
        // Not for an address nobody proved: the holder may not be its owner.
        let (_, unverified) = app.signed_in().await;
        let path = "/auth/me/identities/github/link";
        let refused = app.as_page(Method::POST, path, &unverified).send().await.unwrap();
        assert_eq!((refused.status(), code(refused).await.as_str()), (StatusCode::FORBIDDEN, "email_not_verified"));
        // Nor with a login older than five minutes (a stolen token's way in).
        let (_, owner) = verified_account(&app).await;
        app.clock.advance(time::Duration::minutes(6));
        let stale = app.as_page(Method::POST, path, &owner).send().await.unwrap();
        assert_eq!((stale.status(), code(stale).await.as_str()), (StatusCode::FORBIDDEN, "reauthentication_required"));
        let (_, owner) = verified_account(&app).await;
        let no_csrf = app.with_cookies(Method::POST, path, &owner).send().await.unwrap();
        assert_eq!(
            (no_csrf.status(), no_csrf.headers().contains_key(header::SET_COOKIE)),
            (StatusCode::FORBIDDEN, false)
        );
        let anonymous = app.request(Method::POST, path).send().await.unwrap();
        assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
        let unknown = app.as_page(Method::POST, "/auth/me/identities/nope/link", &owner).send().await.unwrap();
        assert_eq!((unknown.status(), code(unknown).await.as_str()), (StatusCode::NOT_FOUND, "unknown_provider"));
        let down = app.as_page(Method::POST, "/auth/me/identities/down/link", &owner).send().await.unwrap();
        assert_eq!(
            (down.status(), code(down).await.as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, "provider_unavailable")
        );

        // A GitHub identity that signs in to someone else's account stays theirs.
        let theirs = email();
        let (_, them) = sign_in(&app, "github", &format!("login_hint={}", theirs.replace('@', "%40"))).await;
        let (to_provider, with_attempt) = start_link(&app, &owner, "github").await;
        let hijack = to_provider.replace("login=", "x=") + &format!("&login={}", theirs.replace('@', "%40"));
        let refused = back(&app, &with_attempt, &at_the_provider(&hijack).await).await;
        assert_eq!(error_at(&refused, "/account"), "identity_taken", "back where the link started");
        let owner_identities =
            body(app.with_cookies(Method::GET, "/auth/me/identities", &owner).send().await.unwrap()).await;
        assert_eq!(owner_identities["identities"], json!([]));
        let (_, again) = sign_in(&app, "github", &format!("login_hint={}", theirs.replace('@', "%40"))).await;
        assert_eq!(user_of(&app, &again).await.0, user_of(&app, &them).await.0);

        // The session that asked ended before the provider answered: no link.
        let (to_provider, with_attempt) = start_link(&app, &owner, "github").await;
        let logout = app.as_page(Method::DELETE, "/auth/logout", &owner).send().await.unwrap();
        assert_eq!(logout.status(), StatusCode::NO_CONTENT);
        let late = back(&app, &with_attempt, &at_the_provider(&to_provider).await).await;
        assert_eq!(error_at(&late, "/account"), "unauthenticated");
    })
    .await;
}
