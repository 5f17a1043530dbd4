//! Forgotten and changed passwords, email verification.
//!
//! `forgot` and `resend` answer the same 202 whether or not the address has
//! an account, before any account is looked up: the lookup and the mail
//! happen after the answer, so neither body nor timing tells.

use auth_core::recovery::{Action, ChangeError, ResetError};
use auth_core::throttling::{Rate, ThrottleError};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::accounts::{ClientAddress, cleared};
use crate::AppState;
use crate::audit::{Audit, Event};
use crate::caller::Caller;
use crate::error::{ApiError, AppJson, ErrorBody};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/auth/password/forgot", post(forgot))
        .route("/auth/password/reset", post(reset))
        .route("/auth/password/change", post(change))
        .route("/auth/email/verify", post(verify))
        .route("/auth/email/resend", post(resend))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EmailOnly {
    pub email: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResetPassword {
    /// From the fragment of the emailed link.
    pub token: String,
    pub password: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangePassword {
    pub current_password: String,
    pub password: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenOnly {
    pub token: String,
}

/// The one answer to `forgot` and `resend`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Accepted {
    pub status: &'static str,
    pub message: &'static str,
}

fn accepted(message: &'static str) -> Response {
    (StatusCode::ACCEPTED, Json(Accepted { status: "accepted", message })).into_response()
}

fn invalid_token() -> ApiError {
    ApiError::bad_request("invalid_token", "the link is invalid or has expired; ask for a new one")
}

fn check_email(email: &str) -> Result<(), ApiError> {
    auth_core::Email::parse(email)
        .map(|_| ())
        .map_err(|_| ApiError::bad_request("invalid_email", "not a valid email address"))
}

/// Ask for a password reset link.
#[utoipa::path(post, path = "/auth/password/forgot", tag = "recovery", request_body = EmailOnly,
    responses(
        (status = 202, description = "The same answer whether or not the address has an account; if it has, a link valid for 15 minutes is mailed", body = Accepted),
        (status = 400, description = "`invalid_email`, `invalid_body`", body = ErrorBody),
        (status = 429, description = "`too_many_requests`, with `Retry-After`: too many for this address or from this client", body = ErrorBody),
    ))]
pub async fn forgot(
    State(state): State<AppState>,
    peer: ClientAddress,
    AppJson(body): AppJson<EmailOnly>,
) -> Result<Response, ApiError> {
    check_email(&body.email)?;
    state.accounts().admit(Rate::Forgot, &peer.ip()).await?;
    state.recovery().check_limits(Action::Forgot, Some(&body.email), &peer.ip()).await?;
    tokio::spawn(async move {
        match state.recovery().request_reset(&body.email).await {
            Ok(()) => state.mail_waker().notify_one(),
            Err(error) => tracing::error!(%error, "cannot issue a password reset link"),
        }
    });
    Ok(accepted("If that address has an account, a link to reset its password has been sent to it."))
}

/// Set a new password with the token from a reset link.
#[utoipa::path(post, path = "/auth/password/reset", tag = "recovery", request_body = ResetPassword,
    responses(
        (status = 204, description = "Password set; every session of the account is revoked and nobody is signed in; `user.password_reset` is in the outbox and a notice is mailed"),
        (status = 400, description = "`invalid_token` (unknown, used, expired, superseded or for another purpose), `password_too_short`, `password_too_long`, `password_too_common`, `password_breached`, `invalid_body`", body = ErrorBody),
        (status = 429, description = "`too_many_requests`", body = ErrorBody),
    ))]
pub async fn reset(
    State(state): State<AppState>,
    peer: ClientAddress,
    audit: Audit,
    AppJson(body): AppJson<ResetPassword>,
) -> Result<Response, ApiError> {
    state.recovery().check_limits(Action::Reset, None, &peer.ip()).await?;
    let user = state.recovery().reset_password(&body.token, &body.password).await.map_err(|e| match e {
        ResetError::InvalidToken => {
            audit.note(Event::new("password.reset_refused").reason("invalid_token"));
            invalid_token()
        }
        ResetError::Password(p) => ApiError::bad_request(p.code(), p.to_string()),
        ResetError::Hash(e) => e.into(),
        ResetError::Store(e) => e.into(),
    })?;
    state.mail_waker().notify_one();
    audit.note(Event::new("password.reset").user(user));
    Ok(cleared(StatusCode::NO_CONTENT))
}

