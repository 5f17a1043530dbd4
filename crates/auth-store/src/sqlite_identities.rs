//! External (OAuth/OpenID) identities on SQLite.

use async_trait::async_trait;
use auth_core::mail::Mail;
use auth_core::{DomainEvent, ExternalIdentity, IdentityStore, StoreError, Unlinked, User, UserId};
use sqlx::sqlite::SqliteRow;
use sqlx::{Row, SqliteConnection};

use crate::sqlite::{insert_event, insert_user, ms, time_of, uuid_of};
use crate::sqlite_recovery::{NOTICE_LIFETIME, enqueue};
use crate::{SqliteStore, identity_columns, store_error};

fn identity_from(row: &SqliteRow) -> Result<ExternalIdentity, StoreError> {
    Ok(ExternalIdentity {
        id: uuid_of(row, "id")?,
        user_id: UserId::from_uuid(uuid_of(row, "user_id")?),
        provider: row.try_get("provider").map_err(store_error)?,
        issuer: row.try_get("issuer").map_err(store_error)?,
        subject: row.try_get("subject").map_err(store_error)?,
        email: row.try_get("email").map_err(store_error)?,
        created_at: time_of(row, "created_at")?,
    })
}

async fn insert_identity(tx: &mut SqliteConnection, i: &ExternalIdentity) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO external_identities (id, user_id, provider, issuer, subject, email, created_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(i.id.to_string())
    .bind(i.user_id.to_string())
    .bind(&i.provider)
    .bind(&i.issuer)
    .bind(&i.subject)
    .bind(&i.email)
    .bind(ms(i.created_at))
    .execute(&mut *tx)
    .await
    .map_err(store_error)?;
    Ok(())
}

#[async_trait]
impl IdentityStore for SqliteStore {
    async fn identity(&self, issuer: &str, subject: &str) -> Result<Option<ExternalIdentity>, StoreError> {
        let sql = concat!("SELECT ", identity_columns!(), " FROM external_identities WHERE issuer = ? AND subject = ?");
        let row = sqlx::query(sql)
            .bind(issuer)
            .bind(subject)
            .fetch_optional(&mut *self.read().await?)
            .await
            .map_err(store_error)?;
        row.as_ref().map(identity_from).transpose()
    }

    async fn create_user_with_identity(
        &self,
        user: &User,
        identity: &ExternalIdentity,
        event: &DomainEvent,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        insert_user(&mut tx, user).await?;
        insert_identity(&mut tx, identity).await?;
        insert_event(&mut tx, event).await?;
        tx.commit().await.map_err(store_error)
    }

    async fn link_identity(&self, identity: &ExternalIdentity, notice: &Mail) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        insert_identity(&mut tx, identity).await?;
        let now = identity.created_at;
        enqueue(&mut tx, notice, Some(identity.user_id), None, now, now + NOTICE_LIFETIME).await?;
        tx.commit().await.map_err(store_error)
    }

    async fn identities_of(&self, user: UserId) -> Result<Vec<ExternalIdentity>, StoreError> {
        let sql = concat!(
            "SELECT ",
            identity_columns!(),
            " FROM external_identities WHERE user_id = ? ORDER BY created_at, id"
        );
        let rows =
            sqlx::query(sql).bind(user.to_string()).fetch_all(&mut *self.read().await?).await.map_err(store_error)?;
        rows.iter().map(identity_from).collect()
    }

    async fn unlink_identity(&self, user: UserId, id: uuid::Uuid) -> Result<Unlinked, StoreError> {
        let mut tx = self.begin().await?;
        // One writing statement: SQLite runs it alone, so two unlinks at
        // once cannot both see the other identity still there.
        let gone = sqlx::query(
            "DELETE FROM external_identities WHERE id = ?1 AND user_id = ?2 AND (\
             EXISTS (SELECT 1 FROM users WHERE id = ?2 AND password_hash IS NOT NULL) \
             OR (SELECT COUNT(*) FROM external_identities WHERE user_id = ?2) > 1)",
        )
        .bind(id.to_string())
        .bind(user.to_string())
        .execute(&mut *tx)
        .await
        .map_err(store_error)?;
        if gone.rows_affected() == 1 {
            tx.commit().await.map_err(store_error)?;
            return Ok(Unlinked::Done);
        }
        let exists: Option<i64> = sqlx::query_scalar("SELECT 1 FROM external_identities WHERE id = ? AND user_id = ?")
            .bind(id.to_string())
            .bind(user.to_string())
            .fetch_optional(&mut *tx)
            .await
            .map_err(store_error)?;
        tx.rollback().await;
        Ok(if exists.is_some() { Unlinked::LastWay } else { Unlinked::NotFound })
    }
}
