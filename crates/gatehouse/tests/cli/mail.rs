//! Password reset and mail in the real binary: through the gateway, with a
//! real SMTP server that can be down, and with the file mailer of `up`.

use auth_service::testing::{Received, SmtpSink};
use serde_json::json;

use super::*;

const NEW_PASSWORD: &str = "a brand new passphrase for tests";

async fn register_and_log_in(client: &reqwest::Client, url: &str) -> (String, Browser) {
    let email = format!("mail-{}@example.com", uuid::Uuid::new_v4().simple());
    let creds = json!({"email": email, "password": PASSWORD});
    assert_eq!(client.post(format!("{url}/auth/register")).json(&creds).send().await.unwrap().status(), 201);
    let login = client.post(format!("{url}/auth/login")).json(&creds).send().await.unwrap();
    assert_eq!(login.status(), 200);
    (email, Browser::from_login(&login))
}

/// The token of the link to `page` in `message`, which is built from
/// `public_url` (its default here), not from the address served.
fn token_in(message: &Received, page: &str) -> String {
    let prefix = format!("http://127.0.0.1:8080{page}#token=");
    let link = message.link(&prefix).unwrap_or_else(|| panic!("no {prefix} link in {}", message.text));
    link.split_once("#token=").unwrap().1.to_owned()
}

async fn notes_status(client: &reqwest::Client, url: &str, b: &Browser) -> u16 {
    client.get(format!("{url}/api/notes")).header("cookie", &b.cookie).send().await.unwrap().status().as_u16()
}

