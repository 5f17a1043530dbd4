//! The caller's sessions: list, revoke one, revoke all others.

use auth_core::SessionId;
use auth_core::accounts::RevokeError;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get};
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
        .route("/auth/sessions", get(list).delete(revoke_others))
        .route("/auth/sessions/{id}", delete(revoke_one))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SessionView {
    pub id: Uuid,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub last_seen_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    pub user_agent: Option<String>,
    pub ip: Option<String>,
    /// The session this request was made with.
    pub current: bool,
}

impl SessionView {
    pub fn of(s: auth_core::Session, current: bool) -> Self {
        Self {
            id: s.id.as_uuid(),
            created_at: s.created_at,
            last_seen_at: s.last_seen_at,
            expires_at: s.expires_at,
            current,
            user_agent: s.user_agent,
            ip: s.ip,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SessionList {
    pub sessions: Vec<SessionView>,
}

/// The caller's active sessions, newest first.
#[utoipa::path(get, path = "/auth/sessions", tag = "sessions",
    responses(
        (status = 200, description = "Active sessions", body = SessionList),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
    ))]
pub async fn list(State(state): State<AppState>, caller: Caller) -> Result<Json<SessionList>, ApiError> {
    let sessions = state.accounts().sessions(caller.user.id).await?;
    let sessions = sessions
        .into_iter()
        .map(|s| {
            let current = s.id == caller.session.id;
            SessionView::of(s, current)
        })
        .collect();
    Ok(Json(SessionList { sessions }))
}

/// Revoke one of the caller's sessions.
#[utoipa::path(delete, path = "/auth/sessions/{id}", tag = "sessions",
    params(("id" = Uuid, Path, description = "session id"),
           ("X-CSRF-Token" = Option<String>, Header, description = "required with cookie authentication")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
        (status = 403, description = "`csrf_failed`", body = ErrorBody),
        (status = 404, description = "`session_not_found`: no such session of the caller's", body = ErrorBody),
    ))]
pub async fn revoke_one(
    State(state): State<AppState>,
    caller: Caller,
    audit: Audit,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let not_found = || ApiError::not_found("session_not_found", "no such session");
    let id: SessionId = id.parse().map_err(|_| not_found())?;
    state.accounts().revoke_session(caller.user.id, id).await.map_err(|e| match e {
        RevokeError::NotFound => not_found(),
        RevokeError::Store(e) => e.into(),
    })?;
    audit.note(Event::new("session.revoked").by(caller.user.id).session(id));
    Ok(StatusCode::NO_CONTENT)
}

/// Revoke every session of the caller except the current one.
#[utoipa::path(delete, path = "/auth/sessions", tag = "sessions",
    params(("X-CSRF-Token" = Option<String>, Header, description = "required with cookie authentication")),
    responses(
        (status = 204, description = "All other sessions revoked"),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
        (status = 403, description = "`csrf_failed`", body = ErrorBody),
    ))]
pub async fn revoke_others(
    State(state): State<AppState>,
    caller: Caller,
    audit: Audit,
) -> Result<StatusCode, ApiError> {
    let revoked = state.accounts().revoke_other_sessions(caller.user.id, caller.session.id).await?;
    audit.note(
        Event::new("sessions.revoked").by(caller.user.id).session(caller.session.id).with("revoked", revoked.len()),
    );
    Ok(StatusCode::NO_CONTENT)
}
