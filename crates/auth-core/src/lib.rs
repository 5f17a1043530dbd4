//! Gatehouse's domain: accounts, sessions and the use cases that change them.
//!
//! Layout:
//! - [`clock`]: the injected source of time ([`Clock`], [`SystemClock`], [`ManualClock`]).
//! - [`ids`]: typed identifiers ([`UserId`], [`SessionId`]).
//! - [`email`]: the validated, normalised [`Email`].
//! - [`password`]: the password policy (NIST 800-63B-4) and [`Password`].
//! - [`hashing`]: Argon2id on a bounded blocking pool ([`PasswordHasher`]).
//! - [`secret`]: opaque bearer secrets (refresh tokens), stored only as SHA-256.
//! - [`user`], [`session`]: the records the stores keep.
//! - [`events`]: the domain events written to the outbox with each change.
//! - [`ports`]: the storage traits the use cases need ([`UserStore`], [`SessionStore`], [`Outbox`]).
//! - [`accounts`]: the use cases (register, login, refresh, logout, delete, sessions).
//! - [`recovery`]: password reset and change, email verification, their rate limits.
//! - [`mail`]: messages, the [`Mailer`] port, and the templates.
//! - [`throttling`]: login attempts per account and token buckets per client.
//!
//! Nothing here speaks HTTP, SQL or NATS.

pub mod accounts;
pub mod clock;
pub mod email;
pub mod events;
pub mod hashing;
pub mod ids;
pub mod mail;
pub mod password;
pub mod ports;
pub mod recovery;
pub mod roles;
pub mod secret;
pub mod session;
pub mod throttling;
pub mod user;

pub use accounts::{Accounts, AccountsSettings};
pub use clock::{Clock, ManualClock, SystemClock};
pub use email::Email;
pub use events::{DomainEvent, EventKind};
pub use hashing::{Argon2Hasher, HashError, PasswordHasher};
pub use ids::{SessionId, UserId};
pub use mail::{Mail, MailError, Mailer, Templates};
pub use password::{Password, PasswordError, PasswordPolicy};
pub use ports::{
    DeletionLedger, DeletionRecord, EmailToken, EventSink, ExternalIdentity, Hits, IdentityStore, MailQueue,
    NoRevocationSink, Opening, Outbox, RecoveryStore, RevocationSink, SessionStore, StoreError, Throttle, TokenPurpose,
    Unlinked, UserStore,
};
pub use recovery::{Recovery, RecoverySettings};
pub use roles::{AccountState, Actor, Admin, AuditEntry, Role, RoleChange, RoleStore};
pub use secret::{OpaqueSecret, SecretHash};
pub use session::Session;
pub use user::User;
