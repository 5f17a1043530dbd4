//! Email addresses: trimmed, domain lower-cased, shape-checked.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a valid email address")]
pub struct InvalidEmail;

/// A normalised email address. Two addresses differing only in the case of
/// the domain or in surrounding whitespace are the same `Email`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Email(String);

impl Email {
    /// Local part up to 64 bytes, whole address up to 254 (RFC 5321), exactly one
    /// `@`, no whitespace or control characters, a dotted domain of sane labels.
    pub fn parse(raw: &str) -> Result<Self, InvalidEmail> {
        let trimmed = raw.trim();
        let (local, domain) = trimmed.rsplit_once('@').ok_or(InvalidEmail)?;
        let local_ok = !local.is_empty()
            && local.len() <= 64
            && !local.contains('@')
            && local.chars().all(|c| !c.is_whitespace() && !c.is_control() && c != '"');
        let domain = domain.to_lowercase();
        let domain_ok = domain.len() <= 253
            && domain.contains('.')
            && domain.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label.chars().all(|c| c.is_alphanumeric() || c == '-')
            });
        let email = format!("{local}@{domain}");
        if local_ok && domain_ok && email.len() <= 254 { Ok(Self(email)) } else { Err(InvalidEmail) }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_domain_is_lower_cased_and_whitespace_trimmed() {
        let a = Email::parse("  Alice@Example.COM ").unwrap();
        assert_eq!(a.as_str(), "Alice@example.com");
        assert_eq!(a, Email::parse("Alice@example.com").unwrap());
        assert_ne!(a, Email::parse("alice@example.com").unwrap());
    }

    #[test]
    fn malformed_addresses_are_refused() {
        for bad in [
            "",
            "alice",
            "@example.com",
            "alice@",
            "alice@localhost",
            "a b@example.com",
            "alice@exa mple.com",
            "alice@@example.com",
            "alice@-example.com",
            "alice@example..com",
            "\"a\"@example.com",
            "al\u{0}ice@example.com",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad:?} accepted");
        }
        let long_local = format!("{}@example.com", "a".repeat(65));
        assert!(Email::parse(&long_local).is_err());
    }

    #[test]
    fn unicode_domains_are_accepted() {
        assert!(Email::parse("jürgen@bücher.de").is_ok());
    }
}
