//! The `prscd` binary: read the configuration, start logging, run the node.

use std::process::ExitCode;

use prscd::{config::Config, server, telemetry};

#[tokio::main]
async fn main() -> ExitCode {
    // One crypto provider for TLS and QUIC alike, before anything uses rustls.
    let _ = rustls::crypto::ring::default_provider().install_default();

    let dotenv = dotenvy::dotenv();
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("prscd: configuration: {e}");
            return ExitCode::from(2);
        }
    };
    telemetry::init_logging(config.debug);
    if let Ok(path) = dotenv {
        tracing::info!(path = %path.display(), "loaded .env");
    }
    match server::run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("prscd: {e:#}");
            ExitCode::FAILURE
        }
    }
}
