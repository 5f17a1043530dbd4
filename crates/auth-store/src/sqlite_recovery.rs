//! Recovery tokens, the mail queue and throttle windows on SQLite.

use async_trait::async_trait;
use auth_core::mail::{Mail, QueuedMail};
use auth_core::throttling::{AttemptPolicy, Bucket};
use auth_core::{
    DomainEvent, Email, EmailToken, Hits, MailQueue, RecoveryStore, SecretHash, SessionId, StoreError, Throttle,
    TokenPurpose, UserId,
};
use sqlx::sqlite::SqliteRow;
use sqlx::{Row, Sqlite, Transaction};
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

use crate::sqlite::{from_ms, insert_event, ms, replace_hash, revoke_sessions_in, time_of, uuid_of};
use crate::{SqliteStore, store_error};

/// How long a notice may wait for the mail server before it is dropped.
pub(crate) const NOTICE_LIFETIME: Duration = Duration::days(3);

/// Queues `mail` inside `tx`; `token` and `user` tie it to what it is about.
pub(crate) async fn enqueue(
    tx: &mut Transaction<'_, Sqlite>,
    mail: &Mail,
    user: Option<UserId>,
    token: Option<&SecretHash>,
    now: OffsetDateTime,
    discard_after: OffsetDateTime,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO mail_queue (id, user_id, token_hash, recipient, subject, text_body, html_body, created_at, \
         next_attempt_at, discard_after) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(Uuid::now_v7().to_string())
    .bind(user.map(|u| u.to_string()))
    .bind(token.map(SecretHash::as_str))
    .bind(mail.to.as_str())
    .bind(&mail.subject)
    .bind(&mail.text)
    .bind(&mail.html)
    .bind(ms(now))
    .bind(ms(now))
    .bind(ms(discard_after))
    .execute(&mut **tx)
    .await
    .map_err(store_error)?;
    Ok(())
}

/// The password a reset link set; the link proved the address.
async fn set_reset_password(tx: &mut Transaction<'_, Sqlite>, user: UserId, phc: &str) -> Result<(), StoreError> {
    sqlx::query("UPDATE users SET password_hash = ?, email_verified = 1 WHERE id = ?")
        .bind(phc)
        .bind(user.to_string())
        .execute(&mut **tx)
        .await
        .map_err(store_error)?;
    Ok(())
}

/// Deletes `user`'s unused tokens of `purpose` (their unsent mail goes too).
async fn void_unused(tx: &mut Transaction<'_, Sqlite>, user: UserId, purpose: TokenPurpose) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM email_tokens WHERE user_id = ? AND purpose = ? AND used_at IS NULL")
        .bind(user.to_string())
        .bind(purpose.as_str())
        .execute(&mut **tx)
        .await
        .map_err(store_error)?;
    Ok(())
}

/// Marks `user`'s token of `purpose` used, if still valid at `now`.
async fn use_token(
    tx: &mut Transaction<'_, Sqlite>,
    hash: &SecretHash,
    user: UserId,
    purpose: TokenPurpose,
    now: OffsetDateTime,
) -> Result<bool, StoreError> {
    let used = sqlx::query(
        "UPDATE email_tokens SET used_at = ?1 WHERE token_hash = ?2 AND user_id = ?3 AND purpose = ?4 \
         AND used_at IS NULL AND expires_at > ?1",
    )
    .bind(ms(now))
    .bind(hash.as_str())
    .bind(user.to_string())
    .bind(purpose.as_str())
    .execute(&mut **tx)
    .await
    .map_err(store_error)?;
    Ok(used.rows_affected() == 1)
}

