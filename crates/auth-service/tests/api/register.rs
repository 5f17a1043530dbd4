use auth_core::{EventKind, UserId};
use reqwest::{Method, StatusCode, header};
use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn registering_returns_201_and_records_user_registered_in_the_outbox() {
    each_backend(async |app| {
        let email = email();
        let response = app.register(&format!("  {}  ", email.replace("example.com", "Example.COM")), PASSWORD).await;
        assert_eq!(response.status(), 201);
        let user = body(response).await;
        assert_eq!(user["email"], email);
        assert!(user["created_at"].as_str().unwrap().ends_with('Z'));
        let id: UserId = user["id"].as_str().unwrap().parse().unwrap();
        let events = app.stores.outbox.events_of(id).await.unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].event.kind, EventKind::Registered);
        assert_eq!(events[0].event.data["email"], email);
        assert_eq!(events[0].event.data["method"], "password");
    })
    .await;
}

#[tokio::test]
async fn a_duplicate_email_is_409_even_with_another_domain_case_or_whitespace() {
    each_backend(async |app| {
        let email = email();
        assert_eq!(app.register(&email, PASSWORD).await.status(), 201);
        for twin in [email.clone(), email.replace("example.com", "EXAMPLE.com"), format!(" {email}\t")] {
            let response = app.register(&twin, PASSWORD).await;
            assert_eq!(response.status(), 409, "{twin:?}");
            assert_eq!(code(response).await, "email_taken");
        }
    })
    .await;
}

#[tokio::test]
async fn an_invalid_email_is_400_invalid_email() {
    each_backend(async |app| {
        for bad in ["", "no-at-sign", "a@b", "a b@example.com", "@example.com"] {
            let response = app.register(bad, PASSWORD).await;
            assert_eq!(response.status(), 400, "{bad:?}");
            assert_eq!(code(response).await, "invalid_email");
        }
    })
    .await;
}

#[tokio::test]
async fn weak_passwords_are_refused_with_the_reason() {
    each_backend(async |app| {
        let cases = [
            ("fourteen chars", "password_too_short"),
            (&"😀".repeat(14), "password_too_short"),
            (&"x".repeat(129), "password_too_long"),
            ("passwordpassword", "password_too_common"),
        ];
        for (password, expected) in cases {
            let response = app.register(&email(), password).await;
            assert_eq!(response.status(), 400);
            let body = body(response).await;
            assert_eq!(body["error"]["code"], expected, "{password:?}");
            let message = body["error"]["message"].as_str().unwrap().to_lowercase();
            for rule in ["uppercase", "digit", "symbol"] {
                assert!(!message.contains(rule));
            }
        }
        for ok in [&"é".repeat(15), &"x".repeat(128), "съешь же ещё этих"] {
            assert_eq!(app.register(&email(), ok).await.status(), 201, "{ok:?}");
        }
    })
    .await;
}

#[tokio::test]
async fn bodies_that_are_not_json_are_415() {
    each_backend(async |app| {
        let form = format!("email={}&password=x", email());
        for content_type in ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"] {
            let response = app
                .request(Method::POST, "/auth/register")
                .header(header::CONTENT_TYPE, content_type)
                .body(form.clone())
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 415, "{content_type}");
            assert_eq!(code(response).await, "unsupported_media_type");
        }
    })
    .await;
}

#[tokio::test]
async fn malformed_json_and_unknown_fields_are_400() {
    each_backend(async |app| {
        let response = app
            .request(Method::POST, "/auth/register")
            .header(header::CONTENT_TYPE, "application/json")
            .body("{\"email\":")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400);
        assert_eq!(code(response).await, "invalid_json");
        let with_hint = json!({"email": email(), "password": PASSWORD, "hint": "my dog"});
        let response = app.request(Method::POST, "/auth/register").json(&with_hint).send().await.unwrap();
        assert_eq!(response.status(), 400);
        assert_eq!(code(response).await, "invalid_body");
        let missing = json!({"email": email()});
        let response = app.request(Method::POST, "/auth/register").json(&missing).send().await.unwrap();
        assert_eq!(response.status(), 400);
    })
    .await;
}

#[tokio::test]
async fn a_body_over_16_kib_is_413_before_any_hashing() {
    each_backend(async |app| {
        let before = app.hash_operations();
        let huge = json!({"email": email(), "password": "x".repeat(1 << 20)});
        let response = app.request(Method::POST, "/auth/register").json(&huge).send().await.unwrap();
        assert_eq!(response.status(), 413);
        assert_eq!(code(response).await, "body_too_large");
        let response = app.request(Method::POST, "/auth/login").json(&huge).send().await.unwrap();
        assert_eq!(response.status(), 413);
        assert_eq!(app.hash_operations(), before);
    })
    .await;
}

#[tokio::test]
async fn one_address_is_one_account_however_it_is_written_and_invisible_characters_are_refused() {
    each_backend(async |app| {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let composed = format!("r\u{e9}my-{id}@B\u{fc}cher.example");
        let decomposed = format!("re\u{301}my-{id}@bu\u{308}cher.EXAMPLE");
        let first = app.register(&composed, PASSWORD).await;
        assert_eq!(first.status(), StatusCode::CREATED);
        assert_eq!(body(first).await["email"], format!("r\u{e9}my-{id}@xn--bcher-kva.example"));
        let twin = app.register(&decomposed, PASSWORD).await;
        assert_eq!((twin.status(), code(twin).await.as_str()), (StatusCode::CONFLICT, "email_taken"));
        assert_eq!(app.login(&decomposed, PASSWORD).await.status(), StatusCode::OK, "either form signs in");
        for hidden in [format!("ev\u{200B}e-{id}@example.com"), format!("eve-{id}\u{202E}@example.com")] {
            let refused = app.register(&hidden, PASSWORD).await;
            assert_eq!((refused.status(), code(refused).await.as_str()), (StatusCode::BAD_REQUEST, "invalid_email"));
        }
    })
    .await;
}
