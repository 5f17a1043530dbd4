//! Argon2id password hashing on a bounded pool of its own threads.
//!
//! At most `permits` hashes run at once, each on one of `permits` threads
//! the OS schedules below the serving threads (a raised nice value), so a
//! flood of logins never stalls the async workers nor delays the requests
//! they serve: hashing gets the CPU time serving leaves. Hashes wait in one
//! queue, and a thread that finishes one takes the next without sleeping.
//! A request that finds every thread busy and whose hash no thread has
//! taken within `max_wait` gets [`HashError::Busy`] (answered 503 +
//! Retry-After) instead of queueing without bound; a request that gives up
//! or goes away takes its hash (and the password) back out of the queue.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use argon2::{Algorithm, Argon2, Block, Params, Version};
use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};

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
    /// How long a request may wait for a hashing thread before it is
    /// answered 503.
    pub max_wait_ms: u64,
    /// The nice value of the hashing threads (0–19, higher yields more):
    /// serving threads go first while logins flood. 0 leaves them as the
    /// serving threads are.
    pub nice: i32,
}

impl Default for HashingSettings {
    fn default() -> Self {
        Self { memory_kib: 19_456, iterations: 2, parallelism: 1, permits: 0, max_wait_ms: 2_000, nice: 10 }
    }
}

/// The prefix of the hashing threads' names (as `ps -L` and `/proc` show).
pub const THREAD_NAME: &str = "gatehouse-hash";

type Job = Box<dyn FnOnce() + Send>;

/// `threads` threads taking jobs from one queue, at a raised nice value.
/// They end once the pool is dropped and the queue drained.
struct Pool {
    jobs: mpsc::Sender<Job>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pool")
    }
}

impl Pool {
    fn start(threads: usize, nice: i32) -> Result<Self, HashError> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        for i in 0..threads {
            let queue = queue.clone();
            std::thread::Builder::new()
                .name(format!("{THREAD_NAME}-{i}"))
                .spawn(move || {
                    if nice != 0
                        && let Err(error) = rustix::process::setpriority_process(None, nice)
                    {
                        tracing::warn!(%error, nice, "cannot lower the hashing threads' priority");
                    }
                    loop {
                        // The lock is held only while waiting: one thread
                        // waits, the others wait for the lock.
                        let next = queue.lock().unwrap_or_else(|e| e.into_inner()).recv();
                        let Ok(job) = next else { return };
                        // A panicking job loses its own answer, not the thread.
                        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                    }
                })
                .map_err(|e| HashError::Internal(format!("cannot start a hashing thread: {e}")))?;
        }
        Ok(Self { jobs })
    }

    fn send(&self, job: Job) -> Result<(), HashError> {
        self.jobs.send(job).map_err(|_| HashError::Internal("the hashing threads have stopped".into()))
    }
}

#[derive(Debug)]
pub struct Argon2Hasher {
    params: Params,
    /// Hashing threads, and so hashes at once.
    threads: usize,
    max_wait: Duration,
    dummy_phc: String,
    in_flight: Arc<AtomicUsize>,
    operations: AtomicU64,
    memory: Arc<MemoryPool>,
    pool: Pool,
}

/// Argon2's working memory (19 MiB per hash), kept and reused. At most
/// `permits` hashes run at once, so at most `permits` buffers ever exist and
/// resident memory stays at permits × m + baseline, however many logins come.
/// (Left to the allocator, each blocking thread's arena kept its own copies.)
#[derive(Debug, Default)]
struct MemoryPool {
    free: Mutex<Vec<Vec<Block>>>,
    /// Buffers larger than this (hashes made with stronger parameters than
    /// ours) are used once and not kept.
    keep_blocks: usize,
}

impl MemoryPool {
    fn with_blocks<T>(&self, blocks: usize, work: impl FnOnce(&mut [Block]) -> T) -> T {
        let mut buffer = self.free.lock().unwrap_or_else(|e| e.into_inner()).pop().unwrap_or_default();
        if buffer.len() < blocks {
            buffer.resize(blocks, Block::default());
        }
        let result = work(&mut buffer[..blocks]);
        if buffer.len() <= self.keep_blocks {
            self.free.lock().unwrap_or_else(|e| e.into_inner()).push(buffer);
        }
        result
    }
}

