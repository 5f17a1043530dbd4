//! A gateway with its own key ring, CSRF key, revocation set and manual clock,
//! and an upstream that echoes what it received.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use api_gateway::gateway::GatewayParts;
pub use api_gateway::role_map::Permissions;
use api_gateway::{
    AuthMode, Authenticator, Gateway, GatewaySettings, JwksSource, LocalJwks, LocalRoleMap, RoleMap, RouteConfig,
    RouteTable,
};
use auth_core::{Clock, ManualClock};
use auth_events::{InProcessFeed, RevocationFeed, RevocationSet};
use auth_tokens::{AccessClaims, CsrfKey, KeyRing, TokenSettings, TokenSigner};
use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt as _;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

pub const ISSUER: &str = "http://127.0.0.1:8080";

pub fn token_settings() -> TokenSettings {
    TokenSettings { issuer: ISSUER.into(), audience: "gatehouse".into(), lifetime: 600, leeway: 60 }
}

/// Echoes method, path, query, headers (every line, in order, as
/// `[name, value]` pairs) and the number of body bytes. `/slow` answers
/// after 3 s; `/upgrade` switches to a byte echo.
pub fn echo_upstream() -> Router {
    Router::new().fallback(|mut request: Request| async move {
        match request.uri().path() {
            "/slow" | "/api/slow" => {
                tokio::time::sleep(Duration::from_secs(3)).await;
                return "late".into_response();
            }
            path if path.ends_with("/upgrade") => return upgrade_echo(&mut request),
            _ => {}
        }
        let headers: Vec<[String; 2]> = request
            .headers()
            .iter()
            .map(|(k, v)| [k.to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()])
            .collect();
        let (method, path, query) =
            (request.method().to_string(), request.uri().path().to_owned(), request.uri().query().map(str::to_owned));
        let mut body = request.into_body();
        let mut bytes = 0usize;
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.unwrap().into_data() {
                bytes += data.len();
            }
        }
        axum::Json(json!({"method": method, "path": path, "query": query, "headers": headers, "body_bytes": bytes}))
            .into_response()
    })
}

/// The handshake lines a WebSocket client adds to its request (RFC 6455's
/// sample key).
pub const WEBSOCKET: &str = "connection: upgrade\r\nupgrade: websocket\r\nsec-websocket-version: 13\r\n\
                             sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n";

