//! The ports on PostgreSQL: native UUID, TIMESTAMPTZ and JSONB.

use async_trait::async_trait;
use auth_core::events::StoredEvent;
use auth_core::session::RefreshRecord;
use auth_core::{
    DeletionLedger, DeletionRecord, DomainEvent, Email, EventKind, EventSink, Opening, Outbox, SecretHash, Session,
    SessionId, SessionStore, StoreError, User, UserId, UserStore,
};
use sqlx::postgres::{PgPoolOptions, PgRow};
use sqlx::{PgPool, Postgres, Row, Transaction};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{Health, OpenError, event_columns, session_columns, store_error, user_columns};

#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    /// Every statement is bounded (`statement_timeout` 5 s) and so is a
    /// transaction left idle (10 s): a stuck query or a lost client answers
    /// 503 instead of holding a request, a connection and its locks. Set
    /// per session after connecting (a pooler such as PgBouncer refuses
    /// them as startup options); migrations lift the bound for themselves.
    pub async fn connect(url: &str) -> Result<Self, OpenError> {
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(std::time::Duration::from_secs(5))
            .after_connect(|conn, _| {
                Box::pin(async move {
                    sqlx::raw_sql("SET statement_timeout = '5s'; SET idle_in_transaction_session_timeout = '10s'")
                        .execute(conn)
                        .await
                        .map(|_| ())
                })
            })
            .connect(url)
            .await
            .map_err(|e| OpenError::Connect(e.to_string()))?;
        Ok(Self { pool })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub async fn migrate(&self) -> Result<Vec<i64>, OpenError> {
        let applied = crate::migrations::run_postgres(&self.pool).await?;
        for report in crate::migrations::normalise_postgres(&self.pool).await? {
            tracing::error!("email normalisation: {report}");
        }
        Ok(applied)
    }

    pub(crate) async fn begin(&self) -> Result<Transaction<'static, Postgres>, StoreError> {
        self.pool.begin().await.map_err(store_error)
    }
}

pub(crate) async fn insert_event(tx: &mut Transaction<'_, Postgres>, e: &DomainEvent) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO outbox (id, event_type, user_id, data, occurred_at) VALUES ($1, $2, $3, $4, $5)")
        .bind(e.id)
        .bind(e.kind.subject())
        .bind(e.user_id.as_uuid())
        .bind(&e.data)
        .bind(e.occurred_at)
        .execute(&mut **tx)
        .await
        .map_err(store_error)?;
    Ok(())
}

/// Replaces `verified` by `phc` only if `verified` is still `user`'s hash.
pub(crate) async fn replace_hash<'e>(
    db: impl sqlx::Executor<'e, Database = Postgres>,
    user: UserId,
    verified: &str,
    phc: &str,
) -> Result<bool, StoreError> {
    let done = sqlx::query("UPDATE users SET password_hash = $3 WHERE id = $1 AND password_hash = $2")
        .bind(user.as_uuid())
        .bind(verified)
        .bind(phc)
        .execute(db)
        .await
        .map_err(store_error)?;
    Ok(done.rows_affected() == 1)
}

pub(crate) async fn insert_user(tx: &mut Transaction<'_, Postgres>, user: &User) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO users (id, email, password_hash, email_verified, created_at) VALUES ($1, $2, $3, $4, $5)")
        .bind(user.id.as_uuid())
        .bind(user.email.as_str())
        .bind(&user.password_hash)
        .bind(user.email_verified)
        .bind(user.created_at)
        .execute(&mut **tx)
        .await
        .map_err(store_error)?;
    for role in &user.roles {
        sqlx::query("INSERT INTO user_roles (user_id, role, granted_at) VALUES ($1, $2, $3)")
            .bind(user.id.as_uuid())
            .bind(role)
            .bind(user.created_at)
            .execute(&mut **tx)
            .await
            .map_err(store_error)?;
    }
    Ok(())
}

