//! A generic OpenID provider configured by issuer URL, and a GitHub
//! Enterprise Server (a stub of its API) configured by its URL, logged in
//! through the gateway of `gatehouse up`, as a new user would set them up.

use auth_service::testing::OidcProvider;
use auth_service::testing::provider_stub::ProviderStub;

use super::*;

#[tokio::test]
async fn an_oidc_provider_configured_by_issuer_signs_users_in_through_the_gateway() {
    // The default public_url; the test carries the browser back to the
    // port actually served.
    let callback = "http://127.0.0.1:8080/auth/oauth/corp/callback";
    let provider = OidcProvider::start(callback);
    let dir = TempDir::new();
    let config = dir.0.join("gatehouse.toml");
    let toml = format!(
        "[oauth.providers.corp]\nkind = \"oidc\"\nissuer = \"{}\"\nclient_id = \"gatehouse\"\n",
        provider.issuer
    );
    std::fs::write(&config, toml).unwrap();
    let mut server = start({
        let mut cmd = gatehouse(&dir.data());
        cmd.arg("--config").arg(&config).env("GATEHOUSE_OAUTH__PROVIDERS__CORP__CLIENT_SECRET", "test-secret");
        cmd
    })
    .await;
    let callback_back = |to_provider: String| async move {
        let at_provider = reqwest::Client::builder()
            .cookie_store(true)
            .redirect(reqwest::redirect::Policy::custom(move |a| {
                if a.url().as_str().starts_with(callback) { a.stop() } else { a.follow() }
            }))
            .build()
            .unwrap();
        let back = at_provider.get(&to_provider).send().await.unwrap();
        back.headers()["location"].to_str().unwrap().to_owned()
    };
    let me = sign_in_through_the_gateway(&server.url, "corp", "carol%40example.com", callback_back).await;
    assert_eq!(me["email"], "carol@example.com");
    // The login's audit row was written with its session; its line is logged.
    let line = server.wait_for_log(" audit action=login.succeeded ").await;
    assert!(line.contains("oauth:corp") && line.contains(me["id"].as_str().unwrap()), "{line}");
}

#[tokio::test]
async fn a_github_enterprise_server_configured_by_url_signs_users_in_through_the_gateway() {
    let stub = ProviderStub::start().await;
    let dir = TempDir::new();
    let config = dir.0.join("gatehouse.toml");
    let toml =
        format!("[oauth.providers.ghe]\nkind = \"github\"\nissuer = \"{}\"\nclient_id = \"gatehouse\"\n", stub.url);
    std::fs::write(&config, toml).unwrap();
    let server = start({
        let mut cmd = gatehouse(&dir.data());
        cmd.arg("--config").arg(&config).env("GATEHOUSE_OAUTH__PROVIDERS__GHE__CLIENT_SECRET", "test-secret");
        cmd
    })
    .await;
    let callback_back = |to_provider: String| async move {
        let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
        let back = client.get(&to_provider).send().await.unwrap();
        back.headers()["location"].to_str().unwrap().to_owned()
    };
    let me = sign_in_through_the_gateway(&server.url, "ghe", "dave%40example.com", callback_back).await;
    assert_eq!(me["email"], "dave@example.com");
}

/// Starts a login at `provider` as `hint` through the gateway at `url`,
/// lets `at_provider` take the browser to the provider and back (the URL
/// it returns, at the default public_url), and checks the session works
/// through the gateway; `/auth/me`'s answer.
async fn sign_in_through_the_gateway<F: Future<Output = String>>(
    url: &str,
    provider: &str,
    hint: &str,
    at_provider: impl FnOnce(String) -> F,
) -> serde_json::Value {
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let started = client
        .get(format!("{url}/auth/oauth/{provider}/start?return_to=%2Fapi%2Fnotes&login_hint={hint}"))
        .send()
        .await
        .unwrap();
    assert_eq!(started.status(), 303);
    let state_cookie = started
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_owned())
        .find(|c| c.starts_with("__Host-oauth_state="))
        .unwrap();
    let to_provider = started.headers()["location"].to_str().unwrap().to_owned();
    let back = at_provider(to_provider).await.replace("http://127.0.0.1:8080", url);
    let signed_in = client.get(&back).header("cookie", &state_cookie).send().await.unwrap();
    assert_eq!(signed_in.status(), 303);
    assert_eq!(signed_in.headers()["location"], "/api/notes");
    let browser = Browser::from_login(&signed_in);
    let notes = client.get(format!("{url}/api/notes")).header("cookie", &browser.cookie).send().await.unwrap();
    assert_eq!(notes.status(), 200, "the gateway takes the provider login's cookies");
    let me = client.get(format!("{url}/auth/me")).header("cookie", &browser.cookie).send().await.unwrap();
    me.json().await.unwrap()
}
