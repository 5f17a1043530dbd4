//! `spawn_app`: the real router on 127.0.0.1:0 over a fresh database, with a
//! manual clock; and `Browser`, a minimal cookie jar that sends what a browser would.

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use auth_core::Clock as _;
use auth_core::hashing::HashingSettings;
use auth_core::throttling::{AttemptPolicy, Bucket, Limits};
use auth_core::{
    Accounts, AccountsSettings, Argon2Hasher, ManualClock, NoRevocationSink, PasswordHasher, Recovery,
    RecoverySettings, Templates,
};
use auth_service::keys::KeyHandle;
use auth_service::mail::{MailRelay, SmtpMailer};
use auth_service::testing::{Received, SmtpSink};
use auth_service::{AppState, AuthSettings};
use auth_store::Stores;
use auth_store::testing::{Backend, TestDatabase};
use auth_tokens::TokenSettings;
use reqwest::{Method, RequestBuilder, Response, header};
use serde_json::{Value, json};

pub const PASSWORD: &str = "correct horse battery staple";
pub const ISSUER: &str = "http://127.0.0.1:8080";
pub const OPERATOR_TOKEN: &str = "operator-secret-for-tests";
pub const METRICS_TOKEN: &str = "metrics-secret-for-tests";

/// One real SMTP server for the whole suite; tests tell their mail apart
/// by recipient (every test's addresses are unique).
pub static SMTP: LazyLock<SmtpSink> = LazyLock::new(SmtpSink::start);

pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    pub clock: Arc<ManualClock>,
    pub stores: Stores,
    pub keys: Arc<KeyHandle>,
    pub hasher: Arc<Argon2Hasher>,
    pub key_file: std::path::PathBuf,
    _shutdown: tokio::sync::oneshot::Sender<()>,
    _db: TestDatabase,
}

#[derive(Debug, Clone, Default)]
pub struct Options {
    pub hashing: HashingSettings,
    /// `trusted_proxies` of the auth-service.
    pub trusted_proxies: Vec<String>,
    pub recovery: Option<RecoverySettings>,
    pub require_verified_email: bool,
    /// The issuer of an OpenID provider configured as `test` (a provider
    /// `down`, at a closed port, is always there too).
    pub oauth_issuer: Option<String>,
    /// The URL of a `ProviderStub`: providers `github`, `facebook` (which
    /// may not link accounts by email) and `stub-oidc` on it.
    pub oauth_stub: Option<String>,
    /// Login throttling and client buckets; by default limits no test of
    /// something else runs into (the throttling tests use the real ones).
    pub limits: Option<Limits>,
    /// `registration.conceal_existing`.
    pub conceal_existing: bool,
    /// `passwords.breached_range_url`.
    pub breached_range_url: Option<String>,
}

/// Limits too large to meet: tests of races run many logins at once.
pub fn roomy_limits() -> Limits {
    let roomy = Bucket { burst: 100_000, per_minute: 100_000 };
    let attempts = AttemptPolicy { free_failures: 10_000, ceiling: 20_000, ..AttemptPolicy::default() };
    Limits { login: roomy, register: roomy, forgot: roomy, refresh: roomy, attempts }
}

/// Runs `scenario` against a fresh app on every available backend.
pub async fn each_backend(scenario: impl AsyncFn(TestApp)) {
    each_backend_with(Options::default(), scenario).await
}

pub async fn each_backend_with(options: Options, scenario: impl AsyncFn(TestApp)) {
    for backend in Backend::available() {
        eprintln!("-- backend {backend:?}");
        scenario(spawn_app(backend, options.clone()).await).await;
    }
}

pub fn token_settings() -> TokenSettings {
    TokenSettings { issuer: ISSUER.into(), audience: "gatehouse".into(), lifetime: 600, leeway: 60 }
}