impl Argon2Hasher {
    pub fn new(settings: &HashingSettings) -> Result<Self, HashError> {
        let params = Params::new(settings.memory_kib, settings.iterations, settings.parallelism, None)
            .map_err(|e| HashError::Internal(e.to_string()))?;
        if !(0..=19).contains(&settings.nice) {
            return Err(HashError::Internal(format!("hashing nice must be 0 to 19, not {}", settings.nice)));
        }
        let permits = match settings.permits {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let memory = Arc::new(MemoryPool { free: Mutex::default(), keep_blocks: params.block_count() });
        let dummy = SecretString::from(crate::OpaqueSecret::generate().expose().to_owned());
        let dummy_phc = hash_blocking(&params, &dummy, &memory)?;
        Ok(Self {
            pool: Pool::start(permits, settings.nice)?,
            threads: permits,
            params,
            max_wait: Duration::from_millis(settings.max_wait_ms),
            dummy_phc,
            in_flight: Arc::new(AtomicUsize::new(0)),
            operations: AtomicU64::new(0),
            memory,
        })
    }

    /// Runs `work` on a hashing thread, once one is free.
    async fn run<T, F>(&self, work: F) -> Result<T, HashError>
    where
        T: Send + 'static,
        F: FnOnce(&MemoryPool) -> Result<T, HashError> + Send + 'static,
    {
        self.operations.fetch_add(1, Ordering::Relaxed);
        let (in_flight, ahead) = InFlight::enter(self.in_flight.clone());
        let ticket = Ticket(Arc::new(Mutex::new(Some((in_flight, work)))));
        let (answer, mut answered) = tokio::sync::oneshot::channel();
        let (memory, queued) = (self.memory.clone(), ticket.0.clone());
        self.pool.send(Box::new(move || {
            let Some((in_flight, work)) = take(&queued) else { return };
            let done = work(&memory);
            // Out of flight before it is answered.
            drop(in_flight);
            let _ = answer.send(done);
        }))?;
        let answer = if ahead < self.threads {
            // A thread was free: it takes the job without a wait to bound.
            answered.await
        } else {
            match tokio::time::timeout(self.max_wait, &mut answered).await {
                Ok(answer) => answer,
                Err(_) => match ticket.take_back() {
                    Some(_given_up) => return Err(HashError::Busy),
                    // Taken before the wait ran out: its answer comes.
                    None => answered.await,
                },
            }
        };
        answer.map_err(|_| HashError::Internal("a hash failed on its thread".into()))?
    }

    fn weaker_than_current(&self, phc: &str) -> bool {
        let Ok(stored) = Phc::parse(phc) else { return true };
        stored.algorithm != Algorithm::Argon2id
            || stored.params.m_cost() < self.params.m_cost()
            || stored.params.t_cost() < self.params.t_cost()
    }
}

/// Counts a hash as in flight from the moment it is queued until its
/// blocking work ends (or its request gives up waiting).
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    /// Counts one more, and says how many were in flight before it.
    fn enter(counter: Arc<AtomicUsize>) -> (Self, usize) {
        let ahead = counter.fetch_add(1, Ordering::Relaxed);
        (Self(counter), ahead)
    }
}

/// A queued hash's work and its count in flight, until a thread takes them
/// or its request takes them back (it gave up waiting, or was dropped): the
/// password leaves the queue with its request, and the thread skips it.
struct Ticket<W>(Arc<Mutex<Option<(InFlight, W)>>>);

fn take<W>(job: &Mutex<Option<(InFlight, W)>>) -> Option<(InFlight, W)> {
    job.lock().unwrap_or_else(|e| e.into_inner()).take()
}

impl<W> Ticket<W> {
    fn take_back(&self) -> Option<(InFlight, W)> {
        take(&self.0)
    }
}

