use auth_core::Clock;
use auth_tokens::keyfile;
use reqwest::Method;
use time::Duration;

use crate::helpers::*;

async fn jwks(app: &TestApp) -> serde_json::Value {
    body(app.request(Method::GET, "/.well-known/jwks.json").send().await.unwrap()).await
}

async fn published_kids(app: &TestApp) -> Vec<String> {
    let set = jwks(app).await;
    set["keys"].as_array().unwrap().iter().map(|k| k["kid"].as_str().unwrap().to_owned()).collect()
}

fn kid(jwt: &str) -> String {
    let header = jwt.split('.').next().unwrap();
    let header: serde_json::Value = serde_json::from_slice(&auth_tokens::b64url_decode(header).unwrap()).unwrap();
    header["kid"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn the_jwks_publishes_the_signing_key_and_nothing_private() {
    each_backend(async |app| {
        let (_, browser) = app.signed_in().await;
        let set = jwks(&app).await;
        let keys = set["keys"].as_array().unwrap();
        assert_eq!(keys.len(), 1);
        let key = keys[0].as_object().unwrap();
        let mut members: Vec<&str> = key.keys().map(String::as_str).collect();
        members.sort();
        assert_eq!(members, ["alg", "crv", "kid", "kty", "use", "x"]);
        assert_eq!((key["kty"].as_str(), key["crv"].as_str()), (Some("OKP"), Some("Ed25519")));
        assert_eq!((key["use"].as_str(), key["alg"].as_str()), (Some("sig"), Some("EdDSA")));
        assert_eq!(key["kid"].as_str().unwrap(), kid(browser.access()));
    })
    .await;
}

#[tokio::test]
async fn after_a_rotation_old_tokens_verify_until_they_expire_then_the_old_key_leaves() {
    each_backend(async |app| {
        let (email, before) = app.signed_in().await;
        let old_kid = kid(before.access());

        let mut secrets = keyfile::load(&app.key_file).unwrap();
        secrets.ring.rotate(app.clock.unix(), token_settings().key_overlap());
        keyfile::save(&app.key_file, &secrets).unwrap();
        app.keys.refresh().unwrap();

        let after = app.log_in(&email).await;
        let new_kid = kid(after.access());
        assert_ne!(new_kid, old_kid);
        assert_eq!(app.me(&before).await.status(), 200, "a token of the retired key still verifies");
        assert_eq!(app.me(&after).await.status(), 200);
        assert_eq!(published_kids(&app).await, [old_kid.clone(), new_kid.clone()]);

        app.clock.advance(Duration::seconds(token_settings().key_overlap()));
        app.keys.refresh().unwrap();
        assert_eq!(published_kids(&app).await, [new_kid]);
        assert_eq!(app.me(&before).await.status(), 401);
    })
    .await;
}
