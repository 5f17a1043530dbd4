//! The signed-in user's provider identities: list and unlink.

use auth_core::Unlinked;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Json, Router};
use serde::Serialize;
use time::OffsetDateTime;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::AppState;
use crate::caller::Caller;
use crate::error::{ApiError, ErrorBody};

pub fn router() -> Router<AppState> {
    Router::new().route("/auth/me/identities", get(list)).route("/auth/me/identities/{id}", delete(unlink))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct IdentityView {
    pub id: Uuid,
    /// The configured provider's name.
    pub provider: String,
    /// As the provider last said it.
    pub email: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub linked_at: OffsetDateTime,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Identities {
    pub identities: Vec<IdentityView>,
    /// Whether the account can also log in with a password.
    pub has_password: bool,
}

/// The caller's provider identities.
#[utoipa::path(get, path = "/auth/me/identities", tag = "oauth",
    responses(
        (status = 200, description = "Linked providers, oldest first", body = Identities),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
    ))]
pub async fn list(State(state): State<AppState>, caller: Caller) -> Result<Json<Identities>, ApiError> {
    let identities = state.accounts().identities(caller.user.id).await?;
    Ok(Json(Identities {
        identities: identities
            .into_iter()
            .map(|i| IdentityView { id: i.id, provider: i.provider, email: i.email, linked_at: i.created_at })
            .collect(),
        has_password: caller.user.password_hash.is_some(),
    }))
}

/// Unlink one of the caller's provider identities.
#[utoipa::path(delete, path = "/auth/me/identities/{id}", tag = "oauth",
    params(
        ("id" = Uuid, Path, description = "the identity's id"),
        ("X-CSRF-Token" = Option<String>, Header, description = "required with cookie authentication"),
    ),
    responses(
        (status = 204, description = "Unlinked"),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
        (status = 403, description = "`csrf_failed`", body = ErrorBody),
        (status = 404, description = "`identity_not_found`: no such identity of the caller", body = ErrorBody),
        (status = 409, description = "`last_login_method`: the account has no password and no other provider", body = ErrorBody),
    ))]
pub async fn unlink(State(state): State<AppState>, caller: Caller, Path(id): Path<Uuid>) -> Result<Response, ApiError> {
    match state.accounts().unlink_identity(caller.user.id, id).await? {
        Unlinked::Done => {
            tracing::info!(user_id = %caller.user.id, identity = %id, "provider identity unlinked");
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        Unlinked::NotFound => Err(ApiError::not_found("identity_not_found", "no such identity of yours")),
        Unlinked::LastWay => Err(ApiError::new(
            StatusCode::CONFLICT,
            "last_login_method",
            "this is the account's only way to log in; set a password or link another provider first",
        )),
    }
}
