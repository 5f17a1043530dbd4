//! Email addresses: one address, one form. Trimmed; Unicode-normalised
//! (NFC, so a composed and a decomposed `é` are one address); the domain
//! IDNA-mapped (UTS 46) to its lower-case ASCII form; characters that
//! render as nothing or reorder text refused.

use std::fmt;

use unicode_normalization::UnicodeNormalization as _;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a valid email address")]
pub struct InvalidEmail;

/// A normalised email address: two inputs that are the same address to a
/// reader (surrounding whitespace, the domain's case or Unicode form, the
/// local part's composition) are the same `Email`. The local part's case
/// is kept: mail servers may tell `Alice` from `alice`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Email(String);

/// Characters no address needs and that hide what it says: zero-width
/// ones, and the controls that reorder text (a right-to-left override can
/// make `moc.elpmaxe@eve` read as `eve@example.com`).
fn invisible(c: char) -> bool {
    matches!(
        c,
        '\u{200B}'..='\u{200F}' // zero-width space, joiners, LRM, RLM
            | '\u{202A}'..='\u{202E}' // embeddings and overrides
            | '\u{2060}'..='\u{2064}' // word joiner, invisible operators
            | '\u{2066}'..='\u{2069}' // isolates
            | '\u{061C}' // Arabic letter mark
            | '\u{00AD}' // soft hyphen
            | '\u{180E}' // Mongolian vowel separator
            | '\u{FEFF}' // byte-order mark
    ) || c.is_control()
}

impl Email {
    /// Local part up to 64 bytes, whole address up to 254 (RFC 5321), exactly one
    /// `@`, no whitespace, control or invisible characters, a dotted domain
    /// that IDNA maps to sane ASCII labels.
    pub fn parse(raw: &str) -> Result<Self, InvalidEmail> {
        let trimmed = raw.trim();
        if trimmed.chars().any(invisible) {
            return Err(InvalidEmail);
        }
        let composed: String = trimmed.nfc().collect();
        let (local, domain) = composed.rsplit_once('@').ok_or(InvalidEmail)?;
        let local_ok = !local.is_empty()
            && local.len() <= 64
            && !local.contains('@')
            && local.chars().all(|c| !c.is_whitespace() && c != '"');
        // UTS 46: case-folded, mapped and punycoded ("Bücher.DE" → "xn--bcher-kva.de").
        let domain = idna::domain_to_ascii(domain).map_err(|_| InvalidEmail)?;
        let domain_ok = domain.len() <= 253
            && domain.contains('.')
            && domain.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
            });
        let email = format!("{local}@{domain}");
        if local_ok && domain_ok && email.len() <= 254 { Ok(Self(email)) } else { Err(InvalidEmail) }
    }

    /// An address as a store holds it: written through [`Email::parse`],
    /// perhaps under older rules, and not checked again (a stored account
    /// stays reachable by its id whatever the rules became).
    pub fn stored(raw: String) -> Self {
        Self(raw)
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
    fn unicode_domains_are_accepted_in_their_ascii_form() {
        let mapped = Email::parse("jürgen@Bücher.DE").unwrap();
        assert_eq!(mapped.as_str(), "jürgen@xn--bcher-kva.de");
        assert_eq!(mapped, Email::parse("jürgen@xn--bcher-kva.de").unwrap());
    }

    #[test]
    fn a_composed_and_a_decomposed_address_are_one() {
        let composed = Email::parse("r\u{e9}my@example.com").unwrap();
        let decomposed = Email::parse("re\u{301}my@example.com").unwrap();
        assert_eq!(composed, decomposed);
        assert_eq!(composed.as_str(), "r\u{e9}my@example.com");
    }

    #[test]
    fn invisible_and_reordering_characters_are_refused() {
        for bad in [
            "ali\u{200B}ce@example.com",
            "alice\u{200D}@example.com",
            "\u{202E}moc.elpmaxe@eve",
            "eve\u{202E}@example.com",
            "alice@exa\u{2066}mple.com",
            "\u{FEFF}alice@example.com",
            "al\u{AD}ice@example.com",
            "alice\u{7}@example.com",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
