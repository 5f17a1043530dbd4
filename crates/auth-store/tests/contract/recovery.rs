//! Reset and verification tokens, the mail queue and throttle windows.

use auth_core::mail::Mail;
use auth_core::{DomainEvent, Email, EmailToken, EventKind, OpaqueSecret, TokenPurpose, User};
use auth_store::Stores;
use time::{Duration, OffsetDateTime};

use crate::{each_backend, kinds, logged_in, now, registered};

fn mail_to(user: &User, subject: &str) -> Mail {
    Mail { to: user.email.clone(), subject: subject.into(), text: "text".into(), html: "<p>html</p>".into() }
}

async fn issue(stores: &Stores, user: &User, purpose: TokenPurpose, at: OffsetDateTime) -> OpaqueSecret {
    let secret = OpaqueSecret::generate();
    let token = EmailToken {
        hash: secret.hash(),
        user_id: user.id,
        purpose,
        created_at: at,
        expires_at: at + Duration::minutes(15),
    };
    stores.recovery.issue_token(&token, &mail_to(user, purpose.as_str())).await.unwrap();
    secret
}

#[tokio::test]
async fn a_reset_token_works_once_for_its_owner_and_purpose_before_it_expires() {
    each_backend(async |stores: Stores| {
        let t0 = now();
        let alice = registered(&stores, "alice@example.com").await;
        let bob = registered(&stores, "bob@example.com").await;
        let (s1, _) = logged_in(&stores, alice.id, t0).await;
        let (s2, _) = logged_in(&stores, alice.id, t0).await;
        let token = issue(&stores, &alice, TokenPurpose::PasswordReset, t0).await;
        let owner = |purpose, at| {
            let stores = stores.clone();
            let hash = token.hash();
            async move { stores.recovery.token_owner(&hash, purpose, at).await.unwrap() }
        };
        assert_eq!(owner(TokenPurpose::PasswordReset, t0).await, Some(alice.id));
        assert_eq!(owner(TokenPurpose::VerifyEmail, t0).await, None, "another purpose");
        assert_eq!(owner(TokenPurpose::PasswordReset, t0 + Duration::minutes(15)).await, None, "expired");
        let event = DomainEvent::password_reset(alice.id, t0);
        let notice = mail_to(&alice, "changed");
        let wrong_user = stores.recovery.reset_password(&token.hash(), bob.id, "phc-b", &event, &notice).await.unwrap();
        assert_eq!(wrong_user, None, "a token resets only its owner");
        let revoked =
            stores.recovery.reset_password(&token.hash(), alice.id, "phc-new", &event, &notice).await.unwrap();
        let mut revoked = revoked.expect("the token was valid");
        revoked.sort();
        let mut both = vec![s1.id, s2.id];
        both.sort();
        assert_eq!(revoked, both, "every session ends");
        let again = stores.recovery.reset_password(&token.hash(), alice.id, "phc-x", &event, &notice).await.unwrap();
        assert_eq!(again, None, "single use");
        let stored = stores.users.user_by_id(alice.id).await.unwrap().unwrap();
        assert_eq!(stored.password_hash.as_deref(), Some("phc-new"));
        assert!(stored.email_verified, "the link proved the address");
        let events = stores.outbox.events_of(alice.id).await.unwrap();
        assert_eq!(kinds(&events).iter().filter(|k| **k == EventKind::PasswordReset).count(), 1);
        assert_eq!(kinds(&events).iter().filter(|k| **k == EventKind::LoggedOut).count(), 2);
    })
    .await;
}

