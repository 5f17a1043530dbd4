//! Login throttling (NIST 800-63B-4 §3.2.2, ASVS 5.0 V6.3.1) and per-client
//! token buckets.
//!
//! Per account: every attempt is counted *before* the password is checked,
//! in one atomic statement that also refuses it while the account waits, so
//! parallel guesses cannot slip past the limit; a success clears the count.
//! After [`AttemptPolicy::free_failures`] consecutive failures each attempt
//! waits, doubling from one second up to [`AttemptPolicy::max_delay`]; at
//! [`AttemptPolicy::ceiling`] only a password reset opens the account
//! again. Counters are keyed by a hash of the normalised address, so an
//! address without an account is throttled exactly like one with.
//!
//! Per client address (an IPv6 address counts per /64): a token bucket per
//! endpoint, shared by every process on the database.

use std::net::IpAddr;

use time::{Duration, OffsetDateTime};

use crate::{Email, SecretHash, StoreError, Throttle};

#[derive(Debug, thiserror::Error)]
pub enum ThrottleError {
    #[error("too many requests; try again later")]
    Throttled { retry_after: Duration },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A token bucket: `burst` requests at once, then `per_minute`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bucket {
    pub burst: u32,
    pub per_minute: u32,
}

impl Bucket {
    /// Tokens added per second.
    pub fn per_second(self) -> f64 {
        f64::from(self.per_minute) / 60.0
    }

    /// A take from a bucket that held `tokens` `elapsed` ago (full when
    /// new): the tokens left to store, or how long to wait (nothing taken).
    /// The stores keep the arithmetic here, once.
    pub fn take(self, held: Option<(f64, Duration)>) -> Result<f64, Duration> {
        let tokens = self.refilled(held);
        if tokens < 1.0 { Err(self.wait_for_token(tokens)) } else { Ok(tokens - 1.0) }
    }

    fn refilled(self, held: Option<(f64, Duration)>) -> f64 {
        let burst = f64::from(self.burst);
        match held {
            Some((tokens, elapsed)) => (tokens + elapsed.as_seconds_f64().max(0.0) * self.per_second()).min(burst),
            None => burst,
        }
    }

    /// How long until a bucket holding `tokens` holds one (at least a second).
    fn wait_for_token(self, tokens: f64) -> Duration {
        let per_second = self.per_second();
        let seconds = if per_second > 0.0 { ((1.0 - tokens) / per_second).ceil() } else { 3600.0 };
        Duration::seconds_f64(seconds.clamp(1.0, 86_400.0))
    }
}

/// Consecutive failed logins per account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttemptPolicy {
    /// Failures allowed before any wait (5).
    pub free_failures: u32,
    /// The longest wait between attempts (15 minutes).
    pub max_delay: Duration,
    /// Failures after which only a password reset opens the account (100,
    /// NIST's upper bound).
    pub ceiling: u32,
}

impl Default for AttemptPolicy {
    fn default() -> Self {
        Self { free_failures: 5, max_delay: Duration::minutes(15), ceiling: 100 }
    }
}

impl AttemptPolicy {
    /// An attempt on a count of `failures` whose wait runs until
    /// `blocked_until`, at `now`: the count and cut-off to store, or how
    /// long it must wait (nothing counted). With no wait due yet the
    /// cut-off stays, so a claim that read the clock earlier but took the
    /// lock later is not refused by this one. The stores keep this here, once.
    pub fn claim(
        &self,
        failures: u32,
        blocked_until: OffsetDateTime,
        now: OffsetDateTime,
    ) -> Result<(u32, OffsetDateTime), Duration> {
        if blocked_until > now {
            return Err(blocked_until - now);
        }
        let failures = failures.saturating_add(1);
        let delay = self.delay_after(failures);
        Ok((failures, if delay.is_zero() { blocked_until } else { now + delay }))
    }

    /// The wait after `failures` consecutive failures; zero below the free
    /// ones, [`Duration::MAX`]-like (a century) at the ceiling.
    pub fn delay_after(&self, failures: u32) -> Duration {
        if failures >= self.ceiling {
            return Duration::days(36_500);
        }
        if failures < self.free_failures {
            return Duration::ZERO;
        }
        let doublings = (failures - self.free_failures).min(30);
        Duration::seconds(1_i64 << doublings).min(self.max_delay)
    }
}

/// The endpoints with a per-client bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rate {
    Login,
    Register,
    Forgot,
    Refresh,
}

