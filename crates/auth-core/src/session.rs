//! Login sessions: what a refresh token keeps alive.

use time::{Duration, OffsetDateTime};

use crate::{SessionId, UserId};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub id: SessionId,
    pub user_id: UserId,
    pub created_at: OffsetDateTime,
    /// Last login or refresh.
    pub last_seen_at: OffsetDateTime,
    /// Absolute end, however active the session is.
    pub expires_at: OffsetDateTime,
    /// End if no refresh happens before it.
    pub idle_expires_at: OffsetDateTime,
    pub revoked_at: Option<OffsetDateTime>,
    pub user_agent: Option<String>,
    pub ip: Option<String>,
}

impl Session {
    pub fn is_active(&self, now: OffsetDateTime) -> bool {
        self.revoked_at.is_none() && now < self.expires_at && now < self.idle_expires_at
    }

    /// The idle deadline after activity at `now`, never past the absolute end.
    pub fn next_idle_deadline(&self, now: OffsetDateTime, idle: Duration) -> OffsetDateTime {
        (now + idle).min(self.expires_at)
    }
}

/// What the store knows about a presented refresh token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshRecord {
    pub session_id: SessionId,
    /// When a newer token replaced this one; `None` while it is the current one.
    pub superseded_at: Option<OffsetDateTime>,
}