#[tokio::test]
async fn a_newer_token_voids_the_older_one_and_its_unsent_mail() {
    each_backend(async |stores: Stores| {
        let t0 = now();
        let alice = registered(&stores, "alice@example.com").await;
        let verify = issue(&stores, &alice, TokenPurpose::VerifyEmail, t0).await;
        let first = issue(&stores, &alice, TokenPurpose::PasswordReset, t0).await;
        let second = issue(&stores, &alice, TokenPurpose::PasswordReset, t0).await;
        let reset = TokenPurpose::PasswordReset;
        assert_eq!(stores.recovery.token_owner(&first.hash(), reset, t0).await.unwrap(), None);
        assert_eq!(stores.recovery.token_owner(&second.hash(), reset, t0).await.unwrap(), Some(alice.id));
        let other = TokenPurpose::VerifyEmail;
        assert_eq!(
            stores.recovery.token_owner(&verify.hash(), other, t0).await.unwrap(),
            Some(alice.id),
            "other purposes stay"
        );
        let queued = stores.mail.claim_mail(t0, Duration::minutes(1), 10).await.unwrap();
        let subjects: Vec<&str> = queued.iter().map(|q| q.mail.subject.as_str()).collect();
        assert_eq!(subjects.len(), 2, "the voided token's mail is gone: {subjects:?}");
    })
    .await;
}

#[tokio::test]
async fn claimed_mail_is_not_offered_again_until_its_lease_ends_and_leaves_once_sent() {
    each_backend(async |stores: Stores| {
        let t0 = now();
        let alice = registered(&stores, "alice@example.com").await;
        stores.mail.queue_mail(&mail_to(&alice, "one"), t0, t0 + Duration::hours(1)).await.unwrap();
        let lease = Duration::minutes(1);
        let claimed = stores.mail.claim_mail(t0, lease, 10).await.unwrap();
        assert_eq!(claimed.len(), 1);
        assert_eq!(claimed[0].attempts, 1);
        assert_eq!(claimed[0].mail.to, Email::parse("alice@example.com").unwrap());
        assert!(stores.mail.claim_mail(t0, lease, 10).await.unwrap().is_empty(), "leased");
        let retried = stores.mail.claim_mail(t0 + lease, lease, 10).await.unwrap();
        assert_eq!(retried.len(), 1, "a relay that died leaves it to another");
        assert_eq!(retried[0].attempts, 2);
        stores.mail.mail_failed(retried[0].id, t0 + Duration::minutes(5)).await.unwrap();
        assert!(stores.mail.claim_mail(t0 + Duration::minutes(4), lease, 10).await.unwrap().is_empty());
        let due = stores.mail.claim_mail(t0 + Duration::minutes(5), lease, 10).await.unwrap();
        stores.mail.mail_sent(due[0].id).await.unwrap();
        assert!(stores.mail.claim_mail(t0 + Duration::minutes(30), lease, 10).await.unwrap().is_empty());
        stores.mail.queue_mail(&mail_to(&alice, "late"), t0, t0 + Duration::hours(1)).await.unwrap();
        assert_eq!(stores.mail.tidy(t0 + Duration::hours(1)).await.unwrap(), 1, "past its time, dropped unsent");
    })
    .await;
}

#[tokio::test]
async fn a_verification_token_marks_the_address_verified_once() {
    each_backend(async |stores: Stores| {
        let t0 = now();
        let alice = registered(&stores, "alice@example.com").await;
        let token = issue(&stores, &alice, TokenPurpose::VerifyEmail, t0).await;
        let event = DomainEvent::email_verified(alice.id, t0);
        assert!(stores.recovery.verify_email(&token.hash(), alice.id, &event).await.unwrap());
        assert!(!stores.recovery.verify_email(&token.hash(), alice.id, &event).await.unwrap(), "single use");
        assert!(stores.users.user_by_id(alice.id).await.unwrap().unwrap().email_verified);
        stores.users.delete_user(alice.id, &DomainEvent::deleted(alice.id, t0)).await.unwrap();
        assert_eq!(stores.recovery.token_owner(&token.hash(), TokenPurpose::VerifyEmail, t0).await.unwrap(), None);
    })
    .await;
}

