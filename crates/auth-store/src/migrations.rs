//! Embedded migrations and a small runner: each migration runs once, in its
//! own transaction, recorded in `gatehouse_migrations`. On Postgres an advisory
//! lock serialises processes that start at the same time.

use sqlx::{PgPool, SqlitePool};

use crate::OpenError;

pub struct Migration {
    pub version: i64,
    pub name: &'static str,
    pub sql: &'static str,
}

pub const POSTGRES: &[Migration] = &[
    Migration { version: 1, name: "accounts", sql: include_str!("../migrations/postgres/0001_accounts.sql") },
    Migration {
        version: 2,
        name: "deletion_ledger",
        sql: include_str!("../migrations/postgres/0002_deletion_ledger.sql"),
    },
    Migration { version: 3, name: "recovery", sql: include_str!("../migrations/postgres/0003_recovery.sql") },
    Migration {
        version: 4,
        name: "external_identities",
        sql: include_str!("../migrations/postgres/0004_external_identities.sql"),
    },
    Migration { version: 5, name: "roles", sql: include_str!("../migrations/postgres/0005_roles.sql") },
    Migration {
        version: 6,
        name: "token_versions",
        sql: include_str!("../migrations/postgres/0006_token_versions.sql"),
    },
    Migration {
        version: 7,
        name: "login_throttling",
        sql: include_str!("../migrations/postgres/0007_login_throttling.sql"),
    },
    Migration { version: 8, name: "audit_clients", sql: include_str!("../migrations/postgres/0008_audit_clients.sql") },
];

pub const SQLITE: &[Migration] = &[
    Migration { version: 1, name: "accounts", sql: include_str!("../migrations/sqlite/0001_accounts.sql") },
    Migration {
        version: 2,
        name: "deletion_ledger",
        sql: include_str!("../migrations/sqlite/0002_deletion_ledger.sql"),
    },
    Migration { version: 3, name: "recovery", sql: include_str!("../migrations/sqlite/0003_recovery.sql") },
    Migration {
        version: 4,
        name: "external_identities",
        sql: include_str!("../migrations/sqlite/0004_external_identities.sql"),
    },
    Migration { version: 5, name: "roles", sql: include_str!("../migrations/sqlite/0005_roles.sql") },
    Migration { version: 6, name: "token_versions", sql: include_str!("../migrations/sqlite/0006_token_versions.sql") },
    Migration {
        version: 7,
        name: "login_throttling",
        sql: include_str!("../migrations/sqlite/0007_login_throttling.sql"),
    },
    Migration { version: 8, name: "audit_clients", sql: include_str!("../migrations/sqlite/0008_audit_clients.sql") },
];

/// Serialises PostgreSQL migrations across processes: an advisory lock (an
/// arbitrary constant naming Gatehouse's migrations), held to the end of
/// the transaction. A migration may take longer than the sessions'
/// statement timeout, and so may waiting for another process's.
const PG_LOCK: &str = "SET LOCAL statement_timeout = 0; SELECT pg_advisory_xact_lock(7449354444734264691)";
const PG_APPLIED: &str = "SELECT version FROM gatehouse_migrations WHERE version = $1";
const PG_RECORD: &str = "INSERT INTO gatehouse_migrations (version, name) VALUES ($1, $2)";
/// SQLite's stand-in for the advisory lock: the file's write lock, taken
/// before the transaction reads what is applied.
const SQLITE_BEGIN: &str = "BEGIN IMMEDIATE";
const SQLITE_APPLIED: &str = "SELECT version FROM gatehouse_migrations WHERE version = ?";
const SQLITE_RECORD: &str = "INSERT INTO gatehouse_migrations (version, name) VALUES (?, ?)";

fn failed(m: &Migration) -> impl Fn(sqlx::Error) -> OpenError + '_ {
    move |e| OpenError::Migration { version: m.version, name: m.name, reason: e.to_string() }
}

/// A transaction under the migrations' lock: begun with `begin` (SQLite's
/// lock), then `lock` run in it (PostgreSQL's).
macro_rules! locked {
    ($pool:expr, $begin:expr, $lock:expr) => {
        async {
            let mut tx = $pool.begin_with($begin).await?;
            if let Some(lock) = $lock {
                sqlx::raw_sql(lock).execute(&mut *tx).await?;
            }
            Ok::<_, sqlx::Error>(tx)
        }
    };
}

