//! Published events checked against their schemas, and events and revocations
//! on a real NATS JetStream server (`GATEHOUSE_TEST_NATS_URL`); the NATS tests
//! are ignored, and say so, when no server is named.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod schemas;

use std::sync::Arc;

use auth_core::{Clock, DomainEvent, Email, EventSink, SystemClock, User, UserId};
use auth_core::{RevocationSink, SessionId};
use auth_events::publish::STREAM;
use auth_events::{CloudEvent, NatsPublisher, NatsRevocationFeed, NatsRevocationSink, OutboxRelay, RevocationFeed};
use auth_store::testing::{Backend, TestDatabase};

/// The tests read the shared stream's sequence numbers: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn url() -> String {
    std::env::var("GATEHOUSE_TEST_NATS_URL").expect("GATEHOUSE_TEST_NATS_URL")
}

pub fn user() -> User {
    User {
        id: UserId::new(),
        email: Email::parse(&format!("nats-{}@example.com", uuid::Uuid::new_v4().simple())).unwrap(),
        password_hash: None,
        email_verified: false,
        created_at: SystemClock.now(),
        roles: vec![],
        permissions: vec![],
        disabled: false,
        tokens_version: 0,
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
        let published: serde_json::Value = serde_json::from_slice(&stored.payload).unwrap();
        let kind = event.kind.subject();
        assert_eq!(schemas::violations(&schemas::schema(kind), &published, "$"), Vec::<String>::new());
        let cloud: CloudEvent = serde_json::from_value(published).unwrap();
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

const REACH: std::time::Duration = std::time::Duration::from_secs(660);

/// Polls `condition` every 10 ms for at most `limit`; returns how long it took.
async fn within(limit: std::time::Duration, condition: impl Fn() -> bool) -> Option<std::time::Duration> {
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        if condition() {
            return Some(start.elapsed());
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    None
}

#[tokio::test]
#[cfg_attr(not(nats_available), ignore = "set GATEHOUSE_TEST_NATS_URL to run against NATS")]
async fn a_revocation_reaches_watching_gateways_at_once_and_new_ones_replay_it() {
    let long = std::time::Duration::from_secs(10);
    let sink = NatsRevocationSink::connect(&url(), REACH).await.unwrap();
    let watching = NatsRevocationFeed::start(&url(), REACH, std::time::Duration::from_secs(5)).await.unwrap();
    assert!(within(long, || watching.is_current()).await.is_some(), "the feed never replayed the bucket");

    let (session, user) = (SessionId::new(), UserId::new());
    let now = SystemClock.now();
    sink.session_revoked(session, now + time::Duration::seconds(600)).await;
    sink.user_revoked(user, now, now + time::Duration::seconds(600)).await;
    let sid = session.to_string();
    let took = within(long, || watching.set().is_revoked(&sid, "someone", 0)).await;
    let took = took.expect("the revocation never reached the watching feed");
    eprintln!("revocation propagation: {took:?}");
    assert!(took < std::time::Duration::from_secs(1), "took {took:?}");
    let uid = user.to_string();
    assert!(within(long, || watching.set().is_revoked("other", &uid, now.unix_timestamp())).await.is_some());

    // A gateway started later learns the same before it calls itself current.
    let late = NatsRevocationFeed::start(&url(), REACH, std::time::Duration::from_secs(5)).await.unwrap();
    assert!(within(long, || late.is_current()).await.is_some());
    assert!(late.set().is_revoked(&sid, "someone", 0), "a new feed was current before replaying");
}

/// A TCP relay to the NATS server that the test can cut and restore.
struct Cable {
    addr: std::net::SocketAddr,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Cable {
    async fn lay(addr: std::net::SocketAddr) -> Self {
        let target = url().trim_start_matches("nats://").to_owned();
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns = Arc::new(std::sync::Mutex::new(Vec::<tokio::task::JoinHandle<()>>::new()));
        let accept = {
            let conns = conns.clone();
            tokio::spawn(async move {
                while let Ok((mut client, _)) = listener.accept().await {
                    let target = target.clone();
                    conns.lock().unwrap().push(tokio::spawn(async move {
                        if let Ok(mut server) = tokio::net::TcpStream::connect(&target).await {
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                        }
                    }));
                }
            })
        };
        let reaper = tokio::spawn(async move {
            // Owns the connection tasks so that cutting the cable ends them.
            let _guard = AbortOnDrop(conns);
            std::future::pending::<()>().await;
        });
        Self { addr, tasks: vec![accept, reaper] }
    }

    fn cut(self) -> std::net::SocketAddr {
        for t in &self.tasks {
            t.abort();
        }
        self.addr
    }
}

struct AbortOnDrop(Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for t in self.0.lock().unwrap().drain(..) {
            t.abort();
        }
    }
}

#[tokio::test]
#[cfg_attr(not(nats_available), ignore = "set GATEHOUSE_TEST_NATS_URL to run against NATS")]
async fn a_feed_cut_off_from_nats_stops_vouching_and_recovers_when_reconnected() {
    let cable = Cable::lay("127.0.0.1:0".parse().unwrap()).await;
    let via = format!("nats://{}", cable.addr);
    let staleness = std::time::Duration::from_millis(500);
    let feed = NatsRevocationFeed::start(&via, REACH, staleness).await.unwrap();
    let long = std::time::Duration::from_secs(20);
    assert!(within(long, || feed.is_current()).await.is_some());

    let addr = cable.cut();
    let stale = within(long, || !feed.is_current()).await.expect("a feed without NATS kept vouching for its set");
    assert!(stale >= staleness / 2, "gave up after {stale:?}, before the staleness bound");

    let _restored = Cable::lay(addr).await;
    assert!(within(long, || feed.is_current()).await.is_some(), "the feed never recovered");
}

#[tokio::test]
#[cfg_attr(not(nats_available), ignore = "set GATEHOUSE_TEST_NATS_URL to run against NATS")]
async fn relayed_logout_and_deletion_events_also_write_their_revocations() {
    let _serial = SERIAL.lock().await;
    let revocations = NatsRevocationSink::connect(&url(), REACH).await.unwrap();
    let nats = NatsPublisher::connect(&url()).await.unwrap().with_revocations(revocations);
    let feed = NatsRevocationFeed::start(&url(), REACH, std::time::Duration::from_secs(5)).await.unwrap();
    let long = std::time::Duration::from_secs(10);
    assert!(within(long, || feed.is_current()).await.is_some());
    let (user, session) = (UserId::new(), SessionId::new());
    let now = SystemClock.now();
    let events = [DomainEvent::logged_out(user, session, now), DomainEvent::deleted(user, now)];
    assert_eq!(nats.deliver(&events).await, 2);
    let (sid, uid) = (session.to_string(), user.to_string());
    assert!(within(long, || feed.set().is_revoked(&sid, "x", 0)).await.is_some());
    assert!(within(long, || feed.set().is_revoked("y", &uid, now.unix_timestamp())).await.is_some());
}

#[tokio::test]
#[cfg_attr(not(nats_available), ignore = "set GATEHOUSE_TEST_NATS_URL to run against NATS")]
async fn relayed_version_bumps_outdate_tokens_and_an_older_one_never_takes_a_newer_back() {
    let _serial = SERIAL.lock().await;
    let long = std::time::Duration::from_secs(10);
    let revocations = NatsRevocationSink::connect(&url(), REACH).await.unwrap();
    let watching = NatsRevocationFeed::start(&url(), REACH, std::time::Duration::from_secs(5)).await.unwrap();
    assert!(within(long, || watching.is_current()).await.is_some());
    let (promoted, disabled) = (UserId::new(), UserId::new());
    let (p, d) = (promoted.to_string(), disabled.to_string());
    let now = SystemClock.now();

    // The fast path writes version 5; the relay then brings the event of
    // an earlier change (version 3), as it does after the fast path won.
    revocations.tokens_outdated(promoted, 5, now + time::Duration::seconds(600)).await;
    let stale_at = |feed: &NatsRevocationFeed, uid: &str, ver: i64| feed.set().revocation("s", uid, 0, ver).is_some();
    assert!(within(long, || stale_at(&watching, &p, 4)).await.is_some(), "the fast path never arrived");
    let nats = NatsPublisher::connect(&url()).await.unwrap().with_revocations(revocations);
    let events =
        [DomainEvent::roles_changed(promoted, &["user".to_owned()], 3, now), DomainEvent::disabled(disabled, 2, now)];
    assert_eq!(nats.deliver(&events).await, 2);

    // A gateway starting now reads the bucket as it stands.
    let late = NatsRevocationFeed::start(&url(), REACH, std::time::Duration::from_secs(5)).await.unwrap();
    assert!(within(long, || late.is_current()).await.is_some());
    assert!(stale_at(&late, &p, 4), "the older event took the newer version back");
    assert!(!stale_at(&late, &p, 5), "a token of the current version is stale");
    assert!(stale_at(&late, &d, 1), "a token minted before the disable still stands");
    assert!(!stale_at(&late, &d, 2), "the disabled user's entry is not by version");
    assert!(late.set().revocation("s", &d, now.unix_timestamp() + 3600, 2).is_none(), "disabling cut by time");
}
