//! A local HTTP stub of three login providers' documented API shapes, for
//! what the real OpenID provider of the tests cannot show:
//!
//! - GitHub (an Enterprise Server's paths: `/login/oauth/authorize`,
//!   `/login/oauth/access_token`, `/api/v3/user`, `/api/v3/user/emails`);
//! - Facebook (`/{version}/dialog/oauth`, `/{version}/oauth/access_token`,
//!   `/{version}/me`, with `appsecret_proof` checked);
//! - an OpenID provider under `/oidc` whose `id_token`s can be spoiled on
//!   cue (another audience, issuer, key, an expired one).
//!
//! Every authorization request is answered at once (no login page): the
//! user is the `login` hint (GitHub) or the one named by
//! [`ProviderStub::sign_in_as`]. Users are made up from their email:
//! `unverified+bob@x` has the address unverified, `noemail+carol@x` has
//! none. The client is `gatehouse` / `test-secret`; a wrong secret, a wrong
//! PKCE verifier or a code used twice is refused as each provider does.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use crate::oauth::GRAPH_VERSION;

pub const CLIENT_ID: &str = "gatehouse";
pub const CLIENT_SECRET: &str = "test-secret";

/// How the stub's OpenID provider spoils its next `id_token`s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Spoil {
    #[default]
    Nothing,
    /// `aud` is another client.
    Audience,
    /// `iss` is another issuer.
    Issuer,
    /// Expired an hour ago.
    Expired,
    /// Signed by a key the provider does not publish, under a published `kid`.
    Signature,
    /// `azp` names another client.
    AuthorizedParty,
    /// `aud` is this client and another, with no `azp`.
    ManyAudiences,
    /// Signed by a key the provider publishes for encryption only.
    KeyForEncryption,
    /// Not a fault: `email_verified` as the string `"true"`, as Amazon
    /// Cognito sends it.
    VerifiedAsText,
}

#[derive(Debug, Clone)]
struct Grant {
    user: String,
    challenge: Option<String>,
    redirect_uri: String,
    nonce: Option<String>,
}

#[derive(Default)]
struct Stub {
    url: String,
    next_user: String,
    spoil: Spoil,
    codes: HashMap<String, Grant>,
    tokens: HashMap<String, String>,
    /// Every authorization request's query, oldest first.
    requests: Vec<HashMap<String, String>>,
    key: Option<auth_tokens::SigningKey>,
    impostor: Option<auth_tokens::SigningKey>,
    discovery_down: bool,
    discoveries: usize,
}

type Shared = Arc<Mutex<Stub>>;

/// The stub, serving on 127.0.0.1 until the test's runtime ends.
#[derive(Clone)]
pub struct ProviderStub {
    pub url: String,
    shared: Shared,
}

impl ProviderStub {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the provider stub");
        let url = format!("http://{}", listener.local_addr().expect("local address"));
        let shared = Arc::new(Mutex::new(Stub {
            url: url.clone(),
            next_user: "alice@example.com".into(),
            key: Some(auth_tokens::SigningKey::generate(0)),
            impostor: Some(auth_tokens::SigningKey::generate(0)),
            ..Stub::default()
        }));
        let v = GRAPH_VERSION;
        let app = Router::new()
            .route("/login/oauth/authorize", get(authorize))
            .route("/login/oauth/access_token", post(github_token))
            .route("/api/v3/user", get(github_user))
            .route("/api/v3/user/emails", get(github_emails))
            .route(&format!("/{v}/dialog/oauth"), get(authorize))
            .route(&format!("/{v}/oauth/access_token"), post(facebook_token))
            .route(&format!("/{v}/me"), get(facebook_me))
            .route("/oidc/.well-known/openid-configuration", get(discovery))
            .route("/oidc/authorize", get(authorize))
            .route("/oidc/token", post(oidc_token))
            .route("/oidc/jwks", get(jwks))
            .with_state(shared.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { url, shared }
    }

    fn stub(&self) -> std::sync::MutexGuard<'_, Stub> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Who the next authorization without a `login` hint signs in.
    pub fn sign_in_as(&self, email: &str) {
        self.stub().next_user = email.to_owned();
    }

    pub fn spoil(&self, how: Spoil) {
        self.stub().spoil = how;
    }

