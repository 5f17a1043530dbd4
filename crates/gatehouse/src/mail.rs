//! Wiring of mail, recovery and login providers: which mailer, the
//! templates, the limits, the OpenID providers.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use auth_core::recovery::Limit;
use auth_core::{Clock, Mailer, PasswordHasher, Recovery, RecoverySettings, RevocationSink, Templates};
use auth_service::AuthSettings;
use auth_service::mail::{FileMailer, SmtpMailer};
use auth_store::Stores;

use crate::config::Config;

/// SMTP when `mail.smtp_url` is set; else `.eml` files in `<data_dir>/mail/`.
pub fn mailer(config: &Config) -> anyhow::Result<Arc<dyn Mailer>> {
    let from = config.mail.from.parse().context("mail.from")?;
    match &config.mail.smtp_url {
        Some(url) => {
            let timeout = Duration::from_secs(config.mail.timeout_secs);
            let mailer = SmtpMailer::new(url, from, timeout)?;
            tracing::info!("mail goes out over SMTP");
            Ok(Arc::new(mailer))
        }
        None => {
            let dir = config.data_dir.join("mail");
            let mailer = FileMailer::new(&dir, from).with_context(|| format!("create {}", dir.display()))?;
            tracing::info!(dir = %dir.display(), "no mail.smtp_url: mail is written to files");
            Ok(Arc::new(mailer))
        }
    }
}

/// The configured login providers, each discovered when first used.
pub fn oauth(config: &Config) -> anyhow::Result<auth_service::oauth::OAuth> {
    use auth_service::oauth::{Provider, ProviderSettings};
    let mut providers = std::collections::BTreeMap::new();
    for (name, provider) in &config.oauth.providers {
        let (issuer, protocol, scopes) = provider.protocol(name).map_err(anyhow::Error::msg)?;
        let settings = ProviderSettings {
            name: name.clone(),
            issuer,
            protocol,
            client_id: provider.client_id.clone(),
            client_secret: provider.client_secret.clone().unwrap_or_default(),
            scopes,
            link_by_email: provider.links_by_email(),
        };
        providers.insert(name.clone(), std::sync::Arc::new(Provider::new(settings)?));
        tracing::info!(provider = %name, "login through the provider is on");
    }
    Ok(auth_service::oauth::OAuth { providers, error_url: config.oauth.error_url.clone() })
}

pub fn recovery(
    config: &Config,
    settings: &AuthSettings,
    stores: &Stores,
    hasher: Arc<dyn PasswordHasher>,
    clock: Arc<dyn Clock>,
    revocations: Arc<dyn RevocationSink>,
) -> anyhow::Result<Recovery> {
    let templates = match &config.mail.templates_dir {
        Some(dir) => Templates::with_overrides(dir)?,
        None => Templates::builtin(),
    };
    let r = &config.recovery;
    let recovery = RecoverySettings {
        public_url: config.public_url.clone(),
        reset_lifetime: time::Duration::minutes(r.reset_link_minutes),
        verify_lifetime: time::Duration::hours(r.verify_link_hours),
        per_email: Limit { max: r.per_address_per_hour, window: time::Duration::hours(1) },
        per_ip: Limit { max: r.per_client_per_15_minutes, window: time::Duration::minutes(15) },
        access_token_reach: settings.accounts.access_token_reach,
        password: settings.accounts.password,
        attempts: settings.accounts.limits.attempts,
    };
    Ok(Recovery::new(
        stores.users.clone(),
        stores.recovery.clone(),
        stores.mail.clone(),
        stores.throttle.clone(),
        hasher,
        clock,
        revocations,
        templates,
        recovery,
    ))
}
