//! Roles as an operator meets them: the first admin made on the server,
//! permissions required by a route of `gatehouse up`, and role changes
//! (through the admin API, or from the command line in another process)
//! enforced by the gateway at once.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::*;

const CONFIG: &str = r#"
[roles.user]
permissions = []

[roles.writer]
description = "keeps notes"
permissions = ["notes:read", "notes:write"]
"#;

async fn account(client: &reqwest::Client, url: &str, name: &str) -> (String, Browser) {
    let email = format!("{name}-{}@example.com", uuid::Uuid::new_v4().simple());
    let creds = json!({"email": email, "password": PASSWORD});
    assert_eq!(client.post(format!("{url}/auth/register")).json(&creds).send().await.unwrap().status(), 201);
    let login = client.post(format!("{url}/auth/login")).json(&creds).send().await.unwrap();
    assert_eq!(login.status(), 200);
    (email, Browser::from_login(&login))
}

async fn notes(client: &reqwest::Client, url: &str, b: &Browser) -> reqwest::Response {
    client.get(format!("{url}/api/notes")).header("cookie", &b.cookie).send().await.unwrap()
}

async fn code(response: reqwest::Response) -> String {
    let body: Value = response.json().await.unwrap();
    body["error"]["code"].as_str().unwrap_or_default().to_owned()
}

/// `gatehouse users …` against the same data dir and configuration.
async fn users(dir: &TempDir, config: &Path, args: &[&str]) -> String {
    let out = gatehouse(&dir.data()).arg("--config").arg(config).arg("users").args(args).output().await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "gatehouse users {args:?}: {text}");
    text
}

#[tokio::test]
async fn the_first_admin_is_made_on_the_server_and_role_changes_reach_the_gateway_at_once() {
    let dir = TempDir::new();
    let config = dir.0.join("gatehouse.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let server = start({
        let mut cmd = gatehouse(&dir.data());
        cmd.arg("--config").arg(&config);
        cmd
    })
    .await;
    let (url, client) = (server.url.clone(), reqwest::Client::new());
    let (alice, _) = account(&client, &url, "alice").await;
    let (_, bob) = account(&client, &url, "bob").await;

    // /api/notes needs notes:read and notes:write; `user` has neither here.
    let refused = notes(&client, &url, &bob).await;
    assert_eq!((refused.status().as_u16(), code(refused).await.as_str()), (403, "forbidden"));

    // The first admin, made on the server while it runs.
    let said = users(&dir, &config, &["grant-role", &alice, "admin"]).await;
    assert!(said.contains("admin, user"), "{said}");
    let alice_login = json!({"email": alice, "password": PASSWORD});
    let alice_b =
        Browser::from_login(&client.post(format!("{url}/auth/login")).json(&alice_login).send().await.unwrap());
    let listed = users(&dir, &config, &["list", "--prefix", "alice-"]).await;
    assert!(listed.contains(&alice) && listed.contains("admin,user"), "{listed}");

    // Granted through the admin API: bob's token is stale at once at the
    // gateway, and a refresh brings the permission.
    let me: Value =
        client.get(format!("{url}/auth/me")).header("cookie", &bob.cookie).send().await.unwrap().json().await.unwrap();
    let bob_id = me["id"].as_str().unwrap().to_owned();
    let grant = alice_b.unsafe_request(client.put(format!("{url}/auth/admin/users/{bob_id}/roles/writer")));
    assert_eq!(grant.send().await.unwrap().status(), 200);
    let stale = notes(&client, &url, &bob).await;
    assert_eq!((stale.status().as_u16(), code(stale).await.as_str()), (401, "token_stale"));
    let refreshed = bob.unsafe_request(client.post(format!("{url}/auth/refresh"))).send().await.unwrap();
    assert_eq!(refreshed.status(), 200);
    let bob = Browser::from_login(&refreshed);
    assert_eq!(notes(&client, &url, &bob).await.status(), 200);

    // Revoked from the command line, in another process: the running
    // gateway hears it through the outbox (polled, with a deadline).
    let me_email = me["email"].as_str().unwrap().to_owned();
    users(&dir, &config, &["revoke-role", &me_email, "writer"]).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let answer = notes(&client, &url, &bob).await;
        if answer.status() == 401 {
            assert_eq!(code(answer).await, "token_stale");
            break;
        }
        assert!(Instant::now() < deadline, "the revocation never reached the gateway");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let refreshed = bob.unsafe_request(client.post(format!("{url}/auth/refresh"))).send().await.unwrap();
    let bob = Browser::from_login(&refreshed);
    assert_eq!(notes(&client, &url, &bob).await.status(), 403, "the permission went with the role");

    // Disabled through the API: bob's live cookie is refused on the very
    // next request, and so is his refresh.
    let disable = alice_b.unsafe_request(client.post(format!("{url}/auth/admin/users/{bob_id}/disable")));
    assert_eq!(disable.send().await.unwrap().status(), 204);
    let me = client.get(format!("{url}/auth/me")).header("cookie", &bob.cookie).send().await.unwrap();
    assert_eq!(me.status(), 401);
    let refused = notes(&client, &url, &bob).await;
    assert_eq!(refused.status(), 401);
    let refresh = bob.unsafe_request(client.post(format!("{url}/auth/refresh"))).send().await.unwrap();
    assert_eq!(refresh.status(), 401);

    // Enabled again: a new login stands at the gateway at once, even in the
    // second of the disable (old tokens are stale by version, not by time).
    let enable = alice_b.unsafe_request(client.post(format!("{url}/auth/admin/users/{bob_id}/enable")));
    assert_eq!(enable.send().await.unwrap().status(), 204);
    let login = json!({"email": me_email, "password": PASSWORD});
    let again = Browser::from_login(&client.post(format!("{url}/auth/login")).json(&login).send().await.unwrap());
    assert_eq!(
        client.get(format!("{url}/auth/me")).header("cookie", &again.cookie).send().await.unwrap().status(),
        200
    );
    let notes_again = notes(&client, &url, &again).await;
    assert_eq!(notes_again.status(), 403, "the new token reached the permission check");
    assert_eq!(notes(&client, &url, &bob).await.status(), 401, "the old one stays refused");
}
