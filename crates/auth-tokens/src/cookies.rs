//! The names of the session cookies (DESIGN §4) and parsing of `Cookie`
//! headers, shared by the auth-service and the gateway.

pub const ACCESS: &str = "__Host-access_token";
pub const REFRESH: &str = "__Host-refresh_token";
pub const CSRF: &str = "__Host-csrf_token";
pub const ALL: [&str; 3] = [ACCESS, REFRESH, CSRF];

/// The value of cookie `name` across the request's `Cookie` header values.
/// Only the exact name counts: an unprefixed look-alike is ignored.
pub fn find<'a>(headers: impl IntoIterator<Item = &'a str>, name: &str) -> Option<&'a str> {
    headers
        .into_iter()
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.trim_matches('"'))
        .filter(|v| !v.is_empty())
}

/// A `Cookie` header value without the cookies named in `names`; `None` when
/// nothing is left.
pub fn without(header: &str, names: &[&str]) -> Option<String> {
    let mut kept = String::new();
    for pair in header.split(';').map(str::trim).filter(|pair| !pair.is_empty()) {
        if names.contains(&pair.split_once('=').map_or(pair, |(name, _)| name)) {
            continue;
        }
        if !kept.is_empty() {
            kept.push_str("; ");
        }
        kept.push_str(pair);
    }
    (!kept.is_empty()).then_some(kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_name_is_found() {
        let headers = ["csrf_token=evil; __Host-csrf_token=good", "__Host-access_token=jwt"];
        assert_eq!(find(headers, CSRF), Some("good"));
        assert_eq!(find(headers, ACCESS), Some("jwt"));
        assert_eq!(find(headers, REFRESH), None);
        assert_eq!(find(["__Host-access_token="], ACCESS), None);
    }

    #[test]
    fn our_cookies_are_removed_and_the_rest_kept() {
        let header = "theme=dark; __Host-access_token=jwt; __Host-csrf_token=x; lang=en";
        assert_eq!(without(header, &ALL).as_deref(), Some("theme=dark; lang=en"));
        assert_eq!(without("__Host-refresh_token=r", &ALL), None);
    }
}
