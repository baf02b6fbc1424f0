//! prscd: the Presencejs v2 backend, as a library so that the binary, the
//! integration tests and the benchmark tool share one implementation.
//!
//! - [`protocol`], [`percent`]: the Signalling message and `%XX` names, from
//!   `prscd-wire` (the crate the tools and fuzz targets share).
//! - [`hub`]: apps, channels, peers; the one path every message takes.
//! - [`outbox`]: the bounded queue from the hub to one peer's writer.
//! - [`presence`]: who is in a channel per user, across tabs and nodes; pure.
//! - [`transport`]: WebSocket (TLS/TCP) and WebTransport (QUIC/UDP).
//! - [`mesh`]: the zenoh bridge that makes several nodes one service.
//! - [`api`], [`occupancy`]: the presence API for backends, and the mesh-wide view it answers from.
//! - [`webhooks`], [`webhook_events`]: join/leave webhooks, posted once by the mesh's leader.
//! - [`console`]: the operator's live page on the admin port.
//! - [`apps`], [`auth`], [`quota`], [`budget`]: who may connect, as whom, and how much.
//! - [`config`], [`tls`], [`stats`], [`telemetry`]: the node's set-up.
//! - [`server`]: start, signals, drain.
//! - [`admin`], [`profile`]: the admin token, and live CPU profiles on the admin port.

pub mod admin;
pub mod api;
pub mod apps;
pub mod auth;
pub mod budget;
pub mod clock;
pub mod config;
pub mod console;
pub mod hub;
pub mod mesh;
pub mod occupancy;
pub mod outbox;
pub mod presence;
pub mod profile;
pub mod quota;
pub mod server;
pub mod stats;
pub mod telemetry;
pub mod tls;
pub mod transport;
pub mod webhook_events;
pub mod webhooks;

pub use prscd_wire::{percent, protocol};
