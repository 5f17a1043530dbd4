//! The live signing keys of a running auth-service.
//!
//! Keys come from the key file (`gatehouse keys rotate` writes it). The
//! service re-reads it when it changes and rebuilds its verifier as time
//! passes, so a rotation takes effect without a restart and a retired key
//! leaves the JWKS once its last token has expired.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use auth_core::Clock;
use auth_tokens::keyfile::{self, KeyFileError, Secrets};
use auth_tokens::{CsrfKey, Jwks, KeyRing, TokenSettings, TokenSigner, TokenVerifier};

/// What signing and verifying need at one moment.
#[derive(Debug)]
pub struct LiveKeys {
    pub signer: TokenSigner,
    pub verifier: TokenVerifier,
    pub jwks: Jwks,
}

#[derive(Debug)]
enum Source {
    File { path: PathBuf, modified: Mutex<Option<SystemTime>>, ring: Mutex<KeyRing> },
    Fixed(KeyRing),
}

pub struct KeyHandle {
    source: Source,
    settings: TokenSettings,
    clock: Arc<dyn Clock>,
    live: RwLock<Arc<LiveKeys>>,
    csrf: CsrfKey,
}

impl std::fmt::Debug for KeyHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyHandle").field("source", &self.source).finish_non_exhaustive()
    }
}

impl KeyHandle {
    /// Keys from `path`, created with fresh secrets (mode 0600) if missing.
    pub fn from_file(path: PathBuf, settings: TokenSettings, clock: Arc<dyn Clock>) -> Result<Self, KeyFileError> {
        let Secrets { ring, csrf } = keyfile::load_or_create(&path, clock.unix())?;
        let live = build(&ring, &settings, clock.unix());
        let source = Source::File { modified: Mutex::new(mtime(&path)), path, ring: Mutex::new(ring) };
        Ok(Self { source, settings, clock, live: RwLock::new(Arc::new(live)), csrf })
    }

    /// Keys held in memory only (tests, or secrets handed over by the caller).
    pub fn fixed(secrets: Secrets, settings: TokenSettings, clock: Arc<dyn Clock>) -> Self {
        let live = build(&secrets.ring, &settings, clock.unix());
        Self {
            source: Source::Fixed(secrets.ring),
            settings,
            clock,
            live: RwLock::new(Arc::new(live)),
            csrf: secrets.csrf,
        }
    }

    pub fn current(&self) -> Arc<LiveKeys> {
        self.live.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn csrf(&self) -> &CsrfKey {
        &self.csrf
    }

    pub fn settings(&self) -> &TokenSettings {
        &self.settings
    }

    /// Re-reads the key file if it changed and rebuilds the verifier for the
    /// current time. A broken file is reported and the old keys stay.
    pub fn refresh(&self) -> Result<(), KeyFileError> {
        let now = self.clock.unix();
        let ring = match &self.source {
            Source::Fixed(ring) => ring.clone(),
            Source::File { path, modified, ring } => {
                let mut seen = modified.lock().unwrap_or_else(|e| e.into_inner());
                let mut ring = ring.lock().unwrap_or_else(|e| e.into_inner());
                let current = mtime(path);
                if current != *seen {
                    *ring = keyfile::load(path)?.ring;
                    *seen = current;
                    tracing::info!(kid = %ring.active().kid, "signing keys reloaded");
                }
                ring.clone()
            }
        };
        *self.live.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(build(&ring, &self.settings, now));
        Ok(())
    }

    /// Refreshes every `period` until the returned task is aborted.
    pub fn spawn_refresher(self: &Arc<Self>, period: Duration) -> tokio::task::JoinHandle<()> {
        let keys = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            loop {
                tick.tick().await;
                if let Err(error) = keys.refresh() {
                    tracing::error!(%error, "keeping the previous signing keys");
                }
            }
        })
    }
}

fn build(ring: &KeyRing, settings: &TokenSettings, now: i64) -> LiveKeys {
    LiveKeys {
        signer: TokenSigner::new(ring),
        verifier: TokenVerifier::from_ring(ring, settings, now),
        jwks: ring.jwks(now, settings.key_overlap()),
    }
}

fn mtime(path: &std::path::Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}
