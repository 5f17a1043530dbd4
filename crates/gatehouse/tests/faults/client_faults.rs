//! A client's broken request through a standalone gateway is the client's
//! error (400, 413), never a 502 blamed on the auth-service.

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::*;
use crate::deployment::*;

async fn raw(address: &str, request: &[u8]) -> String {
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn a_malformed_or_oversized_body_through_the_gateway_is_the_clients_error() {
    let nats = OwnNats::fresh().await;
    let url = nats.url();
    let d = deploy(&url, &url, "5").await;
    let address = d.gateway.url.trim_start_matches("http://").to_owned();

    let malformed = raw(
        &address,
        b"POST /auth/login HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n\
          transfer-encoding: chunked\r\nconnection: close\r\n\r\n2\r\n{\"\r\nzz\r\n0\r\n\r\n",
    )
    .await;
    assert!(malformed.starts_with("HTTP/1.1 400"), "{malformed}");
    assert!(malformed.contains("\"invalid_body\""), "{malformed}");

    let client = reqwest::Client::new();
    let large = format!("{{\"email\":\"a@example.com\",\"password\":\"{}\"}}", "x".repeat(4 * 1024 * 1024));
    let answer = client
        .post(format!("{}/auth/login", d.gateway.url))
        .header("content-type", "application/json")
        .body(large)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 413);
    assert!(answer.text().await.unwrap().contains("body_too_large"));
    let metrics = client
        .get(format!("{}/metrics", d.gateway.url))
        .bearer_auth(METRICS_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!metrics.lines().any(|l| l.contains("status=\"502\"") && !l.ends_with(" 0")), "{metrics}");
}
