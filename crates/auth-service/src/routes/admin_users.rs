//! Users, roles and the audit log, for administrators (`users:admin`);
//! behind the guard of `admin.rs`. Every change writes an audit row.

use std::collections::HashMap;

use auth_core::roles::RoleError;
use auth_core::{Role, User, UserId};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;
use uuid::Uuid;

use super::admin::AdminActor;
use super::sessions::SessionView;
use crate::AppState;
use crate::error::{ApiError, AppJson, ErrorBody};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/auth/admin/users", get(users))
        .route("/auth/admin/users/{id}", get(user).delete(delete_user))
        .route("/auth/admin/users/{id}/roles/{role}", put(grant).delete(revoke))
        .route("/auth/admin/users/{id}/disable", post(disable))
        .route("/auth/admin/users/{id}/enable", post(enable))
        .route("/auth/admin/roles", get(roles))
        .route("/auth/admin/roles/{name}", put(put_role).delete(delete_role))
        .route("/auth/admin/audit", get(audit))
}

/// A user as administrators see it.
#[derive(Debug, Serialize, ToSchema)]
pub struct AdminUserView {
    pub id: Uuid,
    pub email: String,
    pub email_verified: bool,
    pub roles: Vec<String>,
    pub permissions: Vec<String>,
    pub disabled: bool,
    pub has_password: bool,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

impl From<&User> for AdminUserView {
    fn from(u: &User) -> Self {
        Self {
            id: u.id.as_uuid(),
            email: u.email.to_string(),
            email_verified: u.email_verified,
            roles: u.roles.clone(),
            permissions: u.permissions.clone(),
            disabled: u.disabled,
            has_password: u.password_hash.is_some(),
            created_at: u.created_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UserPage {
    pub users: Vec<AdminUserView>,
    /// Pass as `after` for the next page; absent on the last one.
    pub next: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UserDetail {
    pub user: AdminUserView,
    /// Its live sessions, newest first.
    pub sessions: Vec<SessionView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RoleView {
    pub name: String,
    pub description: String,
    pub permissions: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RoleList {
    pub roles: Vec<RoleView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HeldRoles {
    /// Every role the user holds now.
    pub roles: Vec<String>,
}

/// A role's definition; unknown fields are refused.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RoleBody {
    #[serde(default)]
    pub description: String,
    /// `resource:action` each; the role holds exactly these.
    pub permissions: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditView {
    pub id: Uuid,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// The acting user; absent for the operator (token or command line)
    /// and for requests nobody was signed in to (a failed login).
    pub actor: Option<Uuid>,
    /// `role.grant`, `user.disable`, … for administrative actions;
    /// `login.succeeded`, `login.failed`, `login.throttled`, `logout`,
    /// `refresh.reused`, `password.reset`, `password.changed`,
    /// `account.deleted`, `identity.linked`, … for authentication events.
    pub action: String,
    /// The user (or role) acted on; for an authentication event, the
    /// account concerned when known.
    pub target: Option<String>,
    pub request_id: Option<String>,
    #[schema(value_type = Object)]
    pub detail: serde_json::Value,
    /// The client's address, as the service trusts it.
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    /// A stable code saying why: `wrong_password`, `unknown_account`,
    /// `account_throttled`, `client_throttled`, …
    pub reason: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditPage {
    pub entries: Vec<AuditView>,
    /// Pass as `before` for older entries; absent on the last page.
    pub next: Option<String>,
}

fn user_id(id: &str) -> Result<UserId, ApiError> {
    id.parse().map_err(|_| no_user())
}

fn no_user() -> ApiError {
    ApiError::not_found("user_not_found", "no user with this id")
}

fn limit(query: &HashMap<String, String>) -> Result<u32, ApiError> {
    match query.get("limit") {
        None => Ok(50),
        Some(n) => n
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=200).contains(n))
            .ok_or_else(|| ApiError::bad_request("invalid_limit", "limit is a number from 1 to 200")),
    }
}

fn role_error(error: RoleError) -> ApiError {
    match error {
        RoleError::NoSuchUser => no_user(),
        RoleError::NoSuchRole => ApiError::not_found("role_not_found", "no role with this name"),
        RoleError::Invalid(why) => ApiError::bad_request("invalid_role", why),
        RoleError::BuiltIn => ApiError::new(StatusCode::CONFLICT, "builtin_role", error.to_string()),
        RoleError::TooMany => ApiError::new(StatusCode::CONFLICT, "too_many_roles", error.to_string()),
        RoleError::Store(e) => e.into(),
    }
}

/// Users by email, a page at a time.
#[utoipa::path(get, path = "/auth/admin/users", tag = "admin",
    params(
        ("prefix" = Option<String>, Query, description = "only emails starting with this (any case)"),
        ("after" = Option<String>, Query, description = "the `next` of the page before"),
        ("limit" = Option<u32>, Query, description = "1 to 200, default 50"),
    ),
    security(("admin" = []), ("operator" = [])),
    responses(
        (status = 200, description = "A page of users by email", body = UserPage),
        (status = 400, description = "`invalid_limit`", body = ErrorBody),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
        (status = 403, description = "`forbidden`: the caller lacks `users:admin`", body = ErrorBody),
    ))]
pub async fn users(
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<UserPage>, ApiError> {
    let limit = limit(&query)?;
    let prefix = query.get("prefix").map(String::as_str).unwrap_or_default();
    let page = state.admin().users_page(prefix, query.get("after").map(String::as_str), limit).await?;
    let next = (page.len() == limit as usize).then(|| page.last().map(|u| u.email.to_string())).flatten();
    Ok(Json(UserPage { users: page.iter().map(AdminUserView::from).collect(), next }))
}

/// One user, with roles and live sessions.
#[utoipa::path(get, path = "/auth/admin/users/{id}", tag = "admin",
    params(("id" = Uuid, Path, description = "the user's id")),
    security(("admin" = []), ("operator" = [])),
    responses(
        (status = 200, description = "The user", body = UserDetail),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
        (status = 403, description = "`forbidden`", body = ErrorBody),
        (status = 404, description = "`user_not_found`", body = ErrorBody),
    ))]
pub async fn user(State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<UserDetail>, ApiError> {
    let (user, sessions) = state.admin().user(user_id(&id)?).await?.ok_or_else(no_user)?;
    let sessions = sessions.into_iter().map(|s| SessionView::of(s, false)).collect();
    Ok(Json(UserDetail { user: AdminUserView::from(&user), sessions }))
}

/// Grant a role. The user's earlier tokens are stale at once (the gateway
/// answers 401 `token_stale`; a refresh brings the new claims).
#[utoipa::path(put, path = "/auth/admin/users/{id}/roles/{role}", tag = "admin",
    params(("id" = Uuid, Path, description = "the user's id"), ("role" = String, Path, description = "a role's name"),
           ("X-CSRF-Token" = Option<String>, Header, description = "required with cookie authentication")),
    security(("admin" = []), ("operator" = [])),
    responses(
        (status = 200, description = "Granted (or held already); every role held now", body = HeldRoles),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
        (status = 403, description = "`forbidden`, `csrf_failed`", body = ErrorBody),
        (status = 404, description = "`user_not_found`, `role_not_found`", body = ErrorBody),
        (status = 409, description = "`too_many_roles`: the user holds 32 already", body = ErrorBody),
    ))]
pub async fn grant(
    State(state): State<AppState>,
    Extension(AdminActor(actor)): Extension<AdminActor>,
    Path((id, role)): Path<(String, String)>,
) -> Result<Json<HeldRoles>, ApiError> {
    change(&state, &actor, &id, &role, true).await
}

/// Revoke a role; as granting, the user's earlier tokens are stale at once.
#[utoipa::path(delete, path = "/auth/admin/users/{id}/roles/{role}", tag = "admin",
    params(("id" = Uuid, Path, description = "the user's id"), ("role" = String, Path, description = "a role's name"),
           ("X-CSRF-Token" = Option<String>, Header, description = "required with cookie authentication")),
    security(("admin" = []), ("operator" = [])),
    responses(
        (status = 200, description = "Revoked (or not held); every role held now", body = HeldRoles),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
        (status = 403, description = "`forbidden`, `csrf_failed`", body = ErrorBody),
        (status = 404, description = "`user_not_found`, `role_not_found`", body = ErrorBody),
    ))]
pub async fn revoke(
    State(state): State<AppState>,
    Extension(AdminActor(actor)): Extension<AdminActor>,
    Path((id, role)): Path<(String, String)>,
) -> Result<Json<HeldRoles>, ApiError> {
    change(&state, &actor, &id, &role, false).await
}

async fn change(
    state: &AppState,
    actor: &auth_core::Actor,
    id: &str,
    role: &str,
    grant: bool,
) -> Result<Json<HeldRoles>, ApiError> {
    let user = user_id(id)?;
    let roles = match state.admin().change_role(actor, user, role, grant).await.map_err(role_error)? {
        Some(roles) => roles,
        None => state.admin().user(user).await?.ok_or_else(no_user)?.0.roles,
    };
    tracing::info!(user_id = %user, role, grant, actor = ?actor.user, "roles changed");
    Ok(Json(HeldRoles { roles }))
}

/// Disable the account: every session ends at once, login is refused as a
/// wrong password is.
#[utoipa::path(post, path = "/auth/admin/users/{id}/disable", tag = "admin",
    params(("id" = Uuid, Path, description = "the user's id"),
           ("X-CSRF-Token" = Option<String>, Header, description = "required with cookie authentication")),
    security(("admin" = []), ("operator" = [])),
    responses(
        (status = 204, description = "Disabled (or was)"),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
        (status = 403, description = "`forbidden`, `csrf_failed`", body = ErrorBody),
        (status = 404, description = "`user_not_found`", body = ErrorBody),
    ))]
