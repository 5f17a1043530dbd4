//! One contract suite for every store port, run against SQLite and, when
//! `GATEHOUSE_TEST_POSTGRES_URL` is set, PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod identities;
mod recovery;
mod roles;

use auth_core::events::StoredEvent;
use std::sync::Mutex;

use async_trait::async_trait;
use auth_core::{
    AuditEntry, DomainEvent, Email, EventKind, EventSink, OpaqueSecret, Opening, SecretHash, Session, SessionId,
    StoreError, User, UserId,
};
use auth_store::testing::{Backend, TestDatabase};
use auth_store::{Stores, open};
use time::{Duration, OffsetDateTime};

struct Fixture {
    stores: Stores,
    _db: TestDatabase,
}

/// Runs `scenario` once per available backend, each on a fresh database.
async fn each_backend(scenario: impl AsyncFn(Stores)) {
    for backend in Backend::available() {
        eprintln!("-- backend {backend:?}");
        let f = fixture(backend).await;
        scenario(f.stores.clone()).await;
    }
}

async fn fixture(backend: Backend) -> Fixture {
    let db = TestDatabase::create(backend).await;
    let stores = open(&db.url, true).await.unwrap();
    Fixture { stores, _db: db }
}

/// Millisecond precision, as both backends store it.
fn now() -> OffsetDateTime {
    let t = auth_core::Clock::now(&auth_core::SystemClock);
    t.replace_nanosecond(t.millisecond() as u32 * 1_000_000).unwrap()
}

fn user(email: &str) -> User {
    User {
        id: UserId::new(),
        email: Email::parse(email).unwrap(),
        password_hash: Some("$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2g".into()),
        email_verified: false,
        created_at: now(),
        roles: vec![],
        permissions: vec![],
        disabled: false,
        tokens_version: 0,
    }
}

async fn registered(stores: &Stores, email: &str) -> User {
    let u = user(email);
    stores.users.create_user(&u, &DomainEvent::registered(&u, "password", u.created_at)).await.unwrap();
    u
}

fn session(user: UserId, at: OffsetDateTime) -> Session {
    Session {
        id: SessionId::new(),
        user_id: user,
        created_at: at,
        last_seen_at: at,
        expires_at: at + Duration::days(30),
        idle_expires_at: at + Duration::days(7),
        revoked_at: None,
        user_agent: Some("test-agent".into()),
        ip: Some("127.0.0.1".into()),
    }
}

async fn logged_in(stores: &Stores, user: UserId, at: OffsetDateTime) -> (Session, OpaqueSecret) {
    let s = session(user, at);
    let refresh = OpaqueSecret::generate();
    let event = DomainEvent::logged_in(user, s.id, at);
    assert!(open_session(stores, &s, &refresh.hash(), &event, None, None).await.unwrap());
    (s, refresh)
}

/// The `login.succeeded` entry of the session `event` tells of, under the
/// event's id.
fn succeeded(s: &Session, event: &DomainEvent) -> AuditEntry {
    AuditEntry {
        id: event.id,
        at: s.created_at,
        actor: Some(s.user_id),
        action: "login.succeeded".into(),
        target: Some(s.user_id.to_string()),
        request_id: Some("req-1".into()),
        detail: serde_json::json!({ "method": "password", "session": s.id.to_string() }),
        ip: s.ip.clone(),
        user_agent: s.user_agent.clone(),
        reason: None,
    }
}

/// Opens `s` with its token, its event and its audit entry
/// ([`succeeded`]), clearing `clears`'s failed-login count.
async fn open_session(
    stores: &Stores,
    s: &Session,
    refresh: &SecretHash,
    event: &DomainEvent,
    verified: Option<&str>,
    clears: Option<&str>,
) -> Result<bool, StoreError> {
    let audit = succeeded(s, event);
    stores.sessions.create_session(s, &Opening { refresh, event, verified, audit: &audit, clears }).await
}

fn kinds(events: &[StoredEvent]) -> Vec<EventKind> {
    events.iter().map(|e| e.event.kind).collect()
}

