//! Fresh, throw-away databases for tests (feature `testing`).
//!
//! SQLite: a new file in a temporary directory. PostgreSQL: a new database on
//! the server named by `GATEHOUSE_TEST_POSTGRES_URL`, dropped (with FORCE) when
//! the handle is dropped, even if the test panicked.
#![allow(clippy::expect_used, clippy::panic)]

use std::path::PathBuf;

pub const POSTGRES_ENV: &str = "GATEHOUSE_TEST_POSTGRES_URL";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// SQLite always; PostgreSQL too when `GATEHOUSE_TEST_POSTGRES_URL` is set.
    pub fn available() -> Vec<Backend> {
        let mut all = vec![Backend::Sqlite];
        if std::env::var_os(POSTGRES_ENV).is_some() {
            all.push(Backend::Postgres);
        }
        all
    }
}

#[derive(Debug)]
pub struct TestDatabase {
    pub url: String,
    pub backend: Backend,
    cleanup: Cleanup,
}

#[derive(Debug)]
enum Cleanup {
    Dir(PathBuf),
    Database { admin_url: String, name: String },
}

fn unique_suffix() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

impl TestDatabase {
    pub async fn create(backend: Backend) -> Self {
        match backend {
            Backend::Sqlite => {
                let dir = std::env::temp_dir().join(format!("gatehouse-test-{}", unique_suffix()));
                std::fs::create_dir_all(&dir).expect("create a temporary directory");
                let url = format!("sqlite://{}", dir.join("gatehouse.db").display());
                Self { url, backend, cleanup: Cleanup::Dir(dir) }
            }
            Backend::Postgres => {
                let admin_url = std::env::var(POSTGRES_ENV).expect("GATEHOUSE_TEST_POSTGRES_URL is set");
                let name = format!("gatehouse_test_{}", unique_suffix());
                let mut admin = connect_admin(&admin_url).await;
                use sqlx::Connection as _;
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&mut admin)
                    .await
                    .expect("create a test database");
                admin.close().await.ok();
                let url = with_database(&admin_url, &name);
                Self { url, backend, cleanup: Cleanup::Database { admin_url, name } }
            }
        }
    }
}

async fn connect_admin(url: &str) -> sqlx::PgConnection {
    use sqlx::Connection as _;
    sqlx::PgConnection::connect(url)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {POSTGRES_ENV}={url} is unreachable: {e}"))
}

/// Replaces the database name (the URL path) of a Postgres URL.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let authority_end = base.find("://").map_or(0, |i| i + 3);
    let base = match base[authority_end..].find('/') {
        Some(slash) => &base[..authority_end + slash],
        None => base,
    };
    format!("{base}/{name}{query}")
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        match &self.cleanup {
            Cleanup::Dir(dir) => {
                let _ = std::fs::remove_dir_all(dir);
            }
            Cleanup::Database { admin_url, name } => {
                let (admin_url, name) = (admin_url.clone(), name.clone());
                // Drop runs inside the test's runtime; a fresh one on a fresh
                // thread can block without upsetting it.
                let dropped = std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                    rt.block_on(async {
                        let mut admin = connect_admin(&admin_url).await;
                        let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                        sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut admin).await.map(|_| ())
                    })
                    .map_err(std::io::Error::other)
                })
                .join();
                if !matches!(dropped, Ok(Ok(()))) {
                    eprintln!("warning: could not drop test database {}", self.url);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn the_database_name_is_replaced_keeping_the_rest() {
        assert_eq!(with_database("postgres://u@h:5432/test", "x"), "postgres://u@h:5432/x");
        assert_eq!(with_database("postgres://u@h/test?sslmode=disable", "x"), "postgres://u@h/x?sslmode=disable");
        assert_eq!(with_database("postgres://u@h", "x"), "postgres://u@h/x");
    }
}
