//! The state every handler shares, and the settings it is built from.

use std::sync::Arc;

use auth_core::{Accounts, AccountsSettings, Clock, DeletionLedger, Recovery};
use auth_store::Health;
use auth_tokens::TokenSettings;
use auth_tokens::proxies::TrustedProxies;

use crate::keys::KeyHandle;
use crate::metrics::Metrics;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthSettings {
    /// The origin users see, e.g. `http://127.0.0.1:8080`; also the token issuer.
    pub public_url: String,
    pub tokens: TokenSettings,
    pub accounts: AccountsSettings,
    /// Further origins allowed to send unsafe requests (besides `public_url`).
    pub trusted_origins: Vec<String>,
    /// Bearer token of the operator endpoints; `None` disables them.
    pub operator_token: Option<String>,
    /// Services expected to confirm each account deletion.
    pub deletion_services: Vec<String>,
    /// Peers (the gateways, a load balancer) whose `X-Forwarded-For` is
    /// believed for the client address sessions and logs record.
    pub trusted_proxies: TrustedProxies,
    /// Whether every answer carries `Strict-Transport-Security`.
    pub hsts: bool,
    /// `/metrics` on this port answers only this bearer token; unset, it
    /// is not served here (the operator port serves it).
    pub metrics_token: Option<String>,
}

#[derive(Clone)]
pub struct AppState(Arc<Inner>);

struct Inner {
    accounts: Accounts,
    recovery: Recovery,
    admin: auth_core::Admin,
    /// Wakes the mail relay when mail was queued.
    mail_waker: Arc<tokio::sync::Notify>,
    keys: Arc<KeyHandle>,
    clock: Arc<dyn Clock>,
    health: Arc<dyn Health>,
    ledger: Arc<dyn DeletionLedger>,
    metrics: Metrics,
    settings: AuthSettings,
    allowed_origins: Vec<String>,
    cors_origins: Vec<String>,
    /// Whether the event broker is connected, when there is one (`/readyz`).
    broker: std::sync::OnceLock<BrokerReport>,
    /// The login providers; none unless set at wiring.
    oauth: std::sync::OnceLock<crate::oauth::OAuth>,
}

/// Says whether the event broker is connected.
pub type BrokerReport = Arc<dyn Fn() -> bool + Send + Sync>;

impl AppState {
    #[allow(clippy::too_many_arguments)]
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        accounts: Accounts,
        recovery: Recovery,
        admin: auth_core::Admin,
        keys: Arc<KeyHandle>,
        clock: Arc<dyn Clock>,
        health: Arc<dyn Health>,
        ledger: Arc<dyn DeletionLedger>,
        settings: AuthSettings,
    ) -> Self {
        let allowed_origins =
            auth_tokens::csrf::allowed_origins(std::iter::once(&settings.public_url).chain(&settings.trusted_origins));
        let cors_origins = auth_tokens::csrf::allowed_origins(settings.trusted_origins.iter());
        Self(Arc::new(Inner {
            accounts,
            recovery,
            admin,
            mail_waker: Arc::default(),
            keys,
            clock,
            health,
            ledger,
            metrics: Metrics::default(),
            settings,
            allowed_origins,
            cors_origins,
            broker: std::sync::OnceLock::new(),
            oauth: std::sync::OnceLock::new(),
        }))
    }

    /// The Prometheus text of this auth-service.
    pub fn metrics_text(&self) -> String {
        self.metrics().render(self.accounts().hasher())
    }

    pub fn accounts(&self) -> &Accounts {
        &self.0.accounts
    }

    pub fn admin(&self) -> &auth_core::Admin {
        &self.0.admin
    }

    pub fn recovery(&self) -> &Recovery {
        &self.0.recovery
    }

    /// Notified whenever a handler queued mail; give it to the mail relay.
    pub fn mail_waker(&self) -> &Arc<tokio::sync::Notify> {
        &self.0.mail_waker
    }

    pub fn keys(&self) -> &Arc<KeyHandle> {
        &self.0.keys
    }

    pub fn clock(&self) -> &dyn Clock {
        self.0.clock.as_ref()
    }

    pub fn health(&self) -> &dyn Health {
        self.0.health.as_ref()
    }

    pub fn ledger(&self) -> &dyn DeletionLedger {
        self.0.ledger.as_ref()
    }

    pub fn metrics(&self) -> &Metrics {
        &self.0.metrics
    }

    pub fn settings(&self) -> &AuthSettings {
        &self.0.settings
    }

    /// Sets the login providers; once, at wiring.
    pub fn set_oauth(&self, oauth: crate::oauth::OAuth) {
        let _ = self.0.oauth.set(oauth);
    }

    pub fn oauth(&self) -> &crate::oauth::OAuth {
        self.0.oauth.get_or_init(crate::oauth::OAuth::default)
    }

    /// Lets `/readyz` report the event broker (NATS); set once, at wiring.
    pub fn report_broker(&self, connected: BrokerReport) {
        let _ = self.0.broker.set(connected);
    }

    /// Whether the event broker is connected; `None` without one.
    pub fn broker_connected(&self) -> Option<bool> {
        self.0.broker.get().map(|connected| connected())
    }

    /// Lower-cased origins (scheme://host[:port]) trusted for unsafe requests.
    pub fn allowed_origins(&self) -> &[String] {
        &self.0.allowed_origins
    }

    /// Other origins whose pages may read answers with credentials (CORS):
    /// the trusted origins, never `public_url` itself (same-origin) nor `*`.
    pub fn cors_origins(&self) -> &[String] {
        &self.0.cors_origins
    }
}