impl<W> Drop for Ticket<W> {
    fn drop(&mut self) {
        drop(self.take_back());
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A PHC string (`$argon2id$v=19$m=…,t=…,p=…$salt$hash`), taken apart.
struct Phc {
    algorithm: Algorithm,
    version: Version,
    params: Params,
    salt: Vec<u8>,
    hash: Vec<u8>,
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD_NO_PAD
}

impl Phc {
    fn parse(phc: &str) -> Result<Self, HashError> {
        use base64::Engine as _;
        let bad = || HashError::Internal("stored password hash is not an Argon2 PHC string".into());
        let parts: Vec<&str> = phc.split('$').collect();
        let [_, algorithm, version, params, salt, hash] = parts.as_slice() else { return Err(bad()) };
        let algorithm = Algorithm::new(algorithm).map_err(|_| bad())?;
        let version = match *version {
            "v=19" => Version::V0x13,
            "v=16" => Version::V0x10,
            _ => return Err(bad()),
        };
        let (mut m, mut t, mut p) = (None, None, None);
        for pair in params.split(',') {
            let (key, value) = pair.split_once('=').ok_or_else(bad)?;
            let value: u32 = value.parse().map_err(|_| bad())?;
            match key {
                "m" => m = Some(value),
                "t" => t = Some(value),
                "p" => p = Some(value),
                _ => {}
            }
        }
        let (Some(m), Some(t), Some(p)) = (m, t, p) else { return Err(bad()) };
        let params = Params::new(m, t, p, None).map_err(|_| bad())?;
        let (salt, hash) = (b64().decode(salt).map_err(|_| bad())?, b64().decode(hash).map_err(|_| bad())?);
        Ok(Self { algorithm, version, params, salt, hash })
    }
}

fn hash_blocking(params: &Params, password: &SecretString, memory: &MemoryPool) -> Result<String, HashError> {
    use base64::Engine as _;
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| HashError::Internal(e.to_string()))?;
    let mut out = [0u8; 32];
    let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
    memory
        .with_blocks(params.block_count(), |blocks| {
            argon.hash_password_into_with_memory(password.expose_secret().as_bytes(), &salt, &mut out, blocks)
        })
        .map_err(|e| HashError::Internal(e.to_string()))?;
    Ok(format!(
        "$argon2id$v=19$m={},t={},p={}${}${}",
        params.m_cost(),
        params.t_cost(),
        params.p_cost(),
        b64().encode(salt),
        b64().encode(out)
    ))
}

fn verify_blocking(password: &SecretString, phc: &str, memory: &MemoryPool) -> Result<bool, HashError> {
    // Verification uses the parameters stored in the hash itself.
    let stored = Phc::parse(phc)?;
    let mut out = vec![0u8; stored.hash.len()];
    let argon = Argon2::new(stored.algorithm, stored.version, stored.params.clone());
    memory
        .with_blocks(stored.params.block_count(), |blocks| {
            argon.hash_password_into_with_memory(password.expose_secret().as_bytes(), &stored.salt, &mut out, blocks)
        })
        .map_err(|e| HashError::Internal(e.to_string()))?;
    Ok(bool::from(subtle::ConstantTimeEq::ct_eq(out.as_slice(), stored.hash.as_slice())))
}

fn owned(password: &Password) -> SecretString {
    SecretString::from(password.expose().to_owned())
}

#[async_trait]
impl PasswordHasher for Argon2Hasher {
    async fn hash(&self, password: &Password) -> Result<String, HashError> {
        let (params, password) = (self.params.clone(), owned(password));
        self.run(move |memory| hash_blocking(&params, &password, memory)).await
    }

    async fn verify(&self, password: &Password, phc: &str) -> Result<Verification, HashError> {
        let (password, stored) = (owned(password), phc.to_owned());
        let matched = self.run(move |memory| verify_blocking(&password, &stored, memory)).await?;
        Ok(match matched {
            true => Verification::Match { needs_rehash: self.weaker_than_current(phc) },
            false => Verification::Mismatch,
        })
    }

