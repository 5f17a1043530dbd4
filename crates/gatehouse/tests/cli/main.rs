//! Smoke tests of the real `gatehouse` binary, started the way a user starts it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use auth_store::testing::{Backend, TestDatabase};
use serde_json::{Value, json};
use tokio::process::Command;

use support::*;

/// Registers and logs in; returns the access token.
async fn sign_in(client: &reqwest::Client, url: &str) -> String {
    let email = format!("smoke-{}@example.com", uuid::Uuid::new_v4().simple());
    let creds = json!({"email": email, "password": PASSWORD});
    let registered = client.post(format!("{url}/auth/register")).json(&creds).send().await.unwrap();
    assert_eq!(registered.status(), 201);
    let login = client.post(format!("{url}/auth/login")).json(&creds).send().await.unwrap();
    assert_eq!(login.status(), 200);
    let cookie = login
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .find(|c| c.starts_with("__Host-access_token="))
        .unwrap()
        .to_owned();
    cookie.split(';').next().unwrap().trim_start_matches("__Host-access_token=").to_owned()
}

async fn me(client: &reqwest::Client, url: &str, token: &str) -> u16 {
    client.get(format!("{url}/auth/me")).bearer_auth(token).send().await.unwrap().status().as_u16()
}

#[tokio::test]
async fn up_serves_the_api_and_exits_zero_on_sigterm() {
    let dir = TempDir::new();
    let server = start(gatehouse(&dir.data())).await;
    let client = reqwest::Client::new();
    let token = sign_in(&client, &server.url).await;
    assert_eq!(me(&client, &server.url, &token).await, 200);
    assert_eq!(client.get(format!("{}/readyz", server.url)).send().await.unwrap().status(), 200);
    let status = server.stop().await;
    assert!(status.success(), "exit status {status:?}");
}

#[tokio::test]
async fn a_second_server_on_the_same_sqlite_database_is_refused_and_commands_still_run_beside_it() {
    let dir = TempDir::new();
    let server = start(gatehouse(&dir.data())).await;
    for role in ["up", "auth-service"] {
        let second = gatehouse(&dir.data()).args(["--listen", "127.0.0.1:0", role]).output();
        let second = tokio::time::timeout(Duration::from_secs(60), second).await;
        let second = second.unwrap_or_else(|_| panic!("{role} beside a server was still running after 60 s"));
        let second = second.unwrap();
        let said = String::from_utf8_lossy(&second.stderr);
        assert!(!second.status.success(), "{role} started beside a server: {said}");
        assert!(said.contains("another process is serving the SQLite database"), "{role}: {said}");
    }
    let migrate = gatehouse(&dir.data()).arg("migrate").output().await.unwrap();
    assert!(migrate.status.success(), "{}", String::from_utf8_lossy(&migrate.stderr));
    assert!(server.stop().await.success());
    // The lock went with the process.
    let again = start(gatehouse(&dir.data())).await;
    assert!(again.stop().await.success());
}

#[tokio::test]
async fn the_data_dir_and_key_file_are_private() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = TempDir::new();
    let server = start(gatehouse(&dir.data())).await;
    let mode = |p: PathBuf| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(dir.data()), 0o700);
    assert_eq!(mode(dir.data().join("keys.json")), 0o600);
    assert!(dir.data().join("gatehouse.db").exists());
    server.stop().await;
}

#[tokio::test]
async fn a_key_rotation_reaches_the_running_server_and_old_tokens_keep_working() {
    let dir = TempDir::new();
    let mut cmd = gatehouse(&dir.data());
    cmd.env("GATEHOUSE_SIGNING__RELOAD_SECS", "1");
    let server = start(cmd).await;
    let client = reqwest::Client::new();
    let old = sign_in(&client, &server.url).await;

    let rotated = gatehouse(&dir.data()).args(["keys", "rotate"]).output().await.unwrap();
    assert!(rotated.status.success(), "{}", String::from_utf8_lossy(&rotated.stderr));
    assert!(String::from_utf8_lossy(&rotated.stdout).contains("rotated"));

    // The server checks the key file every second; give it a bounded while.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let jwks: Value =
            client.get(format!("{}/.well-known/jwks.json", server.url)).send().await.unwrap().json().await.unwrap();
        if jwks["keys"].as_array().unwrap().len() == 2 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the rotation never reached the server");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let new = sign_in(&client, &server.url).await;
    let kid = |t: &str| {
        let header = t.split('.').next().unwrap();
        use base64::Engine as _;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(header).unwrap();
        serde_json::from_slice::<Value>(&bytes).unwrap()["kid"].clone()
    };
    assert_ne!(kid(&old), kid(&new));
    assert_eq!(me(&client, &server.url, &old).await, 200);
    assert_eq!(me(&client, &server.url, &new).await, 200);

    let listed = gatehouse(&dir.data()).args(["keys", "list"]).output().await.unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(listed.contains("active (signs)") && listed.contains("retired, verifies"), "{listed}");
    server.stop().await;
}

