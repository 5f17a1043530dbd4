//! `start` and `callback`.

use std::collections::HashMap;

use auth_core::accounts::{ExternalLoginError, LinkError, ProviderClaims};
use auth_core::{SessionId, UserId};
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use subtle::ConstantTimeEq;

use super::provider::Secrets;
use super::{Attempt, STATE_COOKIE, STATE_LIFETIME, challenge, safe_return};
use crate::audit::{Audit, Event};
use crate::routes::accounts::{ClientAddress, client_info, session_cookies};
use crate::{AppState, cookies};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/auth/oauth/{provider}/start", get(start))
        .route("/auth/oauth/{provider}/callback", get(callback))
        .merge(super::identities::router())
}

fn redirect_uri(state: &AppState, provider: &str) -> String {
    format!("{}/auth/oauth/{provider}/callback", state.settings().public_url.trim_end_matches('/'))
}

/// 303 to `location`, with `cookies` set.
fn see_other(location: &str, cookies: impl IntoIterator<Item = HeaderValue>) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    let headers = response.headers_mut();
    headers.insert(header::LOCATION, HeaderValue::from_str(location).unwrap_or(HeaderValue::from_static("/")));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    for cookie in cookies {
        headers.append(header::SET_COOKIE, cookie);
    }
    response
}

/// To the error page with `code`; the attempt's cookie is cleared.
fn failed(state: &AppState, code: &str) -> Response {
    failed_to(&state.oauth().error_url, code)
}

/// To `page` with `?error=code`; the attempt's cookie is cleared.
fn failed_to(page: &str, code: &str) -> Response {
    let separator = if page.contains('?') { '&' } else { '?' };
    see_other(&format!("{page}{separator}error={code}"), [cookies::clear(STATE_COOKIE, true)])
}

/// Send the browser to the provider.
#[utoipa::path(get, path = "/auth/oauth/{provider}/start", tag = "oauth",
    params(
        ("provider" = String, Path, description = "a configured provider's name"),
        ("return_to" = Option<String>, Query, description = "a path here, or a URL on a trusted origin; anything else is `/`"),
        ("login_hint" = Option<String>, Query, description = "passed on to the provider"),
    ),
    responses(
        (status = 303, description = "To the provider, with `__Host-oauth_state` set (10 minutes); or to the error page with `error=unknown_provider` or `provider_unavailable`"),
    ))]
pub async fn start(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let hint = query.get("login_hint").map(String::as_str);
    match begin(&state, &name, query.get("return_to").map(String::as_str), hint, None).await {
        Ok((url, cookie)) => see_other(&url, [cookie]),
        Err(code) => failed(&state, code),
    }
}

/// A new attempt at provider `name`: the URL to send the browser to and
/// the cookie that keeps its secrets; or the error page's code.
pub(crate) async fn begin(
    state: &AppState,
    name: &str,
    return_to: Option<&str>,
    login_hint: Option<&str>,
    link: Option<(String, String)>,
) -> Result<(String, HeaderValue), &'static str> {
    let Some(provider) = state.oauth().providers.get(name).cloned() else { return Err("unknown_provider") };
    let attempt = Attempt {
        p: name.to_owned(),
        s: auth_tokens::b64url(&auth_tokens::random_bytes::<16>()),
        n: auth_tokens::b64url(&auth_tokens::random_bytes::<16>()),
        v: auth_tokens::b64url(&auth_tokens::random_bytes::<32>()),
        r: safe_return(return_to, state.allowed_origins()),
        e: state.clock().unix() + STATE_LIFETIME,
        l: link,
    };
    let hint = login_hint.filter(|h| !h.is_empty() && h.len() <= 254);
    let secrets = Secrets { state: &attempt.s, nonce: &attempt.n, challenge: &challenge(&attempt.v) };
    match provider.authorization_url(&redirect_uri(state, name), secrets, hint).await {
        Ok(url) => Ok((url, cookies::set(STATE_COOKIE, &attempt.seal(state.keys().csrf()), STATE_LIFETIME, true))),
        Err(error) => {
            tracing::warn!(provider = %name, %error, "cannot start a login through the provider");
            Err(error.code())
        }
    }
}

/// Where the provider sends the browser back.
#[utoipa::path(get, path = "/auth/oauth/{provider}/callback", tag = "oauth",
    params(("provider" = String, Path, description = "a configured provider's name")),
    responses(
        (status = 303, description = "Signed in (the three session cookies set, as by password login) and sent to `return_to`; or sent to the error page with `error=` one of `invalid_state`, `access_denied` (or the provider's own error code), `provider_unavailable`, `provider_response_invalid`, `link_required`, `email_required`, `email_not_verified`; after a link started at `/auth/me/identities/{provider}/link`: the identity added and sent to `return_to`, or sent to `return_to` with `error=` `identity_taken` (it signs in to another account), `unauthenticated` (the session that asked has ended), `email_not_verified` or `reauthentication_required`"),
    ))]
