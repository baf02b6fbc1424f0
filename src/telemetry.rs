//! Logging (and, later, trace export) set-up.
//!
//! Logs go to stderr through `tracing`; `RUST_LOG` wins when set, else
//! `DEBUG=true` turns on debug logs for prscd itself. Third-party QUIC and
//! TLS crates stay at `warn` so a debug log is about our own decisions.

use std::io::IsTerminal as _;

use tracing_subscriber::EnvFilter;

pub fn init_logging(debug: bool) {
    let default = if debug {
        "info,prscd=debug,quinn=warn,wtransport=warn,rustls=warn,zenoh=warn"
    } else {
        "info,quinn=warn,wtransport=warn,rustls=warn,zenoh=warn"
    };
    let filter = match std::env::var("RUST_LOG") {
        Ok(filter) if !filter.trim().is_empty() => EnvFilter::new(filter),
        _ => EnvFilter::new(default),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}