    async fn verify_dummy(&self, password: &Password) -> Result<(), HashError> {
        let (password, dummy) = (owned(password), self.dummy_phc.clone());
        self.run(move |memory| verify_blocking(&password, &dummy, memory)).await.map(|_| ())
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
    async fn hashes_interoperate_with_the_reference_phc_implementation() {
        use argon2::{PasswordHasher as _, PasswordVerifier as _};
        let h = hasher();
        let pw = Password::for_login("correct horse battery staple");
        let ours = h.hash(&pw).await.unwrap();
        let parsed = argon2::PasswordHash::new(&ours).unwrap();
        assert!(Argon2::default().verify_password(pw.expose().as_bytes(), &parsed).is_ok());
        let theirs = Argon2::default().hash_password(pw.expose().as_bytes()).unwrap().to_string();
        assert_eq!(h.verify(&pw, &theirs).await.unwrap(), Verification::Match { needs_rehash: false });
        assert_eq!(h.verify(&Password::for_login("nope"), &theirs).await.unwrap(), Verification::Mismatch);
    }

    #[tokio::test]
    async fn working_memory_is_reused_not_multiplied() {
        let h = Arc::new(hasher());
        let pw = "correct horse battery staple";
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let h = h.clone();
                tokio::spawn(async move { h.hash(&Password::for_login(pw)).await.unwrap() })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let permits = std::thread::available_parallelism().map_or(1, |n| n.get());
        let kept = h.memory.free.lock().unwrap().len();
        assert!((1..=permits).contains(&kept), "{kept} buffers kept for {permits} permits");
    }

    #[tokio::test]
    async fn malformed_stored_hashes_are_errors_not_panics() {
        let h = hasher();
        let pw = Password::for_login("x");
        for bad in
            ["", "$argon2id$v=19$m=19456,t=2,p=1$$", "$bcrypt$xx", "$argon2id$v=19$m=x,t=2,p=1$c2FsdHNhbHQ$aGFzaA"]
        {
            assert!(h.verify(&pw, bad).await.is_err(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn weaker_stored_parameters_ask_for_a_rehash() {
        let weak =
            Argon2Hasher::new(&HashingSettings { memory_kib: 12_288, iterations: 3, ..Default::default() }).unwrap();
        let pw = Password::for_login("correct horse battery staple");
        let phc = weak.hash(&pw).await.unwrap();
        assert_eq!(hasher().verify(&pw, &phc).await.unwrap(), Verification::Match { needs_rehash: true });
    }

    /// The name and nice value of a thread, from its `/proc/…/stat`.
    fn name_and_nice(stat: &std::path::Path) -> Option<(String, i32)> {
        let stat = std::fs::read_to_string(stat).ok()?;
        // `pid (comm) state …`: the name may hold spaces, so split after ')'.
        let (open, close) = (stat.find('(')?, stat.rfind(')')?);
        let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
        Some((stat[open + 1..close].to_owned(), fields[16].parse().ok()?))
    }

    /// The nice value of each thread of this process whose name starts with `prefix`.
    fn nice_of_threads(prefix: &str) -> Vec<i32> {
        let tasks = std::fs::read_dir("/proc/self/task").unwrap();
        let threads = tasks.filter_map(|task| name_and_nice(&task.unwrap().path().join("stat")));
        threads.filter(|(name, _)| name.starts_with(prefix)).map(|(_, nice)| nice).collect()
    }

    #[tokio::test]
    async fn hashes_run_on_their_own_threads_below_the_serving_threads() {
        let h = Argon2Hasher::new(&HashingSettings { permits: 3, nice: 7, ..Default::default() }).unwrap();
        let pw = Password::for_login("correct horse battery staple");
        let phc = h.hash(&pw).await.unwrap();
        assert_eq!(h.verify(&pw, &phc).await.unwrap(), Verification::Match { needs_rehash: false });
        // Threads of other tests' hashers may be alive too: every one is niced.
        let hashing = nice_of_threads(THREAD_NAME);
        assert!(hashing.len() >= 3, "{hashing:?}");
        assert!(hashing.iter().all(|&n| n == 7 || n == 10), "{hashing:?}");
        assert!(hashing.contains(&7), "{hashing:?}");
        let serving = name_and_nice(std::path::Path::new("/proc/thread-self/stat")).unwrap();
        assert_eq!(serving.1, 0, "the thread serving the test keeps its priority: {serving:?}");
    }

    #[test]
    fn a_nice_value_outside_0_to_19_is_refused() {
        for nice in [-1, 20] {
            assert!(Argon2Hasher::new(&HashingSettings { nice, ..Default::default() }).is_err(), "{nice}");
        }
    }

    #[tokio::test]
    async fn a_free_thread_takes_a_hash_however_short_the_patience() {
        let h = Argon2Hasher::new(&HashingSettings { permits: 1, max_wait_ms: 0, ..Default::default() }).unwrap();
        let pw = Password::for_login("correct horse battery staple");
        for _ in 0..3 {
            assert!(h.hash(&pw).await.is_ok(), "an idle pool answered busy");
        }
    }

    /// Waits (bounded) until `h` counts `n` hashes in flight.
    async fn until_in_flight(h: &Argon2Hasher, n: usize) {
        for _ in 0..1_000 {
            if h.in_flight() == n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        panic!("{} hashes in flight, not {n}", h.in_flight());
    }

    #[tokio::test]
    async fn a_request_that_goes_away_takes_its_hash_out_of_the_queue() {
        // One thread, busy for a while with a slow hash.
        let settings = HashingSettings { permits: 1, iterations: 40, ..Default::default() };
        let h = Arc::new(Argon2Hasher::new(&settings).unwrap());
        let slow = tokio::spawn({
            let h = h.clone();
            async move { h.hash(&Password::for_login("correct horse battery staple")).await }
        });
        until_in_flight(&h, 1).await;
        let queued = tokio::spawn({
            let h = h.clone();
            async move { h.hash(&Password::for_login("another horse battery staple")).await }
        });
        until_in_flight(&h, 2).await;
        queued.abort();
        assert!(queued.await.unwrap_err().is_cancelled());
        assert_eq!(h.in_flight(), 1, "the dropped request's hash stayed queued behind the slow one");
        assert!(slow.await.unwrap().is_ok());
        assert_eq!(h.in_flight(), 0);
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
