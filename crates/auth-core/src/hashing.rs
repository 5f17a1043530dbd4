//! Argon2id password hashing on a bounded blocking pool.
//!
//! At most `permits` hashes run at once, each on tokio's blocking threads, so a
//! flood of logins never stalls the async workers. A request that cannot get a
//! permit within `max_wait` gets [`HashError::Busy`] (answered 503 + Retry-After)
//! instead of queueing without bound.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use argon2::{Algorithm, Argon2, Params, PasswordHash, PasswordHasher as _, PasswordVerifier as _, Version};
use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::Semaphore;

use crate::Password;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HashError {
    #[error("too many password hashes in flight")]
    Busy,
    #[error("password hashing failed: {0}")]
    Internal(String),
}

/// The outcome of checking a password against a stored hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verification {
    Mismatch,
    /// `needs_rehash`: the stored parameters are weaker than the current ones.
    Match {
        needs_rehash: bool,
    },
}

#[async_trait]
pub trait PasswordHasher: Send + Sync + 'static {
    async fn hash(&self, password: &Password) -> Result<String, HashError>;
    async fn verify(&self, password: &Password, phc: &str) -> Result<Verification, HashError>;
    /// Spends the same work as [`verify`](Self::verify) on a throw-away hash, so
    /// an unknown account costs exactly what a wrong password does.
    async fn verify_dummy(&self, password: &Password) -> Result<(), HashError>;
    /// Hashes running or waiting for a thread right now.
    fn in_flight(&self) -> usize;
    /// Every hash and verification started since creation (for tests and metrics).
    fn operations(&self) -> u64;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HashingSettings {
    /// Memory in KiB (OWASP minimum with t=2: 19456).
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
    /// Hashes allowed at once; 0 means the number of CPU cores.
    pub permits: usize,
    /// How long a request may wait for a permit before it is answered 503.
    pub max_wait_ms: u64,
}

impl Default for HashingSettings {
    fn default() -> Self {
        Self { memory_kib: 19_456, iterations: 2, parallelism: 1, permits: 0, max_wait_ms: 2_000 }
    }
}

#[derive(Debug)]
pub struct Argon2Hasher {
    params: Params,
    permits: Arc<Semaphore>,
    max_wait: Duration,
    dummy_phc: String,
    in_flight: Arc<AtomicUsize>,
    operations: AtomicU64,
}

impl Argon2Hasher {
    pub fn new(settings: &HashingSettings) -> Result<Self, HashError> {
        let params = Params::new(settings.memory_kib, settings.iterations, settings.parallelism, None)
            .map_err(|e| HashError::Internal(e.to_string()))?;
        let permits = match settings.permits {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let dummy = SecretString::from(crate::OpaqueSecret::generate().expose().to_owned());
        let dummy_phc = hash_blocking(&params, &dummy)?;
        Ok(Self {
            params,
            permits: Arc::new(Semaphore::new(permits)),
            max_wait: Duration::from_millis(settings.max_wait_ms),
            dummy_phc,
            in_flight: Arc::new(AtomicUsize::new(0)),
            operations: AtomicU64::new(0),
        })
    }

    /// Runs `work` on the blocking pool once a permit is free.
    async fn run<T, F>(&self, work: F) -> Result<T, HashError>
    where
        T: Send + 'static,
        F: FnOnce() -> Result<T, HashError> + Send + 'static,
    {
        self.operations.fetch_add(1, Ordering::Relaxed);
        let in_flight = InFlight::enter(self.in_flight.clone());
        let permit = tokio::time::timeout(self.max_wait, self.permits.clone().acquire_owned())
            .await
            .map_err(|_| HashError::Busy)?
            .map_err(|_| HashError::Busy)?;
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let _in_flight = in_flight;
            work()
        })
        .await
        .map_err(|e| HashError::Internal(e.to_string()))?
    }

    fn weaker_than_current(&self, phc: &str) -> bool {
        let Ok(hash) = PasswordHash::new(phc) else {
            return true;
        };
        let Ok(stored) = Params::try_from(&hash) else {
            return true;
        };
        hash.algorithm.as_str() != "argon2id"
            || stored.m_cost() < self.params.m_cost()
            || stored.t_cost() < self.params.t_cost()
    }
}

