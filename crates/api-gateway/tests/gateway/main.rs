//! The gateway on 127.0.0.1:0 in front of mock upstreams on 127.0.0.1:0.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod helpers;

mod auth;
mod client_faults;
mod differential;
mod forwarding;
mod handover;
mod identity;
mod limits;
mod messages;
mod own_path;
mod paths;
mod reuse;
mod routing;
