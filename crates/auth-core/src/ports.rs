//! The storage the use cases need. Every method that changes state writes its
//! events to the outbox in the same transaction.

use async_trait::async_trait;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::events::StoredEvent;
use crate::mail::{Mail, QueuedMail};
use crate::roles::AuditEntry;
use crate::session::RefreshRecord;
use crate::throttling::{AttemptPolicy, Bucket};
use crate::{DomainEvent, Email, SecretHash, Session, SessionId, User, UserId};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    #[error("conflicts with an existing record")]
    Conflict,
    #[error("storage unavailable: {0}")]
    Unavailable(String),
}

#[async_trait]
pub trait UserStore: Send + Sync + 'static {
    /// Inserts the user; [`StoreError::Conflict`] when the email is taken.
    async fn create_user(&self, user: &User, event: &DomainEvent) -> Result<(), StoreError>;
    async fn user_by_email(&self, email: &Email) -> Result<Option<User>, StoreError>;
    async fn user_by_id(&self, id: UserId) -> Result<Option<User>, StoreError>;
    async fn set_password_hash(&self, id: UserId, phc: &str) -> Result<(), StoreError>;
    /// Replaces `verified` by `phc` only if `verified` is still the user's
    /// hash (a rehash must never undo a reset); `false` otherwise.
    async fn replace_password_hash(&self, id: UserId, verified: &str, phc: &str) -> Result<bool, StoreError>;
    /// Removes the user and every row it owns (sessions, refresh tokens);
    /// [`StoreError::NotFound`] when there is no such user.
    async fn delete_user(&self, id: UserId, event: &DomainEvent) -> Result<(), StoreError>;
}

/// What a login writes with its session, in the session's transaction:
/// a session stands exactly when its token, its event and its audit entry
/// do, and the failed-login count it ends is gone with it.
#[derive(Debug, Clone, Copy)]
pub struct Opening<'a> {
    pub refresh: &'a SecretHash,
    /// `user.logged_in`.
    pub event: &'a DomainEvent,
    /// The password hash the login checked; `None` for a provider's login.
    pub verified: Option<&'a str>,
    /// The login's `login.succeeded`.
    pub audit: &'a AuditEntry,
    /// The key of the failed-login count the login clears (as
    /// [`Throttle::clear_attempts`] would), if it counted one. The stores
    /// of one database keep both, so it goes in the same transaction.
    pub clears: Option<&'a str>,
}

#[async_trait]
pub trait SessionStore: Send + Sync + 'static {
    /// Opens `session` with what [`Opening`] lists, all in one
    /// transaction, only while the account is not disabled and, with
    /// `verified` (the password hash the login checked), only while that is
    /// still the user's: a login racing a reset, a change or a disabling
    /// either comes first, and its session is revoked by it, or opens
    /// nothing and writes nothing (`false`).
    async fn create_session(&self, session: &Session, opening: &Opening<'_>) -> Result<bool, StoreError>;
    async fn session(&self, id: SessionId) -> Result<Option<Session>, StoreError>;
    /// Sessions of `user` that are neither revoked nor expired at `now`, newest first.
    async fn active_sessions(&self, user: UserId, now: OffsetDateTime) -> Result<Vec<Session>, StoreError>;
    async fn refresh_record(&self, token: &SecretHash) -> Result<Option<RefreshRecord>, StoreError>;
    /// Replaces `old` by `new` if and only if `old` is still the session's current
    /// token (compare-and-swap) and the session is not revoked, checked under
    /// the session's row lock so a refresh cannot outlive a concurrent
    /// revocation; `false` when another refresh got there first or the
    /// session was revoked.
    async fn rotate_refresh(
        &self,
        session: SessionId,
        old: &SecretHash,
        new: &SecretHash,
        now: OffsetDateTime,
        idle_expires_at: OffsetDateTime,
    ) -> Result<bool, StoreError>;
    /// Marks the session revoked and writes `user.logged_out`; `false` when it
    /// was already revoked or does not exist.
    async fn revoke_session(&self, id: SessionId, now: OffsetDateTime) -> Result<bool, StoreError>;
    /// Revokes every active session of `user` except `keep`, writing one
    /// `user.logged_out` each; returns the revoked ids.
    async fn revoke_sessions_of(
        &self,
        user: UserId,
        keep: Option<SessionId>,
        now: OffsetDateTime,
    ) -> Result<Vec<SessionId>, StoreError>;
}

