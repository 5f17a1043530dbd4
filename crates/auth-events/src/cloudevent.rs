//! CloudEvents 1.0 in JSON, the payload of every event Gatehouse publishes.

use auth_core::DomainEvent;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The `source` of events published by the auth-service.
pub const SOURCE: &str = "gatehouse/auth-service";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CloudEvent {
    pub specversion: String,
    /// The outbox id; also the `Nats-Msg-Id`, so a re-published event is dropped as a duplicate.
    pub id: String,
    pub source: String,
    /// The subject, e.g. `user.registered`.
    #[serde(rename = "type")]
    pub kind: String,
    /// RFC 3339.
    pub time: String,
    /// The user id.
    pub subject: String,
    pub datacontenttype: String,
    pub data: Value,
}

impl CloudEvent {
    pub fn from_domain(event: &DomainEvent, source: &str) -> Self {
        Self {
            specversion: "1.0".into(),
            id: event.id.to_string(),
            source: source.into(),
            kind: event.kind.subject().into(),
            time: event
                .occurred_at
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_else(|_| event.occurred_at.unix_timestamp().to_string()),
            subject: event.user_id.to_string(),
            datacontenttype: "application/json".into(),
            data: event.data.clone(),
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        // Serialising plain strings and a JSON value cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}
