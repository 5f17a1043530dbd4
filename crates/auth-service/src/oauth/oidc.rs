//! OpenID Connect: discovery, and who signed in from the `id_token`
//! (OIDC Core §3.1.3.7) or, for what it leaves out, the userinfo endpoint.

use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Deserializer};

use super::provider::{Provider, ProviderError, ProviderUser, TokenResponse, secure_url};

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Metadata {
    issuer: String,
    pub authorization_endpoint: String,
    pub token_endpoint: String,
    jwks_uri: String,
    userinfo_endpoint: Option<String>,
    #[serde(default)]
    code_challenge_methods_supported: Option<Vec<String>>,
    #[serde(default)]
    pub authorization_response_iss_parameter_supported: bool,
}

/// How long a discovery document or key set is used before it is fetched
/// again (a key the provider withdrew stops being trusted within this).
const FRESH_FOR: Duration = Duration::from_secs(3600);
/// How long a failed discovery is answered from memory, so that a
/// provider that is down is not asked again by every attempt.
pub(crate) const FAILURE_HELD: Duration = Duration::from_secs(10);

#[derive(Debug, Deserialize)]
struct IdClaims {
    sub: String,
    /// One string or several (checked by jsonwebtoken; counted here).
    #[serde(default)]
    aud: serde_json::Value,
    nonce: Option<String>,
    azp: Option<String>,
    email: Option<String>,
    #[serde(default, deserialize_with = "flag")]
    email_verified: Option<bool>,
}

#[derive(Debug, Deserialize)]
struct UserInfo {
    sub: String,
    email: Option<String>,
    #[serde(default, deserialize_with = "flag")]
    email_verified: Option<bool>,
}

/// A boolean claim, also as the strings `"true"`/`"false"` some providers
/// (Amazon Cognito) send; anything else is no claim.
fn flag<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<bool>, D::Error> {
    Ok(match serde_json::Value::deserialize(deserializer)? {
        serde_json::Value::Bool(b) => Some(b),
        serde_json::Value::String(s) if s == "true" => Some(true),
        serde_json::Value::String(s) if s == "false" => Some(false),
        _ => None,
    })
}