/// The `Sec-WebSocket-Accept` a WebSocket server answers `key` with.
pub fn websocket_accept(key: &str) -> String {
    use base64::Engine as _;
    let input = format!("{key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, input.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
}

fn upgrade_echo(request: &mut Request) -> Response {
    let key = request.headers().get("sec-websocket-key").map(|k| k.to_str().unwrap().to_owned()).unwrap_or_default();
    let upgrade = hyper::upgrade::on(request);
    tokio::spawn(async move {
        let io = upgrade.await.unwrap();
        let (mut r, mut w) = tokio::io::split(hyper_util::rt::TokioIo::new(io));
        let _ = tokio::io::copy(&mut r, &mut w).await;
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-accept", websocket_accept(&key))
        .body(Body::empty())
        .unwrap()
}

pub async fn serve(router: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        axum::serve(listener, router.into_make_service_with_connect_info::<SocketAddr>()).await.unwrap();
    });
    url
}

/// A feed whose health the test controls.
#[derive(Default)]
pub struct SwitchableFeed {
    pub inner: InProcessFeed,
    pub broken: AtomicBool,
}

impl RevocationFeed for SwitchableFeed {
    fn set(&self) -> &RevocationSet {
        self.inner.set()
    }

    fn is_current(&self) -> bool {
        !self.broken.load(Ordering::SeqCst)
    }
}

pub struct Harness {
    pub url: String,
    pub upstream: String,
    pub gateway: Gateway,
    pub ring: Arc<Mutex<KeyRing>>,
    pub csrf: CsrfKey,
    pub feed: Arc<SwitchableFeed>,
    pub clock: Arc<ManualClock>,
    pub client: reqwest::Client,
    /// The gateway's role map, and what its source answers (`None`: fails).
    pub roles: Arc<RoleMap>,
    pub role_table: Arc<Mutex<Option<Permissions>>>,
}

pub fn route(prefix: &str, upstream: &str, auth: AuthMode) -> RouteConfig {
    RouteConfig::new(prefix, upstream, auth)
}

/// The default table: `/api` required, `/public` public, `/admin` admins only.
pub async fn harness() -> Harness {
    let upstream = serve(echo_upstream()).await;
    harness_with(default_routes(&upstream), upstream).await
}

/// The default table in front of a new echo upstream, with `settings`.
pub async fn echo_harness(settings: GatewaySettings) -> Harness {
    let upstream = serve(echo_upstream()).await;
    harness_with_settings(default_routes(&upstream), upstream, settings).await
}

/// The default table's routes, to `upstream`.
pub fn default_routes(upstream: &str) -> Vec<RouteConfig> {
    let mut admin = route("/admin", upstream, AuthMode::Required);
    admin.require_roles = vec!["admin".into()];
    vec![route("/api", upstream, AuthMode::Required), route("/public", upstream, AuthMode::Public), admin]
}

pub async fn harness_with(routes: Vec<RouteConfig>, upstream: String) -> Harness {
    harness_with_settings(routes, upstream, settings()).await
}

/// The bearer `/metrics` answers on the client port in these tests.
pub const METRICS_TOKEN: &str = "metrics-token-for-tests";

/// The settings every harness has unless a test says otherwise.
pub fn settings() -> GatewaySettings {
    GatewaySettings {
        allowed_origins: vec![ISSUER.into()],
        trusted_proxies: vec!["10.0.0.0/8".into()],
        metrics_token: Some(METRICS_TOKEN.into()),
        ..Default::default()
    }
}

/// The two ways the gateway serves a request: its own HTTP/1.1 path (for
/// bodiless `GET`/`HEAD`; anything else moves to hyper) and hyper alone.
/// Rules that must hold for every request are tested on both.
pub const BOTH_PATHS: [bool; 2] = [true, false];

/// [`settings`] with the own HTTP/1.1 path on or off.
pub fn on_path(fast_path: bool) -> GatewaySettings {
    GatewaySettings { fast_path, ..settings() }
}

/// Which path a harness serves with, for assertion messages.
pub fn path_name(fast_path: bool) -> &'static str {
    if fast_path { "own HTTP/1.1 path" } else { "hyper's path" }
}

pub async fn harness_with_settings(routes: Vec<RouteConfig>, upstream: String, settings: GatewaySettings) -> Harness {
    let clock = Arc::new(ManualClock::starting_now());
    let ring = Arc::new(Mutex::new(KeyRing::generate(clock.unix())));
    let source = {
        let (ring, clock) = (ring.clone(), clock.clone());
        LocalJwks::new(move || ring.lock().unwrap().jwks(clock.unix(), token_settings().key_overlap()))
    };
    harness_full_with(routes, upstream, Arc::new(source), clock, ring, settings).await
}

pub async fn harness_full(
    routes: Vec<RouteConfig>,
    upstream: String,
    source: Arc<dyn JwksSource>,
    clock: Arc<ManualClock>,
    ring: Arc<Mutex<KeyRing>>,
) -> Harness {
    harness_full_with(routes, upstream, source, clock, ring, settings()).await
}

pub async fn harness_full_with(
    routes: Vec<RouteConfig>,
    upstream: String,
    source: Arc<dyn JwksSource>,
    clock: Arc<ManualClock>,
    ring: Arc<Mutex<KeyRing>>,
    settings: GatewaySettings,
) -> Harness {
    let authenticator = Arc::new(Authenticator::new(source, token_settings(), 1000));
    let _ = authenticator.refresh().await;
    let feed = Arc::new(SwitchableFeed::default());
    let csrf = CsrfKey::generate();
    let role_table: Arc<Mutex<Option<Permissions>>> = Arc::default();
    let table = role_table.clone();
    let roles = Arc::new(RoleMap::new(Arc::new(LocalRoleMap::new(move || {
        let answer = table.lock().unwrap().clone().ok_or_else(|| "the auth-service is down".to_owned());
        Box::pin(async move { answer })
    }))));
    let gateway = Gateway::new(GatewayParts {
        routes: RouteTable::build(&routes, &[], &HashMap::new()).unwrap(),
        authenticator,
        roles: Some(roles.clone()),
        revocations: feed.clone(),
        csrf: csrf.clone(),
        clock: clock.clone(),
        settings,
        extra_metrics: None,
    })
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(api_gateway::serve(listener, gateway.clone(), std::future::pending()));
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    Harness { url, upstream, gateway, ring, csrf, feed, clock, client, roles, role_table }
}

