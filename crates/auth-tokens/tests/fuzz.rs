//! Property-based fuzzing on stable Rust: the token verifier, cookie
//! lookup and CSRF checks take any input without panicking and accept
//! nothing they did not issue. A committed seed corpus (`tests/corpus/`)
//! runs first; proptest then explores around it for a bounded number of
//! cases (CI's smoke run), and keeps any failure it finds under
//! `proptest-regressions/` to run again first.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use auth_tokens::csrf::CsrfKey;
use auth_tokens::jwt::{TokenSettings, TokenSigner, TokenVerifier};
use auth_tokens::keys::KeyRing;
use auth_tokens::{AccessClaims, cookies};
use proptest::prelude::*;

const NOW: i64 = 1_800_000_000;

fn corpus(name: &str) -> Vec<String> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus").join(name);
    std::fs::read_to_string(path).unwrap().lines().map(str::to_owned).collect()
}

struct Keys {
    signer: TokenSigner,
    verifier: TokenVerifier,
    good: String,
}

fn keys() -> Keys {
    let settings = TokenSettings {
        issuer: "http://127.0.0.1:8080".into(),
        audience: "gatehouse".into(),
        lifetime: 600,
        leeway: 60,
    };
    let ring = KeyRing::generate(NOW);
    let signer = TokenSigner::new(&ring);
    let verifier = TokenVerifier::from_ring(&ring, &settings, NOW);
    let claims = AccessClaims {
        iss: settings.issuer.clone(),
        sub: "user-1".into(),
        aud: "gatehouse".into(),
        exp: NOW + 600,
        iat: NOW,
        nbf: NOW,
        jti: AccessClaims::new_jti(),
        sid: "session-1".into(),
        roles: vec!["user".into()],
        permissions: vec!["notes:read".into()],
        permissions_by_role: false,
        email_verified: true,
        ver: 0,
    };
    let good = signer.sign(&claims).unwrap();
    Keys { signer, verifier, good }
}

#[test]
fn the_seed_corpus_is_refused_without_a_panic() {
    let k = keys();
    assert!(k.verifier.verify(&k.good, NOW).is_ok(), "the fixture's own token");
    let _ = k.signer.kid();
    for token in corpus("tokens.txt") {
        assert!(k.verifier.verify(&token, NOW).is_err(), "{token:?} verified");
    }
    for line in corpus("cookies.txt") {
        if let Some(found) = cookies::find([line.as_str()], cookies::ACCESS) {
            assert!(set_in(&line, found), "{line:?} gave {found:?}");
        }
    }
}

/// Whether `line` sets the access cookie to `value`, bare or quoted (RFC 6265).
fn set_in(line: &str, value: &str) -> bool {
    let name = cookies::ACCESS;
    line.contains(&format!("{name}={value}")) || line.contains(&format!("{name}=\"{value}\""))
}

/// Any position of a segment but its last character, whose spare bits a
/// decoder may ignore: a change there changes the decoded bytes.
fn mutable_positions(token: &str) -> Vec<usize> {
    let mut positions = Vec::new();
    let mut start = 0;
    for segment in token.split('.') {
        positions.extend(start..start + segment.len().saturating_sub(1));
        start += segment.len() + 1;
    }
    positions
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn no_string_verifies(token in ".{0,400}") {
        let k = keys();
        prop_assert!(k.verifier.verify(&token, NOW).is_err());
    }

    #[test]
    fn no_token_shaped_string_verifies(a in "[A-Za-z0-9_-]{0,120}", b in "[A-Za-z0-9_-]{0,200}", c in "[A-Za-z0-9_-]{0,100}") {
        let k = keys();
        let good_header = k.good.split('.').next().unwrap().to_owned();
        for token in [format!("{a}.{b}.{c}"), format!("{good_header}.{b}.{c}")] {
            prop_assert!(k.verifier.verify(&token, NOW).is_err(), "{}", token);
        }
    }

    #[test]
    fn any_change_to_a_real_token_is_refused(pick in any::<prop::sample::Index>(), to in "[A-Za-z0-9_.=+/ -]") {
        let k = keys();
        let positions = mutable_positions(&k.good);
        let at = positions[pick.index(positions.len())];
        let mut bytes = k.good.clone().into_bytes();
        let replacement = to.as_bytes()[0];
        prop_assume!(bytes[at] != replacement);
        bytes[at] = replacement;
        let changed = String::from_utf8(bytes).unwrap();
        prop_assert!(k.verifier.verify(&changed, NOW).is_err(), "{}", changed);
    }

    #[test]
    fn cookie_lookup_finds_only_its_own_name(lines in prop::collection::vec(".{0,80}", 0..4)) {
        let found = cookies::find(lines.iter().map(String::as_str), cookies::ACCESS);
        if let Some(value) = found {
            prop_assert!(lines.iter().any(|l| set_in(l, value)), "{:?} gave {:?}", lines, value);
        }
    }

    #[test]
    fn a_csrf_token_holds_only_for_its_session(token in ".{0,120}", sid in "[a-z0-9-]{1,40}") {
        let key = CsrfKey::generate();
        prop_assert!(!key.verify(&token, &sid), "a guessed token held");
        let minted = key.mint(&sid);
        prop_assert!(key.verify(&minted, &sid));
        prop_assert!(!key.verify(&minted, &format!("{sid}x")), "it held for another session");
        prop_assert!(!CsrfKey::generate().verify(&minted, &sid), "it held under another key");
    }
}
