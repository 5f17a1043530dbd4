//! Wiring: configuration in, a running application out, for each role.
//!
//! - `up`: the gateway on the public port; behind it, in this process, the
//!   auth-service (`/auth/`, `/.well-known/`, `/openapi.json`) and the example
//!   notes service. Revocations go straight from one to the other.
//! - `auth-service`: the auth API alone.
//! - `gateway`: the gateway alone, in front of a remote auth-service.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use api_gateway::gateway::GatewayParts;
use api_gateway::{
    AuthMode, Authenticator, Gateway, GatewaySettings, HttpJwks, HttpRoleMap, LocalJwks, LocalRoleMap, RoleMap,
    RouteConfig, RouteTable,
};
use auth_core::{Accounts, AccountsSettings, Admin, Argon2Hasher, Clock, PasswordPolicy, SystemClock};
use auth_core::{EventSink, RevocationSink};
use auth_events::handover::Recording;
use auth_events::{
    Consumer, ConsumerSettings, FanOut, InProcessBus, InProcessFeed, NatsPublisher, NatsRevocationFeed,
    NatsRevocationSink, OutboxRelay, RevocationFeed, RevocationsFromEvents,
};
use auth_service::keys::KeyHandle;
use auth_service::ledger::LedgerHandler;
use auth_service::mail::MailRelay;
use auth_service::state::BrokerReport;
use auth_service::{AppState, AuthSettings};
use auth_tokens::proxies::TrustedProxies;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::config::{Config, Overrides};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Up,
    AuthService,
    Gateway,
}

/// Where the configuration came from, so SIGHUP can read it again.
pub struct ConfigSource {
    pub file: Option<PathBuf>,
    pub overrides: Overrides,
}

impl ConfigSource {
    pub fn load(&self) -> anyhow::Result<Config> {
        Ok(Config::load(self.file.as_deref(), std::env::vars(), &self.overrides)?)
    }
}

/// A bound, ready-to-run server.
pub struct Application {
    listener: TcpListener,
    /// Extra single-threaded serving runtimes besides the caller's (gateway roles).
    extra_workers: usize,
    /// How long a shutdown waits for requests already sent.
    shutdown_grace: Duration,
    service: Service,
    background: Vec<Box<dyn FnOnce() -> JoinHandle<()> + Send>>,
    gateway: Option<(Gateway, Vec<RouteConfig>)>,
    locals: HashMap<String, axum::Router>,
    /// What `/metrics` says for this process: the gateway's (with the
    /// in-process auth-service's, in `up`) or the auth-service's.
    metrics: MetricsText,
    /// The operator port, serving [`Self::metrics`].
    admin: Option<TcpListener>,
}

/// The Prometheus text of this process.
type MetricsText = Arc<dyn Fn() -> String + Send + Sync>;

/// What a listener serves.
enum Service {
    /// The auth-service alone, behind its axum router.
    Auth(axum::Router, auth_service::Limits),
    /// A gateway, which does its own routing (to in-process services too).
    Gateway(Gateway),
}

impl Service {
    /// Serves on `listener` until `shutdown`; a gateway with `extra_workers`
    /// more serving threads, each given connections by this one.
    async fn serve(
        self,
        listener: TcpListener,
        extra_workers: usize,
        grace: Duration,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let gateway = match self {
            Self::Auth(router, limits) => return serve_auth(listener, router, limits, grace, shutdown).await,
            Self::Gateway(gateway) => gateway,
        };
        let (acceptor, inboxes) = api_gateway::server::workers(1 + extra_workers);
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let workers: Vec<_> = inboxes
            .into_iter()
            .enumerate()
            .map(|(i, inbox)| spawn_worker(i + 1, inbox, gateway.clone(), stopped.clone()))
            .collect::<Result<_, _>>()?;
        let served = api_gateway::server::serve_accepting(listener, acceptor, gateway, async move {
            shutdown.await;
            let _ = stop.send(true);
        })
        .await;
        for worker in workers {
            if let Ok(Err(error)) = worker.join() {
                tracing::error!(%error, "a serving worker failed");
            }
        }
        Ok(served?)
    }
}

