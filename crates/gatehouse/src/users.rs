//! `gatehouse users grant-role|revoke-role|list`: the operator on the
//! server, straight on the database (the way to make the first admin).
//! Changes are audited with no actor (the operator) and reach running
//! gateways through the outbox, as the auth-service relays it.

use std::sync::Arc;

use anyhow::{Context as _, bail};
use auth_core::roles::RoleError;
use auth_core::{Actor, Admin, NoRevocationSink, SystemClock};

use crate::config::Config;

/// The use cases on the configured database; `seed`: the file's roles
/// made first (for a grant of one the server has not yet created).
async fn admin(config: &Config, seed: bool) -> anyhow::Result<Admin> {
    crate::app::ensure_data_dir(config)?;
    let stores = auth_store::open(&config.database_url(), true).await.context("open the database")?;
    let reach = time::Duration::seconds(config.token_settings().key_overlap().max(1));
    let admin = Admin::new(
        stores.users,
        stores.sessions,
        stores.roles,
        Arc::new(SystemClock),
        Arc::new(NoRevocationSink),
        reach,
    );
    if seed {
        crate::app::seed_roles(config, &admin).await?;
    }
    Ok(admin)
}

pub async fn change_role(config: &Config, email: &str, role: &str, grant: bool) -> anyhow::Result<()> {
    let admin = admin(config, grant).await?;
    let Some(user) = admin.user_by_email(email).await? else { bail!("no account has the email {email}") };
    match admin.change_role(&Actor::operator("cli"), user.id, role, grant).await {
        Ok(Some(roles)) => {
            println!("{email} now holds: {}", roles.join(", "));
            println!("tokens issued before are stale; running gateways refuse them once the event is relayed");
            Ok(())
        }
        Ok(None) if grant => {
            println!("{email} already holds {role}");
            Ok(())
        }
        Ok(None) => {
            println!("{email} does not hold {role}");
            Ok(())
        }
        Err(RoleError::NoSuchRole) => {
            let known: Vec<String> = admin.roles().await?.into_iter().map(|r| r.name).collect();
            bail!("no role named {role}; roles: {}", known.join(", "))
        }
        Err(error) => Err(error.into()),
    }
}

pub async fn list(config: &Config, prefix: &str) -> anyhow::Result<()> {
    let admin = admin(config, false).await?;
    let mut after: Option<String> = None;
    println!("{:<40} {:<9} roles", "email", "state");
    loop {
        let page = admin.users_page(prefix, after.as_deref(), 200).await?;
        for user in &page {
            let state = if user.disabled { "disabled" } else { "active" };
            println!("{:<40} {:<9} {}", user.email.as_str(), state, user.roles.join(","));
        }
        match page.last() {
            Some(last) if page.len() == 200 => after = Some(last.email.as_str().to_owned()),
            _ => return Ok(()),
        }
    }
}
