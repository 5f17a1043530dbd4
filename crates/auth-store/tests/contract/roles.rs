//! Roles, grants and account state: what the admin use cases rely on.

use auth_core::roles::{AccountState, AuditEntry, Role, RoleChange};
use auth_core::{DomainEvent, EventKind, UserId};
use auth_store::Stores;

use crate::{each_backend, kinds, logged_in, now, registered};

fn audit(action: &str) -> AuditEntry {
    AuditEntry {
        id: uuid::Uuid::now_v7(),
        at: now(),
        actor: None,
        action: action.into(),
        target: None,
        request_id: None,
        detail: serde_json::Value::Null,
        ip: None,
        user_agent: None,
        reason: None,
    }
}

fn role(name: &str) -> Role {
    Role { name: name.into(), description: String::new(), permissions: vec!["notes:read".into()] }
}

#[tokio::test]
async fn disabling_ends_every_session_and_bumps_the_version_its_event_carries() {
    each_backend(async |stores: Stores| {
        let u = registered(&stores, "dora@example.com").await;
        let t0 = now();
        let (a, _) = logged_in(&stores, u.id, t0).await;
        let (b, _) = logged_in(&stores, u.id, t0).await;
        let event_for = |version| DomainEvent::disabled(u.id, version, t0);
        let state = stores.roles.set_disabled(u.id, true, t0, &event_for, &audit("user.disable")).await.unwrap();
        let AccountState::Disabled { mut sessions, version } = state else { panic!("{state:?}") };
        sessions.sort_by_key(|s| s.to_string());
        let mut both = vec![a.id, b.id];
        both.sort_by_key(|s| s.to_string());
        assert_eq!((sessions, version), (both, u.tokens_version + 1));
        let stored = stores.users.user_by_id(u.id).await.unwrap().unwrap();
        assert_eq!((stored.disabled, stored.tokens_version), (true, version));
        let events = stores.outbox.events_of(u.id).await.unwrap();
        let disabled = events.iter().find(|e| e.event.kind == EventKind::Disabled).unwrap();
        assert_eq!(disabled.event.data["version"], serde_json::json!(version));

        let again = stores.roles.set_disabled(u.id, true, t0, &event_for, &audit("user.disable")).await.unwrap();
        assert_eq!(again, AccountState::Unchanged);
        let enable = |_| DomainEvent::enabled(u.id, t0);
        let enabled = stores.roles.set_disabled(u.id, false, t0, &enable, &audit("user.enable")).await.unwrap();
        assert_eq!(enabled, AccountState::Enabled);
        let stored = stores.users.user_by_id(u.id).await.unwrap().unwrap();
        assert_eq!((stored.disabled, stored.tokens_version), (false, version), "enabling leaves the version");
        let nobody = UserId::new();
        let none = stores.roles.set_disabled(nobody, true, t0, &event_for, &audit("user.disable")).await.unwrap();
        assert_eq!(none, AccountState::NoSuchUser);
        let events = kinds(&stores.outbox.events_of(u.id).await.unwrap());
        assert_eq!(events.iter().filter(|k| **k == EventKind::Disabled).count(), 1, "{events:?}");
    })
    .await;
}

/// A grant that commits while its role is being deleted must not leave a
/// holder whose tokens carry the deleted role's permissions: either the
/// grant finds no role, or the deletion sees the grant and stales it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_grant_racing_the_deletion_of_its_role_never_outlives_it() {
    each_backend(async |stores: Stores| {
        let mut users = Vec::new();
        for i in 0..8 {
            users.push(registered(&stores, &format!("racer{i}@example.com")).await.id);
        }
        for round in 0..6 {
            let name = format!("fleeting{round}");
            let event_for = DomainEvent::roles_changed_at(now());
            stores.roles.put_role(&role(&name), now(), &event_for, &audit("role.put")).await.unwrap();
            let grants: Vec<_> = users
                .iter()
                .map(|user| {
                    let (stores, name, user) = (stores.clone(), name.clone(), *user);
                    tokio::spawn(async move {
                        let event_for = DomainEvent::roles_changed_at(now());
                        let audit = audit("role.grant");
                        (user, stores.roles.change_role(user, &name, true, now(), &event_for, &audit).await.unwrap())
                    })
                })
                .collect();
            let deletion = {
                let (stores, name) = (stores.clone(), name.clone());
                tokio::spawn(async move {
                    let event_for = DomainEvent::roles_changed_at(now());
                    stores.roles.delete_role(&name, &event_for, &audit("role.delete")).await.unwrap()
                })
            };
            assert!(deletion.await.unwrap().is_some(), "the role was there to delete");
            for grant in grants {
                let (user, change) = grant.await.unwrap();
                let stored = stores.users.user_by_id(user).await.unwrap().unwrap();
                assert!(!stored.roles.contains(&name), "round {round}: {user} holds a deleted role");
                match change {
                    RoleChange::Changed(roles, version) => {
                        assert!(roles.contains(&name));
                        assert!(
                            stored.tokens_version > version,
                            "round {round}: {user} was granted {name} at version {version} and the deletion \
                             left its tokens current ({})",
                            stored.tokens_version
                        );
                    }
                    RoleChange::NoSuchRole => {}
                    other => panic!("round {round}: {other:?}"),
                }
            }
        }
    })
    .await;
}

#[tokio::test]
async fn an_audit_entry_reads_back_whole_with_its_client_and_reason_newest_first() {
    each_backend(async |stores: Stores| {
        let older = AuditEntry { at: now() - time::Duration::seconds(1), ..audit("login.failed") };
        let newer = AuditEntry {
            actor: Some(UserId::new()),
            target: Some("someone".into()),
            request_id: Some("req-1".into()),
            detail: serde_json::json!({"session": "s"}),
            ip: Some("2001:db8::1".into()),
            user_agent: Some("Mozilla/5.0 \"quoted\"\nnext".into()),
            reason: Some("wrong_password".into()),
            ..audit("login.succeeded")
        };
        stores.roles.record(&older).await.unwrap();
        stores.roles.record(&newer).await.unwrap();
        let page = stores.roles.audit_page(None, 10).await.unwrap();
        assert_eq!(page, vec![newer, older]);
    })
    .await;
}