    /// The last authorization request's query.
    pub fn last_request(&self) -> HashMap<String, String> {
        self.stub().requests.last().cloned().unwrap_or_default()
    }

    /// Whether the OpenID discovery document answers 503.
    pub fn discovery_down(&self, down: bool) {
        self.stub().discovery_down = down;
    }

    /// How many times the discovery document was asked for.
    pub fn discoveries(&self) -> usize {
        self.stub().discoveries
    }

    /// The OpenID issuer under `/oidc`.
    pub fn oidc_issuer(&self) -> String {
        format!("{}/oidc", self.url)
    }
}

/// A made-up user's numeric id: the same for the same email.
fn number_of(user: &str) -> u64 {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(user.as_bytes());
    u64::from_be_bytes(digest[..8].try_into().unwrap_or_default()) >> 12
}

/// The address of a made-up user, and whether it is verified.
fn address_of(user: &str) -> Option<(String, bool)> {
    if user.starts_with("noemail+") {
        return None;
    }
    match user.strip_prefix("unverified+") {
        Some(address) => Some((address.to_owned(), false)),
        None => Some((user.to_owned(), true)),
    }
}

fn random() -> String {
    auth_tokens::b64url(&auth_tokens::random_bytes::<16>())
}

/// Parses a form body as a query.
fn form(body: &[u8]) -> HashMap<String, String> {
    let uri: Uri = format!("/?{}", String::from_utf8_lossy(body)).parse().unwrap_or_default();
    Query::<HashMap<String, String>>::try_from_uri(&uri).map(|q| q.0).unwrap_or_default()
}

async fn body_of(request: Request) -> Vec<u8> {
    axum::body::to_bytes(request.into_body(), 64 * 1024).await.map(|b| b.to_vec()).unwrap_or_default()
}

/// Signs the user in at once and sends the browser back with a code.
async fn authorize(State(shared): State<Shared>, Query(query): Query<HashMap<String, String>>) -> Response {
    let mut stub = shared.lock().unwrap_or_else(|e| e.into_inner());
    stub.requests.push(query.clone());
    let (Some(redirect_uri), Some(state)) = (query.get("redirect_uri"), query.get("state")) else {
        return (StatusCode::BAD_REQUEST, "redirect_uri and state are needed").into_response();
    };
    if query.get("client_id").map(String::as_str) != Some(CLIENT_ID) {
        return (StatusCode::BAD_REQUEST, "unknown client").into_response();
    }
    let user = query.get("login").or(query.get("login_hint")).cloned().unwrap_or(stub.next_user.clone());
    let code = random();
    let challenge = match query.get("code_challenge_method").map(String::as_str) {
        Some("S256") => query.get("code_challenge").cloned(),
        _ => None,
    };
    let grant = Grant { user, challenge, redirect_uri: redirect_uri.clone(), nonce: query.get("nonce").cloned() };
    stub.codes.insert(code.clone(), grant);
    let separator = if redirect_uri.contains('?') { '&' } else { '?' };
    let to = format!("{redirect_uri}{separator}code={code}&state={}", crate::oauth::encode(state));
    (StatusCode::FOUND, [(header::LOCATION, to)]).into_response()
}

/// The grant of `params`' code, if the client, redirect URI and PKCE
/// verifier match; the code is spent either way.
fn redeem(stub: &mut Stub, params: &HashMap<String, String>, basic: Option<(String, String)>) -> Option<Grant> {
    let grant = stub.codes.remove(params.get("code")?)?;
    let (id, secret) =
        basic.or_else(|| Some((params.get("client_id")?.clone(), params.get("client_secret")?.clone())))?;
    let verifier = params.get("code_verifier").map(|v| crate::oauth::challenge(v));
    let pkce_ok = grant.challenge.is_none() || verifier == grant.challenge;
    let ok = id == CLIENT_ID
        && secret == CLIENT_SECRET
        && params.get("redirect_uri") == Some(&grant.redirect_uri)
        && pkce_ok;
    ok.then_some(grant)
}

fn issue_token(stub: &mut Stub, user: &str) -> String {
    let token = format!("stub_{}", random());
    stub.tokens.insert(token.clone(), user.to_owned());
    token
}

fn bearer_user(stub: &Stub, headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let token = value.strip_prefix("Bearer ").or(value.strip_prefix("bearer "))?;
    stub.tokens.get(token).cloned()
}

