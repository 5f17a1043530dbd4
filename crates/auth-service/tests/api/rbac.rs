//! Roles and permissions, and the admin API under `/auth/admin/`.

use auth_core::{EventKind, UserId};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::*;

async fn id_of(app: &TestApp, browser: &Browser) -> String {
    body(app.me(browser).await).await["id"].as_str().unwrap().to_owned()
}

/// Every operation of the OpenAPI document under `/auth/admin/` (the ops
/// tests prove the document lists every route), with its path filled in.
async fn admin_operations(app: &TestApp) -> Vec<(Method, String)> {
    let doc = body(app.request(Method::GET, "/openapi.json").send().await.unwrap()).await;
    let mut found = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        if !path.starts_with("/auth/admin/") {
            continue;
        }
        let filled = path
            .replace("{user_id}", &UserId::new().to_string())
            .replace("{id}", &UserId::new().to_string())
            .replace("{role}", "user")
            .replace("{name}", "probe");
        for method in item.as_object().unwrap().keys() {
            found.push((method.to_uppercase().parse().unwrap(), filled.clone()));
        }
    }
    assert!(found.len() >= 12, "{found:?}");
    found
}

#[tokio::test]
async fn every_admin_route_refuses_anyone_without_users_admin() {
    each_backend(async |app| {
        let (_, plain) = app.signed_in().await;
        let (_, admin) = app.signed_in_admin().await;
        for (method, path) in admin_operations(&app).await {
            let anonymous = app.request(method.clone(), &path).json(&json!({"permissions": []})).send().await;
            assert_eq!(anonymous.unwrap().status(), StatusCode::UNAUTHORIZED, "{method} {path}");
            let user = app.as_page(method.clone(), &path, &plain).json(&json!({"permissions": []})).send().await;
            let user = user.unwrap();
            assert_eq!(user.status(), StatusCode::FORBIDDEN, "{method} {path}");
            assert_eq!(code(user).await, "forbidden", "{method} {path}");
            let bearer = app.request(method.clone(), &path).bearer_auth(plain.access()).send().await.unwrap();
            assert_eq!(bearer.status(), StatusCode::FORBIDDEN, "{method} {path}");
            let allowed = app.as_page(method.clone(), &path, &admin).json(&json!({"permissions": []})).send().await;
            let allowed = allowed.unwrap().status();
            assert!(![401, 403].contains(&allowed.as_u16()), "{method} {path}: {allowed}");
            // A cookie without the CSRF header is no admin either.
            if method != Method::GET {
                let no_csrf = app.with_cookies(method.clone(), &path, &admin).send().await.unwrap();
                assert_eq!(code(no_csrf).await, "csrf_failed", "{method} {path}");
            }
        }
        let operator = app.request(Method::GET, "/auth/admin/roles").bearer_auth(OPERATOR_TOKEN).send().await;
        assert_eq!(operator.unwrap().status(), StatusCode::OK, "the operator's token too");
        let put = app.request(Method::PUT, "/auth/admin/roles/by-operator").bearer_auth(OPERATOR_TOKEN);
        assert_eq!(put.json(&json!({"permissions": []})).send().await.unwrap().status(), StatusCode::OK);
        let audit = app.request(Method::GET, "/auth/admin/audit?limit=1").bearer_auth(OPERATOR_TOKEN).send().await;
        let newest = &body(audit.unwrap()).await["entries"][0];
        assert_eq!((newest["actor"].clone(), newest["detail"]["via"].clone()), (Value::Null, json!("operator_token")));
    })
    .await;
}

