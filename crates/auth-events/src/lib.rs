//! Events and revocations leaving the auth-service.
//!
//! Layout:
//! - [`cloudevent`]: the CloudEvents 1.0 envelope of every published event.
//! - [`consumer`]: the helper downstream services consume with: durable,
//!   explicit acks, bounded redelivery with backoff, dead letters.
//! - [`publish`]: the sinks: [`NatsPublisher`] (JetStream, `Nats-Msg-Id` dedup)
//!   and [`InProcessBus`] (`gatehouse up`).
//! - [`relay`]: [`OutboxRelay`], from the `outbox` table to a sink.
//! - [`nats_revocation`]: revocations across processes in the JetStream KV
//!   bucket `gatehouse_revocations`: the auth-service's sink and the gateways' feed.
//! - [`revocation`]: the in-memory [`RevocationSet`] a gateway checks on every
//!   request, the [`RevocationFeed`] that keeps it current, and the in-process
//!   feed `gatehouse up` uses.

pub mod cloudevent;
pub mod consumer;
pub mod handover;
pub mod nats_feed;
pub mod nats_revocation;
pub mod publish;
pub mod relay;
pub mod revocation;

pub use cloudevent::CloudEvent;
pub use consumer::{Consumer, ConsumerSettings, EventHandler};
pub use nats_feed::NatsRevocationFeed;
pub use nats_revocation::NatsRevocationSink;
pub use publish::{InProcessBus, NatsPublisher};
pub use relay::OutboxRelay;
pub use revocation::{FanOut, InProcessFeed, Revocation, RevocationFeed, RevocationSet, RevocationsFromEvents};
