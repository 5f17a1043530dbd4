//! The outbox relay: moves committed events from the `outbox` table to the
//! event sink, marking each published only after the sink accepted it. When
//! the sink is down, or refuses an event, events wait in the table and the
//! relay tries again with a growing pause; nothing is lost.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use auth_core::{Clock, DomainEvent, EventSink, Outbox, StoreError};
use tokio::sync::Notify;

/// Published events are kept this long (as long as the stream keeps them),
/// for operators looking into what was sent.
pub const KEEP_PUBLISHED: time::Duration = time::Duration::days(7);

pub struct OutboxRelay {
    outbox: Arc<dyn Outbox>,
    sink: Arc<dyn EventSink>,
    clock: Arc<dyn Clock>,
    batch: u32,
    wake: Notify,
}

impl OutboxRelay {
    pub fn new(outbox: Arc<dyn Outbox>, sink: Arc<dyn EventSink>, clock: Arc<dyn Clock>, batch: u32) -> Self {
        Self { outbox, sink, clock, batch: batch.max(1), wake: Notify::new() }
    }

    /// Relays one batch; returns how many events were published.
    pub async fn try_relay_batch(&self) -> Result<usize, StoreError> {
        self.relay_once().await.map(|relayed| relayed.published)
    }

    async fn relay_once(&self) -> Result<Relayed, StoreError> {
        let tally = Tally { sink: self.sink.as_ref(), offered: AtomicUsize::new(0) };
        let published = self.outbox.relay_batch(self.batch, &tally, self.clock.now()).await?;
        Ok(Relayed { published, refused: published < tally.offered.load(Ordering::Relaxed) })
    }

    /// Asks the running relay to look now rather than at its next tick.
    pub fn nudge(&self) {
        self.wake.notify_one();
    }

    /// Deletes events published more than [`KEEP_PUBLISHED`] ago.
    pub async fn prune(&self) -> Result<u64, StoreError> {
        self.outbox.prune_published(self.clock.now() - KEEP_PUBLISHED).await
    }

    /// Relays until the outbox is empty, then waits `interval` (or a nudge);
    /// after a failure or a refused event it waits twice as long each time,
    /// up to [`MAX_BACKOFF`], ignoring nudges. Prunes old published events
    /// once an hour.
    pub fn spawn(self: &Arc<Self>, interval: Duration) -> tokio::task::JoinHandle<()> {
        let relay = Arc::clone(self);
        tokio::spawn(async move {
            let mut pruned = tokio::time::Instant::now();
            let mut backoff = Duration::ZERO;
            loop {
                if pruned.elapsed() >= Duration::from_secs(3600) {
                    pruned = tokio::time::Instant::now();
                    if let Err(error) = relay.prune().await {
                        tracing::warn!(%error, "pruning published events failed");
                    }
                }
                let failed = match relay.relay_once().await {
                    Ok(Relayed { refused: false, published }) if published >= relay.batch as usize => continue,
                    Ok(Relayed { refused, .. }) => refused,
                    Err(error) => {
                        tracing::warn!(%error, "outbox relay failed; retrying");
                        true
                    }
                };
                if failed {
                    backoff = (backoff * 2).max(interval).min(MAX_BACKOFF.max(interval));
                    tokio::time::sleep(backoff).await;
                    continue;
                }
                backoff = Duration::ZERO;
                tokio::select! {
                    _ = tokio::time::sleep(interval) => {}
                    _ = relay.wake.notified() => {}
                }
            }
        })
    }
}

/// The longest pause between two tries of a sink that fails.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// What one batch came to.
struct Relayed {
    published: usize,
    /// The sink took fewer events than it was given.
    refused: bool,
}

/// The relay's sink, counting what it is given.
struct Tally<'a> {
    sink: &'a dyn EventSink,
    offered: AtomicUsize,
}

#[async_trait::async_trait]
impl EventSink for Tally<'_> {
    async fn deliver(&self, events: &[DomainEvent]) -> usize {
        self.offered.fetch_add(events.len(), Ordering::Relaxed);
        self.sink.deliver(events).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use async_trait::async_trait;
    use auth_core::events::StoredEvent;
    use auth_core::{ManualClock, UserId};
    use time::OffsetDateTime;
    use uuid::Uuid;

    use super::*;

    /// An outbox holding one event that never gets published.
    struct OneEvent(DomainEvent);

    #[async_trait]
    impl Outbox for OneEvent {
        async fn unpublished(&self, _: u32) -> Result<Vec<StoredEvent>, StoreError> {
            Ok(vec![StoredEvent { event: self.0.clone(), published_at: None }])
        }
        async fn events_of(&self, _: UserId) -> Result<Vec<StoredEvent>, StoreError> {
            self.unpublished(1).await
        }
        async fn mark_published(&self, _: &[Uuid], _: OffsetDateTime) -> Result<(), StoreError> {
            Ok(())
        }
        async fn relay_batch(&self, _: u32, sink: &dyn EventSink, _: OffsetDateTime) -> Result<usize, StoreError> {
            Ok(sink.deliver(std::slice::from_ref(&self.0)).await)
        }
        async fn prune_published(&self, _: OffsetDateTime) -> Result<u64, StoreError> {
            Ok(0)
        }
    }

    /// A sink that refuses everything and notes when it was asked.
    #[derive(Default)]
    struct Refusing(Mutex<Vec<tokio::time::Instant>>);

    #[async_trait]
    impl EventSink for Refusing {
        async fn deliver(&self, _: &[DomainEvent]) -> usize {
            self.0.lock().unwrap().push(tokio::time::Instant::now());
            0
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_refusing_sink_is_tried_again_with_a_doubling_pause() {
        let sink = Arc::new(Refusing::default());
        let event = DomainEvent::deleted(UserId::new(), OffsetDateTime::UNIX_EPOCH);
        let clock = Arc::new(ManualClock::starting_now());
        let relay = Arc::new(OutboxRelay::new(Arc::new(OneEvent(event)), sink.clone(), clock, 10));
        let start = tokio::time::Instant::now();
        let task = relay.spawn(Duration::from_millis(100));
        tokio::time::sleep(Duration::from_millis(3_200)).await;
        task.abort();
        let tries: Vec<u128> = sink.0.lock().unwrap().iter().map(|t| (*t - start).as_millis()).collect();
        assert_eq!(tries, [0, 100, 300, 700, 1_500, 3_100]);
    }
}
