//! The storage ports of `auth-core` for PostgreSQL and SQLite.
//!
//! Layout:
//! - [`migrations`]: the embedded schema for each backend and the runner that applies it.
//! - [`postgres`]: [`PgStore`], the PostgreSQL backend.
//! - [`sqlite`]: [`SqliteStore`], the SQLite backend (WAL, foreign keys on).
//! - `sqlite_recovery`, `postgres_recovery`: reset and verification tokens,
//!   the mail queue and throttle windows, for each backend.
//! - `sqlite_identities`, `postgres_identities`: OAuth/OpenID identities.
//! - [`open`]: picks the backend from the URL once, at start-up.
//!
//! Both backends pass the same contract suite (`tests/contract`).

pub mod migrations;
pub mod postgres;
mod postgres_identities;
mod postgres_recovery;
mod postgres_roles;
pub mod sqlite;
mod sqlite_identities;
mod sqlite_recovery;
mod sqlite_roles;

use std::sync::Arc;

use async_trait::async_trait;
use auth_core::{
    DeletionLedger, IdentityStore, MailQueue, Outbox, RecoveryStore, RoleStore, SessionStore, StoreError, Throttle,
    UserStore,
};

pub use postgres::PgStore;
pub use sqlite::SqliteStore;

/// Readiness of the database.
#[async_trait]
pub trait Health: Send + Sync + 'static {
    async fn ping(&self) -> Result<(), StoreError>;
}

/// Every port, backed by one database.
#[derive(Clone)]
pub struct Stores {
    pub users: Arc<dyn UserStore>,
    pub sessions: Arc<dyn SessionStore>,
    pub outbox: Arc<dyn Outbox>,
    pub ledger: Arc<dyn DeletionLedger>,
    pub recovery: Arc<dyn RecoveryStore>,
    pub mail: Arc<dyn MailQueue>,
    pub throttle: Arc<dyn Throttle>,
    pub identities: Arc<dyn IdentityStore>,
    pub roles: Arc<dyn RoleStore>,
    pub health: Arc<dyn Health>,
    pub backend: &'static str,
}

impl Stores {
    fn of<S>(store: S, backend: &'static str) -> Self
    where
        S: UserStore
            + SessionStore
            + Outbox
            + DeletionLedger
            + RecoveryStore
            + MailQueue
            + Throttle
            + IdentityStore
            + RoleStore
            + Health,
    {
        let store = Arc::new(store);
        Self {
            users: store.clone(),
            sessions: store.clone(),
            outbox: store.clone(),
            ledger: store.clone(),
            recovery: store.clone(),
            mail: store.clone(),
            throttle: store.clone(),
            identities: store.clone(),
            roles: store.clone(),
            health: store,
            backend,
        }
    }
}

impl std::fmt::Debug for Stores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stores").field("backend", &self.backend).finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("database.url must start with sqlite:// or postgres:// (got {0:?})")]
    UnknownScheme(String),
    #[error("cannot open the database: {0}")]
    Connect(String),
    #[error(
        "another process is serving the SQLite database {0}; SQLite serves one process \
         (stop it first, or use PostgreSQL for several)"
    )]
    InUse(String),
    #[error("migration {version} ({name}) failed: {reason}")]
    Migration { version: i64, name: &'static str, reason: String },
}

/// [`open`] with migrations, for a process that serves requests. A SQLite
/// database is claimed for this process alone (an exclusive lock on the
/// file `<database>.serving`, held as long as any of the stores' ports
/// lives and released by the system when the process ends, however it ends):
/// its counters and its relay count on no other process writing, so a
/// second serving process is refused at start. Commands such as
/// `gatehouse users` use [`open`] and run beside a server.
pub async fn open_to_serve(url: &str) -> Result<Stores, OpenError> {
    open_as(url, true, true).await
}

/// Connects to the database named by `url`, applying migrations when `migrate` is set.
pub async fn open(url: &str, migrate: bool) -> Result<Stores, OpenError> {
    open_as(url, migrate, false).await
}

/// [`open`], claiming a SQLite database first when `serve` is set.
async fn open_as(url: &str, migrate: bool, serve: bool) -> Result<Stores, OpenError> {
    if url.starts_with("sqlite:") {
        let serving = if serve { Some(sqlite::claim_serving(url)?) } else { None };
        let store = SqliteStore::connect(url).await?.serving(serving);
        if migrate {
            store.migrate().await?;
        }
        Ok(Stores::of(store, "sqlite"))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let store = PgStore::connect(url).await?;
        if migrate {
            store.migrate().await?;
        }
        Ok(Stores::of(store, "postgres"))
    } else {
        let scheme = url.split(':').next().unwrap_or_default().to_owned();
        Err(OpenError::UnknownScheme(scheme))
    }
}

/// A comma-joined list from an aggregate, sorted.
pub(crate) fn listed(joined: Option<String>) -> Vec<String> {
    let mut all: Vec<String> =
        joined.iter().flat_map(|j| j.split(',')).filter(|s| !s.is_empty()).map(str::to_owned).collect();
    all.sort();
    all
}

/// Maps driver errors onto the ports' error kinds.
pub(crate) fn store_error(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::RowNotFound => StoreError::NotFound,
        sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict,
        _ => StoreError::Unavailable(e.to_string()),
    }
}

/// Column lists shared by the queries of both backends, as macros so that
/// queries stay `&'static str` via `concat!`.
/// A user's roles and permissions come along, comma-joined (neither may
/// hold a comma), by `$agg` (`group_concat` on SQLite, `string_agg` on
/// PostgreSQL).
macro_rules! user_columns {
    ($agg:literal) => {
        concat!(
            "id, email, password_hash, email_verified, created_at, disabled_at, tokens_version, (SELECT ",
            $agg,
            "(role, ',') FROM user_roles WHERE user_id = users.id) AS roles, (SELECT ",
            $agg,
            "(permission, ',') FROM (SELECT DISTINCT p.permission FROM role_permissions p \
             JOIN user_roles r ON r.role = p.role WHERE r.user_id = users.id) AS d) AS permissions"
        )
    };
}
macro_rules! session_columns {
    () => {
        "id, user_id, created_at, last_seen_at, expires_at, idle_expires_at, revoked_at, user_agent, ip"
    };
}
macro_rules! event_columns {
    () => {
        "id, event_type, user_id, data, occurred_at, published_at"
    };
}
macro_rules! identity_columns {
    () => {
        "id, user_id, provider, issuer, subject, email, created_at"
    };
}
pub(crate) use {event_columns, identity_columns, session_columns, user_columns};

#[cfg(feature = "testing")]
pub mod testing;