pub(crate) fn user_from(row: &PgRow) -> Result<User, StoreError> {
    let email: String = row.try_get("email").map_err(store_error)?;
    Ok(User {
        id: UserId::from_uuid(row.try_get("id").map_err(store_error)?),
        email: Email::stored(email),
        password_hash: row.try_get("password_hash").map_err(store_error)?,
        email_verified: row.try_get("email_verified").map_err(store_error)?,
        created_at: row.try_get("created_at").map_err(store_error)?,
        roles: crate::listed(row.try_get("roles").map_err(store_error)?),
        permissions: crate::listed(row.try_get("permissions").map_err(store_error)?),
        disabled: row.try_get::<Option<OffsetDateTime>, _>("disabled_at").map_err(store_error)?.is_some(),
        tokens_version: row.try_get("tokens_version").map_err(store_error)?,
    })
}

fn session_from(row: &PgRow) -> Result<Session, StoreError> {
    Ok(Session {
        id: SessionId::from_uuid(row.try_get("id").map_err(store_error)?),
        user_id: UserId::from_uuid(row.try_get("user_id").map_err(store_error)?),
        created_at: row.try_get("created_at").map_err(store_error)?,
        last_seen_at: row.try_get("last_seen_at").map_err(store_error)?,
        expires_at: row.try_get("expires_at").map_err(store_error)?,
        idle_expires_at: row.try_get("idle_expires_at").map_err(store_error)?,
        revoked_at: row.try_get("revoked_at").map_err(store_error)?,
        user_agent: row.try_get("user_agent").map_err(store_error)?,
        ip: row.try_get("ip").map_err(store_error)?,
    })
}

fn event_from(row: &PgRow) -> Result<StoredEvent, StoreError> {
    let kind: String = row.try_get("event_type").map_err(store_error)?;
    let kind =
        EventKind::from_subject(&kind).ok_or_else(|| StoreError::Unavailable(format!("unknown event type {kind}")))?;
    Ok(StoredEvent {
        event: DomainEvent {
            id: row.try_get("id").map_err(store_error)?,
            kind,
            user_id: UserId::from_uuid(row.try_get("user_id").map_err(store_error)?),
            data: row.try_get("data").map_err(store_error)?,
            occurred_at: row.try_get("occurred_at").map_err(store_error)?,
        },
        published_at: row.try_get("published_at").map_err(store_error)?,
    })
}

#[async_trait]
impl UserStore for PgStore {
    async fn create_user(&self, user: &User, event: &DomainEvent) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        insert_user(&mut tx, user).await?;
        insert_event(&mut tx, event).await?;
        tx.commit().await.map_err(store_error)
    }

    async fn user_by_email(&self, email: &Email) -> Result<Option<User>, StoreError> {
        let sql = concat!("SELECT ", user_columns!("string_agg"), " FROM users WHERE email = $1");
        let row = sqlx::query(sql).bind(email.as_str()).fetch_optional(&self.pool).await.map_err(store_error)?;
        row.as_ref().map(user_from).transpose()
    }

    async fn user_by_id(&self, id: UserId) -> Result<Option<User>, StoreError> {
        let sql = concat!("SELECT ", user_columns!("string_agg"), " FROM users WHERE id = $1");
        let row = sqlx::query(sql).bind(id.as_uuid()).fetch_optional(&self.pool).await.map_err(store_error)?;
        row.as_ref().map(user_from).transpose()
    }

    async fn set_password_hash(&self, id: UserId, phc: &str) -> Result<(), StoreError> {
        let done = sqlx::query("UPDATE users SET password_hash = $2 WHERE id = $1")
            .bind(id.as_uuid())
            .bind(phc)
            .execute(&self.pool)
            .await
            .map_err(store_error)?;
        if done.rows_affected() == 0 { Err(StoreError::NotFound) } else { Ok(()) }
    }

    async fn replace_password_hash(&self, id: UserId, verified: &str, phc: &str) -> Result<bool, StoreError> {
        replace_hash(&self.pool, id, verified, phc).await
    }

    async fn delete_user(&self, id: UserId, event: &DomainEvent) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        let gone = sqlx::query("DELETE FROM users WHERE id = $1")
            .bind(id.as_uuid())
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
        if gone.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        sqlx::query("INSERT INTO deletions (user_id, deleted_at) VALUES ($1, $2) ON CONFLICT DO NOTHING")
            .bind(id.as_uuid())
            .bind(event.occurred_at)
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
        // Delivered events of the user go; undelivered ones lose their PII.
        sqlx::query("DELETE FROM outbox WHERE user_id = $1 AND published_at IS NOT NULL")
            .bind(id.as_uuid())
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
        sqlx::query("UPDATE outbox SET data = data - 'email' WHERE user_id = $1")
            .bind(id.as_uuid())
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
        insert_event(&mut tx, event).await?;
        tx.commit().await.map_err(store_error)
    }
}