/// The auth-service alone until `shutdown`, then for at most `grace` while
/// requests already sent are answered; connections left then are dropped.
async fn serve_auth(
    listener: TcpListener,
    router: axum::Router,
    limits: auth_service::Limits,
    grace: Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (stopping, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = auth_service::serve(listener, router, limits, async move {
        shutdown.await;
        let _ = stopping.send(());
    });
    let deadline = async move {
        match stopped.await {
            Ok(()) => tokio::time::sleep(grace).await,
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        served = serving => Ok(served?),
        () = deadline => {
            tracing::warn!("shutdown grace is over; closing the connections left");
            Ok(())
        }
    }
}

/// The auth-service's pieces that `up` shares with the gateway.
struct AuthParts {
    state: AppState,
    keys: Arc<KeyHandle>,
    reload: Duration,
    relay: Arc<OutboxRelay>,
    relay_interval: Duration,
    /// Set when events stay in this process (no NATS configured).
    bus: Option<InProcessBus>,
    ledger_consumer: Option<Arc<Consumer>>,
    /// Taken by the first start of the background tasks.
    mail_relay: Arc<std::sync::Mutex<Option<MailRelay>>>,
}

impl AuthParts {
    /// The key-file watcher, the outbox relay and the mail relay.
    fn background(&self) -> Vec<Box<dyn FnOnce() -> JoinHandle<()> + Send>> {
        let (keys, reload) = (self.keys.clone(), self.reload);
        let (relay, interval) = (self.relay.clone(), self.relay_interval);
        let mut tasks: Vec<Box<dyn FnOnce() -> JoinHandle<()> + Send>> =
            vec![Box::new(move || keys.spawn_refresher(reload)), Box::new(move || relay.spawn(interval))];
        if let Some(consumer) = self.ledger_consumer.clone() {
            tasks.push(Box::new(move || consumer.spawn()));
        }
        let mail = self.mail_relay.clone();
        tasks.push(Box::new(move || {
            let relay = mail.lock().ok().and_then(|mut relay| relay.take());
            tokio::spawn(async move {
                if let Some(relay) = relay {
                    relay.run(std::future::pending()).await;
                }
            })
        }));
        tasks
    }
}

/// How long a revocation matters: the longest an access token lives, plus skew.
fn token_reach(config: &Config) -> Duration {
    Duration::from_secs(config.token_settings().key_overlap().max(1) as u64)
}

/// Where the outbox relay sends events: NATS JetStream at `nats`' URL (the
/// relay writing revocations to its bucket too), with what tells `/readyz`
/// whether it is connected; else the in-process bus, returned too.
async fn event_sink(
    nats: Option<(&str, NatsRevocationSink)>,
) -> anyhow::Result<(Arc<dyn EventSink>, Option<InProcessBus>, Option<BrokerReport>)> {
    match nats {
        Some((url, revocations)) => {
            let nats = NatsPublisher::connect(url).await?.with_revocations(revocations);
            tracing::info!(%url, "publishing events to NATS JetStream");
            let connected = nats.clone();
            Ok((Arc::new(nats), None, Some(Arc::new(move || connected.is_connected()))))
        }
        None => {
            let bus = InProcessBus::default();
            Ok((Arc::new(bus.clone()), Some(bus), None))
        }
    }
}

/// The roles of `[roles.<name>]`, created or brought to what the file
/// says; an unchanged role is left alone (no event, no audit row).
pub(crate) async fn seed_roles(config: &Config, admin: &Admin) -> anyhow::Result<()> {
    for (name, role) in &config.roles {
        let role = auth_core::Role {
            name: name.clone(),
            description: role.description.clone(),
            permissions: role.permissions.clone(),
        };
        let holders = admin
            .put_role(&auth_core::Actor::operator("config"), role)
            .await
            .with_context(|| format!("roles.{name} cannot be set up"))?;
        if !holders.is_empty() {
            tracing::info!(role = %name, holders = holders.len(), "role redefined from the configuration");
        }
    }
    Ok(())
}

async fn auth_parts(config: &Config, feed: Option<Arc<InProcessFeed>>) -> anyhow::Result<AuthParts> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let stores = auth_store::open_to_serve(&config.database_url()).await?;
    tracing::info!(backend = stores.backend, "database ready");
    let settings = auth_settings(config, feed.is_some())?;
    let keys = Arc::new(
        KeyHandle::from_file(config.key_file(), settings.tokens.clone(), clock.clone())
            .context("load the signing keys")?,
    );
    let hasher = Arc::new(Argon2Hasher::new(&config.passwords.hashing)?);
    let mut accounts = Accounts::new(
        stores.users.clone(),
        stores.sessions.clone(),
        stores.identities.clone(),
        hasher.clone(),
        stores.throttle.clone(),
        clock.clone(),
        settings.accounts.clone(),
    );
    let mut sinks: Vec<Arc<dyn RevocationSink>> = Vec::new();
    if let Some(feed) = &feed {
        sinks.push(feed.clone());
    }
    // One bucket writer serves both paths: the use cases right after their
    // commit, and the relay from the events.
    let nats = match &config.nats.url {
        Some(url) => Some((url.as_str(), NatsRevocationSink::connect(url, token_reach(config)).await?)),
        None => None,
    };
    if let Some((_, revocations)) = &nats {
        sinks.push(Arc::new(revocations.clone()));
    }
    // Recorded too, for the gateway relaying the answer (`Gatehouse-Revoked`).
    let revocations: Arc<dyn RevocationSink> = Arc::new(Recording(Arc::new(FanOut(sinks))));
    accounts = accounts.with_revocations(revocations.clone());
    let breach_check = match &config.passwords.breached_range_url {
        Some(url) => {
            let check = auth_service::breached::RangeCheck::new(url).map_err(|e| anyhow::anyhow!("{url}: {e}"))?;
            Some(Arc::new(check) as Arc<dyn auth_core::password::BreachedPasswords>)
        }
        None => None,
    };
    if let Some(check) = &breach_check {
        accounts = accounts.with_breach_check(check.clone());
    }
    let admin = Admin::new(
        stores.users.clone(),
        stores.sessions.clone(),
        stores.roles.clone(),
        clock.clone(),
        revocations.clone(),
        settings.accounts.access_token_reach,
    );
    seed_roles(config, &admin).await?;
    let mut recovery = crate::mail::recovery(config, &settings, &stores, hasher, clock.clone(), revocations)?;
    if let Some(check) = breach_check {
        recovery = recovery.with_breach_check(check);
    }
    let mailer = crate::mail::mailer(config)?;
    let (sink, bus, broker) = event_sink(nats).await?;
    // What another process wrote (`gatehouse users …`) reaches this
    // gateway through the outbox; with NATS the bucket carries it (`up`
    // watches it into the same set).
    if let (Some(bus), Some(feed)) = (&bus, feed) {
        let reach = settings.accounts.access_token_reach.whole_seconds();
        bus.follow(Arc::new(RevocationsFromEvents { feed, reach }));
    }
    let relay = Arc::new(OutboxRelay::new(stores.outbox.clone(), sink, clock.clone(), config.events.relay_batch));
    // The deletion ledger hears downstream services' confirmations.
    let intake = Arc::new(LedgerHandler { ledger: stores.ledger.clone(), clock: clock.clone() });
    let ledger_consumer = match (&config.nats.url, &bus) {
        (Some(url), _) => {
            let settings = ConsumerSettings::new(&config.events.ledger_consumer, "user.deletion_completed");
            Some(Arc::new(Consumer::connect(url, settings, intake).await?))
        }
        (None, Some(bus)) => {
            bus.follow(intake);
            None
        }
        (None, None) => None,
    };
    let state = AppState::new(
        accounts,
        recovery,
        admin,
        keys.clone(),
        clock.clone(),
        stores.health.clone(),
        stores.ledger.clone(),
        settings,
    );
    state.set_oauth(crate::mail::oauth(config)?);
    let mail_relay = MailRelay::new(stores.mail.clone(), mailer, clock, state.mail_waker().clone());
    if let Some(connected) = broker {
        state.report_broker(connected);
    }
    Ok(AuthParts {
        mail_relay: Arc::new(std::sync::Mutex::new(Some(mail_relay))),
        ledger_consumer,
        state,
        keys,
        reload: Duration::from_secs(config.signing.reload_secs.max(1)),
        relay,
        relay_interval: Duration::from_millis(config.events.relay_interval_ms.max(10)),
        bus,
    })
}

/// The routes every gateway has: the auth-service's own paths, and its
/// pages unless `configured` routes take their paths (`/` among them: what
/// no other route takes reaches the auth-service, which answers 404
/// `not_found`).
fn auth_routes(upstream: &str, configured: &[RouteConfig]) -> Vec<RouteConfig> {
    let taken = |page: &str| configured.iter().any(|r| r.prefix.trim_end_matches('/') == page.trim_end_matches('/'));
    ["/auth/", "/.well-known/", "/openapi.json"]
        .into_iter()
        .chain(auth_service::pages::PATHS.into_iter().filter(|page| !taken(page)))
        .map(|prefix| RouteConfig {
            // Refused at the gateway as the auth-service would refuse it.
            max_body_bytes: Some(auth_service::BODY_LIMIT as u64),
            ..RouteConfig::new(prefix, upstream, AuthMode::Public)
        })
        .collect()
}

fn route_table(
    auth_upstream: &str,
    configured: &[RouteConfig],
    locals: &HashMap<String, axum::Router>,
) -> anyhow::Result<RouteTable> {
    let mut all = auth_routes(auth_upstream, configured);
    all.extend(configured.iter().cloned());
    Ok(RouteTable::build(&all, &[auth_upstream], locals)?)
}

fn gateway_settings(config: &Config) -> GatewaySettings {
    let mut allowed_origins = vec![config.public_url.clone()];
    allowed_origins.extend(config.csrf.trusted_origins.iter().cloned());
    GatewaySettings {
        allowed_origins,
        trusted_proxies: config.gateway.trusted_proxies.clone(),
        token_cache_size: config.gateway.token_cache_size.max(1),
        jwks_refresh_secs: config.gateway.jwks_refresh_secs,
        client_idle_timeout_secs: config.gateway.client_idle_timeout_secs,
        client_header_timeout_secs: config.gateway.client_header_timeout_secs,
        client_send_timeout_secs: config.gateway.client_send_timeout_secs,
        // Each client connection may hold an upstream one too.
        max_connections: within_file_limit(config.gateway.max_connections, 2, "gateway.max_connections"),
        underscores_in_headers: config.gateway.underscores_in_headers,
        fast_path: config.gateway.fast_path,
        shutdown_grace_secs: config.shutdown_grace_secs,
        metrics_token: config.admin.metrics_token.clone(),
    }
}

impl Application {
    pub async fn build(config: Config, role: Role) -> anyhow::Result<Self> {
        ensure_data_dir(&config)?;
        let admin_listen = config.admin.listen.clone();
        let listener = bind(&config.listen).await.with_context(|| format!("cannot listen on {}", config.listen))?;
        let extra_workers = match role {
            Role::AuthService => 0,
            Role::Up | Role::Gateway => config.serving_threads().saturating_sub(1),
        };
        let shutdown_grace = Duration::from_secs(config.shutdown_grace_secs);
        let mut app = match role {
            Role::AuthService => {
                let auth = auth_parts(&config, None).await?;
                let background = auth.background();
                let state = auth.state.clone();
                Ok(Self {
                    metrics: Arc::new(move || state.metrics_text()),
                    admin: None,
                    listener,
                    extra_workers: 0,
                    shutdown_grace: Duration::ZERO,
                    service: Service::Auth(auth_service::router(auth.state), auth_limits(&config)),
                    background,
                    gateway: None,
                    locals: HashMap::new(),
                })
            }
            Role::Up => Self::up(config, listener).await,
            Role::Gateway => Self::standalone_gateway(config, listener).await,
        }?;
        app.extra_workers = extra_workers;
        app.shutdown_grace = shutdown_grace;
        if !admin_listen.is_empty() {
            let listen = &admin_listen;
            let listener = bind(listen).await.with_context(|| {
                format!(
                    "cannot listen on admin.listen {listen} (the operator port for /metrics): choose another with \
                     GATEHOUSE_ADMIN__LISTEN=127.0.0.1:PORT, or none with GATEHOUSE_ADMIN__LISTEN=\"\""
                )
            })?;
            app.admin = Some(listener);
        }
        Ok(app)
    }

    async fn up(config: Config, listener: TcpListener) -> anyhow::Result<Self> {
        let feed = Arc::new(InProcessFeed::new());
        let auth = auth_parts(&config, Some(feed.clone())).await?;
        let notes = notes_service::NotesStore::connect(&config.notes_database_url())
            .await
            .context("open the notes database")?;
        // Without NATS, the notes service follows the in-process bus, so an
        // account deletion reaches its database here too.
        if let Some(bus) = &auth.bus {
            bus.follow(Arc::new(notes_service::BusHandler { store: notes.clone(), bus: bus.clone() }));
        }
        let mut locals = HashMap::new();
        locals.insert("auth".to_owned(), auth_service::router(auth.state.clone()));
        locals.insert("notes".to_owned(), notes_service::router(notes));
        let routes = route_table("inproc://auth", &config.gateway.routes, &locals)?;
        let keys = auth.keys.clone();
        let jwks = LocalJwks::new(move || keys.current().jwks.clone());
        let authenticator = Arc::new(Authenticator::new(
            Arc::new(jwks),
            auth.state.settings().tokens.clone(),
            config.gateway.token_cache_size.max(1),
        ));
        authenticator.refresh().await.map_err(|e| anyhow::anyhow!("read the signing keys: {e}"))?;
        let state = auth.state.clone();
        let roles = Arc::new(RoleMap::new(Arc::new(LocalRoleMap::new(move || {
            let state = state.clone();
            Box::pin(async move {
                let roles = state.admin().roles().await.map_err(|e| e.to_string())?;
                Ok(roles.into_iter().map(|r| (r.name, r.permissions)).collect())
            })
        }))));
        roles.refresh().await.map_err(|e| anyhow::anyhow!("read the roles: {e}"))?;
        // With NATS, other processes (more `up`s, `gatehouse users …`)
        // revoke too: the bucket brings theirs into the same set, and the
        // gateway vouches for it only as the standalone one does.
        let revocations: Arc<dyn RevocationFeed> = match &config.nats.url {
            Some(url) => {
                let staleness = Duration::from_secs_f64(config.gateway.revocation.max_staleness);
                NatsRevocationFeed::start_into(url, token_reach(&config), staleness, feed.shared_set()).await?
            }
            None => feed,
        };
        let state = auth.state.clone();
        let gateway = Gateway::new(GatewayParts {
            routes,
            authenticator,
            roles: Some(roles),
            revocations,
            csrf: auth.keys.csrf().clone(),
            clock: Arc::new(SystemClock),
            settings: gateway_settings(&config),
            extra_metrics: Some(Box::new(move || state.metrics_text())),
        })
        .map_err(anyhow::Error::msg)?;
        let g = gateway.clone();
        let mut background = auth.background();
        background.push(Box::new(move || g.spawn_background()));
        Ok(Self {
            listener,
            extra_workers: 0,
            shutdown_grace: Duration::ZERO,
            service: Service::Gateway(gateway.clone()),
            background,
            gateway: Some((gateway.clone(), config.gateway.routes.clone())),
            locals,
            metrics: Arc::new(move || gateway.metrics_text()),
            admin: None,
        })
    }

    async fn standalone_gateway(config: Config, listener: TcpListener) -> anyhow::Result<Self> {
        let auth_url = config
            .gateway
            .auth_service_url
            .clone()
            .context("gatehouse gateway needs gateway.auth_service_url (GATEHOUSE_GATEWAY__AUTH_SERVICE_URL)")?;
        let locals = HashMap::new();
        let routes = route_table(&auth_url, &config.gateway.routes, &locals)?;
        let jwks = HttpJwks::new(&auth_url).map_err(anyhow::Error::msg)?;
        let tokens = config.token_settings();
        let authenticator =
            Arc::new(Authenticator::new(Arc::new(jwks), tokens, config.gateway.token_cache_size.max(1)));
        if let Err(error) = authenticator.refresh().await {
            tracing::warn!(%error, "no JWKS yet; authenticated routes answer 503 until it arrives");
        }
        // The CSRF secret is shared with the auth-service through its key file.
        let csrf = auth_tokens::keyfile::load(&config.key_file())
            .with_context(|| format!("read the CSRF secret from {}", config.key_file().display()))?
            .csrf;
        let revocations: Arc<dyn RevocationFeed> = match &config.nats.url {
            Some(url) => {
                let staleness = Duration::from_secs_f64(config.gateway.revocation.max_staleness);
                NatsRevocationFeed::start(url, token_reach(&config), staleness).await?
            }
            None => {
                tracing::warn!("no nats.url: this gateway will not hear of logouts made elsewhere");
                Arc::new(InProcessFeed::new())
            }
        };
        let roles = Arc::new(RoleMap::new(Arc::new(
            HttpRoleMap::new(&auth_url, csrf.gateway_credential()).map_err(anyhow::Error::msg)?,
        )));
        if let Err(error) = roles.refresh().await {
            tracing::warn!(%error, "no role map yet; tokens carrying roles only answer 503 until it arrives");
        }
        let gateway = Gateway::new(GatewayParts {
            routes,
            authenticator,
            roles: Some(roles),
            revocations,
            csrf,
            clock: Arc::new(SystemClock),
            settings: gateway_settings(&config),
            extra_metrics: None,
        })
        .map_err(anyhow::Error::msg)?;
        let g = gateway.clone();
        Ok(Self {
            listener,
            extra_workers: 0,
            shutdown_grace: Duration::ZERO,
            service: Service::Gateway(gateway.clone()),
            background: vec![Box::new(move || g.spawn_background())],
            gateway: Some((gateway.clone(), config.gateway.routes.clone())),
            locals,
            metrics: Arc::new(move || gateway.metrics_text()),
            admin: None,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub async fn run_until_stopped(
        self,
        source: ConfigSource,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        tracing::info!("listening on http://{}", self.local_addr()?);
        let mut tasks: Vec<JoinHandle<()>> = self.background.into_iter().map(|start| start()).collect();
        if let Some(listener) = self.admin {
            tracing::info!("operator port (metrics) listening on http://{}", listener.local_addr()?);
            tasks.push(tokio::spawn(serve_operator_port(listener, self.metrics)));
        }
        if let Some((gateway, _)) = self.gateway {
            tasks.push(spawn_route_reloader(gateway, source, self.locals));
        }
        let served = self.service.serve(self.listener, self.extra_workers, self.shutdown_grace, shutdown).await;
        for task in tasks {
            task.abort();
        }
        served.context("server failed")?;
        tracing::info!("stopped");
        Ok(())
    }
}

/// The operator port: `/metrics` and `/healthz`, nothing else.
async fn serve_operator_port(listener: TcpListener, text: MetricsText) {
    use axum::response::IntoResponse as _;
    let metrics = move || {
        let text = text.clone();
        async move { ([(axum::http::header::CONTENT_TYPE, auth_service::metrics::CONTENT_TYPE)], text()).into_response() }
    };
    let router = axum::Router::new()
        .route("/metrics", axum::routing::get(metrics))
        .route("/healthz", axum::routing::get(|| async { "ok\n" }));
    if let Err(error) = axum::serve(listener, router).await {
        tracing::error!(%error, "the operator port stopped");
    }
}

/// Binds `listen`. One listener serves every serving thread: the thread
/// that accepts hands connections to the others (see
/// [`api_gateway::server::workers`]), so no other socket may share the port.
async fn bind(listen: &str) -> std::io::Result<TcpListener> {
    let addr = tokio::net::lookup_host(listen)
        .await?
        .next()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "the address resolves to nothing"))?;
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// A serving worker: one thread, one single-threaded runtime, serving the
/// connections the accepting thread hands it, like an nginx worker.
/// Requests never hop threads, which is most of the cost of a proxy this small.
fn spawn_worker(
    n: usize,
    inbox: api_gateway::server::Inbox,
    gateway: Gateway,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<std::thread::JoinHandle<std::io::Result<()>>> {
    std::thread::Builder::new().name(format!("gatehouse-worker-{n}")).spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        runtime.block_on(api_gateway::server::serve_inbox(inbox, gateway, async move {
            let _ = stopped.wait_for(|s| *s).await;
        }))
    })
}

/// On SIGHUP: read the configuration again and swap in its routes; a bad
/// file is reported and the running routes stay.
fn spawn_route_reloader(
    gateway: Gateway,
    source: ConfigSource,
    locals: HashMap<String, axum::Router>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let Ok(mut hangups) = signal(SignalKind::hangup()) else {
                tracing::error!("cannot listen for SIGHUP; routes will not reload");
                return;
            };
            while hangups.recv().await.is_some() {
                let reloaded = source.load().and_then(|config| {
                    let auth = config.gateway.auth_service_url.clone().unwrap_or_else(|| "inproc://auth".into());
                    route_table(&auth, &config.gateway.routes, &locals)
                });
                match reloaded {
                    Ok(table) => {
                        tracing::info!(routes = table.len(), "routes reloaded");
                        gateway.replace_routes(table);
                    }
                    Err(error) => {
                        tracing::error!(error = format!("{error:#}"), "route reload refused; keeping the old routes")
                    }
                }
            }
        }
        #[cfg(not(unix))]
        let _ = (gateway, source, locals);
    })
}

