//! OpenID Connect: discovery, and who signed in from the `id_token`
//! (OIDC Core §3.1.3.7) or, for what it leaves out, the userinfo endpoint.

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

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
    /// The discovery document, fetched once and checked: the issuer it
    /// names is the one configured, its endpoints are `https` (or
    /// loopback), and it does PKCE with S256.
    pub(crate) async fn metadata(&self) -> Result<Metadata, ProviderError> {
        if let Some(known) = self.metadata.read().await.clone() {
            return Ok(known);
        }
        let url = format!("{}/.well-known/openid-configuration", self.settings.issuer.trim_end_matches('/'));
        let metadata: Metadata = self.get_json(self.http.get(&url), &url).await?;
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
                let set: JwkSet = self.get_json(self.http.get(&metadata.jwks_uri), "the provider's keys").await?;
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