pub async fn callback(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    peer: ClientAddress,
    headers: HeaderMap,
    audit: Audit,
) -> Response {
    let now = state.clock().unix();
    let attempt = cookies::get(&headers, STATE_COOKIE).and_then(|c| Attempt::open(c, state.keys().csrf(), now));
    let given = query.get("state").map(String::as_str).unwrap_or_default();
    // Unaudited: anyone can call here, unthrottled, with any name.
    let Some(attempt) = attempt.filter(|a| a.p == name && bool::from(a.s.as_bytes().ct_eq(given.as_bytes()))) else {
        return failed(&state, "invalid_state");
    };
    let Some(provider) = state.oauth().providers.get(&name).cloned() else { return failed(&state, "unknown_provider") };
    // From here on the name is a configured provider's, and the browser
    // holds the attempt this service sealed.
    let refused = |code: &str| {
        audit.note(Event::new("login.failed").with("method", format!("oauth:{name}")).reason(code));
        failed(&state, code)
    };
    if let Some(error) = query.get("error") {
        // The provider's code, if it is one (RFC 6749 §4.1.2.1), else generic.
        let code = if error.len() <= 64 && error.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
            error.as_str()
        } else {
            "provider_error"
        };
        return refused(code);
    }
    // RFC 9207: a provider that says who it is must be the one asked, and
    // one that promises to say it must.
    match query.get("iss") {
        Some(iss) if *iss != provider.settings.issuer => return refused("invalid_state"),
        None if provider.promises_iss().await => return refused("invalid_state"),
        _ => {}
    }
    let Some(code) = query.get("code") else { return refused("invalid_request") };
    let claims = match provider.finish(code, &attempt.v, &redirect_uri(&state, &name), &attempt.n).await {
        Ok(claims) => claims,
        Err(error) => {
            tracing::warn!(provider = %name, %error, "login through the provider failed");
            return refused(error.code());
        }
    };
    if let Some((user, session)) = &attempt.l {
        return linked(&state, &name, &claims, (user, session), &attempt.r, &audit).await;
    }
    let notice = |user: &auth_core::User| state.recovery().sign_in_added(user, &name);
    let done = match state.accounts().external_login(&claims, client_info(&headers, peer, &audit), &notice).await {
        Ok(done) => {
            // An existing account may have been linked, and told so.
            state.mail_waker().notify_one();
            done
        }
        Err(ExternalLoginError::LinkRequired) => return refused("link_required"),
        Err(ExternalLoginError::NoEmail) => return refused("email_required"),
        Err(ExternalLoginError::EmailNotVerified) => return refused("email_not_verified"),
        Err(ExternalLoginError::Disabled) => {
            audit.note(Event::new("login.failed").with("method", format!("oauth:{name}")).reason("account_disabled"));
            return failed(&state, "access_denied");
        }
        Err(ExternalLoginError::Store(error)) => {
            tracing::error!(provider = %name, %error, "cannot sign in through the provider");
            return refused("unavailable");
        }
    };
    state.metrics().login(true);
    if let Some(entry) = done.audit {
        audit.stored(*entry);
    }
    match session_cookies(&state, &done.user, &done.session, Some(&done.refresh)) {
        Ok(mut set) => {
            set.push(cookies::clear(STATE_COOKIE, true));
            see_other(&attempt.r, set)
        }
        Err(error) => {
            tracing::error!(?error, "cannot sign the session's token");
            failed(&state, "unavailable")
        }
    }
}

/// The end of a link started by a signed-in account: the identity joins
/// that account (if its session still stands), and nobody is signed in anew.
async fn linked(
    state: &AppState,
    name: &str,
    claims: &ProviderClaims,
    (user, session): (&String, &String),
    return_to: &str,
    audit: &Audit,
) -> Response {
    let (Ok(user), Ok(session)) = (user.parse::<UserId>(), session.parse::<SessionId>()) else {
        return failed(state, "invalid_state");
    };
    let event = |action| Event::new(action).by(user).session(session).with("provider", name);
    // Back where the link started (the account page), told why.
    let refused = |code| {
        audit.note(event("identity.link_refused").reason(code));
        failed_to(return_to, code)
    };
    let notice = |user: &auth_core::User| state.recovery().sign_in_added(user, name);
    match state.accounts().link_external(user, session, claims, &notice).await {
        Ok(identity) => {
            audit.note(event("identity.linked").with("identity", identity.id.to_string()));
            state.mail_waker().notify_one();
            see_other(return_to, [cookies::clear(STATE_COOKIE, true)])
        }
        Err(LinkError::NotAuthenticated) => refused("unauthenticated"),
        Err(LinkError::Taken) => refused("identity_taken"),
        Err(LinkError::EmailNotVerified) => refused("email_not_verified"),
        // Checked when the link started; the flow may take longer.
        Err(LinkError::ReauthenticationRequired) => refused("reauthentication_required"),
        Err(LinkError::Store(error)) => {
            tracing::error!(provider = %name, %error, "cannot link the provider identity");
            failed(state, "unavailable")
        }
    }
}
