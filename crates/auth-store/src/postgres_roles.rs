//! Roles, grants, account state and the audit log on PostgreSQL.

use async_trait::async_trait;
use auth_core::roles::{AccountState, AuditEntry, EventFor, MAX_ROLES_PER_USER, Role, RoleChange, RoleStore, Staled};
use auth_core::{DomainEvent, StoreError, User, UserId};
use sqlx::postgres::PgRow;
use sqlx::{Postgres, Row, Transaction};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::postgres::{insert_event, revoke_sessions_in, user_from};
use crate::sqlite_roles::like_prefix;
use crate::{PgStore, listed, store_error, user_columns};

pub(crate) async fn insert_audit(tx: &mut Transaction<'_, Postgres>, a: &AuditEntry) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO audit_log (id, at, actor, action, target, request_id, detail, ip, user_agent, reason) \
         VALUES ($1, $2, $3, $4, $5, $6, $7::text::jsonb, $8, $9, $10)",
    )
    .bind(a.id)
    .bind(a.at)
    .bind(a.actor.map(|u| u.as_uuid()))
    .bind(&a.action)
    .bind(&a.target)
    .bind(&a.request_id)
    .bind(a.detail.to_string())
    .bind(&a.ip)
    .bind(&a.user_agent)
    .bind(&a.reason)
    .execute(&mut **tx)
    .await
    .map_err(store_error)?;
    Ok(())
}

async fn roles_of(tx: &mut Transaction<'_, Postgres>, user: UserId) -> Result<Vec<String>, StoreError> {
    sqlx::query_scalar("SELECT role FROM user_roles WHERE user_id = $1 ORDER BY role")
        .bind(user.as_uuid())
        .fetch_all(&mut **tx)
        .await
        .map_err(store_error)
}

/// Bumps `users`' token versions and tells each what it holds now. The
/// rows are taken in id order, as every writer here takes them, after the
/// role: no two transactions wait on each other in a circle.
async fn stale(
    tx: &mut Transaction<'_, Postgres>,
    users: &[UserId],
    event_for: EventFor<'_>,
) -> Result<Vec<Staled>, StoreError> {
    let mut staled = Vec::with_capacity(users.len());
    for user in users {
        let version: i64 = sqlx::query_scalar(
            "UPDATE users SET tokens_version = tokens_version + 1 WHERE id = $1 RETURNING tokens_version",
        )
        .bind(user.as_uuid())
        .fetch_one(&mut **tx)
        .await
        .map_err(store_error)?;
        let roles = roles_of(tx, *user).await?;
        insert_event(tx, &event_for(*user, &roles, version)).await?;
        staled.push((*user, version));
    }
    Ok(staled)
}

/// Takes the role `name` for this transaction; whether it exists.
async fn lock_role(tx: &mut Transaction<'_, Postgres>, name: &str, exclusive: bool) -> Result<bool, StoreError> {
    let sql = match exclusive {
        true => "SELECT 1 FROM roles WHERE name = $1 FOR UPDATE",
        false => "SELECT 1 FROM roles WHERE name = $1 FOR SHARE",
    };
    let found: Option<i32> = sqlx::query_scalar(sql).bind(name).fetch_optional(&mut **tx).await.map_err(store_error)?;
    Ok(found.is_some())
}

async fn holders(tx: &mut Transaction<'_, Postgres>, role: &str) -> Result<Vec<UserId>, StoreError> {
    let ids: Vec<Uuid> = sqlx::query_scalar("SELECT user_id FROM user_roles WHERE role = $1 ORDER BY user_id")
        .bind(role)
        .fetch_all(&mut **tx)
        .await
        .map_err(store_error)?;
    Ok(ids.into_iter().map(UserId::from_uuid).collect())
}

fn role_from(row: &PgRow) -> Result<Role, StoreError> {
    Ok(Role {
        name: row.try_get("name").map_err(store_error)?,
        description: row.try_get("description").map_err(store_error)?,
        permissions: listed(row.try_get("permissions").map_err(store_error)?),
    })
}

