//! One login provider: the authorization URL, the code exchange, and who
//! the user is, by the provider's protocol: OpenID Connect (discovery, an
//! `id_token` checked as OIDC Core §3.1.3.7 says, `oidc.rs`) or a plain
//! OAuth 2.0 provider with a user API (GitHub, Facebook, `user_api.rs`).

use std::time::{Duration, Instant};

use auth_core::accounts::ProviderClaims;
use jsonwebtoken::jwk::JwkSet;
use serde::Deserialize;
use tokio::sync::RwLock;

use super::oidc::Metadata;

/// Why a login through a provider failed; `code` goes to the error page.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("the provider cannot be reached or answered nonsense: {0}")]
    Unavailable(String),
    #[error("the provider's answer failed a check: {0}")]
    Invalid(String),
}

impl ProviderError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::Unavailable(_) => "provider_unavailable",
            Self::Invalid(_) => "provider_response_invalid",
        }
    }
}

/// GitHub, where identities of `kind = "github"` come from by default.
pub const GITHUB: &str = "https://github.com";
/// Facebook Login's dialog and the Graph API, and the version asked for.
pub const FACEBOOK: &str = "https://www.facebook.com";
pub const FACEBOOK_GRAPH: &str = "https://graph.facebook.com";
pub const GRAPH_VERSION: &str = "v23.0";
/// Google's OpenID issuer.
pub const GOOGLE: &str = "https://accounts.google.com";

/// How a provider is spoken to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Protocol {
    /// OpenID Connect: endpoints and keys from the issuer's discovery
    /// document; who the user is from the signed `id_token`.
    Oidc,
    /// A GitHub OAuth app: the user from `/user`, the email from
    /// `/user/emails` (the primary one, with GitHub's verified flag).
    GitHub(Endpoints),
    /// Facebook Login: the user from the Graph API's `/me?fields=id,email,name`.
    Facebook(Endpoints),
}

/// Where a plain OAuth 2.0 provider's parts are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    pub authorization: String,
    pub token: String,
    /// The user API's base.
    pub api: String,
}

impl Endpoints {
    /// GitHub's, for `https://github.com` or a GitHub Enterprise Server at `base`.
    pub fn github(base: &str) -> Self {
        let base = base.trim_end_matches('/');
        let api = match base.eq_ignore_ascii_case(GITHUB) {
            true => "https://api.github.com".to_owned(),
            false => format!("{base}/api/v3"),
        };
        Self {
            authorization: format!("{base}/login/oauth/authorize"),
            token: format!("{base}/login/oauth/access_token"),
            api,
        }
    }

    /// Facebook's: the login dialog on `www`, the Graph API on `graph`.
    pub fn facebook(www: &str, graph: &str) -> Self {
        let (www, graph) = (www.trim_end_matches('/'), graph.trim_end_matches('/'));
        Self {
            authorization: format!("{www}/{GRAPH_VERSION}/dialog/oauth"),
            token: format!("{graph}/{GRAPH_VERSION}/oauth/access_token"),
            api: format!("{graph}/{GRAPH_VERSION}"),
        }
    }
}

/// What a provider is configured as.
#[derive(Clone, PartialEq, Eq)]
pub struct ProviderSettings {
    /// The name in URLs: `/auth/oauth/{name}/start`.
    pub name: String,
    /// Identities are keyed by (issuer, subject). For OpenID providers it
    /// is compared exactly with the discovery document's and the tokens' `iss`.
    pub issuer: String,
    pub protocol: Protocol,
    pub client_id: String,
    pub client_secret: String,
    pub scopes: Vec<String>,
    /// Whether an existing account with the same (verified) email may be
    /// linked to this provider's identity at login without asking.
    pub link_by_email: bool,
}

/// The client secret never reaches a log.
impl std::fmt::Debug for ProviderSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderSettings")
            .field("name", &self.name)
            .field("issuer", &self.issuer)
            .field("protocol", &self.protocol)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

/// Whether `url` may carry a login's secrets: `https`, or plain `http` only
/// to a loopback host (development and tests).
pub fn secure_url(url: &str) -> bool {
    if url.starts_with("https://") {
        return true;
    }
    url.strip_prefix("http://").is_some_and(|rest| {
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        // Nothing but a loopback host and a port: `http://localhost:1@evil.example`
        // is evil.example.
        let (host, port) = match authority.strip_prefix('[') {
            Some(v6) => v6.split_once(']').unwrap_or((v6, "")),
            None => authority.split_at(authority.find(':').unwrap_or(authority.len())),
        };
        let port_ok = port.is_empty() || port.strip_prefix(':').is_some_and(|p| p.bytes().all(|b| b.is_ascii_digit()));
        port_ok && matches!(host, "127.0.0.1" | "localhost" | "::1")
    })
}

