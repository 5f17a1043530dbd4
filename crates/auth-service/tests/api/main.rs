//! The auth-service API, tested over real HTTP against a real database:
//! SQLite always, PostgreSQL too when `GATEHOUSE_TEST_POSTGRES_URL` is set.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod helpers;

mod admin;
mod audit;
mod breached;
mod csrf;
mod enumeration;
mod headers;
mod keys;
mod login;
mod logout_delete;
mod oauth;
mod ops;
mod rbac;
mod recovery;
mod refresh;
mod register;
mod sessions;
mod social;
mod throttling;
mod tokens;
