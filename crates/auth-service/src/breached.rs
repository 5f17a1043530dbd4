//! The optional breached-password check: a range query in the format of
//! Have I Been Pwned's Pwned Passwords API (k-anonymity). Only the first
//! five hex digits of the password's SHA-1 leave the process; the answer
//! lists the suffixes in that range, and the match is made here.

use std::time::Duration;

use auth_core::Password;
use auth_core::password::BreachedPasswords;
use sha1::{Digest as _, Sha1};

/// How long one range query may take before the check gives up (and the
/// password is accepted, with a log line).
pub const TIMEOUT: Duration = Duration::from_secs(2);

pub struct RangeCheck {
    /// e.g. `https://api.pwnedpasswords.com/range`; the prefix is appended.
    url: String,
    client: reqwest::Client,
}

impl RangeCheck {
    pub fn new(url: &str) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Self { url: url.trim_end_matches('/').to_owned(), client })
    }
}

/// The SHA-1 of `password` in upper-case hex, split after five digits.
fn split_digest(password: &Password) -> (String, String) {
    let digest = Sha1::digest(password.expose().as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02X}")).collect();
    let (prefix, suffix) = hex.split_at(5);
    (prefix.to_owned(), suffix.to_owned())
}

/// Whether `body` (lines `SUFFIX:COUNT`) lists `suffix` with a count above
/// zero (padding lines have count 0).
fn listed(body: &str, suffix: &str) -> bool {
    body.lines()
        .filter_map(|line| line.trim().split_once(':'))
        .any(|(s, count)| s.eq_ignore_ascii_case(suffix) && count.trim().parse::<u64>().is_ok_and(|n| n > 0))
}

#[async_trait::async_trait]
impl BreachedPasswords for RangeCheck {
    async fn is_breached(&self, password: &Password) -> Option<bool> {
        let (prefix, suffix) = split_digest(password);
        let answer = self.client.get(format!("{}/{prefix}", self.url)).header("Add-Padding", "true").send().await;
        let answer = match answer {
            Ok(answer) if answer.status().is_success() => answer,
            Ok(answer) => {
                tracing::warn!(status = %answer.status(), "the breached-password range query was refused");
                return None;
            }
            Err(error) => {
                tracing::warn!(%error, "the breached-password range query failed");
                return None;
            }
        };
        match answer.text().await {
            Ok(body) => Some(listed(&body, &suffix)),
            Err(error) => {
                tracing::warn!(%error, "the breached-password range answer could not be read");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_digest_splits_after_five_hex_digits_as_the_api_expects() {
        // SHA-1("password") = 5BAA61E4C9B93F3F0682250B6CF8331B7EE68FD8
        let (prefix, suffix) = split_digest(&Password::for_login("password"));
        assert_eq!((prefix.as_str(), suffix.as_str()), ("5BAA6", "1E4C9B93F3F0682250B6CF8331B7EE68FD8"));
    }

    #[test]
    fn a_suffix_counts_only_with_a_count_above_zero() {
        let body = "0018A45C4D1DEF81644B54AB7F969B88D65:1\r\n1E4C9B93F3F0682250B6CF8331B7EE68FD8:0\r\n";
        assert!(listed(body, "0018A45C4D1DEF81644B54AB7F969B88D65"));
        assert!(!listed(body, "1E4C9B93F3F0682250B6CF8331B7EE68FD8"), "padding");
        assert!(!listed(body, "FFFFF"));
        assert!(!listed("garbage", "FFFFF"));
    }
}
