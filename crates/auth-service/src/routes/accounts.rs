//! Register, log in, refresh, log out, delete, me.

use std::net::{IpAddr, SocketAddr};

use auth_core::accounts::{ClientInfo, DeleteError, LoginError, RefreshError, Refreshed, RegisterError};
use auth_core::throttling::{Rate, ThrottleError};
use auth_core::{OpaqueSecret, Session, User};
use auth_tokens::AccessClaims;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::audit::{Audit, Event};
use crate::caller::{Caller, check_csrf};
use crate::error::{ApiError, AppJson, ErrorBody};
use crate::{AppState, audit, cookies};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/auth/register", post(register))
        .route("/auth/login", post(login))
        .route("/auth/refresh", post(refresh))
        .route("/auth/logout", delete(logout))
        .route("/auth/delete", delete(delete_account))
        .route("/auth/me", get(me))
}

/// Email and password, for registration and login.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    pub email: String,
    pub password: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RegisteredUser {
    pub id: Uuid,
    pub email: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// The authenticated user.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserView {
    pub id: Uuid,
    pub email: String,
    pub email_verified: bool,
    pub roles: Vec<String>,
    pub permissions: Vec<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

impl From<&User> for UserView {
    fn from(u: &User) -> Self {
        Self {
            id: u.id.as_uuid(),
            email: u.email.to_string(),
            email_verified: u.email_verified,
            roles: u.roles.clone(),
            permissions: u.permissions.clone(),
            created_at: u.created_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SessionRef {
    pub id: Uuid,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LoginResponse {
    pub user: UserView,
    pub session: SessionRef,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeleteAccount {
    /// Required for accounts that have a password.
    pub password: Option<String>,
}

/// Create an account.
#[utoipa::path(post, path = "/auth/register", tag = "accounts", request_body = Credentials,
    responses(
        (status = 201, description = "Account created; `user.registered` is in the outbox; a verification link (24 hours) is mailed", body = RegisteredUser),
        (status = 400, description = "`invalid_email`, `password_too_short`, `password_too_long`, `password_too_common`, `password_breached`, `invalid_body`", body = ErrorBody),
        (status = 403, description = "`csrf_failed`: cross-site request", body = ErrorBody),
        (status = 409, description = "`email_taken` (unless `registration.conceal_existing`: then 201 as for a new address, and the owner is mailed)", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`", body = ErrorBody),
        (status = 429, description = "`too_many_requests`, with `Retry-After`: too many registrations from this client", body = ErrorBody),
        (status = 503, description = "`busy`: too many password hashes in flight", body = ErrorBody),
    ))]
pub async fn register(
    State(state): State<AppState>,
    peer: ClientAddress,
    audit: Audit,
    AppJson(body): AppJson<Credentials>,
) -> Result<Response, ApiError> {
    state.accounts().admit(Rate::Register, &peer.ip()).await?;
    let conceal = state.settings().accounts.conceal_existing;
    // Taken before the work, as a new account's creation time is.
    let started = state.clock().now();
    let user = match state.accounts().register(&body.email, &body.password).await {
        Ok(user) => user,
        Err(RegisterError::EmailTaken) if conceal => {
            // A row as a new account's, so the work is alike too.
            audit.note(Event::new("account.registered").reason("taken_address_concealed"));
            return Ok(concealed(&state, &body.email, started).await);
        }
        Err(RegisterError::InvalidEmail) => {
            return Err(ApiError::bad_request("invalid_email", "not a valid email address"));
        }
        Err(RegisterError::Password(p)) => return Err(ApiError::bad_request(p.code(), p.to_string())),
        Err(RegisterError::EmailTaken) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "email_taken",
                "an account with this email already exists",
            ));
        }
        Err(RegisterError::Hash(e)) => return Err(e.into()),
        Err(RegisterError::Store(e)) => return Err(e.into()),
    };
    audit.note(Event::new("account.registered").user(user.id).with("method", "password"));
    // The account stands either way; a lost link can be sent again.
    match state.recovery().send_verification(&user).await {
        Ok(()) => state.mail_waker().notify_one(),
        Err(error) => tracing::error!(user_id = %user.id, %error, "cannot issue the verification link"),
    }
    let body = RegisteredUser { id: user.id.as_uuid(), email: user.email.to_string(), created_at: user.created_at };
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// The answer to registering a taken address when that is concealed:
/// shaped as a new account's (an id no account has, the time now), with
/// the owner told by mail where a new account gets its verification link.
async fn concealed(state: &AppState, email: &str, started: OffsetDateTime) -> Response {
    let Ok(email) = auth_core::Email::parse(email) else {
        return ApiError::bad_request("invalid_email", "not a valid email address").into_response();
    };
    match state.recovery().notify_existing(&email).await {
        Ok(()) => state.mail_waker().notify_one(),
        Err(error) => tracing::error!(%error, "cannot tell an account's owner of a second registration"),
    }
    tracing::info!("registration of a taken address concealed");
    // An id made as an account's is (a random UUID, version 4).
    let id = auth_core::UserId::new().as_uuid();
    let body = RegisteredUser { id, email: email.to_string(), created_at: started };
    (StatusCode::CREATED, Json(body)).into_response()
}

/// The client's address: the TCP peer (or, in `gatehouse up`, the peer the
/// gateway in front passed in), unless that is a trusted proxy, whose
/// `X-Forwarded-For` then says (see [`auth_tokens::proxies::client_address`]).
pub struct ClientAddress(pub Option<IpAddr>);

impl ClientAddress {
    /// The address as text; empty when unknown.
    pub fn ip(&self) -> String {
        self.0.map(|a| a.to_string()).unwrap_or_default()
    }
}

impl axum::extract::FromRequestParts<AppState> for ClientAddress {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|ConnectInfo(addr)| addr.ip());
        let forwarded_for = parts.headers.get_all("x-forwarded-for").into_iter().filter_map(|v| v.to_str().ok());
        let trusted = &state.settings().trusted_proxies;
        Ok(Self(peer.map(|peer| auth_tokens::proxies::client_address(peer, forwarded_for, trusted))))
    }
}

pub(crate) fn client_info(headers: &HeaderMap, ClientAddress(address): ClientAddress, audit: &Audit) -> ClientInfo {
    ClientInfo {
        user_agent: audit::user_agent(headers),
        ip: address.map(|ip| ip.to_string()),
        request_id: audit.request_id(),
    }
}

/// Log in with email and password; sets the three session cookies.
#[utoipa::path(post, path = "/auth/login", tag = "accounts", request_body = Credentials,
    responses(
        (status = 200, description = "Logged in; `__Host-access_token`, `__Host-refresh_token` and `__Host-csrf_token` are set", body = LoginResponse),
        (status = 401, description = "`invalid_credentials`, identical for unknown email and wrong password", body = ErrorBody),
        (status = 403, description = "`csrf_failed`: cross-site request; `email_not_verified` (right password, address not yet confirmed, when the deployment requires it)", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`", body = ErrorBody),
        (status = 429, description = "`too_many_requests`, with `Retry-After`: too many failed logins for this address (the same whether or not it has an account), or too many logins from this client", body = ErrorBody),
        (status = 503, description = "`busy`", body = ErrorBody),
    ))]
pub async fn login(
    State(state): State<AppState>,
    peer: ClientAddress,
    headers: HeaderMap,
    audit: Audit,
    AppJson(body): AppJson<Credentials>,
) -> Result<Response, ApiError> {
    let client = client_info(&headers, peer, &audit);
    let ip = client.ip.clone().unwrap_or_default();
    if let Err(refused) = state.accounts().admit(Rate::Login, &ip).await {
        if matches!(refused, ThrottleError::Throttled { .. }) {
            state.metrics().login_throttled(false);
            // A log line, not a row: a flood would otherwise cost a write
            // for every request its bucket refuses without one.
            tracing::info!(%ip, reason = "client_throttled", "login refused");
        }
        return Err(refused.into());
    }
    match state.accounts().login(&body.email, &body.password, client).await {
        Ok(done) => {
            state.metrics().login(true);
            if let Some(entry) = done.audit {
                audit.stored(*entry);
            }
            session_response(&state, &done.user, &done.session, Some(&done.refresh))
        }
        Err(LoginError::InvalidCredentials { user, why }) => {
            state.metrics().login(false);
            let failed = Event::new("login.failed").reason(why.code());
            audit.note(match user {
                Some(user) => failed.user(user),
                None => failed,
            });
            Err(ApiError::invalid_credentials())
        }
        Err(LoginError::EmailNotVerified { user }) => {
            state.metrics().login(false);
            audit.note(Event::new("login.failed").user(user).reason("email_not_verified"));
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "email_not_verified",
                "confirm your email address first; POST /auth/email/resend sends the link again",
            ))
        }
        Err(LoginError::Throttled { retry_after }) => {
            state.metrics().login_throttled(true);
            audit.note(Event::new("login.throttled").reason("account_throttled"));
            Err(ApiError::throttled(retry_after))
        }
        Err(LoginError::Hash(e)) => Err(e.into()),
        Err(LoginError::Store(e)) => Err(e.into()),
    }
}

/// Rotate the refresh token and issue a new access token.
#[utoipa::path(post, path = "/auth/refresh", tag = "accounts",
    params(("X-CSRF-Token" = String, Header, description = "equal to the `__Host-csrf_token` cookie")),
    responses(
        (status = 200, description = "New cookies set", body = LoginResponse),
        (status = 401, description = "`unauthenticated`: unknown, reused (the session is then revoked) or expired refresh token", body = ErrorBody),
        (status = 403, description = "`csrf_failed`", body = ErrorBody),
        (status = 429, description = "`too_many_requests`, with `Retry-After`: too many refreshes from this client", body = ErrorBody),
    ))]
pub async fn refresh(
    State(state): State<AppState>,
    peer: ClientAddress,
    headers: HeaderMap,
    audit: Audit,
) -> Result<Response, ApiError> {
    state.accounts().admit(Rate::Refresh, &peer.ip()).await?;
    let token = cookies::get(&headers, cookies::REFRESH).ok_or_else(ApiError::unauthenticated)?;
    // CSRF before rotation: a refused request must not consume the token.
    let session = state.accounts().session_of_refresh(token).await?.ok_or_else(ApiError::unauthenticated)?;
    check_csrf(&state, &headers, session)?;
    match state.accounts().refresh(token).await {
        Ok(Refreshed::Rotated(done)) => session_response(&state, &done.user, &done.session, Some(&done.refresh)),
        Ok(Refreshed::WithinGrace { user, session }) => session_response(&state, &user, &session, None),
        Err(refused @ (RefreshError::Invalid | RefreshError::Reused { .. } | RefreshError::SessionEnded)) => {
            if let RefreshError::Reused { user, session } = refused {
                let reused = Event::new("refresh.reused").user(user).session(session);
                audit.note(reused.reason("refresh_token_reuse").alarming());
            }
            let mut response = ApiError::unauthenticated().into_response();
            append_cookies(response.headers_mut(), cookies::clear_all());
            Ok(response)
        }
        Err(RefreshError::Store(e)) => Err(e.into()),
    }
}

/// Signs a fresh access token and answers with the session cookies. Without
/// `refresh` (a refresh that lost a race within the grace window) the refresh
/// cookie is left as the winner set it.
fn session_response(
    state: &AppState,
    user: &User,
    session: &Session,
    refresh: Option<&OpaqueSecret>,
) -> Result<Response, ApiError> {
    let set = session_cookies(state, user, session, refresh)?;
    let body = LoginResponse {
        user: UserView::from(user),
        session: SessionRef { id: session.id.as_uuid(), expires_at: session.expires_at },
    };
    let mut response = Json(body).into_response();
    append_cookies(response.headers_mut(), set);
    Ok(response)
}

/// The session's cookies: a fresh access token, and with `refresh` the
/// refresh token and a CSRF token for the session.
/// The most a `Set-Cookie` value may weigh for every browser to keep it
/// (RFC 6265 §6.1 asks for at least 4096 bytes per cookie).
pub const MAX_COOKIE: usize = 4096;

pub(crate) fn session_cookies(
    state: &AppState,
    user: &User,
    session: &Session,
    refresh: Option<&OpaqueSecret>,
) -> Result<Vec<HeaderValue>, ApiError> {
    let tokens = &state.settings().tokens;
    let now = state.clock().now();
    let iat = now.unix_timestamp();
    let claims = AccessClaims {
        iss: tokens.issuer.clone(),
        sub: user.id.to_string(),
        aud: tokens.audience.clone(),
        exp: iat + tokens.lifetime,
        iat,
        nbf: iat,
        jti: AccessClaims::new_jti(),
        sid: session.id.to_string(),
        roles: user.roles.clone(),
        permissions: user.permissions.clone(),
        permissions_by_role: false,
        email_verified: user.email_verified,
        // Read with the roles above, in one statement: a token is never
        // newer than the data it carries.
        ver: user.tokens_version,
    };
    let signer = &state.keys().current().signer;
    let mut access =
        cookies::set(cookies::ACCESS, &signer.sign(&claims).map_err(ApiError::internal)?, tokens.lifetime, true);
    if access.len() > MAX_COOKIE {
        // Browsers keep cookies up to 4 KiB: the permissions give way to the
        // roles, which gateways resolve from their role map.
        let roles_only = AccessClaims { permissions: Vec::new(), permissions_by_role: true, ..claims };
        let token = signer.sign(&roles_only).map_err(ApiError::internal)?;
        access = cookies::set(cookies::ACCESS, &token, tokens.lifetime, true);
    }
    let session_left = (session.expires_at - now).whole_seconds().max(0);
    let mut set = vec![access];
    if let Some(refresh) = refresh {
        set.push(cookies::set(cookies::REFRESH, refresh.expose(), session_left, true));
        let csrf = state.keys().csrf().mint(&session.id.to_string());
        set.push(cookies::set(cookies::CSRF, &csrf, session_left, false));
    }
    Ok(set)
}

fn append_cookies(headers: &mut HeaderMap, values: impl IntoIterator<Item = HeaderValue>) {
    for value in values {
        headers.append(header::SET_COOKIE, value);
    }
}

pub(crate) fn cleared(status: StatusCode) -> Response {
    let mut response = status.into_response();
    append_cookies(response.headers_mut(), cookies::clear_all());
    response
}

/// End this session everywhere at once and clear the cookies.
#[utoipa::path(delete, path = "/auth/logout", tag = "accounts",
    params(("X-CSRF-Token" = Option<String>, Header, description = "required with cookie authentication")),
    responses(
        (status = 204, description = "Session revoked, cookies cleared"),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
        (status = 403, description = "`csrf_failed`", body = ErrorBody),
    ))]
