//! `gatehouse up` as the whole system: the gateway in front of the
//! auth-service and the notes service.

use serde_json::{Value, json};

use super::*;

async fn log_in(client: &reqwest::Client, url: &str, email: &str) -> Browser {
    let creds = json!({"email": email, "password": PASSWORD});
    let login = client.post(format!("{url}/auth/login")).json(&creds).send().await.unwrap();
    assert_eq!(login.status(), 200);
    Browser::from_login(&login)
}

async fn register(client: &reqwest::Client, url: &str) -> String {
    let email = format!("up-{}@example.com", uuid::Uuid::new_v4().simple());
    let creds = json!({"email": email, "password": PASSWORD});
    assert_eq!(client.post(format!("{url}/auth/register")).json(&creds).send().await.unwrap().status(), 201);
    email
}

/// Adds a note as the page would (cookies and CSRF header).
async fn add_note(client: &reqwest::Client, url: &str, b: &Browser, body: &str) -> reqwest::Response {
    let request = b.unsafe_request(client.post(format!("{url}/api/notes")));
    request.json(&json!({"body": body})).send().await.unwrap()
}

/// The signed-in user's id.
async fn user_id(client: &reqwest::Client, url: &str, b: &Browser) -> String {
    let me: Value =
        client.get(format!("{url}/auth/me")).header("cookie", &b.cookie).send().await.unwrap().json().await.unwrap();
    me["id"].as_str().unwrap().to_owned()
}

/// Deletes the signed-in user's account, with its password.
async fn delete_account(client: &reqwest::Client, url: &str, b: &Browser) -> reqwest::Response {
    let request = b.unsafe_request(client.delete(format!("{url}/auth/delete")));
    request.json(&json!({"password": PASSWORD})).send().await.unwrap()
}