#[async_trait]
pub trait Outbox: Send + Sync + 'static {
    /// Unpublished events, oldest first.
    async fn unpublished(&self, limit: u32) -> Result<Vec<StoredEvent>, StoreError>;
    /// Every event about `user`, oldest first (for tests and operators).
    async fn events_of(&self, user: UserId) -> Result<Vec<StoredEvent>, StoreError>;
    async fn mark_published(&self, ids: &[Uuid], now: OffsetDateTime) -> Result<(), StoreError>;
    /// Hands the oldest unpublished events (up to `limit`) to `sink` and marks
    /// those it accepted as published. On PostgreSQL one relay at a time holds
    /// the batch (advisory lock, rows `FOR UPDATE SKIP LOCKED`), so several
    /// processes may run relays and order is kept; a crash mid-batch leaves the
    /// rows unpublished, to be sent again (the broker deduplicates by id).
    async fn relay_batch(&self, limit: u32, sink: &dyn EventSink, now: OffsetDateTime) -> Result<usize, StoreError>;
    /// Deletes events published before `before`; returns how many.
    async fn prune_published(&self, before: OffsetDateTime) -> Result<u64, StoreError>;
}

/// Where the outbox relay delivers events: a message broker or an in-process bus.
#[async_trait]
pub trait EventSink: Send + Sync {
    /// Delivers `events` in order; returns how many, from the first, were
    /// durably accepted. Events after the first refusal count as not accepted.
    async fn deliver(&self, events: &[DomainEvent]) -> usize;
}

/// Told of every revocation right after it is committed, so that gateways
/// refuse the affected access tokens on their very next request.
#[async_trait]
pub trait RevocationSink: Send + Sync + 'static {
    /// Tokens of `session` are revoked; the entry matters until `until`.
    async fn session_revoked(&self, session: SessionId, until: OffsetDateTime);
    /// Tokens of `user` issued at or before `not_before` are revoked.
    async fn user_revoked(&self, user: UserId, not_before: OffsetDateTime, until: OffsetDateTime);
    /// Tokens of `user` minted from a version below `version` are stale
    /// (its roles changed); the entry matters until `until`.
    async fn tokens_outdated(&self, user: UserId, version: i64, until: OffsetDateTime);
}

/// For processes with no gateway to tell.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoRevocationSink;

#[async_trait]
impl RevocationSink for NoRevocationSink {
    async fn session_revoked(&self, _: SessionId, _: OffsetDateTime) {}
    async fn user_revoked(&self, _: UserId, _: OffsetDateTime, _: OffsetDateTime) {}
    async fn tokens_outdated(&self, _: UserId, _: i64, _: OffsetDateTime) {}
}

/// A deleted account as the ledger keeps it: when, and which services have
/// confirmed erasing it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeletionRecord {
    pub user_id: UserId,
    pub deleted_at: OffsetDateTime,
    /// (service, confirmed at), by service name.
    pub confirmations: Vec<(String, OffsetDateTime)>,
}

/// The deletion ledger. `UserStore::delete_user` opens the entry in its own
/// transaction; downstream services' confirmations fill it.
#[async_trait]
pub trait DeletionLedger: Send + Sync + 'static {
    /// Records that `service` erased `user` (idempotent: the first time counts).
    /// Confirmations for users this database never deleted are ignored.
    async fn confirm_deletion(&self, user: UserId, service: &str, at: OffsetDateTime) -> Result<(), StoreError>;
    async fn deletion(&self, user: UserId) -> Result<Option<DeletionRecord>, StoreError>;
}

/// What an emailed single-use token is for; a token of one purpose is
/// worthless for the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenPurpose {
    PasswordReset,
    VerifyEmail,
}

impl TokenPurpose {
    /// As stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PasswordReset => "password_reset",
            Self::VerifyEmail => "verify_email",
        }
    }
}

/// An emailed token as stored: only its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmailToken {
    pub hash: SecretHash,
    pub user_id: UserId,
    pub purpose: TokenPurpose,
    pub created_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
}

/// Password reset, password change and email verification: each change and
/// the mail it sends are one transaction.
#[async_trait]
pub trait RecoveryStore: Send + Sync + 'static {
    /// Stores `token`, voiding the user's unused tokens of the same purpose,
    /// and queues `mail` (which carries it) until `token.expires_at`.
    async fn issue_token(&self, token: &EmailToken, mail: &Mail) -> Result<(), StoreError>;
    /// The owner of a token of `purpose` that is unused and unexpired at `now`.
    async fn token_owner(
        &self,
        hash: &SecretHash,
        purpose: TokenPurpose,
        now: OffsetDateTime,
    ) -> Result<Option<UserId>, StoreError>;
    /// Uses up `user`'s reset token and, in the same transaction, sets the
    /// password (the link proved the address: it is marked verified),
    /// revokes every session (one `user.logged_out` each), writes `event`
    /// and queues `notice`. `None` when the token was no longer valid.
    async fn reset_password(
        &self,
        hash: &SecretHash,
        user: UserId,
        phc: &str,
        event: &DomainEvent,
        notice: &Mail,
    ) -> Result<Option<Vec<SessionId>>, StoreError>;
    /// Replaces the `verified` password hash by `phc`, revokes every session
    /// but `keep`, voids pending reset links, writes `event` and queues
    /// `notice`; returns the revoked sessions, or `None` when the hash is no
    /// longer `verified` (a reset got there first).
    async fn change_password(
        &self,
        user: UserId,
        verified: &str,
        phc: &str,
        keep: SessionId,
        event: &DomainEvent,
        notice: &Mail,
    ) -> Result<Option<Vec<SessionId>>, StoreError>;
    /// Uses up `user`'s verification token and marks the address verified,
    /// writing `event`; `false` when the token was no longer valid.
    async fn verify_email(&self, hash: &SecretHash, user: UserId, event: &DomainEvent) -> Result<bool, StoreError>;
}