/// One runner for both backends; only the SQL differs.
macro_rules! runner {
    ($(#[$doc:meta])* $name:ident, $pool:ty, $migrations:expr, setup: $setup:expr, begin: $begin:expr,
     lock: $lock:expr, select: $select:expr, insert: $insert:expr) => {
        $(#[$doc])*
        pub async fn $name(pool: &$pool) -> Result<Vec<i64>, OpenError> {
            // Under the lock too: PostgreSQL's `CREATE TABLE IF NOT EXISTS`
            // run by two processes at once fails in one of them.
            let setup_failed = |e: sqlx::Error| OpenError::Connect(e.to_string());
            let mut tx = locked!(pool, $begin, $lock).await.map_err(setup_failed)?;
            sqlx::raw_sql($setup).execute(&mut *tx).await.map_err(setup_failed)?;
            tx.commit().await.map_err(setup_failed)?;
            let mut applied = Vec::new();
            for m in $migrations {
                let mut tx = locked!(pool, $begin, $lock).await.map_err(failed(m))?;
                let done: Option<i64> =
                    sqlx::query_scalar($select).bind(m.version).fetch_optional(&mut *tx).await.map_err(failed(m))?;
                if done.is_some() {
                    continue;
                }
                sqlx::raw_sql(m.sql).execute(&mut *tx).await.map_err(failed(m))?;
                sqlx::query($insert).bind(m.version).bind(m.name).execute(&mut *tx).await.map_err(failed(m))?;
                tx.commit().await.map_err(failed(m))?;
                applied.push(m.version);
            }
            Ok(applied)
        }
    };
}

runner!(
    /// Applies the PostgreSQL migrations; an advisory lock (an arbitrary
    /// constant naming Gatehouse's migrations) serialises concurrent starts.
    run_postgres,
    PgPool,
    POSTGRES,
    setup: "CREATE TABLE IF NOT EXISTS gatehouse_migrations \
            (version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
    begin: "BEGIN",
    lock: Some(PG_LOCK),
    select: PG_APPLIED,
    insert: PG_RECORD
);

runner!(
    /// Applies the SQLite migrations. Each transaction takes the file's
    /// write lock before it reads (`BEGIN IMMEDIATE`, waiting up to the
    /// busy timeout), so a server starting while `gatehouse migrate` runs
    /// finds the other's migrations applied instead of failing with
    /// `database is locked` on its first write.
    run_sqlite,
    SqlitePool,
    SQLITE,
    setup: "CREATE TABLE IF NOT EXISTS gatehouse_migrations \
            (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP)",
    begin: SQLITE_BEGIN,
    lock: None::<&'static str>,
    select: SQLITE_APPLIED,
    insert: SQLITE_RECORD
);

/// The step after the SQL migrations that SQL cannot do: addresses stored
/// before Gatehouse normalised them (NFC, IDNA domains) are rewritten into
/// the form [`auth_core::Email::parse`] gives them now, once. An address
/// that is another account's once normalised, or that the rules now refuse,
/// is left as it is and reported by user id: merging accounts is the
/// operator's decision, never made silently.
macro_rules! normaliser {
    ($(#[$doc:meta])* $name:ident, $pool:ty, begin: $begin:expr, lock: $lock:expr, select: $select:expr,
     update: $update:expr, marker: $marker:expr, mark: $mark:expr) => {
        $(#[$doc])*
        pub async fn $name(pool: &$pool) -> Result<Vec<String>, OpenError> {
            let fail = |e: sqlx::Error| OpenError::Migration {
                version: EMAIL_NORMALISATION,
                name: "email_normalisation",
                reason: e.to_string(),
            };
            let mut tx = locked!(pool, $begin, $lock).await.map_err(fail)?;
            let done: Option<i64> =
                sqlx::query_scalar($marker).bind(EMAIL_NORMALISATION).fetch_optional(&mut *tx).await.map_err(fail)?;
            if done.is_some() {
                return Ok(Vec::new());
            }
            let rows: Vec<(String, String)> = sqlx::query_as($select).fetch_all(&mut *tx).await.map_err(fail)?;
            let mut taken: std::collections::HashSet<String> = rows.iter().map(|(_, e)| e.clone()).collect();
            let mut reports = Vec::new();
            for (id, stored) in rows {
                match auth_core::Email::parse(&stored) {
                    Ok(email) if email.as_str() == stored => {}
                    Ok(email) if taken.contains(email.as_str()) => reports.push(format!(
                        "user {id}: its address is another account's once normalised; both were left as they are"
                    )),
                    Ok(email) => {
                        sqlx::query($update).bind(email.as_str()).bind(&id).execute(&mut *tx).await.map_err(fail)?;
                        taken.insert(email.as_str().to_owned());
                    }
                    Err(_) => reports.push(format!(
                        "user {id}: its address holds characters now refused (invisible or reordering); left as it is"
                    )),
                }
            }
            sqlx::query($mark)
                .bind(EMAIL_NORMALISATION)
                .bind("email_normalisation")
                .execute(&mut *tx)
                .await
                .map_err(fail)?;
            tx.commit().await.map_err(fail)?;
            Ok(reports)
        }
    };
}

/// The version [`normalise_postgres`] and [`normalise_sqlite`] record.
pub const EMAIL_NORMALISATION: i64 = 1007;

normaliser!(
    /// [`normaliser`] on PostgreSQL, under the migrations' advisory lock.
    normalise_postgres,
    PgPool,
    begin: "BEGIN",
    lock: Some(PG_LOCK),
    select: "SELECT id::text, email FROM users ORDER BY id",
    update: "UPDATE users SET email = $1 WHERE id = $2::uuid",
    marker: PG_APPLIED,
    mark: PG_RECORD
);

normaliser!(
    /// [`normaliser`] on SQLite, under the file's write lock.
    normalise_sqlite,
    SqlitePool,
    begin: SQLITE_BEGIN,
    lock: None::<&'static str>,
    select: "SELECT id, email FROM users ORDER BY id",
    update: "UPDATE users SET email = ? WHERE id = ?",
    marker: SQLITE_APPLIED,
    mark: SQLITE_RECORD
);