#[tokio::test]
async fn a_created_user_is_found_by_email_and_id_with_its_event_in_the_outbox() {
    each_backend(async |stores| {
        let u = registered(&stores, "alice@example.com").await;
        assert_eq!(stores.users.user_by_email(&u.email).await.unwrap(), Some(u.clone()));
        assert_eq!(stores.users.user_by_id(u.id).await.unwrap(), Some(u.clone()));
        let events = stores.outbox.events_of(u.id).await.unwrap();
        assert_eq!(kinds(&events), vec![EventKind::Registered]);
        assert_eq!(events[0].event.data["email"], "alice@example.com");
        assert!(events[0].published_at.is_none());
    })
    .await;
}

#[tokio::test]
async fn a_second_user_with_the_same_email_conflicts_and_writes_nothing() {
    each_backend(async |stores| {
        registered(&stores, "bob@Example.com").await;
        let twin = user("bob@example.COM");
        let event = DomainEvent::registered(&twin, "password", twin.created_at);
        let err = stores.users.create_user(&twin, &event).await.unwrap_err();
        assert!(matches!(err, StoreError::Conflict), "{err:?}");
        assert!(stores.users.user_by_id(twin.id).await.unwrap().is_none());
        assert!(stores.outbox.events_of(twin.id).await.unwrap().is_empty(), "half-written registration");
    })
    .await;
}

#[tokio::test]
async fn unknown_users_are_none_and_updates_of_them_not_found() {
    each_backend(async |stores| {
        assert!(stores.users.user_by_id(UserId::new()).await.unwrap().is_none());
        assert!(stores.users.user_by_email(&Email::parse("nobody@example.com").unwrap()).await.unwrap().is_none());
        let err = stores.users.set_password_hash(UserId::new(), "x").await.unwrap_err();
        assert!(matches!(err, StoreError::NotFound));
        let id = UserId::new();
        let err = stores.users.delete_user(id, &DomainEvent::deleted(id, now())).await.unwrap_err();
        assert!(matches!(err, StoreError::NotFound));
    })
    .await;
}

#[tokio::test]
async fn deleting_a_user_removes_its_sessions_and_tokens_and_scrubs_its_events() {
    each_backend(async |stores| {
        let u = registered(&stores, "carol@example.com").await;
        let (s, refresh) = logged_in(&stores, u.id, now()).await;
        let first = stores.outbox.events_of(u.id).await.unwrap()[0].event.id;
        stores.outbox.mark_published(&[first], now()).await.unwrap();
        stores.users.delete_user(u.id, &DomainEvent::deleted(u.id, now())).await.unwrap();

        assert!(stores.users.user_by_id(u.id).await.unwrap().is_none());
        assert!(stores.sessions.session(s.id).await.unwrap().is_none());
        assert!(stores.sessions.refresh_record(&refresh.hash()).await.unwrap().is_none());
        let events = stores.outbox.events_of(u.id).await.unwrap();
        assert_eq!(kinds(&events), vec![EventKind::LoggedIn, EventKind::Deleted]);
        assert_eq!(events[1].event.data, serde_json::json!({"user_id": u.id}));
        for e in &events {
            assert!(!e.event.data.to_string().contains("carol"), "PII left in {:?}", e.event);
        }
    })
    .await;
}

#[tokio::test]
async fn undelivered_registration_events_lose_the_email_when_the_user_is_deleted() {
    each_backend(async |stores| {
        let u = registered(&stores, "dave@example.com").await;
        stores.users.delete_user(u.id, &DomainEvent::deleted(u.id, now())).await.unwrap();
        let events = stores.outbox.events_of(u.id).await.unwrap();
        assert_eq!(kinds(&events), vec![EventKind::Registered, EventKind::Deleted]);
        assert!(events[0].event.data.get("email").is_none());
        assert_eq!(events[0].event.data["user_id"], serde_json::json!(u.id));
    })
    .await;
}

#[tokio::test]
async fn the_password_hash_can_be_replaced() {
    each_backend(async |stores| {
        let u = registered(&stores, "erin@example.com").await;
        stores.users.set_password_hash(u.id, "$argon2id$new").await.unwrap();
        let got = stores.users.user_by_id(u.id).await.unwrap().unwrap();
        assert_eq!(got.password_hash.as_deref(), Some("$argon2id$new"));
    })
    .await;
}