#[tokio::test]
async fn migrate_applies_the_schema_and_exits() {
    for backend in Backend::available() {
        let dir = TempDir::new();
        let db = TestDatabase::create(backend).await;
        let out = gatehouse(&dir.data()).env("GATEHOUSE_DATABASE__URL", &db.url).arg("migrate").output().await.unwrap();
        assert!(out.status.success(), "{backend:?}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stdout).contains("migrations applied"));
        let again =
            gatehouse(&dir.data()).env("GATEHOUSE_DATABASE__URL", &db.url).arg("migrate").output().await.unwrap();
        assert!(again.status.success());
    }
}

#[tokio::test]
async fn up_runs_on_postgres_when_given_its_url() {
    for backend in Backend::available() {
        let dir = TempDir::new();
        let db = TestDatabase::create(backend).await;
        let mut cmd = gatehouse(&dir.data());
        cmd.env("GATEHOUSE_DATABASE__URL", &db.url);
        let server = start(cmd).await;
        let client = reqwest::Client::new();
        let token = sign_in(&client, &server.url).await;
        assert_eq!(me(&client, &server.url, &token).await, 200);
        assert!(server.stop().await.success());
    }
}

#[tokio::test]
async fn bad_configuration_fails_fast_with_a_clear_message() {
    let dir = TempDir::new();
    let out = gatehouse(&dir.data()).env("GATEHOUSE_DATABSE__URL", "sqlite://x.db").output().await.unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("databse"), "{stderr}");

    let out = gatehouse(&dir.data()).env("GATEHOUSE_DATABASE__URL", "mysql://db/x").output().await.unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("sqlite:// or postgres://"));

    let out = gatehouse(&dir.data()).args(["--config", "/nonexistent/gatehouse.toml"]).output().await.unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));
}

#[tokio::test]
async fn a_half_sent_head_keeps_the_process_no_longer_than_its_shutdown_grace() {
    use tokio::io::AsyncWriteExt as _;
    let dir = TempDir::new();
    let mut cmd = gatehouse(&dir.data());
    // One serving thread: connections are accepted in the order they came.
    cmd.env("GATEHOUSE_SHUTDOWN_GRACE_SECS", "1")
        .env("GATEHOUSE_GATEWAY__CLIENT_HEADER_TIMEOUT_SECS", "600")
        .env("GATEHOUSE_WORKERS", "1");
    let mut server = start(cmd).await;
    let mut half = tokio::net::TcpStream::connect(server.url.trim_start_matches("http://")).await.unwrap();
    half.write_all(b"GET /api/notes HTTP/1.1\r\nhost: gw\r\n").await.unwrap();
    // A later connection answered: the half one was accepted before
    // SIGTERM (else it would only sit in the backlog, holding nothing).
    let healthz = reqwest::get(format!("{}/healthz", server.url)).await.unwrap();
    assert_eq!(healthz.status(), 200);
    // Without the grace the head would hold the process for 600 s.
    let pid = server.child.id().unwrap().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().await.unwrap().success());
    let log = tokio::time::timeout(Duration::from_secs(30), async {
        let mut log = Vec::new();
        while let Some(line) = server.log.recv().await {
            log.push(line);
        }
        log
    })
    .await
    .expect("still running 30 s after SIGTERM");
    assert!(log.iter().any(|l| l.contains("shutdown grace is over")), "{log:#?}");
    let status = tokio::time::timeout(Duration::from_secs(20), server.child.wait()).await.expect("no exit").unwrap();
    assert!(status.success(), "{status:?}");
    drop(half);
}

#[tokio::test]
async fn requests_in_flight_when_sigterm_arrives_still_get_their_answer() {
    let dir = TempDir::new();
    let mut cmd = gatehouse(&dir.data());
    // One hashing slot: the logins below queue behind each other.
    cmd.env("GATEHOUSE_PASSWORDS__HASHING__PERMITS", "1").env("GATEHOUSE_PASSWORDS__HASHING__MAX_WAIT_MS", "30000");
    let server = start(cmd).await;
    let client = reqwest::Client::new();
    sign_in(&client, &server.url).await;
    let creds = json!({"email": "nobody@example.com", "password": PASSWORD});
    let (tx, mut answers) = tokio::sync::mpsc::unbounded_channel();
    for _ in 0..4 {
        let (request, tx) = (client.post(format!("{}/auth/login", server.url)).json(&creds), tx.clone());
        tokio::spawn(async move { tx.send(request.send().await.map(|r| r.status().as_u16())) });
    }
    drop(tx);
    // Once one has been answered, the other three were accepted and are
    // waiting for the single hashing slot.
    assert_eq!(answers.recv().await.unwrap().unwrap(), 401);
    let status = server.stop().await;
    assert!(status.success());
    let mut rest = 0;
    while let Some(answer) = answers.recv().await {
        assert_eq!(answer.expect("an in-flight request was dropped at shutdown"), 401);
        rest += 1;
    }
    assert_eq!(rest, 3);
}

mod cluster;
mod mail;
mod oauth;
mod roles;
mod tokens;
mod up;

/// The README's first command, `cargo run --release`, must pick this binary
/// although the workspace has others.
#[test]
fn cargo_run_at_the_workspace_root_runs_gatehouse() {
    let root = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.toml")).unwrap();
    let manifest: toml::Value = toml::from_str(&root).unwrap();
    assert_eq!(manifest["workspace"]["default-members"], toml::Value::Array(vec!["crates/gatehouse".into()]));
}
