//! The deletion ledger's intake: `user.deletion_completed` from downstream
//! services, over NATS (a durable consumer) or the in-process bus.

use std::sync::Arc;

use async_trait::async_trait;
use auth_core::{Clock, DeletionLedger, UserId};
use auth_events::{CloudEvent, EventHandler};

/// The durable consumer's name on NATS.
pub const CONSUMER: &str = "gatehouse-deletion-ledger";

pub struct LedgerHandler {
    pub ledger: Arc<dyn DeletionLedger>,
    pub clock: Arc<dyn Clock>,
}

#[async_trait]
impl EventHandler for LedgerHandler {
    async fn handle(&self, event: &CloudEvent) -> Result<(), String> {
        if event.kind != "user.deletion_completed" {
            return Ok(());
        }
        let user: UserId =
            event.subject.parse().map_err(|_| format!("subject {:?} is not a user id", event.subject))?;
        let service = event.data["service"].as_str().filter(|s| !s.is_empty()).ok_or("no service named")?;
        self.ledger.confirm_deletion(user, service, self.clock.now()).await.map_err(|e| e.to_string())?;
        tracing::info!(user_id = %user, service, "deletion confirmed");
        Ok(())
    }
}