/// Counts a hash as in flight from the moment it asks for a permit until its
/// blocking work ends (or it gives up waiting).
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn enter(counter: Arc<AtomicUsize>) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Self(counter)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

fn argon2(params: &Params) -> Argon2<'static> {
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone())
}

fn hash_blocking(params: &Params, password: &SecretString) -> Result<String, HashError> {
    argon2(params)
        .hash_password(password.expose_secret().as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| HashError::Internal(e.to_string()))
}

fn verify_blocking(password: &SecretString, phc: &str) -> Result<bool, HashError> {
    let hash = PasswordHash::new(phc).map_err(|e| HashError::Internal(e.to_string()))?;
    // Verification uses the parameters stored in the hash itself.
    let argon = Argon2::default();
    match argon.verify_password(password.expose_secret().as_bytes(), &hash) {
        Ok(()) => Ok(true),
        Err(argon2::password_hash::Error::PasswordInvalid) => Ok(false),
        Err(e) => Err(HashError::Internal(e.to_string())),
    }
}

fn owned(password: &Password) -> SecretString {
    SecretString::from(password.expose().to_owned())
}

#[async_trait]
impl PasswordHasher for Argon2Hasher {
    async fn hash(&self, password: &Password) -> Result<String, HashError> {
        let (params, password) = (self.params.clone(), owned(password));
        self.run(move || hash_blocking(&params, &password)).await
    }

    async fn verify(&self, password: &Password, phc: &str) -> Result<Verification, HashError> {
        let (password, stored) = (owned(password), phc.to_owned());
        let matched = self.run(move || verify_blocking(&password, &stored)).await?;
        Ok(match matched {
            true => Verification::Match { needs_rehash: self.weaker_than_current(phc) },
            false => Verification::Mismatch,
        })
    }

    async fn verify_dummy(&self, password: &Password) -> Result<(), HashError> {
        let (password, dummy) = (owned(password), self.dummy_phc.clone());
        self.run(move || verify_blocking(&password, &dummy)).await.map(|_| ())
    }

    fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    fn operations(&self) -> u64 {
        self.operations.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hasher() -> Argon2Hasher {
        Argon2Hasher::new(&HashingSettings::default()).unwrap()
    }

    #[tokio::test]
    async fn hashes_are_salted_argon2id_phc_strings_with_owasp_parameters() {
        let h = hasher();
        let pw = Password::for_login("correct horse battery staple");
        let a = h.hash(&pw).await.unwrap();
        let b = h.hash(&pw).await.unwrap();
        assert!(a.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{a}");
        assert_ne!(a, b);
        assert_eq!(h.verify(&pw, &a).await.unwrap(), Verification::Match { needs_rehash: false });
        let wrong = Password::for_login("correct horse battery stapl");
        assert_eq!(h.verify(&wrong, &a).await.unwrap(), Verification::Mismatch);
    }

    #[tokio::test]
    async fn weaker_stored_parameters_ask_for_a_rehash() {
        let weak =
            Argon2Hasher::new(&HashingSettings { memory_kib: 12_288, iterations: 3, ..Default::default() }).unwrap();
        let pw = Password::for_login("correct horse battery staple");
        let phc = weak.hash(&pw).await.unwrap();
        assert_eq!(hasher().verify(&pw, &phc).await.unwrap(), Verification::Match { needs_rehash: true });
    }

    #[tokio::test]
    async fn a_saturated_pool_answers_busy_instead_of_queueing_forever() {
        let h =
            Arc::new(Argon2Hasher::new(&HashingSettings { permits: 1, max_wait_ms: 1, ..Default::default() }).unwrap());
        let pw = Password::for_login("correct horse battery staple");
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let (h, pw) = (h.clone(), Password::for_login(pw.expose()));
                tokio::spawn(async move { h.hash(&pw).await })
            })
            .collect();
        let mut busy = 0;
        for t in tasks {
            if t.await.unwrap() == Err(HashError::Busy) {
                busy += 1;
            }
        }
        assert!(busy >= 1, "eight hashes through one permit with 1 ms of patience all got through");
        assert_eq!(h.in_flight(), 0);
    }
}
