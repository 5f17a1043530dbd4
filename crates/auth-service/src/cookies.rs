//! The three session cookies (DESIGN §4): names, attributes, parsing.

use axum::http::{HeaderMap, HeaderValue, header};

pub use auth_tokens::cookies::{ACCESS, CSRF, REFRESH};

/// `Set-Cookie` for one of our cookies. `__Host-` demands `Secure`, `Path=/`
/// and no `Domain`; browsers treat http://127.0.0.1 and localhost as secure.
pub fn set(name: &str, value: &str, max_age: i64, http_only: bool) -> HeaderValue {
    let http_only = if http_only { "; HttpOnly" } else { "" };
    let text = format!("{name}={value}; Max-Age={max_age}; Path=/; Secure{http_only}; SameSite=Lax");
    // Our values are base64url and JWTs: always valid header text.
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// `Set-Cookie` that deletes the cookie.
pub fn clear(name: &str, http_only: bool) -> HeaderValue {
    set(name, "", 0, http_only)
}

/// All three cookies cleared, as logout and deletion send them.
pub fn clear_all() -> [HeaderValue; 3] {
    [clear(ACCESS, true), clear(REFRESH, true), clear(CSRF, false)]
}

/// The value of cookie `name` from the request's `Cookie` headers.
pub fn get<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    auth_tokens::cookies::find(headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()), name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_carry_exactly_the_host_prefix_attributes() {
        let c = set(ACCESS, "abc", 600, true);
        assert_eq!(c, "__Host-access_token=abc; Max-Age=600; Path=/; Secure; HttpOnly; SameSite=Lax");
        let c = set(CSRF, "x.y", 60, false);
        assert_eq!(c, "__Host-csrf_token=x.y; Max-Age=60; Path=/; Secure; SameSite=Lax");
        assert_eq!(clear(REFRESH, true), "__Host-refresh_token=; Max-Age=0; Path=/; Secure; HttpOnly; SameSite=Lax");
    }

    #[test]
    fn only_the_exact_name_is_read() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("csrf_token=evil; __Host-csrf_token=good"));
        h.append(header::COOKIE, HeaderValue::from_static("__Host-access_token=jwt"));
        assert_eq!(get(&h, CSRF), Some("good"));
        assert_eq!(get(&h, ACCESS), Some("jwt"));
        assert_eq!(get(&h, REFRESH), None);
    }
}
