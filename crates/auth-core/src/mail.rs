//! Mail to users: the messages, the [`Mailer`] port that delivers them, and
//! the templates they are rendered from.
//!
//! Messages are rendered when they are decided (a reset requested, a
//! password changed) and queued in the same transaction as that change; a
//! relay hands them to the [`Mailer`] and retries until it accepts, so a mail
//! server outage delays mail and loses none.

use std::path::Path;

use async_trait::async_trait;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::Email;

/// A message ready to send: one recipient, a subject, a plain-text and an
/// HTML body.
#[derive(Clone, PartialEq, Eq)]
pub struct Mail {
    pub to: Email,
    pub subject: String,
    pub text: String,
    pub html: String,
}

/// Bodies may carry single-use links: never printed.
impl std::fmt::Debug for Mail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mail").field("subject", &self.subject).finish_non_exhaustive()
    }
}

/// A queued message as the relay sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedMail {
    pub id: Uuid,
    pub mail: Mail,
    /// Delivery attempts so far, this one included.
    pub attempts: u32,
    /// After this the message is dropped unsent: the link in it has expired.
    pub discard_after: OffsetDateTime,
}

#[derive(Debug, thiserror::Error)]
pub enum MailError {
    /// Worth trying again later: the server is down, slow, or said 4xx.
    #[error("mail not delivered yet: {0}")]
    Transient(String),
    /// Will never succeed as it is: the server refused the recipient (5xx).
    #[error("mail refused: {0}")]
    Permanent(String),
}

/// Delivers one message. Implemented over SMTP and over `.eml` files.
#[async_trait]
pub trait Mailer: Send + Sync + 'static {
    async fn send(&self, mail: &Mail) -> Result<(), MailError>;
}

/// Which message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Template {
    PasswordReset,
    PasswordChanged,
    VerifyEmail,
    /// A provider was linked to the account.
    SignInAdded,
    /// Someone tried to register the address of an existing account
    /// (`registration.conceal_existing`).
    AccountExists,
}

impl Template {
    pub const ALL: [Self; 5] =
        [Self::PasswordReset, Self::PasswordChanged, Self::VerifyEmail, Self::SignInAdded, Self::AccountExists];

    /// The file name stem of its `.txt` and `.html` templates.
    pub fn name(self) -> &'static str {
        match self {
            Self::PasswordReset => "password_reset",
            Self::PasswordChanged => "password_changed",
            Self::VerifyEmail => "verify_email",
            Self::SignInAdded => "sign_in_added",
            Self::AccountExists => "account_exists",
        }
    }

    fn builtin(self) -> (&'static str, &'static str) {
        match self {
            Self::PasswordReset => (
                include_str!("../templates/mail/password_reset.txt"),
                include_str!("../templates/mail/password_reset.html"),
            ),
            Self::PasswordChanged => (
                include_str!("../templates/mail/password_changed.txt"),
                include_str!("../templates/mail/password_changed.html"),
            ),
            Self::VerifyEmail => (
                include_str!("../templates/mail/verify_email.txt"),
                include_str!("../templates/mail/verify_email.html"),
            ),
            Self::SignInAdded => (
                include_str!("../templates/mail/sign_in_added.txt"),
                include_str!("../templates/mail/sign_in_added.html"),
            ),
            Self::AccountExists => (
                include_str!("../templates/mail/account_exists.txt"),
                include_str!("../templates/mail/account_exists.html"),
            ),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("cannot read mail template {path}: {reason}")]
    Unreadable { path: String, reason: String },
    #[error("mail template {path} must start with a line `Subject: …` and a blank line")]
    NoSubject { path: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Parsed {
    subject: String,
    text: String,
    html: String,
}

/// The templates of every message: built in, each file replaceable by one
/// of the same name in an operator's directory. The `.txt` template starts
/// with `Subject: …` and a blank line. Placeholders: `{{link}}`,
/// `{{public_url}}`, `{{valid_for}}`, `{{provider}}`; in HTML their values
/// are escaped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Templates {
    parsed: Vec<(Template, Parsed)>,
}

impl Templates {
    pub fn builtin() -> Self {
        let parsed = Template::ALL
            .into_iter()
            .filter_map(|t| {
                let (text, html) = t.builtin();
                parse(text, html).map(|p| (t, p))
            })
            .collect();
        Self { parsed }
    }

    /// The built-in templates, with any `<name>.txt` or `<name>.html` found
    /// in `dir` used instead.
    pub fn with_overrides(dir: &Path) -> Result<Self, TemplateError> {
        let mut parsed = Vec::new();
        for template in Template::ALL {
            let (text, html) = template.builtin();
            let read = |ext: &str, builtin: &str| -> Result<String, TemplateError> {
                let path = dir.join(format!("{}.{ext}", template.name()));
                match std::fs::read_to_string(&path) {
                    Ok(content) => Ok(content),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(builtin.to_owned()),
                    Err(e) => {
                        Err(TemplateError::Unreadable { path: path.display().to_string(), reason: e.to_string() })
                    }
                }
            };
            let (text, html) = (read("txt", text)?, read("html", html)?);
            let path = dir.join(format!("{}.txt", template.name())).display().to_string();
            parsed.push((template, parse(&text, &html).ok_or(TemplateError::NoSubject { path })?));
        }
        Ok(Self { parsed })
    }

    /// The message `template` makes for `to`.
    pub fn render(&self, template: Template, to: &Email, values: &Values<'_>) -> Mail {
        let found = self.parsed.iter().find(|(t, _)| *t == template).map(|(_, p)| p);
        let Some(parsed) = found else {
            // Unreachable: every template is parsed at construction.
            return Mail { to: to.clone(), subject: String::new(), text: String::new(), html: String::new() };
        };
        Mail {
            to: to.clone(),
            subject: fill(&parsed.subject, values, |v| v.replace(['\r', '\n'], " ")),
            text: fill(&parsed.text, values, str::to_owned),
            html: fill(&parsed.html, values, escape_html),
        }
    }
}

/// The values a template may use.
#[derive(Debug, Clone, Copy)]
pub struct Values<'a> {
    pub link: &'a str,
    pub public_url: &'a str,
    pub valid_for: &'a str,
    /// The provider's name, in `sign_in_added`.
    pub provider: &'a str,
}