#[tokio::test]
async fn parallel_hits_on_one_key_are_each_counted_and_a_window_ends() {
    each_backend(async |stores: Stores| {
        let t0 = now();
        let window = Duration::minutes(15);
        let hits = (0..40).map(|_| {
            let stores = stores.clone();
            tokio::spawn(async move { stores.throttle.hit("forgot:ip:192.0.2.1", window, t0).await.unwrap().count })
        });
        let mut counts = Vec::new();
        for hit in hits {
            counts.push(hit.await.unwrap());
        }
        counts.sort_unstable();
        assert_eq!(counts, (1..=40).collect::<Vec<u32>>(), "no two requests saw the same count");
        let last = stores.throttle.hit("forgot:ip:192.0.2.1", window, t0 + Duration::minutes(14)).await.unwrap();
        assert_eq!((last.count, last.window_ends), (41, t0 + window));
        let fresh = stores.throttle.hit("forgot:ip:192.0.2.1", window, t0 + window).await.unwrap();
        assert_eq!((fresh.count, fresh.window_ends), (1, t0 + window + window));
        assert_eq!(stores.throttle.hit("other", window, t0).await.unwrap().count, 1);
    })
    .await;
}

#[tokio::test]
async fn a_login_racing_a_reset_opens_no_session_and_a_rehash_cannot_undo_it() {
    each_backend(async |stores: Stores| {
        let t0 = now();
        let alice = registered(&stores, "alice@example.com").await;
        let old = alice.password_hash.clone().unwrap();
        let token = issue(&stores, &alice, TokenPurpose::PasswordReset, t0).await;
        let event = DomainEvent::password_reset(alice.id, t0);
        stores
            .recovery
            .reset_password(&token.hash(), alice.id, "phc-new", &event, &mail_to(&alice, "n"))
            .await
            .unwrap();
        // A login that checked the old hash before the reset committed:
        let late = crate::session(alice.id, t0);
        let logged_in = DomainEvent::logged_in(alice.id, late.id, t0);
        let refresh = OpaqueSecret::generate().hash();
        let before = stores.outbox.events_of(alice.id).await.unwrap().len();
        assert!(!crate::open_session(&stores, &late, &refresh, &logged_in, Some(&old), None).await.unwrap());
        assert_eq!(stores.sessions.session(late.id).await.unwrap(), None);
        assert_eq!(stores.outbox.events_of(alice.id).await.unwrap().len(), before, "a refused session left its event");
        assert!(!stores.users.replace_password_hash(alice.id, &old, "phc-rehashed-old").await.unwrap());
        assert_eq!(stores.users.user_by_id(alice.id).await.unwrap().unwrap().password_hash.as_deref(), Some("phc-new"));
        let current = crate::session(alice.id, t0);
        let logged_in = DomainEvent::logged_in(alice.id, current.id, t0);
        assert!(crate::open_session(&stores, &current, &refresh, &logged_in, Some("phc-new"), None).await.unwrap());
        let (keep, _) = logged_in_pair(&stores, &alice).await;
        let changed = stores
            .recovery
            .change_password(
                alice.id,
                &old,
                "phc-x",
                keep,
                &DomainEvent::password_changed(alice.id, t0),
                &mail_to(&alice, "c"),
            )
            .await
            .unwrap();
        assert_eq!(changed, None, "a change checked against the old hash loses to the reset");
    })
    .await;
}

async fn logged_in_pair(stores: &Stores, user: &User) -> (auth_core::SessionId, OpaqueSecret) {
    let (session, refresh) = logged_in(stores, user.id, now()).await;
    (session.id, refresh)
}

