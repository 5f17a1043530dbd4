//! Wiring: configuration in, a running application out.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use auth_core::{Accounts, AccountsSettings, Argon2Hasher, Clock, PasswordPolicy, SystemClock};
use auth_service::keys::KeyHandle;
use auth_service::{AppState, AuthSettings};
use auth_tokens::TokenSettings;
use tokio::net::TcpListener;

use crate::config::Config;

/// A bound, ready-to-run server.
pub struct Application {
    listener: TcpListener,
    router: axum::Router,
    keys: Arc<KeyHandle>,
    reload: Duration,
}

impl Application {
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        ensure_data_dir(&config)?;
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let stores = auth_store::open(&config.database_url(), true).await?;
        tracing::info!(backend = stores.backend, "database ready");
        let settings = auth_settings(&config);
        let keys = Arc::new(
            KeyHandle::from_file(config.key_file(), settings.tokens.clone(), clock.clone())
                .context("load the signing keys")?,
        );
        let hasher = Arc::new(Argon2Hasher::new(&config.passwords.hashing)?);
        let accounts = Accounts::new(
            stores.users.clone(),
            stores.sessions.clone(),
            hasher,
            clock.clone(),
            settings.accounts.clone(),
        );
        let state = AppState::new(
            accounts,
            keys.clone(),
            clock,
            stores.health.clone(),
            settings,
        );
        let listener = TcpListener::bind(&config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        Ok(Self {
            listener,
            router: auth_service::router(state),
            keys,
            reload: Duration::from_secs(config.signing.reload_secs.max(1)),
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        tracing::info!("listening on http://{}", self.local_addr()?);
        let refresher = self.keys.spawn_refresher(self.reload);
        let served = auth_service::serve(self.listener, self.router, shutdown).await;
        refresher.abort();
        served.context("server failed")?;
        tracing::info!("stopped");
        Ok(())
    }
}

fn auth_settings(config: &Config) -> AuthSettings {
    AuthSettings {
        public_url: config.public_url.trim_end_matches('/').to_owned(),
        tokens: TokenSettings {
            issuer: config.public_url.trim_end_matches('/').to_owned(),
            audience: config.tokens.audience.clone(),
            lifetime: config.tokens.access_ttl_secs,
            leeway: config.tokens.leeway_secs,
        },
        accounts: AccountsSettings {
            password: PasswordPolicy {
                min_chars: config.passwords.min_chars,
                max_chars: config.passwords.max_chars,
            },
            session_lifetime: time::Duration::days(config.sessions.lifetime_days),
            session_idle: time::Duration::days(config.sessions.idle_days),
            refresh_grace: time::Duration::seconds(config.sessions.refresh_grace_secs),
        },
        trusted_origins: config.csrf.trusted_origins.clone(),
    }
}

/// The data dir holds the key file: keep it private to the user.
fn ensure_data_dir(config: &Config) -> anyhow::Result<()> {
    let dir = &config.data_dir;
    if !dir.exists() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("create the data directory {}", dir.display()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
    }
    Ok(())
}

pub async fn migrate(config: &Config) -> anyhow::Result<()> {
    ensure_data_dir(config)?;
    auth_store::open(&config.database_url(), true).await?;
    println!("migrations applied to {}", redact(&config.database_url()));
    Ok(())
}

/// A database URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}
