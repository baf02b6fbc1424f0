//! The node's life: bind, serve both transports, answer signals, drain.
//!
//! Drain (`SIGTERM`/`SIGINT`): `/health` turns 503 and new connections are
//! refused at once; after `DRAIN_GRACE_MS` (skipped when nobody is
//! connected) every channel's members get `peer_offline` for the peers that
//! go away, every connection is closed with 1001, and the process exits
//! when they are done or after `DRAIN_TIMEOUT_MS`, whichever comes first.
//!
//! Reload (`SIGHUP`): the apps and the certificate are read again from
//! where they came from. New handshakes use them; open connections keep
//! theirs. A reload that fails keeps everything as it was and logs why.
//!
//! Restart beside a running node (`REUSE_PORT`): the ports are shared
//! ([`crate::transport::reuseport`]), the client port listens only once
//! nothing else can fail, and the PID file is removed on exit only while it
//! still names this process.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use tokio::signal::unix::{signal, SignalKind};
use tracing::{info, warn};

use crate::apps::DEV_PUBLIC_KEY;
use crate::config::Config;
use crate::hub::Hub;
use crate::mesh::{AppLimitsOf, Mesh};
use crate::stats::{Stats, Transport};
use crate::tls::{CertStore, Certificate, EXPIRY_WARNING};
use crate::transport::{self, webtransport, ws, Context, Settings};

pub async fn run(config: Config) -> anyhow::Result<()> {
    for warning in &config.warnings {
        warn!("{warning}");
    }
    let cert = load_certificate(&config)?;
    let store = CertStore::new(&cert)?;
    let (tcp, udp) = transport::bind(config.host, config.port, config.reuse_port)
        .with_context(|| format!("cannot bind {}:{} on TCP and UDP", config.host, config.port))?;
    let port = tcp
        .local_addr()?
        .as_socket()
        .map_or(config.port, |a| a.port());

    let hub = Hub::new(
        &config.mesh_id,
        config.limits.clone(),
        Arc::new(Stats::default()),
    );
    hub.set_presence_grace(config.presence_grace);
    tokio::spawn(hub.clone().run_leaves());
    // Outside any span: zenoh's background tasks inherit the current one.
    hub.stats()
        .set_certificate_expiry(cert.not_after.unix_timestamp());
    let ctx = Arc::new(Context::new(
        hub.clone(),
        Settings {
            apps: config.apps.clone(),
            max_id_len: config.max_id_len,
            metrics_token: config.metrics_token.clone(),
            max_message_size: config.max_message_size,
            keepalive_interval: config.keepalive_interval,
            idle_timeout: config.idle_timeout,
            admin_token: config.admin_token.clone(),
        },
    ));
    // The mesh holds other nodes' members within the caps the transports
    // admit with, as reloaded.
    let caps = ctx.clone();
    let limits: AppLimitsOf = Arc::new(move |app| caps.apps().get(app).map(|a| a.limits.clone()));
    let mesh = Mesh::start(hub.clone(), &config.mesh, limits).await?;
    ctx.api.attach_mesh(mesh.admin());
    ctx.console.attach_mesh(mesh.admin());
    let apps = ctx.clone();
    let m = &config.mesh;
    let alone = m.config_file.is_none() && m.listen.is_empty() && m.connect.is_empty();
    let admin = mesh.admin();
    tokio::spawn(crate::webhooks::run(
        hub.clone(),
        admin,
        move || apps.apps(),
        alone,
    ));

    // Created outside any span: quinn attaches the current span to its tasks.
    let wt_config = webtransport::server_config(
        wtransport::ServerConfig::builder().with_bind_socket(udp),
        cert.wtransport_identity()?,
        &config,
    )?;
    let endpoint = Arc::new(
        wtransport::Endpoint::server(wt_config).context("cannot start the QUIC endpoint")?,
    );
    let tls = store.serve_from(&*cert.server_config()?);
    if let Some(port) = config.metrics_port {
        let addr = std::net::SocketAddr::new(config.host, port);
        let listener = transport::listen_on(addr, config.reuse_port)
            .and_then(tokio::net::TcpListener::from_std)
            .with_context(|| format!("cannot bind METRICS_PORT {port}"))?;
        info!("metrics: http://{}/metrics", listener.local_addr()?);
        tokio::spawn(transport::http::serve_plain(listener, ctx.clone()));
    }
    // With REUSE_PORT the node it replaces is still running: this file
    // names the newest node from now on.
    std::fs::write(&config.pid_file, format!("{}\n", std::process::id()))
        .with_context(|| format!("cannot write {}", config.pid_file.display()))?;
    // Listening last, when nothing can fail any more: with REUSE_PORT, new
    // connections come here from the moment this node listens
    // (transport::reuseport), and would be reset if it then gave up.
    let listener = tokio::net::TcpListener::from_std(transport::listen(tcp, config.reuse_port)?)?;
    tokio::spawn(ws::serve(listener, tls, ctx.clone()));
    let wt_accept = tokio::spawn(webtransport::serve(endpoint.clone(), ctx.clone()));

    announce(&config, &cert, port);
    warn_if_expiring(&cert);
    let reload = Reload {
        config: &config,
        ctx: &ctx,
        store: &store,
        endpoint: &endpoint,
        port,
    };
    if !cert.dev {
        tokio::spawn(watch_expiry(hub.clone()));
    }

    wait_for_shutdown(&hub, &reload).await?;
    drain(&config, &ctx).await;
    // The accept loop must be gone before the endpoint closes (wtransport
    // panics in a pending accept on a closed endpoint).
    wt_accept.abort();
    let _ = wt_accept.await;
    webtransport::shut_down(&endpoint, Duration::from_secs(1)).await;
    mesh.close(Duration::from_secs(1)).await;
    remove_pid_file(&config.pid_file);
    Ok(())
}