impl Harness {
    pub fn claims(&self) -> AccessClaims {
        let now = self.clock.unix();
        AccessClaims {
            iss: ISSUER.into(),
            sub: uuid::Uuid::new_v4().to_string(),
            aud: "gatehouse".into(),
            exp: now + 600,
            iat: now,
            nbf: now,
            jti: AccessClaims::new_jti(),
            sid: uuid::Uuid::new_v4().to_string(),
            roles: vec!["viewer".into()],
            permissions: vec![],
            permissions_by_role: false,
            ver: 0,
            email_verified: true,
        }
    }

    pub fn sign(&self, claims: &AccessClaims) -> String {
        TokenSigner::new(&self.ring.lock().unwrap()).sign(claims).unwrap()
    }

    pub fn token(&self) -> (String, AccessClaims) {
        let claims = self.claims();
        (self.sign(&claims), claims)
    }

    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.client.get(format!("{}{path}", self.url))
    }

    pub fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.client.post(format!("{}{path}", self.url))
    }

    /// A cookie request as a page would send it, with a valid CSRF pair for `claims`.
    pub fn cookie_post(&self, path: &str, token: &str, claims: &AccessClaims) -> reqwest::RequestBuilder {
        let csrf = self.csrf.mint(&claims.sid);
        self.post(path)
            .header("cookie", format!("__Host-access_token={token}; __Host-csrf_token={csrf}"))
            .header("x-csrf-token", csrf)
    }
}

pub async fn json(response: reqwest::Response) -> Value {
    response.json().await.unwrap()
}

/// Every value the echo upstream saw for header `name` (lowercase), in order.
pub fn header_values(echo: &Value, name: &str) -> Vec<String> {
    let lines = echo["headers"].as_array().unwrap_or_else(|| panic!("not an echo: {echo}"));
    lines.iter().filter(|l| l[0] == name).map(|l| l[1].as_str().unwrap().to_owned()).collect()
}

/// The one value the echo upstream saw for header `name`, if any; more than one fails.
pub fn seen(echo: &Value, name: &str) -> Option<String> {
    let mut values = header_values(echo, name);
    assert!(values.len() <= 1, "{name} reached the upstream {} times: {values:?}", values.len());
    values.pop()
}

/// A genuine token older than a change to its user: refresh it.
pub async fn assert_stale(response: reqwest::Response) {
    assert_eq!(response.status(), 401);
    assert_eq!(response.headers()["www-authenticate"], "Bearer error=\"invalid_token\"");
    assert_eq!(json(response).await["error"]["code"], "token_stale");
}

/// The one 401 body, whatever the reason.
pub async fn assert_unauthenticated(response: reqwest::Response) {
    assert_eq!(response.status(), 401);
    assert_eq!(response.headers()["www-authenticate"], "Bearer error=\"invalid_token\"");
    assert_eq!(
        json(response).await,
        json!({"error": {"code": "unauthenticated", "message": "authentication is required"}})
    );
}