pub async fn logout(State(state): State<AppState>, caller: Caller, audit: Audit) -> Result<Response, ApiError> {
    state.accounts().logout(caller.session.id).await?;
    audit.note(Event::new("logout").by(caller.user.id).session(caller.session.id));
    Ok(cleared(StatusCode::NO_CONTENT))
}

/// Delete the account and everything it owns; every token fails at once.
#[utoipa::path(delete, path = "/auth/delete", tag = "accounts", request_body = DeleteAccount,
    params(("X-CSRF-Token" = Option<String>, Header, description = "required with cookie authentication")),
    responses(
        (status = 204, description = "Account deleted, `user.deleted` is in the outbox, cookies cleared"),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
        (status = 403, description = "`wrong_password`, `reauthentication_required` or `csrf_failed`", body = ErrorBody),
        (status = 429, description = "`too_many_requests`, with `Retry-After`: too many wrong passwords for this account, here or at login", body = ErrorBody),
    ))]
pub async fn delete_account(
    State(state): State<AppState>,
    caller: Caller,
    audit: Audit,
    AppJson(body): AppJson<DeleteAccount>,
) -> Result<Response, ApiError> {
    let deleted = state.accounts().delete_account(caller.user.id, caller.session.id, body.password.as_deref()).await;
    let refused = |reason| audit.note(Event::new("account.delete_refused").by(caller.user.id).reason(reason));
    deleted.map_err(|e| match e {
        DeleteError::WrongPassword => {
            refused("wrong_password");
            ApiError::new(StatusCode::FORBIDDEN, "wrong_password", "the password is wrong")
        }
        DeleteError::ReauthenticationRequired => {
            refused("reauthentication_required");
            ApiError::new(
                StatusCode::FORBIDDEN,
                "reauthentication_required",
                "log in again, then delete the account within five minutes",
            )
        }
        DeleteError::NotAuthenticated => ApiError::unauthenticated(),
        DeleteError::Throttled { retry_after } => {
            refused("account_throttled");
            ApiError::throttled(retry_after)
        }
        DeleteError::Hash(e) => e.into(),
        DeleteError::Store(e) => e.into(),
    })?;
    audit.note(Event::new("account.deleted").by(caller.user.id));
    Ok(cleared(StatusCode::NO_CONTENT))
}

/// The authenticated user.
#[utoipa::path(get, path = "/auth/me", tag = "accounts",
    responses(
        (status = 200, description = "The caller", body = UserView),
        (status = 401, description = "`unauthenticated`, with `WWW-Authenticate: Bearer`", body = ErrorBody),
    ))]
pub async fn me(caller: Caller) -> Json<UserView> {
    Json(UserView::from(&caller.user))
}