/// Waits, until `deadline` at most, for `user`'s notes to be gone from `notes_db`.
async fn wait_until_erased(notes_db: &notes_service::NotesStore, user: &str, deadline: tokio::time::Instant) {
    while notes_db.count_of(user).await.unwrap() > 0 {
        assert!(tokio::time::Instant::now() < deadline, "the notes of a deleted user were never erased");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

async fn notes(client: &reqwest::Client, url: &str, b: &Browser) -> reqwest::Response {
    client.get(format!("{url}/api/notes")).header("cookie", &b.cookie).send().await.unwrap()
}

#[tokio::test]
async fn notes_live_behind_the_gateway_and_a_logout_is_refused_at_once() {
    let dir = TempDir::new();
    let server = start(gatehouse(&dir.data())).await;
    let (client, url) = (reqwest::Client::new(), server.url.clone());
    let email = register(&client, &url).await;
    let b = log_in(&client, &url, &email).await;

    let created = b
        .unsafe_request(client.post(format!("{url}/api/notes")))
        .header("x-user-id", "someone-else")
        .json(&json!({"body": "buy milk"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let without_csrf = client
        .post(format!("{url}/api/notes"))
        .header("cookie", &b.cookie)
        .json(&json!({"body": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(without_csrf.status(), 403);
    let listed: Value = notes(&client, &url, &b).await.json().await.unwrap();
    assert_eq!(listed["notes"].as_array().unwrap().len(), 1);
    assert_eq!(listed["notes"][0]["body"], "buy milk");

    let other = log_in(&client, &url, &register(&client, &url).await).await;
    let theirs: Value = notes(&client, &url, &other).await.json().await.unwrap();
    assert_eq!(theirs["notes"], json!([]), "one user's notes leaked to another");

    let logout = b.unsafe_request(client.delete(format!("{url}/auth/logout"))).send().await.unwrap();
    assert_eq!(logout.status(), 204);
    let refused = notes(&client, &url, &b).await;
    assert_eq!(refused.status(), 401);
    assert_eq!(refused.headers()["www-authenticate"], "Bearer error=\"invalid_token\"");
    assert_eq!(notes(&client, &url, &other).await.status(), 200);
    assert!(server.stop().await.success());
}

#[tokio::test]
async fn deleting_the_account_refuses_every_session_and_erases_the_users_notes() {
    let dir = TempDir::new();
    let mut cmd = gatehouse(&dir.data());
    cmd.env("GATEHOUSE_ADMIN__OPERATOR_TOKEN", "operator-token-of-this-test");
    let server = start(cmd).await;
    let (client, url) = (reqwest::Client::new(), server.url.clone());
    let email = register(&client, &url).await;
    let laptop = log_in(&client, &url, &email).await;
    let phone = log_in(&client, &url, &email).await;
    assert_eq!(notes(&client, &url, &phone).await.status(), 200);
    assert_eq!(add_note(&client, &url, &laptop, "to be erased").await.status(), 201);
    let user_id = user_id(&client, &url, &laptop).await;
    let notes_db = notes_service::NotesStore::connect(&format!("sqlite://{}", dir.data().join("notes.db").display()))
        .await
        .unwrap();
    assert_eq!(notes_db.count_of(&user_id).await.unwrap(), 1);
    assert_eq!(delete_account(&client, &url, &laptop).await.status(), 204);
    assert_eq!(notes(&client, &url, &laptop).await.status(), 401);
    assert_eq!(notes(&client, &url, &phone).await.status(), 401);
    // user.deleted travels through the outbox and the in-process bus to the
    // notes service's own database; the relay runs every 200 ms.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    wait_until_erased(&notes_db, &user_id, deadline).await;
    // …and the notes service's confirmation reaches the deletion ledger.
    let ledger = format!("{url}/auth/admin/deletions/{user_id}");
    loop {
        let status: Value =
            client.get(&ledger).bearer_auth("operator-token-of-this-test").send().await.unwrap().json().await.unwrap();
        if status["complete"] == true {
            assert_eq!(status["confirmed"][0]["service"], "notes");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the ledger never showed the notes service's confirmation");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(server.stop().await.success());
}

#[tokio::test]
async fn routes_reload_on_sighup_and_a_bad_file_keeps_the_old_ones() {
    let dir = TempDir::new();
    let upstream = {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let app = axum::Router::new().fallback(|| async { "from the extra upstream" });
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        url
    };
    let file = dir.0.join("gatehouse.toml");
    let routes = |extra: &str| {
        format!(
            "[[gateway.routes]]\nprefix = \"/api/notes\"\nupstream = \"inproc://notes\"\n\n\
             [[gateway.routes]]\nprefix = \"/extra\"\nupstream = \"{extra}\"\nauth = \"public\"\n"
        )
    };
    std::fs::write(&file, routes("http://127.0.0.1:9")).unwrap();
    let mut cmd = gatehouse(&dir.data());
    cmd.arg("--config").arg(&file);
    let mut server = start(cmd).await;
    let client = reqwest::Client::new();
    let extra = format!("{}/extra/x", server.url);
    assert_eq!(client.get(&extra).send().await.unwrap().status(), 502);

    std::fs::write(&file, routes(&upstream)).unwrap();
    server.hang_up();
    server.wait_for_log("routes reloaded").await;
    let reloaded = client.get(&extra).send().await.unwrap();
    assert_eq!(reloaded.status(), 200);
    assert_eq!(reloaded.text().await.unwrap(), "from the extra upstream");

    std::fs::write(&file, routes("ftp://nowhere")).unwrap();
    server.hang_up();
    let refusal = server.wait_for_log("route reload refused").await;
    assert!(refusal.contains("ftp://nowhere"), "{refusal}");
    assert_eq!(client.get(&extra).send().await.unwrap().status(), 200, "the old routes should stay");
    assert!(server.stop().await.success());
}

#[tokio::test]
async fn sessions_opened_through_the_gateway_record_the_clients_address() {
    let dir = TempDir::new();
    let server = start(gatehouse(&dir.data())).await;
    let (client, url) = (reqwest::Client::new(), server.url.clone());
    let email = register(&client, &url).await;
    // A client's own claim is not believed: 127.0.0.1 is no trusted proxy.
    let creds = json!({"email": email, "password": PASSWORD});
    let login = client
        .post(format!("{url}/auth/login"))
        .header("x-forwarded-for", "203.0.113.9")
        .json(&creds)
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 200);
    let b = Browser::from_login(&login);
    let listed: Value = client
        .get(format!("{url}/auth/sessions"))
        .header("cookie", &b.cookie)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["sessions"][0]["ip"], "127.0.0.1", "{listed}");
    assert!(server.stop().await.success());
}

#[tokio::test]
async fn a_deletion_still_erases_the_notes_when_the_notes_database_was_locked_at_first() {
    use sqlx::Connection as _;
    let dir = TempDir::new();
    let mut server = start(gatehouse(&dir.data())).await;
    let (client, url) = (reqwest::Client::new(), server.url.clone());
    let b = log_in(&client, &url, &register(&client, &url).await).await;
    assert_eq!(add_note(&client, &url, &b, "to be erased").await.status(), 201);
    let user_id = user_id(&client, &url, &b).await;
    let notes_url = format!("sqlite://{}", dir.data().join("notes.db").display());

    // Another process's write lock: the notes service cannot erase for now.
    let mut lock = sqlx::SqliteConnection::connect(&notes_url).await.unwrap();
    sqlx::query("BEGIN EXCLUSIVE").execute(&mut lock).await.unwrap();
    assert_eq!(delete_account(&client, &url, &b).await.status(), 204);
    server.wait_for_log("an in-process handler failed").await;
    sqlx::query("ROLLBACK").execute(&mut lock).await.unwrap();
    drop(lock);

    // The event was not lost with the failure: it comes again and erases.
    let notes_db = notes_service::NotesStore::connect(&notes_url).await.unwrap();
    wait_until_erased(&notes_db, &user_id, tokio::time::Instant::now() + std::time::Duration::from_secs(30)).await;
    assert!(server.stop().await.success());
}

#[tokio::test]
async fn out_of_the_box_a_client_is_throttled_and_forged_forwarding_does_not_help() {
    let dir = TempDir::new();
    let mut cmd = gatehouse(&dir.data());
    real_limits(&mut cmd);
    let server = start(cmd).await;
    let (client, url) = (reqwest::Client::new(), server.url.clone());
    let email = register(&client, &url).await;
    // The default bucket: 20 logins at once from one client. Each forged
    // X-Forwarded-For is ignored (127.0.0.1 is no trusted proxy), so a
    // spray cannot pose as many clients.
    for i in 0..20 {
        let guess = json!({"email": format!("spray-{i}@example.com"), "password": PASSWORD});
        let login = client
            .post(format!("{url}/auth/login"))
            .header("x-forwarded-for", format!("198.51.100.{i}"))
            .json(&guess)
            .send()
            .await
            .unwrap();
        assert_eq!(login.status(), 401, "attempt {i}");
    }
    let creds = json!({"email": email, "password": PASSWORD});
    let throttled = client.post(format!("{url}/auth/login")).json(&creds).send().await.unwrap();
    assert_eq!(throttled.status(), 429);
    let retry: u64 = throttled.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=6).contains(&retry), "10 a minute: {retry}");
    let metrics =
        client.get(format!("{url}/metrics")).bearer_auth(METRICS_TOKEN).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("gatehouse_logins_total{result=\"throttled_client\"} 1"), "{metrics}");
    assert!(server.stop().await.success());
}

#[tokio::test]
async fn metrics_are_served_on_the_operator_port_and_not_to_clients() {
    let dir = TempDir::new();
    let mut cmd = gatehouse(&dir.data());
    cmd.env_remove("GATEHOUSE_ADMIN__METRICS_TOKEN");
    let mut server = start(cmd).await;
    let line = server.wait_for_log("operator port (metrics) listening on http://").await;
    let operator = line[line.find("http://").unwrap()..].trim().to_owned();
    let (client, url) = (reqwest::Client::new(), server.url.clone());
    register(&client, &url).await;
    let public = client.get(format!("{url}/metrics")).send().await.unwrap();
    assert_eq!(public.status(), 404, "the client port serves no metrics");
    let forged = client.get(format!("{url}/metrics")).bearer_auth(METRICS_TOKEN).send().await.unwrap();
    assert_eq!(forged.status(), 404, "no token is configured, so none opens it");
    let text = client.get(format!("{operator}/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(text.contains("gatehouse_gateway_requests_total"), "{text}");
    assert!(text.contains("gatehouse_http_requests_total{route=\"/auth/register\""), "the auth-service's too: {text}");
    assert_eq!(client.get(format!("{operator}/auth/me")).send().await.unwrap().status(), 404, "nothing else");
    assert!(server.stop().await.success());
}
