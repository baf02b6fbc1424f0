//! Join and leave webhooks per app (`APP_WEBHOOKS`, `webhook` in the apps
//! file): the async shell around [`crate::webhook_events`].
//!
//! Every node polls every node's users of each app with a webhook
//! ([`POLL`]), turns the changes into events, and, if it is the leader (the
//! live node with the smallest MESH_ID), posts them. A node declares itself
//! live only once its view is whole and settled (every live node answered,
//! the same nodes for [`SETTLED_ROUNDS`] rounds with zenoh neighbours, or
//! for [`WARM_UP`] without), so that a node joining or restarting does not
//! post what it merely had not seen yet. Posts are batched (up to
//! [`BATCH`] events per request), signed (`X-Prscd-Signature`, HMAC-SHA256
//! with the app's first API key, by `ring`), retried with backoff
//! ([`RETRIES`]), from a bounded queue ([`QUEUE`] events per app; beyond it
//! new events are dropped and counted `webhook_queue_full`; a batch that
//! fails every retry is counted `webhook_failed`). README "Webhooks" says
//! what "exactly once" covers and what it does not.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::apps::Apps;
use crate::clock::unix_ms;
use crate::hub::Hub;
use crate::mesh::admin::MeshAdmin;
use crate::occupancy::NodePresence;
use crate::stats::{DropReason, Stats};
use crate::webhook_events::{self, Body, Event, View};

/// How often every node polls the mesh-wide view of each app.
pub const POLL: Duration = Duration::from_millis(250);
/// Most events in one request.
pub const BATCH: usize = 100;
/// Events waiting per app before new ones are dropped.
pub const QUEUE: usize = 10_000;
/// Delays between the attempts of one batch: 6 attempts over ~8 s.
pub const RETRIES: [Duration; 5] = [
    Duration::from_millis(250),
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(4),
];
/// How long a node with no zenoh neighbour waits before it takes itself
/// for the whole mesh (a node meant to run alone, or cut off at start).
pub const WARM_UP: Duration = Duration::from_secs(5);
/// Rounds with the same answering nodes before a node with neighbours
/// takes its view for whole (zenoh's declarations settle in milliseconds).
pub const SETTLED_ROUNDS: u32 = 4;
/// Longest one attempt may take (connect, send, status line).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WebhookError {
    #[error("webhook URL {0:?} is not http://HOST[:PORT][/PATH] or https://...")]
    Url(String),
    #[error("cannot reach the receiver: {0}")]
    Io(String),
    #[error("the receiver answered {0}")]
    Status(u16),
    #[error("the receiver's answer is not HTTP")]
    Answer,
}

/// Where a webhook goes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    pub path: String,
}

