//! Where events go: NATS JetStream in production, an in-process bus in
//! `gatehouse up`. Both are [`EventSink`]s for the outbox relay.

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

/// Events for subscribers in the same process (`gatehouse up`).
#[derive(Debug, Clone)]
pub struct InProcessBus {
    tx: broadcast::Sender<CloudEvent>,
}

impl Default for InProcessBus {
    fn default() -> Self {
        Self::new(1024)
    }
}

impl InProcessBus {
    pub fn new(capacity: usize) -> Self {
        Self { tx: broadcast::channel(capacity).0 }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<CloudEvent> {
        self.tx.subscribe()
    }

    /// Puts an event of another service (a deletion confirmation) on the bus.
    pub fn publish(&self, event: CloudEvent) {
        let _ = self.tx.send(event);
    }

    /// Feeds every event on the bus to `handler` until the task is aborted;
    /// the in-process counterpart of [`crate::Consumer`].
    pub fn follow(&self, handler: Arc<dyn EventHandler>) -> tokio::task::JoinHandle<()> {
        let mut events = self.subscribe();
        tokio::spawn(async move {
            use tokio::sync::broadcast::error::RecvError;
            loop {
                match events.recv().await {
                    Ok(event) => {
                        if let Err(error) = handler.handle(&event).await {
                            tracing::error!(%error, event_id = %event.id, "an in-process handler failed");
                        }
                    }
                    Err(RecvError::Lagged(missed)) => tracing::error!(missed, "a handler fell behind the event bus"),
                    Err(RecvError::Closed) => return,
                }
            }
        })
    }
}

#[async_trait]
impl EventSink for InProcessBus {
    async fn deliver(&self, events: &[DomainEvent]) -> usize {
        for event in events {
            // No subscriber is fine: the event is recorded in the outbox.
            let _ = self.tx.send(CloudEvent::from_domain(event, SOURCE));
        }
        events.len()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    #[error("cannot connect to NATS at {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("cannot create or update the JetStream stream {STREAM}: {0}")]
    Stream(String),
}

/// A NATS client as every part of Gatehouse makes one. With
/// `retry_initial_connect` the client keeps trying in the background when
/// the server is not there yet; without, that is an error at once.
pub(crate) async fn connect(url: &str, retry_initial_connect: bool) -> Result<async_nats::Client, NatsError> {
    let mut options = async_nats::ConnectOptions::new().connection_timeout(Duration::from_secs(5));
    if retry_initial_connect {
        options = options.retry_on_initial_connect();
    }
    options.connect(url).await.map_err(|e| NatsError::Connect { url: url.into(), reason: e.to_string() })
}

/// Publishes to JetStream with `Nats-Msg-Id` = event id and waits for the acks.
#[derive(Clone)]
pub struct NatsPublisher {
    jetstream: jetstream::Context,
    revocations: Option<NatsRevocationSink>,
}

impl std::fmt::Debug for NatsPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NatsPublisher")
    }
}

impl NatsPublisher {
    /// Connects and creates (or updates) the stream.
    pub async fn connect(url: &str) -> Result<Self, NatsError> {
        let jetstream = jetstream::new(connect(url, false).await?);
        jetstream
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
            .map_err(|e| NatsError::Stream(e.to_string()))?;
        Ok(Self { jetstream, revocations: None })
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
}

#[async_trait]
impl EventSink for NatsPublisher {
    /// Sends the whole batch, then collects the acks in order.
    async fn deliver(&self, events: &[DomainEvent]) -> usize {
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
                    break;
                }
            }
        }
        accepted
    }
}
