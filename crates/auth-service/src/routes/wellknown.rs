//! Public signing keys.

use auth_tokens::Jwks;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use crate::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/.well-known/jwks.json", get(jwks))
}

/// The Ed25519 public keys that verify access tokens: the active key and any
/// retired key whose tokens may still be live.
#[utoipa::path(get, path = "/.well-known/jwks.json", tag = "keys",
    responses((status = 200, description = "JWK Set (RFC 7517) of OKP/Ed25519 keys", body = Object)))]
pub async fn jwks(State(state): State<AppState>) -> Response {
    let keys: Jwks = state.keys().current().jwks.clone();
    let mut response = Json(keys).into_response();
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=60"));
    response
}
