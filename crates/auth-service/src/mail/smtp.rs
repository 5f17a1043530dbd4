//! The production mailer: SMTP through `lettre`, over a pool of connections.

use std::time::Duration;

use async_trait::async_trait;
use auth_core::{Mail, MailError, Mailer};
use lettre::message::Mailbox;
use lettre::transport::smtp::PoolConfig;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

#[derive(Debug, thiserror::Error)]
pub enum SmtpError {
    #[error("mail.smtp_url must be smtp://, smtps:// or smtp+starttls://[user[:password]@]host[:port] (got {0})")]
    Url(String),
    #[error("cannot set up SMTP: {0}")]
    Setup(String),
}

/// How the connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Security {
    /// `smtp://`: none (a relay on the same host or network).
    Plain,
    /// `smtps://`: TLS from the first byte (port 465).
    Tls,
    /// `smtp+starttls://`: upgraded with STARTTLS, required (port 587).
    StartTls,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct SmtpUrl {
    security: Security,
    host: String,
    port: u16,
    credentials: Option<(String, String)>,
}

/// Parses the URL without ever echoing its password in an error.
fn parse(url: &str) -> Result<SmtpUrl, SmtpError> {
    // Everything up to the last `@` may be a password: never shown.
    let shown = || match url.rsplit_once('@') {
        Some((_, after)) => format!("…@{after}"),
        None => url.to_owned(),
    };
    let bad = || SmtpError::Url(shown());
    let (scheme, rest) = url.split_once("://").ok_or_else(bad)?;
    let (security, default_port) = match scheme {
        "smtp" => (Security::Plain, 25),
        "smtps" => (Security::Tls, 465),
        "smtp+starttls" => (Security::StartTls, 587),
        _ => return Err(bad()),
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let (userinfo, hostport) = match rest.rsplit_once('@') {
        Some((userinfo, hostport)) => (Some(userinfo), hostport),
        None => (None, rest),
    };
    if hostport.is_empty() || hostport.contains(['/', '?', '#']) {
        return Err(bad());
    }
    let (host, port) = match hostport.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(']') || hostport.starts_with('[') => {
            (host, port.parse::<u16>().map_err(|_| bad())?)
        }
        _ => (hostport, default_port),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(bad());
    }
    let credentials = match userinfo {
        Some(info) => {
            let (user, password) = info.split_once(':').unwrap_or((info, ""));
            Some((decode(user).ok_or_else(bad)?, decode(password).ok_or_else(bad)?))
        }
        None => None,
    };
    Ok(SmtpUrl { security, host: host.to_owned(), port, credentials })
}

/// Percent-decoding of a URL's user or password.
fn decode(part: &str) -> Option<String> {
    let bytes = part.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = part.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Sends over SMTP with pooled connections; every step is bounded by
/// `timeout`, so a hung server delays the queue and never blocks a request.
#[derive(Clone)]
pub struct SmtpMailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl std::fmt::Debug for SmtpMailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpMailer").field("from", &self.from).finish_non_exhaustive()
    }
}

impl SmtpMailer {
    pub fn new(url: &str, from: Mailbox, timeout: Duration) -> Result<Self, SmtpError> {
        let url = parse(url)?;
        let setup = |e: lettre::transport::smtp::Error| SmtpError::Setup(e.to_string());
        let builder = match url.security {
            Security::Plain => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&url.host),
            Security::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(&url.host).map_err(setup)?,
            Security::StartTls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&url.host).map_err(setup)?,
        };
        let mut builder = builder
            .port(url.port)
            .timeout(Some(timeout))
            .pool_config(PoolConfig::new().max_size(4).idle_timeout(Duration::from_secs(60)));
        if let Some((user, password)) = url.credentials {
            builder = builder.credentials(Credentials::new(user, password));
        }
        Ok(Self { transport: builder.build(), from })
    }
}

#[async_trait]
impl Mailer for SmtpMailer {
    async fn send(&self, mail: &Mail) -> Result<(), MailError> {
        let message = super::message(&self.from, mail)?;
        match self.transport.send(message).await {
            Ok(_) => Ok(()),
            // Only a refused mailbox is final; a refused login, a required
            // STARTTLS or a denied relay is the deployment's to fix, and the
            // mail waits for it.
            Err(e) if e.status().is_some_and(|code| matches!(code.to_string().as_str(), "550" | "551" | "553")) => {
                Err(MailError::Permanent(e.to_string()))
            }
            Err(e) => Err(MailError::Transient(e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_scheme_picks_its_security_and_port() {
        let plain = parse("smtp://127.0.0.1:2525").unwrap();
        assert_eq!(
            (plain.security, plain.host.as_str(), plain.port, plain.credentials),
            (Security::Plain, "127.0.0.1", 2525, None)
        );
        let tls = parse("smtps://mail.example.com").unwrap();
        assert_eq!((tls.security, tls.port), (Security::Tls, 465));
        let starttls = parse("smtp+starttls://me%40x.com:p%3Ass@mail.example.com/").unwrap();
        assert_eq!((starttls.security, starttls.port), (Security::StartTls, 587));
        assert_eq!(starttls.credentials, Some(("me@x.com".into(), "p:ss".into())));
        assert_eq!(parse("smtp://[::1]:25").unwrap().host, "::1");
    }

    #[test]
    fn a_bad_url_is_refused_without_showing_its_password() {
        for url in [
            "http://mail.example.com",
            "smtp://",
            "smtp://u:secret@host:notaport",
            "smtp://u:p@secret@host:bad",
            "smtp:/u:secret@host",
            "smtp://host/path",
            "mail.example.com",
        ] {
            let error = parse(url).unwrap_err().to_string();
            assert!(!error.contains("secret"), "{error}");
        }
    }
}
