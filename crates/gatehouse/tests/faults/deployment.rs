//! An auth-service (on SQLite) and a standalone gateway in front of it, as
//! separate processes, for faults between them and around them.

use std::time::Instant;

use serde_json::{Value, json};

use super::*;

pub(crate) struct Deployment {
    _dir: TempDir,
    pub(crate) auth: Server,
    pub(crate) gateway: Server,
}

/// An auth-service on `auth_nats` and a gateway on `gateway_nats` with
/// `max_staleness` seconds, `/api` routed to a plain upstream.
pub(crate) async fn deploy(auth_nats: &str, gateway_nats: &str, max_staleness: &str) -> Deployment {
    let dir = TempDir::new();
    let mut auth = gatehouse(&dir.data());
    auth.env("GATEHOUSE_NATS__URL", auth_nats)
        .env("GATEHOUSE_PASSWORDS__HASHING__MEMORY_KIB", "1024")
        .env("GATEHOUSE_PASSWORDS__HASHING__ITERATIONS", "1")
        .env("GATEHOUSE_EVENTS__RELAY_INTERVAL_MS", "50")
        .arg("auth-service");
    let auth = start(auth).await;
    let upstream = echo_upstream().await;
    let file = dir.0.join("gateway.toml");
    let routes = format!("[[gateway.routes]]\nprefix = \"/api\"\nupstream = \"{upstream}\"\n");
    std::fs::write(&file, format!("[gateway]\nauth_service_url = \"{}\"\n\n{routes}", auth.url)).unwrap();
    let mut gateway = gatehouse(&dir.data());
    gateway
        .env("GATEHOUSE_NATS__URL", gateway_nats)
        .env("GATEHOUSE_GATEWAY__REVOCATION__MAX_STALENESS", max_staleness)
        .arg("--config")
        .arg(file)
        .arg("gateway");
    let gateway = start(gateway).await;
    Deployment { _dir: dir, auth, gateway }
}

pub(crate) async fn ready(client: &reqwest::Client, url: &str) -> bool {
    client.get(format!("{url}/readyz")).send().await.unwrap().status() == 200
}

pub(crate) async fn sign_in(client: &reqwest::Client, url: &str) -> Browser {
    let creds = json!({"email": format!("f-{}@example.com", uuid::Uuid::new_v4().simple()), "password": PASSWORD});
    assert_eq!(client.post(format!("{url}/auth/register")).json(&creds).send().await.unwrap().status(), 201);
    let login = client.post(format!("{url}/auth/login")).json(&creds).send().await.unwrap();
    assert_eq!(login.status(), 200);
    Browser::from_login(&login)
}

/// The gateway's answer to an authenticated request: status and error code.
pub(crate) async fn api(client: &reqwest::Client, gateway: &str, browser: &Browser) -> (u16, String) {
    let answer = client.get(format!("{gateway}/api/x")).header("cookie", &browser.cookie).send().await.unwrap();
    let status = answer.status().as_u16();
    let body: Value = answer.json().await.unwrap_or(Value::Null);
    (status, body["error"]["code"].as_str().unwrap_or_default().to_owned())
}

/// Logs out at the auth-service itself (not through the gateway, which
/// would apply the revocation locally); returns how long the answer took.
pub(crate) async fn logout_at_auth(client: &reqwest::Client, auth: &str, browser: &Browser) -> Duration {
    let sent = Instant::now();
    let answer = browser.unsafe_request(client.delete(format!("{auth}/auth/logout"))).send().await.unwrap();
    assert_eq!(answer.status(), 204);
    sent.elapsed()
}
