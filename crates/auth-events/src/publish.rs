//! Where events go: NATS JetStream in production, an in-process bus in
//! `gatehouse up`. Both are [`EventSink`]s for the outbox relay.

use std::sync::Mutex;
use std::time::Duration;

use async_nats::jetstream::{self, context::PublishAckFuture, stream};
use async_trait::async_trait;
use auth_core::{DomainEvent, EventSink};
use tokio::sync::broadcast;

use std::sync::Arc;

use crate::cloudevent::{CloudEvent, SOURCE};
use crate::consumer::EventHandler;
use crate::nats_revocation::NatsRevocationSink;

/// The JetStream stream of user events and the subjects it holds.
pub const STREAM: &str = "GATEHOUSE_USERS";
pub const SUBJECTS: &str = "user.>";

/// Events for handlers in the same process (`gatehouse up`), delivered at
/// least once: an outbox event counts as delivered only when every handler
/// has taken it, so a handler that fails has it again at the relay's next
/// try (handlers are idempotent, as NATS consumers are).
#[derive(Clone)]
pub struct InProcessBus {
    handlers: Arc<Mutex<Vec<Arc<dyn EventHandler>>>>,
    /// Copies of delivered events, for observers that may miss some.
    tx: broadcast::Sender<CloudEvent>,
}

impl std::fmt::Debug for InProcessBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InProcessBus").field("handlers", &self.handlers().len()).finish_non_exhaustive()
    }
}

impl Default for InProcessBus {
    fn default() -> Self {
        Self::new(1024)
    }
}

impl InProcessBus {
    pub fn new(capacity: usize) -> Self {
        Self { handlers: Arc::default(), tx: broadcast::channel(capacity).0 }
    }

    /// Copies of the events every handler has taken, from now on. Best
    /// effort: a receiver that falls behind misses events, so nothing that
    /// must see every event observes the bus this way; use [`Self::follow`].
    pub fn subscribe(&self) -> broadcast::Receiver<CloudEvent> {
        self.tx.subscribe()
    }

    /// Hands every event from now on to `handler`, before the event counts
    /// as delivered: the in-process counterpart of [`crate::Consumer`].
    pub fn follow(&self, handler: Arc<dyn EventHandler>) {
        self.handlers.lock().unwrap_or_else(|e| e.into_inner()).push(handler);
    }

    fn handlers(&self) -> Vec<Arc<dyn EventHandler>> {
        self.handlers.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Hands `event` to every handler; the first failure is returned (the
    /// handlers before it have taken the event, and take it again next time).
    pub async fn publish(&self, event: CloudEvent) -> Result<(), String> {
        for handler in self.handlers() {
            handler.handle(&event).await?;
        }
        let _ = self.tx.send(event);
        Ok(())
    }
}

#[async_trait]
impl EventSink for InProcessBus {
    async fn deliver(&self, events: &[DomainEvent]) -> usize {
        for (delivered, event) in events.iter().enumerate() {
            let cloud = CloudEvent::from_domain(event, SOURCE);
            if let Err(error) = self.publish(cloud).await {
                tracing::warn!(%error, event_id = %event.id, "an in-process handler failed; the event will come again");
                return delivered;
            }
        }
        events.len()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    #[error("cannot connect to NATS at {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("cannot create or update the JetStream stream {name} on NATS at {url}: {reason}")]
    Stream { name: String, url: String, reason: String },
}

impl NatsError {
    pub(crate) fn stream(name: &str, url: &str, reason: &dyn std::fmt::Display) -> Self {
        Self::Stream { name: name.into(), url: url.into(), reason: reason.to_string() }
    }
}

/// How long a part waits at start for NATS to answer before it goes on
/// without it (and sets itself up when NATS first answers).
pub const START_WAIT: Duration = Duration::from_secs(1);

/// `setup` bounded by [`START_WAIT`].
pub(crate) async fn within_start_wait<T>(
    setup: impl std::future::Future<Output = Result<T, NatsError>>,
) -> Result<T, String> {
    match tokio::time::timeout(START_WAIT, setup).await {
        Ok(done) => done.map_err(|e| e.to_string()),
        Err(_) => Err(format!("NATS did not answer within {} s", START_WAIT.as_secs())),
    }
}

/// Something made on NATS (a stream, a bucket, a consumer): remembered once
/// made, forgotten after a failure that may mean NATS lost it, so the next
/// use makes it again.
pub(crate) struct Remembered<T>(Mutex<Option<T>>);

impl<T> Default for Remembered<T> {
    fn default() -> Self {
        Self(Mutex::new(None))
    }
}

impl<T: Clone> Remembered<T> {
    pub(crate) fn get(&self) -> Option<T> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn forget(&self) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// The remembered one, or a new one from `make`, remembered.
    pub(crate) async fn get_or_make<F>(&self, make: impl FnOnce() -> F) -> Result<T, NatsError>
    where
        F: std::future::Future<Output = Result<T, NatsError>>,
    {
        if let Some(made) = self.get() {
            return Ok(made);
        }
        let made = make().await?;
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(made.clone());
        Ok(made)
    }
}

/// A NATS client as every part of Gatehouse makes one. With
/// `retry_initial_connect` the client keeps trying in the background when
/// the server is not there yet; without, that is an error at once. Pings
/// every 5 s: a link that hangs (no reset, no bytes) is given up after
/// three unanswered ones and the client connects again.
pub(crate) async fn connect(url: &str, retry_initial_connect: bool) -> Result<async_nats::Client, NatsError> {
    let mut options = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(5))
        .ping_interval(Duration::from_secs(5));
    if retry_initial_connect {
        options = options.retry_on_initial_connect();
    }
    options.connect(url).await.map_err(|e| NatsError::Connect { url: url.into(), reason: e.to_string() })
}

/// Publishes to JetStream with `Nats-Msg-Id` = event id and waits for the acks.
#[derive(Clone)]
pub struct NatsPublisher {
    jetstream: jetstream::Context,
    /// Whether the stream is known to exist.
    stream: Arc<Remembered<()>>,
    url: Arc<str>,
    revocations: Option<NatsRevocationSink>,
}

impl std::fmt::Debug for NatsPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NatsPublisher")
    }
}

