//! The admin API under `/auth/admin/`: every route behind one guard
//! ([`require_admin`], a route layer, so a route added here cannot be
//! unprotected): a user whose roles give `users:admin`, or the operator's
//! bearer token (`admin.operator_token`). Users and roles are in
//! `admin_users.rs`; the deletion ledger is here.

use auth_core::roles::ADMIN_PERMISSION;
use auth_core::{Actor, UserId};
use auth_tokens::csrf::same_token;
use axum::extract::{FromRequestParts, Path, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use time::OffsetDateTime;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::caller::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::{AppState, audit};

pub fn router(state: AppState) -> Router<AppState> {
    Router::new()
        .route("/auth/admin/deletions/{user_id}", get(deletion))
        .merge(super::admin_users::router())
        .route_layer(axum::middleware::from_fn_with_state(state, require_admin))
        .route("/auth/gateway/roles", get(role_map))
}

/// Who passed the guard, for the audit log.
#[derive(Debug, Clone)]
pub struct AdminActor(pub Actor);

/// Lets through the operator's token, or a signed-in user (CSRF checked
/// for cookies) whose roles give `users:admin`; 401 otherwise, 403
/// `forbidden` for a user without it.
pub async fn require_admin(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let (mut parts, body) = request.into_parts();
    // The client as the audit layer round every route read it.
    let client = parts.extensions.get::<audit::Client>().cloned().unwrap_or_default();
    let actor =
        Actor { user: None, request_id: client.request_id, via: "api", ip: client.ip, user_agent: client.user_agent };
    let authorization = parts.headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let actor = match auth_tokens::bearer_is(authorization, state.settings().operator_token.as_deref()) {
        true => Actor { via: "operator_token", ..actor },
        false => {
            let caller = match Caller::from_request_parts(&mut parts, &state).await {
                Ok(caller) => caller,
                Err(refused) => return refused.into_response(),
            };
            if !caller.user.permissions.iter().any(|p| p == ADMIN_PERMISSION) {
                return ApiError::forbidden().into_response();
            }
            Actor { user: Some(caller.user.id), ..actor }
        }
    };
    let mut request = Request::from_parts(parts, body);
    request.extensions_mut().insert(AdminActor(actor));
    next.run(request).await
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

/// Which services have confirmed erasing a deleted user, and which are pending.
#[utoipa::path(get, path = "/auth/admin/deletions/{user_id}", tag = "admin",
    params(("user_id" = Uuid, Path, description = "the deleted user's id")),
    security(("operator" = []), ("admin" = [])),
    responses(
        (status = 200, description = "The ledger entry", body = DeletionStatus),
        (status = 401, description = "`unauthenticated`: no operator token, no valid access token", body = ErrorBody),
        (status = 403, description = "`forbidden`: the user lacks `users:admin`", body = ErrorBody),
        (status = 404, description = "`deletion_not_found`: no deleted user with this id", body = ErrorBody),
    ))]
pub async fn deletion(
    State(state): State<AppState>,
    Path(user_id): Path<String>,
) -> Result<Json<DeletionStatus>, ApiError> {
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

/// What each role allows, for gateways resolving the permissions of a
/// token too large to carry them.
#[derive(Debug, Serialize, ToSchema)]
pub struct RoleMap {
    /// Role name → its permissions.
    pub roles: std::collections::BTreeMap<String, Vec<String>>,
}

/// The role map, for gateways only: they present a credential derived
/// from the key file they share with the auth-service.
#[utoipa::path(get, path = "/auth/gateway/roles", tag = "admin",
    security(("gateway" = [])),
    responses(
        (status = 200, description = "Every role's permissions", body = RoleMap),
        (status = 401, description = "`unauthenticated`: not a gateway's credential", body = ErrorBody),
    ))]
pub async fn role_map(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
) -> Result<Json<RoleMap>, ApiError> {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(auth_tokens::bearer_token)
        .ok_or_else(ApiError::unauthenticated)?;
    if !same_token(presented, &state.keys().csrf().gateway_credential()) {
        return Err(ApiError::unauthenticated());
    }
    let roles = state.admin().roles().await?;
    Ok(Json(RoleMap { roles: roles.into_iter().map(|r| (r.name, r.permissions)).collect() }))
}
