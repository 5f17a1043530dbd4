//! The consumer helper for downstream services: a durable JetStream pull
//! consumer with explicit acks, bounded redelivery with backoff, and a
//! dead-letter subject for events that keep failing.
//!
//! Idempotency is the handler's part, in its own database: record the event
//! id in a handled-events table in the same transaction as the change, and
//! treat an id already there as done (see `examples/notes-service`).

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::pull, stream};
use async_trait::async_trait;
use futures_util::StreamExt as _;

use crate::CloudEvent;
use crate::publish::{NatsError, Remembered, STREAM};

/// The stream keeping events no handler could take.
pub const DEAD_LETTER_STREAM: &str = "GATEHOUSE_DEAD_LETTERS";

#[async_trait]
pub trait EventHandler: Send + Sync + 'static {
    /// Applies the event; an error has it delivered again later.
    async fn handle(&self, event: &CloudEvent) -> Result<(), String>;
}

#[derive(Debug, Clone)]
pub struct ConsumerSettings {
    /// The durable consumer's name, one per service (`notes`).
    pub durable: String,
    /// Subjects to receive, e.g. `user.deleted`.
    pub filter: String,
    /// Deliveries before an event goes to the dead letters.
    pub max_deliver: i64,
    /// Waits before the 2nd, 3rd… delivery; the last repeats.
    pub backoff: Vec<Duration>,
    /// Where a new consumer starts: every event the stream still holds
    /// (`All`, the default: a new service catches up), or only new ones.
    pub deliver: jetstream::consumer::DeliverPolicy,
}

impl ConsumerSettings {
    pub fn new(durable: &str, filter: &str) -> Self {
        Self {
            durable: durable.into(),
            filter: filter.into(),
            max_deliver: 5,
            backoff: vec![Duration::from_secs(1), Duration::from_secs(5), Duration::from_secs(30)],
            deliver: jetstream::consumer::DeliverPolicy::All,
        }
    }

    fn delay(&self, delivered: i64) -> Duration {
        let i = usize::try_from(delivered.max(1) - 1).unwrap_or(0);
        self.backoff.get(i).or(self.backoff.last()).copied().unwrap_or(Duration::from_secs(1))
    }

    pub fn dead_letter_subject(&self) -> String {
        format!("gatehouse.dead.{}", self.durable)
    }
}

pub struct Consumer {
    jetstream: jetstream::Context,
    /// Made when NATS first answers; made again after a failed fetch (NATS
    /// may have lost it).
    consumer: Remembered<jetstream::consumer::Consumer<pull::Config>>,
    url: String,
    settings: ConsumerSettings,
    handler: Arc<dyn EventHandler>,
}

impl Consumer {
    /// Connects and makes the streams and the durable consumer. Fails only on
    /// a malformed URL: when NATS does not answer within
    /// [`crate::publish::START_WAIT`] they are made when it first answers.
    pub async fn connect(
        url: &str,
        settings: ConsumerSettings,
        handler: Arc<dyn EventHandler>,
    ) -> Result<Self, NatsError> {
        let jetstream = jetstream::new(crate::publish::connect(url, true).await?);
        let consumer = Self { jetstream, consumer: Default::default(), url: url.into(), settings, handler };
        if let Err(error) = crate::publish::within_start_wait(consumer.consumer()).await {
            tracing::warn!(%error, durable = %consumer.settings.durable, "events will be consumed once NATS answers");
        }
        Ok(consumer)
    }

    async fn consumer(&self) -> Result<jetstream::consumer::Consumer<pull::Config>, NatsError> {
        self.consumer.get_or_make(|| self.create()).await
    }

    async fn create(&self) -> Result<jetstream::consumer::Consumer<pull::Config>, NatsError> {
        let (jetstream, settings) = (&self.jetstream, &self.settings);
        jetstream
            .create_or_update_stream(stream::Config {
                name: DEAD_LETTER_STREAM.into(),
                subjects: vec!["gatehouse.dead.>".into()],
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(|e| NatsError::stream(DEAD_LETTER_STREAM, &self.url, &e))?;
        let fail = |e: &dyn std::fmt::Display| NatsError::stream(STREAM, &self.url, e);
        let events = jetstream.get_stream(STREAM).await.map_err(|e| fail(&e))?;
        events
            .get_or_create_consumer(
                &settings.durable,
                pull::Config {
                    durable_name: Some(settings.durable.clone()),
                    filter_subject: settings.filter.clone(),
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    ack_wait: Duration::from_secs(30),
                    max_deliver: settings.max_deliver,
                    deliver_policy: settings.deliver,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| fail(&e))
    }

    /// Takes up to `max` waiting events, waiting at most `wait` for the first;
    /// returns how many were handled (acknowledged).
    pub async fn try_consume_batch(&self, max: usize, wait: Duration) -> Result<usize, String> {
        let consumer = self.consumer().await.map_err(|e| e.to_string())?;
        let fetched = consumer.fetch().max_messages(max).expires(wait).messages().await;
        let mut batch = fetched.map_err(|e| {
            self.consumer.forget();
            e.to_string()
        })?;
        let (mut handled, mut received) = (0, 0);
        while let Some(message) = batch.next().await {
            let message = message.map_err(|e| {
                self.consumer.forget();
                e.to_string()
            })?;
            received += 1;
            if self.process(&message).await {
                handled += 1;
            }
        }
        // A consumer NATS lost answers nothing at all: ask after a quiet batch.
        if received == 0 && consumer.clone().info().await.is_err() {
            self.consumer.forget();
            return Err(format!("the consumer {} is gone; making it again", self.settings.durable));
        }
        Ok(handled)
    }

    async fn process(&self, message: &jetstream::Message) -> bool {
        let delivered = message.info().map(|i| i.delivered).unwrap_or(1);
        let outcome = match serde_json::from_slice::<CloudEvent>(&message.payload) {
            Ok(event) => self.handler.handle(&event).await,
            Err(e) => Err(format!("not a CloudEvent: {e}")),
        };
        let ack = match &outcome {
            Ok(()) => message.ack().await,
            Err(error) if delivered >= self.settings.max_deliver => {
                tracing::error!(%error, subject = %message.subject, "event failed for good; dead-lettering it");
                let dead =
                    match self.jetstream.publish(self.settings.dead_letter_subject(), message.payload.clone()).await {
                        Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
                        Err(e) => Err(e.to_string()),
                    };
                if let Err(e) = dead {
                    tracing::error!(error = %e, "cannot dead-letter an event; it will come back");
                    return false;
                }
                message.ack_with(AckKind::Term).await
            }
            Err(error) => {
                tracing::warn!(%error, delivered, "event failed; it will be delivered again");
                message.ack_with(AckKind::Nak(Some(self.settings.delay(delivered)))).await
            }
        };
        if let Err(e) = ack {
            tracing::warn!(error = %e, "cannot acknowledge an event; it will be delivered again");
        }
        outcome.is_ok()
    }

    /// Consumes until the task is aborted.
    pub fn spawn(self: Arc<Self>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                if let Err(error) = self.try_consume_batch(100, Duration::from_secs(5)).await {
                    tracing::warn!(%error, "consuming events failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        })
    }
}
