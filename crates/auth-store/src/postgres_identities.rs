//! External (OAuth/OpenID) identities on PostgreSQL.

use async_trait::async_trait;
use auth_core::mail::Mail;
use auth_core::{DomainEvent, ExternalIdentity, IdentityStore, StoreError, Unlinked, User, UserId};
use sqlx::postgres::PgRow;
use sqlx::{Postgres, Row, Transaction};

use crate::postgres::{insert_event, insert_user};
use crate::postgres_recovery::{NOTICE_LIFETIME, enqueue};
use crate::{PgStore, identity_columns, store_error};

fn identity_from(row: &PgRow) -> Result<ExternalIdentity, StoreError> {
    Ok(ExternalIdentity {
        id: row.try_get("id").map_err(store_error)?,
        user_id: UserId::from_uuid(row.try_get("user_id").map_err(store_error)?),
        provider: row.try_get("provider").map_err(store_error)?,
        issuer: row.try_get("issuer").map_err(store_error)?,
        subject: row.try_get("subject").map_err(store_error)?,
        email: row.try_get("email").map_err(store_error)?,
        created_at: row.try_get("created_at").map_err(store_error)?,
    })
}

async fn insert_identity(tx: &mut Transaction<'_, Postgres>, i: &ExternalIdentity) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO external_identities (id, user_id, provider, issuer, subject, email, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(i.id)
    .bind(i.user_id.as_uuid())
    .bind(&i.provider)
    .bind(&i.issuer)
    .bind(&i.subject)
    .bind(&i.email)
    .bind(i.created_at)
    .execute(&mut **tx)
    .await
    .map_err(store_error)?;
    Ok(())
}

#[async_trait]
impl IdentityStore for PgStore {
    async fn identity(&self, issuer: &str, subject: &str) -> Result<Option<ExternalIdentity>, StoreError> {
        let sql =
            concat!("SELECT ", identity_columns!(), " FROM external_identities WHERE issuer = $1 AND subject = $2");
        let row = sqlx::query(sql).bind(issuer).bind(subject).fetch_optional(self.pool()).await.map_err(store_error)?;
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
            " FROM external_identities WHERE user_id = $1 ORDER BY created_at, id"
        );
        let rows = sqlx::query(sql).bind(user.as_uuid()).fetch_all(self.pool()).await.map_err(store_error)?;
        rows.iter().map(identity_from).collect()
    }

    async fn unlink_identity(&self, user: UserId, id: uuid::Uuid) -> Result<Unlinked, StoreError> {
        let mut tx = self.begin().await?;
        // The user row is held until commit: two unlinks at once take
        // turns, and the second counts what the first left.
        let has_password: Option<bool> =
            sqlx::query_scalar("SELECT password_hash IS NOT NULL FROM users WHERE id = $1 FOR UPDATE")
                .bind(user.as_uuid())
                .fetch_optional(&mut *tx)
                .await
                .map_err(store_error)?;
        let Some(has_password) = has_password else { return Ok(Unlinked::NotFound) };
        let ids: Vec<uuid::Uuid> = sqlx::query_scalar("SELECT id FROM external_identities WHERE user_id = $1")
            .bind(user.as_uuid())
            .fetch_all(&mut *tx)
            .await
            .map_err(store_error)?;
        if !ids.contains(&id) {
            return Ok(Unlinked::NotFound);
        }
        if !has_password && ids.len() == 1 {
            return Ok(Unlinked::LastWay);
        }
        sqlx::query("DELETE FROM external_identities WHERE id = $1 AND user_id = $2")
            .bind(id)
            .bind(user.as_uuid())
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
        tx.commit().await.map_err(store_error)?;
        Ok(Unlinked::Done)
    }
}