#[async_trait]
impl RecoveryStore for SqliteStore {
    async fn issue_token(&self, token: &EmailToken, mail: &Mail) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        void_unused(&mut tx, token.user_id, token.purpose).await?;
        sqlx::query(
            "INSERT INTO email_tokens (token_hash, user_id, purpose, created_at, expires_at) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(token.hash.as_str())
        .bind(token.user_id.to_string())
        .bind(token.purpose.as_str())
        .bind(ms(token.created_at))
        .bind(ms(token.expires_at))
        .execute(&mut *tx)
        .await
        .map_err(store_error)?;
        enqueue(&mut tx, mail, Some(token.user_id), Some(&token.hash), token.created_at, token.expires_at).await?;
        tx.commit().await.map_err(store_error)
    }

    async fn token_owner(
        &self,
        hash: &SecretHash,
        purpose: TokenPurpose,
        now: OffsetDateTime,
    ) -> Result<Option<UserId>, StoreError> {
        let row = sqlx::query(
            "SELECT user_id FROM email_tokens WHERE token_hash = ? AND purpose = ? AND used_at IS NULL \
             AND expires_at > ?",
        )
        .bind(hash.as_str())
        .bind(purpose.as_str())
        .bind(ms(now))
        .fetch_optional(self.pool())
        .await
        .map_err(store_error)?;
        row.map(|r| Ok(UserId::from_uuid(uuid_of(&r, "user_id")?))).transpose()
    }

    async fn reset_password(
        &self,
        hash: &SecretHash,
        user: UserId,
        phc: &str,
        event: &DomainEvent,
        notice: &Mail,
    ) -> Result<Option<Vec<SessionId>>, StoreError> {
        let now = event.occurred_at;
        let mut tx = self.begin().await?;
        if !use_token(&mut tx, hash, user, TokenPurpose::PasswordReset, now).await? {
            return Ok(None);
        }
        set_reset_password(&mut tx, user, phc).await?;
        let revoked = revoke_sessions_in(&mut tx, user, None, now).await?;
        insert_event(&mut tx, event).await?;
        enqueue(&mut tx, notice, Some(user), None, now, now + NOTICE_LIFETIME).await?;
        tx.commit().await.map_err(store_error)?;
        Ok(Some(revoked))
    }

    async fn change_password(
        &self,
        user: UserId,
        verified: &str,
        phc: &str,
        keep: SessionId,
        event: &DomainEvent,
        notice: &Mail,
    ) -> Result<Option<Vec<SessionId>>, StoreError> {
        let now = event.occurred_at;
        let mut tx = self.begin().await?;
        if !replace_hash(&mut *tx, user, verified, phc).await? {
            return Ok(None);
        }
        // A reset link asked for before the change must not undo it.
        void_unused(&mut tx, user, TokenPurpose::PasswordReset).await?;
        let revoked = revoke_sessions_in(&mut tx, user, Some(keep), now).await?;
        insert_event(&mut tx, event).await?;
        enqueue(&mut tx, notice, Some(user), None, now, now + NOTICE_LIFETIME).await?;
        tx.commit().await.map_err(store_error)?;
        Ok(Some(revoked))
    }

    async fn verify_email(&self, hash: &SecretHash, user: UserId, event: &DomainEvent) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        if !use_token(&mut tx, hash, user, TokenPurpose::VerifyEmail, event.occurred_at).await? {
            return Ok(false);
        }
        sqlx::query("UPDATE users SET email_verified = 1 WHERE id = ?")
            .bind(user.to_string())
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
        insert_event(&mut tx, event).await?;
        tx.commit().await.map_err(store_error)?;
        Ok(true)
    }
}

fn queued_from(row: &SqliteRow) -> Result<QueuedMail, StoreError> {
    let to: String = row.try_get("recipient").map_err(store_error)?;
    let attempts: i64 = row.try_get("attempts").map_err(store_error)?;
    Ok(QueuedMail {
        id: uuid_of(row, "id")?,
        mail: Mail {
            to: Email::parse(&to).map_err(|_| StoreError::Unavailable("stored recipient is invalid".into()))?,
            subject: row.try_get("subject").map_err(store_error)?,
            text: row.try_get("text_body").map_err(store_error)?,
            html: row.try_get("html_body").map_err(store_error)?,
        },
        attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
        discard_after: time_of(row, "discard_after")?,
    })
}

