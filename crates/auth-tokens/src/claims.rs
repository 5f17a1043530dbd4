//! The access-token claim set (DESIGN §5).

use serde::{Deserialize, Serialize};

/// Claims of a Gatehouse access token. Every field is required when decoding,
/// so a token missing any of them fails to parse and is rejected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    pub iss: String,
    /// The user id, never the email.
    pub sub: String,
    pub aud: String,
    pub exp: i64,
    pub iat: i64,
    pub nbf: i64,
    /// 128 random bits, base64url.
    pub jti: String,
    /// The session this token belongs to.
    pub sid: String,
    pub roles: Vec<String>,
    pub permissions: Vec<String>,
    /// Whether the user has proved the address, so that a route can require it.
    pub email_verified: bool,
}

impl AccessClaims {
    /// A fresh 128-bit token id.
    pub fn new_jti() -> String {
        crate::b64url(&crate::random_bytes::<16>())
    }
}