pub async fn disable(
    State(state): State<AppState>,
    Extension(AdminActor(actor)): Extension<AdminActor>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    set_disabled(&state, &actor, &id, true).await
}

/// Enable a disabled account again.
#[utoipa::path(post, path = "/auth/admin/users/{id}/enable", tag = "admin",
    params(("id" = Uuid, Path, description = "the user's id"),
           ("X-CSRF-Token" = Option<String>, Header, description = "required with cookie authentication")),
    security(("admin" = []), ("operator" = [])),
    responses(
        (status = 204, description = "Enabled (or was)"),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
        (status = 403, description = "`forbidden`, `csrf_failed`", body = ErrorBody),
        (status = 404, description = "`user_not_found`", body = ErrorBody),
    ))]
pub async fn enable(
    State(state): State<AppState>,
    Extension(AdminActor(actor)): Extension<AdminActor>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    set_disabled(&state, &actor, &id, false).await
}

async fn set_disabled(
    state: &AppState,
    actor: &auth_core::Actor,
    id: &str,
    disabled: bool,
) -> Result<Response, ApiError> {
    let user = user_id(id)?;
    if !state.admin().set_disabled(actor, user, disabled).await? {
        return Err(no_user());
    }
    tracing::info!(user_id = %user, disabled, actor = ?actor.user, "account state changed");
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Delete the user as its own deletion would: everything it owns in the
/// auth database goes, every token fails at once, `user.deleted` is emitted.
#[utoipa::path(delete, path = "/auth/admin/users/{id}", tag = "admin",
    params(("id" = Uuid, Path, description = "the user's id"),
           ("X-CSRF-Token" = Option<String>, Header, description = "required with cookie authentication")),
    security(("admin" = []), ("operator" = [])),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
        (status = 403, description = "`forbidden`, `csrf_failed`", body = ErrorBody),
        (status = 404, description = "`user_not_found`", body = ErrorBody),
    ))]
