//! The node's life: bind, serve both transports, answer signals, drain.
//!
//! Drain (`SIGTERM`/`SIGINT`): `/health` turns 503 and new connections are
//! refused at once; after `DRAIN_GRACE_MS` (skipped when nobody is
//! connected) every channel's members get `peer_offline` for the peers that
//! go away, every connection is closed with 1001, and the process exits
//! when they are done or after `DRAIN_TIMEOUT_MS`, whichever comes first.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::config::{Config, DEV_PUBLIC_KEY};
use crate::hub::Hub;
use crate::mesh::Mesh;
use crate::stats::{Stats, Transport};
use crate::tls::Certificate;
use crate::transport::{self, webtransport, ws, Context};

pub async fn run(config: Config) -> anyhow::Result<()> {
    for warning in &config.warnings {
        warn!("{warning}");
    }
    let cert = match &config.tls_files {
        Some((cert, key)) => Certificate::load(cert, key)?,
        None => Certificate::dev(&config.dev_cert_dir)?,
    };
    let (tcp, udp) = transport::bind(config.host, config.port)
        .with_context(|| format!("cannot bind {}:{} on TCP and UDP", config.host, config.port))?;
    let port = tcp.local_addr()?.port();

    let hub = Hub::new(
        &config.mesh_id,
        config.limits.clone(),
        Arc::new(Stats::default()),
    );
    // Outside any span: zenoh's background tasks inherit the current one.
    let mesh = Mesh::start(hub.clone(), &config.mesh).await?;
    let ctx = Arc::new(Context {
        hub: hub.clone(),
        apps: config.apps.clone(),
        max_message_size: config.max_message_size,
        keepalive_interval: config.keepalive_interval,
        idle_timeout: config.idle_timeout,
        tasks: TaskTracker::new(),
    });

    // Created outside any span: quinn attaches the current span to its tasks.
    let wt_config = wtransport::ServerConfig::builder()
        .with_bind_socket(udp)
        .with_identity(cert.wtransport_identity()?)
        .keep_alive_interval(Some(config.keepalive_interval))
        .max_idle_timeout(Some(config.idle_timeout))
        .map_err(|_| anyhow::anyhow!("IDLE_TIMEOUT_MS is out of QUIC's range"))?
        .build();
    let endpoint = Arc::new(
        wtransport::Endpoint::server(wt_config).context("cannot start the QUIC endpoint")?,
    );
    let listener = tokio::net::TcpListener::from_std(tcp)?;
    tokio::spawn(ws::serve(listener, cert.server_config()?, ctx.clone()));
    let wt_accept = tokio::spawn(webtransport::serve(endpoint.clone(), ctx.clone()));

    if let Some(port) = config.metrics_port {
        let listener = tokio::net::TcpListener::bind((config.host, port))
            .await
            .with_context(|| format!("cannot bind METRICS_PORT {port}"))?;
        info!("metrics: http://{}/metrics", listener.local_addr()?);
        tokio::spawn(transport::http::serve_plain(listener, hub.clone()));
    }
    std::fs::write(&config.pid_file, format!("{}\n", std::process::id()))
        .with_context(|| format!("cannot write {}", config.pid_file.display()))?;
    announce(&config, &cert, port);

    wait_for_shutdown(&hub).await?;
    drain(&config, &ctx).await;
    // The accept loop must be gone before the endpoint closes (wtransport
    // panics in a pending accept on a closed endpoint).
    wt_accept.abort();
    let _ = wt_accept.await;
    webtransport::shut_down(&endpoint, Duration::from_secs(1)).await;
    mesh.close(Duration::from_secs(1)).await;
    let _ = std::fs::remove_file(&config.pid_file);
    Ok(())
}

fn announce(config: &Config, cert: &Certificate, port: u16) {
    if config.dev_app {
        warn!("DEV MODE: no APPS or APPS_FILE, so the dev app accepts public key `{DEV_PUBLIC_KEY}`; never expose this node");
    }
    if cert.dev {
        let fp = cert.fingerprints();
        warn!(
            "dev certificate {} (self-signed, valid until {})",
            cert.source.display(),
            cert.not_after
        );
        info!(
            "dev certificate sha256={} spki={}",
            fp.cert_sha256_hex(),
            fp.spki_sha256_base64
        );
        info!(
            "  WebTransport: serverCertificateHashes: [{{ algorithm: \"sha-256\", value: new Uint8Array([{}]) }}]",
            fp.cert_sha256_js_bytes()
        );
        info!(
            "  Chromium: --ignore-certificate-errors-spki-list={} --origin-to-force-quic-on=127.0.0.1:{port}",
            fp.spki_sha256_base64
        );
    }
    info!(
        "ready: port={port} host={} mesh_id={} apps={} (WebSocket wss://HOST:{port}/v1, WebTransport https://HOST:{port}/v1, GET /health)",
        config.host,
        config.mesh_id,
        config.apps.len()
    );
}

/// Serves signals until SIGTERM or SIGINT.
async fn wait_for_shutdown(hub: &Arc<Hub>) -> anyhow::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut usr1 = signal(SignalKind::user_defined1())?;
    let mut usr2 = signal(SignalKind::user_defined2())?;
    loop {
        tokio::select! {
            _ = term.recv() => { info!("SIGTERM: draining"); return Ok(()); }
            _ = int.recv() => { info!("SIGINT: draining"); return Ok(()); }
            _ = usr1.recv() => {
                for line in hub.dump() {
                    info!("{line}");
                }
            }
            _ = usr2.recv() => report_connections(hub),
        }
    }
}

/// SIGUSR2: one JSON line per app, then the per-transport totals.
fn report_connections(hub: &Hub) {
    let timestamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    for (app, conns) in hub.connections_per_app() {
        let line = serde_json::json!({
            "timestamp": timestamp, "conns": conns, "app_id": app, "mesh_id": hub.mesh_id(),
        });
        info!("conns: {line}");
    }
    let stats = hub.stats();
    info!(
        "conns: total websocket={} webtransport={}",
        stats.open_connections(Transport::WebSocket),
        stats.open_connections(Transport::WebTransport)
    );
}

async fn drain(config: &Config, ctx: &Context) {
    let hub = &ctx.hub;
    hub.begin_drain();
    if hub.peer_count() > 0 && !config.drain_grace.is_zero() {
        info!(
            grace_ms = config.drain_grace.as_millis() as u64,
            "refusing new connections; health is 503"
        );
        tokio::time::sleep(config.drain_grace).await;
    }
    let closing = hub.close_all();
    info!(
        peers = closing,
        "announced peer_offline and closing every connection"
    );
    ctx.tasks.close();
    if tokio::time::timeout(config.drain_timeout, ctx.tasks.wait())
        .await
        .is_err()
    {
        warn!(
            left = hub.peer_count(),
            "drain timeout: exiting with connections still open"
        );
    }
    info!("drained; bye");
}
