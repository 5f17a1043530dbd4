//! One OpenID Connect provider: discovery, the authorization URL, the code
//! exchange and the `id_token` checks (OIDC Core §3.1.3.7).

use std::time::Duration;

use auth_core::accounts::ProviderClaims;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use tokio::sync::RwLock;

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

/// What a provider is configured as.
#[derive(Clone, PartialEq, Eq)]
pub struct ProviderSettings {
    /// The name in URLs: `/auth/oauth/{name}/start`.
    pub name: String,
    /// Compared exactly with the discovery document's and the tokens' `iss`.
    pub issuer: String,
    pub client_id: String,
    pub client_secret: String,
    pub scopes: Vec<String>,
}

/// The client secret never reaches a log.
impl std::fmt::Debug for ProviderSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderSettings")
            .field("name", &self.name)
            .field("issuer", &self.issuer)
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
        let host = match authority.strip_prefix('[') {
            Some(v6) => v6.split(']').next().unwrap_or_default(),
            None => authority.split(':').next().unwrap_or_default(),
        };
        matches!(host, "127.0.0.1" | "localhost" | "::1")
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

fn json<T: serde::de::DeserializeOwned>(body: &[u8], what: &str) -> Result<T, ProviderError> {
    serde_json::from_slice(body).map_err(|e| ProviderError::Invalid(format!("{what}: {e}")))
}

#[derive(Debug, Clone, Deserialize)]
struct Metadata {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    jwks_uri: String,
    userinfo_endpoint: Option<String>,
    #[serde(default)]
    code_challenge_methods_supported: Option<Vec<String>>,
    #[serde(default)]
    authorization_response_iss_parameter_supported: bool,
}

#[derive(Debug, Deserialize)]
struct TokenResponse {
    id_token: Option<String>,
    access_token: Option<String>,
}

#[derive(Debug, Deserialize)]
struct IdClaims {
    sub: String,
    nonce: Option<String>,
    azp: Option<String>,
    email: Option<String>,
    email_verified: Option<bool>,
}

#[derive(Debug, Deserialize)]
struct UserInfo {
    sub: String,
    email: Option<String>,
    email_verified: Option<bool>,
}

