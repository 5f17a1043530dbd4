//! Password reset by emailed link, password change, email verification, and
//! the rate limits on the requests that send mail (OWASP Forgot Password
//! cheat sheet; ASVS 5.0 V6.3, V6.4).
//!
//! Tokens are 256 random bits, mailed once inside a link whose fragment
//! carries them (`{public_url}/reset-password#token=…`), stored only as
//! SHA-256, single use, short-lived; a newer one voids the older. Links are
//! built from the configured public URL, never from a request.

use std::sync::Arc;

use time::{Duration, OffsetDateTime};

use crate::accounts::{LoginError, rematch};
use crate::hashing::Verification;
use crate::mail::{Template, Values, say_duration};
use crate::password::{BreachedPasswords, PasswordError, check_breached};
use crate::throttling::ThrottleError;
use crate::throttling::{AttemptPolicy, account_key, claim_attempt, client_key};
use crate::{
    Clock, DomainEvent, Email, EmailToken, HashError, MailQueue, OpaqueSecret, Password, PasswordHasher,
    PasswordPolicy, RecoveryStore, RevocationSink, SecretHash, SessionId, StoreError, Templates, Throttle,
    TokenPurpose, User, UserId, UserStore,
};

/// At most `max` requests per `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub max: u32,
    pub window: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoverySettings {
    /// The origin links point at (`public_url`).
    pub public_url: String,
    /// How long a reset link works (15 minutes).
    pub reset_lifetime: Duration,
    /// How long a verification link works (24 hours).
    pub verify_lifetime: Duration,
    /// Reset and verification mails per address (whether or not it has an
    /// account, so a 429 tells nothing): 5 an hour.
    pub per_email: Limit,
    /// Requests per client address on each recovery endpoint: 30 in 15 minutes.
    pub per_ip: Limit,
    /// How far an access token outlives its issue (lifetime + skew).
    pub access_token_reach: Duration,
    pub password: PasswordPolicy,
    /// A wrong current password on a change counts as a failed login.
    pub attempts: AttemptPolicy,
}

impl Default for RecoverySettings {
    fn default() -> Self {
        Self {
            public_url: "http://127.0.0.1:8080".into(),
            reset_lifetime: Duration::minutes(15),
            verify_lifetime: Duration::hours(24),
            per_email: Limit { max: 5, window: Duration::hours(1) },
            per_ip: Limit { max: 30, window: Duration::minutes(15) },
            access_token_reach: Duration::seconds(660),
            password: PasswordPolicy::default(),
            attempts: AttemptPolicy::default(),
        }
    }
}

/// The rate-limited requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Forgot,
    Change,
    Reset,
    Resend,
    Verify,
}