#[async_trait]
impl MailQueue for SqliteStore {
    async fn queue_mail(
        &self,
        mail: &Mail,
        now: OffsetDateTime,
        discard_after: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        enqueue(&mut tx, mail, None, None, now, discard_after).await?;
        tx.commit().await.map_err(store_error)
    }

    async fn claim_mail(
        &self,
        now: OffsetDateTime,
        lease: Duration,
        limit: u32,
    ) -> Result<Vec<QueuedMail>, StoreError> {
        let rows = sqlx::query(
            "UPDATE mail_queue SET attempts = attempts + 1, next_attempt_at = ?1 WHERE id IN \
             (SELECT id FROM mail_queue WHERE next_attempt_at <= ?2 AND discard_after > ?2 \
              ORDER BY next_attempt_at LIMIT ?3) \
             RETURNING id, recipient, subject, text_body, html_body, attempts, discard_after",
        )
        .bind(ms(now + lease))
        .bind(ms(now))
        .bind(i64::from(limit))
        .fetch_all(self.pool())
        .await
        .map_err(store_error)?;
        rows.iter().map(queued_from).collect()
    }

    async fn mail_sent(&self, id: Uuid) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM mail_queue WHERE id = ?")
            .bind(id.to_string())
            .execute(self.pool())
            .await
            .map_err(store_error)?;
        Ok(())
    }

    async fn mail_failed(&self, id: Uuid, retry_at: OffsetDateTime) -> Result<(), StoreError> {
        sqlx::query("UPDATE mail_queue SET next_attempt_at = ? WHERE id = ?")
            .bind(ms(retry_at))
            .bind(id.to_string())
            .execute(self.pool())
            .await
            .map_err(store_error)?;
        Ok(())
    }

    async fn tidy(&self, now: OffsetDateTime) -> Result<u64, StoreError> {
        let mut tx = self.begin().await?;
        let dropped = sqlx::query("DELETE FROM mail_queue WHERE discard_after <= ?")
            .bind(ms(now))
            .execute(&mut *tx)
            .await
            .map_err(store_error)?
            .rows_affected();
        let day_ago = ms(now - Duration::days(1));
        sqlx::query("DELETE FROM email_tokens WHERE expires_at < ?")
            .bind(day_ago)
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
        sqlx::query("DELETE FROM throttle WHERE window_start < ?")
            .bind(day_ago)
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
        // A bucket idle for a day is full again; failed logins are
        // forgotten after 30 quiet days (the delay caps them far lower).
        sqlx::query("DELETE FROM rate_buckets WHERE updated_at < ?")
            .bind(day_ago)
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
        sqlx::query("DELETE FROM login_attempts WHERE last_at < ? AND blocked_until < ?")
            .bind(ms(now - Duration::days(30)))
            .bind(ms(now))
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
        tx.commit().await.map_err(store_error)?;
        Ok(dropped)
    }
}

/// A counter is read, then written only if it still holds what was read
/// (a row absent when read must still be absent), else read again: the
/// relaxed pool's one connection already keeps other counts from coming
/// between the two, and this keeps the count right even when that does
/// not hold (a connection whose return to the pool was dropped, as when
/// a serving thread's runtime shuts down first, frees its slot for a new
/// one while its last write still waits for the file's lock).
const COUNTING_TRIES: usize = 16;

#[async_trait]
impl Throttle for SqliteStore {
    async fn hit(&self, key: &str, window: Duration, now: OffsetDateTime) -> Result<Hits, StoreError> {
        let (start, count): (i64, i64) = sqlx::query_as(
            "INSERT INTO throttle (key, window_start, hits) VALUES (?1, ?2, 1) ON CONFLICT (key) DO UPDATE SET \
             hits = CASE WHEN throttle.window_start <= ?3 THEN 1 ELSE throttle.hits + 1 END, \
             window_start = CASE WHEN throttle.window_start <= ?3 THEN ?2 ELSE throttle.window_start END \
             RETURNING window_start, hits",
        )
        .bind(key)
        .bind(ms(now))
        .bind(ms(now - window))
        .fetch_one(self.relaxed())
        .await
        .map_err(store_error)?;
        Ok(Hits { count: u32::try_from(count).unwrap_or(u32::MAX), window_ends: from_ms(start)? + window })
    }

