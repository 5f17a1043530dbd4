//! The notes service over HTTP, on SQLite and (when configured) PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use auth_store::testing::{Backend, TestDatabase};
use notes_service::NotesStore;
use serde_json::{Value, json};

struct App {
    url: String,
    store: NotesStore,
    client: reqwest::Client,
    _db: TestDatabase,
}

async fn each_backend(scenario: impl AsyncFn(App)) {
    for backend in Backend::available() {
        eprintln!("-- backend {backend:?}");
        let db = TestDatabase::create(backend).await;
        let store = NotesStore::connect(&db.url).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(notes_service::serve(listener, notes_service::router(store.clone()), std::future::pending()));
        scenario(App { url, store, client: reqwest::Client::new(), _db: db }).await;
    }
}

impl App {
    async fn add(&self, user: &str, body: &str) -> reqwest::Response {
        self.client
            .post(format!("{}/api/notes", self.url))
            .header("x-user-id", user)
            .json(&json!({"body": body}))
            .send()
            .await
            .unwrap()
    }

    async fn list(&self, user: &str) -> Value {
        let response =
            self.client.get(format!("{}/api/notes", self.url)).header("x-user-id", user).send().await.unwrap();
        assert_eq!(response.status(), 200);
        response.json().await.unwrap()
    }
}

#[tokio::test]
async fn each_user_sees_and_deletes_only_their_own_notes() {
    each_backend(async |app| {
        let created: Value = app.add("alice", "buy milk").await.json().await.unwrap();
        app.add("alice", "call bob").await;
        app.add("bob", "secret").await;
        let alice = app.list("alice").await;
        let bodies: Vec<&str> =
            alice["notes"].as_array().unwrap().iter().map(|n| n["body"].as_str().unwrap()).collect();
        assert_eq!(bodies, ["buy milk", "call bob"]);
        let id = created["id"].as_str().unwrap();
        let as_bob =
            app.client.delete(format!("{}/api/notes/{id}", app.url)).header("x-user-id", "bob").send().await.unwrap();
        assert_eq!(as_bob.status(), 404);
        let as_alice =
            app.client.delete(format!("{}/api/notes/{id}", app.url)).header("x-user-id", "alice").send().await.unwrap();
        assert_eq!(as_alice.status(), 204);
        assert_eq!(app.list("alice").await["notes"].as_array().unwrap().len(), 1);
        assert_eq!(app.list("bob").await["notes"].as_array().unwrap().len(), 1);
    })
    .await;
}

#[tokio::test]
async fn without_the_gateways_identity_nothing_is_served() {
    each_backend(async |app| {
        let response = app.client.get(format!("{}/api/notes", app.url)).send().await.unwrap();
        assert_eq!(response.status(), 401);
        let response =
            app.client.post(format!("{}/api/notes", app.url)).json(&json!({"body": "x"})).send().await.unwrap();
        assert_eq!(response.status(), 401);
    })
    .await;
}

#[tokio::test]
async fn bad_notes_are_400() {
    each_backend(async |app| {
        for body in [json!({"body": ""}), json!({"body": "x".repeat(10_001)}), json!({"text": "x"}), json!([1])] {
            let response = app
                .client
                .post(format!("{}/api/notes", app.url))
                .header("x-user-id", "alice")
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 400, "{body}");
        }
        assert_eq!(app.list("alice").await["notes"], json!([]));
    })
    .await;
}

#[tokio::test]
async fn erasing_a_user_removes_all_their_notes_and_no_one_elses() {
    each_backend(async |app| {
        for i in 0..3 {
            app.add("alice", &format!("note {i}")).await;
        }
        app.add("bob", "keep me").await;
        assert_eq!(app.store.erase_user_once("deleted-alice", "alice").await.unwrap(), Some(3));
        assert_eq!(app.store.count_of("alice").await.unwrap(), 0);
        assert_eq!(app.store.count_of("bob").await.unwrap(), 1);
    })
    .await;
}

mod in_process {
    //! The notes service on the in-process bus of `gatehouse up`, fed by
    //! the real outbox relay from the auth-service's real outbox.

    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use async_trait::async_trait;
    use auth_core::{Clock, DomainEvent, Email, SystemClock, User, UserId};
    use auth_events::{CloudEvent, EventHandler, InProcessBus, OutboxRelay};
    use notes_service::BusHandler;

    use super::*;

    /// The notes handler, failing its first `failures` deletions as a
    /// database outage would.
    struct Flaky {
        inner: BusHandler,
        failures: AtomicUsize,
    }