#[tokio::test]
async fn sessions_round_trip_and_only_active_ones_are_listed_newest_first() {
    each_backend(async |stores| {
        let u = registered(&stores, "frank@example.com").await;
        let t0 = now();
        let (old, _) = logged_in(&stores, u.id, t0).await;
        let (new, _) = logged_in(&stores, u.id, t0 + Duration::seconds(1)).await;
        let (gone, _) = logged_in(&stores, u.id, t0 + Duration::seconds(2)).await;
        assert_eq!(stores.sessions.session(old.id).await.unwrap(), Some(old.clone()));
        assert!(stores.sessions.revoke_session(gone.id, t0).await.unwrap());
        let listed = stores.sessions.active_sessions(u.id, t0 + Duration::seconds(3)).await.unwrap();
        assert_eq!(listed.iter().map(|s| s.id).collect::<Vec<_>>(), vec![new.id, old.id]);
        let after_idle = stores.sessions.active_sessions(u.id, t0 + Duration::days(8)).await.unwrap();
        assert!(after_idle.is_empty());
    })
    .await;
}

#[tokio::test]
async fn rotation_is_a_compare_and_swap_on_the_current_token() {
    each_backend(async |stores| {
        let u = registered(&stores, "gina@example.com").await;
        let t0 = now();
        let (s, first) = logged_in(&stores, u.id, t0).await;
        let record = stores.sessions.refresh_record(&first.hash()).await.unwrap().unwrap();
        assert_eq!(record.session_id, s.id);
        assert_eq!(record.superseded_at, None);

        let t1 = t0 + Duration::seconds(10);
        let (second, third) = (OpaqueSecret::generate(), OpaqueSecret::generate());
        let idle = t1 + Duration::days(7);
        assert!(stores.sessions.rotate_refresh(s.id, &first.hash(), &second.hash(), t1, idle).await.unwrap());
        assert!(!stores.sessions.rotate_refresh(s.id, &first.hash(), &third.hash(), t1, idle).await.unwrap());
        assert!(stores.sessions.refresh_record(&third.hash()).await.unwrap().is_none());
        let old = stores.sessions.refresh_record(&first.hash()).await.unwrap().unwrap();
        assert_eq!(old.superseded_at, Some(t1));
        let got = stores.sessions.session(s.id).await.unwrap().unwrap();
        assert_eq!((got.last_seen_at, got.idle_expires_at), (t1, idle));
    })
    .await;
}

#[tokio::test]
async fn a_revoked_session_cannot_rotate_its_refresh_token() {
    each_backend(async |stores| {
        let u = registered(&stores, "gus@example.com").await;
        let t0 = now();
        let (s, first) = logged_in(&stores, u.id, t0).await;
        assert!(stores.sessions.revoke_session(s.id, t0).await.unwrap());
        let (next, idle) = (OpaqueSecret::generate(), t0 + Duration::days(7));
        assert!(!stores.sessions.rotate_refresh(s.id, &first.hash(), &next.hash(), t0, idle).await.unwrap());
        assert!(stores.sessions.refresh_record(&next.hash()).await.unwrap().is_none());
        let kept = stores.sessions.refresh_record(&first.hash()).await.unwrap().unwrap();
        assert_eq!(kept.superseded_at, None, "a refused rotation wrote half of itself");
    })
    .await;
}

/// Whether `s` was opened whole (its row, its refresh token, its event and
/// its audit entry) or not at all; panics on anything in between.
async fn opened_whole(stores: &Stores, s: &Session, refresh: &OpaqueSecret, event: &DomainEvent) -> bool {
    let row = stores.sessions.session(s.id).await.unwrap().is_some();
    let record = stores.sessions.refresh_record(&refresh.hash()).await.unwrap();
    let token = record.is_some_and(|r| r.session_id == s.id);
    let events = stores.outbox.events_of(s.user_id).await.unwrap();
    let logged = events.iter().any(|e| e.event.id == event.id);
    let audited = audited(stores, event).await;
    assert!(
        row == token && row == logged && row == audited,
        "half a session: row {row}, refresh token {token}, event {logged}, audit entry {audited}"
    );
    row
}

/// Whether the audit log holds `event`'s session's entry, as written.
async fn audited(stores: &Stores, event: &DomainEvent) -> bool {
    let entries = stores.roles.audit_page(None, 200).await.unwrap();
    let entry = entries.into_iter().find(|e| e.id == event.id);
    if let Some(entry) = &entry {
        assert_eq!((entry.action.as_str(), entry.request_id.as_deref()), ("login.succeeded", Some("req-1")));
        assert_eq!(entry.detail["session"], event.data["session_id"], "{:?} {:?}", entry.detail, event.data);
    }
    entry.is_some()
}

