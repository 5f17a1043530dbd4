//! Roles and permissions (deny by default), and the operator's and
//! administrators' use cases: grant and revoke roles, define roles,
//! disable and enable accounts, list users, read the audit log.
//!
//! A permission is `resource:action` (`notes:read`, `users:admin`); a role
//! is a named set of them; users hold roles. `user` is granted on
//! registration; `admin` holds `users:admin`. Changing what a user holds
//! bumps its `tokens_version`, so tokens minted from an older version are
//! stale at once (revocation sink), and emits `user.roles_changed`.

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

use crate::{Clock, DomainEvent, Email, RevocationSink, Session, SessionId, StoreError, User, UserId};

/// Every account holds it from registration.
pub const USER_ROLE: &str = "user";
/// Holds [`ADMIN_PERMISSION`].
pub const ADMIN_ROLE: &str = "admin";
/// What the admin API requires.
pub const ADMIN_PERMISSION: &str = "users:admin";
/// The most roles one user may hold: with names of at most 64 characters
/// they fit an access cookie (4 KiB) whatever their permissions, which give
/// way to the gateway's role map when they would not fit.
pub const MAX_ROLES_PER_USER: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Role {
    pub name: String,
    pub description: String,
    /// Sorted, once each.
    pub permissions: Vec<String>,
}

impl Role {
    /// Whether the role may be stored as it is: a valid name, description
    /// and permissions, `admin` keeping `users:admin`, `user` never holding it.
    pub fn check(&self) -> Result<(), RoleError> {
        if !valid_role_name(&self.name) {
            return Err(RoleError::Invalid("a role name is 1-64 of a-z 0-9 _ - and starts with a letter"));
        }
        if self.description.len() > 500 || self.description.chars().any(char::is_control) {
            return Err(RoleError::Invalid("a description is at most 500 characters, without control characters"));
        }
        if self.permissions.len() > 100 || !self.permissions.iter().all(|p| valid_permission(p)) {
            return Err(RoleError::Invalid("permissions are at most 100 of resource:action (a-z 0-9 _ -)"));
        }
        if self.name == ADMIN_ROLE && !self.permissions.iter().any(|p| p == ADMIN_PERMISSION) {
            return Err(RoleError::BuiltIn);
        }
        if self.name == USER_ROLE && self.permissions.iter().any(|p| p == ADMIN_PERMISSION) {
            return Err(RoleError::Invalid("the user role cannot hold users:admin: every account would be an admin"));
        }
        Ok(())
    }
}

/// One entry of the audit log, an administrative action or an
/// authentication event: who acted (a signed-in user; `None` for the
/// operator and for requests nobody is signed in to, such as logins), what,
/// to whom, when, under which request, from which client, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEntry {
    pub id: Uuid,
    pub at: OffsetDateTime,
    pub actor: Option<UserId>,
    pub action: String,
    pub target: Option<String>,
    pub request_id: Option<String>,
    pub detail: Value,
    /// The client's address, as the service trusts it.
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    /// A stable code: why a login failed, which limit refused it.
    pub reason: Option<String>,
}

/// Who acts, for the audit log.
#[derive(Debug, Clone, Default)]
pub struct Actor {
    /// `None`: the operator (its token, the command line, the config file).
    pub user: Option<UserId>,
    pub request_id: Option<String>,
    /// How: `api` (a user with `users:admin`), `operator_token`, `cli`, `config`.
    pub via: &'static str,
    /// The client's address and user agent, for a request.
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

impl Actor {
    pub fn operator(via: &'static str) -> Self {
        Self { via, ..Self::default() }
    }
}

/// A role name: 1–64 of `a-z 0-9 _ -`, starting with a letter.
pub fn valid_role_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    name.len() <= 64
        && bytes.next().is_some_and(|b| b.is_ascii_lowercase())
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// A permission: `resource:action`, each part a valid role-like name.
pub fn valid_permission(permission: &str) -> bool {
    permission.len() <= 129
        && permission
            .split_once(':')
            .is_some_and(|(resource, action)| valid_role_name(resource) && valid_role_name(action))
}

/// What changing a user's roles did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoleChange {
    /// The roles the user holds now, and its tokens' version from now on.
    Changed(Vec<String>, i64),
    /// It held (or lacked) the role already.
    Unchanged,
    NoSuchUser,
    NoSuchRole,
    /// The user holds [`MAX_ROLES_PER_USER`] already.
    TooMany,
}

/// Makes the event telling a user (by id) which roles it holds now, and
/// its tokens' version from now on.
pub type EventFor<'a> = &'a (dyn for<'r> Fn(UserId, &'r [String], i64) -> DomainEvent + Sync);

/// A user whose tokens went stale: those minted from a version below this.
pub type Staled = (UserId, i64);

/// What disabling or enabling an account did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccountState {
    NoSuchUser,
    /// It was so already: nothing written.
    Unchanged,
    Enabled,
    /// The sessions it ended, and the tokens' version from now on (every
    /// token minted before is stale).
    Disabled {
        sessions: Vec<SessionId>,
        version: i64,
    },
}

