//! The OpenAPI 3.1 document, generated from the handlers' annotations,
//! with the answers any operation may get before its handler runs.

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

/// The document served at `/openapi.json`: [`ApiDoc`] plus, on every
/// operation, the refusals made before any handler runs, so that no answer
/// is undocumented.
pub fn document() -> utoipa::openapi::OpenApi {
    let mut doc = <ApiDoc as utoipa::OpenApi>::openapi();
    for item in doc.paths.paths.values_mut() {
        let operations = [
            (false, &mut item.get),
            (true, &mut item.put),
            (true, &mut item.post),
            (true, &mut item.delete),
            (true, &mut item.patch),
        ];
        for (changes_state, operation) in operations {
            let Some(operation) = operation.as_mut() else { continue };
            let responses = &mut operation.responses.responses;
            // The gateway in front refuses a path it cannot read one way only.
            refusal(responses, "400", "`invalid_path`: a path that could be read more than one way");
            refusal(responses, "400", "`invalid_request`: a path or query that cannot be read");
            if changes_state {
                refusal(responses, "403", "`csrf_failed`: a cross-site request");
                refusal(responses, "415", "`unsupported_media_type`: a body that is not `application/json`");
            }
            if operation.request_body.is_some() {
                refusal(responses, "400", "`invalid_body`, `invalid_json`: not the JSON this operation takes");
                refusal(responses, "413", "`body_too_large`: over 16 KiB");
            }
        }
    }
    doc
}

/// Documents `code` among `responses`: a new error answer, or `description`
/// added to the one there unless it names its error code already.
fn refusal(
    responses: &mut std::collections::BTreeMap<String, utoipa::openapi::RefOr<utoipa::openapi::Response>>,
    status: &str,
    description: &str,
) {
    use utoipa::openapi::{Content, Ref, RefOr, Response};
    let code = description.split('`').nth(1).unwrap_or(description);
    match responses.get_mut(status) {
        Some(RefOr::T(known)) if known.description.contains(code) => {}
        Some(RefOr::T(known)) => known.description = format!("{}; {description}", known.description),
        Some(RefOr::Ref(_)) => {}
        None => {
            let mut response = Response::new(description);
            let body = Content::new(Some(Ref::from_schema_name("ErrorBody")));
            response.content.insert("application/json".to_owned(), RefOr::T(body));
            responses.insert(status.to_owned(), RefOr::T(response));
        }
    }
}