pub async fn spawn_app(backend: Backend, options: Options) -> TestApp {
    let db = TestDatabase::create(backend).await;
    let stores = auth_store::open(&db.url, true).await.unwrap();
    let clock = Arc::new(ManualClock::starting_now());
    let key_file = std::env::temp_dir().join(format!("gatehouse-keys-{}.json", uuid::Uuid::new_v4()));
    let keys = Arc::new(KeyHandle::from_file(key_file.clone(), token_settings(), clock.clone()).unwrap());
    let hasher = Arc::new(Argon2Hasher::new(&options.hashing).unwrap());
    let limits = options.limits.unwrap_or_else(roomy_limits);
    let account_settings = AccountsSettings {
        require_verified_email: options.require_verified_email,
        limits,
        conceal_existing: options.conceal_existing,
        ..AccountsSettings::default()
    };
    let accounts = Accounts::new(
        stores.users.clone(),
        stores.sessions.clone(),
        stores.identities.clone(),
        hasher.clone(),
        stores.throttle.clone(),
        clock.clone(),
        account_settings.clone(),
    );
    let recovery_settings = RecoverySettings {
        public_url: ISSUER.into(),
        attempts: limits.attempts,
        ..options.recovery.unwrap_or_default()
    };
    let breach_check = options.breached_range_url.as_deref().map(|url| {
        Arc::new(auth_service::breached::RangeCheck::new(url).unwrap())
            as Arc<dyn auth_core::password::BreachedPasswords>
    });
    let accounts = match &breach_check {
        Some(check) => accounts.with_breach_check(check.clone()),
        None => accounts,
    };
    let recovery = Recovery::new(
        stores.users.clone(),
        stores.recovery.clone(),
        stores.mail.clone(),
        stores.throttle.clone(),
        hasher.clone(),
        clock.clone(),
        Arc::new(NoRevocationSink),
        Templates::builtin(),
        recovery_settings,
    );
    let recovery = match breach_check {
        Some(check) => recovery.with_breach_check(check),
        None => recovery,
    };
    let reach = account_settings.access_token_reach;
    let settings = AuthSettings {
        public_url: ISSUER.into(),
        tokens: token_settings(),
        accounts: account_settings,
        trusted_origins: vec!["https://app.example.com".into()],
        operator_token: Some(OPERATOR_TOKEN.into()),
        deletion_services: vec!["notes".into(), "billing".into()],
        trusted_proxies: auth_tokens::proxies::TrustedProxies::parse(&options.trusted_proxies).unwrap(),
        hsts: true,
        metrics_token: Some(METRICS_TOKEN.into()),
    };
    let admin = auth_core::Admin::new(
        stores.users.clone(),
        stores.sessions.clone(),
        stores.roles.clone(),
        clock.clone(),
        Arc::new(NoRevocationSink),
        reach,
    );
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
    use auth_service::oauth::{Endpoints, Protocol, Provider, ProviderSettings};
    let provider = |name: &str, issuer: &str, protocol: Protocol, scopes: &[&str], link_by_email: bool| {
        let settings = ProviderSettings {
            name: name.into(),
            issuer: issuer.into(),
            protocol,
            client_id: "gatehouse".into(),
            client_secret: "test-secret".into(),
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            link_by_email,
        };
        (name.to_owned(), Arc::new(Provider::new(settings).unwrap()))
    };
    let openid = ["openid", "email"];
    let mut providers = BTreeMap::from([provider("down", "http://127.0.0.1:9", Protocol::Oidc, &openid, true)]);
    if let Some(issuer) = &options.oauth_issuer {
        providers.extend([provider("test", issuer, Protocol::Oidc, &openid, true)]);
    }
    if let Some(stub) = &options.oauth_stub {
        let (github, facebook) = (Endpoints::github(stub), Endpoints::facebook(stub, stub));
        providers.extend([
            provider("github", stub, Protocol::GitHub(github), &["read:user", "user:email"], true),
            provider("facebook", &format!("{stub}/facebook"), Protocol::Facebook(facebook), &["email"], false),
            provider("stub-oidc", &format!("{stub}/oidc"), Protocol::Oidc, &openid, true),
        ]);
    }
    state.set_oauth(auth_service::oauth::OAuth { providers, error_url: "/login".into() });
    let from = "Gatehouse <no-reply@example.com>".parse().unwrap();
    let mailer = Arc::new(SmtpMailer::new(&SMTP.url(), from, Duration::from_secs(10)).unwrap());
    let relay = MailRelay::new(stores.mail.clone(), mailer, clock.clone(), state.mail_waker().clone());
    tokio::spawn(relay.run(std::future::pending()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(auth_service::serve(
        listener,
        auth_service::router(state),
        auth_service::Limits::default(),
        async move {
            let _ = rx.await;
        },
    ));
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    TestApp { address, client, clock, stores, keys, hasher, key_file, _shutdown: tx, _db: db }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.key_file);
    }
}

/// A unique address for each call, so tests never collide.
pub fn email() -> String {
    format!("user-{}@example.com", uuid::Uuid::new_v4().simple())
}

/// What a browser keeps: cookies by name.
#[derive(Debug, Clone, Default)]
pub struct Browser {
    pub cookies: BTreeMap<String, String>,
}

impl Browser {
    /// Applies every `Set-Cookie` of `response` (Max-Age=0 deletes).
    pub fn absorb(&mut self, response: &Response) {
        for value in response.headers().get_all(header::SET_COOKIE) {
            let text = value.to_str().unwrap();
            let (pair, attributes) = text.split_once(';').unwrap_or((text, ""));
            let (name, value) = pair.split_once('=').unwrap();
            if attributes.contains("Max-Age=0") {
                self.cookies.remove(name);
            } else {
                self.cookies.insert(name.to_owned(), value.to_owned());
            }
        }
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.cookies.get(name).map(String::as_str)
    }

