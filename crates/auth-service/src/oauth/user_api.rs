//! Who signed in, from the user APIs of OAuth 2.0 providers that are not
//! OpenID providers, as they document them.

use hmac::{Hmac, Mac as _};
use serde::Deserialize;

use super::provider::{Endpoints, Provider, ProviderError, ProviderUser};

#[derive(Debug, Deserialize)]
struct GitHubUser {
    /// Stable; `login` can be renamed and taken by someone else.
    id: u64,
}

#[derive(Debug, Deserialize)]
struct GitHubEmail {
    email: String,
    #[serde(default)]
    primary: bool,
    #[serde(default)]
    verified: bool,
}

#[derive(Debug, Deserialize)]
struct FacebookUser {
    /// The user's id for this app.
    id: String,
    email: Option<String>,
}

impl Provider {
    /// GitHub: `GET /user` for the id, `GET /user/emails` for the primary
    /// address and whether GitHub verified it
    /// (docs.github.com/rest/users/users, /rest/users/emails).
    pub(crate) async fn github_user(&self, api: &Endpoints, token: &str) -> Result<ProviderUser, ProviderError> {
        let get = |path: &str| {
            self.http
                .get(format!("{}{path}", api.api))
                .bearer_auth(token)
                .header(reqwest::header::ACCEPT, "application/vnd.github+json")
                .header("X-GitHub-Api-Version", "2022-11-28")
        };
        let user: GitHubUser = self.get_json(get("/user"), "GitHub's /user").await?;
        // 30 a page by default; the primary may be anywhere among them.
        let emails: Vec<GitHubEmail> = self.get_json(get("/user/emails?per_page=100"), "GitHub's /user/emails").await?;
        let primary = emails.into_iter().find(|e| e.primary);
        Ok(ProviderUser {
            subject: user.id.to_string(),
            email_verified: primary.as_ref().is_some_and(|e| e.verified),
            email: primary.map(|e| e.email),
        })
    }

    /// Facebook: `GET /me?fields=id,email,name` with the `appsecret_proof`
    /// Facebook asks servers to send (developers.facebook.com/docs/graph-api/
    /// securing-requests). Facebook gives out only a confirmed address, and
    /// none when the user has none, so an address it gives is verified.
    pub(crate) async fn facebook_user(&self, api: &Endpoints, token: &str) -> Result<ProviderUser, ProviderError> {
        let proof = appsecret_proof(&self.settings.client_secret, token);
        let url = format!("{}/me?fields=id,email,name&appsecret_proof={proof}", api.api);
        let user: FacebookUser = self.get_json(self.http.get(url).bearer_auth(token), "Facebook's /me").await?;
        if user.id.is_empty() {
            return Err(ProviderError::Invalid("Facebook's /me has no id".into()));
        }
        Ok(ProviderUser { subject: user.id, email_verified: user.email.is_some(), email: user.email })
    }
}

/// HMAC-SHA256 of the access token keyed by the app secret, in hex.
pub(crate) fn appsecret_proof(app_secret: &str, token: &str) -> String {
    #[allow(clippy::expect_used)] // HMAC accepts keys of any length
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(app_secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(token.as_bytes());
    mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_appsecret_proof_is_the_hmac_facebook_documents() {
        // echo -n token | openssl dgst -sha256 -hmac secret
        assert_eq!(
            super::appsecret_proof("secret", "token"),
            "e941110e3d2bfe82621f0e3e1434730d7305d106c5f68c87165d0b27a4611a4a"
        );
    }
}