#[async_trait]
impl SessionStore for PgStore {
    async fn create_session(&self, s: &Session, opening: &Opening<'_>) -> Result<bool, StoreError> {
        let Opening { refresh, event, verified, audit, clears } = *opening;
        let mut tx = self.begin().await?;
        // Shares the user row until commit: a reset, change or disabling
        // waits for this session and then revokes it, or goes first and
        // this finds the hash changed or the account disabled.
        let still: Option<i32> = sqlx::query_scalar(
            "SELECT 1 FROM users WHERE id = $1 AND disabled_at IS NULL \
             AND ($2::text IS NULL OR password_hash = $2) FOR SHARE",
        )
        .bind(s.user_id.as_uuid())
        .bind(verified)
        .fetch_optional(&mut *tx)
        .await
        .map_err(store_error)?;
        if still.is_none() {
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO sessions (id, user_id, created_at, last_seen_at, expires_at, idle_expires_at, \
             revoked_at, user_agent, ip) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(s.id.as_uuid())
        .bind(s.user_id.as_uuid())
        .bind(s.created_at)
        .bind(s.last_seen_at)
        .bind(s.expires_at)
        .bind(s.idle_expires_at)
        .bind(s.revoked_at)
        .bind(&s.user_agent)
        .bind(&s.ip)
        .execute(&mut *tx)
        .await
        .map_err(store_error)?;
        sqlx::query("INSERT INTO refresh_tokens (token_hash, session_id, created_at) VALUES ($1, $2, $3)")
            .bind(refresh.as_str())
            .bind(s.id.as_uuid())
            .bind(s.created_at)
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
        insert_event(&mut tx, event).await?;
        crate::postgres_roles::insert_audit(&mut tx, audit).await?;
        if let Some(key) = clears {
            sqlx::query("DELETE FROM login_attempts WHERE key = $1")
                .bind(key)
                .execute(&mut *tx)
                .await
                .map_err(store_error)?;
        }
        tx.commit().await.map_err(store_error)?;
        Ok(true)
    }

    async fn session(&self, id: SessionId) -> Result<Option<Session>, StoreError> {
        let sql = concat!("SELECT ", session_columns!(), " FROM sessions WHERE id = $1");
        let row = sqlx::query(sql).bind(id.as_uuid()).fetch_optional(&self.pool).await.map_err(store_error)?;
        row.as_ref().map(session_from).transpose()
    }

    async fn active_sessions(&self, user: UserId, now: OffsetDateTime) -> Result<Vec<Session>, StoreError> {
        let sql = concat!(
            "SELECT ",
            session_columns!(),
            " FROM sessions WHERE user_id = $1 AND revoked_at IS NULL \
             AND expires_at > $2 AND idle_expires_at > $2 ORDER BY created_at DESC, id"
        );
        let rows = sqlx::query(sql).bind(user.as_uuid()).bind(now).fetch_all(&self.pool).await.map_err(store_error)?;
        rows.iter().map(session_from).collect()
    }

    async fn refresh_record(&self, token: &SecretHash) -> Result<Option<RefreshRecord>, StoreError> {
        let row = sqlx::query("SELECT session_id, superseded_at FROM refresh_tokens WHERE token_hash = $1")
            .bind(token.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(store_error)?;
        row.map(|r| {
            Ok(RefreshRecord {
                session_id: SessionId::from_uuid(r.try_get("session_id").map_err(store_error)?),
                superseded_at: r.try_get("superseded_at").map_err(store_error)?,
            })
        })
        .transpose()
    }

    async fn rotate_refresh(
        &self,
        session: SessionId,
        old: &SecretHash,
        new: &SecretHash,
        now: OffsetDateTime,
        idle_expires_at: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        // The session row first: a revocation holds it until it commits, and
        // the condition is checked again on the row it committed.
        let live = sqlx::query(
            "UPDATE sessions SET last_seen_at = $2, idle_expires_at = $3 WHERE id = $1 AND revoked_at IS NULL",
        )
        .bind(session.as_uuid())
        .bind(now)
        .bind(idle_expires_at)
        .execute(&mut *tx)
        .await
        .map_err(store_error)?;
        if live.rows_affected() == 0 {
            return Ok(false);
        }
        let swapped = sqlx::query(
            "UPDATE refresh_tokens SET superseded_at = $3 \
             WHERE token_hash = $1 AND session_id = $2 AND superseded_at IS NULL",
        )
        .bind(old.as_str())
        .bind(session.as_uuid())
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(store_error)?;
        if swapped.rows_affected() == 0 {
            return Ok(false);
        }
        sqlx::query("INSERT INTO refresh_tokens (token_hash, session_id, created_at) VALUES ($1, $2, $3)")
            .bind(new.as_str())
            .bind(session.as_uuid())
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
        tx.commit().await.map_err(store_error)?;
        Ok(true)
    }

    async fn revoke_session(&self, id: SessionId, now: OffsetDateTime) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        let user: Option<Uuid> = sqlx::query_scalar(
            "UPDATE sessions SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL RETURNING user_id",
        )
        .bind(id.as_uuid())
        .bind(now)
        .fetch_optional(&mut *tx)
        .await
        .map_err(store_error)?;
        let Some(user) = user else { return Ok(false) };
        insert_event(&mut tx, &DomainEvent::logged_out(UserId::from_uuid(user), id, now)).await?;
        tx.commit().await.map_err(store_error)?;
        Ok(true)
    }

    async fn revoke_sessions_of(
        &self,
        user: UserId,
        keep: Option<SessionId>,
        now: OffsetDateTime,
    ) -> Result<Vec<SessionId>, StoreError> {
        let mut tx = self.begin().await?;
        let ids = revoke_sessions_in(&mut tx, user, keep, now).await?;
        tx.commit().await.map_err(store_error)?;
        Ok(ids)
    }
}

/// Revokes every active session of `user` but `keep` inside `tx`, writing
/// one `user.logged_out` each.
pub(crate) async fn revoke_sessions_in(
    tx: &mut Transaction<'_, Postgres>,
    user: UserId,
    keep: Option<SessionId>,
    now: OffsetDateTime,
) -> Result<Vec<SessionId>, StoreError> {
    let ids: Vec<Uuid> = sqlx::query_scalar(
        "UPDATE sessions SET revoked_at = $3 WHERE user_id = $1 AND revoked_at IS NULL \
         AND ($2::uuid IS NULL OR id <> $2) RETURNING id",
    )
    .bind(user.as_uuid())
    .bind(keep.map(|k| k.as_uuid()))
    .bind(now)
    .fetch_all(&mut **tx)
    .await
    .map_err(store_error)?;
    let ids: Vec<SessionId> = ids.into_iter().map(SessionId::from_uuid).collect();
    for id in &ids {
        insert_event(tx, &DomainEvent::logged_out(user, *id, now)).await?;
    }
    Ok(ids)
}

#[async_trait]
impl Outbox for PgStore {
    async fn unpublished(&self, limit: u32) -> Result<Vec<StoredEvent>, StoreError> {
        let sql = concat!("SELECT ", event_columns!(), " FROM outbox WHERE published_at IS NULL ORDER BY seq LIMIT $1");
        let rows = sqlx::query(sql).bind(i64::from(limit)).fetch_all(&self.pool).await.map_err(store_error)?;
        rows.iter().map(event_from).collect()
    }

