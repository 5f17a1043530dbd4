//! Revocations across processes (DESIGN §6): the JetStream key-value bucket
//! `gatehouse_revocations`, keys `session.<sid>` and `user.<uid>`, history 1,
//! entries expiring with the longest token they could match.
//!
//! The auth-service writes ([`NatsRevocationSink`]); every gateway watches
//! ([`NatsRevocationFeed`]), replays the whole bucket before it calls itself
//! current, and stops vouching for its set when the watch has been broken for
//! longer than `max_staleness`, so authenticated requests fail closed.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use async_trait::async_trait;
use auth_core::{DomainEvent, EventKind, RevocationSink, SessionId, UserId};
use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

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
async fn bucket(jetstream: &jetstream::Context, reach: Duration) -> Result<kv::Store, NatsError> {
    use jetstream::stream;
    let fail = |e: &dyn std::fmt::Display| NatsError::Stream(format!("{BUCKET}: {e}"));
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

/// Writes revocations to the bucket, retrying briefly: the auth-service has
/// already committed them, and every gateway depends on hearing of them.
#[derive(Clone)]
pub struct NatsRevocationSink {
    kv: kv::Store,
    reach: Duration,
}

impl std::fmt::Debug for NatsRevocationSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NatsRevocationSink")
    }
}

impl NatsRevocationSink {
    /// `reach`: access-token lifetime plus clock skew, the bucket's `max_age`.
    pub async fn connect(url: &str, reach: Duration) -> Result<Self, NatsError> {
        let client = crate::publish::connect(url, true).await?;
        Ok(Self { kv: bucket(&jetstream::new(client), reach).await?, reach })
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
        self.kv.put(key, value.into()).await.map(|_| ()).map_err(|e| e.to_string())
    }

    async fn put(&self, key: String, entry: Entry) {
        for attempt in 1..=5u32 {
            match self.try_put(&key, &entry).await {
                Ok(()) => return,
                Err(error) => {
                    tracing::error!(%error, %key, attempt, "cannot publish a revocation");
                    tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
                }
            }
        }
    }
}

#[async_trait]
impl RevocationSink for NatsRevocationSink {
    async fn session_revoked(&self, session: SessionId, until: OffsetDateTime) {
        self.put(format!("session.{session}"), Entry { not_before: None, until: until.unix_timestamp() }).await;
    }

    async fn user_revoked(&self, user: UserId, not_before: OffsetDateTime, until: OffsetDateTime) {
        let entry = Entry { not_before: Some(not_before.unix_timestamp()), until: until.unix_timestamp() };
        self.put(format!("user.{user}"), entry).await;
    }
}

/// A gateway's view of the bucket.
#[derive(Debug)]
pub struct NatsRevocationFeed {
    set: RevocationSet,
    replayed: AtomicBool,
    /// Milliseconds from `started` to the last sign of health, plus one (0:
    /// never): an atomic, because every authenticated request reads it.
    healthy_at: AtomicU64,
    started: Instant,
    max_staleness: Duration,
}

impl NatsRevocationFeed {
    /// Connects, then keeps the set current in the background. The feed is
    /// not current until the whole bucket has been replayed.
    pub async fn start(url: &str, reach: Duration, max_staleness: Duration) -> Result<Arc<Self>, NatsError> {
        let client = crate::publish::connect(url, true).await?;
        let js = jetstream::new(client.clone());
        let kv = bucket(&js, reach).await?;
        let feed = Arc::new(Self {
            set: RevocationSet::new(),
            replayed: AtomicBool::new(false),
            healthy_at: AtomicU64::new(0),
            started: Instant::now(),
            max_staleness,
        });
        tokio::spawn(Arc::clone(&feed).watch(js, kv));
        tokio::spawn(Arc::clone(&feed).heartbeat(client));
        Ok(feed)
    }

    fn mark_healthy(&self) {
        let since_start = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        self.healthy_at.store(since_start + 1, Ordering::Release);
    }

    fn apply(&self, entry: &kv::Entry) {
        if !matches!(entry.operation, kv::Operation::Put) {
            return;
        }
        let Ok(value) = serde_json::from_slice::<Entry>(&entry.value) else {
            tracing::warn!(key = %entry.key, "ignoring a malformed revocation entry");
            return;
        };
        match (entry.key.split_once('.'), value.not_before) {
            (Some(("session", sid)), _) => self.set.revoke_session(sid, value.until),
            (Some(("user", uid)), Some(not_before)) => self.set.revoke_user(uid, not_before, value.until),
            _ => tracing::warn!(key = %entry.key, "ignoring an unknown revocation key"),
        }
    }

    /// Replays the bucket, then follows it; re-watches after any break.
    async fn watch(self: Arc<Self>, js: jetstream::Context, kv: kv::Store) {
        loop {
            match self.follow(&js, &kv).await {
                Ok(()) => tracing::warn!("the revocation watch ended; watching again"),
                Err(error) => tracing::warn!(%error, "the revocation watch failed; watching again"),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn follow(&self, js: &jetstream::Context, kv: &kv::Store) -> Result<(), String> {
        let pending = js
            .get_stream(format!("KV_{BUCKET}"))
            .await
            .map_err(|e| e.to_string())?
            .info()
            .await
            .map_err(|e| e.to_string())?
            .state
            .messages;
        let mut watch = kv.watch_with_history(">").await.map_err(|e| e.to_string())?;
        if pending == 0 {
            self.replayed.store(true, Ordering::SeqCst);
            self.mark_healthy();
        }
        while let Some(entry) = watch.next().await {
            let entry = entry.map_err(|e| e.to_string())?;
            self.apply(&entry);
            if entry.delta == 0 {
                self.replayed.store(true, Ordering::SeqCst);
            }
            self.mark_healthy();
        }
        Ok(())
    }

    /// The watch is silent when nothing is revoked: a live connection is what
    /// says the set is still complete.
    async fn heartbeat(self: Arc<Self>, client: async_nats::Client) {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tick.tick().await;
            if self.replayed.load(Ordering::SeqCst)
                && client.connection_state() == async_nats::connection::State::Connected
            {
                self.mark_healthy();
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
        self.replayed.load(Ordering::SeqCst)
            && healthy_at > 0
            && self.started.elapsed() <= Duration::from_millis(healthy_at - 1) + self.max_staleness
    }
}