/// Writes `request` on a new connection to the gateway and reads one
/// answer: its head, and a body of the length it gives.
pub async fn first_answer(h: &Harness, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(h.url.trim_start_matches("http://")).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let read = async {
        loop {
            if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
                let length =
                    head.lines().find_map(|l| l.strip_prefix("content-length: ")).map_or(0, |l| l.parse().unwrap());
                if got.len() >= end + 4 + length {
                    return;
                }
            }
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed before a whole answer: {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read).await.unwrap();
    String::from_utf8(got).unwrap()
}

/// Writes `requests` on one connection to the gateway and reads until it closes.
pub async fn one_connection(h: &Harness, requests: &[u8]) -> String {
    let mut stream = TcpStream::connect(h.url.trim_start_matches("http://")).await.unwrap();
    stream.write_all(requests).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await.unwrap().unwrap();
    String::from_utf8(answer).unwrap()
}

/// What a scripted upstream does, in order, after reading a request head.
#[derive(Debug, Clone)]
pub enum Step {
    Send(Vec<u8>),
    /// Waits until the test calls [`Scripted::release`].
    Hold,
    /// Tells the test (see [`Scripted::sent`]) that everything before was sent.
    Signal,
    Close,
}

/// A raw HTTP/1.1 upstream playing a script per request; see [`scripted_upstream`].
pub struct Scripted {
    pub url: String,
    /// Connections accepted.
    pub connections: Arc<AtomicUsize>,
    /// Every request head received, in order.
    pub heads: Arc<Mutex<Vec<String>>>,
    signals: tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<()>>,
    release: Arc<tokio::sync::Notify>,
}

impl Scripted {
    /// Waits until the script has reached a [`Step::Signal`].
    pub async fn sent(&self) {
        let mut signals = self.signals.lock().await;
        tokio::time::timeout(Duration::from_secs(10), signals.recv()).await.unwrap().unwrap();
    }

    /// Lets a script waiting at [`Step::Hold`] go on.
    pub fn release(&self) {
        self.release.notify_one();
    }
}

/// A request head read byte by byte (so nothing after it is taken), or
/// `None` when the connection ends first.
pub async fn read_head(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        if stream.read(&mut byte).await.unwrap_or(0) == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    Some(head)
}

/// An upstream speaking raw HTTP/1.1: to the `n`-th request head (from 1)
/// on a connection it plays `script(n, head)`. Bodies of requests are not
/// read (scripts here answer bodiless requests).
pub async fn scripted_upstream(script: impl Fn(usize, &str) -> Vec<Step> + Send + Sync + 'static) -> Scripted {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let connections = Arc::new(AtomicUsize::new(0));
    let heads = Arc::new(Mutex::new(Vec::new()));
    let (signal, signals) = tokio::sync::mpsc::unbounded_channel();
    let release = Arc::new(tokio::sync::Notify::new());
    let (counter, log, script, released) = (connections.clone(), heads.clone(), Arc::new(script), release.clone());
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            counter.fetch_add(1, Ordering::SeqCst);
            let (script, log, signal, released) = (script.clone(), log.clone(), signal.clone(), released.clone());
            tokio::spawn(async move {
                for n in 1.. {
                    let Some(head) = read_head(&mut stream).await else {
                        return;
                    };
                    let head = String::from_utf8(head).unwrap();
                    log.lock().unwrap().push(head.clone());
                    for step in script(n, &head) {
                        match step {
                            Step::Send(bytes) => {
                                if stream.write_all(&bytes).await.is_err() {
                                    return;
                                }
                            }
                            Step::Hold => released.notified().await,
                            Step::Signal => {
                                let _ = signal.send(());
                            }
                            Step::Close => return,
                        }
                    }
                }
            });
        }
    });
    Scripted { url, connections, heads, signals: tokio::sync::Mutex::new(signals), release }
}

/// An upstream speaking raw HTTP/1.1: to the `n`-th request head (from 1) on
/// a connection it answers `answer(n, request line)`, then closes the
/// connection if told to. Counts the connections it accepted.
pub async fn raw_upstream(
    answer: impl Fn(usize, &str) -> (Vec<u8>, bool) + Send + Sync + 'static,
) -> (String, Arc<AtomicUsize>) {
    let upstream = scripted_upstream(move |n, head| {
        let (bytes, close) = answer(n, head.lines().next().unwrap());
        let mut steps = vec![Step::Send(bytes)];
        if close {
            steps.push(Step::Close);
        }
        steps
    })
    .await;
    (upstream.url, upstream.connections)
}

/// The gateway serving on a port of its own until `stop` is sent.
pub async fn serve_until_stopped(
    h: &Harness,
) -> (SocketAddr, tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<std::io::Result<()>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(api_gateway::serve(listener, h.gateway.clone(), async move {
        let _ = stopped.await;
    }));
    (addr, stop, serving)
}