impl Action {
    fn name(self) -> &'static str {
        match self {
            Self::Forgot => "forgot",
            Self::Change => "change",
            Self::Reset => "reset",
            Self::Resend => "resend",
            Self::Verify => "verify",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ResetError {
    /// Unknown, used, expired, superseded, or of another purpose: one answer.
    #[error("the link is invalid or has expired")]
    InvalidToken,
    #[error(transparent)]
    Password(#[from] PasswordError),
    #[error(transparent)]
    Hash(#[from] HashError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    #[error("the current password is wrong")]
    WrongPassword,
    /// Too many wrong passwords for the account, here or at login.
    #[error("too many failed attempts; try again later")]
    Throttled { retry_after: Duration },
    #[error(transparent)]
    Password(#[from] PasswordError),
    #[error(transparent)]
    Hash(#[from] HashError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The count of mail sent to an address on request: hashed, so the table
/// holds no addresses. Reset and resend share one count per address, as
/// each sends it mail (the "already registered" notice has its own).
fn mail_key(email: &str) -> String {
    let normalised = Email::parse(email).map(|e| e.as_str().to_lowercase()).unwrap_or_default();
    format!("mail:email:{}", SecretHash::of(&normalised).as_str())
}

/// The recovery use cases over their ports.
pub struct Recovery {
    users: Arc<dyn UserStore>,
    store: Arc<dyn RecoveryStore>,
    mail: Arc<dyn MailQueue>,
    throttle: Arc<dyn Throttle>,
    hasher: Arc<dyn PasswordHasher>,
    clock: Arc<dyn Clock>,
    revocations: Arc<dyn RevocationSink>,
    templates: Templates,
    settings: RecoverySettings,
    breached: Option<Arc<dyn BreachedPasswords>>,
}

impl Recovery {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        users: Arc<dyn UserStore>,
        store: Arc<dyn RecoveryStore>,
        mail: Arc<dyn MailQueue>,
        throttle: Arc<dyn Throttle>,
        hasher: Arc<dyn PasswordHasher>,
        clock: Arc<dyn Clock>,
        revocations: Arc<dyn RevocationSink>,
        templates: Templates,
        settings: RecoverySettings,
    ) -> Self {
        Self { users, store, mail, throttle, hasher, clock, revocations, templates, settings, breached: None }
    }

    /// Refuses new passwords that `check` finds breached.
    pub fn with_breach_check(mut self, check: Arc<dyn BreachedPasswords>) -> Self {
        self.breached = Some(check);
        self
    }

    pub fn settings(&self) -> &RecoverySettings {
        &self.settings
    }

    /// Counts a request to `action` from `ip` (and for `email`, when given)
    /// and refuses it once either is over its limit. Unknown and known
    /// addresses count alike; nothing is ever locked.
    pub async fn check_limits(&self, action: Action, email: Option<&str>, ip: &str) -> Result<(), ThrottleError> {
        let now = self.clock.now();
        let mut keys = vec![(format!("{}:ip:{}", action.name(), client_key(ip)), self.settings.per_ip)];
        if let Some(email) = email {
            keys.push((mail_key(email), self.settings.per_email));
        }
        let mut retry_after = None;
        for (key, limit) in keys {
            let hits = self.throttle.hit(&key, limit.window, now).await?;
            if hits.count > limit.max {
                let wait = (hits.window_ends - now).max(Duration::seconds(1));
                retry_after = Some(retry_after.map_or(wait, |w: Duration| w.max(wait)));
            }
        }
        match retry_after {
            Some(retry_after) => Err(ThrottleError::Throttled { retry_after }),
            None => Ok(()),
        }
    }

    /// Mails a reset link when `email` has an account; does nothing else.
    pub async fn request_reset(&self, email: &str) -> Result<(), StoreError> {
        let Some(user) = self.user_by_email(email).await? else { return Ok(()) };
        self.mail_token(&user, TokenPurpose::PasswordReset).await
    }

    /// Mails a verification link when `email` has an unverified account.
    pub async fn resend_verification(&self, email: &str) -> Result<(), StoreError> {
        match self.user_by_email(email).await? {
            Some(user) if !user.email_verified => self.mail_token(&user, TokenPurpose::VerifyEmail).await,
            _ => Ok(()),
        }
    }

    /// Tells the owner of `email` that someone tried to register it again
    /// (`registration.conceal_existing`), unless the address has had its
    /// share of mail this hour (the count [`Self::check_limits`] keeps).
    pub async fn notify_existing(&self, email: &Email) -> Result<(), StoreError> {
        let now = self.clock.now();
        // A count of its own: sharing forgot's would let that count tell a
        // taken address (notice counted) from a new one (nothing counted).
        let key = mail_key(email.as_str()).replacen("mail:", "notice:", 1);
        let hits = self.throttle.hit(&key, self.settings.per_email.window, now).await?;
        if hits.count > self.settings.per_email.max {
            return Ok(());
        }
        let link = format!("{}/login", self.settings.public_url.trim_end_matches('/'));
        let values = Values { link: &link, public_url: &self.settings.public_url, valid_for: "", provider: "" };
        let mail = self.templates.render(Template::AccountExists, email, &values);
        self.mail.queue_mail(&mail, now, now + self.settings.verify_lifetime).await
    }

    /// Mails a new account its verification link.
    pub async fn send_verification(&self, user: &User) -> Result<(), StoreError> {
        self.mail_token(user, TokenPurpose::VerifyEmail).await
    }

    async fn user_by_email(&self, email: &str) -> Result<Option<User>, StoreError> {
        match Email::parse(email) {
            Ok(email) => self.users.user_by_email(&email).await,
            Err(_) => Ok(None),
        }
    }

    async fn mail_token(&self, user: &User, purpose: TokenPurpose) -> Result<(), StoreError> {
        let now = self.clock.now();
        let (lifetime, page, template) = match purpose {
            TokenPurpose::PasswordReset => (self.settings.reset_lifetime, "reset-password", Template::PasswordReset),
            TokenPurpose::VerifyEmail => (self.settings.verify_lifetime, "verify-email", Template::VerifyEmail),
        };
        let secret = OpaqueSecret::generate();
        let link = format!("{}/{page}#token={}", self.settings.public_url.trim_end_matches('/'), secret.expose());
        let valid_for = say_duration(lifetime);
        let values = Values { link: &link, public_url: &self.settings.public_url, valid_for: &valid_for, provider: "" };
        let mail = self.templates.render(template, &user.email, &values);
        let token =
            EmailToken { hash: secret.hash(), user_id: user.id, purpose, created_at: now, expires_at: now + lifetime };
        self.store.issue_token(&token, &mail).await
    }

    fn notice(&self, user: &User) -> crate::Mail {
        let values = Values { link: "", public_url: &self.settings.public_url, valid_for: "", provider: "" };
        self.templates.render(Template::PasswordChanged, &user.email, &values)
    }

    /// The notice that `provider` now signs `user` in.
    pub fn sign_in_added(&self, user: &User, provider: &str) -> crate::Mail {
        let values = Values { link: "", public_url: &self.settings.public_url, valid_for: "", provider };
        self.templates.render(Template::SignInAdded, &user.email, &values)
    }

    /// Sets a new password with a reset token: every session ends, the user
    /// is not signed in, and is told by mail.
    pub async fn reset_password(&self, token: &str, password: &str) -> Result<UserId, ResetError> {
        let hash = SecretHash::of(token);
        let now = self.clock.now();
        let owner = self.store.token_owner(&hash, TokenPurpose::PasswordReset, now).await?;
        let user = match owner {
            Some(id) => self.users.user_by_id(id).await?.ok_or(ResetError::InvalidToken)?,
            None => return Err(ResetError::InvalidToken),
        };
        let password = Password::new_checked(password, &self.settings.password)?;
        check_breached(self.breached.as_deref(), &password).await?;
        let phc = self.hasher.hash(&password).await?;
        let now = self.clock.now();
        let event = DomainEvent::password_reset(user.id, now);
        let revoked = self
            .store
            .reset_password(&hash, user.id, &phc, &event, &self.notice(&user))
            .await?
            .ok_or(ResetError::InvalidToken)?;
        self.revoked(&revoked, now).await;
        // The way out of login throttling: the count starts again.
        self.throttle.clear_attempts(&account_key(user.email.as_str())).await?;
        Ok(user.id)
    }

    /// Changes the password of a signed-in user who knows the current one;
    /// every other session ends and the user is told by mail.
    pub async fn change_password(
        &self,
        user: &User,
        keep: SessionId,
        current: &str,
        password: &str,
    ) -> Result<(), ChangeError> {
        let given = Password::for_login(current);
        // A stolen session must not make this a way around login throttling.
        let email = user.email.as_str();
        let now = self.clock.now();
        if let Some(retry_after) = claim_attempt(self.throttle.as_ref(), email, &self.settings.attempts, now).await? {
            return Err(ChangeError::Throttled { retry_after });
        }
        let verified = match &user.password_hash {
            Some(phc) => {
                if self.hasher.verify(&given, phc).await? == Verification::Mismatch {
                    return Err(ChangeError::WrongPassword);
                }
                self.throttle.clear_attempts(&account_key(email)).await?;
                phc
            }
            None => {
                // Same work either way; no password means no match.
                self.hasher.verify_dummy(&given).await?;
                return Err(ChangeError::WrongPassword);
            }
        };
        let password = Password::new_checked(password, &self.settings.password)?;
        check_breached(self.breached.as_deref(), &password).await?;
        let phc = self.hasher.hash(&password).await?;
        let now = self.clock.now();
        let event = DomainEvent::password_changed(user.id, now);
        let notice = self.notice(user);
        // Conditional on the verified hash: a reset committed since the
        // check wins and this change is refused; a login's upgrade of the
        // hash (same password) is checked again, once.
        let mut verified = verified.clone();
        for _ in 0..2 {
            if let Some(revoked) = self.store.change_password(user.id, &verified, &phc, keep, &event, &notice).await? {
                self.revoked(&revoked, now).await;
                return Ok(());
            }
            let again =
                rematch(self.users.as_ref(), self.hasher.as_ref(), user.id, &given).await.map_err(|e| match e {
                    LoginError::Hash(e) => ChangeError::Hash(e),
                    LoginError::Store(e) => ChangeError::Store(e),
                    LoginError::InvalidCredentials { .. } | LoginError::EmailNotVerified { .. } => {
                        ChangeError::WrongPassword
                    }
                    LoginError::Throttled { retry_after } => ChangeError::Throttled { retry_after },
                })?;
            match again {
                Some(current) if current != verified => verified = current,
                _ => break,
            }
        }
        Err(ChangeError::WrongPassword)
    }

    /// Marks the address of the token's owner verified.
    pub async fn verify_email(&self, token: &str) -> Result<UserId, ResetError> {
        let hash = SecretHash::of(token);
        let now = self.clock.now();
        let user =
            self.store.token_owner(&hash, TokenPurpose::VerifyEmail, now).await?.ok_or(ResetError::InvalidToken)?;
        let event = DomainEvent::email_verified(user, now);
        if self.store.verify_email(&hash, user, &event).await? { Ok(user) } else { Err(ResetError::InvalidToken) }
    }

    async fn revoked(&self, sessions: &[SessionId], now: OffsetDateTime) {
        let until = now + self.settings.access_token_reach;
        for id in sessions {
            self.revocations.session_revoked(*id, until).await;
        }
    }
}
