//! A generic OpenID provider configured by issuer URL, logged in through
//! the gateway of `gatehouse up`, as a new user would set it up.

use auth_service::testing::OidcProvider;

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
    let server = start({
        let mut cmd = gatehouse(&dir.data());
        cmd.arg("--config").arg(&config).env("GATEHOUSE_OAUTH__PROVIDERS__CORP__CLIENT_SECRET", "test-secret");
        cmd
    })
    .await;
    let url = server.url.clone();
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let started = client
        .get(format!("{url}/auth/oauth/corp/start?return_to=%2Fapi%2Fnotes&login_hint=carol%40example.com"))
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
    let at_provider = reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::custom(move |a| {
            if a.url().as_str().starts_with(callback) { a.stop() } else { a.follow() }
        }))
        .build()
        .unwrap();
    let back = at_provider.get(&to_provider).send().await.unwrap();
    let back = back.headers()["location"].to_str().unwrap().replace("http://127.0.0.1:8080", &url);
    let signed_in = client.get(&back).header("cookie", &state_cookie).send().await.unwrap();
    assert_eq!(signed_in.status(), 303);
    assert_eq!(signed_in.headers()["location"], "/api/notes");
    let browser = Browser::from_login(&signed_in);
    let notes = client.get(format!("{url}/api/notes")).header("cookie", &browser.cookie).send().await.unwrap();
    assert_eq!(notes.status(), 200, "the gateway takes the provider login's cookies");
    let me: serde_json::Value = client
        .get(format!("{url}/auth/me"))
        .header("cookie", &browser.cookie)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["email"], "carol@example.com");
}
