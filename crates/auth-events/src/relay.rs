//! The outbox relay: moves committed events from the `outbox` table to the
//! event sink, marking each published only after the sink accepted it. When
//! the sink is down, events wait in the table; nothing is lost.

use std::sync::Arc;
use std::time::Duration;

use auth_core::{Clock, EventSink, Outbox, StoreError};
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
        self.outbox.relay_batch(self.batch, self.sink.as_ref(), self.clock.now()).await
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
    /// prunes old published events once an hour.
    pub fn spawn(self: &Arc<Self>, interval: Duration) -> tokio::task::JoinHandle<()> {
        let relay = Arc::clone(self);
        tokio::spawn(async move {
            let mut pruned = tokio::time::Instant::now();
            loop {
                if pruned.elapsed() >= Duration::from_secs(3600) {
                    pruned = tokio::time::Instant::now();
                    if let Err(error) = relay.prune().await {
                        tracing::warn!(%error, "pruning published events failed");
                    }
                }
                match relay.try_relay_batch().await {
                    Ok(n) if n >= relay.batch as usize => continue,
                    Ok(_) => {}
                    Err(error) => tracing::warn!(%error, "outbox relay failed; retrying"),
                }
                tokio::select! {
                    _ = tokio::time::sleep(interval) => {}
                    _ = relay.wake.notified() => {}
                }
            }
        })
    }
}
