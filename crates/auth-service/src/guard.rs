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

/// The policy of every answer that is not a page: nothing may load, frame
/// or be framed by it.
const CSP_NONE: &str = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";
/// The policy of pages: their own scripts, styles and images, nothing
/// inline, no framing, forms and fetches to this origin only.
const CSP_PAGE: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                        connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";
const HSTS: &str = "max-age=31536000; includeSubDomains";

pub async fn protect(State(state): State<AppState>, request: Request, next: Next) -> Response {
    // A page of a trusted origin may read answers (CORS with credentials);
    // any other origin gets no Access-Control-* header at all.
    let cors_origin = request
        .headers()
        .get(header::ORIGIN)
        .filter(|origin| origin.to_str().is_ok_and(|o| state.cors_origins().iter().any(|c| c.eq_ignore_ascii_case(o))))
        .cloned();
    let mut response = if is_preflight(&request) {
        match cors_origin {
            Some(_) => preflight_allowed(),
            None => {
                ApiError::new(StatusCode::FORBIDDEN, "cors_refused", "this origin may not call the API").into_response()
            }
        }
    } else if is_unsafe(request.method())
        && let Err(refusal) = check_unsafe(&state, request.headers())
    {
        refusal.into_response()
    } else {
        next.run(request).await
    };
    secure(response.headers_mut(), state.settings().hsts, cors_origin);
    response
}

/// The headers every answer of the auth-service carries.
fn secure(headers: &mut HeaderMap, hsts: bool, cors_origin: Option<HeaderValue>) {
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    // Answers are per-user and may carry tokens (RFC 6749 §5.1).
    headers.entry(header::CACHE_CONTROL).or_insert(HeaderValue::from_static("no-store"));
    let page = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.trim_start().to_ascii_lowercase().starts_with("text/html"));
    let csp = if page { CSP_PAGE } else { CSP_NONE };
    headers.entry(header::CONTENT_SECURITY_POLICY).or_insert(HeaderValue::from_static(csp));
    if hsts {
        headers.insert(header::STRICT_TRANSPORT_SECURITY, HeaderValue::from_static(HSTS));
    }
    headers.append(header::VARY, HeaderValue::from_static("Origin"));
    if let Some(origin) = cors_origin {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        headers.insert(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
        headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, HeaderValue::from_static("Retry-After, X-Request-Id"));
    }
}

fn is_preflight(request: &Request) -> bool {
    request.method() == Method::OPTIONS && request.headers().contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

fn preflight_allowed() -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    let headers = response.headers_mut();
    headers.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("GET, POST, PUT, PATCH, DELETE"));
    headers.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, HeaderValue::from_static("content-type, x-csrf-token"));
    headers.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
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
