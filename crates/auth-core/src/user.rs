//! The account record.

use time::OffsetDateTime;

use crate::{Email, UserId};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: UserId,
    pub email: Email,
    /// Argon2id PHC string; `None` for accounts that only log in through a provider.
    pub password_hash: Option<String>,
    pub email_verified: bool,
    pub created_at: OffsetDateTime,
    /// The roles held, sorted.
    pub roles: Vec<String>,
    /// Every permission of those roles, sorted, once each.
    pub permissions: Vec<String>,
    /// A disabled account cannot log in and has no live session.
    pub disabled: bool,
    /// Bumped by every change to what its tokens say (roles, disabling):
    /// tokens minted from an older version are stale.
    pub tokens_version: i64,
}