    #[async_trait]
    impl EventHandler for Flaky {
        async fn handle(&self, event: &CloudEvent) -> Result<(), String> {
            let fails = |n: usize| n.checked_sub(1);
            if event.kind == "user.deleted"
                && self.failures.fetch_update(Ordering::SeqCst, Ordering::SeqCst, fails).is_ok()
            {
                return Err("the notes database is down".into());
            }
            self.inner.handle(event).await
        }
    }

    /// Counts the deletion confirmations the bus carried to its handlers.
    #[derive(Default)]
    struct Confirmations(AtomicUsize);

    #[async_trait]
    impl EventHandler for Confirmations {
        async fn handle(&self, event: &CloudEvent) -> Result<(), String> {
            if event.kind == "user.deletion_completed" {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_deletion_still_erases_the_notes_when_their_handler_failed_once() {
        for backend in Backend::available() {
            let notes_db = TestDatabase::create(backend).await;
            let notes = NotesStore::connect(&notes_db.url).await.unwrap();
            let auth_db = TestDatabase::create(backend).await;
            let stores = auth_store::open(&auth_db.url, true).await.unwrap();
            let user = User {
                id: UserId::new(),
                email: Email::parse(&format!("bus-{}@example.com", uuid::Uuid::new_v4().simple())).unwrap(),
                password_hash: None,
                email_verified: false,
                created_at: SystemClock.now(),
                roles: vec![],
                permissions: vec![],
                disabled: false,
                tokens_version: 0,
            };
            stores
                .users
                .create_user(&user, &DomainEvent::registered(&user, "password", SystemClock.now()))
                .await
                .unwrap();
            let id = user.id.to_string();
            notes.add(&id, "mine").await.unwrap();
            stores.users.delete_user(user.id, &DomainEvent::deleted(user.id, SystemClock.now())).await.unwrap();

            let bus = InProcessBus::default();
            let confirmations = Arc::new(Confirmations::default());
            bus.follow(confirmations.clone());
            let handler = BusHandler { store: notes.clone(), bus: bus.clone() };
            bus.follow(Arc::new(Flaky { inner: handler, failures: AtomicUsize::new(1) }));
            let relay = OutboxRelay::new(stores.outbox.clone(), Arc::new(bus.clone()), Arc::new(SystemClock), 100);

            // The registration passes; the deletion fails and stays in the outbox.
            assert_eq!(relay.try_relay_batch().await.unwrap(), 1, "{backend:?}");
            assert_eq!(notes.count_of(&id).await.unwrap(), 1);
            assert_eq!(
                stores.outbox.events_of(user.id).await.unwrap().iter().filter(|e| e.published_at.is_none()).count(),
                1
            );
            // The next try delivers it: the notes are gone and the erasure confirmed.
            assert_eq!(relay.try_relay_batch().await.unwrap(), 1, "{backend:?}");
            assert_eq!(notes.count_of(&id).await.unwrap(), 0);
            assert_eq!(confirmations.0.load(Ordering::SeqCst), 1);
            assert_eq!(relay.try_relay_batch().await.unwrap(), 0, "nothing is left");
        }
    }
}

mod nats {
    //! The notes service as a NATS consumer (`GATEHOUSE_TEST_NATS_URL`).

    use std::sync::Arc;
    use std::time::Duration;

    use async_trait::async_trait;
    use auth_core::{Clock, DomainEvent, EventSink, SystemClock, UserId};
    use auth_events::{CloudEvent, Consumer, ConsumerSettings, EventHandler, NatsPublisher};
    use notes_service::{NatsHandler, NotesStore};

    use super::*;

    fn url() -> String {
        std::env::var("GATEHOUSE_TEST_NATS_URL").unwrap()
    }

    fn settings(name: &str, filter: &str) -> ConsumerSettings {
        ConsumerSettings {
            deliver: async_nats::jetstream::consumer::DeliverPolicy::New,
            ..ConsumerSettings::new(&format!("{name}-{}", uuid::Uuid::new_v4().simple()), filter)
        }
    }

    #[tokio::test]
    #[cfg_attr(not(nats_available), ignore = "set GATEHOUSE_TEST_NATS_URL to run against NATS")]
    async fn a_deleted_users_notes_are_erased_once_and_the_erasure_confirmed() {
        let db = TestDatabase::create(Backend::Sqlite).await;
        let store = NotesStore::connect(&db.url).await.unwrap();
        let nats = NatsPublisher::connect(&url()).await.unwrap();
        let handler = Arc::new(NatsHandler { store: store.clone(), jetstream: nats.jetstream().clone() });
        let settings = settings("notes", "user.deleted");
        let durable = settings.durable.clone();
        let consumer = Consumer::connect(&url(), settings, handler.clone()).await.unwrap();
        let user = UserId::new();
        let uid = user.to_string();
        store.add(&uid, "one").await.unwrap();
        store.add(&uid, "two").await.unwrap();
        store.add("someone-else", "kept").await.unwrap();

        let deleted = DomainEvent::deleted(user, SystemClock.now());
        assert_eq!(nats.deliver(std::slice::from_ref(&deleted)).await, 1);
        let mut handled = 0;
        for _ in 0..10 {
            handled += consumer.try_consume_batch(10, Duration::from_millis(500)).await.unwrap();
            if handled > 0 {
                break;
            }
        }
        assert_eq!(handled, 1);
        assert_eq!(store.count_of(&uid).await.unwrap(), 0);
        assert_eq!(store.count_of("someone-else").await.unwrap(), 1);

        let stream = nats.jetstream().get_stream("GATEHOUSE_USERS").await.unwrap();
        let confirmation = stream.get_last_raw_message_by_subject("user.deletion_completed").await.unwrap();
        let confirmation: CloudEvent = serde_json::from_slice(&confirmation.payload).unwrap();
        assert_eq!(confirmation.subject, uid);
        assert_eq!(confirmation.data, serde_json::json!({"user_id": uid, "service": "notes"}));

        // Redelivered: the recorded event id makes it a no-op.
        store.add(&uid, "written after the deletion").await.unwrap();
        let again = CloudEvent::from_domain(&deleted, "gatehouse/auth-service");
        handler.handle(&again).await.unwrap();
        assert_eq!(store.count_of(&uid).await.unwrap(), 1, "a redelivered deletion ran twice");
        stream.delete_consumer(&durable).await.unwrap();
    }

    struct AlwaysFails;

    #[async_trait]
    impl EventHandler for AlwaysFails {
        async fn handle(&self, _: &CloudEvent) -> Result<(), String> {
            Err("this handler never succeeds".into())
        }
    }

    #[tokio::test]
    #[cfg_attr(not(nats_available), ignore = "set GATEHOUSE_TEST_NATS_URL to run against NATS")]
    async fn an_event_failing_every_delivery_goes_to_the_dead_letters() {
        let nats = NatsPublisher::connect(&url()).await.unwrap();
        let mut settings = settings("failing", "user.logged_in");
        settings.max_deliver = 2;
        settings.backoff = vec![Duration::from_millis(50)];
        let dead_subject = settings.dead_letter_subject();
        let durable = settings.durable.clone();
        let consumer = Consumer::connect(&url(), settings, Arc::new(AlwaysFails)).await.unwrap();
        let event = DomainEvent::logged_in(UserId::new(), auth_core::SessionId::new(), SystemClock.now());
        assert_eq!(nats.deliver(std::slice::from_ref(&event)).await, 1);
        let dead = nats.jetstream().get_stream("GATEHOUSE_DEAD_LETTERS").await.unwrap();
        let mut letter = None;
        for _ in 0..40 {
            assert_eq!(consumer.try_consume_batch(10, Duration::from_millis(200)).await.unwrap(), 0);
            if let Ok(found) = dead.get_last_raw_message_by_subject(&dead_subject).await {
                letter = Some(serde_json::from_slice::<CloudEvent>(&found.payload).unwrap());
                break;
            }
        }
        let letter = letter.expect("the failing event never reached the dead letters");
        assert_eq!(letter.id, event.id.to_string());
        let events = nats.jetstream().get_stream("GATEHOUSE_USERS").await.unwrap();
        events.delete_consumer(&durable).await.unwrap();
    }
}

#[test]
fn the_deletion_confirmation_matches_its_schema() {
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../docs/events/user.deletion_completed.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let id = uuid::Uuid::new_v4().to_string();
    let deleted = auth_events::CloudEvent {
        specversion: "1.0".into(),
        id: uuid::Uuid::new_v4().to_string(),
        source: "gatehouse/auth-service".into(),
        kind: "user.deleted".into(),
        time: "2026-11-27T10:00:00Z".into(),
        subject: id.clone(),
        datacontenttype: "application/json".into(),
        data: json!({"user_id": id}),
    };
    let done = serde_json::to_value(notes_service::deletion_completed(&deleted)).unwrap();
    let data_schema = &schema["properties"]["data"];
    for field in data_schema["required"].as_array().unwrap() {
        assert!(done["data"].get(field.as_str().unwrap()).is_some(), "missing {field}");
    }
    for member in done["data"].as_object().unwrap().keys() {
        assert!(data_schema["properties"].get(member).is_some(), "{member} is not in the schema");
    }
    for member in done.as_object().unwrap().keys() {
        assert!(schema["properties"].get(member).is_some(), "{member} is not in the schema");
    }
    assert_eq!(done["type"], schema["properties"]["type"]["const"]);
}
