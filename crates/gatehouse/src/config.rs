//! Typed, strict configuration (DESIGN §1): defaults, then the TOML file, then
//! `GATEHOUSE_SECTION__KEY` environment variables, then flags. Unknown keys
//! are an error. `gatehouse.example.toml` documents every key.

use std::path::{Path, PathBuf};

use api_gateway::{AuthMode, RouteConfig};
use auth_core::hashing::HashingSettings;
use auth_service::oauth::Protocol;
use auth_tokens::TokenSettings;
use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The origin users see; token issuer; trusted origin for unsafe requests.
    pub public_url: String,
    /// Address to listen on; port 0 picks a free port.
    pub listen: String,
    /// Serving threads of the gateway roles, each a single-threaded runtime
    /// (like nginx workers); 0 = one per CPU core, plus one.
    pub workers: usize,
    /// Seconds a stopping server waits for requests already sent before it
    /// closes the connections left and exits.
    pub shutdown_grace_secs: u64,
    /// Holds the SQLite file and the development signing keys.
    pub data_dir: PathBuf,
    pub database: DatabaseConfig,
    pub tokens: TokensConfig,
    pub sessions: SessionsConfig,
    pub passwords: PasswordsConfig,
    pub signing: SigningConfig,
    pub csrf: CsrfConfig,
    pub auth_service: AuthServiceConfig,
    pub gateway: GatewayConfig,
    pub nats: NatsConfig,
    pub events: EventsConfig,
    pub admin: AdminConfig,
    pub mail: MailConfig,
    pub recovery: RecoveryConfig,
    pub limits: LimitsConfig,
    pub registration: RegistrationConfig,
    pub oauth: OAuthConfig,
    /// `[roles.<name>]`: roles created, or brought to these permissions, at
    /// start (besides those made through the admin API).
    pub roles: std::collections::BTreeMap<String, RoleConfig>,
    pub notes: NotesConfig,
    pub log: LogConfig,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OAuthConfig {
    /// Where a failed provider login is sent, with `?error=CODE`: a path
    /// here or a URL on a trusted origin.
    pub error_url: String,
    /// `[oauth.providers.<name>]`, one table each.
    pub providers: std::collections::BTreeMap<String, ProviderConfig>,
}

impl Default for OAuthConfig {
    fn default() -> Self {
        Self { error_url: "/login".into(), providers: Default::default() }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleConfig {
    #[serde(default)]
    pub description: String,
    /// `resource:action` each.
    #[serde(default)]
    pub permissions: Vec<String>,
}

/// The built-in `user` role may do what the example notes service asks.
fn default_roles() -> std::collections::BTreeMap<String, RoleConfig> {
    let user = RoleConfig {
        description: "every account".into(),
        permissions: vec!["notes:read".into(), "notes:write".into()],
    };
    std::collections::BTreeMap::from([("user".to_owned(), user)])
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// Any OpenID Connect provider, by its issuer URL.
    Oidc,
    /// Google (OpenID Connect at `https://accounts.google.com`).
    Google,
    /// Facebook Login and the Graph API.
    Facebook,
    /// A GitHub OAuth app, on github.com or (`issuer`) a GitHub Enterprise Server.
    Github,
}

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    pub kind: ProviderKind,
    pub client_id: String,
    /// Better set as `GATEHOUSE_OAUTH__PROVIDERS__<NAME>__CLIENT_SECRET`.
    #[serde(default)]
    pub client_secret: Option<String>,
    /// For `oidc`: the issuer, exactly as its discovery document says it.
    /// For `github`: a GitHub Enterprise Server's URL (default github.com).
    #[serde(default)]
    pub issuer: Option<String>,
    /// Default `["openid", "email"]`; GitHub `["read:user", "user:email"]`;
    /// Facebook `["email", "public_profile"]`.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Whether a login through this provider may join an existing account
    /// with the same email when both sides verified it (default: true,
    /// except for Facebook, which has no verified flag); false: the
    /// account's owner links it from `/auth/me/identities`.
    #[serde(default)]
    pub link_by_email: Option<bool>,
}

/// The client secret never reaches a log.
impl std::fmt::Debug for ProviderConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderConfig")
            .field("kind", &self.kind)
            .field("client_id", &self.client_id)
            .field("issuer", &self.issuer)
            .field("scopes", &self.scopes)
            .field("link_by_email", &self.link_by_email)
            .finish_non_exhaustive()
    }
}

impl ProviderConfig {
    pub fn links_by_email(&self) -> bool {
        self.link_by_email.unwrap_or(self.kind != ProviderKind::Facebook)
    }

