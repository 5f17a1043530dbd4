//! `ApiError`: every failure of the API as `{"error": {"code", "message"}}` with
//! a stable code. 5xx bodies are opaque; their cause goes to the log only.

use axum::extract::rejection::JsonRejection;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Seconds, for 429 and 503.
    pub retry_after: Option<u32>,
}

/// The JSON body of every error.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, snake_case; safe to branch on.
    pub code: String,
    /// For humans; may change.
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), retry_after: None }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn unauthenticated() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthenticated", "authentication is required")
    }

    /// Signed in, but not allowed; says nothing of what was missing.
    pub fn forbidden() -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", "you are not allowed to do this")
    }

    pub fn invalid_credentials() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "invalid_credentials", "invalid email or password")
    }

    pub fn csrf_failed(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "csrf_failed", message)
    }

    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }

    pub fn busy() -> Self {
        Self {
            retry_after: Some(1),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, "busy", "the server is busy; retry shortly")
        }
    }

    /// 429 `too_many_requests`, the same whatever was throttled.
    pub fn throttled(retry_after: time::Duration) -> Self {
        // Rounded up: a client that waits as told is not refused again.
        let secs = (retry_after.as_seconds_f64().ceil() as i64).max(1);
        let secs = u32::try_from(secs).unwrap_or(u32::MAX);
        Self {
            retry_after: Some(secs),
            ..Self::new(StatusCode::TOO_MANY_REQUESTS, "too_many_requests", "too many requests; try again later")
        }
    }

    /// A 500 whose cause is logged, never sent.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(%cause, "internal error");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", "something went wrong on our side")
    }

    /// A 503 for a dependency that is down, cause logged.
    pub fn unavailable(cause: impl std::fmt::Display) -> Self {
        tracing::error!(%cause, "dependency unavailable");
        Self {
            retry_after: Some(1),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "a dependency is unavailable; retry shortly")
        }
    }
}

impl From<auth_core::throttling::ThrottleError> for ApiError {
    fn from(e: auth_core::throttling::ThrottleError) -> Self {
        match e {
            auth_core::throttling::ThrottleError::Throttled { retry_after } => Self::throttled(retry_after),
            auth_core::throttling::ThrottleError::Store(e) => e.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody { error: ErrorDetail { code: self.code.into(), message: self.message } };
        let mut response = (self.status, axum::Json(body)).into_response();
        let headers = response.headers_mut();
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(secs) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection {
            JsonRejection::MissingJsonContentType(_) => Self::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as application/json",
            ),
            JsonRejection::JsonSyntaxError(_) => Self::bad_request("invalid_json", "the body is not valid JSON"),
            JsonRejection::JsonDataError(e) => Self::bad_request("invalid_body", e.body_text()),
            JsonRejection::BytesRejection(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Self::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", "the body is larger than 16 KiB")
            }
            other => Self::bad_request("invalid_body", other.body_text()),
        }
    }
}

impl From<auth_core::StoreError> for ApiError {
    fn from(e: auth_core::StoreError) -> Self {
        match e {
            auth_core::StoreError::Unavailable(_) => Self::unavailable(e),
            _ => Self::internal(e),
        }
    }
}

impl From<auth_core::HashError> for ApiError {
    fn from(e: auth_core::HashError) -> Self {
        match e {
            auth_core::HashError::Busy => Self::busy(),
            auth_core::HashError::Internal(_) => Self::internal(e),
        }
    }
}

/// `axum::Json` whose rejections are [`ApiError`]s.
#[derive(Debug)]
pub struct AppJson<T>(pub T);

impl<T, S> axum::extract::FromRequest<S> for AppJson<T>
where
    axum::Json<T>: axum::extract::FromRequest<S, Rejection = JsonRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Self::Rejection> {
        let axum::Json(value) = axum::Json::<T>::from_request(req, state).await?;
        Ok(Self(value))
    }
}

/// Answers the framework's own plain-text refusals (a path segment or a
/// query it cannot parse) with the one error body, code `invalid_request`,
/// keeping their status.
pub async fn framework_refusals(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let response = next.run(request).await;
    let plain = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("text/plain"));
    if !response.status().is_client_error() || !plain {
        return response;
    }
    ApiError::new(response.status(), "invalid_request", "the request's path or query could not be read").into_response()
}
