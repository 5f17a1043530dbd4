//! The account use cases: register, log in, refresh, log out, delete, sessions.
//! Each takes validated input, talks to the ports, and returns a typed outcome.

use std::sync::Arc;

use time::Duration;

use crate::hashing::Verification;
use crate::mail::Mail;
use crate::password::{BreachedPasswords, PasswordError, check_breached};
use crate::roles::{AuditEntry, USER_ROLE};
use crate::throttling::{Limits, Rate, ThrottleError, account_key, claim_attempt, client_key};
use crate::{
    Clock, DomainEvent, Email, ExternalIdentity, HashError, IdentityStore, NoRevocationSink, OpaqueSecret, Opening,
    Password, PasswordHasher, PasswordPolicy, RevocationSink, SecretHash, Session, SessionId, SessionStore, StoreError,
    Throttle, User, UserId, UserStore,
};

/// How long after login an account without a password may delete itself,
/// and any account may add a provider to sign in with.
const RECENT_LOGIN: Duration = Duration::minutes(5);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountsSettings {
    pub password: PasswordPolicy,
    /// Absolute session lifetime (30 days).
    pub session_lifetime: Duration,
    /// A session ends when not refreshed for this long (7 days).
    pub session_idle: Duration,
    /// A just-rotated refresh token still works this long, so that two tabs
    /// refreshing at once do not end the session (5 s).
    pub refresh_grace: Duration,
    /// How long an access token can outlive its issue: lifetime plus clock
    /// skew (660 s). Revocations need remembering only this long.
    pub access_token_reach: Duration,
    /// Whether login waits until the address is verified; otherwise tokens
    /// say `email_verified: false` and routes decide.
    pub require_verified_email: bool,
    /// Failed logins per account and requests per client address.
    pub limits: Limits,
    /// Whether registering a taken address costs what a new one does (a
    /// hash), so the route can answer both alike.
    pub conceal_existing: bool,
}

impl Default for AccountsSettings {
    fn default() -> Self {
        Self {
            password: PasswordPolicy::default(),
            session_lifetime: Duration::days(30),
            session_idle: Duration::days(7),
            refresh_grace: Duration::seconds(5),
            access_token_reach: Duration::seconds(660),
            require_verified_email: false,
            limits: Limits::default(),
            conceal_existing: false,
        }
    }
}

/// Where a login came from, kept on the session for the user's session
/// list and in the login's audit entry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientInfo {
    pub user_agent: Option<String>,
    pub ip: Option<String>,
    /// The request's id, for the audit entry.
    pub request_id: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error("not a valid email address")]
    InvalidEmail,
    #[error(transparent)]
    Password(#[from] PasswordError),
    #[error("an account with this email already exists")]
    EmailTaken,
    #[error(transparent)]
    Hash(#[from] HashError),
    #[error(transparent)]
    Store(StoreError),
}

/// Why a login was refused as invalid credentials: for the audit log,
/// never for the client, which gets one answer for all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginFailure {
    UnknownAccount,
    /// The account signs in through a provider only.
    NoPassword,
    WrongPassword,
    Disabled,
    /// A reset or change replaced the password during the login.
    PasswordReplaced,
}

