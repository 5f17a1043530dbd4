//! The OpenAPI 3.1 document, generated from the handlers' annotations.

use crate::oauth::identities;
use crate::oauth::routes as oauth;
use crate::routes::{accounts, admin, ops, recovery, sessions, wellknown};

#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "Gatehouse auth-service", description = "Accounts, sessions and tokens. Every error is `{\"error\": {\"code\", \"message\"}}`."),
    paths(
        accounts::register, accounts::login, accounts::refresh, accounts::logout,
        accounts::delete_account, accounts::me,
        sessions::list, sessions::revoke_one, sessions::revoke_others,
        recovery::forgot, recovery::reset, recovery::change, recovery::verify, recovery::resend,
        oauth::start, oauth::callback, identities::list, identities::link, identities::unlink,
        wellknown::jwks,
        admin::deletion,
        ops::healthz, ops::readyz, ops::metrics, ops::openapi,
    ),
    tags(
        (name = "accounts", description = "Registration, login, refresh, logout, deletion"),
        (name = "sessions", description = "The caller's login sessions"),
        (name = "recovery", description = "Password reset and change, email verification"),
        (name = "oauth", description = "Login through OpenID Connect providers, GitHub and Facebook"),
        (name = "keys", description = "Public signing keys"),
        (name = "ops", description = "Health, readiness, metrics, this document"),
        (name = "admin", description = "Operator endpoints (bearer operator token)"),
    )
)]
pub struct ApiDoc;
