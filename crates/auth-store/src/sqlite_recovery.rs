//! Recovery tokens, the mail queue and throttle windows on SQLite.

use async_trait::async_trait;
use auth_core::mail::{Mail, QueuedMail};
use auth_core::throttling::{AttemptPolicy, Bucket};
use auth_core::{
    DomainEvent, Email, EmailToken, Hits, MailQueue, RecoveryStore, SecretHash, SessionId, StoreError, Throttle,
    TokenPurpose, UserId,
};
use sqlx::sqlite::SqliteRow;
use sqlx::{Row, SqliteConnection};
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

use crate::sqlite::{from_ms, insert_event, ms, replace_hash, revoke_sessions_in, time_of, uuid_of};
use crate::{SqliteStore, store_error};

/// How long a notice may wait for the mail server before it is dropped.
pub(crate) const NOTICE_LIFETIME: Duration = Duration::days(3);

/// Queues `mail` inside `tx`; `token` and `user` tie it to what it is about.
pub(crate) async fn enqueue(
    tx: &mut SqliteConnection,
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
    .execute(&mut *tx)
    .await
    .map_err(store_error)?;
    Ok(())
}

/// The password a reset link set; the link proved the address.
async fn set_reset_password(tx: &mut SqliteConnection, user: UserId, phc: &str) -> Result<(), StoreError> {
    sqlx::query("UPDATE users SET password_hash = ?, email_verified = 1 WHERE id = ?")
        .bind(phc)
        .bind(user.to_string())
        .execute(&mut *tx)
        .await
        .map_err(store_error)?;
    Ok(())
}

/// Deletes `user`'s unused tokens of `purpose` (their unsent mail goes too).
async fn void_unused(tx: &mut SqliteConnection, user: UserId, purpose: TokenPurpose) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM email_tokens WHERE user_id = ? AND purpose = ? AND used_at IS NULL")
        .bind(user.to_string())
        .bind(purpose.as_str())
        .execute(&mut *tx)
        .await
        .map_err(store_error)?;
    Ok(())
}

