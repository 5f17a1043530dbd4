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
    /// Empty when [`Self::permissions_by_role`]: they would not fit the cookie.
    pub permissions: Vec<String>,
    /// The permissions are those of `roles`, which the gateway resolves
    /// from the role map it keeps; only in tokens too large otherwise.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub permissions_by_role: bool,
    /// Whether the user has proved the address, so that a route can require it.
    pub email_verified: bool,
    /// The user's token version it was minted from: a role change bumps
    /// it, and gateways refuse tokens of older versions (stale).
    #[serde(default)]
    pub ver: i64,
}

impl AccessClaims {
    /// A fresh 128-bit token id.
    pub fn new_jti() -> String {
        crate::b64url(&crate::random_bytes::<16>())
    }
}
