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
    pub roles: Vec<String>,
    pub permissions: Vec<String>,
}
