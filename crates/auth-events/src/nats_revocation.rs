//! Revocations across processes (DESIGN §6): the JetStream key-value bucket
//! `gatehouse_revocations`, keys `session.<sid>` and `user.<uid>`, history 1,
//! entries expiring with the longest token they could match.
//!
//! The auth-service writes ([`NatsRevocationSink`]); every gateway watches
//! ([`NatsRevocationFeed`]). A gateway vouches for its set only on evidence:
//! it asks the server for the bucket's last sequence and counts itself
//! current as of that moment once its watch has applied that sequence. With
//! no such evidence for `max_staleness` (NATS down, a link that hangs, a
//! watch that stalled) authenticated requests fail closed.
//!
//! Neither side needs NATS to start: the bucket is opened when the server
//! first answers.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use async_trait::async_trait;
use auth_core::{DomainEvent, EventKind, RevocationSink, SessionId, UserId};
use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio::sync::OnceCell;

use crate::publish::NatsError;
use crate::{RevocationFeed, RevocationSet};

pub const BUCKET: &str = "gatehouse_revocations";

#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    /// Tokens issued at or before this instant are revoked (users only).
    #[serde(default)]
    not_before: Option<i64>,
    /// After this the entry can match no live token.
    until: i64,
}

/// Opens the bucket, creating its stream on first use. The stream is made
/// directly, as a KV bucket's stream is laid out, because this client cannot
/// read NATS 2.9's answer to its own bucket-creation request.
async fn bucket(jetstream: &jetstream::Context, url: &str, reach: Duration) -> Result<kv::Store, NatsError> {
    use jetstream::stream;
    let fail = |e: &dyn std::fmt::Display| NatsError::stream(&format!("KV_{BUCKET}"), url, e);
    jetstream
        .create_or_update_stream(stream::Config {
            name: format!("KV_{BUCKET}"),
            subjects: vec![format!("$KV.{BUCKET}.>")],
            max_messages_per_subject: 1,
            max_age: reach,
            storage: stream::StorageType::File,
            discard: stream::DiscardPolicy::New,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            duplicate_window: Duration::from_secs(120).min(reach),
            ..Default::default()
        })
        .await
        .map_err(|e| fail(&e))?;
    jetstream.get_key_value(BUCKET).await.map_err(|e| fail(&e))
}

/// The longest the auth-service's direct write may take. It runs beside the
/// answer, never before it: the outbox event written in the same
/// transaction is what guarantees the revocation reaches every gateway.
pub const FAST_PATH_LIMIT: Duration = Duration::from_millis(300);

/// Writes revocations to the bucket: from each revocation use case right
/// after its commit (fast, best effort) and from the outbox relay (durable).
#[derive(Clone)]
pub struct NatsRevocationSink {
    jetstream: jetstream::Context,
    kv: Arc<OnceCell<kv::Store>>,
    url: Arc<str>,
    reach: Duration,
}

impl std::fmt::Debug for NatsRevocationSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NatsRevocationSink")
    }
}

impl NatsRevocationSink {
    /// `reach`: access-token lifetime plus clock skew, the bucket's `max_age`.
    /// Fails only on a malformed URL: a server not there yet is waited for.
    pub async fn connect(url: &str, reach: Duration) -> Result<Self, NatsError> {
        let client = crate::publish::connect(url, true).await?;
        let sink = Self { jetstream: jetstream::new(client), kv: Arc::default(), url: url.into(), reach };
        if let Err(error) = crate::publish::within_start_wait(sink.store()).await {
            tracing::warn!(%error, "revocations wait in the outbox until NATS answers");
        }
        Ok(sink)
    }

    async fn store(&self) -> Result<&kv::Store, NatsError> {
        self.kv.get_or_try_init(|| bucket(&self.jetstream, &self.url, self.reach)).await
    }

    /// The revocation an outbox event implies, if any: the relay writes these
    /// too, so a revocation survives an auth-service dying right after its
    /// commit.
    pub(crate) async fn put_for_event(&self, event: &DomainEvent) -> Result<(), String> {
        let until = (event.occurred_at + self.reach).unix_timestamp();
        let (key, entry) = match event.kind {
            EventKind::LoggedOut => {
                let Some(sid) = event.data["session_id"].as_str() else { return Ok(()) };
                (format!("session.{sid}"), Entry { not_before: None, until })
            }
            EventKind::Deleted => (
                format!("user.{}", event.user_id),
                Entry { not_before: Some(event.occurred_at.unix_timestamp()), until },
            ),
            _ => return Ok(()),
        };
        self.try_put(&key, &entry).await
    }