#[tokio::test]
async fn a_session_whose_refresh_token_clashes_opens_nothing_and_writes_go_on() {
    each_backend(async |stores| {
        let u = registered(&stores, "ida@example.com").await;
        let t0 = now();
        let (_, taken) = logged_in(&stores, u.id, t0).await;
        // The session row is written before the clash is met.
        let clashing = session(u.id, t0);
        let event = DomainEvent::logged_in(u.id, clashing.id, t0);
        assert!(open_session(&stores, &clashing, &taken.hash(), &event, None, None).await.is_err());
        assert!(!opened_whole(&stores, &clashing, &taken, &event).await);
        // The next writes land, and stay.
        let (next, refresh) = logged_in(&stores, u.id, t0).await;
        assert!(stores.sessions.revoke_session(next.id, t0).await.unwrap());
        assert!(stores.sessions.session(next.id).await.unwrap().unwrap().revoked_at.is_some());
        assert!(stores.sessions.refresh_record(&refresh.hash()).await.unwrap().is_some());
    })
    .await;
}

#[tokio::test]
async fn sessions_opened_at_once_each_get_their_own_outcome() {
    each_backend(async |stores| {
        let u = registered(&stores, "ina@example.com").await;
        let t0 = now();
        let (_, taken) = logged_in(&stores, u.id, t0).await;
        // Sent together, so they queue for the writer together: six that
        // open, one refused (the hash it was verified against is no longer
        // the account's), one whose refresh token clashes with the open
        // session's. Each gets its own outcome; a store that committed
        // openings together must still keep them apart.
        let mut openings = tokio::task::JoinSet::new();
        for n in 0..8 {
            let stores = stores.clone();
            let taken = taken.hash();
            openings.spawn(async move {
                let (s, refresh) = (session(u.id, t0), OpaqueSecret::generate());
                let event = DomainEvent::logged_in(u.id, s.id, t0);
                let (token, verified) = match n {
                    6 => (refresh.hash(), Some("$argon2id$old")),
                    7 => (taken, None),
                    _ => (refresh.hash(), None),
                };
                let opened = open_session(&stores, &s, &token, &event, verified, None).await;
                (n, s, refresh, event, opened)
            });
        }
        while let Some(done) = openings.join_next().await {
            let (n, s, refresh, event, opened) = done.unwrap();
            match n {
                6 => assert!(!opened.unwrap(), "a session was opened against a replaced hash"),
                7 => assert!(opened.is_err(), "a session opened under a refresh token already taken"),
                _ => assert!(opened.unwrap(), "session {n} was refused beside the others"),
            }
            assert_eq!(opened_whole(&stores, &s, &refresh, &event).await, n < 6, "session {n}");
        }
        let events = stores.outbox.events_of(u.id).await.unwrap();
        assert_eq!(events.len(), 1 + 1 + 6, "registered, the first login, six more: {:?}", kinds(&events));
    })
    .await;
}

#[tokio::test]
async fn a_refused_session_adds_nothing_even_under_an_id_already_taken() {
    each_backend(async |stores| {
        let u = registered(&stores, "ivy@example.com").await;
        let t0 = now();
        let (taken, _) = logged_in(&stores, u.id, t0).await;
        // Refused (the hash it was verified against is no longer the
        // account's), under the id of the session already open.
        let (refresh, event) = (OpaqueSecret::generate(), DomainEvent::logged_in(u.id, taken.id, t0));
        let opened = open_session(&stores, &taken, &refresh.hash(), &event, Some("$argon2id$old"), None).await;
        assert!(!opened.unwrap(), "a session was opened against a replaced hash");
        assert!(!audited(&stores, &event).await, "a refused session left its audit entry");
        assert!(
            stores.sessions.refresh_record(&refresh.hash()).await.unwrap().is_none(),
            "the old session gained a token"
        );
        let events = stores.outbox.events_of(u.id).await.unwrap();
        assert!(events.iter().all(|e| e.event.id != event.id), "a refused session left its event");
    })
    .await;
}