pub async fn delete_user(
    State(state): State<AppState>,
    Extension(AdminActor(actor)): Extension<AdminActor>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let user = user_id(id.as_str())?;
    if state.admin().user(user).await?.is_none() {
        return Err(no_user());
    }
    if !state.accounts().erase(user).await? {
        return Err(no_user());
    }
    // After the deletion, so no row claims one that failed.
    state.admin().record(&actor, "user.delete", Some(user.to_string())).await?;
    tracing::info!(user_id = %user, actor = ?actor.user, "account deleted by an administrator");
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Every role with its permissions.
#[utoipa::path(get, path = "/auth/admin/roles", tag = "admin",
    security(("admin" = []), ("operator" = [])),
    responses(
        (status = 200, description = "Roles by name", body = RoleList),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
        (status = 403, description = "`forbidden`", body = ErrorBody),
    ))]
pub async fn roles(State(state): State<AppState>) -> Result<Json<RoleList>, ApiError> {
    let roles = state.admin().roles().await?;
    let roles = roles
        .into_iter()
        .map(|r| RoleView { name: r.name, description: r.description, permissions: r.permissions })
        .collect();
    Ok(Json(RoleList { roles }))
}

/// Create a role, or set its description and permissions. Its holders'
/// earlier tokens are stale at once when the permissions change.
#[utoipa::path(put, path = "/auth/admin/roles/{name}", tag = "admin", request_body = RoleBody,
    params(("name" = String, Path, description = "1-64 of a-z 0-9 _ -, starting with a letter"),
           ("X-CSRF-Token" = Option<String>, Header, description = "required with cookie authentication")),
    security(("admin" = []), ("operator" = [])),
    responses(
        (status = 200, description = "The role as stored", body = RoleView),
        (status = 400, description = "`invalid_role` (name, description or a permission), `invalid_body` (unknown fields too)", body = ErrorBody),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
        (status = 403, description = "`forbidden`, `csrf_failed`", body = ErrorBody),
        (status = 409, description = "`builtin_role`: admin must keep users:admin", body = ErrorBody),
    ))]
