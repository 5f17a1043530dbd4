//! The hosted pages: sign in, sign up, forgotten password, reset, email
//! confirmation, the account, and a home page. Plain HTML and CSS with one
//! small script, built into the binary (`pages/`); the script calls the JSON
//! API, so the pages hold no state and no secret. Served with a strict
//! Content-Security-Policy (script and style from this origin only; see
//! `guard`) and `Cache-Control: no-store`.

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use auth_core::mail::escape_html as escape;

use crate::AppState;

const LAYOUT: &str = include_str!("../pages/layout.html");
pub const CSS: &str = include_str!("../pages/gatehouse.css");
pub const SCRIPT: &str = include_str!("../pages/gatehouse.js");

/// Path, `data-page` name, title, body.
const PAGES: [(&str, &str, &str, &str); 7] = [
    ("/", "home", "Welcome", include_str!("../pages/home.html")),
    ("/login", "login", "Sign in", include_str!("../pages/login.html")),
    ("/register", "register", "Create an account", include_str!("../pages/register.html")),
    ("/forgot-password", "forgot", "Forgot your password?", include_str!("../pages/forgot.html")),
    ("/reset-password", "reset", "Set a new password", include_str!("../pages/reset.html")),
    ("/verify-email", "verify", "Confirm your email address", include_str!("../pages/verify.html")),
    ("/account", "account", "Your account", include_str!("../pages/account.html")),
];

/// The paths the pages and their assets are served at (for the gateway's
/// route table).
pub const PATHS: [&str; 8] =
    ["/", "/login", "/register", "/forgot-password", "/reset-password", "/verify-email", "/account", "/assets/"];

pub fn router() -> Router<AppState> {
    let mut router = Router::new()
        .route("/assets/gatehouse.css", get(|| async { asset(CSS, "text/css; charset=utf-8") }))
        .route("/assets/gatehouse.js", get(|| async { asset(SCRIPT, "text/javascript; charset=utf-8") }));
    for (path, page, title, body) in PAGES {
        router = router
            .route(path, get(move |State(state): State<AppState>| async move { render(&state, page, title, body) }));
    }
    router
}

fn asset(text: &'static str, content_type: &'static str) -> Response {
    ([(header::CONTENT_TYPE, HeaderValue::from_static(content_type))], text).into_response()
}

fn render(state: &AppState, page: &str, title: &str, body: &str) -> Response {
    let names: Vec<&String> = state.oauth().providers.keys().collect();
    let body =
        body.replace("{{providers}}", &provider_buttons(&names)).replace("{{link_providers}}", &link_buttons(&names));
    let html = LAYOUT.replace("{{page}}", page).replace("{{title}}", &escape(title)).replace("{{body}}", &body);
    ([(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"))], html).into_response()
}

/// "Continue with …" links, one per configured provider.
fn provider_buttons(names: &[&String]) -> String {
    if names.is_empty() {
        return String::new();
    }
    let links: String = names
        .iter()
        .map(|name| {
            let name = escape(name);
            format!(
                "<a class=\"button secondary\" href=\"/auth/oauth/{name}/start?return_to=/\">Continue with {}</a>\n",
                label(&name)
            )
        })
        .collect();
    format!("<div class=\"providers\" role=\"group\" aria-label=\"Other ways to sign in\">\n{links}</div>")
}

/// "Link …" buttons for the account page; the script starts each link.
fn link_buttons(names: &[&String]) -> String {
    names
        .iter()
        .map(|name| {
            let name = escape(name);
            format!(
                "<button type=\"button\" class=\"secondary\" data-link-provider=\"{name}\">Link {}</button>\n",
                label(&name)
            )
        })
        .collect()
}

/// A provider's configured name as people write it: `github` → GitHub.
fn label(name: &str) -> String {
    match name {
        "github" => "GitHub".to_owned(),
        "google" => "Google".to_owned(),
        "facebook" => "Facebook".to_owned(),
        other => {
            let mut chars = other.chars();
            chars.next().map(|first| first.to_uppercase().chain(chars).collect()).unwrap_or_default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_names_are_escaped_and_labelled() {
        let evil = "x\"><script>".to_owned();
        let html = provider_buttons(&[&"github".to_owned(), &evil]);
        assert!(html.contains("Continue with GitHub"), "{html}");
        assert!(!html.contains("<script>"), "{html}");
        assert!(html.contains("x&quot;&gt;&lt;script&gt;"), "{html}");
    }

    #[test]
    fn every_page_has_a_slot_filled_and_no_inline_script() {
        let handler = |html: &str| {
            html.match_indices(" on").any(|(at, _)| {
                let rest = &html[at + 3..];
                let name = rest.bytes().take_while(u8::is_ascii_lowercase).count();
                name > 0 && rest.as_bytes().get(name) == Some(&b'=')
            })
        };
        for (_, _, _, body) in PAGES {
            assert!(!body.contains("<script"), "pages load the one script file");
            assert!(!handler(body), "no inline event handlers: {body}");
        }
        assert!(handler("<a onclick=\"x\">"), "the check finds one");
        assert!(LAYOUT.contains("src=\"/assets/gatehouse.js\""));
    }
}