/// The standalone auth-service's client limits.
fn auth_limits(config: &Config) -> auth_service::Limits {
    let a = &config.auth_service;
    auth_service::Limits {
        header: Duration::from_secs(a.client_header_timeout_secs),
        idle: Duration::from_secs(a.client_idle_timeout_secs),
        send: Duration::from_secs(a.client_send_timeout_secs),
        max_connections: within_file_limit(a.max_connections, 1, "auth_service.max_connections"),
    }
}

/// Open files kept for what is not a client connection: the database pool,
/// NATS, the key file, logs.
const FILES_KEPT: u64 = 64;

/// `configured` client connections, or fewer when the process's open-file
/// limit could not hold them (`per_connection` files each): past that limit
/// `accept` fails and nobody gets an answer, not even `/healthz`; within
/// it, a connection too many is answered 503.
fn within_file_limit(configured: usize, per_connection: u64, key: &str) -> usize {
    let Some(limit) = open_file_limit() else { return configured };
    let fits = usize::try_from(limit.saturating_sub(FILES_KEPT) / per_connection).unwrap_or(usize::MAX).max(1);
    if fits < configured {
        tracing::warn!(
            limit,
            "{key} lowered from {configured} to {fits} to stay within the open-file limit (ulimit -n)"
        );
    }
    configured.min(fits)
}

