//! Every attack of RFC 8725 and the checklist's section E, one test each.

use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use super::*;
use crate::b64url;

const NOW: i64 = 1_800_000_000;

fn settings() -> TokenSettings {
    TokenSettings { issuer: "http://127.0.0.1:8080".into(), audience: "gatehouse".into(), lifetime: 600, leeway: 60 }
}

fn claims() -> AccessClaims {
    AccessClaims {
        iss: "http://127.0.0.1:8080".into(),
        sub: "user-1".into(),
        aud: "gatehouse".into(),
        exp: NOW + 600,
        iat: NOW,
        nbf: NOW,
        jti: AccessClaims::new_jti(),
        sid: "session-1".into(),
        roles: vec![],
        permissions: vec![],
        permissions_by_role: false,
        ver: 0,
        email_verified: true,
    }
}

struct Fixture {
    ring: KeyRing,
    signer: TokenSigner,
    verifier: TokenVerifier,
}

fn fixture() -> Fixture {
    let ring = KeyRing::generate(NOW);
    let signer = TokenSigner::new(&ring);
    let verifier = TokenVerifier::from_ring(&ring, &settings(), NOW);
    Fixture { ring, signer, verifier }
}

fn parts(token: &str) -> (Value, Value, String) {
    let mut it = token.split('.');
    let h = crate::b64url_decode(it.next().unwrap()).unwrap();
    let p = crate::b64url_decode(it.next().unwrap()).unwrap();
    let s = it.next().unwrap().to_owned();
    (serde_json::from_slice(&h).unwrap(), serde_json::from_slice(&p).unwrap(), s)
}

fn assemble(header: &Value, payload: &Value, signature: &str) -> String {
    format!("{}.{}.{}", b64url(header.to_string().as_bytes()), b64url(payload.to_string().as_bytes()), signature)
}

/// Signs `payload` with our own key but lets the test choose the header.
fn sign_raw(f: &Fixture, header: &Value, payload: &Value) -> String {
    use aws_lc_rs::signature::Ed25519KeyPair;
    let pair = Ed25519KeyPair::from_seed_unchecked(f.ring.active().seed()).unwrap();
    let input = format!("{}.{}", b64url(header.to_string().as_bytes()), b64url(payload.to_string().as_bytes()));
    format!("{input}.{}", b64url(pair.sign(input.as_bytes()).as_ref()))
}

fn our_header(f: &Fixture) -> Value {
    json!({"alg": "EdDSA", "typ": "at+jwt", "kid": f.signer.kid()})
}

#[test]
fn a_token_we_signed_verifies_with_every_claim() {
    let f = fixture();
    let token = f.signer.sign(&claims()).unwrap();
    let got = f.verifier.verify(&token, NOW).unwrap();
    assert_eq!(got.sub, "user-1");
    let (header, payload, _) = parts(&token);
    assert_eq!(header["alg"], "EdDSA");
    assert_eq!(header["typ"], "at+jwt");
    assert_eq!(header["kid"], f.signer.kid());
    for claim in ["iss", "sub", "aud", "exp", "iat", "nbf", "jti", "sid", "roles", "permissions"] {
        assert!(payload.get(claim).is_some(), "missing {claim}");
    }
    assert!(crate::b64url_decode(payload["jti"].as_str().unwrap()).unwrap().len() >= 16);
}

#[test]
fn alg_none_in_any_case_is_refused() {
    let f = fixture();
    let (_, payload, _) = parts(&f.signer.sign(&claims()).unwrap());
    for alg in ["none", "None", "NONE", "nOnE"] {
        let header = json!({"alg": alg, "typ": "at+jwt", "kid": f.signer.kid()});
        for sig in ["", "AAAA"] {
            let token = assemble(&header, &payload, sig);
            assert!(f.verifier.verify(&token, NOW).is_err(), "{alg} accepted");
        }
    }
}