/// Marks `user`'s token of `purpose` used, if still valid at `now`.
async fn use_token(
    tx: &mut SqliteConnection,
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
    .execute(&mut *tx)
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
        .fetch_optional(&mut *self.read().await?)
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
            tx.rollback().await;
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
            tx.rollback().await;
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
            tx.rollback().await;
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
        let mut turn = self.write_turn().await?;
        let rows = sqlx::query(
            "UPDATE mail_queue SET attempts = attempts + 1, next_attempt_at = ?1 WHERE id IN \
             (SELECT id FROM mail_queue WHERE next_attempt_at <= ?2 AND discard_after > ?2 \
              ORDER BY next_attempt_at LIMIT ?3) \
             RETURNING id, recipient, subject, text_body, html_body, attempts, discard_after",
        )
        .bind(ms(now + lease))
        .bind(ms(now))
        .bind(i64::from(limit))
        .fetch_all(&mut *turn)
        .await
        .map_err(store_error)?;
        rows.iter().map(queued_from).collect()
    }

    async fn mail_sent(&self, id: Uuid) -> Result<(), StoreError> {
        let mut turn = self.write_turn().await?;
        sqlx::query("DELETE FROM mail_queue WHERE id = ?")
            .bind(id.to_string())
            .execute(&mut *turn)
            .await
            .map_err(store_error)?;
        Ok(())
    }

    async fn mail_failed(&self, id: Uuid, retry_at: OffsetDateTime) -> Result<(), StoreError> {
        let mut turn = self.write_turn().await?;
        sqlx::query("UPDATE mail_queue SET next_attempt_at = ? WHERE id = ?")
            .bind(ms(retry_at))
            .bind(id.to_string())
            .execute(&mut *turn)
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

/// A counter is written only if it still holds what its count started
/// from (a row absent then must still be absent), else read again: the
/// relaxed connection keeps this process's other counts from coming
/// between the two, and the check keeps the count right when it started
/// from the row as remembered ([`Recent`]) or when another store of the
/// same file (a second process, tidying) changed the row meanwhile.
const COUNTING_TRIES: usize = 16;

/// How many rows of each counter table [`Recent`] keeps in mind.
const RECENT_ROWS: usize = 4096;

/// The counter rows this process last read or wrote, so that a count
/// usually takes one trip to the database (the write, made on the row as
/// remembered) instead of two (a read, then the write). Only a guess: the
/// write lands only if the row still holds what is remembered, else the
/// row is read and counted again, and a refusal is never decided on a
/// remembered row. Rows changed by another process, by tidying or by
/// hand cost a read, never a wrong count.
#[derive(Debug)]
pub(crate) struct Recent<V> {
    rows: std::sync::Mutex<std::collections::HashMap<String, Option<V>>>,
}

impl<V: Copy> Default for Recent<V> {
    fn default() -> Self {
        Self { rows: std::sync::Mutex::default() }
    }
}

impl<V: Copy> Recent<V> {
    /// The row of `key` as last seen (`Some(None)`: absent), if in mind.
    fn guess(&self, key: &str) -> Option<Option<V>> {
        self.rows.lock().ok().and_then(|rows| rows.get(key).copied())
    }

    /// Keeps `row` in mind as `key`'s; when full, forgets all the others
    /// first (a spray of keys only costs reads).
    fn seen(&self, key: &str, row: Option<V>) {
        if let Ok(mut rows) = self.rows.lock() {
            if rows.len() >= RECENT_ROWS && !rows.contains_key(key) {
                rows.clear();
            }
            rows.insert(key.to_owned(), row);
        }
    }
}

/// The remembered rows of both counter tables.
#[derive(Debug, Default)]
pub(crate) struct RecentCounters {
    /// `rate_buckets`: tokens, updated_at.
    buckets: Recent<(f64, i64)>,
    /// `login_attempts`: failures, blocked_until.
    attempts: Recent<(i64, i64)>,
}

impl RecentCounters {
    /// `key`'s failed-login count was deleted.
    pub(crate) fn cleared(&self, key: &str) {
        self.attempts.seen(key, None);
    }
}

/// The next row of a counter, from the row as it stands (`None`: absent):
/// the row to write, or the wait that refuses the count.
type Next<V> = Result<Result<V, Duration>, StoreError>;

impl SqliteStore {
    /// One count on `key`'s row, on the relaxed connection held
    /// throughout. `next` decides from the row as it stands; `write` makes
    /// the write of the new row that lands only over the row counted from
    /// (see [`COUNTING_TRIES`]). The row counted from is the one in
    /// `recent` (a guess) or the one `read` selects; a refusal is only ever
    /// decided on a row read.
    async fn count<'k, V>(
        &self,
        recent: &Recent<V>,
        key: &'k str,
        read: &'static str,
        next: impl Fn(Option<V>) -> Next<V> + Send,
        write: impl Fn(Option<V>, V) -> sqlx::query::Query<'k, sqlx::Sqlite, sqlx::sqlite::SqliteArguments> + Send,
    ) -> Result<Option<Duration>, StoreError>
    where
        V: Copy + Send + Unpin + for<'r> sqlx::FromRow<'r, SqliteRow>,
    {
        let mut alone = self.relaxed().await;
        let mut guess = recent.guess(key);
        for _ in 0..COUNTING_TRIES {
            let (held, guessed) = match guess.take() {
                Some(row) => (row, true),
                None => {
                    let row = sqlx::query_as(read).bind(key).fetch_optional(&mut *alone).await.map_err(store_error)?;
                    (row, false)
                }
            };
            let row = match next(held)? {
                Ok(row) => row,
                Err(_) if guessed => continue,
                Err(wait) => {
                    recent.seen(key, held);
                    return Ok(Some(wait));
                }
            };
            let turn = self.write_turn().await?;
            let written = write(held, row).execute(&mut *alone).await.map_err(store_error)?;
            drop(turn);
            if written.rows_affected() == 1 {
                recent.seen(key, Some(row));
                return Ok(None);
            }
        }
        Err(StoreError::Unavailable("a throttling count kept changing under its update".into()))
    }
}

