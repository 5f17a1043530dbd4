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
];

fn failed(m: &Migration) -> impl Fn(sqlx::Error) -> OpenError + '_ {
    move |e| OpenError::Migration { version: m.version, name: m.name, reason: e.to_string() }
}

/// One runner for both backends; only the SQL differs.
macro_rules! runner {
    ($(#[$doc:meta])* $name:ident, $pool:ty, $migrations:expr, setup: $setup:expr, lock: $lock:expr,
     select: $select:expr, insert: $insert:expr) => {
        $(#[$doc])*
        pub async fn $name(pool: &$pool) -> Result<Vec<i64>, OpenError> {
            sqlx::raw_sql($setup).execute(pool).await.map_err(|e| OpenError::Connect(e.to_string()))?;
            let mut applied = Vec::new();
            for m in $migrations {
                let mut tx = pool.begin().await.map_err(failed(m))?;
                if let Some(lock) = $lock {
                    sqlx::raw_sql(lock).execute(&mut *tx).await.map_err(failed(m))?;
                }
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
    // A migration may take longer than the sessions' statement timeout, and
    // so may waiting for another process's.
    lock: Some("SET LOCAL statement_timeout = 0; SELECT pg_advisory_xact_lock(7449354444734264691)"),
    select: "SELECT version FROM gatehouse_migrations WHERE version = $1",
    insert: "INSERT INTO gatehouse_migrations (version, name) VALUES ($1, $2)"
);

runner!(
    /// Applies the SQLite migrations (one process owns the file).
    run_sqlite,
    SqlitePool,
    SQLITE,
    setup: "CREATE TABLE IF NOT EXISTS gatehouse_migrations \
            (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP)",
    lock: None::<&'static str>,
    select: "SELECT version FROM gatehouse_migrations WHERE version = ?",
    insert: "INSERT INTO gatehouse_migrations (version, name) VALUES (?, ?)"
);