/// Removes the PID file if it still names this process: a node started
/// beside this one (`REUSE_PORT`) has written its own.
fn remove_pid_file(path: &std::path::Path) {
    let ours =
        std::fs::read_to_string(path).is_ok_and(|pid| pid.trim() == std::process::id().to_string());
    if ours {
        let _ = std::fs::remove_file(path);
    }
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
    if config.reuse_port {
        info!("REUSE_PORT: sharing port {port} with any node already on it; new connections come here, WebTransport once the older node is gone");
    }
    info!(
        "ready: port={port} host={} mesh_id={} apps={} (WebSocket wss://HOST:{port}/v1, WebTransport https://HOST:{port}/v1, GET /health)",
        config.host,
        config.mesh_id,
        config.apps.len()
    );
}

fn load_certificate(config: &Config) -> Result<Certificate, crate::tls::TlsError> {
    match &config.tls_files {
        Some((cert, key)) => Certificate::load(cert, key),
        None => Certificate::dev(&config.dev_cert_dir),
    }
}

/// The dev certificate always has under 14 days (WebTransport's pinning
/// limit) and renews itself, so only a real one is warned about.
fn warn_if_expiring(cert: &Certificate) {
    let left = cert.seconds_left();
    if !cert.dev && left < EXPIRY_WARNING.whole_seconds() {
        warn!(
            days_left = left / 86_400,
            not_after = %cert.not_after,
            path = %cert.source.display(),
            "the TLS certificate expires soon: renew it and send SIGHUP"
        );
    }
}

/// Warns daily while the served certificate is within the warning window.
async fn watch_expiry(hub: Arc<Hub>) {
    let mut tick = tokio::time::interval(Duration::from_secs(86_400));
    tick.tick().await;
    loop {
        tick.tick().await;
        let left = hub.stats().certificate_seconds_left();
        if let Some(left) = left.filter(|s| *s < EXPIRY_WARNING.whole_seconds()) {
            warn!(
                days_left = left / 86_400,
                "the TLS certificate expires soon: renew it and send SIGHUP"
            );
        }
    }
}

/// What SIGHUP reloads, and where into.
struct Reload<'a> {
    config: &'a Config,
    ctx: &'a Context,
    store: &'a CertStore,
    endpoint: &'a wtransport::Endpoint<wtransport::endpoint::endpoint_side::Server>,
    port: u16,
}

impl Reload<'_> {
    /// Everything or nothing: a failure leaves the running settings alone.
    fn run(&self) -> anyhow::Result<()> {
        let apps = match self.config.app_sources.load()? {
            Some(apps) => apps,
            None if self.config.dev_app => self.config.apps.clone(),
            None => anyhow::bail!("the reloaded sources name no app"),
        };
        let cert = load_certificate(self.config)?;
        let wt_config = webtransport::server_config(
            wtransport::ServerConfig::builder().with_bind_default(self.port),
            cert.wtransport_identity()?,
            self.config,
        )?;
        self.store.replace(&cert)?;
        self.endpoint
            .reload_config(wt_config, false)
            .context("QUIC endpoint")?;
        let apps_count = apps.len();
        self.ctx.set_apps(apps);
        self.ctx
            .hub
            .stats()
            .set_certificate_expiry(cert.not_after.unix_timestamp());
        info!(apps = apps_count, not_after = %cert.not_after, "SIGHUP: reloaded apps and certificate");
        warn_if_expiring(&cert);
        Ok(())
    }
}

/// Serves signals until SIGTERM or SIGINT.
async fn wait_for_shutdown(hub: &Arc<Hub>, reload: &Reload<'_>) -> anyhow::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
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
            _ = hup.recv() => {
                if let Err(e) = reload.run() {
                    warn!("SIGHUP: reload failed, keeping the running settings: {e:#}");
                }
            }
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
