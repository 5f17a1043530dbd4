//! Events on a real NATS JetStream server (`GATEHOUSE_TEST_NATS_URL`); these
//! tests are ignored, and say so, when no server is named.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use auth_core::{Clock, DomainEvent, Email, EventSink, SystemClock, User, UserId};
use auth_events::publish::STREAM;
use auth_events::{CloudEvent, NatsPublisher, OutboxRelay};
use auth_store::testing::{Backend, TestDatabase};

/// The tests read the shared stream's sequence numbers: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn url() -> String {
    std::env::var("GATEHOUSE_TEST_NATS_URL").expect("GATEHOUSE_TEST_NATS_URL")
}

fn user() -> User {
    User {
        id: UserId::new(),
        email: Email::parse(&format!("nats-{}@example.com", uuid::Uuid::new_v4().simple())).unwrap(),
        password_hash: None,
        email_verified: false,
        created_at: SystemClock.now(),
        roles: vec![],
        permissions: vec![],
    }
}

async fn last_sequence(nats: &NatsPublisher) -> u64 {
    nats.jetstream().get_stream(STREAM).await.unwrap().info().await.unwrap().state.last_sequence
}

#[tokio::test]
#[cfg_attr(not(nats_available), ignore = "set GATEHOUSE_TEST_NATS_URL to run against NATS")]
async fn events_are_cloudevents_keyed_by_their_id_and_a_second_publication_is_dropped() {
    let _serial = SERIAL.lock().await;
    let nats = NatsPublisher::connect(&url()).await.unwrap();
    let u = user();
    let events =
        [DomainEvent::registered(&u, "password", SystemClock.now()), DomainEvent::deleted(u.id, SystemClock.now())];
    let before = last_sequence(&nats).await;
    assert_eq!(nats.deliver(&events).await, 2);
    let after = last_sequence(&nats).await;
    assert_eq!(after, before + 2);
    // The relay may publish a batch again after a crash: JetStream drops it.
    assert_eq!(nats.deliver(&events).await, 2);
    assert_eq!(last_sequence(&nats).await, after, "a re-published event was stored twice");

    let stream = nats.jetstream().get_stream(STREAM).await.unwrap();
    for (event, sequence) in events.iter().zip([after - 1, after]) {
        let stored = stream.get_raw_message(sequence).await.unwrap();
        assert_eq!(stored.subject.as_str(), event.kind.subject());
        let headers = stored.headers;
        assert_eq!(headers.get("Nats-Msg-Id").unwrap().as_str(), event.id.to_string());
        let cloud: CloudEvent = serde_json::from_slice(&stored.payload).unwrap();
        assert_eq!(cloud.specversion, "1.0");
        assert_eq!(cloud.id, event.id.to_string());
        assert_eq!(cloud.kind, event.kind.subject());
        assert_eq!(cloud.subject, u.id.to_string());
        assert_eq!(cloud.source, "gatehouse/auth-service");
        assert_eq!(cloud.data, event.data);
    }
}

#[tokio::test]
#[cfg_attr(not(nats_available), ignore = "set GATEHOUSE_TEST_NATS_URL to run against NATS")]
async fn the_relay_moves_committed_events_to_jetstream_and_marks_them() {
    let _serial = SERIAL.lock().await;
    for backend in Backend::available() {
        let db = TestDatabase::create(backend).await;
        let stores = auth_store::open(&db.url, true).await.unwrap();
        let u = user();
        stores.users.create_user(&u, &DomainEvent::registered(&u, "password", SystemClock.now())).await.unwrap();
        let nats = Arc::new(NatsPublisher::connect(&url()).await.unwrap());
        let relay = OutboxRelay::new(stores.outbox.clone(), nats.clone(), Arc::new(SystemClock), 100);
        assert_eq!(relay.try_relay_batch().await.unwrap(), 1, "{backend:?}");
        assert_eq!(relay.try_relay_batch().await.unwrap(), 0);
        let events = stores.outbox.events_of(u.id).await.unwrap();
        assert!(events[0].published_at.is_some());
        let stream = nats.jetstream().get_stream(STREAM).await.unwrap();
        let last = stream.get_last_raw_message_by_subject("user.registered").await.unwrap();
        let cloud: CloudEvent = serde_json::from_slice(&last.payload).unwrap();
        assert_eq!(cloud.id, events[0].event.id.to_string());
    }
}