impl NatsPublisher {
    /// Connects and creates (or updates) the stream. Fails only on a
    /// malformed URL: when NATS does not answer within [`START_WAIT`], events
    /// wait in the outbox and the stream is made when it first answers.
    pub async fn connect(url: &str) -> Result<Self, NatsError> {
        let jetstream = jetstream::new(connect(url, true).await?);
        let publisher = Self { jetstream, stream: Arc::default(), url: url.into(), revocations: None };
        if let Err(error) = within_start_wait(publisher.ensure_stream()).await {
            tracing::warn!(%error, %url, "events wait in the outbox until NATS answers");
        }
        Ok(publisher)
    }

    async fn ensure_stream(&self) -> Result<(), NatsError> {
        let create = || async {
            self.jetstream
                .create_or_update_stream(stream::Config {
                    name: STREAM.into(),
                    subjects: vec![SUBJECTS.into()],
                    storage: stream::StorageType::File,
                    duplicate_window: Duration::from_secs(120),
                    // Consumers catch up within a week or rebuild from their own data.
                    max_age: Duration::from_secs(7 * 24 * 3600),
                    ..Default::default()
                })
                .await
                .map(|_| ())
                .map_err(|e| NatsError::stream(STREAM, &self.url, &e))
        };
        self.stream.get_or_make(create).await
    }

    /// Also writes the revocation each logout or deletion event implies, before
    /// publishing it: the durable path beside the auth-service's direct write.
    pub fn with_revocations(mut self, sink: NatsRevocationSink) -> Self {
        self.revocations = Some(sink);
        self
    }

    pub fn jetstream(&self) -> &jetstream::Context {
        &self.jetstream
    }

    /// Whether the client is connected now (for `/readyz`: a report, not a
    /// proof that the server would answer).
    pub fn is_connected(&self) -> bool {
        self.jetstream.client().connection_state() == async_nats::connection::State::Connected
    }
}

#[async_trait]
impl EventSink for NatsPublisher {
    /// Sends the whole batch, then collects the acks in order.
    async fn deliver(&self, events: &[DomainEvent]) -> usize {
        if let Err(error) = self.ensure_stream().await {
            tracing::warn!(%error, "cannot publish events yet");
            return 0;
        }
        let mut pending: Vec<PublishAckFuture> = Vec::with_capacity(events.len());
        for event in events {
            if let Some(revocations) = &self.revocations
                && let Err(error) = revocations.put_for_event(event).await
            {
                tracing::warn!(%error, event_id = %event.id, "writing a revocation to NATS failed");
                break;
            }
            let cloud = CloudEvent::from_domain(event, SOURCE);
            let message = jetstream::message::PublishMessage::build()
                .message_id(&cloud.id)
                .header("Content-Type", "application/cloudevents+json")
                .payload(cloud.to_json().into());
            match self.jetstream.send_publish(cloud.kind.clone(), message).await {
                Ok(ack) => pending.push(ack),
                Err(error) => {
                    tracing::warn!(%error, event_id = %cloud.id, "publishing to NATS failed");
                    self.stream.forget();
                    break;
                }
            }
        }
        let mut accepted = 0;
        for ack in pending {
            match ack.await {
                Ok(_) => accepted += 1,
                Err(error) => {
                    tracing::warn!(%error, "NATS did not acknowledge an event");
                    self.stream.forget();
                    break;
                }
            }
        }
        accepted
    }
}