    async fn events_of(&self, user: UserId) -> Result<Vec<StoredEvent>, StoreError> {
        let sql = concat!("SELECT ", event_columns!(), " FROM outbox WHERE user_id = $1 ORDER BY seq");
        let rows = sqlx::query(sql).bind(user.as_uuid()).fetch_all(&self.pool).await.map_err(store_error)?;
        rows.iter().map(event_from).collect()
    }

    async fn mark_published(&self, ids: &[Uuid], now: OffsetDateTime) -> Result<(), StoreError> {
        sqlx::query("UPDATE outbox SET published_at = $2 WHERE id = ANY($1) AND published_at IS NULL")
            .bind(ids)
            .bind(now)
            .execute(&self.pool)
            .await
            .map_err(store_error)?;
        Ok(())
    }

    /// In batches, each well within the statement timeout, however many
    /// events a long outage left.
    async fn prune_published(&self, before: OffsetDateTime) -> Result<u64, StoreError> {
        const BATCH: u64 = 5_000;
        let mut pruned = 0;
        loop {
            let done = sqlx::query(
                "DELETE FROM outbox WHERE id IN \
                 (SELECT id FROM outbox WHERE published_at IS NOT NULL AND published_at < $1 LIMIT 5000)",
            )
            .bind(before)
            .execute(&self.pool)
            .await
            .map_err(store_error)?;
            pruned += done.rows_affected();
            if done.rows_affected() < BATCH {
                return Ok(pruned);
            }
        }
    }