    pub fn access(&self) -> &str {
        self.get("__Host-access_token").expect("an access cookie")
    }

    pub fn refresh(&self) -> &str {
        self.get("__Host-refresh_token").expect("a refresh cookie")
    }

    pub fn csrf(&self) -> &str {
        self.get("__Host-csrf_token").expect("a CSRF cookie")
    }

    pub fn cookie_header(&self) -> String {
        self.cookies.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; ")
    }
}

impl TestApp {
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.client.request(method, format!("{}{path}", self.address))
    }

    /// A request carrying the browser's cookies (no CSRF header).
    pub fn with_cookies(&self, method: Method, path: &str, browser: &Browser) -> RequestBuilder {
        self.request(method, path).header(header::COOKIE, browser.cookie_header())
    }

    /// A request as the page's script would send it: cookies plus the CSRF header.
    pub fn as_page(&self, method: Method, path: &str, browser: &Browser) -> RequestBuilder {
        self.with_cookies(method, path, browser).header("x-csrf-token", browser.csrf())
    }

    pub async fn register(&self, email: &str, password: &str) -> Response {
        self.request(Method::POST, "/auth/register")
            .json(&json!({"email": email, "password": password}))
            .send()
            .await
            .unwrap()
    }

    pub async fn login(&self, email: &str, password: &str) -> Response {
        self.request(Method::POST, "/auth/login")
            .json(&json!({"email": email, "password": password}))
            .send()
            .await
            .unwrap()
    }

    /// Registers a fresh user and logs in; returns the email and the browser.
    pub async fn signed_in(&self) -> (String, Browser) {
        let email = email();
        assert_eq!(self.register(&email, PASSWORD).await.status(), 201);
        (email.clone(), self.log_in(&email).await)
    }

    /// A fresh user holding `admin`, signed in after the grant.
    pub async fn signed_in_admin(&self) -> (String, Browser) {
        let (email, _) = self.signed_in().await;
        let user = self.stores.users.user_by_email(&auth_core::Email::parse(&email).unwrap()).await.unwrap().unwrap();
        let now = self.clock.now();
        let audit = auth_core::AuditEntry {
            id: uuid::Uuid::now_v7(),
            at: now,
            actor: None,
            action: "role.grant".into(),
            target: Some(user.id.to_string()),
            request_id: None,
            detail: json!({"role": "admin"}),
            ip: None,
            user_agent: None,
            reason: None,
        };
        let events = auth_core::DomainEvent::roles_changed_at(now);
        let granted = self.stores.roles.change_role(user.id, "admin", true, now, &events, &audit).await.unwrap();
        assert!(matches!(granted, auth_core::RoleChange::Changed(..)));
        (email.clone(), self.log_in(&email).await)
    }

    /// Logs `email` in with [`PASSWORD`] in a new browser.
    pub async fn log_in(&self, email: &str) -> Browser {
        self.log_in_with(email, PASSWORD).await
    }

    pub async fn log_in_with(&self, email: &str, password: &str) -> Browser {
        let response = self.login(email, password).await;
        assert_eq!(response.status(), 200);
        let mut browser = Browser::default();
        browser.absorb(&response);
        browser
    }

    pub async fn me(&self, browser: &Browser) -> Response {
        self.with_cookies(Method::GET, "/auth/me", browser).send().await.unwrap()
    }

    pub async fn me_bearer(&self, token: &str) -> Response {
        self.request(Method::GET, "/auth/me").bearer_auth(token).send().await.unwrap()
    }

    pub async fn refresh(&self, browser: &Browser) -> Response {
        self.as_page(Method::POST, "/auth/refresh", browser).send().await.unwrap()
    }

    pub fn hash_operations(&self) -> u64 {
        self.hasher.operations()
    }
}

/// Waits for the `count`-th message to `to` and returns it.
pub async fn mail(to: &str, count: usize) -> Received {
    let mut all = SMTP.wait_for(to, count, Duration::from_secs(20)).await;
    all.swap_remove(count - 1)
}

/// The token in the link of `message` (after `#token=`).
pub fn token_in(message: &Received) -> String {
    let link = message.link(&format!("{ISSUER}/")).expect("a link to the public URL");
    link.split_once("#token=").expect("the token in the fragment").1.to_owned()
}

pub async fn body(response: Response) -> Value {
    response.json().await.unwrap()
}

/// The error code of an error response.
pub async fn code(response: Response) -> String {
    body(response).await["error"]["code"].as_str().unwrap().to_owned()
}

/// The claims of a JWT, decoded without verification (for assertions only).
pub fn claims(jwt: &str) -> Value {
    let payload = jwt.split('.').nth(1).unwrap();
    serde_json::from_slice(&auth_tokens::b64url_decode(payload).unwrap()).unwrap()
}