/// GitHub answers a bad exchange with 200 and an `error` (its docs,
/// "Troubleshooting OAuth app access token request errors").
async fn github_token(State(shared): State<Shared>, request: Request) -> Response {
    let params = form(&body_of(request).await);
    let mut stub = shared.lock().unwrap_or_else(|e| e.into_inner());
    match redeem(&mut stub, &params, None) {
        Some(grant) => {
            let token = issue_token(&mut stub, &grant.user);
            axum::Json(json!({"access_token": token, "token_type": "bearer", "scope": "read:user,user:email"}))
                .into_response()
        }
        None => axum::Json(json!({
            "error": "bad_verification_code",
            "error_description": "The code passed is incorrect or expired.",
        }))
        .into_response(),
    }
}

/// GitHub's caller: the token's user; `Err` with GitHub's refusal (it
/// refuses API calls without a User-Agent).
fn github_caller(stub: &Stub, headers: &HeaderMap) -> Result<String, (StatusCode, Value)> {
    if !headers.contains_key(header::USER_AGENT) {
        return Err((StatusCode::FORBIDDEN, json!({"message": "Request forbidden by administrative rules."})));
    }
    bearer_user(stub, headers).ok_or((StatusCode::UNAUTHORIZED, json!({"message": "Bad credentials", "status": "401"})))
}

async fn github_user(State(shared): State<Shared>, headers: HeaderMap) -> Response {
    let stub = shared.lock().unwrap_or_else(|e| e.into_inner());
    match github_caller(&stub, &headers) {
        // The public email is unset, as for most users: /user/emails has it.
        Ok(user) => {
            let login = user.replace(['@', '+', '.'], "-");
            axum::Json(json!({"login": login, "id": number_of(&user), "email": null})).into_response()
        }
        Err((status, body)) => (status, axum::Json(body)).into_response(),
    }
}

async fn github_emails(State(shared): State<Shared>, headers: HeaderMap) -> Response {
    let stub = shared.lock().unwrap_or_else(|e| e.into_inner());
    match github_caller(&stub, &headers) {
        Ok(user) => {
            // A verified secondary address first: only the primary counts.
            let mut emails = vec![json!({"email": format!("other-{}@example.net", number_of(&user)),
                "primary": false, "verified": true, "visibility": null})];
            if let Some((address, verified)) = address_of(&user) {
                emails.push(json!({"email": address, "primary": true, "verified": verified, "visibility": "private"}));
            }
            axum::Json(Value::Array(emails)).into_response()
        }
        Err((status, body)) => (status, axum::Json(body)).into_response(),
    }
}

fn facebook_error(message: &str) -> Response {
    let error = json!({"error": {"message": message, "type": "OAuthException", "code": 100, "fbtrace_id": "stub"}});
    (StatusCode::BAD_REQUEST, axum::Json(error)).into_response()
}

async fn facebook_token(State(shared): State<Shared>, request: Request) -> Response {
    let params = form(&body_of(request).await);
    let mut stub = shared.lock().unwrap_or_else(|e| e.into_inner());
    match redeem(&mut stub, &params, None) {
        Some(grant) => {
            let token = issue_token(&mut stub, &grant.user);
            axum::Json(json!({"access_token": token, "token_type": "bearer", "expires_in": 5_183_944})).into_response()
        }
        None => facebook_error("Invalid verification code format."),
    }
}

async fn facebook_me(
    State(shared): State<Shared>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let stub = shared.lock().unwrap_or_else(|e| e.into_inner());
    let Some(user) = bearer_user(&stub, &headers) else { return facebook_error("Invalid OAuth access token.") };
    let token = headers[header::AUTHORIZATION].to_str().unwrap_or_default()[7..].to_owned();
    if query.get("appsecret_proof") != Some(&proof_of(&token)) {
        return facebook_error("Invalid appsecret_proof provided in the API argument");
    }
    let mut me = json!({"id": number_of(&user).to_string(), "name": "Stub User"});
    // Facebook leaves out an address it has not confirmed.
    if let Some((address, true)) = address_of(&user) {
        me["email"] = json!(address);
    }
    axum::Json(me).into_response()
}

