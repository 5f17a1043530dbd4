//! Roles, grants, account state and the audit log on SQLite.

use async_trait::async_trait;
use auth_core::roles::{AccountState, AuditEntry, EventFor, MAX_ROLES_PER_USER, Role, RoleChange, RoleStore, Staled};
use auth_core::{DomainEvent, StoreError, User, UserId};
use sqlx::sqlite::SqliteRow;
use sqlx::{Row, SqliteConnection};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::sqlite::{bind_audit, from_ms, insert_event, ms, revoke_sessions_in, user_from, uuid_of};
use crate::{SqliteStore, listed, store_error, user_columns};

async fn insert_audit(db: &mut SqliteConnection, a: &AuditEntry) -> Result<(), StoreError> {
    let query = sqlx::query(
        "INSERT INTO audit_log (id, at, actor, action, target, request_id, detail, ip, user_agent, reason) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    );
    bind_audit(query, a).execute(db).await.map_err(store_error)?;
    Ok(())
}

async fn roles_of(tx: &mut SqliteConnection, user: UserId) -> Result<Vec<String>, StoreError> {
    sqlx::query_scalar("SELECT role FROM user_roles WHERE user_id = ? ORDER BY role")
        .bind(user.to_string())
        .fetch_all(&mut *tx)
        .await
        .map_err(store_error)
}

/// Bumps `users`' token versions and tells each what it holds now.
async fn stale(
    tx: &mut SqliteConnection,
    users: &[UserId],
    event_for: EventFor<'_>,
) -> Result<Vec<Staled>, StoreError> {
    let mut staled = Vec::with_capacity(users.len());
    for user in users {
        let version: i64 = sqlx::query_scalar(
            "UPDATE users SET tokens_version = tokens_version + 1 WHERE id = ? RETURNING tokens_version",
        )
        .bind(user.to_string())
        .fetch_one(&mut *tx)
        .await
        .map_err(store_error)?;
        let roles = roles_of(tx, *user).await?;
        insert_event(tx, &event_for(*user, &roles, version)).await?;
        staled.push((*user, version));
    }
    Ok(staled)
}

async fn holders(tx: &mut SqliteConnection, role: &str) -> Result<Vec<UserId>, StoreError> {
    let ids: Vec<String> = sqlx::query_scalar("SELECT user_id FROM user_roles WHERE role = ? ORDER BY user_id")
        .bind(role)
        .fetch_all(&mut *tx)
        .await
        .map_err(store_error)?;
    ids.iter().map(|id| id.parse().map_err(|_| StoreError::Unavailable("stored user id is invalid".into()))).collect()
}

fn role_from(row: &SqliteRow) -> Result<Role, StoreError> {
    Ok(Role {
        name: row.try_get("name").map_err(store_error)?,
        description: row.try_get("description").map_err(store_error)?,
        permissions: listed(row.try_get("permissions").map_err(store_error)?),
    })
}

fn audit_from(row: &SqliteRow) -> Result<AuditEntry, StoreError> {
    let actor: Option<String> = row.try_get("actor").map_err(store_error)?;
    let detail: String = row.try_get("detail").map_err(store_error)?;
    Ok(AuditEntry {
        id: uuid_of(row, "id")?,
        at: from_ms(row.try_get("at").map_err(store_error)?)?,
        actor: actor.map(|a| a.parse()).transpose().map_err(|_| StoreError::Unavailable("stored actor".into()))?,
        action: row.try_get("action").map_err(store_error)?,
        target: row.try_get("target").map_err(store_error)?,
        request_id: row.try_get("request_id").map_err(store_error)?,
        detail: serde_json::from_str(&detail).map_err(|e| StoreError::Unavailable(e.to_string()))?,
        ip: row.try_get("ip").map_err(store_error)?,
        user_agent: row.try_get("user_agent").map_err(store_error)?,
        reason: row.try_get("reason").map_err(store_error)?,
    })
}

/// `prefix` as a LIKE pattern matching itself literally, then anything.
pub(crate) fn like_prefix(prefix: &str) -> String {
    let mut pattern: String =
        prefix.chars().flat_map(|c| if matches!(c, '%' | '_' | '\\') { vec!['\\', c] } else { vec![c] }).collect();
    pattern.push('%');
    pattern
}

#[async_trait]
impl RoleStore for SqliteStore {
    async fn roles(&self) -> Result<Vec<Role>, StoreError> {
        let rows = sqlx::query(
            "SELECT name, description, (SELECT group_concat(permission, ',') FROM role_permissions \
             WHERE role = roles.name) AS permissions FROM roles ORDER BY name",
        )
        .fetch_all(&mut *self.read().await?)
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
            "SELECT name, description, (SELECT group_concat(permission, ',') FROM role_permissions \
             WHERE role = roles.name) AS permissions FROM roles WHERE name = ?",
        )
        .bind(&role.name)
        .fetch_optional(&mut *tx)
        .await
        .map_err(store_error)?;
        let before = before.as_ref().map(role_from).transpose()?;
        if before.as_ref() == Some(role) {
            tx.rollback().await;
            return Ok(Vec::new());
        }
        sqlx::query(
            "INSERT INTO roles (name, description, created_at) VALUES (?, ?, ?) \
             ON CONFLICT (name) DO UPDATE SET description = excluded.description",
        )
        .bind(&role.name)
        .bind(&role.description)
        .bind(ms(now))
        .execute(&mut *tx)
        .await
        .map_err(store_error)?;
        sqlx::query("DELETE FROM role_permissions WHERE role = ?")
            .bind(&role.name)
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
        for permission in &role.permissions {
            sqlx::query("INSERT INTO role_permissions (role, permission) VALUES (?, ?)")
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
        let holders = holders(&mut tx, name).await?;
        let gone =
            sqlx::query("DELETE FROM roles WHERE name = ?").bind(name).execute(&mut *tx).await.map_err(store_error)?;
        if gone.rows_affected() == 0 {
            tx.rollback().await;
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
        let exists = |sql: &'static str, key: String| sqlx::query_scalar::<_, i64>(sql).bind(key);
        if exists("SELECT 1 FROM users WHERE id = ?", user.to_string())
            .fetch_optional(&mut *tx)
            .await
            .map_err(store_error)?
            .is_none()
        {
            tx.rollback().await;
            return Ok(RoleChange::NoSuchUser);
        }
        if exists("SELECT 1 FROM roles WHERE name = ?", role.to_owned())
            .fetch_optional(&mut *tx)
            .await
            .map_err(store_error)?
            .is_none()
        {
            tx.rollback().await;
            return Ok(RoleChange::NoSuchRole);
        }
        let held: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM user_roles WHERE user_id = ?")
            .bind(user.to_string())
            .fetch_one(&mut *tx)
            .await
            .map_err(store_error)?;
        if grant && held >= MAX_ROLES_PER_USER as i64 {
            tx.rollback().await;
            return Ok(RoleChange::TooMany);
        }
        let changed = match grant {
            true => sqlx::query(
                "INSERT INTO user_roles (user_id, role, granted_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
            )
            .bind(user.to_string())
            .bind(role)
            .bind(ms(now)),
            false => {
                sqlx::query("DELETE FROM user_roles WHERE user_id = ? AND role = ?").bind(user.to_string()).bind(role)
            }
        };
        if changed.execute(&mut *tx).await.map_err(store_error)?.rows_affected() == 0 {
            tx.rollback().await;
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
        let state: Option<(Option<i64>, i64)> =
            sqlx::query_as("SELECT disabled_at, tokens_version FROM users WHERE id = ?")
                .bind(user.to_string())
                .fetch_optional(&mut *tx)
                .await
                .map_err(store_error)?;
        let Some((disabled_at, version)) = state else {
            tx.rollback().await;
            return Ok(AccountState::NoSuchUser);
        };
        if disabled_at.is_some() == disabled {
            tx.rollback().await;
            return Ok(AccountState::Unchanged);
        }
        let (state, version) = if disabled {
            let version: i64 = sqlx::query_scalar(
                "UPDATE users SET disabled_at = ?1, tokens_version = tokens_version + 1 WHERE id = ?2 \
                 RETURNING tokens_version",
            )
            .bind(ms(now))
            .bind(user.to_string())
            .fetch_one(&mut *tx)
            .await
            .map_err(store_error)?;
            let sessions = revoke_sessions_in(&mut tx, user, None, now).await?;
            (AccountState::Disabled { sessions, version }, version)
        } else {
            sqlx::query("UPDATE users SET disabled_at = NULL WHERE id = ?")
                .bind(user.to_string())
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
            user_columns!("group_concat"),
            " FROM users WHERE lower(email) LIKE ? ESCAPE '\\' AND email > ? ORDER BY email LIMIT ?"
        );
        let rows = sqlx::query(sql)
            .bind(like_prefix(prefix))
            .bind(after.unwrap_or(""))
            .bind(i64::from(limit))
            .fetch_all(&mut *self.read().await?)
            .await
            .map_err(store_error)?;
        rows.iter().map(user_from).collect()
    }

    /// One statement: a transaction of its own, in one trip.
    async fn record(&self, audit: &AuditEntry) -> Result<(), StoreError> {
        let mut turn = self.write_turn().await?;
        insert_audit(&mut turn, audit).await
    }

    async fn audit_page(
        &self,
        before: Option<(OffsetDateTime, Uuid)>,
        limit: u32,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, at, actor, action, target, request_id, detail, ip, user_agent, reason FROM audit_log \
             WHERE ?1 IS NULL OR at < ?1 OR (at = ?1 AND id < ?2) ORDER BY at DESC, id DESC LIMIT ?3",
        )
        .bind(before.map(|(at, _)| ms(at)))
        .bind(before.map(|(_, id)| id.to_string()))
        .bind(i64::from(limit))
        .fetch_all(&mut *self.read().await?)
        .await
        .map_err(store_error)?;
        rows.iter().map(audit_from).collect()
    }
}
