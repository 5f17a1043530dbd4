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
//! The proof holds only for the stream the watch follows: a probe that
//! finds the stream made anew (NATS lost its store, an operator removed the
//! bucket) starts the watch over from the new stream's first entry, and a
//! watch that has not caught up with a probe for `max_staleness` is started
//! over too (the client may be retrying a consumer forever).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use futures_util::StreamExt as _;
use tokio::sync::Notify;

use crate::nats_revocation::{BUCKET, Entry, bucket};
use crate::publish::NatsError;
use crate::{RevocationFeed, RevocationSet};

/// Probes remembered while the watch catches up; older ones give way.
const PROBES_KEPT: usize = 32;

#[derive(Debug)]
pub struct NatsRevocationFeed {
    set: RevocationSet,
    /// The highest stream sequence the current watch has applied.
    applied: AtomicU64,
    /// Moves when the watch must start over; a watch of an older epoch
    /// applies what it still brings but proves nothing.
    epoch: AtomicU64,
    rewatch: Notify,
    /// Probes the watch has not caught up with, oldest first: when each was
    /// sent (as `healthy_at` counts) and the bucket's last sequence then.
    waiting: Mutex<VecDeque<(u64, u64)>>,
    /// When the stream the watch follows was made (Unix nanoseconds).
    stream_made: Mutex<Option<i128>>,
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
        let client = crate::publish::connect(url, true).await?;
        let js = jetstream::new(client);
        let feed = Arc::new(Self {
            set: RevocationSet::new(),
            applied: AtomicU64::new(0),
            epoch: AtomicU64::new(0),
            rewatch: Notify::new(),
            waiting: Mutex::new(VecDeque::new()),
            stream_made: Mutex::new(None),
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
    fn current_as_of(&self, mark: u64) {
        self.healthy_at.fetch_max(mark, Ordering::AcqRel);
    }

    fn waiting(&self) -> std::sync::MutexGuard<'_, VecDeque<(u64, u64)>> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts the watch over; with `new_stream`, nothing it applied counts.
    fn start_over(&self, new_stream: bool) {
        if new_stream {
            self.applied.store(0, Ordering::Release);
            self.waiting().clear();
        }
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.rewatch.notify_one();
    }

    /// Applies an entry a watch of `epoch` brought; false once that watch is
    /// out of date.
    fn apply(&self, entry: &kv::Entry, epoch: u64) -> bool {
        if matches!(entry.operation, kv::Operation::Put) {
            match serde_json::from_slice::<Entry>(&entry.value) {
                Ok(value) => match (entry.key.split_once('.'), value.not_before) {
                    (Some(("session", sid)), _) => self.set.revoke_session(sid, value.until),
                    (Some(("user", uid)), Some(not_before)) => self.set.revoke_user(uid, not_before, value.until),
                    _ => tracing::warn!(key = %entry.key, "ignoring an unknown revocation key"),
                },
                Err(_) => tracing::warn!(key = %entry.key, "ignoring a malformed revocation entry"),
            }
        }
        if self.epoch.load(Ordering::Acquire) != epoch {
            return false;
        }
        self.applied.fetch_max(entry.revision, Ordering::AcqRel);
        self.settle();
        true
    }

    /// Turns the probes the watch has caught up with into evidence.
    fn settle(&self) {
        let applied = self.applied.load(Ordering::Acquire);
        let mut waiting = self.waiting();
        let mut newest = None;
        while let Some(&(sent, last)) = waiting.front()
            && last <= applied
        {
            newest = Some(sent);
            waiting.pop_front();
        }
        drop(waiting);
        if let Some(sent) = newest {
            self.current_as_of(sent);
        }
    }

    /// Opens the bucket, replays it, then follows it; again after any break.
    async fn watch(self: Arc<Self>, js: jetstream::Context, url: String, reach: Duration) {
        loop {
            let epoch = self.epoch.load(Ordering::Acquire);
            let followed = match bucket(&js, &url, reach).await {
                Ok(kv) => self.follow(&kv, epoch).await,
                Err(error) => Err(error.to_string()),
            };
            match followed {
                Ok(()) => tracing::warn!("the revocation watch ended; watching again"),
                Err(error) => tracing::warn!(%error, "the revocation watch failed; watching again"),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn follow(&self, kv: &kv::Store, epoch: u64) -> Result<(), String> {
        let mut watch = kv.watch_with_history(">").await.map_err(|e| e.to_string())?;
        loop {
            let entry = tokio::select! {
                entry = watch.next() => entry,
                () = self.rewatch.notified() => return Err("starting the watch over".into()),
            };
            let Some(entry) = entry else { return Ok(()) };
            if !self.apply(&entry.map_err(|e| e.to_string())?, epoch) {
                return Err("starting the watch over".into());
            }
        }
    }

    /// Asks for the bucket stream's state every quarter of `max_staleness`
    /// (at most every second), and starts the watch over when the stream
    /// is a new one or the watch has fallen a `max_staleness` behind.
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
            let known = self.stream_made.lock().unwrap_or_else(|e| e.into_inner()).replace(made);
            let state = &info.state;
            if known.is_some_and(|known| known != made) || state.last_sequence < self.applied.load(Ordering::Acquire) {
                tracing::warn!(%url, "the revocation bucket was made anew; replaying it before vouching again");
                self.start_over(true);
                started_over = Instant::now();
                continue;
            }
            if state.messages == 0 {
                self.current_as_of(sent);
                continue;
            }
            {
                let mut waiting = self.waiting();
                if waiting.len() == PROBES_KEPT {
                    waiting.pop_front();
                }
                waiting.push_back((sent, state.last_sequence));
            }
            self.settle();
            let behind = self.waiting().front().map(|(oldest, _)| self.now_mark().saturating_sub(*oldest));
            if behind.is_some_and(|ms| Duration::from_millis(ms) > self.max_staleness)
                && started_over.elapsed() > self.max_staleness
            {
                tracing::warn!(%url, "the revocation watch fell behind; starting it over");
                self.start_over(false);
                started_over = Instant::now();
            }
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