#[async_trait]
impl Throttle for SqliteStore {
    async fn hit(&self, key: &str, window: Duration, now: OffsetDateTime) -> Result<Hits, StoreError> {
        let (mut relaxed, _turn) = self.relaxed_write().await?;
        let (start, count): (i64, i64) = sqlx::query_as(
            "INSERT INTO throttle (key, window_start, hits) VALUES (?1, ?2, 1) ON CONFLICT (key) DO UPDATE SET \
             hits = CASE WHEN throttle.window_start <= ?3 THEN 1 ELSE throttle.hits + 1 END, \
             window_start = CASE WHEN throttle.window_start <= ?3 THEN ?2 ELSE throttle.window_start END \
             RETURNING window_start, hits",
        )
        .bind(key)
        .bind(ms(now))
        .bind(ms(now - window))
        .fetch_one(&mut *relaxed)
        .await
        .map_err(store_error)?;
        Ok(Hits { count: u32::try_from(count).unwrap_or(u32::MAX), window_ends: from_ms(start)? + window })
    }

    async fn take(&self, key: &str, bucket: Bucket, now: OffsetDateTime) -> Result<Option<Duration>, StoreError> {
        let now = ms(now);
        let next = |held: Option<(f64, i64)>| {
            Ok(bucket.take(held.map(|(tokens, at)| (tokens, Duration::milliseconds(now - at)))).map(|left| (left, now)))
        };
        let write = |held, (tokens, at): (f64, i64)| {
            match held {
            None => sqlx::query(
                "INSERT INTO rate_buckets (key, tokens, updated_at) VALUES (?, ?, ?) ON CONFLICT (key) DO NOTHING",
            )
            .bind(key)
            .bind(tokens)
            .bind(at),
            Some((was, was_at)) => sqlx::query(
                "UPDATE rate_buckets SET tokens = ?2, updated_at = ?3 WHERE key = ?1 AND tokens = ?4 AND updated_at = ?5",
            )
            .bind(key)
            .bind(tokens)
            .bind(at)
            .bind(was)
            .bind(was_at),
        }
        };
        let read = "SELECT tokens, updated_at FROM rate_buckets WHERE key = ?";
        self.count(&self.recent().buckets, key, read, next, write).await
    }

    async fn claim_attempt(
        &self,
        key: &str,
        policy: &AttemptPolicy,
        now: OffsetDateTime,
    ) -> Result<Option<Duration>, StoreError> {
        let next = |held: Option<(i64, i64)>| {
            let (failures, blocked_until) = held.unwrap_or((0, 0));
            let counted = policy.claim(u32::try_from(failures).unwrap_or(0), from_ms(blocked_until)?, now);
            Ok(counted.map(|(failures, until)| (i64::from(failures), ms(until))))
        };
        let write = |held, (failures, until): (i64, i64)| match held {
            None => sqlx::query(
                "INSERT INTO login_attempts (key, failures, blocked_until, last_at) VALUES (?, ?, ?, ?) \
                 ON CONFLICT (key) DO NOTHING",
            )
            .bind(key)
            .bind(failures)
            .bind(until)
            .bind(ms(now)),
            Some((was, was_until)) => sqlx::query(
                "UPDATE login_attempts SET failures = ?2, blocked_until = ?3, last_at = ?4 \
                 WHERE key = ?1 AND failures = ?5 AND blocked_until = ?6",
            )
            .bind(key)
            .bind(failures)
            .bind(until)
            .bind(ms(now))
            .bind(was)
            .bind(was_until),
        };
        let read = "SELECT failures, blocked_until FROM login_attempts WHERE key = ?";
        self.count(&self.recent().attempts, key, read, next, write).await
    }

    async fn clear_attempts(&self, key: &str) -> Result<(), StoreError> {
        // On the relaxed connection: never between a claim's
        // read and its write, which would count on from what it read.
        let (mut relaxed, _turn) = self.relaxed_write().await?;
        sqlx::query("DELETE FROM login_attempts WHERE key = ?")
            .bind(key)
            .execute(&mut *relaxed)
            .await
            .map_err(store_error)?;
        self.recent().cleared(key);
        Ok(())
    }
}