#[tokio::test]
async fn a_granted_role_brings_its_permissions_and_makes_earlier_tokens_stale() {
    each_backend(async |app| {
        let (_, admin) = app.signed_in_admin().await;
        let (email, user) = app.signed_in().await;
        let id = id_of(&app, &user).await;
        let put = app.as_page(Method::PUT, "/auth/admin/roles/editor", &admin);
        let put = put.json(&json!({"description": "edits notes", "permissions": ["notes:write", "notes:read"]}));
        let put = put.send().await.unwrap();
        assert_eq!(put.status(), StatusCode::OK);
        assert_eq!(body(put).await["permissions"], json!(["notes:read", "notes:write"]));

        let old = claims(user.access());
        let granted = app.as_page(Method::PUT, &format!("/auth/admin/users/{id}/roles/editor"), &admin).send().await;
        assert_eq!(body(granted.unwrap()).await["roles"], json!(["editor", "user"]));
        let stored = app.stores.users.user_by_id(id.parse().unwrap()).await.unwrap().unwrap();
        assert!(old["ver"].as_i64().unwrap() < stored.tokens_version, "the old token is stale");

        // In the same second as the change, the refreshed token is current.
        let refreshed = app.refresh(&user).await;
        assert_eq!(refreshed.status(), StatusCode::OK);
        let mut after = user.clone();
        after.absorb(&refreshed);
        let fresh = claims(after.access());
        assert_eq!(fresh["ver"].as_i64().unwrap(), stored.tokens_version);
        assert_eq!(fresh["roles"], json!(["editor", "user"]));
        assert_eq!(fresh["permissions"], json!(["notes:read", "notes:write"]));
        assert_eq!(body(app.me(&after).await).await["roles"], json!(["editor", "user"]));

        let events = app.stores.outbox.events_of(id.parse().unwrap()).await.unwrap();
        let changed = events.iter().find(|e| e.event.kind == EventKind::RolesChanged).unwrap();
        assert_eq!(changed.event.data["roles"], json!(["editor", "user"]));

        // Granting again changes nothing; an unknown role or user is 404.
        let again = app.as_page(Method::PUT, &format!("/auth/admin/users/{id}/roles/editor"), &admin).send().await;
        assert_eq!(again.unwrap().status(), StatusCode::OK);
        let count = |events: &Vec<auth_core::events::StoredEvent>| {
            events.iter().filter(|e| e.event.kind == EventKind::RolesChanged).count()
        };
        assert_eq!(count(&app.stores.outbox.events_of(id.parse().unwrap()).await.unwrap()), 1);
        let unknown = app.as_page(Method::PUT, &format!("/auth/admin/users/{id}/roles/nope"), &admin).send().await;
        assert_eq!(code(unknown.unwrap()).await, "role_not_found");
        let nobody = format!("/auth/admin/users/{}/roles/editor", UserId::new());
        assert_eq!(code(app.as_page(Method::PUT, &nobody, &admin).send().await.unwrap()).await, "user_not_found");

        // Redefining the role reaches its holder; revoking takes it away.
        let narrower = app.as_page(Method::PUT, "/auth/admin/roles/editor", &admin);
        let narrower = narrower.json(&json!({"permissions": ["notes:read"]})).send().await.unwrap();
        assert_eq!(narrower.status(), StatusCode::OK);
        assert_eq!(count(&app.stores.outbox.events_of(id.parse().unwrap()).await.unwrap()), 2);
        let revoked = app.as_page(Method::DELETE, &format!("/auth/admin/users/{id}/roles/editor"), &admin).send().await;
        assert_eq!(body(revoked.unwrap()).await["roles"], json!(["user"]));
        let listed = app.as_page(Method::GET, &format!("/auth/admin/users?prefix={}", &email[..6]), &admin).send();
        let listed = body(listed.await.unwrap()).await;
        assert!(listed["users"].as_array().unwrap().iter().any(|u| u["email"] == email.as_str()));
    })
    .await;
}

#[tokio::test]
async fn two_changes_in_one_second_leave_no_token_issued_between_them_standing() {
    each_backend(async |app| {
        let (_, admin) = app.signed_in_admin().await;
        let (_, user) = app.signed_in().await;
        let id = id_of(&app, &user).await;
        let current = async || app.stores.users.user_by_id(id.parse().unwrap()).await.unwrap().unwrap().tokens_version;
        let refreshed = async |browser: &Browser| {
            let mut after = browser.clone();
            after.absorb(&app.refresh(browser).await);
            (claims(after.access())["ver"].as_i64().unwrap(), after)
        };
        // The clock stands still: every step falls in the same second.
        let path = format!("/auth/admin/users/{id}/roles/admin");
        assert_eq!(app.as_page(Method::PUT, &path, &admin).send().await.unwrap().status(), StatusCode::OK);
        let (between, user) = refreshed(&user).await;
        assert_eq!(between, current().await, "minted after the grant: current");
        assert_eq!(app.as_page(Method::DELETE, &path, &admin).send().await.unwrap().status(), StatusCode::OK);
        assert!(between < current().await, "the token of the grant is stale after the revoke");
        let (after, _) = refreshed(&user).await;
        assert_eq!(after, current().await);
    })
    .await;
}

