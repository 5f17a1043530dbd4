//! A gateway's view of the revocation bucket (see [`crate::nats_revocation`]).
//!
//! The set is vouched for only on evidence. Several times per
//! `max_staleness` a probe asks NATS for the bucket stream's last sequence;
//! that answer proves the set current as of when it was asked once the
//! watch has applied that sequence (an empty bucket proves it at once). A
//! link that hangs answers nothing, so the proof stops and authenticated
//! requests fail closed. The client's idea of its connection counts for
//! nothing.
//!
//! The proof holds only for the stream the watch follows, known by when it
//! was made: a probe answered by another stream (NATS lost its store, an
//! operator removed the bucket) starts the watch over from the new stream's
//! first entry, a probe that finds no bucket starts it over so the bucket
//! is made again, and a watch that applies nothing while probes wait on it
//! for `max_staleness` is resumed where it stopped (the client library may
//! be retrying a consumer forever).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use futures_util::StreamExt as _;
use tokio::sync::watch;

use crate::nats_revocation::{BUCKET, Entry, bucket};
use crate::publish::NatsError;
use crate::{RevocationFeed, RevocationSet};

/// Probes remembered while the watch catches up; the oldest give way.
const PROBES_KEPT: usize = 32;

/// What the watch has done, and what the probes wait for, kept together so
/// that a start-over and an entry applied never interleave.
#[derive(Debug, Default)]
struct Progress {
    /// Moves when the watch must start over; a watch of an older epoch
    /// applies what it still brings but proves nothing.
    epoch: u64,
    /// When the stream the watch follows was made (Unix nanoseconds); none
    /// until a watch has opened it.
    stream: Option<i128>,
    /// The highest sequence of that stream the watch has applied.
    applied: u64,
    /// Probes the watch has not caught up with, oldest first: when each was
    /// sent (as `healthy_at` counts) and the stream's last sequence then.
    waiting: VecDeque<(u64, u64)>,
    /// `applied` when the previous probe was answered, and since when it
    /// has not moved while probes waited.
    applied_at_probe: u64,
    stalled_since: Option<Instant>,
}

impl Progress {
    /// The newest probe the watch has caught up with, dropping those before it.
    fn settle(&mut self) -> Option<u64> {
        let mut newest = None;
        while let Some(&(sent, last)) = self.waiting.front()
            && last <= self.applied
        {
            newest = Some(sent);
            self.waiting.pop_front();
        }
        newest
    }
}

#[derive(Debug)]
pub struct NatsRevocationFeed {
    set: Arc<RevocationSet>,
    progress: Mutex<Progress>,
    /// The current epoch, for watches to notice they are out of date.
    epochs: watch::Sender<u64>,
    /// Milliseconds from `started` to the newest moment the set is known to
    /// have held every revocation, plus one (0: never): an atomic, because
    /// every authenticated request reads it.
    healthy_at: AtomicU64,
    started: Instant,
    max_staleness: Duration,
}

impl NatsRevocationFeed {
    /// Starts watching in the background and returns at once: the feed is
    /// not current until NATS has answered and the watch has caught up.
    pub async fn start(url: &str, reach: Duration, max_staleness: Duration) -> Result<Arc<Self>, NatsError> {
        Self::start_into(url, reach, max_staleness, Arc::default()).await
    }

    /// As [`Self::start`], applying the bucket to `set`, which others may
    /// write too: in `gatehouse up` with NATS, the auth-service in the same
    /// process writes its own revocations straight in, and the bucket
    /// brings those of every other process.
    pub async fn start_into(
        url: &str,
        reach: Duration,
        max_staleness: Duration,
        set: Arc<RevocationSet>,
    ) -> Result<Arc<Self>, NatsError> {
        let client = crate::publish::connect(url, true).await?;
        let js = jetstream::new(client);
        let feed = Arc::new(Self {
            set,
            progress: Mutex::default(),
            epochs: watch::Sender::new(0),
            healthy_at: AtomicU64::new(0),
            started: Instant::now(),
            max_staleness,
        });
        tokio::spawn(Arc::clone(&feed).watch(js.clone(), url.to_owned(), reach));
        tokio::spawn(Arc::clone(&feed).probe(js, url.to_owned()));
        Ok(feed)
    }

