//! Whether an address has an account is not told by login, forgot, resend
//! or (when concealed) registration: same status, body, header names, and
//! the same hashing work.

use reqwest::{Method, Response, StatusCode};
use serde_json::{Value, json};

use crate::helpers::*;

/// Status, header names (values such as `Date` differ), and the body with
/// the values that are fresh per answer blanked.
async fn shape(response: Response) -> (StatusCode, Vec<String>, Value) {
    let status = response.status();
    let mut names: Vec<String> = response.headers().keys().map(|k| k.as_str().to_owned()).collect();
    names.sort();
    names.dedup();
    let mut body: Value = response.json().await.unwrap();
    for fresh in ["id", "created_at", "email"] {
        if let Some(v) = body.get_mut(fresh) {
            *v = Value::Null;
        }
    }
    (status, names, body)
}

#[tokio::test]
async fn login_forgot_and_resend_answer_alike_for_known_and_unknown_addresses() {
    each_backend(async |app: TestApp| {
        let known = email();
        assert_eq!(app.register(&known, PASSWORD).await.status(), StatusCode::CREATED);
        let unknown = email();
        let mut seen = Vec::new();
        for address in [&known, &unknown] {
            let before = app.hash_operations();
            let login = shape(app.login(address, "not the password at all").await).await;
            let spent = app.hash_operations() - before;
            let forgot = app.request(Method::POST, "/auth/password/forgot").json(&json!({"email": address}));
            let forgot = shape(forgot.send().await.unwrap()).await;
            let resend = app.request(Method::POST, "/auth/email/resend").json(&json!({"email": address}));
            let resend = shape(resend.send().await.unwrap()).await;
            seen.push((login, spent, forgot, resend));
        }
        assert_eq!(seen[0], seen[1], "known and unknown told apart");
        assert_eq!(seen[0].1, 1, "one hash each");
    })
    .await;
}

#[tokio::test]
async fn a_concealed_registration_of_a_taken_address_answers_as_a_new_one_and_mails_the_owner() {
    let options = Options { conceal_existing: true, ..Options::default() };
    each_backend_with(options, async |app: TestApp| {
        let owner = email();
        let before = app.hash_operations();
        let first = shape(app.register(&owner, PASSWORD).await).await;
        let new_costs = app.hash_operations() - before;
        let before = app.hash_operations();
        let again = app.register(&owner, "another passphrase entirely").await;
        let taken_costs = app.hash_operations() - before;
        assert_eq!(first, shape(again).await, "a taken address answered unlike a new one");
        assert_eq!((new_costs, taken_costs), (1, 1), "the same hashing work");
        assert_eq!(first.0, StatusCode::CREATED);

        // The owner learns of it; the first message is the verification link.
        let notice = mail(&owner, 2).await;
        assert_eq!(notice.subject, "Someone tried to create an account with your address");
        assert!(notice.text.contains(&format!("{ISSUER}/login")), "{}", notice.text);
        // Nothing changed: the owner's password still works, the other does not.
        assert_eq!(app.login(&owner, PASSWORD).await.status(), StatusCode::OK);
        assert_eq!(app.login(&owner, "another passphrase entirely").await.status(), StatusCode::UNAUTHORIZED);

        // A later probe: the ids look alike (random, version 4), and the
        // address's hourly mail count (forgot's) is untouched by either.
        app.clock.advance(time::Duration::hours(2));
        let fresh = email();
        let (new, taken) = (app.register(&fresh, PASSWORD).await, app.register(&owner, PASSWORD).await);
        for answer in [new, taken] {
            let id: uuid::Uuid = body(answer).await["id"].as_str().unwrap().parse().unwrap();
            assert_eq!(id.get_version_num(), 4);
        }
        for address in [&fresh, &owner] {
            let forgot = || app.request(Method::POST, "/auth/password/forgot").json(&json!({"email": address})).send();
            let mut seen = Vec::new();
            for _ in 0..6 {
                seen.push(forgot().await.unwrap().status().as_u16());
            }
            assert_eq!(seen, [202, 202, 202, 202, 202, 429], "{address}");
        }
    })
    .await;
}

#[tokio::test]
async fn without_concealment_a_taken_address_is_a_conflict() {
    each_backend(async |app: TestApp| {
        let owner = email();
        assert_eq!(app.register(&owner, PASSWORD).await.status(), StatusCode::CREATED);
        let again = app.register(&owner, PASSWORD).await;
        assert_eq!((again.status(), code(again).await.as_str()), (StatusCode::CONFLICT, "email_taken"));
    })
    .await;
}
