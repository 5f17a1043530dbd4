//! The hostile-token corpus: tokens an attacker would try, made with the
//! server's own keys where that is the attack, each refused with 401 and
//! the same body at the gateway (`/api/notes`) and at `/auth/me`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use auth_tokens::keys::SigningKey;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{Value, json};

use super::*;

fn b64(bytes: &[u8]) -> String {
    auth_tokens::b64url(bytes)
}

fn seg(value: &Value) -> String {
    b64(value.to_string().as_bytes())
}

/// `header.payload.signature`, signed by `key` with `alg`.
fn signed(header: &Value, payload: &Value, key: &EncodingKey, alg: Algorithm) -> String {
    let message = format!("{}.{}", seg(header), seg(payload));
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), key, alg).unwrap();
    format!("{message}.{signature}")
}

fn ed(key: &SigningKey) -> EncodingKey {
    EncodingKey::from_ed_der(&key.pkcs8_der())
}

/// A listener that counts connections: a verifier that fetches a key from
/// a URL the token names would knock here.
async fn lure() -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
    let knocks = Arc::new(AtomicUsize::new(0));
    let counted = knocks.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            drop(stream);
        }
    });
    (url, knocks)
}

#[tokio::test]
async fn every_hostile_token_is_refused_alike_at_the_gateway_and_at_me() {
    let dir = TempDir::new();
    let server = start(gatehouse(&dir.data())).await;
    let (client, url) = (reqwest::Client::new(), server.url.clone());
    let email = format!("corpus-{}@example.com", uuid::Uuid::new_v4().simple());
    let creds = json!({"email": email, "password": PASSWORD});
    assert_eq!(client.post(format!("{url}/auth/register")).json(&creds).send().await.unwrap().status(), 201);
    let login = client.post(format!("{url}/auth/login")).json(&creds).send().await.unwrap();
    let cookies: Vec<String> =
        login.headers().get_all("set-cookie").iter().map(|v| v.to_str().unwrap().to_owned()).collect();
    let cookie = |name: &str| {
        let found = cookies.iter().find(|c| c.starts_with(&format!("{name}="))).unwrap();
        found[name.len() + 1..].split(';').next().unwrap().to_owned()
    };
    let good = cookie("__Host-access_token");
    let refresh = cookie("__Host-refresh_token");
    let csrf = cookie("__Host-csrf_token");

    // The real key, read from the key file as an insider's stolen copy
    // would be; the attacker's own key; the claims of a real token.
    let secrets = auth_tokens::keyfile::load(&dir.data().join("keys.json")).unwrap();
    let real = secrets.ring.active().clone();
    let kid = real.jwk().kid;
    let attacker = SigningKey::generate(0);
    let parts: Vec<&str> = good.split('.').collect();
    let header: Value = serde_json::from_slice(&auth_tokens::b64url_decode(parts[0]).unwrap()).unwrap();
    let claims: Value = serde_json::from_slice(&auth_tokens::b64url_decode(parts[1]).unwrap()).unwrap();
    let with = |changes: Value| {
        let mut c = claims.clone();
        for (k, v) in changes.as_object().unwrap() {
            match v {
                Value::Null => {
                    c.as_object_mut().unwrap().remove(k);
                }
                v => c[k] = v.clone(),
            }
        }
        c
    };
    let head = |changes: Value| {
        let mut h = header.clone();
        for (k, v) in changes.as_object().unwrap() {
            h[k] = v.clone();
        }
        h
    };
    let now = claims["iat"].as_i64().unwrap();
    let public = real.public_key().to_vec();
    let spki: Vec<u8> =
        [&[0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00][..], &public].concat();
    let pem = format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        base64::engine::general_purpose::STANDARD.encode(&spki)
    );
    let jwk_json = serde_json::to_string(&real.jwk()).unwrap();
    let (lure_url, knocks) = lure().await;
    let real_key = ed(&real);
    let attacker_key = ed(&attacker);
    let unsigned = |h: Value, c: &Value, sig: &str| format!("{}.{}.{sig}", seg(&h), seg(c));

    let mut corpus: Vec<(&str, String)> = Vec::new();
    for none in ["none", "None", "NONE", "nOnE"] {
        corpus.push(("alg none, no signature", unsigned(json!({"alg": none, "typ": "at+jwt"}), &claims, "")));
        corpus
            .push(("alg none, the old signature", unsigned(json!({"alg": none, "typ": "at+jwt"}), &claims, parts[2])));
    }
    for (alg, name) in [(Algorithm::HS256, "HS256"), (Algorithm::HS384, "HS384"), (Algorithm::HS512, "HS512")] {
        let h = json!({"alg": name, "typ": "at+jwt", "kid": kid});
        corpus
            .push(("HMAC keyed with the raw public key", signed(&h, &claims, &EncodingKey::from_secret(&public), alg)));
        corpus.push(("HMAC keyed with the PEM", signed(&h, &claims, &EncodingKey::from_secret(pem.as_bytes()), alg)));
        corpus.push(("HMAC keyed with the DER", signed(&h, &claims, &EncodingKey::from_secret(&spki), alg)));
        corpus.push((
            "HMAC keyed with the JWK",
            signed(&h, &claims, &EncodingKey::from_secret(jwk_json.as_bytes()), alg),
        ));
    }
    corpus.push(("ES256 with r = s = 0", unsigned(head(json!({"alg": "ES256"})), &claims, &b64(&[0; 64]))));
    corpus.push(("signature stripped", format!("{}.{}.", parts[0], parts[1])));
    corpus.push(("two segments", format!("{}.{}", parts[0], parts[1])));
    corpus.push(("signature truncated", format!("{}.{}.{}", parts[0], parts[1], &parts[2][..parts[2].len() / 2])));
    let mut flipped = auth_tokens::b64url_decode(parts[2]).unwrap();
    flipped[10] ^= 1;
    corpus.push(("signature bit flipped", format!("{}.{}.{}", parts[0], parts[1], b64(&flipped))));
    corpus.push((
        "payload edited: sub",
        format!("{}.{}.{}", parts[0], seg(&with(json!({"sub": uuid::Uuid::new_v4()}))), parts[2]),
    ));
    corpus.push((
        "payload edited: roles",
        format!(
            "{}.{}.{}",
            parts[0],
            seg(&with(json!({"roles": ["admin"], "permissions": ["users:admin"]}))),
            parts[2]
        ),
    ));
    for bad_kid in ["../../../../../etc/passwd", "' OR '1'='1' --", "$(touch /tmp/pwned)", "`id`", "x\u{0}y"] {
        corpus.push((
            "hostile kid, real key",
            signed(&head(json!({"kid": bad_kid})), &claims, &real_key, Algorithm::EdDSA),
        ));
    }
    corpus.push((
        "jku to the attacker",
        signed(&head(json!({"jku": lure_url, "kid": "attacker"})), &claims, &attacker_key, Algorithm::EdDSA),
    ));
    corpus.push((
        "x5u to the attacker",
        signed(&head(json!({"x5u": lure_url, "kid": "attacker"})), &claims, &attacker_key, Algorithm::EdDSA),
    ));
    corpus.push((
        "embedded jwk",
        signed(
            &head(json!({"jwk": attacker.jwk(), "kid": attacker.jwk().kid})),
            &claims,
            &attacker_key,
            Algorithm::EdDSA,
        ),
    ));
    corpus.push((
        "self-signed x5c",
        signed(&head(json!({"x5c": [b64(&[0x30; 300])]})), &claims, &attacker_key, Algorithm::EdDSA),
    ));
    corpus.push(("the attacker's key under the real kid", signed(&header, &claims, &attacker_key, Algorithm::EdDSA)));
    for (why, changes) in [
        ("expired", json!({"exp": now - 3600, "iat": now - 4200, "nbf": now - 4200})),
        ("nbf in the future", json!({"nbf": now + 3600})),
        ("iat in the future", json!({"iat": now + 3600})),
        ("no exp", json!({"exp": null})),
        ("exp not a number", json!({"exp": "tomorrow"})),
        ("exp huge", json!({"exp": 1e30})),
        ("exp beyond i64", json!({"exp": u64::MAX})),
        ("wrong iss", json!({"iss": "https://evil.example"})),
        ("wrong aud", json!({"aud": "another-service"})),
        ("no sid", json!({"sid": null})),
    ] {
        corpus.push((why, signed(&header, &with(changes), &real_key, Algorithm::EdDSA)));
    }
    corpus.push(("typ JWT", signed(&head(json!({"typ": "JWT"})), &claims, &real_key, Algorithm::EdDSA)));
    corpus.push((
        "unknown crit",
        signed(&head(json!({"crit": ["x-gatehouse"], "x-gatehouse": 1})), &claims, &real_key, Algorithm::EdDSA),
    ));
    corpus.push(("bad base64", format!("{}.{}*.{}", parts[0], parts[1], parts[2])));
    corpus.push(("padded base64", format!("{}=.{}.{}", parts[0], parts[1], parts[2])));
    corpus.push(("five segments (JWE shape)", format!("{good}.AAAA.BBBB")));
    corpus.push(("16 KiB", signed(&header, &with(json!({"pad": "x".repeat(16 * 1024)})), &real_key, Algorithm::EdDSA)));
    corpus.push(("the refresh token", refresh.clone()));
    corpus.push(("the CSRF token", csrf.clone()));
    corpus.push(("an opaque secret shaped like a reset token", b64(&[7; 32])));
    corpus.push((
        "another provider's id_token",
        signed(
            &json!({"alg": "EdDSA", "typ": "JWT", "kid": attacker.jwk().kid}),
            &json!({"iss": "https://accounts.google.com", "aud": "someone-else", "sub": "1", "email": email,
                    "iat": now, "exp": now + 600}),
            &attacker_key,
            Algorithm::EdDSA,
        ),
    ));
    assert!(corpus.len() >= 40, "{} tokens", corpus.len());

    // The real token passes both, so the refusals below are the tokens'.
    let ask = async |path: &str, authorization: String| {
        let answer = client.get(format!("{url}{path}")).header("authorization", authorization).send().await.unwrap();
        (answer.status().as_u16(), answer.text().await.unwrap())
    };
    assert_eq!(ask("/api/notes", format!("Bearer {good}")).await.0, 200);
    assert_eq!(ask("/auth/me", format!("Bearer {good}")).await.0, 200);
    let mut bodies: std::collections::BTreeMap<&str, std::collections::BTreeSet<String>> = Default::default();
    for (why, token) in &corpus {
        for path in ["/api/notes", "/auth/me"] {
            let (status, body) = ask(path, format!("Bearer {token}")).await;
            assert_eq!(status, 401, "{why} at {path}: {body}");
            bodies.entry(path).or_default().insert(body);
        }
    }
    // Whitespace inside the token, or a token glued to another: refused.
    // (`Bearer` may be followed by several spaces, RFC 6750's `1*SP`, and
    // HTTP drops whitespace around a header value before anyone sees it.)
    let (left, right) = good.split_at(good.len() / 2);
    for broken in [format!("Bearer {left} {right}"), format!("Bearer {good} {good}"), format!("Bearer\t{good}")] {
        for path in ["/api/notes", "/auth/me"] {
            let (status, body) = ask(path, broken.clone()).await;
            assert_eq!(status, 401, "{broken:?} at {path}: {body}");
            bodies.entry(path).or_default().insert(body);
        }
    }
    for (path, seen) in &bodies {
        assert_eq!(seen.len(), 1, "{path} told the tokens apart: {seen:#?}");
    }
    assert_eq!(knocks.load(Ordering::SeqCst), 0, "a token made the server fetch a key from its URL");
    assert!(server.stop().await.success());
}
