//! The `prscd` binary: read the settings, start logging, run the node.

use std::process::ExitCode;

use clap::Parser as _;
use prscd::config::{self, Config, Settings};
use prscd::{server, telemetry};

fn main() -> ExitCode {
    // One crypto provider for TLS and QUIC alike, before anything uses rustls.
    let _ = rustls::crypto::ring::default_provider().install_default();

    // The environment is changed here, before the runtime starts threads.
    let dotenv = dotenvy::dotenv();
    config::unset_blank_variables();
    // `--help` and `--version` end here; a bad value too, with exit status 2
    // and one line naming the setting, like every refusal to start.
    let settings = match Settings::try_parse() {
        Ok(settings) => settings,
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            let text = e.to_string();
            let line = text.lines().next().unwrap_or_default();
            eprintln!(
                "prscd: configuration: {}",
                line.trim_start_matches("error: ")
            );
            return ExitCode::from(2);
        }
    };
    let config = match Config::from_settings(settings) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("prscd: configuration: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("prscd: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(config, dotenv))
}

async fn run(config: Config, dotenv: dotenvy::Result<std::path::PathBuf>) -> ExitCode {
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