/// The soft limit on open files (Linux: `/proc/self/limits`).
fn open_file_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..].split_whitespace().next()?.parse().ok()
}

/// The auth-service's settings. Behind the gateway in the same process
/// (`up`), its peer is the gateway's client, so the gateway's trusted
/// proxies are the ones whose `X-Forwarded-For` it believes.
fn auth_settings(config: &Config, behind_gateway: bool) -> anyhow::Result<AuthSettings> {
    let tokens = config.token_settings();
    let (key, proxies) = match behind_gateway {
        true => ("gateway.trusted_proxies", &config.gateway.trusted_proxies),
        false => ("auth_service.trusted_proxies", &config.auth_service.trusted_proxies),
    };
    let trusted_proxies = TrustedProxies::parse(proxies).map_err(|e| anyhow::anyhow!("{key}: {e}"))?;
    if !behind_gateway && proxies.is_empty() {
        tracing::warn!(
            "auth_service.trusted_proxies is empty: behind gateways every client has a gateway's address, \
             and the per-client limits count all of them as one; list the gateways' addresses"
        );
    }
    Ok(AuthSettings {
        public_url: tokens.issuer.clone(),
        accounts: AccountsSettings {
            password: PasswordPolicy { min_chars: config.passwords.min_chars, max_chars: config.passwords.max_chars },
            session_lifetime: time::Duration::days(config.sessions.lifetime_days),
            session_idle: time::Duration::days(config.sessions.idle_days),
            refresh_grace: time::Duration::seconds(config.sessions.refresh_grace_secs),
            access_token_reach: time::Duration::seconds(tokens.key_overlap()),
            require_verified_email: config.registration.require_verified_email,
            limits: config.limits.limits(),
            conceal_existing: config.registration.conceal_existing,
        },
        tokens,
        trusted_origins: config.csrf.trusted_origins.clone(),
        operator_token: config.admin.operator_token.clone(),
        deletion_services: config.events.deletion_services.clone(),
        trusted_proxies,
        hsts: config.hsts(),
        metrics_token: config.admin.metrics_token.clone(),
    })
}

