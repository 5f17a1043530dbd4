//! Access tokens at the API edge: forged, altered and expired tokens get the
//! same 401 as no token at all.

use auth_core::Clock;
use auth_tokens::{AccessClaims, TokenSigner, b64url};
use reqwest::Method;
use serde_json::json;
use time::Duration;

use crate::helpers::*;

fn parts(jwt: &str) -> Vec<String> {
    jwt.split('.').map(str::to_owned).collect()
}

fn decode(part: &str) -> serde_json::Value {
    serde_json::from_slice(&auth_tokens::b64url_decode(part).unwrap()).unwrap()
}

fn encode(value: &serde_json::Value) -> String {
    b64url(value.to_string().as_bytes())
}

async fn refused_like_no_token(app: &TestApp, token: &str) {
    let response = app.me_bearer(token).await;
    assert_eq!(response.status(), 401, "token accepted: {token}");
    assert_eq!(
        body(response).await,
        json!({"error": {"code": "unauthenticated", "message": "authentication is required"}})
    );
}

#[tokio::test]
async fn issued_tokens_carry_the_profile_and_no_personal_data() {
    each_backend(async |app| {
        let (email, browser) = app.signed_in().await;
        let header = decode(&parts(browser.access())[0]);
        assert_eq!(header, json!({"typ": "at+jwt", "alg": "EdDSA", "kid": header["kid"]}));
        let c = claims(browser.access());
        assert_eq!(c["iss"], ISSUER);
        assert_eq!(c["aud"], "gatehouse");
        assert_eq!(c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap(), 600);
        assert_eq!(c["nbf"], c["iat"]);
        assert!(uuid::Uuid::parse_str(c["sub"].as_str().unwrap()).is_ok());
        assert!(!browser.access().contains(&b64url(email.as_bytes())));
        assert!(!c.to_string().contains(&email));
    })
    .await;
}

#[tokio::test]
async fn forged_and_altered_tokens_are_refused() {
    each_backend(async |app| {
        let (_, browser) = app.signed_in().await;
        let [header, payload, signature] = <[String; 3]>::try_from(parts(browser.access())).unwrap();

        let none = encode(&json!({"alg": "none", "typ": "at+jwt"}));
        refused_like_no_token(&app, &format!("{none}.{payload}.")).await;

        let mut raw = auth_tokens::b64url_decode(&signature).unwrap();
        raw[0] ^= 1;
        refused_like_no_token(&app, &format!("{header}.{payload}.{}", b64url(&raw))).await;

        let mut edited = decode(&payload);
        edited["roles"] = json!(["admin"]);
        refused_like_no_token(&app, &format!("{header}.{}.{signature}", encode(&edited))).await;

        let x = app.keys.current().jwks.keys[0].x.clone();
        let hs_header = encode(&json!({"alg": "HS256", "typ": "at+jwt", "kid": decode(&header)["kid"]}));
        use hmac::Mac as _;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&auth_tokens::b64url_decode(&x).unwrap()).unwrap();
        mac.update(format!("{hs_header}.{payload}").as_bytes());
        let hs = b64url(&mac.finalize().into_bytes());
        refused_like_no_token(&app, &format!("{hs_header}.{payload}.{hs}")).await;

        refused_like_no_token(&app, &format!("{header}.{payload}")).await;
        refused_like_no_token(&app, "garbage").await;
    })
    .await;
}

#[tokio::test]
async fn tokens_with_the_wrong_audience_issuer_or_timing_are_refused() {
    each_backend(async |app| {
        let (_, browser) = app.signed_in().await;
        let good: AccessClaims = serde_json::from_value(claims(browser.access())).unwrap();
        let signer = TokenSigner::new(&auth_tokens::keyfile::load(&app.key_file).unwrap().ring);
        let now = app.clock.unix();
        let variants = [
            AccessClaims { aud: "other-api".into(), ..good.clone() },
            AccessClaims { iss: format!("{ISSUER}/"), ..good.clone() },
            AccessClaims { nbf: now + 120, ..good.clone() },
            AccessClaims { exp: now - 61, iat: now - 661, nbf: now - 661, ..good.clone() },
        ];
        for claims in variants {
            refused_like_no_token(&app, &signer.sign(&claims).unwrap()).await;
        }
        assert_eq!(app.me_bearer(&signer.sign(&good).unwrap()).await.status(), 200, "the control token");
    })
    .await;
}

#[tokio::test]
async fn a_token_with_a_critical_header_extension_is_refused() {
    each_backend(async |app| {
        let (_, browser) = app.signed_in().await;
        let good: AccessClaims = serde_json::from_value(claims(browser.access())).unwrap();
        let ring = auth_tokens::keyfile::load(&app.key_file).unwrap().ring;
        let key = jsonwebtoken::EncodingKey::from_ed_der(&ring.active().pkcs8_der());
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
        header.typ = Some("at+jwt".into());
        header.kid = Some(ring.active().kid.clone());
        let control = jsonwebtoken::encode(&header, &good, &key).unwrap();
        assert_eq!(app.me_bearer(&control).await.status(), 200, "the control token");
        header.crit = Some(vec!["exp".into()]);
        refused_like_no_token(&app, &jsonwebtoken::encode(&header, &good, &key).unwrap()).await;
    })
    .await;
}

#[tokio::test]
async fn an_access_token_expires_after_its_lifetime_plus_leeway() {
    each_backend(async |app| {
        let (_, browser) = app.signed_in().await;
        app.clock.advance(Duration::seconds(630));
        assert_eq!(app.me(&browser).await.status(), 200, "within the 60 s leeway");
        app.clock.advance(Duration::seconds(31));
        assert_eq!(app.me(&browser).await.status(), 401);
        let response = app.request(Method::GET, "/auth/me").bearer_auth(browser.access()).send().await.unwrap();
        assert_eq!(response.status(), 401);
    })
    .await;
}