/// Storage of roles, grants, account state and the audit log.
#[async_trait]
pub trait RoleStore: Send + Sync + 'static {
    /// Every role with its permissions, by name.
    async fn roles(&self) -> Result<Vec<Role>, StoreError>;
    /// Creates `role` or replaces its description and permissions; when
    /// the permissions change, every holder's tokens become stale (see
    /// [`Staled`]) and each gets `event_for`'s event, in one transaction
    /// with `audit`. The holders.
    async fn put_role(
        &self,
        role: &Role,
        now: OffsetDateTime,
        event_for: EventFor<'_>,
        audit: &AuditEntry,
    ) -> Result<Vec<Staled>, StoreError>;
    /// Deletes the role (the holders lose it, as [`Self::put_role`] tells
    /// them); `None` when there is no such role.
    async fn delete_role(
        &self,
        name: &str,
        event_for: EventFor<'_>,
        audit: &AuditEntry,
    ) -> Result<Option<Vec<Staled>>, StoreError>;
    /// Grants (`grant`) or revokes `role`; on a change the user's tokens
    /// become stale (see [`Staled`]) and `event_for(roles after)` is
    /// written, with `audit`, in one transaction.
    async fn change_role(
        &self,
        user: UserId,
        role: &str,
        grant: bool,
        now: OffsetDateTime,
        event_for: EventFor<'_>,
        audit: &AuditEntry,
    ) -> Result<RoleChange, StoreError>;
    /// Disables (every session revoked, tokens' version bumped) or enables
    /// the account, writing `event_for(the tokens' version)` and `audit` in
    /// the same transaction. Nothing is written when it is already so.
    async fn set_disabled(
        &self,
        user: UserId,
        disabled: bool,
        now: OffsetDateTime,
        event_for: &(dyn Fn(i64) -> DomainEvent + Sync),
        audit: &AuditEntry,
    ) -> Result<AccountState, StoreError>;
    /// Users by email, after `after`, starting with `prefix`, at most `limit`.
    async fn users_page(&self, prefix: &str, after: Option<&str>, limit: u32) -> Result<Vec<User>, StoreError>;
    async fn record(&self, audit: &AuditEntry) -> Result<(), StoreError>;
    /// The newest entries before (`at`, `id`), newest first.
    async fn audit_page(
        &self,
        before: Option<(OffsetDateTime, Uuid)>,
        limit: u32,
    ) -> Result<Vec<AuditEntry>, StoreError>;
}

