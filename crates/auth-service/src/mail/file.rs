//! The development mailer: each message becomes an `.eml` file.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use auth_core::{Mail, MailError, Mailer};
use lettre::message::Mailbox;

/// Writes each message as `<dir>/<id>.eml` (owner-only: it holds
/// single-use links) and logs the path, so that a link can be followed
/// with no mail server.
#[derive(Debug, Clone)]
pub struct FileMailer {
    dir: PathBuf,
    from: Mailbox,
}

impl FileMailer {
    pub fn new(dir: &Path, from: Mailbox) -> std::io::Result<Self> {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(dir)?;
        // Also when it was there already: the files hold live links.
        #[cfg(unix)]
        std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
        Ok(Self { dir: dir.to_owned(), from })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

#[async_trait]
impl Mailer for FileMailer {
    async fn send(&self, mail: &Mail) -> Result<(), MailError> {
        let bytes = super::message(&self.from, mail)?.formatted();
        // Version 7 ids start with the time: the names sort oldest first.
        let path = self.dir.join(format!("{}.eml", uuid::Uuid::now_v7()));
        let written = path.clone();
        tokio::task::spawn_blocking(move || {
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut file = options.open(&written)?;
            file.write_all(&bytes)?;
            file.sync_all()
        })
        .await
        .map_err(|e| MailError::Transient(e.to_string()))?
        .map_err(|e| MailError::Transient(format!("cannot write {}: {e}", path.display())))?;
        tracing::info!(path = %path.display(), subject = %mail.subject, "mail written");
        Ok(())
    }
}
