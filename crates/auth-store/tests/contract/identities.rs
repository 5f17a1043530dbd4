//! OAuth/OpenID identities: keyed by (issuer, subject), gone with the account.

use auth_core::mail::Mail;
use auth_core::{DomainEvent, Email, ExternalIdentity, StoreError, Unlinked, User, UserId};
use auth_store::Stores;

use crate::{each_backend, now, registered};

fn notice(user: &User, subject: &str) -> Mail {
    Mail { to: user.email.clone(), subject: subject.into(), text: "t".into(), html: "h".into() }
}

fn identity(user: UserId, subject: &str) -> ExternalIdentity {
    ExternalIdentity {
        id: uuid::Uuid::now_v7(),
        user_id: user,
        provider: "corp".into(),
        issuer: "https://id.example.com".into(),
        subject: subject.into(),
        email: Some("x@example.com".into()),
        created_at: now(),
    }
}

#[tokio::test]
async fn an_account_made_by_a_provider_has_no_password_and_its_identity_is_unique() {
    each_backend(async |stores: Stores| {
        let user = User {
            id: UserId::new(),
            email: Email::parse("sso@example.com").unwrap(),
            password_hash: None,
            email_verified: true,
            created_at: now(),
            roles: vec![],
            permissions: vec![],
            disabled: false,
            tokens_version: 0,
        };
        let first = identity(user.id, "sub-1");
        let event = DomainEvent::registered(&user, "oauth:corp", now());
        stores.identities.create_user_with_identity(&user, &first, &event).await.unwrap();
        let found = stores.identities.identity("https://id.example.com", "sub-1").await.unwrap().unwrap();
        assert_eq!(found, first);
        assert_eq!(stores.users.user_by_id(user.id).await.unwrap().unwrap().password_hash, None);
        assert_eq!(stores.identities.identity("https://other.example.com", "sub-1").await.unwrap(), None);

        let other = registered(&stores, "other@example.com").await;
        let taken = stores.identities.link_identity(&identity(other.id, "sub-1"), &notice(&other, "taken")).await;
        assert!(matches!(taken, Err(StoreError::Conflict)), "one identity, one account");
        stores.identities.link_identity(&identity(other.id, "sub-2"), &notice(&other, "linked")).await.unwrap();
        assert_eq!(stores.identities.identities_of(other.id).await.unwrap().len(), 1);
        let queued = stores.mail.claim_mail(now() + time::Duration::seconds(1), time::Duration::minutes(1), 100);
        let subjects: Vec<String> = queued.await.unwrap().into_iter().map(|m| m.mail.subject).collect();
        assert_eq!(subjects, ["linked"], "the notice with its link, and none for a link that failed");

        let clash = User { id: UserId::new(), ..user.clone() };
        let again = stores.identities.create_user_with_identity(&clash, &identity(clash.id, "sub-3"), &event).await;
        assert!(matches!(again, Err(StoreError::Conflict)), "the email is taken");
        assert_eq!(
            stores.identities.identity("https://id.example.com", "sub-3").await.unwrap(),
            None,
            "nothing half-written"
        );

        stores.users.delete_user(user.id, &DomainEvent::deleted(user.id, now())).await.unwrap();
        assert_eq!(stores.identities.identity("https://id.example.com", "sub-1").await.unwrap(), None);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_last_way_to_log_in_cannot_be_unlinked_even_by_two_requests_at_once() {
    each_backend(async |stores: Stores| {
        let stranger = registered(&stores, "stranger@example.com").await;
        for round in 0..12 {
            let user = User {
                id: UserId::new(),
                email: Email::parse(&format!("two-{round}@example.com")).unwrap(),
                password_hash: None,
                email_verified: true,
                created_at: now(),
                roles: vec![],
                permissions: vec![],
                disabled: false,
                tokens_version: 0,
            };
            let (a, b) = (identity(user.id, &format!("a{round}")), identity(user.id, &format!("b{round}")));
            let event = DomainEvent::registered(&user, "oauth:corp", now());
            stores.identities.create_user_with_identity(&user, &a, &event).await.unwrap();
            stores.identities.link_identity(&b, &notice(&user, "b")).await.unwrap();
            if round == 0 {
                let theirs = stores.identities.unlink_identity(stranger.id, a.id).await.unwrap();
                assert_eq!(theirs, Unlinked::NotFound, "not theirs");
            }
            let (s1, s2) = (stores.clone(), stores.clone());
            let one = tokio::spawn(async move { s1.identities.unlink_identity(user.id, a.id).await.unwrap() });
            let two = tokio::spawn(async move { s2.identities.unlink_identity(user.id, b.id).await.unwrap() });
            let mut outcomes = [one.await.unwrap(), two.await.unwrap()];
            outcomes.sort_by_key(|o| *o == Unlinked::Done);
            assert_eq!(outcomes, [Unlinked::LastWay, Unlinked::Done], "exactly one goes (round {round})");
            assert_eq!(stores.identities.identities_of(user.id).await.unwrap().len(), 1);
        }
        // With a password, the last identity may go.
        let with_password = registered(&stores, "pw@example.com").await;
        let c = identity(with_password.id, "c");
        stores.identities.link_identity(&c, &notice(&with_password, "c")).await.unwrap();
        assert_eq!(stores.identities.unlink_identity(with_password.id, c.id).await.unwrap(), Unlinked::Done);
    })
    .await;
}