#[tokio::test]
async fn a_session_clears_the_failed_login_count_with_it_and_a_refused_one_leaves_it() {
    use auth_core::throttling::AttemptPolicy;
    each_backend(async |stores: Stores| {
        let policy = AttemptPolicy::default();
        let ann = registered(&stores, "ann@example.com").await;
        let phc = ann.password_hash.clone().unwrap();
        let t0 = now();
        let claim = async || stores.throttle.claim_attempt("login:ann", &policy, t0).await.unwrap();
        let bob = async || stores.throttle.claim_attempt("login:bob", &policy, t0).await.unwrap();
        for _ in 0..4 {
            assert_eq!(claim().await, None);
            assert_eq!(bob().await, None);
        }
        assert_eq!(bob().await, None);
        // Refused: the hash its login checked is not the account's.
        let late = crate::session(ann.id, t0);
        let event = DomainEvent::logged_in(ann.id, late.id, t0);
        let refresh = OpaqueSecret::generate().hash();
        let opened = crate::open_session(&stores, &late, &refresh, &event, Some("phc-old"), Some("login:ann"));
        assert!(!opened.await.unwrap());
        assert_eq!(claim().await, None, "the fifth failure");
        assert!(claim().await.is_some(), "a refused session cleared the count");
        // Opened: the count is gone with it, and counts again from nothing.
        let s = crate::session(ann.id, t0);
        let event = DomainEvent::logged_in(ann.id, s.id, t0);
        let opened = crate::open_session(&stores, &s, &refresh, &event, Some(&phc), Some("login:ann"));
        assert!(opened.await.unwrap());
        for _ in 0..5 {
            assert_eq!(claim().await, None, "cleared with the session");
        }
        assert!(claim().await.is_some(), "counted again");
        assert!(bob().await.is_some(), "another address's count went too");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parallel_login_attempts_on_one_address_get_exactly_the_free_ones() {
    use auth_core::throttling::AttemptPolicy;
    each_backend(async |stores: Stores| {
        let policy = AttemptPolicy::default();
        let t0 = now();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..100 {
            let stores = stores.clone();
            tasks.spawn(async move { stores.throttle.claim_attempt("login:k", &policy, t0).await.unwrap() });
        }
        let mut counted = 0;
        while let Some(claim) = tasks.join_next().await {
            if claim.unwrap().is_none() {
                counted += 1;
            }
        }
        assert_eq!(counted, 5, "checked and counted in one step");
        let wait = stores.throttle.claim_attempt("login:k", &policy, t0).await.unwrap();
        assert_eq!(wait, Some(Duration::seconds(1)), "the fifth failure sets a 1 s wait");
        let t1 = t0 + Duration::seconds(1);
        assert_eq!(stores.throttle.claim_attempt("login:k", &policy, t1).await.unwrap(), None);
        let wait = stores.throttle.claim_attempt("login:k", &policy, t1).await.unwrap();
        assert_eq!(wait, Some(Duration::seconds(2)), "then it doubles");
        assert_eq!(stores.throttle.claim_attempt("login:other", &policy, t1).await.unwrap(), None, "per key");
        stores.throttle.clear_attempts("login:k").await.unwrap();
        for _ in 0..5 {
            assert_eq!(stores.throttle.claim_attempt("login:k", &policy, t1).await.unwrap(), None, "cleared");
        }
        assert!(stores.throttle.claim_attempt("login:k", &policy, t1).await.unwrap().is_some(), "counted again");
        // Claims that read the clock before another but got the lock after
        // it are not refused while no wait is due.
        for key in ["login:new", "login:fresh"] {
            assert_eq!(stores.throttle.claim_attempt(key, &policy, t1).await.unwrap(), None);
            let earlier = t1 - Duration::milliseconds(3);
            assert_eq!(stores.throttle.claim_attempt(key, &policy, earlier).await.unwrap(), None, "{key}");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bucket_gives_its_burst_to_parallel_takers_then_refills_at_its_rate() {
    use auth_core::throttling::Bucket;
    each_backend(async |stores: Stores| {
        let bucket = Bucket { burst: 10, per_minute: 6 };
        let t0 = now();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..50 {
            let stores = stores.clone();
            tasks.spawn(async move { stores.throttle.take("login:192.0.2.1", bucket, t0).await.unwrap() });
        }
        let mut taken = 0;
        while let Some(take) = tasks.join_next().await {
            match take.unwrap() {
                None => taken += 1,
                Some(wait) => assert_eq!(wait, Duration::seconds(10), "one token every 10 s"),
            }
        }
        assert_eq!(taken, 10);
        let t1 = t0 + Duration::seconds(10);
        assert_eq!(stores.throttle.take("login:192.0.2.1", bucket, t1).await.unwrap(), None, "refilled by one");
        assert!(stores.throttle.take("login:192.0.2.1", bucket, t1).await.unwrap().is_some());
        assert_eq!(stores.throttle.take("login:192.0.2.2", bucket, t1).await.unwrap(), None, "per key");
        // Tidying drops idle buckets (full again anyway) and failures
        // quiet for 30 days, and keeps a wait that still runs.
        let policy = auth_core::throttling::AttemptPolicy::default();
        for _ in 0..5 {
            stores.throttle.claim_attempt("login:quiet", &policy, t0).await.unwrap();
        }
        stores.mail.tidy(t0 + Duration::days(31)).await.unwrap();
        let later = t0 + Duration::days(31);
        assert_eq!(stores.throttle.claim_attempt("login:quiet", &policy, later).await.unwrap(), None);
        for _ in 0..4 {
            assert_eq!(stores.throttle.claim_attempt("login:quiet", &policy, later).await.unwrap(), None, "forgotten");
        }
    })
    .await;
}

/// SQLite counts without a write transaction: a claim dropped after its
/// read, its write waiting for the file's write lock, must still land
/// before any later claim reads, or the later one counts on from a stale
/// number and a guess goes uncounted.
#[tokio::test]
async fn on_sqlite_a_claim_dropped_midway_still_counts_before_the_next_one_reads() {
    use auth_core::Throttle as _;
    use auth_core::throttling::AttemptPolicy;
    use auth_store::testing::{Backend, TestDatabase};
    use sqlx::Connection as _;

    let db = TestDatabase::create(Backend::Sqlite).await;
    let store = auth_store::SqliteStore::connect(&db.url).await.unwrap();
    store.migrate().await.unwrap();
    let policy = AttemptPolicy { free_failures: 50, ..AttemptPolicy::default() };
    let t0 = now();
    assert_eq!(store.claim_attempt("login:k", &policy, t0).await.unwrap(), None);

    // Another connection holds the write lock: reads go on, writes wait.
    let mut holder = sqlx::SqliteConnection::connect(&db.url).await.unwrap();
    sqlx::query("BEGIN IMMEDIATE").execute(&mut holder).await.unwrap();
    let dropped = tokio::time::timeout(std::time::Duration::from_secs(2), store.claim_attempt("login:k", &policy, t0));
    assert!(dropped.await.is_err(), "the claim finished while the write lock was held");
    let next = tokio::spawn({
        let store = store.clone();
        async move { store.claim_attempt("login:k", &policy, t0).await.unwrap() }
    });
    sqlx::query("COMMIT").execute(&mut holder).await.unwrap();
    assert_eq!(next.await.unwrap(), None);

    let failures: i64 = sqlx::query_scalar("SELECT failures FROM login_attempts WHERE key = 'login:k'")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(failures, 3, "the dropped claim's count was lost");
}

/// The same, with the counts shared by two stores on one SQLite file (two
/// counting connections, as when a connection's return to the pool was
/// lost): each write lands only over what it read.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_sqlite_two_counting_connections_racing_still_get_exactly_the_free_ones() {
    use auth_core::Throttle as _;
    use auth_core::throttling::{AttemptPolicy, Bucket};
    use auth_store::testing::{Backend, TestDatabase};

    let db = TestDatabase::create(Backend::Sqlite).await;
    let one = auth_store::SqliteStore::connect(&db.url).await.unwrap();
    one.migrate().await.unwrap();
    let two = auth_store::SqliteStore::connect(&db.url).await.unwrap();
    let (policy, bucket, t0) = (AttemptPolicy::default(), Bucket { burst: 10, per_minute: 1 }, now());
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..100 {
        let store = if i % 2 == 0 { one.clone() } else { two.clone() };
        tasks.spawn(async move {
            let claimed = store.claim_attempt("login:k", &policy, t0).await.unwrap().is_none();
            let taken = store.take("login:192.0.2.1", bucket, t0).await.unwrap().is_none();
            (claimed, taken)
        });
    }
    let (mut claimed, mut taken) = (0, 0);
    while let Some(done) = tasks.join_next().await {
        let (c, t) = done.unwrap();
        claimed += usize::from(c);
        taken += usize::from(t);
    }
    assert_eq!((claimed, taken), (5, 10), "counted over another connection's count");
}

/// On SQLite a count starts from the row as the store last saw it, a
/// guess its write checks: a row changed or removed behind the store's
/// back (by tidying, another process, an operator) is counted as it is,
/// and a wait the store remembers is not kept once the row says otherwise.
#[tokio::test]
async fn on_sqlite_counts_follow_rows_changed_behind_the_store() {
    use auth_core::Throttle as _;
    use auth_core::throttling::{AttemptPolicy, Bucket};
    use auth_store::testing::{Backend, TestDatabase};

    let db = TestDatabase::create(Backend::Sqlite).await;
    let store = auth_store::SqliteStore::connect(&db.url).await.unwrap();
    store.migrate().await.unwrap();
    let (policy, t0) = (AttemptPolicy::default(), now());
    let behind = |sql: &'static str| {
        let pool = store.pool().clone();
        async move { sqlx::query(sql).execute(&pool).await.unwrap() }
    };
    let failures = || async {
        sqlx::query_scalar::<_, i64>("SELECT failures FROM login_attempts WHERE key = 'login:k'")
            .fetch_optional(store.pool())
            .await
            .unwrap()
    };
    let claimed = || async { store.claim_attempt("login:k", &policy, t0).await.unwrap().is_none() };

    for _ in 0..3 {
        assert!(claimed().await);
    }
    behind("DELETE FROM login_attempts").await;
    assert!(claimed().await);
    assert_eq!(failures().await, Some(1), "counted on from a removed row");

    // A wait started behind its back (far ahead of every test clock).
    behind("UPDATE login_attempts SET failures = 7, blocked_until = 99999999999999").await;
    assert!(!claimed().await, "admitted past a wait it had not seen");
    assert_eq!(failures().await, Some(7));

    behind("DELETE FROM login_attempts").await;
    assert!(claimed().await, "kept a wait the row no longer holds");
    assert_eq!(failures().await, Some(1));

    store.clear_attempts("login:k").await.unwrap();
    behind("INSERT INTO login_attempts (key, failures, blocked_until, last_at) VALUES ('login:k', 4, 0, 0)").await;
    assert!(claimed().await);
    assert_eq!(failures().await, Some(5), "counted over a row made after it cleared the count");

    let bucket = Bucket { burst: 3, per_minute: 1 };
    let taken = || async { store.take("login:192.0.2.1", bucket, t0).await.unwrap().is_none() };
    let tokens = || async {
        sqlx::query_scalar::<_, f64>("SELECT tokens FROM rate_buckets").fetch_optional(store.pool()).await.unwrap()
    };
    for _ in 0..3 {
        assert!(taken().await);
    }
    assert!(!taken().await);
    behind("DELETE FROM rate_buckets").await;
    assert!(taken().await, "kept an empty bucket the row no longer holds");
    assert_eq!(tokens().await, Some(2.0));
    behind("UPDATE rate_buckets SET tokens = 0").await;
    assert!(!taken().await, "took a token the row no longer holds");
    assert_eq!(tokens().await, Some(0.0));
}