#[test]
fn hs256_signed_with_the_public_key_is_refused() {
    let f = fixture();
    let (_, payload, _) = parts(&f.signer.sign(&claims()).unwrap());
    let header = json!({"alg": "HS256", "typ": "at+jwt", "kid": f.signer.kid()});
    let public = f.ring.active().public_key().to_vec();
    let jwk_x = f.ring.active().jwk().x.into_bytes();
    for secret in [public, jwk_x] {
        let input = format!("{}.{}", b64url(header.to_string().as_bytes()), b64url(payload.to_string().as_bytes()));
        let mut mac = Hmac::<Sha256>::new_from_slice(&secret).unwrap();
        mac.update(input.as_bytes());
        let token = format!("{input}.{}", b64url(&mac.finalize().into_bytes()));
        assert_eq!(f.verifier.verify(&token, NOW), Err(VerifyError::Algorithm));
    }
}

#[test]
fn other_asymmetric_algorithms_are_refused() {
    let f = fixture();
    let (_, payload, sig) = parts(&f.signer.sign(&claims()).unwrap());
    for alg in ["RS256", "ES512", "PS256"] {
        let header = json!({"alg": alg, "typ": "at+jwt", "kid": f.signer.kid()});
        // ES512 is not even a name the parser knows; either way it is refused.
        assert!(f.verifier.verify(&assemble(&header, &payload, &sig), NOW).is_err(), "{alg} accepted");
    }
}

#[test]
fn a_flipped_signature_byte_is_refused() {
    let f = fixture();
    let token = f.signer.sign(&claims()).unwrap();
    let (header, payload, sig) = parts(&token);
    let mut raw = crate::b64url_decode(&sig).unwrap();
    raw[10] ^= 0x01;
    let forged = assemble(&header, &payload, &b64url(&raw));
    assert_eq!(f.verifier.verify(&forged, NOW), Err(VerifyError::Signature));
}

#[test]
fn an_edited_payload_with_the_original_signature_is_refused() {
    let f = fixture();
    let (header, mut payload, sig) = parts(&f.signer.sign(&claims()).unwrap());
    payload["roles"] = json!(["admin"]);
    assert_eq!(f.verifier.verify(&assemble(&header, &payload, &sig), NOW), Err(VerifyError::Signature));
}

#[test]
fn a_wrong_audience_issuer_or_type_is_refused() {
    let f = fixture();
    let mut wrong_aud = claims();
    wrong_aud.aud = "other-api".into();
    assert_eq!(f.verifier.verify(&f.signer.sign(&wrong_aud).unwrap(), NOW), Err(VerifyError::Audience));
    let mut wrong_iss = claims();
    wrong_iss.iss = "http://127.0.0.1:8080/".into();
    assert_eq!(f.verifier.verify(&f.signer.sign(&wrong_iss).unwrap(), NOW), Err(VerifyError::Issuer));
    let payload = serde_json::to_value(claims()).unwrap();
    for typ in [json!("JWT"), Value::Null] {
        let mut header = our_header(&f);
        header["typ"] = typ;
        assert_eq!(f.verifier.verify(&sign_raw(&f, &header, &payload), NOW), Err(VerifyError::Type));
    }
    let mut no_typ = our_header(&f);
    no_typ.as_object_mut().unwrap().remove("typ");
    assert_eq!(f.verifier.verify(&sign_raw(&f, &no_typ, &payload), NOW), Err(VerifyError::Type));
}

#[test]
fn expiry_is_enforced_with_sixty_seconds_of_leeway() {
    let f = fixture();
    let mut c = claims();
    c.iat = NOW - 700;
    c.nbf = NOW - 700;
    c.exp = NOW - 61;
    assert_eq!(f.verifier.verify(&f.signer.sign(&c).unwrap(), NOW), Err(VerifyError::Expired));
    c.exp = NOW - 30;
    assert!(f.verifier.verify(&f.signer.sign(&c).unwrap(), NOW).is_ok());
}

#[test]
fn a_future_nbf_is_refused() {
    let f = fixture();
    let mut c = claims();
    c.nbf = NOW + 120;
    assert_eq!(f.verifier.verify(&f.signer.sign(&c).unwrap(), NOW), Err(VerifyError::NotYetValid));
}