    async fn relay_batch(&self, limit: u32, sink: &dyn EventSink, now: OffsetDateTime) -> Result<usize, StoreError> {
        let mut tx = self.begin().await?;
        // One relay at a time keeps events in order; the others skip this round.
        let ours: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock(7449354444734264692)")
            .fetch_one(&mut *tx)
            .await
            .map_err(store_error)?;
        if !ours {
            return Ok(0);
        }
        let sql = concat!(
            "SELECT ",
            event_columns!(),
            " FROM outbox WHERE published_at IS NULL ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED"
        );
        let rows = sqlx::query(sql).bind(i64::from(limit)).fetch_all(&mut *tx).await.map_err(store_error)?;
        let events: Vec<DomainEvent> =
            rows.iter().map(event_from).map(|e| e.map(|s| s.event)).collect::<Result<_, _>>()?;
        if events.is_empty() {
            return Ok(0);
        }
        let accepted = sink.deliver(&events).await.min(events.len());
        let ids: Vec<Uuid> = events[..accepted].iter().map(|e| e.id).collect();
        sqlx::query("UPDATE outbox SET published_at = $2 WHERE id = ANY($1)")
            .bind(&ids)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
        tx.commit().await.map_err(store_error)?;
        Ok(accepted)
    }
}

#[async_trait]
impl DeletionLedger for PgStore {
    async fn confirm_deletion(&self, user: UserId, service: &str, at: OffsetDateTime) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO deletion_confirmations (user_id, service, confirmed_at) \
             SELECT $1, $2, $3 WHERE EXISTS (SELECT 1 FROM deletions WHERE user_id = $1) ON CONFLICT DO NOTHING",
        )
        .bind(user.as_uuid())
        .bind(service)
        .bind(at)
        .execute(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(())
    }

    async fn deletion(&self, user: UserId) -> Result<Option<DeletionRecord>, StoreError> {
        let deleted_at: Option<OffsetDateTime> =
            sqlx::query_scalar("SELECT deleted_at FROM deletions WHERE user_id = $1")
                .bind(user.as_uuid())
                .fetch_optional(&self.pool)
                .await
                .map_err(store_error)?;
        let Some(deleted_at) = deleted_at else { return Ok(None) };
        let confirmations: Vec<(String, OffsetDateTime)> = sqlx::query_as(
            "SELECT service, confirmed_at FROM deletion_confirmations WHERE user_id = $1 ORDER BY service",
        )
        .bind(user.as_uuid())
        .fetch_all(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(Some(DeletionRecord { user_id: user, deleted_at, confirmations }))
    }
}

#[async_trait]
impl Health for PgStore {
    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await.map_err(store_error).map(|_| ())
    }
}
