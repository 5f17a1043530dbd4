//! Refusals that come before any handler (DESIGN §4, checklist C8, F4, F5):
//! unsafe requests from another site and unsafe requests with a non-JSON body.
//! This covers login and register too, against login CSRF.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use auth_tokens::csrf::check_site;

use crate::AppState;
use crate::error::ApiError;

const SEC_FETCH_SITE: &str = "sec-fetch-site";

pub fn is_unsafe(method: &Method) -> bool {
    auth_tokens::csrf::changes_state(method.as_str())
}

pub async fn protect(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if is_unsafe(request.method())
        && let Err(refusal) = check_unsafe(&state, request.headers())
    {
        return refusal.into_response();
    }
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    // Answers are per-user and may carry tokens (RFC 6749 §5.1).
    headers.entry(header::CACHE_CONTROL).or_insert(HeaderValue::from_static("no-store"));
    response
}

fn check_unsafe(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let text = |name| headers.get(name).and_then(|v: &HeaderValue| v.to_str().ok());
    check_site(
        text(SEC_FETCH_SITE),
        text(header::ORIGIN.as_str()),
        text(header::HOST.as_str()),
        state.allowed_origins(),
    )
    .map_err(|refusal| ApiError::csrf_failed(refusal.to_string()))?;
    if has_body(headers) && !is_json(headers) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the body as application/json",
        ));
    }
    Ok(())
}

fn has_body(headers: &HeaderMap) -> bool {
    let length = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    length.is_some_and(|n| n > 0) || headers.contains_key(header::TRANSFER_ENCODING)
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"))
}