/// The most a provider's answer may weigh.
const MAX_ANSWER: usize = 256 * 1024;

/// Reads a body of at most [`MAX_ANSWER`] bytes.
async fn bounded(mut response: reqwest::Response) -> Result<Vec<u8>, ProviderError> {
    if response.content_length().is_some_and(|n| n > MAX_ANSWER as u64) {
        return Err(ProviderError::Invalid("the answer is too large".into()));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| ProviderError::Unavailable(e.to_string()))? {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_ANSWER {
            return Err(ProviderError::Invalid("the answer is too large".into()));
        }
    }
    Ok(body)
}

pub(crate) fn json<T: serde::de::DeserializeOwned>(body: &[u8], what: &str) -> Result<T, ProviderError> {
    serde_json::from_slice(body).map_err(|e| ProviderError::Invalid(format!("{what}: {e}")))
}

/// A token endpoint's answer (RFC 6749 §5.1), or its error (§5.2; GitHub
/// sends those with status 200).
#[derive(Debug, Deserialize)]
pub(crate) struct TokenResponse {
    pub id_token: Option<String>,
    pub access_token: Option<String>,
    pub error: Option<serde_json::Value>,
}

/// A provider with what it published (OpenID discovery and keys), fetched
/// when first needed (a provider down at start stops nobody) and the keys
/// again when a token names one not yet seen.
pub struct Provider {
    pub settings: ProviderSettings,
    pub(crate) http: reqwest::Client,
    pub(crate) metadata: RwLock<Option<(Metadata, Instant)>>,
    pub(crate) keys: RwLock<Option<(JwkSet, Instant)>>,
    /// When discovery last failed.
    pub(crate) discovery_failed: std::sync::Mutex<Option<Instant>>,
}

/// Percent-encodes a query or form value (RFC 3986 unreserved kept).
pub(crate) fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub(crate) fn form(pairs: &[(&str, &str)]) -> String {
    pairs.iter().map(|(k, v)| format!("{}={}", encode(k), encode(v))).collect::<Vec<_>>().join("&")
}

/// The secrets of one login attempt, as the authorization request carries them.
pub struct Secrets<'a> {
    pub state: &'a str,
    /// Sent to OpenID providers only.
    pub nonce: &'a str,
    pub challenge: &'a str,
}