    async fn take(&self, key: &str, bucket: Bucket, now: OffsetDateTime) -> Result<Option<Duration>, StoreError> {
        let mut alone = self.counting().await?;
        for _ in 0..COUNTING_TRIES {
            let held: Option<(f64, i64)> = sqlx::query_as("SELECT tokens, updated_at FROM rate_buckets WHERE key = ?")
                .bind(key)
                .fetch_optional(&mut *alone)
                .await
                .map_err(store_error)?;
            let tokens = match bucket.take(held.map(|(tokens, at)| (tokens, Duration::milliseconds(ms(now) - at)))) {
                Ok(left) => left,
                Err(wait) => return Ok(Some(wait)),
            };
            // Written only over what was read (see `COUNTING_TRIES`).
            let written = sqlx::query(
                "INSERT INTO rate_buckets (key, tokens, updated_at) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (key) DO UPDATE SET tokens = ?2, updated_at = ?3 \
                 WHERE rate_buckets.tokens = ?4 AND rate_buckets.updated_at = ?5",
            )
            .bind(key)
            .bind(tokens)
            .bind(ms(now))
            .bind(held.map(|(tokens, _)| tokens))
            .bind(held.map(|(_, at)| at))
            .execute(&mut *alone)
            .await
            .map_err(store_error)?;
            if written.rows_affected() == 1 {
                return Ok(None);
            }
        }
        Err(StoreError::Unavailable("a rate bucket kept changing under its update".into()))
    }

    async fn claim_attempt(
        &self,
        key: &str,
        policy: &AttemptPolicy,
        now: OffsetDateTime,
    ) -> Result<Option<Duration>, StoreError> {
        let mut alone = self.counting().await?;
        for _ in 0..COUNTING_TRIES {
            let held: Option<(i64, i64)> =
                sqlx::query_as("SELECT failures, blocked_until FROM login_attempts WHERE key = ?")
                    .bind(key)
                    .fetch_optional(&mut *alone)
                    .await
                    .map_err(store_error)?;
            let (failures, blocked_until) = held.unwrap_or((0, 0));
            let failures = u32::try_from(failures).unwrap_or(0);
            let (failures, blocked_until) = match policy.claim(failures, from_ms(blocked_until)?, now) {
                Ok(counted) => counted,
                Err(wait) => return Ok(Some(wait)),
            };
            // Written only over what was read (see `COUNTING_TRIES`).
            let written = sqlx::query(
                "INSERT INTO login_attempts (key, failures, blocked_until, last_at) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (key) DO UPDATE SET failures = ?2, blocked_until = ?3, last_at = ?4 \
                 WHERE login_attempts.failures = ?5 AND login_attempts.blocked_until = ?6",
            )
            .bind(key)
            .bind(i64::from(failures))
            .bind(ms(blocked_until))
            .bind(ms(now))
            .bind(held.map(|(failures, _)| failures))
            .bind(held.map(|(_, until)| until))
            .execute(&mut *alone)
            .await
            .map_err(store_error)?;
            if written.rows_affected() == 1 {
                return Ok(None);
            }
        }
        Err(StoreError::Unavailable("a failed-login count kept changing under its update".into()))
    }

    async fn clear_attempts(&self, key: &str) -> Result<(), StoreError> {
        // On the relaxed pool's only connection: never between a claim's
        // read and its write, which would count on from what it read.
        sqlx::query("DELETE FROM login_attempts WHERE key = ?")
            .bind(key)
            .execute(self.relaxed())
            .await
            .map_err(store_error)
            .map(|_| ())
    }
}