impl Rate {
    pub fn name(self) -> &'static str {
        match self {
            Self::Login => "login",
            Self::Register => "register",
            Self::Forgot => "forgot",
            Self::Refresh => "refresh",
        }
    }
}

/// Every limit, as configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub login: Bucket,
    pub register: Bucket,
    pub forgot: Bucket,
    pub refresh: Bucket,
    pub attempts: AttemptPolicy,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            login: Bucket { burst: 20, per_minute: 10 },
            register: Bucket { burst: 10, per_minute: 2 },
            forgot: Bucket { burst: 10, per_minute: 2 },
            refresh: Bucket { burst: 60, per_minute: 30 },
            attempts: AttemptPolicy::default(),
        }
    }
}

impl Limits {
    pub fn bucket(&self, rate: Rate) -> Bucket {
        match rate {
            Rate::Login => self.login,
            Rate::Register => self.register,
            Rate::Forgot => self.forgot,
            Rate::Refresh => self.refresh,
        }
    }
}

/// The key a client address is counted under: the address, or for IPv6
/// its /64 (one subscriber's usual allocation); unparsable text as given.
pub fn client_key(ip: &str) -> String {
    match ip.parse::<IpAddr>() {
        Ok(IpAddr::V6(v6)) if v6.to_ipv4_mapped().is_none() => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
        Ok(IpAddr::V6(v6)) => v6.to_ipv4_mapped().map(|v4| v4.to_string()).unwrap_or_default(),
        Ok(IpAddr::V4(v4)) => v4.to_string(),
        Err(_) => ip.to_owned(),
    }
}

/// Counts a password attempt on `email`'s account (login, change, deletion)
/// before the password is checked; `Some(wait)` while it must wait. At the
/// ceiling the wait is until a reset; it reads as the longest ordinary
/// one, so nothing tells the two apart.
pub async fn claim_attempt(
    throttle: &dyn Throttle,
    email: &str,
    policy: &AttemptPolicy,
    now: OffsetDateTime,
) -> Result<Option<Duration>, StoreError> {
    let wait = throttle.claim_attempt(&account_key(email), policy, now).await?;
    Ok(wait.map(|wait| wait.min(policy.max_delay)))
}

/// The key an address's login attempts are counted under: a hash of the
/// form accounts are stored and looked up by ([`Email::parse`]), so two
/// addresses are one count exactly when they are one account (a case
/// variant of the local part is another account, and must not clear this
/// one's count); the table holds no addresses, and text that is no address
/// counts as itself.
pub fn account_key(email: &str) -> String {
    let stored = Email::parse(email).map(|e| e.as_str().to_owned()).unwrap_or_else(|_| email.to_owned());
    format!("login:{}", SecretHash::of(&stored).as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_doubles_after_the_free_failures_up_to_the_cap_and_the_ceiling_needs_a_reset() {
        let p = AttemptPolicy::default();
        let waits: Vec<i64> = (0..=16).map(|n| p.delay_after(n).whole_seconds()).collect();
        assert_eq!(waits, [0, 0, 0, 0, 0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 900, 900]);
        assert_eq!(p.delay_after(99), Duration::minutes(15));
        assert!(p.delay_after(100) > Duration::days(365));
        // ASVS 4.0.3 V2.2.1: at most 100 failures an hour on one account.
        let mut at = Duration::ZERO;
        let mut failures = 0;
        while at <= Duration::hours(1) {
            failures += 1;
            at += p.delay_after(failures);
        }
        assert!(failures < 30, "{failures} failures in the first hour");
    }

    #[test]
    fn ipv6_clients_count_per_64_and_mapped_ipv4_as_ipv4() {
        assert_eq!(client_key("2001:db8:1:2:aaaa::1"), "2001:db8:1:2::/64");
        assert_eq!(client_key("2001:db8:1:2:bbbb::9"), client_key("2001:db8:1:2:aaaa::1"));
        assert_ne!(client_key("2001:db8:1:3::1"), client_key("2001:db8:1:2::1"));
        assert_eq!(client_key("::ffff:192.0.2.7"), "192.0.2.7");
        assert_eq!(client_key("192.0.2.7"), "192.0.2.7");
        assert_eq!(client_key(""), "");
    }

    #[test]
    fn an_address_counts_as_the_account_it_names() {
        assert_eq!(account_key(" alice@Example.COM "), account_key("alice@example.com"), "as looked up");
        assert_ne!(account_key("Alice@example.com"), account_key("alice@example.com"), "another account");
        assert_ne!(account_key("alice@example.com"), account_key("bob@example.com"));
        assert!(!account_key("alice@example.com").contains("alice"));
    }
}
