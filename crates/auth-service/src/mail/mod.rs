//! Mail delivery: the SMTP and `.eml`-file [`Mailer`]s, and the relay that
//! drains the queue through one of them.
//!
//! Handlers never talk to a mail server: what they decide to send is queued
//! in the database with the change it is about, and [`MailRelay`] sends it,
//! retrying with backoff while the server is down or slow. A message whose
//! link has expired is dropped unsent.

mod file;
mod smtp;

use std::sync::Arc;
use std::time::Duration;

use auth_core::mail::QueuedMail;
use auth_core::{Clock, Mail, MailError, MailQueue, Mailer};
use lettre::Message;
use lettre::message::header::{ContentTransferEncoding, ContentType};
use lettre::message::{Body, Mailbox, MultiPart, SinglePart};
use tokio::sync::Notify;

pub use file::FileMailer;
pub use smtp::{SmtpError, SmtpMailer};

/// How long a claimed message is left to one relay before another may try:
/// longer than a batch can take with every step at its timeout.
const LEASE: time::Duration = time::Duration::minutes(30);
/// Messages per claim.
const BATCH: u32 = 4;
/// How often the queue is looked at when nobody said there is mail.
const POLL: Duration = Duration::from_secs(1);
/// The longest wait between two attempts at one message.
const MAX_BACKOFF: i64 = 60;
/// How often expired messages, tokens and throttle windows are swept.
const TIDY_EVERY: Duration = Duration::from_secs(600);

/// Builds the MIME message for `mail` from `from`: plain text and HTML as
/// alternatives.
pub(crate) fn message(from: &Mailbox, mail: &Mail) -> Result<Message, MailError> {
    let to: Mailbox =
        mail.to.as_str().parse().map_err(|e| MailError::Permanent(format!("the recipient is not deliverable: {e}")))?;
    let part = |kind: ContentType, content: &str| SinglePart::builder().header(kind).body(readable(content));
    Message::builder()
        .from(from.clone())
        .to(to)
        .subject(mail.subject.clone())
        .multipart(
            MultiPart::alternative()
                .singlepart(part(ContentType::TEXT_PLAIN, &mail.text))
                .singlepart(part(ContentType::TEXT_HTML, &mail.html)),
        )
        .map_err(|e| MailError::Permanent(format!("cannot build the message: {e}")))
}

/// ASCII text whose lines fit SMTP's 998 characters (one spare for the
/// dot a leading `.` gets on the wire) goes as it is (7bit),
/// so a link stays whole and readable in the raw message or `.eml` file;
/// other text is encoded as lettre chooses.
fn readable(content: &str) -> Body {
    let crlf = content.replace("\r\n", "\n").replace('\n', "\r\n");
    let plain = crlf.is_ascii()
        && !crlf.contains('\0')
        && crlf.split("\r\n").all(|line| line.len() < 998 && !line.contains('\r'));
    match plain {
        true => Body::dangerous_pre_encoded(crlf.into_bytes(), ContentTransferEncoding::SevenBit),
        false => Body::new(content.to_owned()),
    }
}

/// Sends queued mail until shut down.
pub struct MailRelay {
    queue: Arc<dyn MailQueue>,
    mailer: Arc<dyn Mailer>,
    clock: Arc<dyn Clock>,
    wake: Arc<Notify>,
}

impl MailRelay {
    /// `wake` is notified when mail was queued, so that it leaves at once.
    pub fn new(queue: Arc<dyn MailQueue>, mailer: Arc<dyn Mailer>, clock: Arc<dyn Clock>, wake: Arc<Notify>) -> Self {
        Self { queue, mailer, clock, wake }
    }

    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut last_tidy: Option<tokio::time::Instant> = None;
        loop {
            if last_tidy.is_none_or(|at| at.elapsed() >= TIDY_EVERY) {
                match self.queue.tidy(self.clock.now()).await {
                    Ok(0) => {}
                    Ok(n) => {
                        tracing::warn!(dropped = n, "mail whose links expired before it could be sent was dropped")
                    }
                    Err(error) => tracing::warn!(%error, "cannot sweep the mail queue"),
                }
                last_tidy = Some(tokio::time::Instant::now());
            }
            let sent_some = match self.queue.claim_mail(self.clock.now(), LEASE, BATCH).await {
                Ok(batch) => {
                    let full = batch.len() == BATCH as usize;
                    for queued in batch {
                        self.deliver(queued).await;
                    }
                    full
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot read the mail queue");
                    false
                }
            };
            if sent_some {
                continue;
            }
            tokio::select! {
                () = &mut shutdown => return,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(POLL) => {}
            }
        }
    }

    async fn deliver(&self, queued: QueuedMail) {
        let outcome = self.mailer.send(&queued.mail).await;
        let recorded = match outcome {
            Ok(()) => {
                tracing::info!(mail_id = %queued.id, subject = %queued.mail.subject, "mail sent");
                self.queue.mail_sent(queued.id).await
            }
            Err(MailError::Permanent(reason)) => {
                tracing::error!(mail_id = %queued.id, %reason, "mail refused for good; dropped");
                self.queue.mail_sent(queued.id).await
            }
            Err(MailError::Transient(reason)) => {
                let wait = 2i64.saturating_pow(queued.attempts.min(10)).min(MAX_BACKOFF);
                tracing::warn!(mail_id = %queued.id, attempts = queued.attempts, retry_in_secs = wait, %reason,
                    "mail not sent yet; will retry");
                self.queue.mail_failed(queued.id, self.clock.now() + time::Duration::seconds(wait)).await
            }
        };
        if let Err(error) = recorded {
            // The lease runs out and the message is tried again: at least once.
            tracing::warn!(mail_id = %queued.id, %error, "cannot record the outcome of a mail");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mail(text: &str) -> Mail {
        let to = auth_core::Email::parse("a@example.com").unwrap();
        Mail { to, subject: "Hi".into(), text: text.into(), html: format!("<p>{text}</p>") }
    }

    #[test]
    fn a_long_link_stays_whole_on_one_line_of_the_raw_message() {
        let link = format!("http://127.0.0.1:8080/reset-password#token={}", "x".repeat(43));
        let from: Mailbox = "Gatehouse <no-reply@example.com>".parse().unwrap();
        let raw = String::from_utf8(message(&from, &mail(&format!("Open:\n\n{link}\n"))).unwrap().formatted()).unwrap();
        assert!(raw.lines().any(|line| line == link), "{raw}");
        assert!(raw.contains("Content-Transfer-Encoding: 7bit"), "{raw}");
    }

    #[test]
    fn text_that_is_not_plain_ascii_is_encoded() {
        let from: Mailbox = "Gatehouse <no-reply@example.com>".parse().unwrap();
        let raw = String::from_utf8(message(&from, &mail("Grüße\r bare")).unwrap().formatted()).unwrap();
        assert!(!raw.contains("Content-Transfer-Encoding: 7bit"), "{raw}");
        assert!(!raw.contains("Grüße"), "{raw}");
    }
}
