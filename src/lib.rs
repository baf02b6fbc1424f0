//! prscd: the Presencejs v2 backend. A library so that the binary is only
//! its wiring (main.rs); its one public API is what main.rs starts.
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

// The binary (main.rs) needs these three; everything else is the node's own.
pub(crate) mod admin;
pub(crate) mod api;
pub(crate) mod apps;
pub(crate) mod auth;
pub(crate) mod budget;
pub(crate) mod clock;
pub mod config;
pub(crate) mod console;
pub(crate) mod hub;
pub(crate) mod mesh;
pub(crate) mod occupancy;
pub(crate) mod outbox;
pub(crate) mod presence;
pub(crate) mod profile;
pub(crate) mod quota;
pub mod server;
pub(crate) mod stats;
pub mod telemetry;
pub(crate) mod tls;
pub(crate) mod transport;
pub(crate) mod webhook_events;
pub(crate) mod webhooks;

pub(crate) use prscd_wire::{percent, protocol};

/// Node internals for the fuzz targets (`fuzz/`), and for the integration
/// tests and examples that drive a parser or the TLS layer directly (the
/// package's dev-dependency on itself turns the feature on for them). Not an
/// API: only with the `fuzzing` feature, never in the node's build.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing {
    pub mod api {
        pub use crate::api::{data_message, route};
    }
    pub mod apps {
        pub use crate::apps::{AppSources, Apps};
    }
    pub mod auth {
        pub use crate::auth::verify;
    }
    pub mod occupancy {
        pub use crate::occupancy::{merge, occupancy, state_json, NodePresence};
    }
    pub mod tls {
        pub use crate::tls::{generate_dev_pem, Certificate};
    }
    pub mod transport {
        pub use crate::transport::{admit, HANDSHAKE_TIMEOUT};
        pub mod http {
            pub use crate::transport::http::{parse_head, MAX_HEAD};
        }
        pub mod tls_stream {
            pub use crate::transport::tls_stream::{accept, TlsStream};
        }
    }
}
