//! Relay throughput: events per second moved from the outbox to NATS and
//! acknowledged. A measurement, not a test.
//!
//! GATEHOUSE_TEST_NATS_URL=nats://127.0.0.1:4222 \
//! GATEHOUSE_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test \
//! cargo run --release -p auth-events --example relay_throughput [EVENTS]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Instant;

use auth_core::{Clock, DomainEvent, Email, SystemClock, User, UserId};
use auth_events::{NatsPublisher, OutboxRelay};
use auth_store::testing::{Backend, TestDatabase};

#[tokio::main]
async fn main() {
    let events: usize = std::env::args().nth(1).and_then(|n| n.parse().ok()).unwrap_or(5_000);
    let nats_url = std::env::var("GATEHOUSE_TEST_NATS_URL").expect("set GATEHOUSE_TEST_NATS_URL");
    let nats = Arc::new(NatsPublisher::connect(&nats_url).await.unwrap());
    for backend in Backend::available() {
        let db = TestDatabase::create(backend).await;
        let stores = auth_store::open(&db.url, true).await.unwrap();
        for i in 0..events {
            let user = User {
                id: UserId::new(),
                email: Email::parse(&format!("bench{i}@example.com")).unwrap(),
                password_hash: None,
                email_verified: false,
                created_at: SystemClock.now(),
                roles: vec![],
                permissions: vec![],
                disabled: false,
                tokens_version: 0,
            };
            let event = DomainEvent::registered(&user, "password", SystemClock.now());
            stores.users.create_user(&user, &event).await.unwrap();
        }
        let relay = OutboxRelay::new(stores.outbox.clone(), nats.clone(), Arc::new(SystemClock), 500);
        let started = Instant::now();
        let mut moved = 0;
        loop {
            let n = relay.try_relay_batch().await.unwrap();
            if n == 0 {
                break;
            }
            moved += n;
        }
        let secs = started.elapsed().as_secs_f64();
        println!(
            "{backend:?}: {moved} events relayed and acknowledged in {secs:.2} s = {:.0} events/s",
            moved as f64 / secs
        );
    }
}