/// A provider with its discovery document and keys, fetched when first
/// needed (a provider down at start stops nobody) and again when a token
/// names a key not yet seen.
pub struct OidcProvider {
    pub settings: ProviderSettings,
    http: reqwest::Client,
    metadata: RwLock<Option<Metadata>>,
    keys: RwLock<Option<JwkSet>>,
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

fn form(pairs: &[(&str, &str)]) -> String {
    pairs.iter().map(|(k, v)| format!("{}={}", encode(k), encode(v))).collect::<Vec<_>>().join("&")
}

impl OidcProvider {
    pub fn new(settings: ProviderSettings) -> Result<Self, ProviderError> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| ProviderError::Unavailable(e.to_string()))?;
        Ok(Self { settings, http, metadata: RwLock::new(None), keys: RwLock::new(None) })
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, url: &str) -> Result<T, ProviderError> {
        let response = self.http.get(url).send().await.map_err(|e| ProviderError::Unavailable(e.to_string()))?;
        if !response.status().is_success() {
            return Err(ProviderError::Unavailable(format!("{url} answered {}", response.status())));
        }
        json(&bounded(response).await?, url)
    }

    /// Whether the provider promised an `iss` in its answers (RFC 9207).
    pub async fn promises_iss(&self) -> bool {
        self.metadata().await.is_ok_and(|m| m.authorization_response_iss_parameter_supported)
    }

    async fn metadata(&self) -> Result<Metadata, ProviderError> {
        if let Some(known) = self.metadata.read().await.clone() {
            return Ok(known);
        }
        let url = format!("{}/.well-known/openid-configuration", self.settings.issuer.trim_end_matches('/'));
        let metadata: Metadata = self.get_json(&url).await?;
        if metadata.issuer != self.settings.issuer {
            return Err(ProviderError::Invalid(format!("the discovery document names issuer {}", metadata.issuer)));
        }
        let endpoints = [&metadata.authorization_endpoint, &metadata.token_endpoint, &metadata.jwks_uri];
        if let Some(bad) = endpoints.into_iter().chain(&metadata.userinfo_endpoint).find(|url| !secure_url(url)) {
            return Err(ProviderError::Invalid(format!("the discovery document names a plain-http endpoint {bad}")));
        }
        if metadata.code_challenge_methods_supported.as_ref().is_some_and(|m| !m.iter().any(|m| m == "S256")) {
            return Err(ProviderError::Invalid("the provider does not support PKCE with S256".into()));
        }
        *self.metadata.write().await = Some(metadata.clone());
        Ok(metadata)
    }

    /// The URL the browser is sent to.
    pub async fn authorization_url(
        &self,
        redirect_uri: &str,
        state: &str,
        nonce: &str,
        challenge: &str,
        login_hint: Option<&str>,
    ) -> Result<String, ProviderError> {
        let metadata = self.metadata().await?;
        let scope = self.settings.scopes.join(" ");
        let mut pairs = vec![
            ("response_type", "code"),
            ("client_id", self.settings.client_id.as_str()),
            ("redirect_uri", redirect_uri),
            ("scope", scope.as_str()),
            ("state", state),
            ("nonce", nonce),
            ("code_challenge", challenge),
            ("code_challenge_method", "S256"),
        ];
        if let Some(hint) = login_hint {
            pairs.push(("login_hint", hint));
        }
        let separator = if metadata.authorization_endpoint.contains('?') { '&' } else { '?' };
        Ok(format!("{}{separator}{}", metadata.authorization_endpoint, form(&pairs)))
    }

    /// Exchanges `code` (with the PKCE `verifier`) and checks the answer:
    /// the `id_token`'s signature by the provider's keys, `iss`, `aud`,
    /// `exp`, and `nonce`; the email from the token or the userinfo endpoint.
    pub async fn finish(
        &self,
        code: &str,
        verifier: &str,
        redirect_uri: &str,
        nonce: &str,
    ) -> Result<ProviderClaims, ProviderError> {
        let metadata = self.metadata().await?;
        let body = form(&[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", redirect_uri),
            ("code_verifier", verifier),
        ]);
        let response = self
            .http
            .post(&metadata.token_endpoint)
            .basic_auth(encode(&self.settings.client_id), Some(encode(&self.settings.client_secret)))
            .header(reqwest::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(reqwest::header::ACCEPT, "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| ProviderError::Unavailable(e.to_string()))?;
        let status = response.status();
        let body = bounded(response).await?;
        if !status.is_success() {
            let detail: String = String::from_utf8_lossy(&body).chars().take(200).collect();
            return Err(ProviderError::Invalid(format!("the token endpoint answered {status}: {detail}")));
        }
        let tokens: TokenResponse = json(&body, "the token endpoint")?;
        let id_token = tokens.id_token.ok_or_else(|| ProviderError::Invalid("no id_token".into()))?;
        let claims = self.check_id_token(&metadata, &id_token).await?;
        if claims.nonce.as_deref() != Some(nonce) {
            return Err(ProviderError::Invalid("the id_token's nonce is not this login's".into()));
        }
        let (mut email, mut verified) = (claims.email, claims.email_verified);
        if let (None, Some(endpoint), Some(access)) = (&email, &metadata.userinfo_endpoint, &tokens.access_token) {
            let info: UserInfo = {
                let response = self.http.get(endpoint).bearer_auth(access).send().await;
                let response = response.map_err(|e| ProviderError::Unavailable(e.to_string()))?;
                json(&bounded(response).await?, "userinfo")?
            };
            if info.sub != claims.sub {
                return Err(ProviderError::Invalid("userinfo is about another subject".into()));
            }
            (email, verified) = (info.email, info.email_verified);
        }
        Ok(ProviderClaims {
            provider: self.settings.name.clone(),
            issuer: self.settings.issuer.clone(),
            subject: claims.sub,
            email,
            email_verified: verified.unwrap_or(false),
        })
    }

    async fn check_id_token(&self, metadata: &Metadata, token: &str) -> Result<IdClaims, ProviderError> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| ProviderError::Invalid(e.to_string()))?;
        // Asymmetric signatures only: never `none`, never a MAC keyed by
        // something the client knows.
        let allowed = [
            Algorithm::RS256,
            Algorithm::RS384,
            Algorithm::RS512,
            Algorithm::PS256,
            Algorithm::PS384,
            Algorithm::PS512,
            Algorithm::ES256,
            Algorithm::ES384,
            Algorithm::EdDSA,
        ];
        if !allowed.contains(&header.alg) {
            return Err(ProviderError::Invalid(format!("id_token signed with {:?}", header.alg)));
        }
        let key = self.key(metadata, header.kid.as_deref()).await?;
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&self.settings.issuer]);
        validation.set_audience(&[&self.settings.client_id]);
        validation.set_required_spec_claims(&["iss", "aud", "exp", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = 60;
        let claims = jsonwebtoken::decode::<IdClaims>(token, &key, &validation)
            .map(|data| data.claims)
            .map_err(|e| ProviderError::Invalid(format!("id_token: {e}")))?;
        // OIDC Core §3.1.3.7: an authorized party, if named, is this client.
        if claims.azp.as_ref().is_some_and(|azp| *azp != self.settings.client_id) {
            return Err(ProviderError::Invalid("the id_token was issued to another party (azp)".into()));
        }
        Ok(claims)
    }

    /// The provider's key `kid`, fetching the key set again once when it
    /// is not known (the provider rotated).
    async fn key(&self, metadata: &Metadata, kid: Option<&str>) -> Result<DecodingKey, ProviderError> {
        for fresh in [false, true] {
            if fresh || self.keys.read().await.is_none() {
                let set: JwkSet = self.get_json(&metadata.jwks_uri).await?;
                *self.keys.write().await = Some(set);
            }
            let keys = self.keys.read().await;
            let found = keys.as_ref().and_then(|set| match kid {
                Some(kid) => set.find(kid),
                None if set.keys.len() == 1 => set.keys.first(),
                None => None,
            });
            if let Some(jwk) = found {
                return DecodingKey::from_jwk(jwk).map_err(|e| ProviderError::Invalid(format!("provider key: {e}")));
            }
        }
        Err(ProviderError::Invalid("the id_token names a key the provider does not publish".into()))
    }
}
