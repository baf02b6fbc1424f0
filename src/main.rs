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
    let telemetry = telemetry::init(telemetry::Identity {
        mesh_id: &config.mesh_id,
        debug: config.debug,
    });
    if let Ok(path) = dotenv {
        tracing::info!(path = %path.display(), "loaded .env");
    }
    for note in &telemetry.notes {
        tracing::warn!("{note}");
    }
    let result = server::run(config).await;
    // Flush batched spans before exiting.
    let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("prscd: {e:#}");
            ExitCode::FAILURE
        }
    }
}