/// The data dir holds the key file: keep it private to the user.
pub(crate) fn ensure_data_dir(config: &Config) -> anyhow::Result<()> {
    let dir = &config.data_dir;
    if !dir.exists() {
        std::fs::create_dir_all(dir).with_context(|| format!("create the data directory {}", dir.display()))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn prefixes(configured: &[RouteConfig]) -> Vec<String> {
        auth_routes("http://auth:1", configured).into_iter().map(|r| r.prefix).collect()
    }

    #[test]
    fn an_operators_route_takes_the_place_of_a_page_never_of_the_api() {
        let built_in = prefixes(&[]);
        assert!(built_in.iter().any(|p| p == "/") && built_in.iter().any(|p| p == "/login"), "{built_in:?}");
        let frontend = RouteConfig::new("/", "http://frontend:3000", AuthMode::Public);
        let assets = RouteConfig::new("/assets", "http://cdn:80", AuthMode::Public);
        let with_own = prefixes(&[frontend.clone(), assets.clone()]);
        assert!(!with_own.iter().any(|p| p == "/" || p == "/assets/"), "{with_own:?}");
        assert!(with_own.iter().any(|p| p == "/login") && with_own.iter().any(|p| p == "/auth/"), "{with_own:?}");
        // The table builds: no duplicate prefix with the operator's routes.
        let table = route_table("http://auth:1", &[frontend, assets], &HashMap::new());
        assert!(table.is_ok(), "{:?}", table.err());
    }
}
