//! Who is calling: the [`Caller`] extractor.
//!
//! The access token comes from `Authorization: Bearer` or the access cookie.
//! It must verify (signature, claims, time), and its session must still stand
//! in the database, so a logout or deletion takes effect at once. Unsafe
//! requests authenticated by cookie must also carry a CSRF token valid for
//! that very session.

use auth_core::accounts::AuthError;
use auth_core::{Session, SessionId, User, UserId};
use auth_tokens::AccessClaims;
use auth_tokens::csrf::check_pair;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};

use crate::AppState;
use crate::cookies;
use crate::error::ApiError;
use crate::guard::is_unsafe;

pub use auth_tokens::Credential;

#[derive(Debug, Clone)]
pub struct Caller {
    pub claims: AccessClaims,
    pub user: User,
    pub session: Session,
    pub via: Credential,
}

/// The presented access token and how it came; `Err` for a malformed
/// `Authorization` header, `Ok(None)` when there is none at all.
fn presented(headers: &HeaderMap) -> Result<Option<(&str, Credential)>, ApiError> {
    let authorization = headers.get(header::AUTHORIZATION).map(|v| v.to_str().unwrap_or_default());
    let cookies = headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok());
    auth_tokens::presented_token(authorization, cookies).map_err(|_| ApiError::unauthenticated())
}

/// The CSRF rule for cookie-authenticated unsafe requests: the header equals
/// the cookie, and the token was minted for this session.
pub fn check_csrf(state: &AppState, headers: &HeaderMap, session: SessionId) -> Result<(), ApiError> {
    let header = headers.get("x-csrf-token").and_then(|v| v.to_str().ok());
    let cookie = cookies::get(headers, cookies::CSRF);
    check_pair(state.keys().csrf(), header, cookie, &session.to_string())
        .map_err(|refusal| ApiError::csrf_failed(refusal.to_string()))
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let (token, via) = presented(&parts.headers)?.ok_or_else(ApiError::unauthenticated)?;
        let claims = state.keys().current().verifier.verify(token, state.clock().unix()).map_err(|reason| {
            tracing::debug!(reason = reason.reason(), "access token refused");
            ApiError::unauthenticated()
        })?;
        let (Ok(user_id), Ok(session_id)) = (claims.sub.parse::<UserId>(), claims.sid.parse::<SessionId>()) else {
            return Err(ApiError::unauthenticated());
        };
        let (user, session) = state.accounts().authenticate(user_id, session_id).await.map_err(|e| match e {
            AuthError::NotAuthenticated => ApiError::unauthenticated(),
            AuthError::Store(e) => e.into(),
        })?;
        if via == Credential::Cookie && is_unsafe(&parts.method) {
            check_csrf(state, &parts.headers, session.id)?;
        }
        Ok(Self { claims, user, session, via })
    }
}