impl Provider {
    pub fn new(settings: ProviderSettings) -> Result<Self, ProviderError> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10))
            .user_agent(concat!("gatehouse/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ProviderError::Unavailable(e.to_string()))?;
        let (metadata, keys, discovery_failed) = (RwLock::new(None), RwLock::new(None), Default::default());
        Ok(Self { settings, http, metadata, keys, discovery_failed })
    }

    /// Sends `request` (a GET) and reads a JSON answer of at most 256 KiB;
    /// `what` names it in errors.
    pub(crate) async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
        what: &str,
    ) -> Result<T, ProviderError> {
        let response = request.send().await.map_err(|e| ProviderError::Unavailable(e.to_string()))?;
        let status = response.status();
        if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            return Err(ProviderError::Unavailable(format!("{what} answered {status}")));
        }
        if !status.is_success() {
            return Err(ProviderError::Invalid(format!("{what} answered {status}")));
        }
        json(&bounded(response).await?, what)
    }

    /// Whether the provider promised an `iss` in its answers (RFC 9207).
    pub async fn promises_iss(&self) -> bool {
        match self.settings.protocol {
            Protocol::Oidc => self.metadata().await.is_ok_and(|m| m.authorization_response_iss_parameter_supported),
            _ => false,
        }
    }

    /// The URL the browser is sent to: the authorization code flow with
    /// PKCE (S256) and `state`, and `nonce` where OpenID defines it.
    pub async fn authorization_url(
        &self,
        redirect_uri: &str,
        secrets: Secrets<'_>,
        login_hint: Option<&str>,
    ) -> Result<String, ProviderError> {
        let scope = self.settings.scopes.join(" ");
        let mut pairs = vec![
            ("response_type", "code"),
            ("client_id", self.settings.client_id.as_str()),
            ("redirect_uri", redirect_uri),
            ("scope", scope.as_str()),
            ("state", secrets.state),
            ("code_challenge", secrets.challenge),
            ("code_challenge_method", "S256"),
        ];
        let endpoint = match &self.settings.protocol {
            Protocol::Oidc => {
                pairs.push(("nonce", secrets.nonce));
                pairs.extend(login_hint.map(|hint| ("login_hint", hint)));
                self.metadata().await?.authorization_endpoint
            }
            // GitHub calls the hint `login`; Facebook takes none.
            Protocol::GitHub(endpoints) => {
                pairs.extend(login_hint.map(|hint| ("login", hint)));
                endpoints.authorization.clone()
            }
            Protocol::Facebook(endpoints) => endpoints.authorization.clone(),
        };
        let separator = if endpoint.contains('?') { '&' } else { '?' };
        Ok(format!("{endpoint}{separator}{}", form(&pairs)))
    }

    /// Exchanges `code` (with the PKCE `verifier`) and finds out who signed
    /// in: from the checked `id_token` (OpenID) or the user API.
    pub async fn finish(
        &self,
        code: &str,
        verifier: &str,
        redirect_uri: &str,
        nonce: &str,
    ) -> Result<ProviderClaims, ProviderError> {
        let grant = [
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", redirect_uri),
            ("code_verifier", verifier),
        ];
        let user = match &self.settings.protocol {
            Protocol::Oidc => {
                let metadata = self.metadata().await?;
                // client_secret_basic, the default of OIDC Core §9.
                let request = self
                    .http
                    .post(&metadata.token_endpoint)
                    .basic_auth(encode(&self.settings.client_id), Some(encode(&self.settings.client_secret)))
                    .body(form(&grant));
                let tokens = self.exchange(request).await?;
                self.oidc_user(&metadata, tokens, nonce).await?
            }
            Protocol::GitHub(endpoints) | Protocol::Facebook(endpoints) => {
                // Both document the credentials in the body.
                let credentials =
                    [("client_id", self.settings.client_id.as_str()), ("client_secret", &self.settings.client_secret)];
                let body = form(&[&grant[..], &credentials[..]].concat());
                let tokens = self.exchange(self.http.post(&endpoints.token).body(body)).await?;
                let access = tokens.access_token.ok_or_else(|| ProviderError::Invalid("no access_token".into()))?;
                match &self.settings.protocol {
                    Protocol::GitHub(_) => self.github_user(endpoints, &access).await?,
                    _ => self.facebook_user(endpoints, &access).await?,
                }
            }
        };
        Ok(ProviderClaims {
            provider: self.settings.name.clone(),
            issuer: self.settings.issuer.clone(),
            subject: user.subject,
            email: user.email,
            email_verified: user.email_verified,
            link_by_email: self.settings.link_by_email,
        })
    }

    /// Sends a token request and reads the answer; an error answer, even
    /// with status 200, is an error.
    async fn exchange(&self, request: reqwest::RequestBuilder) -> Result<TokenResponse, ProviderError> {
        let response = request
            .header(reqwest::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| ProviderError::Unavailable(e.to_string()))?;
        let status = response.status();
        let body = bounded(response).await?;
        let detail = || String::from_utf8_lossy(&body).chars().take(200).collect::<String>();
        if status.is_server_error() {
            return Err(ProviderError::Unavailable(format!("the token endpoint answered {status}: {}", detail())));
        }
        if !status.is_success() {
            return Err(ProviderError::Invalid(format!("the token endpoint answered {status}: {}", detail())));
        }
        let tokens: TokenResponse = json(&body, "the token endpoint")?;
        if tokens.error.is_some() {
            return Err(ProviderError::Invalid(format!("the token endpoint refused: {}", detail())));
        }
        Ok(tokens)
    }
}

/// Who signed in, as the provider says.
pub(crate) struct ProviderUser {
    pub subject: String,
    pub email: Option<String>,
    pub email_verified: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_put_github_enterprise_and_facebook_where_their_documents_say() {
        let github = Endpoints::github("https://github.com/");
        assert_eq!(github.authorization, "https://github.com/login/oauth/authorize");
        assert_eq!(github.token, "https://github.com/login/oauth/access_token");
        assert_eq!(github.api, "https://api.github.com");
        assert_eq!(Endpoints::github("https://git.corp.example").api, "https://git.corp.example/api/v3");
        let facebook = Endpoints::facebook(FACEBOOK, FACEBOOK_GRAPH);
        assert_eq!(facebook.authorization, format!("https://www.facebook.com/{GRAPH_VERSION}/dialog/oauth"));
        assert_eq!(facebook.token, format!("https://graph.facebook.com/{GRAPH_VERSION}/oauth/access_token"));
    }

    #[test]
    fn only_https_or_loopback_http_may_carry_a_login() {
        for (url, ok) in [
            ("https://id.example.com", true),
            ("http://127.0.0.1:9000", true),
            ("http://localhost/x", true),
            ("http://[::1]:80", true),
            ("http://id.example.com", false),
            ("http://127.0.0.1.evil.example", false),
            ("http://localhost@evil.example", false),
            ("http://localhost:1@evil.example/", false),
            ("http://127.0.0.1\\@evil.example/", false),
            ("http://127.0.0.1:80.evil.example/", false),
            ("http://127.0.0.1:8080/x", true),
            ("http://[::1]@evil.example", false),
            ("ftp://127.0.0.1", false),
        ] {
            assert_eq!(secure_url(url), ok, "{url}");
        }
    }
}
