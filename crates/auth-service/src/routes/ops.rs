//! Liveness, readiness, metrics and the OpenAPI document.

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::AppState;
use crate::error::{ApiError, ErrorBody};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
}

/// The process is alive.
#[utoipa::path(get, path = "/healthz", tag = "ops", responses((status = 200, description = "Alive")))]
pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// The longest `/readyz` waits for the database.
const READY_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// The process can serve: its database answers within a second. NATS is
/// reported, not required: events wait in the outbox while it is away.
#[utoipa::path(get, path = "/readyz", tag = "ops",
    responses((status = 200, description = "Ready"), (status = 503, description = "`unavailable`", body = ErrorBody)))]
pub async fn readyz(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    match tokio::time::timeout(READY_WAIT, state.health().ping()).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => return Err(ApiError::unavailable(error)),
        Err(_) => return Err(ApiError::unavailable("the database did not answer within 1 s")),
    }
    let mut body = json!({"status": "ready", "database": "ok"});
    if let Some(connected) = state.broker_connected() {
        body["nats"] = json!(if connected { "connected" } else { "disconnected" });
    }
    Ok(Json(body))
}

/// Prometheus metrics, text format 0.0.4: on the operator port
/// (`admin.listen`), and here only with the bearer `admin.metrics_token`.
#[utoipa::path(get, path = "/metrics", tag = "ops", responses(
    (status = 200, description = "Prometheus text", body = String, content_type = "text/plain"),
    (status = 404, description = "`not_found`: no `admin.metrics_token` configured, or not presented", body = ErrorBody),
))]
pub async fn metrics(State(state): State<AppState>, headers: axum::http::HeaderMap) -> Response {
    let authorization = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    if !auth_tokens::bearer_is(authorization, state.settings().metrics_token.as_deref()) {
        return super::not_found().await.into_response();
    }
    metrics_text(&state)
}

/// The Prometheus answer.
fn metrics_text(state: &AppState) -> Response {
    let text = state.metrics_text();
    let mut response = (StatusCode::OK, text).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(crate::metrics::CONTENT_TYPE));
    response
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "ops", responses((status = 200, description = "OpenAPI 3.1", body = Object)))]
pub async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(crate::openapi::document())
}