#[derive(Debug, thiserror::Error)]
pub enum RoleError {
    #[error("no such user")]
    NoSuchUser,
    #[error("no such role")]
    NoSuchRole,
    #[error("a user holds at most 32 roles")]
    TooMany,
    /// A name or permission outside the allowed form.
    #[error("{0}")]
    Invalid(&'static str),
    /// Built-in roles stay: `user` is every account's, `admin` the way in.
    #[error("the built-in roles user and admin cannot be deleted, and admin keeps users:admin")]
    BuiltIn,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The use cases of the admin API and the operator's command line.
pub struct Admin {
    users: Arc<dyn crate::UserStore>,
    sessions: Arc<dyn crate::SessionStore>,
    store: Arc<dyn RoleStore>,
    clock: Arc<dyn Clock>,
    revocations: Arc<dyn RevocationSink>,
    /// How long a revocation must be remembered: the longest token life.
    reach: Duration,
}

impl Admin {
    pub fn new(
        users: Arc<dyn crate::UserStore>,
        sessions: Arc<dyn crate::SessionStore>,
        store: Arc<dyn RoleStore>,
        clock: Arc<dyn Clock>,
        revocations: Arc<dyn RevocationSink>,
        reach: Duration,
    ) -> Self {
        Self { users, sessions, store, clock, revocations, reach }
    }

    fn audit(&self, actor: &Actor, action: &str, target: Option<String>, detail: Value) -> AuditEntry {
        let mut detail = match detail {
            Value::Object(map) => map,
            _ => serde_json::Map::new(),
        };
        detail.insert("via".into(), actor.via.into());
        let detail = Value::Object(detail);
        AuditEntry {
            id: Uuid::now_v7(),
            at: self.clock.now(),
            actor: actor.user,
            action: action.to_owned(),
            target,
            request_id: actor.request_id.clone(),
            detail,
            ip: actor.ip.clone(),
            user_agent: actor.user_agent.clone(),
            reason: None,
        }
    }

    async fn stale(&self, users: &[Staled]) {
        let until = self.clock.now() + self.reach;
        for (user, version) in users {
            self.revocations.tokens_outdated(*user, *version, until).await;
        }
    }

    pub async fn roles(&self) -> Result<Vec<Role>, StoreError> {
        self.store.roles().await
    }

    /// Creates or redefines a role; its holders' tokens go stale.
    pub async fn put_role(&self, actor: &Actor, role: Role) -> Result<Vec<Staled>, RoleError> {
        role.check()?;
        let mut role = role;
        role.permissions.sort();
        role.permissions.dedup();
        let now = self.clock.now();
        let detail = serde_json::json!({"permissions": role.permissions});
        let audit = self.audit(actor, "role.put", Some(role.name.clone()), detail);
        let holders = self.store.put_role(&role, now, &DomainEvent::roles_changed_at(now), &audit).await?;
        self.stale(&holders).await;
        Ok(holders)
    }

    pub async fn delete_role(&self, actor: &Actor, name: &str) -> Result<Vec<Staled>, RoleError> {
        if name == USER_ROLE || name == ADMIN_ROLE {
            return Err(RoleError::BuiltIn);
        }
        let now = self.clock.now();
        let audit = self.audit(actor, "role.delete", Some(name.to_owned()), Value::Null);
        let holders = self.store.delete_role(name, &DomainEvent::roles_changed_at(now), &audit).await?;
        let holders = holders.ok_or(RoleError::NoSuchRole)?;
        self.stale(&holders).await;
        Ok(holders)
    }

    /// Grants (`grant`) or revokes `role`; `Ok(None)` when nothing changed,
    /// else the roles held now.
    pub async fn change_role(
        &self,
        actor: &Actor,
        user: UserId,
        role: &str,
        grant: bool,
    ) -> Result<Option<Vec<String>>, RoleError> {
        let now = self.clock.now();
        let action = if grant { "role.grant" } else { "role.revoke" };
        let audit = self.audit(actor, action, Some(user.to_string()), serde_json::json!({"role": role}));
        let change =
            self.store.change_role(user, role, grant, now, &DomainEvent::roles_changed_at(now), &audit).await?;
        match change {
            RoleChange::Changed(roles, version) => {
                self.stale(&[(user, version)]).await;
                Ok(Some(roles))
            }
            RoleChange::Unchanged => Ok(None),
            RoleChange::NoSuchUser => Err(RoleError::NoSuchUser),
            RoleChange::NoSuchRole => Err(RoleError::NoSuchRole),
            RoleChange::TooMany => Err(RoleError::TooMany),
        }
    }

    /// The user of `email`, for the command line.
    pub async fn user_by_email(&self, email: &str) -> Result<Option<User>, StoreError> {
        match Email::parse(email) {
            Ok(email) => self.users.user_by_email(&email).await,
            Err(_) => Ok(None),
        }
    }

    pub async fn user(&self, id: UserId) -> Result<Option<(User, Vec<Session>)>, StoreError> {
        let Some(user) = self.users.user_by_id(id).await? else { return Ok(None) };
        let sessions = self.sessions.active_sessions(id, self.clock.now()).await?;
        Ok(Some((user, sessions)))
    }

    /// Disables (every session ends at once, every token goes stale, login
    /// refused) or enables the account; `false` when there is no such user.
    pub async fn set_disabled(&self, actor: &Actor, user: UserId, disabled: bool) -> Result<bool, StoreError> {
        let now = self.clock.now();
        let action = if disabled { "user.disable" } else { "user.enable" };
        let event_for = |version| match disabled {
            true => DomainEvent::disabled(user, version, now),
            false => DomainEvent::enabled(user, now),
        };
        let audit = self.audit(actor, action, Some(user.to_string()), Value::Null);
        match self.store.set_disabled(user, disabled, now, &event_for, &audit).await? {
            AccountState::NoSuchUser => return Ok(false),
            AccountState::Unchanged | AccountState::Enabled => {}
            AccountState::Disabled { sessions, version } => {
                // The version first: it covers every token, and a record of
                // what to hand over may keep only the first few entries.
                self.stale(&[(user, version)]).await;
                for session in sessions {
                    self.revocations.session_revoked(session, now + self.reach).await;
                }
            }
        }
        Ok(true)
    }

    pub async fn users_page(&self, prefix: &str, after: Option<&str>, limit: u32) -> Result<Vec<User>, StoreError> {
        self.store.users_page(&prefix.to_lowercase(), after, limit.clamp(1, 200)).await
    }

    /// Records an action done elsewhere (a deletion through `Accounts`).
    pub async fn record(&self, actor: &Actor, action: &str, target: Option<String>) -> Result<(), StoreError> {
        self.store.record(&self.audit(actor, action, target, Value::Null)).await
    }

    /// Records an entry made elsewhere (an authentication event).
    pub async fn record_entry(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        self.store.record(entry).await
    }

    pub async fn audit_page(
        &self,
        before: Option<(OffsetDateTime, Uuid)>,
        limit: u32,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        self.store.audit_page(before, limit.clamp(1, 200)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_permissions_have_one_plain_form() {
        for ok in ["user", "admin", "billing-ops", "a1_b"] {
            assert!(valid_role_name(ok), "{ok}");
        }
        for bad in ["", "Admin", "1st", "a b", "a,b", "a:b", "ä", &"a".repeat(65)] {
            assert!(!valid_role_name(bad), "{bad}");
        }
        for ok in ["notes:read", "users:admin", "billing-ops:export_csv"] {
            assert!(valid_permission(ok), "{ok}");
        }
        for bad in ["notes", "notes:", ":read", "notes:read:all", "notes:*", "Notes:read", "notes: read"] {
            assert!(!valid_permission(bad), "{bad}");
        }
    }
}
