//! Events and revocations leaving the auth-service.
//!
//! Layout:
//! - [`revocation`]: the in-memory [`RevocationSet`] a gateway checks on every
//!   request, the [`RevocationFeed`] that keeps it current, and the in-process
//!   feed `gatehouse up` uses.

pub mod revocation;

pub use revocation::{InProcessFeed, RevocationFeed, RevocationSet};