#[tokio::test]
async fn the_most_roles_a_user_may_hold_still_fit_the_cookie_and_gateways_get_the_role_map() {
    each_backend(async |app| {
        let (_, admin) = app.signed_in_admin().await;
        let (email, user) = app.signed_in().await;
        let id = id_of(&app, &user).await;
        // 31 roles besides `user`, with the longest names and 100 long
        // permissions each: 360 KB of permissions that no cookie could hold.
        let name = |i: usize| format!("r{i:02}-{}", "x".repeat(60));
        for i in 0..=31 {
            let permissions: Vec<String> =
                (0..100).map(|j| format!("res{i:02}-{}:act{j:03}-{}", "a".repeat(50), "b".repeat(50))).collect();
            let path = format!("/auth/admin/roles/{}", name(i));
            let put = app.as_page(Method::PUT, &path, &admin).json(&json!({"permissions": permissions})).send();
            assert_eq!(put.await.unwrap().status(), StatusCode::OK);
            let grant = format!("/auth/admin/users/{id}/roles/{}", name(i));
            let granted = app.as_page(Method::PUT, &grant, &admin).send().await.unwrap();
            if i < 31 {
                assert_eq!(granted.status(), StatusCode::OK, "role {i}");
            } else {
                assert_eq!(code(granted).await, "too_many_roles", "the 33rd");
            }
        }
        app.clock.advance(time::Duration::seconds(1));
        let login = app.login(&email, PASSWORD).await;
        assert_eq!(login.status(), StatusCode::OK);
        let access = login
            .headers()
            .get_all("set-cookie")
            .iter()
            .map(|c| c.to_str().unwrap().to_owned())
            .find(|c| c.starts_with("__Host-access_token="))
            .unwrap();
        assert!(access.len() <= 4096, "Set-Cookie of {} bytes", access.len());
        let mut browser = Browser::default();
        browser.absorb(&login);
        let token = claims(browser.access());
        assert_eq!(token["roles"].as_array().unwrap().len(), 32);
        assert_eq!((token["permissions"].clone(), token["permissions_by_role"].clone()), (json!([]), json!(true)));
        let me = body(app.me(&browser).await).await;
        assert_eq!(me["permissions"].as_array().unwrap().len(), 3100, "the account still has them all");

        // What a gateway resolves them from, for gateways only.
        let small = body(app.me(&admin).await).await;
        assert!(claims(admin.access())["permissions_by_role"].is_null(), "small tokens carry their permissions");
        assert_eq!(small["permissions"], json!(["users:admin"]));
        let credential = app.keys.csrf().gateway_credential();
        let map = app.request(Method::GET, "/auth/gateway/roles").bearer_auth(&credential).send().await.unwrap();
        let map = body(map).await;
        assert_eq!(map["roles"][name(3)].as_array().unwrap().len(), 100);
        assert_eq!(map["roles"]["admin"], json!(["users:admin"]));
        for wrong in [Some(browser.access().to_owned()), Some("x".repeat(43)), None] {
            let mut request = app.request(Method::GET, "/auth/gateway/roles");
            if let Some(wrong) = wrong {
                request = request.bearer_auth(wrong);
            }
            assert_eq!(request.send().await.unwrap().status(), StatusCode::UNAUTHORIZED);
        }
    })
    .await;
}

#[tokio::test]
async fn a_disabled_account_is_refused_at_once_and_as_a_wrong_password() {
    each_backend(async |app| {
        let (_, admin) = app.signed_in_admin().await;
        let (email, user) = app.signed_in().await;
        let id = id_of(&app, &user).await;
        let disabled = app.as_page(Method::POST, &format!("/auth/admin/users/{id}/disable"), &admin).send().await;
        assert_eq!(disabled.unwrap().status(), StatusCode::NO_CONTENT);
        assert_eq!(app.me(&user).await.status(), StatusCode::UNAUTHORIZED, "the live cookie, at once");
        assert_eq!(app.refresh(&user).await.status(), StatusCode::UNAUTHORIZED);
        let refused = app.login(&email, PASSWORD).await;
        let wrong = app.login(&email, "not the password at all").await;
        assert_eq!(refused.status(), wrong.status());
        assert_eq!(body(refused).await, body(wrong).await, "no hint that the account is disabled");
        let detail = body(app.as_page(Method::GET, &format!("/auth/admin/users/{id}"), &admin).send().await.unwrap());
        let detail = detail.await;
        assert_eq!((detail["user"]["disabled"].clone(), detail["sessions"].clone()), (json!(true), json!([])));

        let enabled = app.as_page(Method::POST, &format!("/auth/admin/users/{id}/enable"), &admin).send().await;
        assert_eq!(enabled.unwrap().status(), StatusCode::NO_CONTENT);
        assert_eq!(app.login(&email, PASSWORD).await.status(), StatusCode::OK);
        let kinds: Vec<EventKind> =
            app.stores.outbox.events_of(id.parse().unwrap()).await.unwrap().iter().map(|e| e.event.kind).collect();
        assert!(kinds.contains(&EventKind::Disabled) && kinds.contains(&EventKind::Enabled), "{kinds:?}");
    })
    .await;
}