#[tokio::test]
async fn a_session_dropped_while_it_is_opened_is_there_whole_or_not_at_all() {
    each_backend(async |stores| {
        let u = registered(&stores, "ike@example.com").await;
        let t0 = now();
        let mut opened = 0;
        for _ in 0..20 {
            let (s, refresh) = (session(u.id, t0), OpaqueSecret::generate());
            let event = DomainEvent::logged_in(u.id, s.id, t0);
            // Polled once, then dropped: its statements are on their way.
            let dropped = tokio::time::timeout(
                std::time::Duration::ZERO,
                open_session(&stores, &s, &refresh.hash(), &event, None, None),
            )
            .await;
            if let Ok(done) = dropped {
                assert!(done.unwrap(), "an undisturbed session was refused");
            }
            // The store writes on after each; by then the dropped
            // statements have run (they still run, in order) or been undone.
            let (next, _) = logged_in(&stores, u.id, t0).await;
            assert!(stores.sessions.revoke_session(next.id, t0).await.unwrap());
            opened += usize::from(opened_whole(&stores, &s, &refresh, &event).await);
        }
        eprintln!("{opened} of 20 dropped sessions were opened whole");
    })
    .await;
}

#[tokio::test]
async fn revoking_is_idempotent_and_writes_one_logout_event() {
    each_backend(async |stores| {
        let u = registered(&stores, "hank@example.com").await;
        let (s, _) = logged_in(&stores, u.id, now()).await;
        assert!(stores.sessions.revoke_session(s.id, now()).await.unwrap());
        assert!(!stores.sessions.revoke_session(s.id, now()).await.unwrap());
        assert!(!stores.sessions.revoke_session(SessionId::new(), now()).await.unwrap());
        assert!(stores.sessions.session(s.id).await.unwrap().unwrap().revoked_at.is_some());
        let events = stores.outbox.events_of(u.id).await.unwrap();
        assert_eq!(kinds(&events), vec![EventKind::Registered, EventKind::LoggedIn, EventKind::LoggedOut]);
        assert_eq!(events[2].event.data["session_id"], serde_json::json!(s.id));
    })
    .await;
}

#[tokio::test]
async fn revoking_all_other_sessions_keeps_the_current_one_and_spares_other_users() {
    each_backend(async |stores| {
        let u = registered(&stores, "ivy@example.com").await;
        let other = registered(&stores, "jack@example.com").await;
        let t0 = now();
        let (keep, _) = logged_in(&stores, u.id, t0).await;
        let (a, _) = logged_in(&stores, u.id, t0).await;
        let (b, _) = logged_in(&stores, u.id, t0).await;
        let (theirs, _) = logged_in(&stores, other.id, t0).await;
        let mut revoked = stores.sessions.revoke_sessions_of(u.id, Some(keep.id), t0).await.unwrap();
        revoked.sort();
        let mut expected = vec![a.id, b.id];
        expected.sort();
        assert_eq!(revoked, expected);
        let active = stores.sessions.active_sessions(u.id, t0).await.unwrap();
        assert_eq!(active.iter().map(|s| s.id).collect::<Vec<_>>(), vec![keep.id]);
        assert_eq!(stores.sessions.active_sessions(other.id, t0).await.unwrap()[0].id, theirs.id);
        let all = stores.sessions.revoke_sessions_of(u.id, None, t0).await.unwrap();
        assert_eq!(all, vec![keep.id]);
    })
    .await;
}

