//! Clients that send half a request and wait: the standalone auth-service
//! cuts them off, and stays reachable under a small open-file limit.

use std::time::Instant;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use super::*;

const HALF_HEAD: &[u8] = b"GET /auth/me HTTP/1.1\r\nhost: auth\r\n";
const HALF_BODY: &[u8] =
    b"POST /auth/login HTTP/1.1\r\nhost: auth\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"email\":";

/// What the server sent before closing `stream`, or `None` when it did not
/// close it within `limit`.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> Option<Vec<u8>> {
    let mut answer = Vec::new();
    tokio::time::timeout(limit, async {
        let mut buf = [0u8; 1024];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .ok()
    .map(|()| answer)
}

/// `/healthz` on a new connection: the status, or 0 when nothing came
/// within two seconds.
async fn healthz(url: &str) -> u16 {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().unwrap();
    client.get(format!("{url}/healthz")).send().await.map_or(0, |r| r.status().as_u16())
}

#[tokio::test]
async fn half_sent_heads_and_bodies_are_cut_off_and_health_stays_reachable_under_a_small_file_limit() {
    let dir = TempDir::new();
    let mut cmd = gatehouse_via(&["prlimit", "--nofile=256:256", "--"], &dir.data());
    cmd.env("GATEHOUSE_AUTH_SERVICE__CLIENT_HEADER_TIMEOUT_SECS", "1")
        .env("GATEHOUSE_AUTH_SERVICE__CLIENT_IDLE_TIMEOUT_SECS", "2")
        .arg("auth-service");
    let server = start(cmd).await;
    let address = server.url.trim_start_matches("http://").to_owned();

    // A third send nothing at all, a third half a head, a third half a body.
    let mut held = Vec::new();
    for i in 0..300 {
        let mut stream = TcpStream::connect(&address).await.unwrap();
        let _ = match i % 3 {
            0 => Ok(()),
            1 => stream.write_all(HALF_HEAD).await,
            _ => stream.write_all(HALF_BODY).await,
        };
        held.push(stream);
    }
    // Beyond the limit a client gets an answer, never silence.
    let during = healthz(&server.url).await;
    assert!(during == 200 || during == 503, "/healthz during the flood: {during}");

    let since = Instant::now();
    let (mut open, mut refused) = (0, 0);
    for stream in &mut held {
        match closed_within(stream, Duration::from_secs(10).saturating_sub(since.elapsed())).await {
            None => open += 1,
            Some(answer) if answer.starts_with(b"HTTP/1.1 503") => {
                let split = answer.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                let (head, body) = (String::from_utf8_lossy(&answer[..split]), &answer[split..]);
                assert!(head.contains(&format!("content-length: {}\r\n", body.len())), "{head}");
                let body: serde_json::Value = serde_json::from_slice(body).expect("a JSON 503");
                assert_eq!(body["error"]["code"], "too_many_connections");
                refused += 1;
            }
            Some(_) => {}
        }
    }
    let all_closed = since.elapsed();
    eprintln!(
        "slow clients: 300 half-sent requests closed within {all_closed:?}, {refused} of them refused at once \
         (503: connection limit under 256 open files); /healthz during: {during}"
    );
    assert_eq!(open, 0, "half-sent requests still open after 10 s");
    // 256 open files hold 192 connections (fewer than 300, even counting
    // those the header timeout closed meanwhile): the rest were answered.
    assert!(refused > 0, "no connection beyond the limit was answered 503");
    assert_eq!(healthz(&server.url).await, 200);
    drop(held);
    assert!(server.stop().await.success());
}

#[tokio::test]
async fn a_request_the_service_works_on_longer_than_the_idle_timeout_is_still_answered() {
    let dir = TempDir::new();
    let mut cmd = gatehouse(&dir.data());
    // One hashing slot and slow hashes: the last of 30 logins waits seconds.
    cmd.env("GATEHOUSE_AUTH_SERVICE__CLIENT_HEADER_TIMEOUT_SECS", "1")
        .env("GATEHOUSE_AUTH_SERVICE__CLIENT_IDLE_TIMEOUT_SECS", "1")
        .env("GATEHOUSE_PASSWORDS__HASHING__PERMITS", "1")
        .env("GATEHOUSE_PASSWORDS__HASHING__ITERATIONS", "12")
        .env("GATEHOUSE_PASSWORDS__HASHING__MAX_WAIT_MS", "60000")
        .arg("auth-service");
    let server = start(cmd).await;
    let client = reqwest::Client::new();
    let since = Instant::now();
    let logins = (0..30).map(|i| {
        let (client, url) = (client.clone(), server.url.clone());
        tokio::spawn(async move {
            let creds = serde_json::json!({"email": format!("nobody{i}@example.com"), "password": PASSWORD});
            client.post(format!("{url}/auth/login")).json(&creds).send().await.map(|r| r.status().as_u16())
        })
    });
    let answers = futures_util::future::join_all(logins).await;
    let took = since.elapsed();
    eprintln!("slow service: 30 logins through one hashing slot took {took:?} with a 1 s idle timeout");
    for answer in answers {
        assert_eq!(answer.unwrap().expect("a connection was cut while the service worked"), 401);
    }
    assert!(took > Duration::from_secs(2), "the logins did not outlast the idle timeout ({took:?}); make them slower");
    assert!(server.stop().await.success());
}