#[tokio::test]
async fn a_reset_by_mailed_link_is_refused_to_old_sessions_at_the_gateway_and_signs_in_anew() {
    let smtp = SmtpSink::start();
    let dir = TempDir::new();
    let server = start({
        let mut cmd = gatehouse(&dir.data());
        cmd.env("GATEHOUSE_MAIL__SMTP_URL", smtp.url());
        cmd
    })
    .await;
    let (client, url) = (reqwest::Client::new(), server.url.clone());
    let (email, old) = register_and_log_in(&client, &url).await;
    assert_eq!(notes_status(&client, &url, &old).await, 200);
    let forgot = client.post(format!("{url}/auth/password/forgot")).json(&json!({"email": email})).send().await;
    assert_eq!(forgot.unwrap().status(), 202);
    let reset_mail = smtp.wait_for(&email, 2, Duration::from_secs(30)).await.pop().unwrap();
    let token = token_in(&reset_mail, "/reset-password");
    let reset = client
        .post(format!("{url}/auth/password/reset"))
        .json(&json!({"token": token, "password": NEW_PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(reset.status(), 204);
    assert!(reset.headers().get("gatehouse-revoked").is_none(), "internal header leaked");
    assert_eq!(notes_status(&client, &url, &old).await, 401, "the old session is refused at once");
    let creds = json!({"email": email, "password": NEW_PASSWORD});
    let login = client.post(format!("{url}/auth/login")).json(&creds).send().await.unwrap();
    assert_eq!(login.status(), 200);
    assert_eq!(notes_status(&client, &url, &Browser::from_login(&login)).await, 200);
    let notice = smtp.wait_for(&email, 3, Duration::from_secs(30)).await.pop().unwrap();
    assert_eq!(notice.subject, "Your password was changed");
}

#[tokio::test]
async fn mail_queued_while_the_mail_server_is_down_is_delivered_once_it_is_back() {
    let mut smtp = SmtpSink::start();
    smtp.stop();
    let dir = TempDir::new();
    let mut server = start({
        let mut cmd = gatehouse(&dir.data());
        cmd.env("GATEHOUSE_MAIL__SMTP_URL", smtp.url()).env("GATEHOUSE_MAIL__TIMEOUT_SECS", "2");
        cmd
    })
    .await;
    let (client, url) = (reqwest::Client::new(), server.url.clone());
    let (email, _) = register_and_log_in(&client, &url).await;
    let forgot = client.post(format!("{url}/auth/password/forgot")).json(&json!({"email": email})).send().await;
    assert_eq!(forgot.unwrap().status(), 202, "answered while the mail server is down");
    server.wait_for_log("mail not sent yet; will retry").await;
    smtp.restart();
    let received = smtp.wait_for(&email, 2, Duration::from_secs(60)).await;
    let subjects: Vec<&str> = received.iter().map(|m| m.subject.as_str()).collect();
    assert!(
        subjects.contains(&"Confirm your email address") && subjects.contains(&"Reset your password"),
        "{subjects:?}"
    );
    let reset_mail = received.iter().find(|m| m.subject == "Reset your password").unwrap();
    let token = token_in(reset_mail, "/reset-password");
    let reset = client
        .post(format!("{url}/auth/password/reset"))
        .json(&json!({"token": token, "password": NEW_PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(reset.status(), 204, "the delayed link still works");
}

#[tokio::test]
async fn without_a_mail_server_up_writes_each_message_to_data_mail_and_its_link_works() {
    let dir = TempDir::new();
    let server = start(gatehouse(&dir.data())).await;
    let (client, url) = (reqwest::Client::new(), server.url.clone());
    let (email, b) = register_and_log_in(&client, &url).await;
    let mail_dir = dir.data().join("mail");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let file = loop {
        let found = std::fs::read_dir(&mail_dir).ok().and_then(|d| d.flatten().map(|e| e.path()).next());
        if let Some(file) = found {
            break file;
        }
        assert!(std::time::Instant::now() < deadline, "no .eml file in {}", mail_dir.display());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(file.extension().and_then(|e| e.to_str()), Some("eml"));
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600, "it holds a live link");
    let message = Received::parse(&std::fs::read_to_string(&file).unwrap());
    assert!(message.raw.contains(&email));
    let token = token_in(&message, "/verify-email");
    let verify = client.post(format!("{url}/auth/email/verify")).json(&json!({"token": token})).send().await.unwrap();
    assert_eq!(verify.status(), 204);
    let me: serde_json::Value =
        client.get(format!("{url}/auth/me")).header("cookie", &b.cookie).send().await.unwrap().json().await.unwrap();
    assert_eq!(me["email_verified"], true);
}

#[tokio::test]
async fn no_password_token_or_secret_reaches_the_log() {
    let smtp = SmtpSink::start();
    let dir = TempDir::new();
    let mut server = start({
        let mut cmd = gatehouse(&dir.data());
        cmd.env("GATEHOUSE_MAIL__SMTP_URL", smtp.url())
            .env("RUST_LOG", "info,gatehouse=debug,auth_service=debug,auth_core=debug,api_gateway=debug");
        cmd
    })
    .await;
    let (client, url) = (reqwest::Client::new(), server.url.clone());
    let (email, browser) = register_and_log_in(&client, &url).await;
    let wrong = "a wrong guess that must not be logged";
    let failed = client.post(format!("{url}/auth/login")).json(&json!({"email": email, "password": wrong})).send();
    assert_eq!(failed.await.unwrap().status(), 401);
    let refreshed = browser.unsafe_request(client.post(format!("{url}/auth/refresh"))).send().await.unwrap();
    assert_eq!(refreshed.status(), 200);
    let refresh_cookie: Vec<String> =
        refreshed.headers().get_all("set-cookie").iter().map(|v| v.to_str().unwrap().to_owned()).collect();
    assert_eq!(
        client
            .post(format!("{url}/auth/password/forgot"))
            .json(&json!({"email": email}))
            .send()
            .await
            .unwrap()
            .status(),
        202
    );
    let token = token_in(&smtp.wait_for(&email, 2, Duration::from_secs(30)).await.pop().unwrap(), "/reset-password");
    let reset =
        client.post(format!("{url}/auth/password/reset")).json(&json!({"token": token, "password": NEW_PASSWORD}));
    assert_eq!(reset.send().await.unwrap().status(), 204);
    // A last, known line: everything logged before it has been read.
    let marker = format!("marker-{}@example.com", uuid::Uuid::new_v4().simple());
    client.post(format!("{url}/auth/login")).json(&json!({"email": marker, "password": wrong})).send().await.unwrap();
    let mut log = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(line) = server.log.recv().await {
            let last = line.contains("action=login.failed");
            log.push(line);
            if last && log.iter().filter(|l| l.contains("action=login.failed")).count() >= 2 {
                break;
            }
        }
    });
    read.await.expect("the log stopped before the last login failure");
    assert!(log.len() > 5, "too little was logged to judge: {log:#?}");
    // Each authentication event is one audit line, naming its client.
    for action in ["login.succeeded", "login.failed", "password.reset"] {
        let line = log.iter().find(|l| l.contains(&format!(" audit action={action} ")));
        let line = line.unwrap_or_else(|| panic!("no audit line for {action}: {log:#?}"));
        for field in ["user_id=", "ip=127.0.0.1", "user_agent=", "request_id=", "reason="] {
            assert!(line.contains(field), "{field} missing: {line}");
        }
    }

    let cookie_values = |headers: &[String]| -> Vec<String> {
        headers.iter().filter_map(|c| c.split(';').next()?.split_once('=').map(|(_, v)| v.to_owned())).collect()
    };
    let mut secrets = vec![PASSWORD.to_owned(), NEW_PASSWORD.to_owned(), wrong.to_owned(), token.clone()];
    secrets.extend(browser.cookie.split("; ").filter_map(|c| c.split_once('=').map(|(_, v)| v.to_owned())));
    secrets.extend(cookie_values(&refresh_cookie));
    secrets.push(browser.csrf.clone());
    secrets.retain(|s| s.len() >= 16);
    for line in &log {
        assert!(!line.contains("eyJ"), "a JWT in the log: {line}");
        for secret in &secrets {
            assert!(!line.contains(secret.as_str()), "a secret in the log: {line}");
        }
    }
    assert!(server.stop().await.success());
}