impl LoginFailure {
    /// The stable code recorded for it.
    pub fn code(self) -> &'static str {
        match self {
            Self::UnknownAccount => "unknown_account",
            Self::NoPassword => "no_password",
            Self::WrongPassword => "wrong_password",
            Self::Disabled => "account_disabled",
            Self::PasswordReplaced => "password_replaced",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    /// Unknown email, wrong password, or no password set: one answer for
    /// all. The account, if there is one, and why are for the audit log.
    #[error("invalid email or password")]
    InvalidCredentials { user: Option<UserId>, why: LoginFailure },
    /// The password was right, but the address must be verified first.
    #[error("confirm your email address first")]
    EmailNotVerified { user: UserId },
    /// Too many failures for this address (known or not): wait this long.
    #[error("too many failed logins; try again later")]
    Throttled { retry_after: Duration },
    #[error(transparent)]
    Hash(#[from] HashError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a provider vouched for, once every check of its answer passed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderClaims {
    /// The configured provider's name.
    pub provider: String,
    pub issuer: String,
    pub subject: String,
    pub email: Option<String>,
    /// Whether the provider asserts the user controls `email`.
    pub email_verified: bool,
    /// Whether the operator lets this provider's verified email link an
    /// existing (verified) account at login without asking.
    pub link_by_email: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ExternalLoginError {
    /// An account has this email, but it cannot be linked automatically:
    /// the user logs in with the password and links from the account.
    #[error("an account with this email exists; log in with it and link the provider")]
    LinkRequired,
    /// The provider told no (valid) email for a new account.
    #[error("the provider did not share a usable email address")]
    NoEmail,
    /// The provider does not vouch for the email of a new account: making
    /// one would let whoever typed the address at the provider hold it
    /// before its owner signs up.
    #[error("the provider does not vouch for this email address")]
    EmailNotVerified,
    /// The account is disabled.
    #[error("the account is disabled")]
    Disabled,
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The session that asked for the link has ended.
    #[error("not authenticated")]
    NotAuthenticated,
    /// The provider identity signs in to another account.
    #[error("this provider identity belongs to another account")]
    Taken,
    /// The account's email is not verified: its holder may not be its
    /// owner, and a provider linked now would outlive a reset by the owner.
    #[error("verify the account's email before linking a provider")]
    EmailNotVerified,
    /// Adding a way to sign in needs a login within the last five minutes,
    /// so a stolen access token cannot buy a lasting one.
    #[error("log in again, then link within five minutes")]
    ReauthenticationRequired,
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    #[error("unknown refresh token")]
    Invalid,
    /// An already-rotated token came back after the grace window: the whole
    /// session has been revoked.
    #[error("refresh token reused; session revoked")]
    Reused { user: UserId, session: SessionId },
    #[error("session expired or revoked")]
    SessionEnded,
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("not authenticated")]
    NotAuthenticated,
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug, thiserror::Error)]
pub enum DeleteError {
    #[error("the password is wrong")]
    WrongPassword,
    /// Too many wrong passwords for the account, here or at login.
    #[error("too many failed attempts; try again later")]
    Throttled { retry_after: Duration },
    #[error("log in again before deleting this account")]
    ReauthenticationRequired,
    #[error("not authenticated")]
    NotAuthenticated,
    #[error(transparent)]
    Hash(#[from] HashError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug, thiserror::Error)]
pub enum RevokeError {
    #[error("no such session")]
    NotFound,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// How a session is opened: by which `method` (for the audit entry), after
/// checking which password hash, clearing which failed-login count.
#[derive(Debug, Clone, Copy)]
struct How<'a> {
    method: &'a str,
    verified: Option<&'a str>,
    clears: Option<&'a str>,
}

/// A new session with its refresh token (shown to the client once).
#[derive(Debug)]
pub struct LoggedIn {
    pub user: User,
    pub session: Session,
    pub refresh: OpaqueSecret,
    /// The `login.succeeded` entry written with a login's session; `None`
    /// for a refresh.
    pub audit: Option<Box<AuditEntry>>,
}

#[derive(Debug)]
pub enum Refreshed {
    /// The token was current: here is its successor.
    Rotated(LoggedIn),
    /// The token was replaced moments ago by a concurrent refresh; the session
    /// stays, the client keeps the winner's refresh token.
    WithinGrace { user: User, session: Session },
}

/// After a write conditional on a verified hash found it replaced: the
/// user's hash as it now stands if `password` still matches it (another
/// login upgraded it), else `None` (a reset or change replaced it).
pub(crate) async fn rematch(
    users: &dyn UserStore,
    hasher: &dyn PasswordHasher,
    user: UserId,
    password: &Password,
) -> Result<Option<String>, LoginError> {
    let Some(current) = users.user_by_id(user).await?.and_then(|u| u.password_hash) else { return Ok(None) };
    match hasher.verify(password, &current).await? {
        Verification::Match { .. } => Ok(Some(current)),
        Verification::Mismatch => Ok(None),
    }
}

/// The account use cases over their ports.
pub struct Accounts {
    users: Arc<dyn UserStore>,
    sessions: Arc<dyn SessionStore>,
    identities: Arc<dyn IdentityStore>,
    hasher: Arc<dyn PasswordHasher>,
    throttle: Arc<dyn Throttle>,
    clock: Arc<dyn Clock>,
    settings: AccountsSettings,
    revocations: Arc<dyn RevocationSink>,
    breached: Option<Arc<dyn BreachedPasswords>>,
}

impl Accounts {
    pub fn new(
        users: Arc<dyn UserStore>,
        sessions: Arc<dyn SessionStore>,
        identities: Arc<dyn IdentityStore>,
        hasher: Arc<dyn PasswordHasher>,
        throttle: Arc<dyn Throttle>,
        clock: Arc<dyn Clock>,
        settings: AccountsSettings,
    ) -> Self {
        let revocations = Arc::new(NoRevocationSink);
        Self { users, sessions, identities, hasher, throttle, clock, settings, revocations, breached: None }
    }

    /// Refuses new passwords that `check` finds breached.
    pub fn with_breach_check(mut self, check: Arc<dyn BreachedPasswords>) -> Self {
        self.breached = Some(check);
        self
    }

    /// Takes a token from the bucket of `rate` for the client `ip` (an IPv6
    /// client's /64); a client whose address is unknown is not counted.
    pub async fn admit(&self, rate: Rate, ip: &str) -> Result<(), ThrottleError> {
        if ip.is_empty() {
            return Ok(());
        }
        let key = format!("{}:{}", rate.name(), client_key(ip));
        match self.throttle.take(&key, self.settings.limits.bucket(rate), self.clock.now()).await? {
            None => Ok(()),
            Some(retry_after) => Err(ThrottleError::Throttled { retry_after }),
        }
    }

    /// Tells `sink` of every revocation once it is committed.
    pub fn with_revocations(mut self, sink: Arc<dyn RevocationSink>) -> Self {
        self.revocations = sink;
        self
    }

    async fn session_revoked(&self, session: SessionId, now: time::OffsetDateTime) {
        self.revocations.session_revoked(session, now + self.settings.access_token_reach).await;
    }

    pub fn hasher(&self) -> &dyn PasswordHasher {
        self.hasher.as_ref()
    }

    pub async fn register(&self, email: &str, password: &str) -> Result<User, RegisterError> {
        let email = Email::parse(email).map_err(|_| RegisterError::InvalidEmail)?;
        let password = Password::new_checked(password, &self.settings.password)?;
        check_breached(self.breached.as_deref(), &password).await?;
        if self.users.user_by_email(&email).await.map_err(RegisterError::Store)?.is_some() {
            if self.settings.conceal_existing {
                // The work of a new account, so timing tells nothing.
                self.hasher.hash(&password).await?;
            }
            return Err(RegisterError::EmailTaken);
        }
        let now = self.clock.now();
        let user = User {
            id: UserId::new(),
            email,
            password_hash: Some(self.hasher.hash(&password).await?),
            email_verified: false,
            created_at: now,
            roles: vec![USER_ROLE.to_owned()],
            permissions: Vec::new(),
            disabled: false,
            tokens_version: 0,
        };
        let event = DomainEvent::registered(&user, "password", now);
        match self.users.create_user(&user, &event).await {
            Ok(()) => Ok(user),
            // Lost a race with a registration of the same address.
            Err(StoreError::Conflict) => Err(RegisterError::EmailTaken),
            Err(e) => Err(RegisterError::Store(e)),
        }
    }

    /// Checks the password of `email`'s account and opens a session. Each
    /// attempt counts against the address (known or not) before the
    /// password is checked; a right password starts the count again.
    pub async fn login(&self, email: &str, password: &str, client: ClientInfo) -> Result<LoggedIn, LoginError> {
        let policy = &self.settings.limits.attempts;
        if let Some(retry_after) = claim_attempt(self.throttle.as_ref(), email, policy, self.clock.now()).await? {
            return Err(LoginError::Throttled { retry_after });
        }
        let outcome = self.check_and_open(email, password, client).await;
        // A session opened cleared the count with it.
        if matches!(outcome, Err(LoginError::EmailNotVerified { .. }))
            && let Err(error) = self.throttle.clear_attempts(&account_key(email)).await
        {
            // The password was right, and is answered so. The count stays,
            // and the next success clears it.
            tracing::warn!(%error, "could not clear the failed-login count after a right password");
        }
        outcome
    }

    async fn check_and_open(&self, email: &str, password: &str, client: ClientInfo) -> Result<LoggedIn, LoginError> {
        let password = Password::for_login(password);
        let user = match Email::parse(email) {
            Ok(email) => self.users.user_by_email(&email).await?,
            Err(_) => None,
        };
        let refused = |user: Option<&User>, why| LoginError::InvalidCredentials { user: user.map(|u| u.id), why };
        let Some((user, phc)) = user.as_ref().and_then(|u| u.password_hash.clone().map(|h| (u, h))) else {
            // Same work as a real verification, so timing tells nothing.
            self.hasher.verify_dummy(&password).await?;
            let why = if user.is_some() { LoginFailure::NoPassword } else { LoginFailure::UnknownAccount };
            return Err(refused(user.as_ref(), why));
        };
        match self.hasher.verify(&password, &phc).await? {
            // A disabled account is refused as a wrong password is.
            Verification::Mismatch => Err(refused(Some(user), LoginFailure::WrongPassword)),
            Verification::Match { .. } if user.disabled => Err(refused(Some(user), LoginFailure::Disabled)),
            Verification::Match { needs_rehash } => {
                if self.settings.require_verified_email && !user.email_verified {
                    return Err(LoginError::EmailNotVerified { user: user.id });
                }
                let mut verified = match needs_rehash {
                    true => self.rehash(user, &password, &phc).await,
                    false => phc,
                };
                // Opened only while the verified hash stands. If it was
                // replaced meanwhile, by another login's upgrade the
                // password still matches and this goes on, once; by a reset
                // or change it does not, and the login fails.
                let key = account_key(email);
                for _ in 0..2 {
                    let how = How { method: "password", verified: Some(&verified), clears: Some(&key) };
                    if let Some(done) = self.open_session(user, &client, how).await? {
                        return Ok(done);
                    }
                    match rematch(self.users.as_ref(), self.hasher.as_ref(), user.id, &password).await? {
                        Some(current) if current != verified => verified = current,
                        _ => break,
                    }
                }
                Err(refused(Some(user), LoginFailure::PasswordReplaced))
            }
        }
    }

    /// Signs in through a provider, exactly as a password login does. A
    /// known (issuer, subject) is its account; an unknown one with a new
    /// email the provider verified creates an account without a password
    /// (`user.registered`, method `oauth:{provider}`); with an existing
    /// account's email it is
    /// linked only when the provider asserts the email verified and the
    /// account's email is verified too.
    /// `notice` makes the mail telling an existing account that a provider
    /// was linked to it.
    pub async fn external_login(
        &self,
        claims: &ProviderClaims,
        client: ClientInfo,
        notice: &(dyn Fn(&User) -> Mail + Sync),
    ) -> Result<LoggedIn, ExternalLoginError> {
        let opened = |user: User| async move {
            if user.disabled {
                return Err(ExternalLoginError::Disabled);
            }
            let method = format!("oauth:{}", claims.provider);
            match self.open_session(&user, &client, How { method: &method, verified: None, clears: None }).await {
                Ok(Some(done)) => Ok(done),
                // Disabled meanwhile.
                Ok(None) => Err(ExternalLoginError::Disabled),
                Err(LoginError::Store(e)) => Err(ExternalLoginError::Store(e)),
                Err(other) => Err(ExternalLoginError::Store(StoreError::Unavailable(other.to_string()))),
            }
        };
        if let Some(known) = self.identities.identity(&claims.issuer, &claims.subject).await? {
            let user = self.users.user_by_id(known.user_id).await?.ok_or(StoreError::NotFound)?;
            return opened(user).await;
        }
        let email = claims.email.as_deref().and_then(|e| Email::parse(e).ok()).ok_or(ExternalLoginError::NoEmail)?;
        let now = self.clock.now();
        let identity = |user_id| ExternalIdentity {
            id: uuid::Uuid::now_v7(),
            user_id,
            provider: claims.provider.clone(),
            issuer: claims.issuer.clone(),
            subject: claims.subject.clone(),
            email: claims.email.clone(),
            created_at: now,
        };
        match self.users.user_by_email(&email).await? {
            // Nothing is linked to a disabled account.
            Some(user) if user.disabled => Err(ExternalLoginError::Disabled),
            Some(user) if claims.link_by_email && claims.email_verified && user.email_verified => {
                match self.identities.link_identity(&identity(user.id), &notice(&user)).await {
                    // The same identity linked by a login at the same moment.
                    Ok(()) | Err(StoreError::Conflict) => {}
                    Err(e) => return Err(e.into()),
                }
                tracing::info!(user_id = %user.id, provider = %claims.provider, "provider identity linked");
                opened(user).await
            }
            Some(_) => Err(ExternalLoginError::LinkRequired),
            None if !claims.email_verified => Err(ExternalLoginError::EmailNotVerified),
            None => {
                let user = User {
                    id: UserId::new(),
                    email,
                    password_hash: None,
                    email_verified: true,
                    created_at: now,
                    roles: vec![USER_ROLE.to_owned()],
                    permissions: Vec::new(),
                    disabled: false,
                    tokens_version: 0,
                };
                let event = DomainEvent::registered(&user, &format!("oauth:{}", claims.provider), now);
                match self.identities.create_user_with_identity(&user, &identity(user.id), &event).await {
                    // Read back: its roles' permissions come from the store.
                    Ok(()) => opened(self.users.user_by_id(user.id).await?.ok_or(StoreError::NotFound)?).await,
                    // An account with this email appeared meanwhile.
                    Err(StoreError::Conflict) => Err(ExternalLoginError::LinkRequired),
                    Err(e) => Err(e.into()),
                }
            }
        }
    }

    /// Whether the account signed in with `session` may start linking a
    /// provider: its email verified, its login recent.
    pub async fn may_link(&self, user: &User, session: &Session) -> Result<(), LinkError> {
        if !user.email_verified {
            return Err(LinkError::EmailNotVerified);
        }
        if self.clock.now() - session.created_at > RECENT_LOGIN {
            return Err(LinkError::ReauthenticationRequired);
        }
        Ok(())
    }

    /// Ties the identity in `claims` to the account signed in with
    /// `session` (still standing, its email verified), which proved it
    /// controls both; `notice` tells the account's owner. Linking an
    /// identity the account has already is done.
    pub async fn link_external(
        &self,
        user: UserId,
        session: SessionId,
        claims: &ProviderClaims,
        notice: &(dyn Fn(&User) -> Mail + Sync),
    ) -> Result<ExternalIdentity, LinkError> {
        let (user, _) = self.authenticate(user, session).await.map_err(|e| match e {
            AuthError::NotAuthenticated => LinkError::NotAuthenticated,
            AuthError::Store(e) => LinkError::Store(e),
        })?;
        if !user.email_verified {
            return Err(LinkError::EmailNotVerified);
        }
        let identity = ExternalIdentity {
            id: uuid::Uuid::now_v7(),
            user_id: user.id,
            provider: claims.provider.clone(),
            issuer: claims.issuer.clone(),
            subject: claims.subject.clone(),
            email: claims.email.clone(),
            created_at: self.clock.now(),
        };
        // A second try sees the identity a parallel link stored.
        for _ in 0..2 {
            match self.identities.identity(&claims.issuer, &claims.subject).await? {
                Some(known) if known.user_id == user.id => return Ok(known),
                Some(_) => return Err(LinkError::Taken),
                None => match self.identities.link_identity(&identity, &notice(&user)).await {
                    Ok(()) => return Ok(identity),
                    Err(StoreError::Conflict) => continue,
                    Err(e) => return Err(e.into()),
                },
            }
        }
        Err(LinkError::Store(StoreError::Conflict))
    }

    /// The provider identities of `user`, oldest first.
    pub async fn identities(&self, user: UserId) -> Result<Vec<ExternalIdentity>, StoreError> {
        self.identities.identities_of(user).await
    }

    /// Removes one of `user`'s identities, never the last way to log in.
    pub async fn unlink_identity(&self, user: UserId, id: uuid::Uuid) -> Result<crate::Unlinked, StoreError> {
        self.identities.unlink_identity(user, id).await
    }

    /// Upgrades `verified`, a hash made with weaker parameters, unless it
    /// was replaced meanwhile; returns the user's hash as it now stands, as
    /// far as this login knows. Failure only costs the upgrade.
    async fn rehash(&self, user: &User, password: &Password, verified: &str) -> String {
        let stored = match self.hasher.hash(password).await {
            Ok(phc) => match self.users.replace_password_hash(user.id, verified, &phc).await {
                Ok(true) => return phc,
                Ok(false) => Ok(()),
                Err(e) => Err(e.to_string()),
            },
            Err(e) => Err(e.to_string()),
        };
        if let Err(error) = stored {
            tracing::warn!(user_id = %user.id, %error, "could not upgrade the password hash");
        }
        verified.to_owned()
    }

    /// A new session, unless `verified` is no longer the user's hash.
    async fn open_session(
        &self,
        user: &User,
        client: &ClientInfo,
        how: How<'_>,
    ) -> Result<Option<LoggedIn>, LoginError> {
        let now = self.clock.now();
        let expires_at = now + self.settings.session_lifetime;
        let session = Session {
            id: SessionId::new(),
            user_id: user.id,
            created_at: now,
            last_seen_at: now,
            expires_at,
            idle_expires_at: (now + self.settings.session_idle).min(expires_at),
            revoked_at: None,
            user_agent: client.user_agent.clone(),
            ip: client.ip.clone(),
        };
        let refresh = OpaqueSecret::generate();
        let event = DomainEvent::logged_in(user.id, session.id, now);
        let audit = AuditEntry {
            id: uuid::Uuid::now_v7(),
            at: now,
            actor: Some(user.id),
            action: "login.succeeded".to_owned(),
            target: Some(user.id.to_string()),
            request_id: client.request_id.clone(),
            detail: serde_json::json!({ "method": how.method, "session": session.id.to_string() }),
            ip: client.ip.clone(),
            user_agent: client.user_agent.clone(),
            reason: None,
        };
        let opening = Opening {
            refresh: &refresh.hash(),
            event: &event,
            verified: how.verified,
            audit: &audit,
            clears: how.clears,
        };
        if !self.sessions.create_session(&session, &opening).await? {
            return Ok(None);
        }
        Ok(Some(LoggedIn { user: user.clone(), session, refresh, audit: Some(Box::new(audit)) }))
    }

    pub async fn refresh(&self, presented: &str) -> Result<Refreshed, RefreshError> {
        let hash = SecretHash::of(presented);
        let record = self.sessions.refresh_record(&hash).await?.ok_or(RefreshError::Invalid)?;
        let now = self.clock.now();
        let session = self.sessions.session(record.session_id).await?.ok_or(RefreshError::Invalid)?;
        if !session.is_active(now) {
            return Err(RefreshError::SessionEnded);
        }
        let user = self.users.user_by_id(session.user_id).await?;
        let user = user.filter(|u| !u.disabled).ok_or(RefreshError::SessionEnded)?;
        if record.superseded_at.is_none() {
            let fresh = OpaqueSecret::generate();
            let idle = session.next_idle_deadline(now, self.settings.session_idle);
            if self.sessions.rotate_refresh(session.id, &hash, &fresh.hash(), now, idle).await? {
                let session = Session { last_seen_at: now, idle_expires_at: idle, ..session };
                return Ok(Refreshed::Rotated(LoggedIn { user, session, refresh: fresh, audit: None }));
            }
            // Lost to a concurrent refresh, or to a revocation (logout,
            // disable) that committed after the session was read.
            let now_active = self.sessions.session(session.id).await?.is_some_and(|s| s.is_active(now));
            if !now_active {
                return Err(RefreshError::SessionEnded);
            }
        }
        // Superseded, either long ago or by the concurrent refresh that just won.
        let superseded_at = match record.superseded_at {
            Some(at) => at,
            None => self.sessions.refresh_record(&hash).await?.and_then(|r| r.superseded_at).unwrap_or(now),
        };
        if now - superseded_at <= self.settings.refresh_grace {
            return Ok(Refreshed::WithinGrace { user, session });
        }
        self.sessions.revoke_session(session.id, now).await?;
        self.session_revoked(session.id, now).await;
        Err(RefreshError::Reused { user: user.id, session: session.id })
    }

    /// The session a refresh token belongs to, without using the token up.
    pub async fn session_of_refresh(&self, presented: &str) -> Result<Option<SessionId>, StoreError> {
        Ok(self.sessions.refresh_record(&SecretHash::of(presented)).await?.map(|r| r.session_id))
    }

    /// The user and session behind a verified access token, if both still stand.
    pub async fn authenticate(&self, user: UserId, session: SessionId) -> Result<(User, Session), AuthError> {
        let now = self.clock.now();
        let session = self
            .sessions
            .session(session)
            .await?
            .filter(|s| s.user_id == user && s.revoked_at.is_none() && now < s.expires_at)
            .ok_or(AuthError::NotAuthenticated)?;
        let user = self.users.user_by_id(user).await?.filter(|u| !u.disabled).ok_or(AuthError::NotAuthenticated)?;
        Ok((user, session))
    }

    pub async fn logout(&self, session: SessionId) -> Result<(), StoreError> {
        let now = self.clock.now();
        self.sessions.revoke_session(session, now).await?;
        self.session_revoked(session, now).await;
        Ok(())
    }

    pub async fn delete_account(
        &self,
        user: UserId,
        session: SessionId,
        password: Option<&str>,
    ) -> Result<(), DeleteError> {
        let (user, session) = self.authenticate(user, session).await.map_err(|e| match e {
            AuthError::NotAuthenticated => DeleteError::NotAuthenticated,
            AuthError::Store(e) => DeleteError::Store(e),
        })?;
        let now = self.clock.now();
        match (&user.password_hash, password) {
            (Some(phc), Some(given)) => {
                // Counted as a login: a stolen session is no way to guess.
                let policy = &self.settings.limits.attempts;
                if let Some(retry_after) =
                    claim_attempt(self.throttle.as_ref(), user.email.as_str(), policy, now).await?
                {
                    return Err(DeleteError::Throttled { retry_after });
                }
                let given = Password::for_login(given);
                if self.hasher.verify(&given, phc).await? == Verification::Mismatch {
                    return Err(DeleteError::WrongPassword);
                }
            }
            (Some(_), None) => return Err(DeleteError::WrongPassword),
            (None, _) if now - session.created_at <= RECENT_LOGIN => {}
            (None, _) => return Err(DeleteError::ReauthenticationRequired),
        }
        match self.users.delete_user(user.id, &DomainEvent::deleted(user.id, now)).await {
            Ok(()) | Err(StoreError::NotFound) => {}
            Err(e) => return Err(e.into()),
        }
        let reach = now + self.settings.access_token_reach;
        self.revocations.user_revoked(user.id, now, reach).await;
        // Its failed-login count (a hash of the address) goes with it.
        if let Err(error) = self.throttle.clear_attempts(&account_key(user.email.as_str())).await {
            tracing::warn!(%error, "could not drop the deleted account's failed-login count");
        }
        Ok(())
    }

    /// Deletes `user` as its own deletion does, for an administrator;
    /// `false` when there is no such user.
    pub async fn erase(&self, user: UserId) -> Result<bool, StoreError> {
        let now = self.clock.now();
        match self.users.delete_user(user, &DomainEvent::deleted(user, now)).await {
            Ok(()) => {}
            Err(StoreError::NotFound) => return Ok(false),
            Err(e) => return Err(e),
        }
        let reach = now + self.settings.access_token_reach;
        self.revocations.user_revoked(user, now, reach).await;
        Ok(true)
    }

    pub async fn sessions(&self, user: UserId) -> Result<Vec<Session>, StoreError> {
        self.sessions.active_sessions(user, self.clock.now()).await
    }

    /// Revokes one of the caller's own sessions; another user's id is "not found".
    pub async fn revoke_session(&self, user: UserId, id: SessionId) -> Result<(), RevokeError> {
        let now = self.clock.now();
        match self.sessions.session(id).await? {
            Some(s) if s.user_id == user && s.is_active(now) => {
                self.sessions.revoke_session(id, now).await?;
                self.session_revoked(id, now).await;
                Ok(())
            }
            _ => Err(RevokeError::NotFound),
        }
    }

    pub async fn revoke_other_sessions(&self, user: UserId, keep: SessionId) -> Result<Vec<SessionId>, StoreError> {
        let now = self.clock.now();
        let revoked = self.sessions.revoke_sessions_of(user, Some(keep), now).await?;
        for id in &revoked {
            self.session_revoked(*id, now).await;
        }
        Ok(revoked)
    }
}
