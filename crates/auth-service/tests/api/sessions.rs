use reqwest::Method;

use crate::helpers::*;

fn sid(browser: &Browser) -> String {
    claims(browser.access())["sid"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn the_session_list_shows_the_callers_sessions_and_marks_the_current_one() {
    each_backend(async |app| {
        let (email, laptop) = app.signed_in().await;
        let phone = app.log_in(&email).await;
        let (_, stranger) = app.signed_in().await;
        let response = app.with_cookies(Method::GET, "/auth/sessions", &laptop).send().await.unwrap();
        assert_eq!(response.status(), 200);
        let listed = body(response).await["sessions"].as_array().unwrap().clone();
        let ids: Vec<&str> = listed.iter().map(|s| s["id"].as_str().unwrap()).collect();
        assert_eq!(ids.len(), 2);
        assert!(ids.contains(&sid(&laptop).as_str()) && ids.contains(&sid(&phone).as_str()));
        assert!(!ids.contains(&sid(&stranger).as_str()));
        for s in &listed {
            assert_eq!(s["current"], s["id"] == sid(&laptop).as_str());
            assert_eq!(s["ip"], "127.0.0.1");
            for field in ["created_at", "last_seen_at", "expires_at"] {
                assert!(s[field].is_string(), "{field}");
            }
        }
    })
    .await;
}

#[tokio::test]
async fn revoking_one_session_ends_only_that_one() {
    each_backend(async |app| {
        let (email, laptop) = app.signed_in().await;
        let phone = app.log_in(&email).await;
        let path = format!("/auth/sessions/{}", sid(&phone));
        let response = app.as_page(Method::DELETE, &path, &laptop).send().await.unwrap();
        assert_eq!(response.status(), 204);
        assert_eq!(app.me(&phone).await.status(), 401);
        assert_eq!(app.me(&laptop).await.status(), 200);
        let again = app.as_page(Method::DELETE, &path, &laptop).send().await.unwrap();
        assert_eq!(again.status(), 404);
    })
    .await;
}

#[tokio::test]
async fn another_users_session_is_404_and_survives() {
    each_backend(async |app| {
        let (_, mine) = app.signed_in().await;
        let (_, theirs) = app.signed_in().await;
        for id in [sid(&theirs), uuid::Uuid::new_v4().to_string(), "not-a-uuid".into()] {
            let response = app.as_page(Method::DELETE, &format!("/auth/sessions/{id}"), &mine).send().await.unwrap();
            assert_eq!(response.status(), 404, "{id}");
            assert_eq!(code(response).await, "session_not_found");
        }
        assert_eq!(app.me(&theirs).await.status(), 200);
    })
    .await;
}

#[tokio::test]
async fn revoking_all_other_sessions_keeps_the_current_one() {
    each_backend(async |app| {
        let (email, laptop) = app.signed_in().await;
        let phone = app.log_in(&email).await;
        let tablet = app.log_in(&email).await;
        let (_, stranger) = app.signed_in().await;
        let response = app.as_page(Method::DELETE, "/auth/sessions", &laptop).send().await.unwrap();
        assert_eq!(response.status(), 204);
        assert_eq!(app.me(&laptop).await.status(), 200);
        assert_eq!(app.me(&phone).await.status(), 401);
        assert_eq!(app.me(&tablet).await.status(), 401);
        assert_eq!(app.me(&stranger).await.status(), 200);
    })
    .await;
}