    async fn try_put(&self, key: &str, entry: &Entry) -> Result<(), String> {
        let value = serde_json::to_vec(entry).unwrap_or_default();
        let kv = self.store().await.map_err(|e| e.to_string())?;
        kv.put(key, value.into()).await.map(|_| ()).map_err(|e| e.to_string())
    }

    /// The fast path: one try, bounded by [`FAST_PATH_LIMIT`], on a task of
    /// its own so the request that revoked never waits for NATS.
    fn put_soon(&self, key: String, entry: Entry) {
        let sink = self.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(FAST_PATH_LIMIT, sink.try_put(&key, &entry)).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    tracing::warn!(%error, %key, "revocation fast path failed; the outbox relay will deliver it")
                }
                Err(_) => tracing::warn!(%key, "revocation fast path timed out; the outbox relay will deliver it"),
            }
        });
    }
}

#[async_trait]
impl RevocationSink for NatsRevocationSink {
    async fn session_revoked(&self, session: SessionId, until: OffsetDateTime) {
        self.put_soon(format!("session.{session}"), Entry { not_before: None, until: until.unix_timestamp() });
    }

    async fn user_revoked(&self, user: UserId, not_before: OffsetDateTime, until: OffsetDateTime) {
        let entry = Entry { not_before: Some(not_before.unix_timestamp()), until: until.unix_timestamp() };
        self.put_soon(format!("user.{user}"), entry);
    }
}

/// A gateway's view of the bucket.
#[derive(Debug)]
pub struct NatsRevocationFeed {
    set: RevocationSet,
    /// The highest stream sequence the watch has applied.
    applied: AtomicU64,
    /// The newest probe the watch has not caught up with: when it was sent
    /// (as `healthy_at` counts) and the bucket's last sequence then.
    waiting: Mutex<Option<(u64, u64)>>,
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
            waiting: Mutex::new(None),
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

    fn apply(&self, entry: &kv::Entry) {
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
        self.applied.fetch_max(entry.revision, Ordering::AcqRel);
        self.settle();
    }

    /// Turns the waiting probe into evidence once the watch has caught up.
    fn settle(&self) {
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((sent, last)) = *waiting
            && self.applied.load(Ordering::Acquire) >= last
        {
            self.current_as_of(sent);
            *waiting = None;
        }
    }

    /// Opens the bucket, replays it, then follows it; again after any break.
    async fn watch(self: Arc<Self>, js: jetstream::Context, url: String, reach: Duration) {
        let mut kv = None;
        loop {
            let followed = match &kv {
                Some(kv) => self.follow(kv).await,
                None => match bucket(&js, &url, reach).await {
                    Ok(opened) => {
                        kv = Some(opened);
                        continue;
                    }
                    Err(error) => Err(error.to_string()),
                },
            };
            match followed {
                Ok(()) => tracing::warn!("the revocation watch ended; watching again"),
                Err(error) => tracing::warn!(%error, "the revocation watch failed; watching again"),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn follow(&self, kv: &kv::Store) -> Result<(), String> {
        let mut watch = kv.watch_with_history(">").await.map_err(|e| e.to_string())?;
        while let Some(entry) = watch.next().await {
            self.apply(&entry.map_err(|e| e.to_string())?);
        }
        Ok(())
    }

    /// Asks the server for the bucket's last sequence several times per
    /// `max_staleness`. An empty bucket is evidence at once; otherwise the
    /// answer becomes evidence when the watch has applied that sequence. A
    /// connection the client still calls open proves nothing: a link that
    /// hangs looks just like that.
    async fn probe(self: Arc<Self>, js: jetstream::Context, url: String) {
        let every = (self.max_staleness / 4).clamp(Duration::from_millis(25), Duration::from_secs(1));
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tick.tick().await;
            let sent = self.now_mark();
            let answer = tokio::time::timeout(self.max_staleness, js.get_stream(format!("KV_{BUCKET}"))).await;
            let state = match answer {
                Ok(Ok(stream)) => stream.cached_info().state.clone(),
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
            if state.messages == 0 {
                self.current_as_of(sent);
            } else {
                *self.waiting.lock().unwrap_or_else(|e| e.into_inner()) = Some((sent, state.last_sequence));
                self.settle();
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
