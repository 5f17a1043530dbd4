//! Domain events (DESIGN §7), written to the outbox in the same transaction as
//! the change they report.

use serde_json::{Value, json};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{SessionId, User, UserId};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    Registered,
    LoggedIn,
    LoggedOut,
    PasswordReset,
    PasswordChanged,
    EmailVerified,
    RolesChanged,
    Disabled,
    Enabled,
    Deleted,
}

impl EventKind {
    pub const ALL: [Self; 10] = [
        Self::Registered,
        Self::LoggedIn,
        Self::LoggedOut,
        Self::PasswordReset,
        Self::PasswordChanged,
        Self::EmailVerified,
        Self::RolesChanged,
        Self::Disabled,
        Self::Enabled,
        Self::Deleted,
    ];

    /// The NATS subject and CloudEvents `type`.
    pub fn subject(self) -> &'static str {
        match self {
            Self::Registered => "user.registered",
            Self::LoggedIn => "user.logged_in",
            Self::LoggedOut => "user.logged_out",
            Self::PasswordReset => "user.password_reset",
            Self::PasswordChanged => "user.password_changed",
            Self::EmailVerified => "user.email_verified",
            Self::RolesChanged => "user.roles_changed",
            Self::Disabled => "user.disabled",
            Self::Enabled => "user.enabled",
            Self::Deleted => "user.deleted",
        }
    }

    pub fn from_subject(subject: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.subject() == subject)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct DomainEvent {
    pub id: Uuid,
    pub kind: EventKind,
    pub user_id: UserId,
    pub data: Value,
    pub occurred_at: OffsetDateTime,
}

impl DomainEvent {
    fn new(kind: EventKind, user_id: UserId, data: Value, now: OffsetDateTime) -> Self {
        Self { id: Uuid::now_v7(), kind, user_id, data, occurred_at: now }
    }

    pub fn registered(user: &User, method: &str, now: OffsetDateTime) -> Self {
        let data = json!({"user_id": user.id, "email": user.email.as_str(), "method": method});
        Self::new(EventKind::Registered, user.id, data, now)
    }

    pub fn logged_in(user_id: UserId, session_id: SessionId, now: OffsetDateTime) -> Self {
        let data = json!({"user_id": user_id, "session_id": session_id});
        Self::new(EventKind::LoggedIn, user_id, data, now)
    }

    pub fn logged_out(user_id: UserId, session_id: SessionId, now: OffsetDateTime) -> Self {
        let data = json!({"user_id": user_id, "session_id": session_id});
        Self::new(EventKind::LoggedOut, user_id, data, now)
    }

    pub fn password_reset(user_id: UserId, now: OffsetDateTime) -> Self {
        Self::new(EventKind::PasswordReset, user_id, json!({"user_id": user_id}), now)
    }

    pub fn password_changed(user_id: UserId, now: OffsetDateTime) -> Self {
        Self::new(EventKind::PasswordChanged, user_id, json!({"user_id": user_id}), now)
    }

    pub fn email_verified(user_id: UserId, now: OffsetDateTime) -> Self {
        Self::new(EventKind::EmailVerified, user_id, json!({"user_id": user_id}), now)
    }

    /// `roles`: every role the user holds after the change; `version`:
    /// its tokens' version from now on (older tokens are stale).
    pub fn roles_changed(user_id: UserId, roles: &[String], version: i64, now: OffsetDateTime) -> Self {
        let data = json!({"user_id": user_id, "roles": roles, "version": version});
        Self::new(EventKind::RolesChanged, user_id, data, now)
    }

    /// [`Self::roles_changed`] at `now`, for a store to fill in.
    pub fn roles_changed_at(now: OffsetDateTime) -> impl Fn(UserId, &[String], i64) -> Self + Sync {
        move |user, roles, version| Self::roles_changed(user, roles, version, now)
    }

    /// `version`: its tokens' version from now on (every older token is
    /// stale, as after [`Self::roles_changed`]).
    pub fn disabled(user_id: UserId, version: i64, now: OffsetDateTime) -> Self {
        Self::new(EventKind::Disabled, user_id, json!({"user_id": user_id, "version": version}), now)
    }

    pub fn enabled(user_id: UserId, now: OffsetDateTime) -> Self {
        Self::new(EventKind::Enabled, user_id, json!({"user_id": user_id}), now)
    }

    /// Carries the id only: the event outlives the account and must hold no PII.
    pub fn deleted(user_id: UserId, now: OffsetDateTime) -> Self {
        Self::new(EventKind::Deleted, user_id, json!({"user_id": user_id}), now)
    }
}

/// An outbox row as the relay sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    pub event: DomainEvent,
    pub published_at: Option<OffsetDateTime>,
}
