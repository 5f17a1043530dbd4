//! Revocations across processes (DESIGN §6): the JetStream key-value bucket
//! `gatehouse_revocations`, keys `session.<sid>` (a session ended),
//! `user.<uid>` (tokens issued up to a time: a deletion) and `stale.<uid>`
//! (tokens below a version: a role change or disabling), history 1,
//! entries expiring with the longest token they could match. Writes merge
//! with what a key holds (compare-and-swap), so entries only widen.
//!
//! The auth-service writes ([`NatsRevocationSink`]); every gateway watches
//! ([`crate::nats_feed::NatsRevocationFeed`], which says when it vouches).
//! Neither side needs NATS to start: the bucket is opened when the server
//! first answers.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use async_trait::async_trait;
use auth_core::{DomainEvent, EventKind, RevocationSink, SessionId, UserId};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::publish::{NatsError, Remembered};

pub const BUCKET: &str = "gatehouse_revocations";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Entry {
    /// Tokens issued at or before this instant are revoked (`user.` keys).
    #[serde(default)]
    pub(crate) not_before: Option<i64>,
    /// Tokens minted from a version below this are stale (`stale.` keys).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) version: Option<i64>,
    /// After this the entry can match no live token.
    pub(crate) until: i64,
}

impl Entry {
    /// Both entries in one: what either revokes, for as long as either
    /// stands. A revocation only ever widens.
    fn merged(&self, other: &Entry) -> Entry {
        Entry {
            not_before: self.not_before.max(other.not_before),
            version: self.version.max(other.version),
            until: self.until.max(other.until),
        }
    }
}

/// Writes a version bump, or (from events written before versions) a cut-off.
fn staled(user: UserId, version: Option<i64>, at: OffsetDateTime, until: i64) -> (String, Entry) {
    match version {
        Some(version) => (format!("stale.{user}"), Entry { not_before: None, version: Some(version), until }),
        None => (format!("user.{user}"), Entry { not_before: Some(at.unix_timestamp()), version: None, until }),
    }
}

/// Opens the bucket, creating its stream on first use. The stream is made
/// directly, as a KV bucket's stream is laid out, because this client cannot
/// read NATS 2.9's answer to its own bucket-creation request.
pub(crate) async fn bucket(jetstream: &jetstream::Context, url: &str, reach: Duration) -> Result<kv::Store, NatsError> {
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

/// Tries of a compare-and-swap write before it counts as failed.
const CAS_ATTEMPTS: usize = 5;

/// Writes revocations to the bucket: from each revocation use case right
/// after its commit (fast, best effort) and from the outbox relay (durable).
#[derive(Clone)]
pub struct NatsRevocationSink {
    jetstream: jetstream::Context,
    kv: Arc<Remembered<kv::Store>>,
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

    async fn store(&self) -> Result<kv::Store, NatsError> {
        self.kv.get_or_make(|| bucket(&self.jetstream, &self.url, self.reach)).await
    }

    /// The revocation an outbox event implies, if any: the relay writes these
    /// too, so a revocation survives an auth-service dying right after its
    /// commit.
    pub(crate) async fn put_for_event(&self, event: &DomainEvent) -> Result<(), String> {
        let until = (event.occurred_at + self.reach).unix_timestamp();
        let (key, entry) = match event.kind {
            EventKind::LoggedOut => {
                let Some(sid) = event.data["session_id"].as_str() else { return Ok(()) };
                (format!("session.{sid}"), Entry { not_before: None, version: None, until })
            }
            // Tokens of the user issued before: deleted.
            EventKind::Deleted => (
                format!("user.{}", event.user_id),
                Entry { not_before: Some(event.occurred_at.unix_timestamp()), version: None, until },
            ),
            // Tokens minted from an older version: disabled, or its roles
            // changed. A key of its own, so it never replaces a deletion's.
            EventKind::Disabled | EventKind::RolesChanged => {
                staled(event.user_id, event.data["version"].as_i64(), event.occurred_at, until)
            }
            _ => return Ok(()),
        };
        self.try_put(&key, &entry).await
    }

    async fn try_put(&self, key: &str, entry: &Entry) -> Result<(), String> {
        let kv = self.store().await.map_err(|e| e.to_string())?;
        self.put_into(&kv, key, entry).await
    }

    /// Writes `entry` merged with what the key holds (compare-and-swap), so
    /// an older event relayed after a newer fast-path write never takes a
    /// revocation back.
    async fn put_into(&self, kv: &kv::Store, key: &str, entry: &Entry) -> Result<(), String> {
        let failed = |error: String| {
            self.kv.forget();
            error
        };
        for attempt in 0..CAS_ATTEMPTS {
            let found = kv.entry(key).await.map_err(|e| failed(e.to_string()))?;
            let held = found
                .as_ref()
                .filter(|found| found.operation == kv::Operation::Put)
                .and_then(|found| serde_json::from_slice::<Entry>(&found.value).ok());
            let merged = held.as_ref().map_or_else(|| entry.clone(), |held| held.merged(entry));
            if held.as_ref() == Some(&merged) {
                return Ok(());
            }
            let value = serde_json::to_vec(&merged).unwrap_or_default();
            let revision = found.map_or(0, |found| found.revision);
            match kv.update(key, value.into(), revision).await {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                    // Another writer got there first: read again, after a
                    // moment, so a lagging read has time to catch up.
                    tokio::time::sleep(Duration::from_millis(5 << attempt)).await;
                }
                Err(e) => return Err(failed(e.to_string())),
            }
        }
        Err(format!("{key} kept changing under {CAS_ATTEMPTS} writes"))
    }

    /// The fast path: one try, bounded by [`FAST_PATH_LIMIT`], on a task of
    /// its own so the request that revoked never waits for NATS; skipped
    /// while the bucket is not open (the relay opens it).
    fn put_soon(&self, key: String, entry: Entry) {
        let Some(kv) = self.kv.get() else {
            tracing::debug!(%key, "revocation fast path skipped: NATS not ready; the outbox relay will deliver it");
            return;
        };
        let sink = self.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(FAST_PATH_LIMIT, sink.put_into(&kv, &key, &entry)).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    tracing::warn!(%error, %key, "revocation fast path failed; the outbox relay will deliver it")
                }
                Err(_) => {
                    sink.kv.forget();
                    tracing::warn!(%key, "revocation fast path timed out; the outbox relay will deliver it")
                }
            }
        });
    }
}

#[async_trait]
impl RevocationSink for NatsRevocationSink {
    async fn session_revoked(&self, session: SessionId, until: OffsetDateTime) {
        self.put_soon(
            format!("session.{session}"),
            Entry { not_before: None, version: None, until: until.unix_timestamp() },
        );
    }

    async fn user_revoked(&self, user: UserId, not_before: OffsetDateTime, until: OffsetDateTime) {
        let entry =
            Entry { not_before: Some(not_before.unix_timestamp()), version: None, until: until.unix_timestamp() };
        self.put_soon(format!("user.{user}"), entry);
    }

    async fn tokens_outdated(&self, user: UserId, version: i64, until: OffsetDateTime) {
        let entry = Entry { not_before: None, version: Some(version), until: until.unix_timestamp() };
        self.put_soon(format!("stale.{user}"), entry);
    }
}
