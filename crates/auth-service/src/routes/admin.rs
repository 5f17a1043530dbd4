//! Operator endpoints, behind the operator bearer token (`admin.operator_token`).

use auth_core::UserId;
use auth_tokens::csrf::same_token;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use time::OffsetDateTime;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::AppState;
use crate::error::{ApiError, ErrorBody};

pub fn router() -> Router<AppState> {
    Router::new().route("/auth/admin/deletions/{user_id}", get(deletion))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Confirmation {
    pub service: String,
    #[serde(with = "time::serde::rfc3339")]
    pub confirmed_at: OffsetDateTime,
}

/// Where the erasure of a deleted user stands.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeletionStatus {
    pub user_id: Uuid,
    #[serde(with = "time::serde::rfc3339")]
    pub deleted_at: OffsetDateTime,
    pub confirmed: Vec<Confirmation>,
    /// Services expected to confirm (`events.deletion_services`) that have not yet.
    pub pending: Vec<String>,
    pub complete: bool,
}

fn operator(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(expected) = state.settings().operator_token.as_deref() else {
        return Err(ApiError::new(StatusCode::FORBIDDEN, "operator_disabled", "no operator token is configured"));
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(auth_tokens::bearer_token)
        .ok_or_else(ApiError::unauthenticated)?;
    if same_token(presented, expected) { Ok(()) } else { Err(ApiError::unauthenticated()) }
}

/// Which services have confirmed erasing a deleted user, and which are pending.
#[utoipa::path(get, path = "/auth/admin/deletions/{user_id}", tag = "admin",
    params(("user_id" = Uuid, Path, description = "the deleted user's id")),
    security(("operator" = [])),
    responses(
        (status = 200, description = "The ledger entry", body = DeletionStatus),
        (status = 401, description = "`unauthenticated`: missing or wrong operator token", body = ErrorBody),
        (status = 403, description = "`operator_disabled`: no operator token configured", body = ErrorBody),
        (status = 404, description = "`deletion_not_found`: no deleted user with this id", body = ErrorBody),
    ))]
pub async fn deletion(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(user_id): Path<String>,
) -> Result<Json<DeletionStatus>, ApiError> {
    operator(&state, &headers)?;
    let not_found = || ApiError::not_found("deletion_not_found", "no deleted user with this id");
    let user: UserId = user_id.parse().map_err(|_| not_found())?;
    let record = state.ledger().deletion(user).await?.ok_or_else(not_found)?;
    let pending: Vec<String> = state
        .settings()
        .deletion_services
        .iter()
        .filter(|s| !record.confirmations.iter().any(|(c, _)| c == *s))
        .cloned()
        .collect();
    Ok(Json(DeletionStatus {
        user_id: record.user_id.as_uuid(),
        deleted_at: record.deleted_at,
        complete: pending.is_empty(),
        pending,
        confirmed: record
            .confirmations
            .into_iter()
            .map(|(service, confirmed_at)| Confirmation { service, confirmed_at })
            .collect(),
    }))
}