fn audit_from(row: &PgRow) -> Result<AuditEntry, StoreError> {
    let actor: Option<Uuid> = row.try_get("actor").map_err(store_error)?;
    let detail: String = row.try_get("detail").map_err(store_error)?;
    Ok(AuditEntry {
        id: row.try_get("id").map_err(store_error)?,
        at: row.try_get("at").map_err(store_error)?,
        actor: actor.map(UserId::from_uuid),
        action: row.try_get("action").map_err(store_error)?,
        target: row.try_get("target").map_err(store_error)?,
        request_id: row.try_get("request_id").map_err(store_error)?,
        detail: serde_json::from_str(&detail).map_err(|e| StoreError::Unavailable(e.to_string()))?,
        ip: row.try_get("ip").map_err(store_error)?,
        user_agent: row.try_get("user_agent").map_err(store_error)?,
        reason: row.try_get("reason").map_err(store_error)?,
    })
}

#[async_trait]
impl RoleStore for PgStore {
    async fn roles(&self) -> Result<Vec<Role>, StoreError> {
        let rows = sqlx::query(
            "SELECT name, description, (SELECT string_agg(permission, ',') FROM role_permissions \
             WHERE role = roles.name) AS permissions FROM roles ORDER BY name",
        )
        .fetch_all(self.pool())
        .await
        .map_err(store_error)?;
        rows.iter().map(role_from).collect()
    }

    async fn put_role(
        &self,
        role: &Role,
        now: OffsetDateTime,
        event_for: EventFor<'_>,
        audit: &AuditEntry,
    ) -> Result<Vec<Staled>, StoreError> {
        let mut tx = self.begin().await?;
        let before = sqlx::query(
            "SELECT name, description, (SELECT string_agg(permission, ',') FROM role_permissions \
             WHERE role = roles.name) AS permissions FROM roles WHERE name = $1 FOR UPDATE",
        )
        .bind(&role.name)
        .fetch_optional(&mut *tx)
        .await
        .map_err(store_error)?;
        let before = before.as_ref().map(role_from).transpose()?;
        if before.as_ref() == Some(role) {
            return Ok(Vec::new());
        }
        sqlx::query(
            "INSERT INTO roles (name, description, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET description = excluded.description",
        )
        .bind(&role.name)
        .bind(&role.description)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(store_error)?;
        sqlx::query("DELETE FROM role_permissions WHERE role = $1")
            .bind(&role.name)
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
        for permission in &role.permissions {
            sqlx::query("INSERT INTO role_permissions (role, permission) VALUES ($1, $2)")
                .bind(&role.name)
                .bind(permission)
                .execute(&mut *tx)
                .await
                .map_err(store_error)?;
        }
        // Only a change of permissions changes what tokens say.
        let moved = before.is_some_and(|b| b.permissions != role.permissions);
        let holders = if moved { holders(&mut tx, &role.name).await? } else { Vec::new() };
        let staled = stale(&mut tx, &holders, event_for).await?;
        insert_audit(&mut tx, audit).await?;
        tx.commit().await.map_err(store_error)?;
        Ok(staled)
    }

    async fn delete_role(
        &self,
        name: &str,
        event_for: EventFor<'_>,
        audit: &AuditEntry,
    ) -> Result<Option<Vec<Staled>>, StoreError> {
        let mut tx = self.begin().await?;
        // The role first, as every writer takes it: a grant of it in flight
        // commits before, and its holder is counted.
        if !lock_role(&mut tx, name, true).await? {
            return Ok(None);
        }
        let holders = holders(&mut tx, name).await?;
        let gone =
            sqlx::query("DELETE FROM roles WHERE name = $1").bind(name).execute(&mut *tx).await.map_err(store_error)?;
        if gone.rows_affected() == 0 {
            return Ok(None);
        }
        let staled = stale(&mut tx, &holders, event_for).await?;
        insert_audit(&mut tx, audit).await?;
        tx.commit().await.map_err(store_error)?;
        Ok(Some(staled))
    }

