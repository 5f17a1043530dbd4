//! Revocations handed from the auth-service to the gateway that relays its
//! answer, in the response header `Gatehouse-Revoked`, so that gateway
//! enforces a logout on the very next request instead of when its bucket
//! watch delivers it (tens of milliseconds later, or never while NATS is
//! away). A gateway believes the header only on the auth-service's own
//! routes and strips it from every response.
//!
//! The value is a comma-separated list of `session <sid> <until>` and
//! `user <uid> <not_before> <until>` (Unix seconds), or
//! `stale <uid> <version> <until>` (tokens minted from an older version).

use std::cell::RefCell;
use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use auth_core::{RevocationSink, SessionId, UserId};
use time::OffsetDateTime;

use crate::RevocationSet;

pub const HEADER: &str = "gatehouse-revoked";

/// At most this many revocations ride on one answer (about 2 KiB); beyond
/// them, the bucket brings the rest.
pub const MAX_ENTRIES: usize = 32;

tokio::task_local! {
    static RECORDED: RefCell<Vec<String>>;
}

/// Runs `answer`; returns its output and the header value for what it
/// revoked through a [`Recording`] sink, if anything.
pub async fn recording<F: Future>(answer: F) -> (F::Output, Option<String>) {
    RECORDED
        .scope(RefCell::new(Vec::new()), async move {
            let output = answer.await;
            let recorded = RECORDED.with(|r| r.take());
            let value = (!recorded.is_empty()).then(|| recorded.join(", "));
            (output, value)
        })
        .await
}

fn record(entry: String) {
    let _ = RECORDED.try_with(|r| {
        let mut r = r.borrow_mut();
        if r.len() < MAX_ENTRIES {
            r.push(entry);
        }
    });
}

/// A sink that also notes each revocation for the answer being made (see
/// [`recording`]), then tells `inner`.
pub struct Recording(pub Arc<dyn RevocationSink>);

#[async_trait]
impl RevocationSink for Recording {
    async fn session_revoked(&self, session: SessionId, until: OffsetDateTime) {
        record(format!("session {session} {}", until.unix_timestamp()));
        self.0.session_revoked(session, until).await;
    }

    async fn user_revoked(&self, user: UserId, not_before: OffsetDateTime, until: OffsetDateTime) {
        record(format!("user {user} {} {}", not_before.unix_timestamp(), until.unix_timestamp()));
        self.0.user_revoked(user, not_before, until).await;
    }

    async fn tokens_outdated(&self, user: UserId, version: i64, until: OffsetDateTime) {
        record(format!("stale {user} {version} {}", until.unix_timestamp()));
        self.0.tokens_outdated(user, version, until).await;
    }
}

/// Applies a header value to `set`; returns how many entries it held.
/// Malformed entries are skipped.
pub fn apply(value: &[u8], set: &RevocationSet) -> usize {
    let Ok(value) = std::str::from_utf8(value) else { return 0 };
    let id = |s: &str| !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    let mut applied = 0;
    for entry in value.split(',').take(MAX_ENTRIES) {
        let words: Vec<&str> = entry.split_ascii_whitespace().collect();
        let number = |s: &str| s.parse::<i64>().ok();
        match words[..] {
            ["session", sid, until] if id(sid) => {
                let Some(until) = number(until) else { continue };
                set.revoke_session(sid, until);
            }
            ["user", uid, not_before, until] if id(uid) => {
                let (Some(not_before), Some(until)) = (number(not_before), number(until)) else { continue };
                set.revoke_user(uid, not_before, until);
            }
            ["stale", uid, version, until] if id(uid) => {
                let (Some(version), Some(until)) = (number(version), number(until)) else { continue };
                set.outdate_user(uid, version, until);
            }
            _ => continue,
        }
        applied += 1;
    }
    applied
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Nothing;

    #[async_trait]
    impl RevocationSink for Nothing {
        async fn session_revoked(&self, _: SessionId, _: OffsetDateTime) {}
        async fn user_revoked(&self, _: UserId, _: OffsetDateTime, _: OffsetDateTime) {}
        async fn tokens_outdated(&self, _: UserId, _: i64, _: OffsetDateTime) {}
    }

    #[tokio::test]
    async fn what_an_answer_revokes_reaches_a_gateway_set_through_the_header() {
        let sink = Recording(Arc::new(Nothing));
        let (session, user) = (SessionId::new(), UserId::new());
        let at = |s| OffsetDateTime::from_unix_timestamp(s).unwrap();
        let promoted = UserId::new();
        let ((), value) = recording(async {
            sink.session_revoked(session, at(500)).await;
            sink.user_revoked(user, at(100), at(600)).await;
            sink.tokens_outdated(promoted, 4, at(600)).await;
        })
        .await;
        let set = RevocationSet::new();
        assert_eq!(apply(value.unwrap().as_bytes(), &set), 3);
        assert!(set.is_revoked(&session.to_string(), "other", 0));
        assert!(set.is_revoked("other", &user.to_string(), 100));
        assert!(!set.is_revoked("other", &user.to_string(), 101));
        assert!(set.revocation("other", &promoted.to_string(), 1_000, 3).is_some(), "minted from version 3");
        assert!(set.revocation("other", &promoted.to_string(), 0, 4).is_none());
    }

    /// Counts what it is told.
    #[derive(Default)]
    struct Counting(std::sync::atomic::AtomicUsize);

    #[async_trait]
    impl RevocationSink for Counting {
        async fn session_revoked(&self, _: SessionId, _: OffsetDateTime) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        async fn user_revoked(&self, _: UserId, _: OffsetDateTime, _: OffsetDateTime) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        async fn tokens_outdated(&self, _: UserId, _: i64, _: OffsetDateTime) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn an_answer_that_revokes_nothing_carries_no_header_and_outside_an_answer_the_sink_is_still_told() {
        let ((), value) = recording(async {}).await;
        assert_eq!(value, None);
        let counting = Arc::new(Counting::default());
        Recording(counting.clone()).session_revoked(SessionId::new(), OffsetDateTime::UNIX_EPOCH).await;
        assert_eq!(counting.0.load(std::sync::atomic::Ordering::SeqCst), 1);
        // Nor does a revocation made outside one leak into the next answer.
        let ((), value) = recording(async {}).await;
        assert_eq!(value, None);
    }

    #[test]
    fn malformed_entries_are_skipped() {
        let set = RevocationSet::new();
        let value = b"session abc-1 10, session x\xffy 10, user u1 5, session has space 10, nonsense, user ab 1 2";
        assert_eq!(apply(value, &set), 0, "not UTF-8: nothing");
        let value = "session abc-1 10, session ../x 10, user u1 5, nonsense, user ab 1 2, session cd 1e3";
        assert_eq!(apply(value.as_bytes(), &set), 2);
        assert!(set.is_revoked("abc-1", "", 0));
        assert!(set.is_revoked("", "ab", 1));
        assert!(!set.is_revoked("cd", "", 0));
    }
}
