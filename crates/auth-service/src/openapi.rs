//! The OpenAPI 3.1 document, generated from the handlers' annotations.

use crate::oauth::identities;
use crate::oauth::routes as oauth;
use crate::routes::{accounts, admin, admin_users, ops, recovery, sessions, wellknown};

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
        admin::deletion, admin::role_map,
        admin_users::users, admin_users::user, admin_users::grant, admin_users::revoke,
        admin_users::disable, admin_users::enable, admin_users::delete_user,
        admin_users::roles, admin_users::put_role, admin_users::delete_role, admin_users::audit,
        ops::healthz, ops::readyz, ops::metrics, ops::openapi,
    ),
    tags(
        (name = "accounts", description = "Registration, login, refresh, logout, deletion"),
        (name = "sessions", description = "The caller's login sessions"),
        (name = "recovery", description = "Password reset and change, email verification"),
        (name = "oauth", description = "Login through OpenID Connect providers, GitHub and Facebook"),
        (name = "keys", description = "Public signing keys"),
        (name = "ops", description = "Health, readiness, metrics, this document"),
        (name = "admin", description = "Users, roles, the audit log and the deletion ledger: a user with `users:admin`, or the operator's bearer token"),
    )
)]
pub struct ApiDoc;