    fn now_mark(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX - 1) + 1
    }

    /// The set held every revocation as of `mark` (a [`Self::now_mark`]).
    fn current_as_of(&self, mark: Option<u64>) {
        if let Some(mark) = mark {
            self.healthy_at.fetch_max(mark, Ordering::AcqRel);
        }
    }

    fn progress(&self) -> MutexGuard<'_, Progress> {
        self.progress.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts the watch over: from the first entry of whatever stream it
    /// opens next (`anew`), or where it stopped.
    fn start_over(&self, progress: &mut Progress, anew: bool) {
        progress.epoch += 1;
        progress.stalled_since = None;
        if anew {
            progress.stream = None;
            progress.applied = 0;
            progress.applied_at_probe = 0;
            progress.waiting.clear();
        }
        self.epochs.send_replace(progress.epoch);
    }

    /// Applies an entry a watch of `epoch` brought; false once that watch is
    /// out of date.
    fn apply(&self, entry: &kv::Entry, epoch: u64) -> bool {
        if matches!(entry.operation, kv::Operation::Put) {
            match serde_json::from_slice::<Entry>(&entry.value) {
                Ok(value) => match (entry.key.split_once('.'), value.not_before, value.version) {
                    (Some(("session", sid)), _, _) => self.set.revoke_session(sid, value.until),
                    (Some(("user", uid)), Some(not_before), _) => self.set.revoke_user(uid, not_before, value.until),
                    (Some(("stale", uid)), _, Some(version)) => self.set.outdate_user(uid, version, value.until),
                    _ => tracing::warn!(key = %entry.key, "ignoring an unknown revocation key"),
                },
                Err(_) => tracing::warn!(key = %entry.key, "ignoring a malformed revocation entry"),
            }
        }
        let mut progress = self.progress();
        if progress.epoch != epoch {
            return false;
        }
        progress.applied = progress.applied.max(entry.revision);
        let proven = progress.settle();
        drop(progress);
        self.current_as_of(proven);
        true
    }

    /// Opens the bucket (making it only if it is missing: a gateway does not
    /// reconfigure it), then follows it; again after any break.
    async fn watch(self: Arc<Self>, js: jetstream::Context, url: String, reach: Duration) {
        loop {
            let epoch = self.progress().epoch;
            let opened = match js.get_key_value(BUCKET).await {
                Ok(kv) => Ok(kv),
                Err(_) => bucket(&js, &url, reach).await,
            };
            let followed = match opened {
                Ok(kv) => self.follow(&kv, epoch).await,
                Err(error) => Err(error.to_string()),
            };
            match followed {
                Ok(()) => tracing::warn!("the revocation watch ended; watching again"),
                Err(error) => tracing::warn!(%error, "the revocation watch stopped; watching again"),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn follow(&self, kv: &kv::Store, epoch: u64) -> Result<(), String> {
        let made = kv.stream.cached_info().created.unix_timestamp_nanos();
        let resume = {
            let mut progress = self.progress();
            if progress.epoch != epoch {
                return Err("starting over".into());
            }
            match progress.stream {
                Some(known) if known != made => {
                    self.start_over(&mut progress, true);
                    return Err("the revocation bucket was made anew; replaying it".into());
                }
                Some(_) => progress.applied + 1,
                None => {
                    progress.stream = Some(made);
                    0
                }
            }
        };
        let mut watch = match resume {
            0 => kv.watch_with_history(">").await,
            from => kv.watch_all_from_revision(from).await,
        }
        .map_err(|e| e.to_string())?;
        let mut epochs = self.epochs.subscribe();
        loop {
            let entry = tokio::select! {
                entry = watch.next() => entry,
                _ = epochs.wait_for(|current| *current != epoch) => return Err("starting over".into()),
            };
            let Some(entry) = entry else { return Ok(()) };
            if !self.apply(&entry.map_err(|e| e.to_string())?, epoch) {
                return Err("starting over".into());
            }
        }
    }

    /// Asks for the bucket stream's state every quarter of `max_staleness`
    /// (at most every second); see the module's documentation.
    async fn probe(self: Arc<Self>, js: jetstream::Context, url: String) {
        let every = (self.max_staleness / 4).clamp(Duration::from_millis(25), Duration::from_secs(1));
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        let mut started_over = Instant::now();
        loop {
            tick.tick().await;
            let sent = self.now_mark();
            let answer = tokio::time::timeout(self.max_staleness, js.get_stream(format!("KV_{BUCKET}"))).await;
            let info = match answer {
                Ok(Ok(stream)) => stream.cached_info().clone(),
                Ok(Err(error)) => {
                    if !std::mem::replace(&mut failing, true) {
                        tracing::warn!(%error, %url, "cannot read the revocation bucket; failing closed after max_staleness");
                    }
                    let missing = matches!(error.kind(), jetstream::context::GetStreamErrorKind::JetStream(e)
                        if e.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND);
                    if missing && started_over.elapsed() > self.max_staleness {
                        // The watch may wait on it forever: have the bucket made again.
                        self.start_over(&mut self.progress(), true);
                        started_over = Instant::now();
                    }
                    continue;
                }
                Err(_) => {
                    if !std::mem::replace(&mut failing, true) {
                        tracing::warn!(%url, "NATS did not answer within max_staleness; failing closed");
                    }
                    continue;
                }
            };
            if std::mem::replace(&mut failing, false) {
                tracing::info!(%url, "NATS answers again");
            }
            let made = info.created.unix_timestamp_nanos();
            let mut progress = self.progress();
            match progress.stream {
                // No watch has opened the bucket yet: nothing to prove.
                None => continue,
                Some(known) if known != made => {
                    tracing::warn!(%url, "the revocation bucket was made anew; replaying it before vouching again");
                    self.start_over(&mut progress, true);
                    started_over = Instant::now();
                    continue;
                }
                Some(_) => {}
            }
            if info.state.messages == 0 {
                drop(progress);
                self.current_as_of(Some(sent));
                continue;
            }
            if progress.waiting.len() == PROBES_KEPT {
                progress.waiting.pop_front();
            }
            progress.waiting.push_back((sent, info.state.last_sequence));
            let proven = progress.settle();
            // A watch that applies nothing while probes wait on it has stalled.
            let moved = progress.applied != progress.applied_at_probe;
            progress.applied_at_probe = progress.applied;
            if moved || progress.waiting.is_empty() {
                progress.stalled_since = None;
            } else if progress.stalled_since.get_or_insert_with(Instant::now).elapsed() > self.max_staleness
                && started_over.elapsed() > self.max_staleness
            {
                tracing::warn!(%url, "the revocation watch stalled; resuming it");
                self.start_over(&mut progress, false);
                started_over = Instant::now();
            }
            drop(progress);
            self.current_as_of(proven);
        }
    }
}

impl RevocationFeed for NatsRevocationFeed {
    fn set(&self) -> &RevocationSet {
        &self.set
    }

    fn is_current(&self) -> bool {
        let healthy_at = self.healthy_at.load(Ordering::Acquire);
        healthy_at > 0 && self.started.elapsed() <= Duration::from_millis(healthy_at - 1) + self.max_staleness
    }
}