/// Change the password of the signed-in account.
#[utoipa::path(post, path = "/auth/password/change", tag = "recovery", request_body = ChangePassword,
    params(("X-CSRF-Token" = Option<String>, Header, description = "required with cookie authentication")),
    responses(
        (status = 204, description = "Password changed; every other session is revoked, this one stays; `user.password_changed` is in the outbox and a notice is mailed"),
        (status = 400, description = "`password_too_short`, `password_too_long`, `password_too_common`, `password_breached`, `invalid_body`", body = ErrorBody),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
        (status = 403, description = "`wrong_password` or `csrf_failed`", body = ErrorBody),
        (status = 429, description = "`too_many_requests`, with `Retry-After`: too many wrong passwords for this account, here or at login", body = ErrorBody),
    ))]
pub async fn change(
    State(state): State<AppState>,
    caller: Caller,
    audit: Audit,
    AppJson(body): AppJson<ChangePassword>,
) -> Result<Response, ApiError> {
    // Counted per account: a stolen session cannot guess the password freely.
    let account = caller.user.id.to_string();
    let refused = |reason| audit.note(Event::new("password.change_refused").by(caller.user.id).reason(reason));
    if let Err(limited) = state.recovery().check_limits(Action::Change, None, &account).await {
        if matches!(limited, ThrottleError::Throttled { .. }) {
            refused("account_throttled");
        }
        return Err(limited.into());
    }
    let changed =
        state.recovery().change_password(&caller.user, caller.session.id, &body.current_password, &body.password).await;
    changed.map_err(|e| match e {
        ChangeError::WrongPassword => {
            state.metrics().login(false);
            refused("wrong_password");
            ApiError::new(StatusCode::FORBIDDEN, "wrong_password", "the current password is wrong")
        }
        ChangeError::Throttled { retry_after } => {
            refused("account_throttled");
            ApiError::throttled(retry_after)
        }
        ChangeError::Password(p) => ApiError::bad_request(p.code(), p.to_string()),
        ChangeError::Hash(e) => e.into(),
        ChangeError::Store(e) => e.into(),
    })?;
    state.mail_waker().notify_one();
    audit.note(Event::new("password.changed").by(caller.user.id).session(caller.session.id));
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Confirm the address with the token from a verification link.
#[utoipa::path(post, path = "/auth/email/verify", tag = "recovery", request_body = TokenOnly,
    responses(
        (status = 204, description = "The address is verified; tokens issued from now on say so"),
        (status = 400, description = "`invalid_token`, `invalid_body`", body = ErrorBody),
        (status = 429, description = "`too_many_requests`", body = ErrorBody),
    ))]
pub async fn verify(
    State(state): State<AppState>,
    peer: ClientAddress,
    audit: Audit,
    AppJson(body): AppJson<TokenOnly>,
) -> Result<Response, ApiError> {
    state.recovery().check_limits(Action::Verify, None, &peer.ip()).await?;
    let user = state.recovery().verify_email(&body.token).await.map_err(|e| match e {
        ResetError::Store(e) => e.into(),
        _ => {
            audit.note(Event::new("email.verify_refused").reason("invalid_token"));
            invalid_token()
        }
    })?;
    audit.note(Event::new("email.verified").user(user));
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Send the verification link again.
#[utoipa::path(post, path = "/auth/email/resend", tag = "recovery", request_body = EmailOnly,
    responses(
        (status = 202, description = "The same answer whatever the address; an unverified account gets a new link, valid for 24 hours", body = Accepted),
        (status = 400, description = "`invalid_email`, `invalid_body`", body = ErrorBody),
        (status = 429, description = "`too_many_requests`", body = ErrorBody),
    ))]
pub async fn resend(
    State(state): State<AppState>,
    peer: ClientAddress,
    AppJson(body): AppJson<EmailOnly>,
) -> Result<Response, ApiError> {
    check_email(&body.email)?;
    state.recovery().check_limits(Action::Resend, Some(&body.email), &peer.ip()).await?;
    tokio::spawn(async move {
        match state.recovery().resend_verification(&body.email).await {
            Ok(()) => state.mail_waker().notify_one(),
            Err(error) => tracing::error!(%error, "cannot issue a verification link"),
        }
    });
    Ok(accepted("If that address has an unverified account, a new confirmation link has been sent to it."))
}
