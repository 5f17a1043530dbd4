//! The optional breached-password check against a range API in the Pwned
//! Passwords format, served here by a local stand-in that records what it
//! was asked.

use std::sync::{Arc, Mutex};

use reqwest::{Method, StatusCode};
use serde_json::json;
use sha1::{Digest as _, Sha1};

use crate::helpers::*;

const BREACHED: &str = "a passphrase everyone has leaked";

fn sha1_hex(text: &str) -> String {
    Sha1::digest(text.as_bytes()).iter().map(|b| format!("{b:02X}")).collect()
}

/// A range API that lists [`BREACHED`] (and padding), and the paths it was asked.
async fn range_api() -> (String, Arc<Mutex<Vec<String>>>) {
    let asked = Arc::new(Mutex::new(Vec::new()));
    let seen = asked.clone();
    let app = axum::Router::new().route(
        "/range/{prefix}",
        axum::routing::get(move |axum::extract::Path(prefix): axum::extract::Path<String>| {
            let seen = seen.clone();
            async move {
                seen.lock().unwrap().push(prefix.clone());
                let hash = sha1_hex(BREACHED);
                let mut body = String::from("00000000000000000000000000000000001:0\r\n");
                if hash.starts_with(&prefix) {
                    body.push_str(&format!("{}:1234\r\n", &hash[5..]));
                }
                body
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/range", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, asked)
}

#[tokio::test]
async fn a_breached_password_is_refused_and_only_a_hash_prefix_leaves() {
    let (url, asked) = range_api().await;
    let options = Options { breached_range_url: Some(url), ..Options::default() };
    each_backend_with(options, async |app: TestApp| {
        asked.lock().unwrap().clear();
        let refused = app.register(&email(), BREACHED).await;
        assert_eq!((refused.status(), code(refused).await.as_str()), (StatusCode::BAD_REQUEST, "password_breached"));
        let seen = asked.lock().unwrap().clone();
        assert_eq!(seen, [sha1_hex(BREACHED)[..5].to_owned()], "five hex digits and nothing else");

        let (_, browser) = app.signed_in().await;
        let change = app
            .as_page(Method::POST, "/auth/password/change", &browser)
            .json(&json!({"current_password": PASSWORD, "password": BREACHED}))
            .send()
            .await
            .unwrap();
        assert_eq!((change.status(), code(change).await.as_str()), (StatusCode::BAD_REQUEST, "password_breached"));
    })
    .await;
}

#[tokio::test]
async fn an_unreachable_range_api_lets_the_password_through() {
    let options = Options { breached_range_url: Some("http://127.0.0.1:9/range".into()), ..Options::default() };
    each_backend_with(options, async |app: TestApp| {
        assert_eq!(app.register(&email(), BREACHED).await.status(), StatusCode::CREATED, "fail open");
    })
    .await;
}
