//! Revoked sessions and users, held in memory by each gateway (DESIGN §6).
//!
//! Entries carry the time after which no token they could match is still
//! valid, and are pruned after it, so the set only ever holds what the last
//! access-token lifetime could need.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use auth_core::{RevocationSink, SessionId, UserId};
use time::OffsetDateTime;

#[derive(Debug, Default)]
struct Entries {
    /// session id → unix time after which the entry can go.
    sessions: HashMap<String, i64>,
    /// user id → (not_before, unix time after which the entry can go).
    users: HashMap<String, (i64, i64)>,
    /// user id → (the lowest token version still current, time after which
    /// the entry can go): its roles changed.
    versions: HashMap<String, (i64, i64)>,
}

#[derive(Debug, Default)]
pub struct RevocationSet {
    entries: RwLock<Entries>,
    /// Moves on every revocation, after the entry is in: a token found not
    /// revoked at generation `g` is still not revoked while the generation is
    /// `g` (pruning only drops entries no live token matches).
    generation: AtomicU64,
}

impl RevocationSet {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn revoke_session(&self, sid: &str, until: i64) {
        let mut e = self.entries.write().unwrap_or_else(|e| e.into_inner());
        let slot = e.sessions.entry(sid.to_owned()).or_insert(until);
        *slot = (*slot).max(until);
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// Tokens of `uid` issued at or before `not_before` are revoked.
    pub fn revoke_user(&self, uid: &str, not_before: i64, until: i64) {
        let mut e = self.entries.write().unwrap_or_else(|e| e.into_inner());
        let slot = e.users.entry(uid.to_owned()).or_insert((not_before, until));
        *slot = (slot.0.max(not_before), slot.1.max(until));
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// Tokens of `uid` minted from a version below `version` are stale.
    pub fn outdate_user(&self, uid: &str, version: i64, until: i64) {
        let mut e = self.entries.write().unwrap_or_else(|e| e.into_inner());
        let slot = e.versions.entry(uid.to_owned()).or_insert((version, until));
        *slot = (slot.0.max(version), slot.1.max(until));
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// Read before [`RevocationSet::is_revoked`]; see the field's comment.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Whether a token of session `sid`, user `sub`, issued at `iat` is revoked.
    pub fn is_revoked(&self, sid: &str, sub: &str, iat: i64) -> bool {
        self.revocation(sid, sub, iat, i64::MAX).is_some()
    }

    /// What revoked a token of session `sid`, user `sub`, issued at `iat`
    /// from token version `version`: its session, or a change to its user
    /// after `iat` or since `version`.
    pub fn revocation(&self, sid: &str, sub: &str, iat: i64, version: i64) -> Option<Revocation> {
        let e = self.entries.read().unwrap_or_else(|e| e.into_inner());
        if e.sessions.contains_key(sid) {
            Some(Revocation::Session)
        } else if e.users.get(sub).is_some_and(|(not_before, _)| iat <= *not_before)
            || e.versions.get(sub).is_some_and(|(current, _)| version < *current)
        {
            Some(Revocation::User)
        } else {
            None
        }
    }

    /// Drops entries no live token can match any more.
    pub fn prune(&self, now: i64) {
        let mut e = self.entries.write().unwrap_or_else(|e| e.into_inner());
        e.sessions.retain(|_, until| *until > now);
        e.users.retain(|_, (_, until)| *until > now);
        e.versions.retain(|_, (_, until)| *until > now);
    }

    pub fn len(&self) -> usize {
        let e = self.entries.read().unwrap_or_else(|e| e.into_inner());
        e.sessions.len() + e.users.len() + e.versions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Why a token is revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revocation {
    /// Its session ended (logout, revoked, refresh token reused).
    Session,
    /// Its user changed after it was issued: stale.
    User,
}

/// What keeps a gateway's set current.
pub trait RevocationFeed: Send + Sync + 'static {
    fn set(&self) -> &RevocationSet;
    /// `false` while the feed cannot vouch that the set is complete; the
    /// gateway then refuses authenticated requests (fail closed).
    fn is_current(&self) -> bool;
}

/// The feed of `gatehouse up`: the auth-service in the same process writes
/// straight into the gateway's set, so it is always current.
#[derive(Debug, Default, Clone)]
pub struct InProcessFeed {
    set: Arc<RevocationSet>,
}

impl InProcessFeed {
    pub fn new() -> Self {
        Self::default()
    }

    /// The set this feed writes, for a watch of other processes' revocations
    /// to write into as well.
    pub fn shared_set(&self) -> Arc<RevocationSet> {
        self.set.clone()
    }
}

impl RevocationFeed for InProcessFeed {
    fn set(&self) -> &RevocationSet {
        &self.set
    }

    fn is_current(&self) -> bool {
        true
    }
}

#[async_trait]
impl RevocationSink for InProcessFeed {
    async fn session_revoked(&self, session: SessionId, until: OffsetDateTime) {
        self.set.revoke_session(&session.to_string(), until.unix_timestamp());
    }

    async fn user_revoked(&self, user: UserId, not_before: OffsetDateTime, until: OffsetDateTime) {
        self.set.revoke_user(&user.to_string(), not_before.unix_timestamp(), until.unix_timestamp());
    }

    async fn tokens_outdated(&self, user: UserId, version: i64, until: OffsetDateTime) {
        self.set.outdate_user(&user.to_string(), version, until.unix_timestamp());
    }
}

/// Applies the revocations that relayed events imply to an in-process
/// feed: what another process (`gatehouse users …` on the same database)
/// changed reaches the gateway of `gatehouse up` through the outbox.
pub struct RevocationsFromEvents {
    pub feed: Arc<InProcessFeed>,
    /// How long an entry must stand: the longest token lifetime.
    pub reach: i64,
}

#[async_trait]
impl crate::EventHandler for RevocationsFromEvents {
    async fn handle(&self, event: &crate::CloudEvent) -> Result<(), String> {
        let Ok(at) = OffsetDateTime::parse(&event.time, &time::format_description::well_known::Rfc3339) else {
            return Ok(());
        };
        let (at, until) = (at.unix_timestamp(), at.unix_timestamp() + self.reach);
        match event.kind.as_str() {
            "user.logged_out" => {
                if let Some(sid) = event.data["session_id"].as_str() {
                    self.feed.set.revoke_session(sid, until);
                }
            }
            "user.deleted" => self.feed.set.revoke_user(&event.subject, at, until),
            // Events written before tokens had versions carry none: every
            // token issued up to the change is stale instead.
            "user.disabled" | "user.roles_changed" => match event.data["version"].as_i64() {
                Some(version) => self.feed.set.outdate_user(&event.subject, version, until),
                None => self.feed.set.revoke_user(&event.subject, at, until),
            },
            _ => {}
        }
        Ok(())
    }
}

/// Tells every one of several sinks (the local gateway and NATS, in `up` with NATS).
pub struct FanOut(pub Vec<Arc<dyn RevocationSink>>);

#[async_trait]
impl RevocationSink for FanOut {
    async fn session_revoked(&self, session: SessionId, until: OffsetDateTime) {
        for sink in &self.0 {
            sink.session_revoked(session, until).await;
        }
    }

    async fn user_revoked(&self, user: UserId, not_before: OffsetDateTime, until: OffsetDateTime) {
        for sink in &self.0 {
            sink.user_revoked(user, not_before, until).await;
        }
    }

    async fn tokens_outdated(&self, user: UserId, version: i64, until: OffsetDateTime) {
        for sink in &self.0 {
            sink.tokens_outdated(user, version, until).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revoked_sessions_and_users_match_until_pruned() {
        let set = RevocationSet::new();
        set.revoke_session("s1", 100);
        set.revoke_user("u1", 50, 200);
        assert!(set.is_revoked("s1", "anyone", 10));
        assert!(set.is_revoked("s2", "u1", 50));
        assert!(!set.is_revoked("s2", "u1", 51), "a token issued after the cut-off stands");
        assert!(!set.is_revoked("s2", "u2", 10));
        assert_eq!(set.len(), 2);
        set.prune(150);
        assert!(!set.is_revoked("s1", "anyone", 10));
        assert!(set.is_revoked("s2", "u1", 50));
        set.prune(200);
        assert!(set.is_empty());
    }

    #[test]
    fn a_token_of_an_older_version_is_stale_whenever_it_was_issued() {
        let set = RevocationSet::new();
        set.outdate_user("u", 3, 200);
        assert_eq!(set.revocation("s", "u", 1_000, 2), Some(Revocation::User), "issued later, minted from v2");
        assert_eq!(set.revocation("s", "u", 10, 3), None);
        set.outdate_user("u", 2, 300);
        assert_eq!(set.revocation("s", "u", 10, 2), Some(Revocation::User), "versions only rise");
        set.prune(300);
        assert!(set.is_empty());
    }

    #[test]
    fn a_later_revocation_never_shortens_an_earlier_one() {
        let set = RevocationSet::new();
        set.revoke_user("u", 80, 300);
        set.revoke_user("u", 60, 200);
        assert!(set.is_revoked("s", "u", 80));
        set.prune(250);
        assert!(set.is_revoked("s", "u", 80));
    }

    #[test]
    fn every_revocation_moves_the_generation_and_pruning_does_not() {
        let set = RevocationSet::new();
        let start = set.generation();
        set.revoke_session("s", 100);
        let after_session = set.generation();
        assert_ne!(after_session, start);
        set.revoke_user("u", 10, 100);
        assert_ne!(set.generation(), after_session);
        let before_prune = set.generation();
        set.prune(1_000);
        assert_eq!(set.generation(), before_prune, "pruning revokes nothing new");
    }
}