#[tokio::test]
async fn the_outbox_yields_unpublished_events_in_order_until_marked() {
    each_backend(async |stores| {
        let u = registered(&stores, "kate@example.com").await;
        logged_in(&stores, u.id, now()).await;
        let pending = stores.outbox.unpublished(10).await.unwrap();
        assert_eq!(kinds(&pending), vec![EventKind::Registered, EventKind::LoggedIn]);
        assert_eq!(stores.outbox.unpublished(1).await.unwrap().len(), 1);
        stores.outbox.mark_published(&[pending[0].event.id], now()).await.unwrap();
        let rest = stores.outbox.unpublished(10).await.unwrap();
        assert_eq!(kinds(&rest), vec![EventKind::LoggedIn]);
        assert!(stores.outbox.events_of(u.id).await.unwrap()[0].published_at.is_some());

        // Several at once: exactly those, and a mark already made stays.
        let registered_event = pending[0].event.id;
        logged_in(&stores, u.id, now()).await;
        logged_in(&stores, u.id, now()).await;
        let pending = stores.outbox.unpublished(10).await.unwrap();
        assert_eq!(pending.len(), 3);
        let later = now() + time::Duration::minutes(5);
        let marked =
            [pending[0].event.id, pending[2].event.id, registered_event, pending[0].event.id, uuid::Uuid::now_v7()];
        stores.outbox.mark_published(&marked, later).await.unwrap();
        let left = stores.outbox.unpublished(10).await.unwrap();
        assert_eq!(left.iter().map(|e| e.event.id).collect::<Vec<_>>(), vec![pending[1].event.id]);
        let first = &stores.outbox.events_of(u.id).await.unwrap()[0];
        assert!(first.published_at.is_some_and(|at| at < later), "a mark already made stays");
        stores.outbox.mark_published(&[], later).await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn a_sqlite_database_serves_one_process_and_postgres_several() {
    for backend in Backend::available() {
        let db = TestDatabase::create(backend).await;
        let first = auth_store::open_to_serve(&db.url).await.unwrap();
        let second = auth_store::open_to_serve(&db.url).await;
        match backend {
            Backend::Sqlite => {
                let refused = second.unwrap_err();
                assert!(matches!(refused, auth_store::OpenError::InUse(_)), "{refused}");
                // Another spelling of the same file is the same database.
                let dir = db.url.trim_start_matches("sqlite://").trim_end_matches("/gatehouse.db");
                let (parent, name) = dir.rsplit_once('/').unwrap();
                let alias = format!("{dir}/alias.db");
                std::os::unix::fs::symlink(format!("{dir}/gatehouse.db"), &alias).unwrap();
                for respelled in
                    [format!("sqlite://{parent}/./{name}/../{name}/gatehouse.db?mode=rwc"), format!("sqlite://{alias}")]
                {
                    let refused = auth_store::open_to_serve(&respelled).await.unwrap_err();
                    assert!(matches!(refused, auth_store::OpenError::InUse(_)), "{respelled}: {refused}");
                }
                // Opening to run a command is not serving.
                open(&db.url, true).await.unwrap();
                drop(first);
                auth_store::open_to_serve(&db.url).await.unwrap();
            }
            Backend::Postgres => drop((first, second.unwrap())),
        }
    }
}

/// Processes starting at once on a database not yet migrated (a server and
/// `gatehouse migrate` after an upgrade, or several servers on PostgreSQL)
/// each migrate, and none fails: one applies each migration, the others
/// find it applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn migrations_started_at_once_by_several_processes_all_succeed() {
    for backend in Backend::available() {
        for _ in 0..3 {
            let db = TestDatabase::create(backend).await;
            drop(open(&db.url, false).await.unwrap());
            let starts: Vec<_> = (0..4)
                .map(|_| {
                    let url = db.url.clone();
                    tokio::spawn(async move { open(&url, true).await.map(drop) })
                })
                .collect();
            for start in starts {
                if let Err(error) = start.await.unwrap() {
                    panic!("{backend:?}: a migration started beside another failed: {error}");
                }
            }
        }
    }
}

#[tokio::test]
async fn migrations_apply_once_and_the_database_answers_pings() {
    for backend in Backend::available() {
        let db = TestDatabase::create(backend).await;
        let stores = open(&db.url, true).await.unwrap();
        stores.health.ping().await.unwrap();
        let applied = match backend {
            Backend::Sqlite => auth_store::SqliteStore::connect(&db.url).await.unwrap().migrate().await.unwrap(),
            Backend::Postgres => auth_store::PgStore::connect(&db.url).await.unwrap().migrate().await.unwrap(),
        };
        assert!(applied.is_empty(), "{backend:?} re-applied {applied:?}");
    }
}

#[tokio::test]
async fn every_postgres_statement_and_idle_transaction_is_bounded() {
    if !Backend::available().contains(&Backend::Postgres) {
        return eprintln!("SKIPPED: set GATEHOUSE_TEST_POSTGRES_URL");
    }
    let db = TestDatabase::create(Backend::Postgres).await;
    let store = auth_store::PgStore::connect(&db.url).await.unwrap();
    let show = |name: &'static str| sqlx::query_scalar::<_, String>(name).fetch_one(store.pool());
    assert_eq!(show("SHOW statement_timeout").await.unwrap(), "5s");
    assert_eq!(show("SHOW idle_in_transaction_session_timeout").await.unwrap(), "10s");
    let slow = sqlx::query("SELECT pg_sleep(6)").execute(store.pool()).await.unwrap_err();
    assert!(slow.to_string().contains("statement timeout"), "{slow}");
}

#[tokio::test]
async fn an_unknown_database_scheme_is_refused_clearly() {
    let err = open("mysql://localhost/x", true).await.unwrap_err();
    assert!(err.to_string().contains("sqlite:// or postgres://"), "{err}");
}

/// Accepts the first `accept` events of each delivery and records them.
struct RecordingSink {
    accept: usize,
    delivered: Mutex<Vec<DomainEvent>>,
    pause: std::time::Duration,
}

impl RecordingSink {
    fn new(accept: usize) -> Self {
        Self { accept, delivered: Mutex::new(Vec::new()), pause: std::time::Duration::ZERO }
    }
}

#[async_trait]
impl EventSink for RecordingSink {
    async fn deliver(&self, events: &[DomainEvent]) -> usize {
        tokio::time::sleep(self.pause).await;
        let n = self.accept.min(events.len());
        self.delivered.lock().unwrap().extend_from_slice(&events[..n]);
        n
    }
}

#[tokio::test]
async fn the_relay_marks_published_exactly_what_the_sink_accepted_in_order() {
    each_backend(async |stores| {
        let u = registered(&stores, "relay@example.com").await;
        logged_in(&stores, u.id, now()).await;
        logged_in(&stores, u.id, now()).await;
        let sink = RecordingSink::new(2);
        assert_eq!(stores.outbox.relay_batch(10, &sink, now()).await.unwrap(), 2);
        let delivered: Vec<EventKind> = sink.delivered.lock().unwrap().iter().map(|e| e.kind).collect();
        assert_eq!(delivered, [EventKind::Registered, EventKind::LoggedIn]);
        let left = stores.outbox.unpublished(10).await.unwrap();
        assert_eq!(kinds(&left), [EventKind::LoggedIn], "the refused event stays for the next round");
        let all = RecordingSink::new(usize::MAX);
        assert_eq!(stores.outbox.relay_batch(10, &all, now()).await.unwrap(), 1);
        assert_eq!(stores.outbox.relay_batch(10, &all, now()).await.unwrap(), 0);
        assert!(stores.outbox.unpublished(10).await.unwrap().is_empty());
    })
    .await;
}

#[tokio::test]
async fn a_sink_that_accepts_nothing_loses_nothing() {
    each_backend(async |stores| {
        let u = registered(&stores, "down@example.com").await;
        let down = RecordingSink::new(0);
        assert_eq!(stores.outbox.relay_batch(10, &down, now()).await.unwrap(), 0);
        assert_eq!(kinds(&stores.outbox.unpublished(10).await.unwrap()), [EventKind::Registered]);
        assert_eq!(stores.outbox.events_of(u.id).await.unwrap()[0].published_at, None);
    })
    .await;
}

#[tokio::test]
async fn concurrent_relays_never_deliver_an_event_twice() {
    each_backend(async |stores| {
        for i in 0..20 {
            registered(&stores, &format!("many{i}@example.com")).await;
        }
        let slow = |accept| RecordingSink { pause: std::time::Duration::from_millis(50), ..RecordingSink::new(accept) };
        let (a, b) = (slow(usize::MAX), slow(usize::MAX));
        let (na, nb) =
            tokio::join!(stores.outbox.relay_batch(100, &a, now()), stores.outbox.relay_batch(100, &b, now()));
        let (na, nb) = (na.unwrap(), nb.unwrap());
        let again = RecordingSink::new(usize::MAX);
        let rest = stores.outbox.relay_batch(100, &again, now()).await.unwrap();
        assert_eq!(na + nb + rest, 20, "every event delivered once: {na} + {nb} + {rest}");
        let mut ids: Vec<_> =
            [&a, &b, &again].iter().flat_map(|s| s.delivered.lock().unwrap().clone()).map(|e| e.id).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 20);
    })
    .await;
}

#[tokio::test]
async fn deleting_a_user_opens_a_ledger_entry_that_confirmations_fill_once() {
    each_backend(async |stores| {
        let u = registered(&stores, "ledger@example.com").await;
        assert!(stores.ledger.deletion(u.id).await.unwrap().is_none());
        let at = now();
        stores.users.delete_user(u.id, &DomainEvent::deleted(u.id, at)).await.unwrap();
        let record = stores.ledger.deletion(u.id).await.unwrap().unwrap();
        assert_eq!(record.deleted_at, at);
        assert!(record.confirmations.is_empty());
        let first = at + Duration::seconds(1);
        stores.ledger.confirm_deletion(u.id, "notes", first).await.unwrap();
        stores.ledger.confirm_deletion(u.id, "notes", first + Duration::seconds(5)).await.unwrap();
        stores.ledger.confirm_deletion(u.id, "billing", first).await.unwrap();
        let record = stores.ledger.deletion(u.id).await.unwrap().unwrap();
        assert_eq!(record.confirmations, [("billing".to_owned(), first), ("notes".to_owned(), first)]);
        let stranger = UserId::new();
        stores.ledger.confirm_deletion(stranger, "notes", first).await.unwrap();
        assert!(stores.ledger.deletion(stranger).await.unwrap().is_none());
    })
    .await;
}

#[tokio::test]
async fn pruning_deletes_only_events_published_before_the_cut_off() {
    each_backend(async |stores| {
        let u = registered(&stores, "prune@example.com").await;
        logged_in(&stores, u.id, now()).await;
        let events = stores.outbox.events_of(u.id).await.unwrap();
        let t0 = now();
        stores.outbox.mark_published(&[events[0].event.id], t0).await.unwrap();
        assert_eq!(stores.outbox.prune_published(t0).await.unwrap(), 0, "the cut-off is exclusive");
        assert_eq!(stores.outbox.prune_published(t0 + Duration::seconds(1)).await.unwrap(), 1);
        let left = stores.outbox.events_of(u.id).await.unwrap();
        assert_eq!(kinds(&left), [EventKind::LoggedIn], "an unpublished event was pruned");
    })
    .await;
}

#[tokio::test]
async fn addresses_stored_before_normalisation_are_rewritten_once_and_clashes_reported() {
    for backend in Backend::available() {
        let db = TestDatabase::create(backend).await;
        let stores = open(&db.url, true).await.unwrap();
        // Rows as an older release wrote them.
        let stored = |raw: &str| User { email: Email::stored(raw.to_owned()), ..user("placeholder@example.com") };
        let decomposed = stored("re\u{301}my@example.com");
        let unicode_domain = stored("ana@bücher.de");
        let punycoded = stored("ana@xn--bcher-kva.de");
        let reordered = stored("eve\u{202E}@example.com");
        for u in [&decomposed, &unicode_domain, &punycoded, &reordered] {
            stores.users.create_user(u, &DomainEvent::registered(u, "password", u.created_at)).await.unwrap();
        }
        let forget = "DELETE FROM gatehouse_migrations WHERE version = 1007";
        let reports = match backend {
            Backend::Sqlite => {
                let pool = sqlx::SqlitePool::connect(&db.url).await.unwrap();
                sqlx::query(forget).execute(&pool).await.unwrap();
                auth_store::migrations::normalise_sqlite(&pool).await.unwrap()
            }
            Backend::Postgres => {
                let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
                sqlx::query(forget).execute(&pool).await.unwrap();
                auth_store::migrations::normalise_postgres(&pool).await.unwrap()
            }
        };
        let users = stores.users.clone();
        let found = async |raw: &str| users.user_by_email(&Email::parse(raw).unwrap()).await.unwrap().map(|u| u.id);
        assert_eq!(found("r\u{e9}my@example.com").await, Some(decomposed.id), "rewritten to its NFC form");
        assert_eq!(found("ana@Bücher.DE").await, Some(punycoded.id), "the one already in normal form keeps it");
        let stuck = stores.users.user_by_id(unicode_domain.id).await.unwrap().unwrap();
        assert_eq!(stuck.email.as_str(), "ana@bücher.de", "a clash is left for the operator");
        assert_eq!(reports.len(), 2, "{reports:?}");
        assert!(reports.iter().any(|r| r.contains(&unicode_domain.id.to_string())), "{reports:?}");
        assert!(reports.iter().any(|r| r.contains(&reordered.id.to_string())), "{reports:?}");
        assert!(reports.iter().all(|r| !r.contains('@')), "reports name ids, not addresses: {reports:?}");
        // Once only.
        let again = match backend {
            Backend::Sqlite => auth_store::SqliteStore::connect(&db.url).await.unwrap().migrate().await.unwrap(),
            Backend::Postgres => auth_store::PgStore::connect(&db.url).await.unwrap().migrate().await.unwrap(),
        };
        assert!(again.is_empty());
    }
}
