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

pub const POSTGRES: &[Migration] =
    &[Migration { version: 1, name: "accounts", sql: include_str!("../migrations/postgres/0001_accounts.sql") }];

pub const SQLITE: &[Migration] =
    &[Migration { version: 1, name: "accounts", sql: include_str!("../migrations/sqlite/0001_accounts.sql") }];

/// An arbitrary constant naming Gatehouse's migration lock.
const PG_LOCK_KEY: i64 = 0x6761_7465_686f_7573;

fn failed(m: &Migration) -> impl Fn(sqlx::Error) -> OpenError + '_ {
    move |e| OpenError::Migration { version: m.version, name: m.name, reason: e.to_string() }
}

pub async fn run_postgres(pool: &PgPool) -> Result<Vec<i64>, OpenError> {
    let setup = "CREATE TABLE IF NOT EXISTS gatehouse_migrations \
                 (version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())";
    sqlx::raw_sql(setup).execute(pool).await.map_err(|e| OpenError::Connect(e.to_string()))?;
    let mut applied = Vec::new();
    for m in POSTGRES {
        let mut tx = pool.begin().await.map_err(failed(m))?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(PG_LOCK_KEY).execute(&mut *tx).await.map_err(failed(m))?;
        let done: Option<i64> = sqlx::query_scalar("SELECT version FROM gatehouse_migrations WHERE version = $1")
            .bind(m.version)
            .fetch_optional(&mut *tx)
            .await
            .map_err(failed(m))?;
        if done.is_some() {
            continue;
        }
        sqlx::raw_sql(m.sql).execute(&mut *tx).await.map_err(failed(m))?;
        sqlx::query("INSERT INTO gatehouse_migrations (version, name) VALUES ($1, $2)")
            .bind(m.version)
            .bind(m.name)
            .execute(&mut *tx)
            .await
            .map_err(failed(m))?;
        tx.commit().await.map_err(failed(m))?;
        applied.push(m.version);
    }
    Ok(applied)
}

pub async fn run_sqlite(pool: &SqlitePool) -> Result<Vec<i64>, OpenError> {
    let setup = "CREATE TABLE IF NOT EXISTS gatehouse_migrations \
                 (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP)";
    sqlx::raw_sql(setup).execute(pool).await.map_err(|e| OpenError::Connect(e.to_string()))?;
    let mut applied = Vec::new();
    for m in SQLITE {
        let mut tx = pool.begin().await.map_err(failed(m))?;
        let done: Option<i64> = sqlx::query_scalar("SELECT version FROM gatehouse_migrations WHERE version = ?")
            .bind(m.version)
            .fetch_optional(&mut *tx)
            .await
            .map_err(failed(m))?;
        if done.is_some() {
            continue;
        }
        sqlx::raw_sql(m.sql).execute(&mut *tx).await.map_err(failed(m))?;
        sqlx::query("INSERT INTO gatehouse_migrations (version, name) VALUES (?, ?)")
            .bind(m.version)
            .bind(m.name)
            .execute(&mut *tx)
            .await
            .map_err(failed(m))?;
        tx.commit().await.map_err(failed(m))?;
        applied.push(m.version);
    }
    Ok(applied)
}