pub async fn put_role(
    State(state): State<AppState>,
    Extension(AdminActor(actor)): Extension<AdminActor>,
    Path(name): Path<String>,
    AppJson(body): AppJson<RoleBody>,
) -> Result<Json<RoleView>, ApiError> {
    let role = Role { name: name.clone(), description: body.description, permissions: body.permissions };
    state.admin().put_role(&actor, role).await.map_err(role_error)?;
    let stored = state.admin().roles().await?.into_iter().find(|r| r.name == name);
    let stored = stored.ok_or_else(|| ApiError::not_found("role_not_found", "no role with this name"))?;
    Ok(Json(RoleView { name: stored.name, description: stored.description, permissions: stored.permissions }))
}

/// Delete a role; its holders lose it (and their earlier tokens are stale).
#[utoipa::path(delete, path = "/auth/admin/roles/{name}", tag = "admin",
    params(("name" = String, Path, description = "a role's name"),
           ("X-CSRF-Token" = Option<String>, Header, description = "required with cookie authentication")),
    security(("admin" = []), ("operator" = [])),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
        (status = 403, description = "`forbidden`, `csrf_failed`", body = ErrorBody),
        (status = 404, description = "`role_not_found`", body = ErrorBody),
        (status = 409, description = "`builtin_role`: user and admin stay", body = ErrorBody),
    ))]
pub async fn delete_role(
    State(state): State<AppState>,
    Extension(AdminActor(actor)): Extension<AdminActor>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    state.admin().delete_role(&actor, &name).await.map_err(role_error)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The audit log, newest first.
#[utoipa::path(get, path = "/auth/admin/audit", tag = "admin",
    params(
        ("before" = Option<String>, Query, description = "the `next` of the page before"),
        ("limit" = Option<u32>, Query, description = "1 to 200, default 50"),
    ),
    security(("admin" = []), ("operator" = [])),
    responses(
        (status = 200, description = "Administrative actions and authentication events: who, what, to whom, when, under which request, from which client, why", body = AuditPage),
        (status = 400, description = "`invalid_limit`, `invalid_cursor`", body = ErrorBody),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
        (status = 403, description = "`forbidden`", body = ErrorBody),
    ))]
pub async fn audit(
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<AuditPage>, ApiError> {
    let limit = limit(&query)?;
    let before = match query.get("before") {
        None => None,
        Some(cursor) => Some(
            parse_cursor(cursor)
                .ok_or_else(|| ApiError::bad_request("invalid_cursor", "before is the `next` of an earlier page"))?,
        ),
    };
    let entries = state.admin().audit_page(before, limit).await?;
    let next = (entries.len() == limit as usize)
        .then(|| entries.last().map(|e| format!("{}.{}", e.at.unix_timestamp_nanos(), e.id)))
        .flatten();
    let entries = entries
        .into_iter()
        .map(|e| AuditView {
            id: e.id,
            at: e.at,
            actor: e.actor.map(|a| a.as_uuid()),
            action: e.action,
            target: e.target,
            request_id: e.request_id,
            detail: e.detail,
            ip: e.ip,
            user_agent: e.user_agent,
            reason: e.reason,
        })
        .collect();
    Ok(Json(AuditPage { entries, next }))
}

/// `{unix ns}.{id}`: exact on both backends.
fn parse_cursor(cursor: &str) -> Option<(OffsetDateTime, Uuid)> {
    let (ns, id) = cursor.split_once('.')?;
    let at = OffsetDateTime::from_unix_timestamp_nanos(ns.parse::<i128>().ok()?).ok()?;
    Some((at, id.parse().ok()?))
}
