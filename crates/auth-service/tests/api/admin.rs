use std::sync::Arc;

use auth_core::UserId;
use auth_events::{CloudEvent, EventHandler};
use auth_service::ledger::LedgerHandler;
use reqwest::Method;
use serde_json::json;

use crate::helpers::*;

fn confirmation(user: UserId, service: &str) -> CloudEvent {
    CloudEvent {
        specversion: "1.0".into(),
        id: uuid::Uuid::new_v4().to_string(),
        source: format!("gatehouse/{service}-service"),
        kind: "user.deletion_completed".into(),
        time: "2026-11-27T10:00:00Z".into(),
        subject: user.to_string(),
        datacontenttype: "application/json".into(),
        data: json!({"user_id": user, "service": service}),
    }
}

#[tokio::test]
async fn the_ledger_shows_which_services_confirmed_a_deletion_and_which_are_pending() {
    each_backend(async |app| {
        let (_, browser) = app.signed_in().await;
        let user: UserId = claims(browser.access())["sub"].as_str().unwrap().parse().unwrap();
        let ledger_of = async |token: &str| {
            app.request(Method::GET, &format!("/auth/admin/deletions/{user}")).bearer_auth(token).send().await.unwrap()
        };
        assert_eq!(ledger_of(OPERATOR_TOKEN).await.status(), 404, "a live user is not in the ledger");
        let deleted = app
            .as_page(Method::DELETE, "/auth/delete", &browser)
            .json(&json!({"password": PASSWORD}))
            .send()
            .await
            .unwrap();
        assert_eq!(deleted.status(), 204);

        let status = body(ledger_of(OPERATOR_TOKEN).await).await;
        assert_eq!(status["user_id"], json!(user));
        assert_eq!(status["pending"], json!(["notes", "billing"]));
        assert_eq!(status["complete"], false);

        let intake = LedgerHandler { ledger: app.stores.ledger.clone(), clock: Arc::new(auth_core::SystemClock) };
        intake.handle(&confirmation(user, "notes")).await.unwrap();
        intake.handle(&confirmation(user, "notes")).await.unwrap();
        let status = body(ledger_of(OPERATOR_TOKEN).await).await;
        assert_eq!(status["pending"], json!(["billing"]));
        assert_eq!(status["confirmed"].as_array().unwrap().len(), 1);
        assert_eq!(status["confirmed"][0]["service"], "notes");
        intake.handle(&confirmation(user, "billing")).await.unwrap();
        assert_eq!(body(ledger_of(OPERATOR_TOKEN).await).await["complete"], true);

        // The ledger holds ids and times only.
        let text = serde_json::to_string(&body(ledger_of(OPERATOR_TOKEN).await).await).unwrap();
        assert!(!text.contains("@example.com"));
    })
    .await;
}

#[tokio::test]
async fn the_operator_endpoint_needs_the_operator_token() {
    each_backend(async |app| {
        let path = format!("/auth/admin/deletions/{}", UserId::new());
        assert_eq!(app.request(Method::GET, &path).send().await.unwrap().status(), 401);
        assert_eq!(app.request(Method::GET, &path).bearer_auth("wrong").send().await.unwrap().status(), 401);
        let (_, browser) = app.signed_in().await;
        let as_user = app.request(Method::GET, &path).bearer_auth(browser.access()).send().await.unwrap();
        assert_eq!(as_user.status(), 403, "a user without users:admin is not the operator");
        let ok = app.request(Method::GET, &path).bearer_auth(OPERATOR_TOKEN).send().await.unwrap();
        assert_eq!(ok.status(), 404);
        assert_eq!(code(ok).await, "deletion_not_found");
    })
    .await;
}

#[tokio::test]
async fn malformed_confirmations_are_refused_not_recorded() {
    each_backend(async |app| {
        let intake = LedgerHandler { ledger: app.stores.ledger.clone(), clock: Arc::new(auth_core::SystemClock) };
        let mut bad = confirmation(UserId::new(), "notes");
        bad.subject = "not-a-user".into();
        assert!(intake.handle(&bad).await.is_err());
        let mut nameless = confirmation(UserId::new(), "notes");
        nameless.data = json!({"user_id": nameless.subject});
        assert!(intake.handle(&nameless).await.is_err());
    })
    .await;
}