impl Target {
    /// `http://` (a receiver on a private network or loopback) or `https://`.
    pub fn parse(url: &str) -> Result<Target, WebhookError> {
        let bad = || WebhookError::Url(url.to_owned());
        let (tls, rest) = if let Some(rest) = url.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("http://") {
            (false, rest)
        } else {
            return Err(bad());
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => {
                (h, p.parse().map_err(|_| bad())?)
            }
            _ => (authority, if tls { 443 } else { 80 }),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || authority.contains('@') || path.contains(char::is_whitespace) {
            return Err(bad());
        }
        Ok(Target {
            tls,
            host: host.to_owned(),
            port,
            path: path.to_owned(),
        })
    }
}

/// One app's queue and its sender task.
struct Outlet {
    tx: mpsc::Sender<Event>,
    target: Target,
    key: String,
}

/// Polls, decides and posts for every app with a webhook; runs for the
/// node's life. `apps` gives the apps as reloaded; `alone`: no zenoh
/// endpoint or config is set, so this node's view is whole from the start.
pub async fn run(
    hub: Arc<Hub>,
    mesh: MeshAdmin,
    apps: impl Fn() -> Arc<Apps> + Send + 'static,
    alone: bool,
) {
    let stats = hub.stats().clone();
    let me = hub.mesh_id().to_owned();
    let mut views: HashMap<String, View> = HashMap::new();
    let mut outlets: HashMap<String, Outlet> = HashMap::new();
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut was_leader = None;
    let (started, mut warm) = (tokio::time::Instant::now(), false);
    let (mut answered_before, mut settled) = (BTreeSet::new(), 0u32);
    loop {
        tick.tick().await;
        let apps = apps();
        let hooked: Vec<(String, Target, String)> = apps
            .iter()
            .filter_map(|app| {
                let url = app.webhook.as_deref()?;
                let key = app.api_keys.first()?.clone();
                Some((app.id.to_string(), Target::parse(url).ok()?, key))
            })
            .collect();
        views.retain(|app, _| hooked.iter().any(|(a, _, _)| a == app));
        outlets.retain(|app, _| hooked.iter().any(|(a, _, _)| a == app));
        let mut live = mesh.live_nodes();
        let leader = warm && webhook_events::leader(&me, live.iter().map(String::as_str)) == me;
        if warm && was_leader != Some(leader) {
            info!(mesh_id = %me, leader, "webhooks: {}", if leader { "this node posts" } else { "another node posts" });
            was_leader = Some(leader);
        }
        let mut whole = true;
        let mut answered = BTreeSet::new();
        let others = live.clone();
        live.insert(me.clone());
        for (app, target, key) in hooked {
            let mut answers = match mesh.presence(&app).await {
                Ok(answers) => answers,
                Err(e) => {
                    debug!(%app, error = %e, "webhooks: presence query failed; next round");
                    whole = false;
                    continue;
                }
            };
            whole &= others
                .iter()
                .all(|node| answers.iter().any(|a| &a.mesh_id == node));
            answered.extend(answers.iter().map(|a| a.mesh_id.clone()));
            answers.push(NodePresence::from_hosted(&me, hub.hosted(&app)));
            let events = views
                .entry(app.clone())
                .or_insert_with(|| View::new(&app))
                .update(answers, &live);
            if !leader || events.is_empty() {
                continue;
            }
            let outlet = outlets
                .entry(app.clone())
                .or_insert_with(|| outlet(&app, target.clone(), key.clone(), stats.clone()));
            if outlet.target != target || outlet.key != key {
                *outlet = self::outlet(&app, target, key, stats.clone());
            }
            for event in events {
                debug!(%app, channel = %event.channel, name = event.name, user = ?event.user_id, "webhooks: event");
                if outlet.tx.try_send(event).is_err() {
                    stats.count_drop(DropReason::WebhookQueueFull);
                }
            }
        }
        let neighbours = stats.mesh.peers.load(std::sync::atomic::Ordering::Relaxed)
            + stats
                .mesh
                .routers
                .load(std::sync::atomic::Ordering::Relaxed);
        settled = if whole && neighbours > 0 && answered == answered_before {
            settled + 1
        } else {
            0
        };
        answered_before = answered;
        let settled_enough = settled >= SETTLED_ROUNDS || started.elapsed() >= WARM_UP;
        if !warm && whole && (alone || settled_enough) {
            match mesh.declare_live().await {
                Ok(()) => {
                    warm = true;
                    debug!(mesh_id = %me, "webhooks: view complete, live");
                }
                Err(e) => warn!(error = %e, "webhooks: cannot declare this node live"),
            }
        }
    }
}

fn outlet(app: &str, target: Target, key: String, stats: Arc<Stats>) -> Outlet {
    let (tx, rx) = mpsc::channel(QUEUE);
    tokio::spawn(deliver(
        app.to_owned(),
        target.clone(),
        key.clone(),
        rx,
        stats,
    ));
    Outlet { tx, target, key }
}

/// Sends an app's events in batches, in order, each batch until it is
/// taken or its retries are spent.
async fn deliver(
    app: String,
    target: Target,
    key: String,
    mut rx: mpsc::Receiver<Event>,
    stats: Arc<Stats>,
) {
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        let body = serde_json::to_vec(&Body {
            time_ms: unix_ms(),
            events: &batch,
        })
        .expect("plain data");
        let signature = webhook_events::signature(&key, &body);
        let mut attempt = 0;
        loop {
            let sent =
                tokio::time::timeout(ATTEMPT_TIMEOUT, post(&target, &body, &signature)).await;
            let error = match sent {
                Ok(Ok(())) => {
                    debug!(%app, events = batch.len(), "webhooks: delivered");
                    break;
                }
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("no answer within {ATTEMPT_TIMEOUT:?}"),
            };
            let Some(delay) = RETRIES.get(attempt) else {
                warn!(%app, events = batch.len(), %error, "webhooks: batch dropped after every retry");
                for _ in &batch {
                    stats.count_drop(DropReason::WebhookFailed);
                }
                break;
            };
            debug!(%app, %error, attempt, "webhooks: retrying");
            attempt += 1;
            tokio::time::sleep(*delay).await;
        }
        batch.clear();
    }
}

