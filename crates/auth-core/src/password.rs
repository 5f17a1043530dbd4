//! The password policy of NIST 800-63B-4 §3.1.1.2: NFC, length in code points,
//! no composition rules, a whole-string blocklist, the reason given on refusal.

use std::collections::HashSet;
use std::sync::LazyLock;

use secrecy::{ExposeSecret, SecretString};
use unicode_normalization::UnicodeNormalization;

/// 30,000 common passwords (zxcvbn's list, MIT) and a few long ones, lower-case.
static COMMON: LazyLock<HashSet<&'static str>> =
    LazyLock::new(|| include_str!("../data/common-passwords.txt").lines().filter(|l| !l.is_empty()).collect());

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct PasswordPolicy {
    /// Minimum length in Unicode code points (15 for password-only accounts).
    pub min_chars: usize,
    /// Maximum length in Unicode code points.
    pub max_chars: usize,
}

impl Default for PasswordPolicy {
    fn default() -> Self {
        Self { min_chars: 15, max_chars: 128 }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PasswordError {
    #[error("the password must be at least {0} characters long")]
    TooShort(usize),
    #[error("the password must be at most {0} characters long")]
    TooLong(usize),
    #[error("the password is too common; choose another one")]
    TooCommon,
    /// Found in a breach corpus (the optional range check).
    #[error("the password appears in known data breaches; choose another one")]
    Breached,
}

impl PasswordError {
    /// The stable error code the API returns.
    pub fn code(&self) -> &'static str {
        match self {
            Self::TooShort(_) => "password_too_short",
            Self::TooLong(_) => "password_too_long",
            Self::TooCommon => "password_too_common",
            Self::Breached => "password_breached",
        }
    }
}

/// A password as it will be hashed: NFC-normalised, never logged.
#[derive(Debug)]
pub struct Password(SecretString);

impl Password {
    /// Applies the policy to a new password (registration, change, reset).
    pub fn new_checked(raw: &str, policy: &PasswordPolicy) -> Result<Self, PasswordError> {
        // Refuse absurd input before normalising it: NFC never shrinks a string
        // below a quarter of its bytes' worth of code points.
        if raw.len() > policy.max_chars * 4 * 4 {
            return Err(PasswordError::TooLong(policy.max_chars));
        }
        let normalised: String = raw.nfc().collect();
        let chars = normalised.chars().count();
        if chars < policy.min_chars {
            return Err(PasswordError::TooShort(policy.min_chars));
        }
        if chars > policy.max_chars {
            return Err(PasswordError::TooLong(policy.max_chars));
        }
        if COMMON.contains(normalised.to_lowercase().as_str()) {
            return Err(PasswordError::TooCommon);
        }
        Ok(Self(normalised.into()))
    }

    /// A password offered at login: normalised the same way, never policy-checked,
    /// so accounts made under an older policy can still log in.
    pub fn for_login(raw: &str) -> Self {
        Self(raw.nfc().collect::<String>().into())
    }

    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

/// Whether a password is in a corpus of breached ones (NIST 800-63B-4
/// §3.1.1.2): `Some(true)` found, `Some(false)` not, `None` when the corpus
/// could not be asked (the caller then accepts the password: fail open).
#[async_trait::async_trait]
pub trait BreachedPasswords: Send + Sync + 'static {
    async fn is_breached(&self, password: &Password) -> Option<bool>;
}

/// Refuses `password` when `check` finds it breached; accepts it, with a
/// log line, when the check cannot answer.
pub async fn check_breached(check: Option<&dyn BreachedPasswords>, password: &Password) -> Result<(), PasswordError> {
    match check {
        None => Ok(()),
        Some(check) => match check.is_breached(password).await {
            Some(true) => Err(PasswordError::Breached),
            Some(false) => Ok(()),
            None => {
                tracing::warn!("the breached-password check did not answer; the password is accepted");
                Ok(())
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(raw: &str) -> Result<Password, PasswordError> {
        Password::new_checked(raw, &PasswordPolicy::default())
    }

    #[test]
    fn length_is_counted_in_code_points() {
        assert_eq!(check("abcdefghijklmn").unwrap_err(), PasswordError::TooShort(15));
        assert!(check("abcdefghijklmno").is_ok());
        assert!(check(&"é".repeat(15)).is_ok());
        assert_eq!(check(&"😀".repeat(14)).unwrap_err(), PasswordError::TooShort(15));
        assert!(check(&"x".repeat(128)).is_ok());
        assert_eq!(check(&"x".repeat(129)).unwrap_err(), PasswordError::TooLong(128));
        assert_eq!(check(&"x".repeat(1 << 20)).unwrap_err(), PasswordError::TooLong(128));
    }

    #[test]
    fn passphrases_of_any_composition_are_accepted() {
        assert!(check("correct horse battery staple").is_ok());
        assert!(check("съешь же ещё этих мягких").is_ok());
    }

    #[test]
    fn common_passwords_are_refused_as_whole_strings_only() {
        assert_eq!(check("passwordpassword").unwrap_err(), PasswordError::TooCommon);
        assert_eq!(check("PasswordPassword").unwrap_err(), PasswordError::TooCommon);
        assert_eq!(check("1qaz2wsx3edc4rfv").unwrap_err(), PasswordError::TooCommon);
        assert!(check("mypassword1xyzabc").is_ok());
        assert_eq!(PasswordError::TooCommon.code(), "password_too_common");
    }

    #[test]
    fn decomposed_and_composed_forms_are_the_same_password() {
        let composed = Password::for_login("caf\u{e9}");
        let decomposed = Password::for_login("cafe\u{301}");
        assert_eq!(composed.expose(), decomposed.expose());
    }
}