    /// The issuer (what identities are keyed by), the protocol and the
    /// scopes, after the preset and the checks: endpoints are `https`, or
    /// `http` on a loopback host (development and tests).
    pub fn protocol(&self, name: &str) -> Result<(String, Protocol, Vec<String>), String> {
        use auth_service::oauth::{Endpoints, FACEBOOK, FACEBOOK_GRAPH, GITHUB, GOOGLE};
        let fixed = |preset: &str| match &self.issuer {
            Some(given) if given != preset => Err(format!("oauth.providers.{name}: {:?}'s issuer is fixed", self.kind)),
            _ => Ok(preset.to_owned()),
        };
        let openid = ["openid", "email"];
        let (issuer, protocol, defaults, needed) = match self.kind {
            ProviderKind::Google => (fixed(GOOGLE)?, Protocol::Oidc, &openid[..], "openid"),
            ProviderKind::Oidc => {
                let issuer =
                    self.issuer.clone().ok_or(format!("oauth.providers.{name}: kind = \"oidc\" needs issuer"))?;
                (issuer, Protocol::Oidc, &openid[..], "openid")
            }
            ProviderKind::Github => {
                let base = self.issuer.as_deref().unwrap_or(GITHUB).trim_end_matches('/').to_lowercase();
                let endpoints = Endpoints::github(&base);
                (base, Protocol::GitHub(endpoints), &["read:user", "user:email"][..], "user:email")
            }
            ProviderKind::Facebook => {
                let endpoints = Endpoints::facebook(FACEBOOK, FACEBOOK_GRAPH);
                (fixed(FACEBOOK)?, Protocol::Facebook(endpoints), &["email", "public_profile"][..], "email")
            }
        };
        if !auth_service::oauth::secure_url(&issuer) {
            return Err(format!(
                "oauth.providers.{name}.issuer must be https:// (http:// only on localhost or 127.0.0.1)"
            ));
        }
        let scopes = match self.scopes.is_empty() {
            true => defaults.iter().map(|s| (*s).to_owned()).collect(),
            false => self.scopes.clone(),
        };
        if !scopes.iter().any(|s| s == needed || (needed == "user:email" && s == "user")) {
            return Err(format!("oauth.providers.{name}.scopes must include \"{needed}\""));
        }
        Ok((issuer, protocol, scopes))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MailConfig {
    /// `smtp://` (no TLS), `smtps://` (TLS) or `smtp+starttls://` (STARTTLS,
    /// required), with `user:password@` if the server wants them; unset =
    /// each message is written as an `.eml` file under `<data_dir>/mail/`.
    pub smtp_url: Option<String>,
    /// The sender, `Name <address>`.
    pub from: String,
    /// Seconds any one step of talking to the mail server may take.
    pub timeout_secs: u64,
    /// A directory whose `password_reset`, `password_changed` and
    /// `verify_email` `.txt`/`.html` files replace the built-in templates.
    pub templates_dir: Option<PathBuf>,
}

impl Default for MailConfig {
    fn default() -> Self {
        Self { smtp_url: None, from: "Gatehouse <no-reply@localhost>".into(), timeout_secs: 10, templates_dir: None }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecoveryConfig {
    /// How long a password reset link works.
    pub reset_link_minutes: i64,
    /// How long an email verification link works.
    pub verify_link_hours: i64,
    /// Reset and verification requests per address per hour (known or not).
    pub per_address_per_hour: u32,
    /// Requests per client address per 15 minutes, on each of forgot,
    /// reset, verify and resend.
    pub per_client_per_15_minutes: u32,
}

impl Default for RecoveryConfig {
    fn default() -> Self {
        Self { reset_link_minutes: 15, verify_link_hours: 24, per_address_per_hour: 5, per_client_per_15_minutes: 30 }
    }
}

/// A token bucket per client address: `burst` requests at once, then
/// `per_minute`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BucketConfig {
    pub burst: u32,
    pub per_minute: u32,
}

impl From<BucketConfig> for auth_core::throttling::Bucket {
    fn from(b: BucketConfig) -> Self {
        Self { burst: b.burst, per_minute: b.per_minute }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Failed logins per address (with or without an account) before each
    /// further attempt waits, doubling from 1 s.
    pub failures_before_delay: u32,
    /// The longest wait between attempts, in seconds.
    pub max_delay_secs: i64,
    /// Consecutive failures after which only a password reset opens the
    /// account (at most 100, NIST 800-63B-4 §3.2.2).
    pub failure_ceiling: u32,
    /// Per client address (an IPv6 client per /64), on each endpoint.
    pub login: BucketConfig,
    pub register: BucketConfig,
    pub forgot: BucketConfig,
    pub refresh: BucketConfig,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        let l = auth_core::throttling::Limits::default();
        let bucket = |b: auth_core::throttling::Bucket| BucketConfig { burst: b.burst, per_minute: b.per_minute };
        Self {
            failures_before_delay: l.attempts.free_failures,
            max_delay_secs: l.attempts.max_delay.whole_seconds(),
            failure_ceiling: l.attempts.ceiling,
            login: bucket(l.login),
            register: bucket(l.register),
            forgot: bucket(l.forgot),
            refresh: bucket(l.refresh),
        }
    }
}

impl LimitsConfig {
    pub fn limits(&self) -> auth_core::throttling::Limits {
        auth_core::throttling::Limits {
            login: self.login.into(),
            register: self.register.into(),
            forgot: self.forgot.into(),
            refresh: self.refresh.into(),
            attempts: auth_core::throttling::AttemptPolicy {
                free_failures: self.failures_before_delay,
                max_delay: time::Duration::seconds(self.max_delay_secs),
                ceiling: self.failure_ceiling,
            },
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistrationConfig {
    /// Whether login waits until the address is verified (403
    /// `email_not_verified`); otherwise tokens carry `email_verified`.
    pub require_verified_email: bool,
    /// Whether registering a taken address answers as a new one would
    /// (201, after the same work) and mails the owner, instead of 409.
    pub conceal_existing: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthServiceConfig {
    /// Peers (IPs or CIDRs: the gateways, a load balancer) whose
    /// X-Forwarded-For the standalone auth-service believes for the client
    /// address it records; in `up` the gateway's trusted proxies apply.
    pub trusted_proxies: Vec<String>,
    /// The standalone auth-service's client limits, as the gateway's.
    pub client_idle_timeout_secs: u64,
    pub client_header_timeout_secs: u64,
    pub client_send_timeout_secs: u64,
    pub max_connections: usize,
    /// `Strict-Transport-Security` on every answer: `auto` (unless
    /// public_url's host is loopback or `localhost`), `on` or `off`.
    pub hsts: Hsts,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Hsts {
    #[default]
    Auto,
    On,
    Off,
}

impl Config {
    /// Whether answers carry `Strict-Transport-Security`.
    pub fn hsts(&self) -> bool {
        match self.auth_service.hsts {
            Hsts::On => true,
            Hsts::Off => false,
            Hsts::Auto => {
                let rest = self.public_url.split_once("://").map_or("", |(_, rest)| rest);
                let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
                let host = match authority.strip_prefix('[') {
                    Some(v6) => v6.split(']').next().unwrap_or_default(),
                    None => authority.rsplit_once(':').map_or(authority, |(host, _)| host),
                };
                let loopback = host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
                !(loopback || host.eq_ignore_ascii_case("localhost"))
            }
        }
    }
}

impl Default for AuthServiceConfig {
    fn default() -> Self {
        Self {
            hsts: Hsts::Auto,
            trusted_proxies: Vec::new(),
            client_idle_timeout_secs: 75,
            client_header_timeout_secs: 10,
            client_send_timeout_secs: 60,
            max_connections: 10_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// Where `gatehouse gateway` finds the auth-service (JWKS, `/auth/`); unused by `up`.
    pub auth_service_url: Option<String>,
    /// The route table; `/auth/` and `/.well-known/` always go to the auth-service.
    pub routes: Vec<RouteConfig>,
    /// Peers (IPs or CIDRs) whose X-Forwarded-* headers are believed.
    pub trusted_proxies: Vec<String>,
    /// Seconds between JWKS refreshes.
    pub jwks_refresh_secs: u64,
    /// Verified tokens remembered until they expire, per serving thread.
    pub token_cache_size: usize,
    /// Seconds a client connection may sit idle between requests (nginx's `keepalive_timeout`).
    pub client_idle_timeout_secs: u64,
    /// Seconds a request head may take to arrive whole, however slowly it
    /// trickles in (nginx's `client_header_timeout`).
    pub client_header_timeout_secs: u64,
    /// Seconds one write to a client may wait for it to read before the
    /// connection is dropped (nginx's `send_timeout`).
    pub client_send_timeout_secs: u64,
    /// Client connections served at once; more are answered 503.
    pub max_connections: usize,
    /// Whether client header names with `_` reach upstreams (nginx's `underscores_in_headers`).
    pub underscores_in_headers: bool,
    /// Whether bodiless GET/HEAD requests take the gateway's own HTTP/1.1 path.
    pub fast_path: bool,
    pub revocation: RevocationConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RevocationConfig {
    /// With NATS: seconds the gateway may go without proof that its
    /// revocation set is complete before authenticated routes answer 503
    /// (fail closed).
    pub max_staleness: f64,
}

impl Default for RevocationConfig {
    fn default() -> Self {
        Self { max_staleness: 5.0 }
    }
}

// Whole-config equality (used by tests) needs `Eq`; a NaN here never gets
// that far: `validate` refuses it.
impl Eq for RevocationConfig {}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            auth_service_url: None,
            routes: vec![RouteConfig {
                require_permissions: vec!["notes:read".into(), "notes:write".into()],
                ..RouteConfig::new("/api/notes", "inproc://notes", AuthMode::Required)
            }],
            trusted_proxies: Vec::new(),
            jwks_refresh_secs: 60,
            token_cache_size: 10_000,
            client_idle_timeout_secs: 75,
            client_header_timeout_secs: 10,
            client_send_timeout_secs: 60,
            max_connections: 10_000,
            underscores_in_headers: false,
            fast_path: true,
            revocation: RevocationConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsConfig {
    /// `nats://HOST:PORT`; unset = events go to the in-process bus.
    pub url: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsConfig {
    /// How often the outbox relay looks for new events, in milliseconds.
    pub relay_interval_ms: u64,
    /// Events per relay batch.
    pub relay_batch: u32,
    /// Services that must confirm each account deletion (`user.deletion_completed`).
    pub deletion_services: Vec<String>,
    /// The durable NATS consumer feeding the deletion ledger; every
    /// auth-service of one deployment shares it (one name per database).
    pub ledger_consumer: String,
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            relay_interval_ms: 200,
            relay_batch: 100,
            deletion_services: vec!["notes".into()],
            ledger_consumer: auth_service::ledger::CONSUMER.into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Bearer token of the operator endpoints (`/auth/admin/…`); unset disables them.
    pub operator_token: Option<String>,
    /// The operator port: `/metrics` (and `/healthz`) for this process,
    /// never on the client port unless `metrics_token` is set. Empty: none.
    pub listen: String,
    /// Serve `/metrics` on the client port too, to this bearer token only.
    pub metrics_token: Option<String>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self { operator_token: None, listen: "127.0.0.1:9090".into(), metrics_token: None }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotesConfig {
    /// The example notes service's own database in `up`; unset = `sqlite://<data_dir>/notes.db`.
    pub database_url: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// `sqlite://…` or `postgres://…`; unset = `sqlite://<data_dir>/gatehouse.db`.
    pub url: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TokensConfig {
    /// The `aud` of access tokens.
    pub audience: String,
    /// Access-token lifetime in seconds.
    pub access_ttl_secs: i64,
    /// Clock skew allowed when verifying, in seconds.
    pub leeway_secs: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionsConfig {
    pub lifetime_days: i64,
    pub idle_days: i64,
    /// How long a just-rotated refresh token keeps working, for racing tabs.
    pub refresh_grace_secs: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PasswordsConfig {
    pub min_chars: usize,
    pub max_chars: usize,
    pub hashing: HashingSettings,
    /// A Pwned Passwords range API (`https://api.pwnedpasswords.com/range`)
    /// new passwords are checked against; only 5 hex digits of their SHA-1
    /// leave the process. Unset: no check. Unreachable: accepted, logged.
    pub breached_range_url: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SigningConfig {
    /// The key file (signing keys and CSRF secret, mode 0600); unset = `<data_dir>/keys.json`.
    pub key_file: Option<PathBuf>,
    /// How often the file is checked for a rotation, in seconds.
    pub reload_secs: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CsrfConfig {
    /// Origins besides `public_url` allowed to send unsafe requests.
    pub trusted_origins: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: String,
    /// A tracing filter; `RUST_LOG` overrides it.
    pub filter: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            public_url: "http://127.0.0.1:8080".into(),
            listen: "127.0.0.1:8080".into(),
            workers: 0,
            shutdown_grace_secs: 25,
            data_dir: PathBuf::from("./data"),
            database: DatabaseConfig::default(),
            tokens: TokensConfig::default(),
            sessions: SessionsConfig::default(),
            passwords: PasswordsConfig::default(),
            signing: SigningConfig::default(),
            csrf: CsrfConfig::default(),
            auth_service: AuthServiceConfig::default(),
            gateway: GatewayConfig::default(),
            nats: NatsConfig::default(),
            events: EventsConfig::default(),
            admin: AdminConfig::default(),
            mail: MailConfig::default(),
            recovery: RecoveryConfig::default(),
            limits: LimitsConfig::default(),
            registration: RegistrationConfig::default(),
            oauth: OAuthConfig::default(),
            roles: default_roles(),
            notes: NotesConfig::default(),
            log: LogConfig::default(),
        }
    }
}

impl Default for TokensConfig {
    fn default() -> Self {
        Self { audience: "gatehouse".into(), access_ttl_secs: 600, leeway_secs: 60 }
    }
}

impl Default for SessionsConfig {
    fn default() -> Self {
        Self { lifetime_days: 30, idle_days: 7, refresh_grace_secs: 5 }
    }
}

impl Default for PasswordsConfig {
    fn default() -> Self {
        Self { min_chars: 15, max_chars: 128, hashing: HashingSettings::default(), breached_range_url: None }
    }
}

impl Default for SigningConfig {
    fn default() -> Self {
        Self { key_file: None, reload_secs: 5 }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { format: "text".into(), filter: "info".into() }
    }
}

/// Values given as command-line flags; they win over file and environment.
#[derive(Debug, Default, Serialize)]
pub struct Overrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration file {0} does not exist")]
    MissingFile(PathBuf),
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Defaults ← `file` ← `GATEHOUSE_…` from `env` ← `flags`.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        flags: &Overrides,
    ) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            if !file.exists() {
                return Err(ConfigError::MissingFile(file.to_owned()));
            }
            figment = figment.merge(Toml::file_exact(file));
        }
        figment = figment.merge(env_provider(env)).merge(Serialized::defaults(flags));
        let config: Config = figment.extract().map_err(|e| ConfigError::Invalid(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.into()));
        if !(self.public_url.starts_with("http://") || self.public_url.starts_with("https://")) {
            return bad("public_url must start with http:// or https://");
        }
        if self.tokens.access_ttl_secs < 30 || self.tokens.access_ttl_secs > 3600 {
            return bad("tokens.access_ttl_secs must be between 30 and 3600");
        }
        if !(0..=300).contains(&self.tokens.leeway_secs) {
            return bad("tokens.leeway_secs must be between 0 and 300");
        }
        if !(0..=60).contains(&self.sessions.refresh_grace_secs) {
            return bad("sessions.refresh_grace_secs must be between 0 and 60");
        }
        if self.sessions.idle_days < 1 || self.sessions.lifetime_days < self.sessions.idle_days {
            return bad("sessions need idle_days ≥ 1 and lifetime_days ≥ idle_days");
        }
        if self.passwords.min_chars < 8 || self.passwords.max_chars < 64 || self.passwords.max_chars > 1024 {
            return bad("passwords need min_chars ≥ 8 and 64 ≤ max_chars ≤ 1024");
        }
        let r = &self.recovery;
        if !(5..=60).contains(&r.reset_link_minutes) {
            return bad("recovery.reset_link_minutes must be between 5 and 60");
        }
        if !(1..=72).contains(&r.verify_link_hours) {
            return bad("recovery.verify_link_hours must be between 1 and 72");
        }
        if r.per_address_per_hour == 0 || r.per_client_per_15_minutes == 0 {
            return bad("recovery limits must be at least 1");
        }
        // Each is a page origin given credentialed reads (CORS): never
        // `*`, `null` or anything but an http(s) origin.
        for origin in &self.csrf.trusted_origins {
            let rest = origin.strip_prefix("https://").or_else(|| origin.strip_prefix("http://"));
            if rest.is_none_or(|r| r.is_empty() || r.trim_end_matches('/').contains(['/', '*', '?', '#'])) {
                return bad(&format!(
                    "csrf.trusted_origins: {origin:?} is not an http(s) origin (scheme://host[:port])"
                ));
            }
        }
        if let Some(url) = &self.passwords.breached_range_url
            && !(url.starts_with("https://") || url.starts_with("http://"))
        {
            return bad("passwords.breached_range_url must be an http(s) URL");
        }
        let l = &self.limits;
        if l.failures_before_delay == 0 || l.failure_ceiling > 100 || l.failures_before_delay >= l.failure_ceiling {
            return bad("limits need 0 < failures_before_delay < failure_ceiling ≤ 100");
        }
        if !(1..=86_400).contains(&l.max_delay_secs) {
            return bad("limits.max_delay_secs must be between 1 and 86400");
        }
        if [l.login, l.register, l.forgot, l.refresh].iter().any(|b| b.burst == 0 || b.per_minute == 0) {
            return bad("limits buckets need burst ≥ 1 and per_minute ≥ 1");
        }
        if self.mail.from.parse::<lettre::message::Mailbox>().is_err() {
            return bad("mail.from must be an address, optionally with a name: `Name <address>`");
        }
        if !(1..=300).contains(&self.mail.timeout_secs) {
            return bad("mail.timeout_secs must be between 1 and 300");
        }
        for (name, role) in &self.roles {
            // The checks the roles get when they are seeded, made before anything starts.
            let role = auth_core::Role {
                name: name.clone(),
                description: role.description.clone(),
                permissions: role.permissions.clone(),
            };
            role.check().map_err(|e| ConfigError::Invalid(format!("roles.{name}: {e}")))?;
        }
        // Identities are keyed by issuer: two providers on one issuer would
        // sign each other's users in, each by its own rules.
        let mut issuers = std::collections::BTreeMap::new();
        for (name, provider) in &self.oauth.providers {
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
                return bad("oauth provider names are lower-case letters, digits and `-`");
            }
            let (issuer, _, _) = provider.protocol(name).map_err(ConfigError::Invalid)?;
            if let Some(other) = issuers.insert(issuer.trim_end_matches('/').to_lowercase(), name) {
                return bad(&format!("oauth.providers.{other} and .{name} have the same issuer {issuer}"));
            }
            if provider.client_id.is_empty() || provider.client_secret.as_deref().is_none_or(str::is_empty) {
                return bad(&format!("oauth.providers.{name} needs client_id and client_secret"));
            }
        }
        let error_url = &self.oauth.error_url;
        let trusted = std::iter::once(&self.public_url).chain(&self.csrf.trusted_origins);
        let on_trusted =
            trusted.into_iter().any(|origin| error_url.starts_with(&format!("{}/", origin.trim_end_matches('/'))));
        let local = error_url.starts_with('/') && !error_url.starts_with("//");
        if error_url.chars().any(|c| c.is_control() || c == '\\') || !(local || on_trusted) {
            return bad("oauth.error_url must be a path (/login) or a URL on public_url or a trusted origin");
        }
        let (g, a) = (&self.gateway, &self.auth_service);
        for (section, idle, header, send, max) in [
            (
                "gateway",
                g.client_idle_timeout_secs,
                g.client_header_timeout_secs,
                g.client_send_timeout_secs,
                g.max_connections,
            ),
            (
                "auth_service",
                a.client_idle_timeout_secs,
                a.client_header_timeout_secs,
                a.client_send_timeout_secs,
                a.max_connections,
            ),
        ] {
            for (key, secs) in [
                ("client_idle_timeout_secs", idle),
                ("client_header_timeout_secs", header),
                ("client_send_timeout_secs", send),
            ] {
                if !(1..=3600).contains(&secs) {
                    return bad(&format!("{section}.{key} must be between 1 and 3600"));
                }
            }
            if max == 0 {
                return bad(&format!("{section}.max_connections must be at least 1"));
            }
        }
        if self.shutdown_grace_secs > 3600 {
            return bad("shutdown_grace_secs must be at most 3600");
        }
        if !(0.1..=3600.0).contains(&self.gateway.revocation.max_staleness) {
            return bad("gateway.revocation.max_staleness must be between 0.1 and 3600 seconds");
        }
        if !matches!(self.log.format.as_str(), "text" | "json") {
            return bad("log.format must be \"text\" or \"json\"");
        }
        Ok(())
    }

    pub fn database_url(&self) -> String {
        self.database
            .url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", self.data_dir.join("gatehouse.db").display()))
    }

    pub fn serving_threads(&self) -> usize {
        match self.workers {
            // With exactly one per core, this 2-core machine left 10-17 % of
            // its CPU idle in half the benchmark runs, waiting on wake-ups;
            // a spare thread closed that (docs/BENCHMARKS.md).
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()) + 1,
            n => n,
        }
    }

    pub fn notes_database_url(&self) -> String {
        self.notes
            .database_url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", self.data_dir.join("notes.db").display()))
    }

    /// What issuing and verifying access tokens agree on.
    pub fn token_settings(&self) -> TokenSettings {
        TokenSettings {
            issuer: self.public_url.trim_end_matches('/').to_owned(),
            audience: self.tokens.audience.clone(),
            lifetime: self.tokens.access_ttl_secs,
            leeway: self.tokens.leeway_secs,
        }
    }

    pub fn key_file(&self) -> PathBuf {
        self.signing.key_file.clone().unwrap_or_else(|| self.data_dir.join("keys.json"))
    }
}

/// `GATEHOUSE_DATABASE__URL` → `database.url`. `GATEHOUSE_TEST_*` belongs to
/// the test suites and is not configuration.
fn env_provider(env: impl IntoIterator<Item = (String, String)>) -> Serialized<figment::value::Dict> {
    let mut dict = figment::value::Dict::new();
    for (key, value) in env {
        let Some(rest) = key.strip_prefix("GATEHOUSE_") else {
            continue;
        };
        if rest.starts_with("TEST_") || rest.is_empty() {
            continue;
        }
        let path: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
        insert(&mut dict, &path, parse_env_value(&value));
    }
    Serialized::defaults(dict)
}

fn insert(dict: &mut figment::value::Dict, path: &[String], value: figment::value::Value) {
    use figment::value::Value;
    match path {
        [] => {}
        [last] => {
            dict.insert(last.clone(), value);
        }
        [first, rest @ ..] => {
            let entry = dict.entry(first.clone()).or_insert_with(|| Value::from(figment::value::Dict::new()));
            if let Value::Dict(_, inner) = entry {
                insert(inner, rest, value);
            }
        }
    }
}

/// Environment values are TOML scalars or arrays when they parse as such, strings otherwise.
fn parse_env_value(raw: &str) -> figment::value::Value {
    raw.parse::<figment::value::Value>().unwrap_or_else(|_| figment::value::Value::from(raw.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = Config::load(None, env(&[]), &Overrides::default()).unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.listen, "127.0.0.1:8080");
        assert_eq!(c.database_url(), "sqlite://./data/gatehouse.db");
        assert_eq!(c.tokens.access_ttl_secs, 600);
        assert_eq!(c.passwords.hashing.memory_kib, 19_456);
    }

    #[test]
    fn hsts_is_on_by_default_everywhere_but_on_loopback_and_localhost() {
        let with = |url: &str, hsts: Hsts| {
            let mut c = Config { public_url: url.into(), ..Config::default() };
            c.auth_service.hsts = hsts;
            c.hsts()
        };
        for local in ["http://127.0.0.1:8080", "http://localhost:8080", "http://[::1]:8080/x", "http://LOCALHOST"] {
            assert!(!with(local, Hsts::Auto), "{local}");
            assert!(with(local, Hsts::On), "{local}");
        }
        for public in ["https://auth.example.com", "https://localhost.example.com", "http://10.0.0.1:8080"] {
            assert!(with(public, Hsts::Auto), "{public}");
            assert!(!with(public, Hsts::Off), "{public}");
        }
        let c = Config::load(None, env(&[("GATEHOUSE_AUTH_SERVICE__HSTS", "off")]), &Overrides::default()).unwrap();
        assert_eq!(c.auth_service.hsts, Hsts::Off);
        assert!(Config::load(None, env(&[("GATEHOUSE_AUTH_SERVICE__HSTS", "maybe")]), &Overrides::default()).is_err());
    }

    #[test]
    fn environment_overrides_file_and_flags_override_both() {
        let dir = std::env::temp_dir().join(format!("gh-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("gatehouse.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:9000\"\n[database]\nurl = \"sqlite://file.db\"\n[tokens]\naccess_ttl_secs = 300\n",
        )
        .unwrap();
        let c = Config::load(
            Some(&file),
            env(&[
                ("GATEHOUSE_DATABASE__URL", "postgres://db/x"),
                ("GATEHOUSE_SESSIONS__REFRESH_GRACE_SECS", "2"),
                ("GATEHOUSE_TEST_POSTGRES_URL", "ignored"),
                ("PATH", "/bin"),
            ]),
            &Overrides { listen: Some("127.0.0.1:0".into()), data_dir: None },
        )
        .unwrap();
        assert_eq!(c.listen, "127.0.0.1:0");
        assert_eq!(c.database_url(), "postgres://db/x");
        assert_eq!(c.tokens.access_ttl_secs, 300);
        assert_eq!(c.sessions.refresh_grace_secs, 2);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn unknown_keys_are_an_error() {
        let err = Config::load(None, env(&[("GATEHOUSE_DATABSE__URL", "x")]), &Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("databse"), "{err}");
        let err = Config::load(None, env(&[("GATEHOUSE_TOKENS__TTL", "5")]), &Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("ttl"), "{err}");
    }

    #[test]
    fn unsafe_values_are_refused() {
        let err = Config::load(None, env(&[("GATEHOUSE_TOKENS__ACCESS_TTL_SECS", "86400")]), &Overrides::default())
            .unwrap_err();
        assert!(err.to_string().contains("access_ttl_secs"), "{err}");
        let err = Config::load(Some(Path::new("/nonexistent/g.toml")), env(&[]), &Overrides::default()).unwrap_err();
        assert!(matches!(err, ConfigError::MissingFile(_)));
    }

    #[test]
    fn providers_need_a_safe_issuer_a_secret_and_the_scopes_their_preset_reads() {
        let with = |pairs: &[(&str, &str)]| {
            let mut all = vec![("GATEHOUSE_OAUTH__PROVIDERS__CORP__CLIENT_ID", "gatehouse")];
            all.extend_from_slice(pairs);
            Config::load(None, env(&all), &Overrides::default())
        };
        let oidc = ("GATEHOUSE_OAUTH__PROVIDERS__CORP__KIND", "oidc");
        let secret = ("GATEHOUSE_OAUTH__PROVIDERS__CORP__CLIENT_SECRET", "s3cret");
        let issuer = |url| ("GATEHOUSE_OAUTH__PROVIDERS__CORP__ISSUER", url);
        let scopes = |list| ("GATEHOUSE_OAUTH__PROVIDERS__CORP__SCOPES", list);
        let kind = |k| ("GATEHOUSE_OAUTH__PROVIDERS__CORP__KIND", k);
        let (github, facebook, google) = (kind("github"), kind("facebook"), kind("google"));
        let ok = with(&[oidc, secret, issuer("http://127.0.0.1:9000")]).unwrap();
        assert_eq!(ok.oauth.providers["corp"].client_secret.as_deref(), Some("s3cret"));
        assert!(!format!("{ok:?}").contains("s3cret"), "the secret never reaches a log");
        assert!(with(&[oidc, secret, issuer("https://login.example.com")]).is_ok());
        assert!(with(&[oidc, secret, issuer("http://[::1]:9000")]).is_ok());
        let presets = |pairs: &[(&str, &str)]| {
            let config = with(pairs).unwrap();
            let (issuer, protocol, scopes) = config.oauth.providers["corp"].protocol("corp").unwrap();
            (issuer, protocol, scopes.join(" "), config.oauth.providers["corp"].links_by_email())
        };
        let (at, protocol, list, links) = presets(&[github, secret]);
        assert_eq!((at.as_str(), list.as_str(), links), ("https://github.com", "read:user user:email", true));
        assert!(matches!(protocol, Protocol::GitHub(e) if e.api == "https://api.github.com"));
        let (at, protocol, _, _) = presets(&[github, secret, issuer("https://git.corp.example/")]);
        assert_eq!(at, "https://git.corp.example");
        assert!(matches!(protocol, Protocol::GitHub(e) if e.api == "https://git.corp.example/api/v3"));
        let link = |on| ("GATEHOUSE_OAUTH__PROVIDERS__CORP__LINK_BY_EMAIL", on);
        assert!(!presets(&[github, secret, link("false")]).3);
        assert!(presets(&[facebook, secret, link("true")]).3);
        let (at, protocol, list, links) = presets(&[facebook, secret]);
        assert_eq!((at.as_str(), list.as_str(), links), ("https://www.facebook.com", "email public_profile", false));
        assert!(matches!(protocol, Protocol::Facebook(_)));
        let (at, protocol, list, _) = presets(&[google, secret]);
        assert_eq!(
            (at.as_str(), protocol, list.as_str()),
            ("https://accounts.google.com", Protocol::Oidc, "openid email")
        );
        for (refused, why) in [
            (with(&[oidc, secret, issuer("http://login.example.com")]), "https"),
            (with(&[oidc, secret, issuer("http://127.0.0.1.evil.example")]), "https"),
            (with(&[oidc, secret]), "needs issuer"),
            (with(&[oidc, issuer("https://login.example.com")]), "client_secret"),
            (with(&[github, secret, issuer("http://git.corp.example")]), "https"),
            (with(&[github, secret, issuer("http://localhost:1@evil.example")]), "https"),
            (
                with(&[
                    oidc,
                    secret,
                    issuer("https://GitHub.com/"),
                    ("GATEHOUSE_OAUTH__PROVIDERS__HUB__KIND", "github"),
                    ("GATEHOUSE_OAUTH__PROVIDERS__HUB__CLIENT_ID", "x"),
                    ("GATEHOUSE_OAUTH__PROVIDERS__HUB__CLIENT_SECRET", "y"),
                ]),
                "the same issuer",
            ),
            (with(&[facebook, secret, issuer("https://facebook.evil.example")]), "fixed"),
            (with(&[google, secret, issuer("https://accounts.google.com.evil.example")]), "fixed"),
            (with(&[github, secret, scopes("[\"read:user\"]")]), "user:email"),
            (with(&[facebook, secret, scopes("[\"public_profile\"]")]), "\"email\""),
            (with(&[oidc, secret, issuer("https://x.example"), scopes("[\"email\"]")]), "openid"),
        ] {
            let err = refused.unwrap_err().to_string();
            assert!(err.contains(why), "{err}");
        }
    }

    #[test]
    fn the_example_file_loads_and_matches_the_defaults() {
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../gatehouse.example.toml");
        let c = Config::load(Some(&example), env(&[]), &Overrides::default()).unwrap();
        assert_eq!(c, Config::default());
    }
}