/// One POST; `Ok` for a 2xx answer.
async fn post(target: &Target, body: &[u8], signature: &str) -> Result<(), WebhookError> {
    let io = |e: std::io::Error| WebhookError::Io(e.to_string());
    let tcp = tokio::net::TcpStream::connect((target.host.as_str(), target.port))
        .await
        .map_err(io)?;
    if !target.tls {
        return exchange(tcp, target, body, signature).await;
    }
    let name = rustls::pki_types::ServerName::try_from(target.host.clone())
        .map_err(|e| WebhookError::Io(e.to_string()))?;
    let tls = tokio_rustls::TlsConnector::from(client_config()?)
        .connect(name, tcp)
        .await
        .map_err(io)?;
    exchange(tls, target, body, signature).await
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    target: &Target,
    body: &[u8],
    signature: &str,
) -> Result<(), WebhookError> {
    let io = |e: std::io::Error| WebhookError::Io(e.to_string());
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: prscd/{}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nX-Prscd-Signature: {signature}\r\nConnection: close\r\n\r\n",
        target.path,
        target.host,
        crate::transport::VERSION,
        body.len()
    );
    stream.write_all(head.as_bytes()).await.map_err(io)?;
    stream.write_all(body).await.map_err(io)?;
    stream.flush().await.map_err(io)?;
    let mut line = String::new();
    BufReader::new(&mut stream)
        .read_line(&mut line)
        .await
        .map_err(io)?;
    let status: u16 = line
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|s| s.parse().ok())
        .ok_or(WebhookError::Answer)?;
    let _ = stream.shutdown().await;
    if (200..300).contains(&status) {
        Ok(())
    } else {
        Err(WebhookError::Status(status))
    }
}

/// TLS to receivers: the system's roots (`SSL_CERT_FILE`, else Debian's
/// bundle), read once.
fn client_config() -> Result<Arc<rustls::ClientConfig>, WebhookError> {
    static CONFIG: std::sync::OnceLock<Result<Arc<rustls::ClientConfig>, String>> =
        std::sync::OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let path = std::env::var("SSL_CERT_FILE")
                .unwrap_or_else(|_| "/etc/ssl/certs/ca-certificates.crt".into());
            let pem = std::fs::read(&path).map_err(|e| format!("{path}: {e}"))?;
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(&pem).flatten() {
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err(format!("{path}: no certificate"));
            }
            let config = rustls::ClientConfig::builder()
                .with_root_certificates(roots)
                .with_no_client_auth();
            Ok(Arc::new(config))
        })
        .clone()
        .map_err(WebhookError::Io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_urls() {
        let t = Target::parse("https://hooks.example.com/prscd?x=1").unwrap();
        assert_eq!(
            (t.tls, t.host.as_str(), t.port, t.path.as_str()),
            (true, "hooks.example.com", 443, "/prscd?x=1")
        );
        let t = Target::parse("http://127.0.0.1:8080").unwrap();
        assert_eq!(
            (t.tls, t.host.as_str(), t.port, t.path.as_str()),
            (false, "127.0.0.1", 8080, "/")
        );
        let t = Target::parse("http://[::1]:9/h").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 9));
        for bad in [
            "ftp://x",
            "http://",
            "https://:80/",
            "http://u:p@h/",
            "http://h:x/",
            "h/x",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }
}