fn parse(text: &str, html: &str) -> Option<Parsed> {
    let text = text.replace("\r\n", "\n");
    let (first, rest) = text.split_once('\n')?;
    let subject = first.strip_prefix("Subject:")?.trim().to_owned();
    let body = rest.strip_prefix('\n')?;
    if subject.is_empty() {
        return None;
    }
    Some(Parsed { subject, text: body.to_owned(), html: html.to_owned() })
}

fn fill(template: &str, values: &Values<'_>, encode: impl Fn(&str) -> String) -> String {
    template
        .replace("{{link}}", &encode(values.link))
        .replace("{{public_url}}", &encode(values.public_url))
        .replace("{{valid_for}}", &encode(values.valid_for))
        .replace("{{provider}}", &encode(values.provider))
}

/// `value` as HTML text or a quoted attribute value: `& < > " '` escaped.
pub fn escape_html(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// "15 minutes", "24 hours": a lifetime as a message says it.
pub fn say_duration(d: time::Duration) -> String {
    let minutes = d.whole_minutes();
    let (n, unit) = if minutes % 60 == 0 && minutes >= 60 { (minutes / 60, "hour") } else { (minutes, "minute") };
    if n == 1 { format!("1 {unit}") } else { format!("{n} {unit}s") }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn values() -> Values<'static> {
        Values {
            link: "https://id.example/reset-password#token=a<b&c",
            public_url: "https://id.example",
            valid_for: "15 minutes",
            provider: "git<hub>",
        }
    }

    #[test]
    fn every_builtin_template_renders_with_its_subject_and_the_link() {
        let templates = Templates::builtin();
        let to = Email::parse("a@example.com").unwrap();
        for template in Template::ALL {
            let mail = templates.render(template, &to, &values());
            assert!(!mail.subject.is_empty(), "{template:?}");
            assert!(!mail.text.contains("{{") && !mail.html.contains("{{"), "{template:?}");
            assert!(!mail.text.starts_with("Subject"), "{template:?}");
        }
        let reset = templates.render(Template::PasswordReset, &to, &values());
        assert!(reset.text.contains("#token=a<b&c"));
        assert!(reset.html.contains("#token=a&lt;b&amp;c"), "values are escaped in HTML");
        assert!(reset.text.contains("15 minutes"));
        let added = templates.render(Template::SignInAdded, &to, &values());
        assert!(added.text.contains("through git<hub> was") && added.html.contains("through git&lt;hub&gt; was"));
    }

    #[test]
    fn an_operator_file_replaces_one_template_and_a_bad_one_is_refused() {
        let dir = std::env::temp_dir().join(format!("gatehouse-templates-{}", Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("password_reset.txt"), "Subject: Hello\n\nGo to {{link}}\n").unwrap();
        let templates = Templates::with_overrides(&dir).unwrap();
        let to = Email::parse("a@example.com").unwrap();
        let mail = templates.render(Template::PasswordReset, &to, &values());
        assert_eq!(mail.subject, "Hello");
        assert_eq!(mail.text, "Go to https://id.example/reset-password#token=a<b&c\n");
        assert_eq!(
            templates.render(Template::VerifyEmail, &to, &values()),
            Templates::builtin().render(Template::VerifyEmail, &to, &values())
        );
        std::fs::write(dir.join("verify_email.txt"), "no subject here\n").unwrap();
        assert!(matches!(Templates::with_overrides(&dir), Err(TemplateError::NoSubject { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_subject_cannot_be_given_a_second_header_line() {
        let templates = Templates::with_overrides(Path::new("/nonexistent")).unwrap();
        let to = Email::parse("a@example.com").unwrap();
        let mut v = values();
        v.valid_for = "x\r\nBcc: evil@example.com";
        let dir = std::env::temp_dir().join(format!("gatehouse-templates-{}", Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("verify_email.txt"), "Subject: valid {{valid_for}}\n\nbody\n").unwrap();
        let mail = Templates::with_overrides(&dir).unwrap().render(Template::VerifyEmail, &to, &v);
        assert!(!mail.subject.contains('\n') && !mail.subject.contains('\r'));
        assert_eq!(templates, Templates::builtin());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn durations_are_said_in_words() {
        assert_eq!(say_duration(time::Duration::minutes(15)), "15 minutes");
        assert_eq!(say_duration(time::Duration::hours(24)), "24 hours");
        assert_eq!(say_duration(time::Duration::hours(1)), "1 hour");
    }
}