/// The queue of mail not yet accepted by the mail server.
#[async_trait]
pub trait MailQueue: Send + Sync + 'static {
    /// Queues a message on its own, to be dropped unsent after `discard_after`.
    async fn queue_mail(
        &self,
        mail: &Mail,
        now: OffsetDateTime,
        discard_after: OffsetDateTime,
    ) -> Result<(), StoreError>;
    /// Up to `limit` messages due at `now`, each counted as attempted and
    /// not offered again before `now + lease`: a relay that dies while
    /// sending leaves its messages to another.
    async fn claim_mail(
        &self,
        now: OffsetDateTime,
        lease: time::Duration,
        limit: u32,
    ) -> Result<Vec<QueuedMail>, StoreError>;
    /// The message was accepted: it leaves the queue (with the link in it).
    async fn mail_sent(&self, id: Uuid) -> Result<(), StoreError>;
    /// Try again at `retry_at`.
    async fn mail_failed(&self, id: Uuid, retry_at: OffsetDateTime) -> Result<(), StoreError>;
    /// Drops messages past their `discard_after`, tokens expired a day ago
    /// and throttle windows over a day old; returns the messages dropped.
    async fn tidy(&self, now: OffsetDateTime) -> Result<u64, StoreError>;
}

/// How many times a key was hit in its current window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hits {
    pub count: u32,
    pub window_ends: OffsetDateTime,
}

/// Fixed-window counters shared by every process on the database: the
/// count and the check are one atomic statement, so parallel requests
/// cannot slip past a limit.
#[async_trait]
pub trait Throttle: Send + Sync + 'static {
    /// Counts one hit on `key` in a window of `window` (a new one starts
    /// when the last has ended) and returns the count so far.
    async fn hit(&self, key: &str, window: time::Duration, now: OffsetDateTime) -> Result<Hits, StoreError>;
    /// Takes a token from `key`'s bucket (full when new); `Some(wait)`
    /// until one is there, and then nothing is taken.
    async fn take(&self, key: &str, bucket: Bucket, now: OffsetDateTime) -> Result<Option<time::Duration>, StoreError>;
    /// Counts a login attempt on `key` as a failure until
    /// [`Self::clear_attempts`] says it succeeded, and sets the wait before
    /// the next one ([`AttemptPolicy::delay_after`]); `Some(wait)` while
    /// the key must wait, and then nothing is counted. Check and count are
    /// one step under the key's lock.
    async fn claim_attempt(
        &self,
        key: &str,
        policy: &AttemptPolicy,
        now: OffsetDateTime,
    ) -> Result<Option<time::Duration>, StoreError>;
    /// A success, or a password reset: the count starts again.
    async fn clear_attempts(&self, key: &str) -> Result<(), StoreError>;
}

/// A login at an OAuth or OpenID provider, tied to one account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalIdentity {
    pub id: Uuid,
    pub user_id: UserId,
    /// The configured provider's name (`google`, `corp-sso`).
    pub provider: String,
    pub issuer: String,
    pub subject: String,
    /// As the provider said it at the last login; informational only.
    pub email: Option<String>,
    pub created_at: OffsetDateTime,
}

#[async_trait]
pub trait IdentityStore: Send + Sync + 'static {
    /// The identity known by (`issuer`, `subject`).
    async fn identity(&self, issuer: &str, subject: &str) -> Result<Option<ExternalIdentity>, StoreError>;
    /// Creates `user` (who has no password) with its first `identity` and
    /// `event`, in one transaction; [`StoreError::Conflict`] when the email
    /// or the identity is taken.
    async fn create_user_with_identity(
        &self,
        user: &User,
        identity: &ExternalIdentity,
        event: &DomainEvent,
    ) -> Result<(), StoreError>;
    /// Ties `identity` to its (existing) user and queues `notice` to them,
    /// in one transaction; [`StoreError::Conflict`] when it is tied already.
    async fn link_identity(&self, identity: &ExternalIdentity, notice: &crate::mail::Mail) -> Result<(), StoreError>;
    async fn identities_of(&self, user: UserId) -> Result<Vec<ExternalIdentity>, StoreError>;
    /// Removes `user`'s identity `id`, unless it is the last way to log in
    /// (no password, no other identity); atomic against a parallel unlink.
    async fn unlink_identity(&self, user: UserId, id: Uuid) -> Result<Unlinked, StoreError>;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unlinked {
    Done,
    /// No such identity of this user.
    NotFound,
    /// It is the account's last way to log in.
    LastWay,
}
