//! The signed-in user's provider identities: list, link and unlink.

use auth_core::Unlinked;
use auth_core::accounts::LinkError;
use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Serialize;
use time::OffsetDateTime;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::AppState;
use crate::audit::{Audit, Event};
use crate::caller::Caller;
use crate::error::{ApiError, ErrorBody};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/auth/me/identities", get(list))
        .route("/auth/me/identities/{id}", delete(unlink))
        .route("/auth/me/identities/{provider}/link", post(link))
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

#[derive(Debug, Serialize, ToSchema)]
pub struct LinkStart {
    /// Where to send the browser: the provider's login.
    pub location: String,
}

/// Start adding a provider identity to the caller's account.
///
/// Answers with the provider URL to send the browser to (a `POST` so that
/// another site cannot start it: the CSRF token is needed), and sets the
/// attempt's `__Host-oauth_state` cookie, bound to the caller's session.
/// The account's email must be verified and its login recent (5 minutes):
/// a new way in must not outlive an owner's password reset, nor be bought
/// with a stolen access token. The owner is told by mail.
/// The provider then returns the browser to the usual callback, which adds
/// the identity and sends the browser to `return_to`.
#[utoipa::path(post, path = "/auth/me/identities/{provider}/link", tag = "oauth",
    params(
        ("provider" = String, Path, description = "a configured provider's name"),
        ("return_to" = Option<String>, Query, description = "a path here, or a URL on a trusted origin; anything else is `/`"),
        ("X-CSRF-Token" = Option<String>, Header, description = "required with cookie authentication"),
    ),
    responses(
        (status = 200, description = "Go to `location`; `__Host-oauth_state` set (10 minutes)", body = LinkStart),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
        (status = 403, description = "`csrf_failed`; `email_not_verified` (verify the account's email first); `reauthentication_required` (a login within the last five minutes is needed)", body = ErrorBody),
        (status = 404, description = "`unknown_provider`", body = ErrorBody),
        (status = 503, description = "`provider_unavailable`: its discovery document cannot be had", body = ErrorBody),
    ))]
pub async fn link(
    State(state): State<AppState>,
    caller: Caller,
    Path(provider): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    state.accounts().may_link(&caller.user, &caller.session).await.map_err(|e| match e {
        LinkError::EmailNotVerified => {
            ApiError::new(StatusCode::FORBIDDEN, "email_not_verified", "verify your email before linking a provider")
        }
        LinkError::ReauthenticationRequired => ApiError::new(
            StatusCode::FORBIDDEN,
            "reauthentication_required",
            "log in again, then link the provider within five minutes",
        ),
        other => ApiError::internal(other),
    })?;
    let bound = Some((caller.user.id.to_string(), caller.session.id.to_string()));
    let return_to = query.get("return_to").map(String::as_str);
    match super::routes::begin(&state, &provider, return_to, None, bound).await {
        Ok((location, cookie)) => {
            let mut response = Json(LinkStart { location }).into_response();
            response.headers_mut().append(header::SET_COOKIE, cookie);
            response.headers_mut().insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
            Ok(response)
        }
        Err("unknown_provider") => Err(ApiError::not_found("unknown_provider", "no provider of that name")),
        Err(code) => Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, "the provider cannot be reached")),
    }
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
pub async fn unlink(
    State(state): State<AppState>,
    caller: Caller,
    audit: Audit,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let not_found = || ApiError::not_found("identity_not_found", "no such identity of yours");
    // Not a UUID: no identity of anyone's, answered as any other unknown id.
    let id: Uuid = id.parse().map_err(|_| not_found())?;
    match state.accounts().unlink_identity(caller.user.id, id).await? {
        Unlinked::Done => {
            audit.note(Event::new("identity.unlinked").by(caller.user.id).with("identity", id.to_string()));
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        Unlinked::NotFound => Err(not_found()),
        Unlinked::LastWay => Err(ApiError::new(
            StatusCode::CONFLICT,
            "last_login_method",
            "this is the account's only way to log in; set a password or link another provider first",
        )),
    }
}