/// Signatures an `id_token` may carry: asymmetric only, never `none`,
/// never a MAC keyed by something the client knows.
const ALGORITHMS: [Algorithm; 9] = [
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

impl Provider {
    /// The discovery document, fetched when first needed and again after
    /// [`FRESH_FOR`] (the last good one serves while the provider is down),
    /// and checked: the issuer it names is the one configured, its
    /// endpoints are `https` (or loopback), and it does PKCE with S256.
    pub(crate) async fn metadata(&self) -> Result<Metadata, ProviderError> {
        let known = self.metadata.read().await.clone();
        if let Some((metadata, at)) = &known
            && at.elapsed() < FRESH_FOR
        {
            return Ok(metadata.clone());
        }
        let failed = *self.discovery_failed.lock().unwrap_or_else(|e| e.into_inner());
        if failed.is_some_and(|at| at.elapsed() < FAILURE_HELD) {
            return match known {
                Some((metadata, _)) => Ok(metadata),
                None => Err(ProviderError::Unavailable("its discovery failed moments ago".into())),
            };
        }
        match self.discover().await {
            Ok(metadata) => {
                *self.metadata.write().await = Some((metadata.clone(), Instant::now()));
                Ok(metadata)
            }
            Err(error) => {
                *self.discovery_failed.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
                match known {
                    Some((metadata, _)) => {
                        tracing::warn!(provider = %self.settings.name, %error, "cannot refresh the discovery document; using the last one");
                        Ok(metadata)
                    }
                    None => Err(error),
                }
            }
        }
    }

    async fn discover(&self) -> Result<Metadata, ProviderError> {
        let url = format!("{}/.well-known/openid-configuration", self.settings.issuer.trim_end_matches('/'));
        let metadata: Metadata = self.get_json(self.http.get(&url), &url).await?;
        if metadata.issuer != self.settings.issuer {
            return Err(ProviderError::Invalid(format!("the discovery document names issuer {}", metadata.issuer)));
        }
        // Plain http only for a provider on this machine, and then only to
        // this machine: an https provider cannot point us at local services.
        let local = !self.settings.issuer.starts_with("https://");
        let safe = |url: &&String| secure_url(url) && (local || url.starts_with("https://"));
        let endpoints = [&metadata.authorization_endpoint, &metadata.token_endpoint, &metadata.jwks_uri];
        if let Some(bad) = endpoints.into_iter().chain(&metadata.userinfo_endpoint).find(|url| !safe(url)) {
            return Err(ProviderError::Invalid(format!("the discovery document names a plain-http endpoint {bad}")));
        }
        if metadata.code_challenge_methods_supported.as_ref().is_some_and(|m| !m.iter().any(|m| m == "S256")) {
            return Err(ProviderError::Invalid("the provider does not support PKCE with S256".into()));
        }
        Ok(metadata)
    }

    /// Who signed in: the `id_token`'s signature by the provider's keys,
    /// `iss`, `aud`, `exp`, `azp` and `nonce`; the email from the token or,
    /// when it has none, the userinfo endpoint.
    pub(crate) async fn oidc_user(
        &self,
        metadata: &Metadata,
        tokens: TokenResponse,
        nonce: &str,
    ) -> Result<ProviderUser, ProviderError> {
        let id_token = tokens.id_token.ok_or_else(|| ProviderError::Invalid("no id_token".into()))?;
        let claims = self.check_id_token(metadata, &id_token).await?;
        if claims.nonce.as_deref() != Some(nonce) {
            return Err(ProviderError::Invalid("the id_token's nonce is not this login's".into()));
        }
        let (mut email, mut verified) = (claims.email, claims.email_verified);
        if let (None, Some(endpoint), Some(access)) = (&email, &metadata.userinfo_endpoint, &tokens.access_token) {
            let info: UserInfo = self.get_json(self.http.get(endpoint).bearer_auth(access), "userinfo").await?;
            if info.sub != claims.sub {
                return Err(ProviderError::Invalid("userinfo is about another subject".into()));
            }
            (email, verified) = (info.email, info.email_verified);
        }
        Ok(ProviderUser { subject: claims.sub, email, email_verified: verified.unwrap_or(false) })
    }

    async fn check_id_token(&self, metadata: &Metadata, token: &str) -> Result<IdClaims, ProviderError> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| ProviderError::Invalid(e.to_string()))?;
        if !ALGORITHMS.contains(&header.alg) {
            return Err(ProviderError::Invalid(format!("id_token signed with {:?}", header.alg)));
        }
        let key = self.key(metadata, header.kid.as_deref(), header.alg).await?;
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&self.settings.issuer]);
        validation.set_audience(&[&self.settings.client_id]);
        validation.set_required_spec_claims(&["iss", "aud", "exp", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = 60;
        let claims = jsonwebtoken::decode::<IdClaims>(token, &key, &validation)
            .map(|data| data.claims)
            .map_err(|e| ProviderError::Invalid(format!("id_token: {e}")))?;
        // OIDC Core §3.1.3.7: an authorized party, if named, is this client;
        // a token for several audiences must name it.
        if claims.azp.as_ref().is_some_and(|azp| *azp != self.settings.client_id) {
            return Err(ProviderError::Invalid("the id_token was issued to another party (azp)".into()));
        }
        if claims.aud.as_array().is_some_and(|all| all.len() > 1) && claims.azp.is_none() {
            return Err(ProviderError::Invalid("the id_token has several audiences and no azp".into()));
        }
        Ok(claims)
    }

    /// The provider's key `kid` for `alg`, fetching the key set again once
    /// when it is not known (the provider rotated) or is older than
    /// [`FRESH_FOR`] (the provider withdrew one).
    async fn key(&self, metadata: &Metadata, kid: Option<&str>, alg: Algorithm) -> Result<DecodingKey, ProviderError> {
        for fresh in [false, true] {
            let stale = self.keys.read().await.as_ref().is_none_or(|(_, at)| at.elapsed() >= FRESH_FOR);
            if fresh || stale {
                let set: JwkSet = self.get_json(self.http.get(&metadata.jwks_uri), "the provider's keys").await?;
                *self.keys.write().await = Some((set, Instant::now()));
            }
            let keys = self.keys.read().await;
            let found = keys.as_ref().and_then(|(set, _)| match kid {
                Some(kid) => set.find(kid),
                None if set.keys.len() == 1 => set.keys.first(),
                None => None,
            });
            if let Some(jwk) = found {
                // A key published for encryption, or for another algorithm, signs nothing here.
                let common = &jwk.common;
                let wrong_use = common.public_key_use.as_ref().is_some_and(|u| *u != PublicKeyUse::Signature);
                let wrong_alg = common.key_algorithm.is_some_and(|a| a.to_string() != format!("{alg:?}"));
                if wrong_use || wrong_alg {
                    return Err(ProviderError::Invalid(
                        "the id_token's key is not published for this signature".into(),
                    ));
                }
                return DecodingKey::from_jwk(jwk).map_err(|e| ProviderError::Invalid(format!("provider key: {e}")));
            }
        }
        Err(ProviderError::Invalid("the id_token names a key the provider does not publish".into()))
    }
}
