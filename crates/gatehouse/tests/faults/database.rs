//! PostgreSQL behind a link that hangs: readiness says so within about a
//! second, and recovers with the link.

use std::time::Instant;

use auth_store::testing::{Backend, TestDatabase};

use super::*;

async fn readiness(client: &reqwest::Client, url: &str) -> (u16, Duration) {
    let sent = Instant::now();
    let status = client.get(format!("{url}/readyz")).send().await.unwrap().status().as_u16();
    (status, sent.elapsed())
}

#[tokio::test]
#[cfg_attr(not(services_available), ignore = "set GATEHOUSE_TEST_POSTGRES_URL and GATEHOUSE_TEST_NATS_URL")]
async fn readiness_reports_a_hung_database_within_about_a_second_and_recovers() {
    let dir = TempDir::new();
    let db = TestDatabase::create(Backend::Postgres).await;
    let server: std::net::SocketAddr = "127.0.0.1:5432".parse().unwrap();
    let relay = Relay::start(server).await;
    let via = db.url.replacen("127.0.0.1:5432", &relay.addr.to_string(), 1);
    assert_ne!(via, db.url, "the test database is not at 127.0.0.1:5432");
    let mut cmd = gatehouse(&dir.data());
    cmd.env("GATEHOUSE_DATABASE__URL", &via).arg("auth-service");
    let auth = start(cmd).await;
    let client = reqwest::Client::new();
    assert_eq!(readiness(&client, &auth.url).await.0, 200);

    relay.set(Link::Hang);
    let (status, took) = readiness(&client, &auth.url).await;
    eprintln!("database hung: /readyz answered {status} in {took:?}");
    assert_eq!(status, 503);
    assert!(took < Duration::from_millis(2500), "/readyz took {took:?} to report a hung database");

    relay.set(Link::Pass);
    within(Duration::from_secs(30), || async { readiness(&client, &auth.url).await.0 == 200 })
        .await
        .expect("/readyz never recovered with the database");
}