#[test]
fn every_claim_is_required() {
    let f = fixture();
    for claim in ["iss", "sub", "aud", "exp", "iat", "nbf", "jti", "sid", "roles", "permissions"] {
        let mut payload = serde_json::to_value(claims()).unwrap();
        payload.as_object_mut().unwrap().remove(claim);
        let token = sign_raw(&f, &our_header(&f), &payload);
        assert!(f.verifier.verify(&token, NOW).is_err(), "token without {claim} accepted");
    }
}

#[test]
fn keys_named_in_the_header_are_never_used() {
    let f = fixture();
    let attacker = fixture();
    let payload = serde_json::to_value(claims()).unwrap();
    // The attacker signs with their own key and offers it inline or by URL,
    // both under their own kid and under ours.
    for kid in [attacker.signer.kid().to_owned(), f.signer.kid().to_owned()] {
        let header = json!({
            "alg": "EdDSA", "typ": "at+jwt", "kid": kid,
            "jwk": attacker.ring.active().jwk(),
            "jku": "https://attacker.example/jwks.json",
            "x5u": "https://attacker.example/cert.pem",
        });
        let token = sign_raw(&attacker, &header, &payload);
        assert!(f.verifier.verify(&token, NOW).is_err());
    }
}

#[test]
fn hostile_kids_and_garbage_are_refused_without_panicking() {
    let f = fixture();
    let payload = serde_json::to_value(claims()).unwrap();
    for kid in ["../../dev/null", "' OR '1'='1", ""] {
        let header = json!({"alg": "EdDSA", "typ": "at+jwt", "kid": kid});
        assert_eq!(f.verifier.verify(&sign_raw(&f, &header, &payload), NOW), Err(VerifyError::UnknownKey));
    }
    let good = f.signer.sign(&claims()).unwrap();
    let two_segments = good.rsplit_once(".").unwrap().0.to_owned();
    for bad in ["", "a.b", "!!!.???.***", "eyJhbGciOiJFZERTQSJ9", two_segments.as_str()] {
        assert!(f.verifier.verify(bad, NOW).is_err(), "{bad:?} accepted");
    }
    assert_eq!(f.verifier.verify(&"a".repeat(9000), NOW), Err(VerifyError::Malformed));
}

#[test]
fn tokens_of_a_rotated_key_verify_until_the_key_leaves_the_ring() {
    let mut ring = KeyRing::generate(NOW);
    let old_token = TokenSigner::new(&ring).sign(&claims()).unwrap();
    ring.rotate(NOW + 10, settings().key_overlap());
    let new_signer = TokenSigner::new(&ring);
    let verifier = TokenVerifier::from_ring(&ring, &settings(), NOW + 10);
    assert!(verifier.verify(&old_token, NOW + 10).is_ok());
    assert!(verifier.verify(&new_signer.sign(&claims()).unwrap(), NOW + 10).is_ok());
    let later = TokenVerifier::from_ring(&ring, &settings(), NOW + 10 + 660);
    assert_eq!(later.verify(&old_token, NOW + 10), Err(VerifyError::UnknownKey));
}

#[test]
fn a_critical_header_extension_is_refused_whatever_it_names() {
    let f = fixture();
    let payload = serde_json::to_value(claims()).unwrap();
    for crit in [json!(["exp"]), json!([]), json!(["b64"]), json!(["x-unknown"])] {
        let mut header = our_header(&f);
        header["crit"] = crit.clone();
        header["exp"] = json!(NOW + 600);
        let token = sign_raw(&f, &header, &payload);
        assert_eq!(f.verifier.verify(&token, NOW), Err(VerifyError::Critical), "crit: {crit}");
    }
    // Not a list: not even a well-formed header.
    let mut header = our_header(&f);
    header["crit"] = json!("exp");
    assert!(f.verifier.verify(&sign_raw(&f, &header, &payload), NOW).is_err());
}