/// `appsecret_proof` as Facebook computes it: HMAC-SHA256 of the token
/// keyed by the app secret, in lower-case hex.
fn proof_of(token: &str) -> String {
    use hmac::Mac as _;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(CLIENT_SECRET.as_bytes()).unwrap();
    mac.update(token.as_bytes());
    mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

async fn discovery(State(shared): State<Shared>) -> Response {
    let mut stub = shared.lock().unwrap_or_else(|e| e.into_inner());
    stub.discoveries += 1;
    if stub.discovery_down {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let issuer = format!("{}/oidc", stub.url);
    axum::Json(json!({
        "issuer": issuer,
        "authorization_endpoint": format!("{issuer}/authorize"),
        "token_endpoint": format!("{issuer}/token"),
        "jwks_uri": format!("{issuer}/jwks"),
        "response_types_supported": ["code"],
        "code_challenge_methods_supported": ["S256"],
    }))
    .into_response()
}

async fn jwks(State(shared): State<Shared>) -> Response {
    let stub = shared.lock().unwrap_or_else(|e| e.into_inner());
    let mut keys = vec![json!(stub.key.as_ref().map(auth_tokens::SigningKey::jwk))];
    if stub.spoil == Spoil::KeyForEncryption {
        let mut for_encryption = json!(stub.impostor.as_ref().map(auth_tokens::SigningKey::jwk));
        for_encryption["use"] = json!("enc");
        keys.push(for_encryption);
    }
    axum::Json(json!({"keys": keys})).into_response()
}

/// The client authenticates with HTTP Basic (client_secret_basic).
fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    use base64::Engine as _;
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.strip_prefix("Basic ")?;
    let decoded = String::from_utf8(base64::engine::general_purpose::STANDARD.decode(value).ok()?).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    Some((id.to_owned(), secret.to_owned()))
}

async fn oidc_token(State(shared): State<Shared>, request: Request) -> Response {
    let basic = basic_credentials(request.headers());
    let params = form(&body_of(request).await);
    let mut stub = shared.lock().unwrap_or_else(|e| e.into_inner());
    let Some(grant) = redeem(&mut stub, &params, basic) else {
        return (StatusCode::BAD_REQUEST, axum::Json(json!({"error": "invalid_grant"}))).into_response();
    };
    let now = unix_now();
    let issuer = format!("{}/oidc", stub.url);
    let mut claims = json!({
        "iss": issuer, "sub": number_of(&grant.user).to_string(), "aud": CLIENT_ID,
        "iat": now, "exp": now + 300, "nonce": grant.nonce,
    });
    if let Some((address, verified)) = address_of(&grant.user) {
        claims["email"] = json!(address);
        claims["email_verified"] = json!(verified);
    }
    match stub.spoil {
        Spoil::Nothing | Spoil::Signature | Spoil::KeyForEncryption => {}
        Spoil::ManyAudiences => claims["aud"] = json!([CLIENT_ID, "another-client"]),
        Spoil::VerifiedAsText => claims["email_verified"] = json!(claims["email_verified"].to_string()),
        Spoil::Audience => claims["aud"] = json!("another-client"),
        Spoil::Issuer => claims["iss"] = json!("https://impostor.example"),
        Spoil::Expired => (claims["iat"], claims["exp"]) = (json!(now - 7200), json!(now - 3600)),
        Spoil::AuthorizedParty => claims["azp"] = json!("another-client"),
    }
    let (Some(key), Some(impostor)) = (&stub.key, &stub.impostor) else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let (signer, kid) = match stub.spoil {
        Spoil::Signature => (impostor, &key.kid),
        Spoil::KeyForEncryption => (impostor, &impostor.kid),
        _ => (key, &key.kid),
    };
    let mut jwt_header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    jwt_header.kid = Some(kid.clone());
    let encoding = jsonwebtoken::EncodingKey::from_ed_der(&signer.pkcs8_der());
    let Ok(id_token) = jsonwebtoken::encode(&jwt_header, &claims, &encoding) else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let access = issue_token(&mut stub, &grant.user);
    axum::Json(json!({"access_token": access, "token_type": "Bearer", "id_token": id_token, "expires_in": 300}))
        .into_response()
}

/// The wall clock, which a real provider's tokens follow (the stub is not
/// driven by the tests' manual clock).
fn unix_now() -> i64 {
    std::time::UNIX_EPOCH.elapsed().map(|d| d.as_secs() as i64).unwrap_or_default()
}