#[tokio::test]
async fn roles_are_checked_built_in_ones_kept_and_every_action_audited() {
    each_backend(async |app| {
        let (_, admin) = app.signed_in_admin().await;
        let admin_id = id_of(&app, &admin).await;
        let put = |name: &str, body: Value| {
            app.as_page(Method::PUT, &format!("/auth/admin/roles/{name}"), &admin).json(&body).send()
        };
        for (name, bad, code_expected) in [
            ("Bad Name", json!({"permissions": []}), "invalid_role"),
            ("ok", json!({"permissions": ["notes"]}), "invalid_role"),
            ("ok", json!({"permissions": ["notes:*"]}), "invalid_role"),
            ("ok", json!({"permissions": [], "members": ["x"]}), "invalid_body"),
            ("admin", json!({"permissions": ["notes:read"]}), "builtin_role"),
            ("user", json!({"permissions": ["users:admin"]}), "invalid_role"),
        ] {
            let refused = put(name, bad.clone()).await.unwrap();
            assert_eq!(code(refused).await, code_expected, "{name} {bad}");
        }
        for builtin in ["user", "admin"] {
            let path = format!("/auth/admin/roles/{builtin}");
            let refused = app.as_page(Method::DELETE, &path, &admin).send().await.unwrap();
            assert_eq!(code(refused).await, "builtin_role");
        }
        assert_eq!(put("ops", json!({"permissions": ["ops:read"]})).await.unwrap().status(), StatusCode::OK);
        let gone = app.as_page(Method::DELETE, "/auth/admin/roles/ops", &admin).send().await.unwrap();
        assert_eq!(gone.status(), StatusCode::NO_CONTENT);
        let roles = body(app.as_page(Method::GET, "/auth/admin/roles", &admin).send().await.unwrap()).await;
        let names: Vec<&str> = roles["roles"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["admin", "user"]);

        let audit = app.as_page(Method::GET, "/auth/admin/audit?limit=2", &admin).header("x-request-id", "req-42");
        let audit = body(audit.send().await.unwrap()).await;
        let entries = audit["entries"].as_array().unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!((entries[0]["action"].as_str(), entries[0]["target"].as_str()), (Some("role.delete"), Some("ops")));
        assert_eq!(entries[0]["actor"], admin_id.as_str());
        assert_eq!(entries[0]["detail"]["via"], "api");
        let older = format!("/auth/admin/audit?before={}", audit["next"].as_str().unwrap());
        let older = body(app.as_page(Method::GET, &older, &admin).send().await.unwrap()).await;
        let actions: Vec<&str> =
            older["entries"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
        assert!(actions.contains(&"role.grant"), "the grant that made the admin: {actions:?}");
        let bad = app.as_page(Method::GET, "/auth/admin/audit?before=x", &admin).send().await.unwrap();
        assert_eq!(code(bad).await, "invalid_cursor");

        // The request id the gateway gave travels into the row.
        let tagged = app.as_page(Method::PUT, "/auth/admin/roles/tagged", &admin).header("x-request-id", "req-7");
        assert_eq!(tagged.json(&json!({"permissions": []})).send().await.unwrap().status(), StatusCode::OK);
        let newest = body(app.as_page(Method::GET, "/auth/admin/audit?limit=1", &admin).send().await.unwrap()).await;
        assert_eq!(newest["entries"][0]["request_id"], "req-7");
        assert_eq!(newest["entries"][0]["ip"], "127.0.0.1", "and the client it came from");
    })
    .await;
}

#[tokio::test]
async fn an_administrator_deletes_an_account_as_its_owner_would() {
    each_backend(async |app| {
        let (_, admin) = app.signed_in_admin().await;
        let (email, user) = app.signed_in().await;
        let id = id_of(&app, &user).await;
        let deleted = app.as_page(Method::DELETE, &format!("/auth/admin/users/{id}"), &admin).send().await.unwrap();
        assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
        assert_eq!(app.me(&user).await.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(app.login(&email, PASSWORD).await.status(), StatusCode::UNAUTHORIZED);
        let events = app.stores.outbox.events_of(id.parse().unwrap()).await.unwrap();
        assert!(events.iter().any(|e| e.event.kind == EventKind::Deleted));
        let again = app.as_page(Method::DELETE, &format!("/auth/admin/users/{id}"), &admin).send().await.unwrap();
        assert_eq!(code(again).await, "user_not_found");
    })
    .await;
}

#[tokio::test]
async fn no_request_body_can_set_roles_verification_or_ids() {
    each_backend(async |app| {
        let address = email();
        for extra in [json!({"roles": ["admin"]}), json!({"email_verified": true}), json!({"id": UserId::new()})] {
            let mut attempt = json!({"email": address, "password": PASSWORD});
            attempt.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            let refused = app.request(Method::POST, "/auth/register").json(&attempt).send().await.unwrap();
            assert_eq!(refused.status(), StatusCode::BAD_REQUEST, "{extra}");
        }
        assert_eq!(app.register(&address, PASSWORD).await.status(), StatusCode::CREATED, "no account was made");
        let browser = app.log_in(&address).await;
        assert_eq!(body(app.me(&browser).await).await["roles"], json!(["user"]));
    })
    .await;
}
