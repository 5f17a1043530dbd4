//! The routes, one module per area, merged here.

pub mod accounts;
pub mod admin;
pub mod admin_users;
pub mod ops;
pub mod recovery;
pub mod sessions;
pub mod wellknown;

use axum::Router;

use crate::AppState;
use crate::error::ApiError;

pub fn router(state: AppState) -> Router<AppState> {
    Router::new()
        .merge(accounts::router())
        .merge(admin::router(state))
        .merge(sessions::router())
        .merge(recovery::router())
        .merge(crate::oauth::routes::router())
        .merge(wellknown::router())
        .merge(ops::router())
        .merge(crate::pages::router())
}

pub async fn not_found() -> ApiError {
    ApiError::not_found("not_found", "no such route")
}
