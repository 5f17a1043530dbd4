//! A NATS outage, on a NATS server of the test's own.

use std::time::{Duration, Instant};

use auth_store::testing::{Backend, TestDatabase};
use futures_util::StreamExt as _;
use serde_json::json;
use sqlx::Connection as _;

use super::*;

async fn unpublished(conn: &mut sqlx::PgConnection) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL").fetch_one(conn).await.unwrap()
}

#[tokio::test]
#[cfg_attr(not(services_available), ignore = "set GATEHOUSE_TEST_POSTGRES_URL and GATEHOUSE_TEST_NATS_URL")]
async fn registrations_during_a_nats_outage_all_arrive_once_it_is_back() {
    const USERS: usize = 500;
    let dir = TempDir::new();
    let db = TestDatabase::create(Backend::Postgres).await;
    let (port, store) = (free_port(), dir.0.join("nats"));
    let nats = OwnNats::start(port, &store).await;
    let nats_url = format!("nats://127.0.0.1:{port}");
    let mut cmd = gatehouse(&dir.data());
    cmd.env("GATEHOUSE_DATABASE__URL", &db.url)
        .env("GATEHOUSE_NATS__URL", &nats_url)
        // Cheap hashing: this test is about events, not passwords.
        .env("GATEHOUSE_PASSWORDS__HASHING__MEMORY_KIB", "1024")
        .env("GATEHOUSE_PASSWORDS__HASHING__ITERATIONS", "1")
        .env("GATEHOUSE_PASSWORDS__HASHING__MAX_WAIT_MS", "60000")
        .env("GATEHOUSE_EVENTS__RELAY_INTERVAL_MS", "50")
        .arg("auth-service");
    let auth = start(cmd).await;
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    nats.kill().await;

    let client = reqwest::Client::new();
    let register = |i: usize| {
        let (client, url) = (client.clone(), auth.url.clone());
        async move {
            let creds = json!({"email": format!("outage{i}@example.com"), "password": PASSWORD});
            client.post(format!("{url}/auth/register")).json(&creds).send().await.unwrap().status().as_u16()
        }
    };
    let statuses: Vec<u16> = futures_util::stream::iter(0..USERS).map(register).buffer_unordered(16).collect().await;
    assert!(statuses.iter().all(|s| *s == 201), "registrations failed while NATS was down");
    assert_eq!(unpublished(&mut conn).await, USERS as i64, "events were lost or claimed sent while NATS was down");

    let _nats = OwnNats::start(port, &store).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while unpublished(&mut conn).await > 0 {
        assert!(Instant::now() < deadline, "the relay never caught up after NATS came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let seen = stream_ids(&nats_url, "user.registered", 1).await;
    assert_eq!(seen.len(), USERS, "user.registered events in the stream");
    assert!(seen.values().all(|n| *n == 1), "an event was stored twice");
    assert!(auth.stop().await.success());
}
