//! `gatehouse keys rotate` and `gatehouse keys list`, on the key file.

use anyhow::Context as _;
use auth_core::{Clock, SystemClock};
use auth_tokens::keyfile;

use crate::config::Config;

fn overlap(config: &Config) -> i64 {
    config.token_settings().key_overlap()
}

pub fn rotate(config: &Config) -> anyhow::Result<()> {
    let path = config.key_file();
    let now = SystemClock.unix();
    let mut secrets = keyfile::load_or_create(&path, now)?;
    let old = secrets.ring.active().kid.clone();
    let new = secrets.ring.rotate(now, overlap(config)).kid.clone();
    keyfile::save(&path, &secrets).with_context(|| format!("write {}", path.display()))?;
    println!("rotated: new signing key {new}; {old} keeps verifying for {} s", overlap(config));
    println!("running servers pick the new key up within {} s", config.signing.reload_secs);
    Ok(())
}

pub fn list(config: &Config) -> anyhow::Result<()> {
    let path = config.key_file();
    let secrets = keyfile::load(&path)?;
    let now = SystemClock.unix();
    println!("{:<18} {:<12} {:<12} status", "kid", "created", "retired");
    for key in secrets.ring.keys() {
        let status = match key.retired_at {
            None => "active (signs)".to_owned(),
            Some(r) if r + overlap(config) > now => {
                format!("retired, verifies for {} s more", r + overlap(config) - now)
            }
            Some(_) => "retired, expired".to_owned(),
        };
        let retired = key.retired_at.map_or("-".to_owned(), |r| r.to_string());
        println!("{:<18} {:<12} {:<12} {status}", key.kid, key.created_at, retired);
    }
    Ok(())
}