    async fn change_role(
        &self,
        user: UserId,
        role: &str,
        grant: bool,
        now: OffsetDateTime,
        event_for: EventFor<'_>,
        audit: &AuditEntry,
    ) -> Result<RoleChange, StoreError> {
        let mut tx = self.begin().await?;
        // The role, then the user row, as every writer takes them: two
        // changes of one user take turns, each event names what the user
        // holds after it, and a role being redefined or deleted waits.
        if !lock_role(&mut tx, role, false).await? {
            return Ok(RoleChange::NoSuchRole);
        }
        let found: Option<i32> = sqlx::query_scalar("SELECT 1 FROM users WHERE id = $1 FOR UPDATE")
            .bind(user.as_uuid())
            .fetch_optional(&mut *tx)
            .await
            .map_err(store_error)?;
        if found.is_none() {
            return Ok(RoleChange::NoSuchUser);
        }
        let held: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM user_roles WHERE user_id = $1")
            .bind(user.as_uuid())
            .fetch_one(&mut *tx)
            .await
            .map_err(store_error)?;
        if grant && held >= MAX_ROLES_PER_USER as i64 {
            return Ok(RoleChange::TooMany);
        }
        let changed = match grant {
            true => sqlx::query(
                "INSERT INTO user_roles (user_id, role, granted_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            )
            .bind(user.as_uuid())
            .bind(role)
            .bind(now),
            false => {
                sqlx::query("DELETE FROM user_roles WHERE user_id = $1 AND role = $2").bind(user.as_uuid()).bind(role)
            }
        };
        if changed.execute(&mut *tx).await.map_err(store_error)?.rows_affected() == 0 {
            return Ok(RoleChange::Unchanged);
        }
        let staled = stale(&mut tx, &[user], event_for).await?;
        insert_audit(&mut tx, audit).await?;
        let roles = roles_of(&mut tx, user).await?;
        tx.commit().await.map_err(store_error)?;
        Ok(RoleChange::Changed(roles, staled.first().map_or(0, |(_, version)| *version)))
    }

    async fn set_disabled(
        &self,
        user: UserId,
        disabled: bool,
        now: OffsetDateTime,
        event_for: &(dyn Fn(i64) -> DomainEvent + Sync),
        audit: &AuditEntry,
    ) -> Result<AccountState, StoreError> {
        let mut tx = self.begin().await?;
        let state: Option<(Option<OffsetDateTime>, i64)> =
            sqlx::query_as("SELECT disabled_at, tokens_version FROM users WHERE id = $1 FOR UPDATE")
                .bind(user.as_uuid())
                .fetch_optional(&mut *tx)
                .await
                .map_err(store_error)?;
        let Some((disabled_at, version)) = state else { return Ok(AccountState::NoSuchUser) };
        if disabled_at.is_some() == disabled {
            return Ok(AccountState::Unchanged);
        }
        let (state, version) = if disabled {
            let version: i64 = sqlx::query_scalar(
                "UPDATE users SET disabled_at = $1, tokens_version = tokens_version + 1 WHERE id = $2 \
                 RETURNING tokens_version",
            )
            .bind(now)
            .bind(user.as_uuid())
            .fetch_one(&mut *tx)
            .await
            .map_err(store_error)?;
            let sessions = revoke_sessions_in(&mut tx, user, None, now).await?;
            (AccountState::Disabled { sessions, version }, version)
        } else {
            sqlx::query("UPDATE users SET disabled_at = NULL WHERE id = $1")
                .bind(user.as_uuid())
                .execute(&mut *tx)
                .await
                .map_err(store_error)?;
            (AccountState::Enabled, version)
        };
        insert_event(&mut tx, &event_for(version)).await?;
        insert_audit(&mut tx, audit).await?;
        tx.commit().await.map_err(store_error)?;
        Ok(state)
    }

    async fn users_page(&self, prefix: &str, after: Option<&str>, limit: u32) -> Result<Vec<User>, StoreError> {
        let sql = concat!(
            "SELECT ",
            user_columns!("string_agg"),
            " FROM users WHERE lower(email) LIKE $1 ESCAPE '\\' AND email > $2 ORDER BY email LIMIT $3"
        );
        let rows = sqlx::query(sql)
            .bind(like_prefix(prefix))
            .bind(after.unwrap_or(""))
            .bind(i64::from(limit))
            .fetch_all(self.pool())
            .await
            .map_err(store_error)?;
        rows.iter().map(user_from).collect()
    }

    async fn record(&self, audit: &AuditEntry) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        insert_audit(&mut tx, audit).await?;
        tx.commit().await.map_err(store_error)
    }

    async fn audit_page(
        &self,
        before: Option<(OffsetDateTime, Uuid)>,
        limit: u32,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, at, actor, action, target, request_id, detail::text AS detail, ip, user_agent, reason \
             FROM audit_log \
             WHERE $1::timestamptz IS NULL OR (at, id) < ($1, $2) ORDER BY at DESC, id DESC LIMIT $3",
        )
        .bind(before.map(|(at, _)| at))
        .bind(before.map(|(_, id)| id).unwrap_or_default())
        .bind(i64::from(limit))
        .fetch_all(self.pool())
        .await
        .map_err(store_error)?;
        rows.iter().map(audit_from).collect()
    }
}
