//! The mesh: this node's bridge between its hub and a zenoh session, so
//! that peers on every node of the mesh share channels.
//!
//! Out: the hub's [`MeshEvent`]s, in order. A local join declares the
//! membership's liveliness token (and, for the channel's first local member,
//! the channel's subscriber, plus the app's membership watch if it is the
//! app's first linked channel); a local message is published on the
//! channel's key with the sender's sid in the attachment; a leave drops the
//! token.
//!
//! In: a sample on a joined channel's key is checked, re-encoded without
//! `sid`/`app`, and handed to the hub for the local members (never back to
//! zenoh: no loops). A membership token that disappears (the peer left, or
//! its node died or was cut off and zenoh's lease expired) becomes one
//! `peer_offline` for the local members. A token that comes back after that
//! (a partition healed) becomes `peer_online` plus the peer's last state, so
//! the browsers on this side see it again without it having to rejoin.
//!
//! The hub never waits for zenoh: events cross an unbounded, ordered queue
//! whose publish backlog is capped by the hub. The mesh knows nothing of
//! sockets; transports know nothing of zenoh. Key expressions: [`keys`].

pub mod keys;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};
use zenoh::liveliness::LivelinessToken;
use zenoh::pubsub::Subscriber;
use zenoh::qos::CongestionControl;
use zenoh::sample::{Locality, SampleKind};
use zenoh::Session;

use crate::hub::{Hub, MeshEvent, PeerId};
use crate::protocol::{self, Kind, Op};
use crate::stats::{DropReason, Stats};
use crate::telemetry;
use keys::Member;
use std::future::IntoFuture;
use tracing::Instrument;

/// Mesh settings, from `ZENOH_CONFIG`, `ZENOH_LISTEN` and `ZENOH_CONNECT`.
#[derive(Debug, Clone, Default)]
pub struct MeshSettings {
    pub config_file: Option<PathBuf>,
    pub listen: Vec<String>,
    pub connect: Vec<String>,
    /// Publishes that may wait for zenoh before new ones are dropped.
    pub max_backlog: usize,
    /// How long a new remote member may stay silent before the local members
    /// are asked to announce themselves to it (see `Bridge::on_check`);
    /// `None` turns the check off.
    pub presence_check: Option<Duration>,
}

#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    #[error("zenoh config {path}: {why}")]
    ConfigFile { path: PathBuf, why: String },
    #[error("zenoh config key {key}: {why}")]
    ConfigKey { key: &'static str, why: String },
    #[error("cannot open the zenoh session: {0}")]
    Open(String),
}

/// How long a forgotten membership is remembered, to recognise it if it
/// comes back after a partition heals.
const GONE_MEMORY: Duration = Duration::from_secs(600);

/// Builds the zenoh config: the file if given, else the embedded default
/// (peer mode, multicast scouting off, a 2 s lease, background reconnects),
/// then the endpoint overrides.
pub fn zenoh_config(settings: &MeshSettings) -> Result<zenoh::Config, MeshError> {
    let mut config = match &settings.config_file {
        Some(path) => zenoh::Config::from_file(path).map_err(|e| MeshError::ConfigFile {
            path: path.clone(),
            why: e.to_string(),
        })?,
        None => {
            let mut config = zenoh::Config::default();
            for (key, value) in EMBEDDED_DEFAULTS {
                insert(&mut config, key, value)?;
            }
            config
        }
    };
    let list = |endpoints: &[String]| serde_json::to_string(endpoints).expect("strings");
    if !settings.listen.is_empty() {
        insert(&mut config, "listen/endpoints", &list(&settings.listen))?;
    }
    if !settings.connect.is_empty() {
        insert(&mut config, "connect/endpoints", &list(&settings.connect))?;
    }
    Ok(config)
}

/// The embedded default, also in `mesh/p2p/node.json5`.
const EMBEDDED_DEFAULTS: &[(&str, &str)] = &[
    ("mode", r#""peer""#),
    // Listen only where told (ZENOH_LISTEN): zenoh's own default is a random
    // port on every interface.
    ("listen/endpoints", "[]"),
    ("scouting/multicast/enabled", "false"),
    ("scouting/gossip/enabled", "true"),
    // Lease 2 s, 4 keep-alives per lease: a silent neighbour is dropped
    // within 2 s, which bounds how late a dead node's peers go offline.
    ("transport/link/tx/lease", "2000"),
    ("transport/link/tx/keep_alive", "4"),
    // A handshake that hangs (a partition swallowing packets) is given up
    // after 2 s and retried, so a healed link comes back within seconds.
    ("transport/unicast/open_timeout", "2000"),
    // Never block start-up on the mesh; keep retrying in the background
    // (an infinite global timeout is what makes zenoh retry in the background).
    ("connect/timeout_ms", "-1"),
    ("connect/exit_on_failure", "false"),
    (
        "connect/retry",
        "{ period_init_ms: 250, period_max_ms: 1000, period_increase_factor: 2 }",
    ),
];

fn insert(config: &mut zenoh::Config, key: &'static str, value: &str) -> Result<(), MeshError> {
    config
        .insert_json5(key, value)
        .map_err(|e| MeshError::ConfigKey {
            key,
            why: e.to_string(),
        })
}

/// The running bridge; dropping it leaves the mesh abruptly, [`Mesh::close`]
/// leaves it cleanly (tokens withdrawn at once).
pub struct Mesh {
    session: Session,
    task: tokio::task::JoinHandle<()>,
}

impl Mesh {
    /// Opens the zenoh session and starts bridging. Call outside any span:
    /// zenoh's background tasks inherit the current one.
    pub async fn start(hub: Arc<Hub>, settings: &MeshSettings) -> Result<Mesh, MeshError> {
        let config = zenoh_config(settings)?;
        let session = zenoh::open(config)
            .await
            .map_err(|e| MeshError::Open(e.to_string()))?;
        let stats = hub.stats().clone();
        stats.mesh.open.store(true, Relaxed);
        info!(zid = %session.zid(), mesh_id = hub.mesh_id(), "mesh: zenoh session open");

        let (events, backlog) = hub.attach_mesh(settings.max_backlog.max(1));
        let (inbound_tx, inbound) = mpsc::unbounded_channel();
        let bridge = Bridge {
            session: session.clone(),
            mesh_id: hub.mesh_id().to_owned(),
            hub,
            stats: stats.clone(),
            backlog,
            inbound_tx,
            presence_check: settings.presence_check,
            channels: HashMap::new(),
            apps: HashMap::new(),
            tokens: HashMap::new(),
        };
        let task = tokio::spawn(bridge.run(events, inbound));
        tokio::spawn(watch_neighbours(session.clone(), stats));
        Ok(Mesh { session, task })
    }

    /// Withdraws every token and subscription and closes the session.
    pub async fn close(self, within: Duration) {
        self.task.abort();
        if tokio::time::timeout(within, self.session.close())
            .await
            .is_err()
        {
            warn!("mesh: zenoh session did not close in time");
        }
    }
}

/// Keeps `/health` and the log told whether this node has zenoh neighbours.
async fn watch_neighbours(session: Session, stats: Arc<Stats>) {
    let mut was_connected = None;
    loop {
        let peers = session.info().peers_zid().await.count() as u64;
        let routers = session.info().routers_zid().await.count() as u64;
        stats.mesh.peers.store(peers, Relaxed);
        stats.mesh.routers.store(routers, Relaxed);
        let connected = peers + routers > 0;
        if session.is_closed() {
            return;
        }
        if was_connected != Some(connected) {
            if connected {
                info!(peers, routers, "mesh: connected");
            } else if was_connected.is_some() {
                warn!("mesh: no zenoh neighbour left; serving local peers, reconnecting in the background");
            } else {
                info!("mesh: no zenoh neighbour yet (set ZENOH_CONNECT / ZENOH_LISTEN to mesh)");
            }
            was_connected = Some(connected);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

type ChannelId = (Arc<str>, Arc<str>);

/// What arrives from zenoh's callbacks, for the bridge task.
enum FromZenoh {
    Message {
        channel: ChannelId,
        payload: Vec<u8>,
        origin: Origin,
    },
    /// A membership token of the app appeared (`alive`) or went away.
    Membership { key: String, alive: bool },
    /// A new remote member's grace period is over.
    Check { channel: ChannelId, member: Member },
}

/// A peer of another node in a channel this node has members in.
struct Remote {
    /// Its last `peer_state`, replayed if it comes back after a partition.
    last_state: Option<Bytes>,
    /// Whether any message of it reached this node.
    heard: bool,
}

/// A channel with local members: its subscription and what is known of
/// the other nodes' members.
struct ChannelLink {
    local_members: usize,
    _messages: Subscriber<()>,
    /// (mesh_id, sid) → peer, while its token lives.
    remote: HashMap<(String, u64), Remote>,
    /// Tokens that went away, to recognise a heal.
    gone: HashMap<(String, u64), (Remote, Instant)>,
}

struct Bridge {
    session: Session,
    mesh_id: String,
    hub: Arc<Hub>,
    stats: Arc<Stats>,
    backlog: Arc<AtomicUsize>,
    inbound_tx: mpsc::UnboundedSender<FromZenoh>,
    presence_check: Option<Duration>,
    channels: HashMap<ChannelId, ChannelLink>,
    /// One membership watch per app with linked channels (see [`AppWatch`]).
    apps: HashMap<Arc<str>, AppWatch>,
    tokens: HashMap<(ChannelId, PeerId), LivelinessToken>,
}

/// Watches every membership token of an app with one liveliness subscriber,
/// while at least one of its channels is linked; tokens of channels without
/// local members are ignored. Why not one per channel: in zenoh 1.10 each
/// liveliness subscriber is an interest that every token declaration is
/// matched against, so a join cost grew with the number of channels on the
/// node (`examples/zenoh-tokens.rs`, 5,000 channels: 1.4 ms per join with a
/// watch per channel, 0.56 ms with one per app; BENCHMARKS.md fix 8). The
/// watch's own cost grows with the app's tokens, so with few channels and
/// many members the two layouts cost the same.
struct AppWatch {
    linked_channels: usize,
    _memberships: Subscriber<()>,
}

impl Bridge {
    async fn run(
        mut self,
        mut events: mpsc::UnboundedReceiver<MeshEvent>,
        mut inbound: mpsc::UnboundedReceiver<FromZenoh>,
    ) {
        loop {
            tokio::select! {
                biased;
                event = events.recv() => match event {
                    Some(event) => self.on_local(event).await,
                    None => return,
                },
                Some(msg) = inbound.recv() => self.on_remote(msg),
            }
        }
    }

    async fn on_local(&mut self, event: MeshEvent) {
        match event {
            MeshEvent::Joined {
                app,
                channel,
                sid,
                client_id,
            } => {
                let id = (app.clone(), channel.clone());
                if !self.channels.contains_key(&id) {
                    match self.link(&id).await {
                        Ok(link) => {
                            self.channels.insert(id.clone(), link);
                        }
                        Err(e) => {
                            warn!(%app, %channel, error = %e, "mesh: cannot subscribe to channel");
                            return;
                        }
                    }
                }
                if let Some(link) = self.channels.get_mut(&id) {
                    link.local_members += 1;
                }
                let key = keys::member_key(&Member {
                    app: app.to_string(),
                    channel: channel.to_string(),
                    mesh_id: self.mesh_id.clone(),
                    sid,
                    client_id: client_id.to_string(),
                });
                match self.session.liveliness().declare_token(&key).await {
                    Ok(token) => {
                        self.tokens.insert((id, sid), token);
                    }
                    Err(e) => warn!(%key, error = %e, "mesh: cannot declare membership token"),
                }
            }
            MeshEvent::Left { app, channel, sid } => {
                let id = (app, channel);
                if let Some(token) = self.tokens.remove(&(id.clone(), sid)) {
                    let _ = token.undeclare().await;
                }
                if let Some(link) = self.channels.get_mut(&id) {
                    link.local_members = link.local_members.saturating_sub(1);
                    if link.local_members == 0 {
                        // Dropping the link undeclares its subscriber.
                        let remote = link.remote.len() as u64;
                        self.stats.mesh.remote_members.fetch_sub(remote, Relaxed);
                        self.channels.remove(&id);
                        self.unwatch(&id.0);
                        debug!(app = %id.0, channel = %id.1, "mesh: last local member left, unsubscribed");
                    }
                }
            }
            MeshEvent::Publish {
                app,
                channel,
                sid,
                msg,
                span,
            } => {
                self.backlog.fetch_sub(1, Relaxed);
                let key = keys::channel_key(&app, &channel);
                let publish = tracing::info_span!(target: "otel", parent: &span, "mesh.publish", key = %key, bytes = msg.len(), mesh_id = %self.mesh_id);
                let attachment = Origin {
                    sid: Some(sid),
                    sent_us: unix_micros(),
                    traceparent: telemetry::traceparent(&publish),
                }
                .encode();
                // Remote only: this node's own subscribers take remote samples
                // only, and a local destination would make zenoh match every
                // put against every local subscriber (one per channel).
                let put = self
                    .session
                    .put(&key, msg)
                    .attachment(attachment)
                    .allowed_destination(Locality::Remote)
                    .congestion_control(CongestionControl::Block);
                match put.into_future().instrument(publish.clone()).await {
                    Ok(()) => {
                        self.stats.mesh.published.fetch_add(1, Relaxed);
                    }
                    Err(e) => {
                        debug!(%key, error = %e, "mesh: publish failed");
                        publish.in_scope(|| tracing::info!(target: "otel", reason = "publish_failed", error = %e, "dropped"));
                    }
                }
            }
        }
    }

    /// Subscribes to a channel's messages, watches its app's membership
    /// tokens, and asks for the channel's current ones: their replies come
    /// in as memberships, after the link exists, and before any later change
    /// of the same token (zenoh keeps each link's order).
    async fn link(&mut self, id: &ChannelId) -> zenoh::Result<ChannelLink> {
        let (app, channel) = id;
        let tx = self.inbound_tx.clone();
        let cid = id.clone();
        let messages = self
            .session
            .declare_subscriber(keys::channel_key(app, channel))
            .allowed_origin(Locality::Remote)
            .callback(move |sample| {
                let origin = sample
                    .attachment()
                    .map(|a| Origin::decode(&a.to_bytes()))
                    .unwrap_or_default();
                let _ = tx.send(FromZenoh::Message {
                    channel: cid.clone(),
                    payload: sample.payload().to_bytes().into_owned(),
                    origin,
                });
            })
            .await?;
        self.watch(app).await?;
        let tx = self.inbound_tx.clone();
        let current = self
            .session
            .liveliness()
            .get(keys::members_of(app, channel))
            .callback(move |reply| {
                if let Ok(sample) = reply.result() {
                    let _ = tx.send(FromZenoh::Membership {
                        key: sample.key_expr().as_str().to_owned(),
                        alive: true,
                    });
                }
            })
            .await;
        if let Err(e) = current {
            self.unwatch(app);
            return Err(e);
        }
        debug!(%app, %channel, "mesh: subscribed to channel");
        Ok(ChannelLink {
            local_members: 0,
            _messages: messages,
            remote: HashMap::new(),
            gone: HashMap::new(),
        })
    }

    /// Counts one more linked channel of `app`, watching its tokens first.
    async fn watch(&mut self, app: &Arc<str>) -> zenoh::Result<()> {
        if let Some(watch) = self.apps.get_mut(app) {
            watch.linked_channels += 1;
            return Ok(());
        }
        let tx = self.inbound_tx.clone();
        let memberships = self
            .session
            .liveliness()
            .declare_subscriber(keys::members_of_app(app))
            .callback(move |sample| {
                let _ = tx.send(FromZenoh::Membership {
                    key: sample.key_expr().as_str().to_owned(),
                    alive: sample.kind() == SampleKind::Put,
                });
            })
            .await?;
        debug!(%app, "mesh: watching the app's memberships");
        self.apps.insert(
            app.clone(),
            AppWatch {
                linked_channels: 1,
                _memberships: memberships,
            },
        );
        Ok(())
    }

    /// Counts one linked channel of `app` less; the last one ends the watch.
    fn unwatch(&mut self, app: &str) {
        if let Some(watch) = self.apps.get_mut(app) {
            watch.linked_channels -= 1;
            if watch.linked_channels == 0 {
                self.apps.remove(app);
                debug!(%app, "mesh: no linked channel left, stopped watching the app");
            }
        }
    }

    fn on_remote(&mut self, msg: FromZenoh) {
        match msg {
            FromZenoh::Message {
                channel,
                payload,
                origin,
            } => self.on_message(channel, &payload, origin),
            FromZenoh::Membership { key, alive } => self.on_membership(&key, alive),
            FromZenoh::Check { channel, member } => self.on_check(channel, &member),
        }
    }

    fn on_message(&mut self, id: ChannelId, payload: &[u8], origin: Origin) {
        let Some(link) = self.channels.get_mut(&id) else {
            return; // unsubscribed meanwhile
        };
        let hop_us = unix_micros().saturating_sub(origin.sent_us);
        let span = tracing::info_span!(
            target: "otel", parent: None, "mesh.receive",
            app = %id.0, channel = %id.1, mesh_id = %self.mesh_id, bytes = payload.len(),
            peer = tracing::field::Empty, op = tracing::field::Empty, origin_mesh = tracing::field::Empty,
            hop_us = tracing::field::Empty,
        );
        if let Some(parent) = origin.traceparent.as_deref() {
            telemetry::set_parent(&span, parent);
        }
        let _entered = span.enter();
        let relayed = match protocol::decode_relayed(payload) {
            Ok(m) if m.channel == &*id.1 && m.kind != Kind::Control(Op::ChannelJoin) => m,
            other => {
                debug!(app = %id.0, channel = %id.1, result = ?other.err(), "mesh: invalid sample dropped");
                self.stats.count_drop(DropReason::MeshInvalid);
                tracing::info!(target: "otel", reason = DropReason::MeshInvalid.as_str(), "dropped");
                return;
            }
        };
        span.record("peer", relayed.peer);
        span.record("op", relayed.kind.label());
        if let Some(mesh) = relayed.mesh {
            span.record("origin_mesh", mesh);
        }
        if origin.sent_us > 0 {
            span.record("hop_us", hop_us);
            self.stats.mesh.observe_hop(hop_us);
        }
        // Re-encoded: whatever a backend sent, browsers get a clean map.
        let bytes = Bytes::from(protocol::encode(&relayed));
        let mut missed_announcement = None;
        if let (Some(mesh), Some(sid)) = (relayed.mesh, origin.sid) {
            if let Some(remote) = link.remote.get_mut(&(mesh.to_owned(), sid)) {
                // The first thing heard from a new member is not its
                // peer_online: its announcement was lost (both nodes
                // subscribed at once), so ours may have been too. The
                // presence check stands down once anything is heard, so do
                // its work now: peer_online on its behalf, first, and the
                // local members answer with their state.
                if !remote.heard
                    && relayed.kind != Kind::Control(Op::PeerOnline)
                    && self.presence_check.is_some()
                {
                    missed_announcement = Some(mesh);
                }
                remote.heard = true;
                if relayed.kind == Kind::Control(Op::PeerState) {
                    remote.last_state = Some(bytes.clone());
                }
            }
        }
        if let Some(mesh) = missed_announcement {
            debug!(app = %id.0, channel = %id.1, peer = relayed.peer, %mesh, "mesh: new remote member's announcement missed; asking local members to announce");
            deliver_presence(&self.hub, &id, Op::PeerOnline, relayed.peer, mesh);
        }
        self.stats.mesh.received.fetch_add(1, Relaxed);
        let deliver = tracing::info_span!(target: "otel", "deliver", delivered = tracing::field::Empty, dropped_slow = tracing::field::Empty);
        let delivery =
            deliver.in_scope(|| self.hub.deliver_remote(&id.0, &id.1, &bytes, relayed.kind));
        deliver.record("delivered", delivery.sent);
        deliver.record("dropped_slow", delivery.dropped);
    }

    /// A remote member whose token appeared a grace period ago and from
    /// whom nothing arrived: its `peer_online` (and our members' answers) can
    /// have been lost, if both nodes subscribed to the channel within the
    /// time a subscription takes to cross (zenoh routes a publication only to
    /// the subscribers its node already knows). Deliver `peer_online` on its
    /// behalf: the local browsers answer with their state, which now reaches
    /// it. The other node does the same for ours, so both sides converge.
    fn on_check(&mut self, id: ChannelId, member: &Member) {
        tracing::trace!(app = %id.0, channel = %id.1, peer = %member.client_id, "mesh: presence check");
        let Some(remote) = self
            .channels
            .get_mut(&id)
            .and_then(|link| link.remote.get_mut(&(member.mesh_id.clone(), member.sid)))
        else {
            return; // gone meanwhile
        };
        if remote.heard {
            return;
        }
        remote.heard = true;
        debug!(app = %id.0, channel = %id.1, peer = %member.client_id, mesh = %member.mesh_id, "mesh: nothing heard from new remote member; asking local members to announce");
        deliver_presence(
            &self.hub,
            &id,
            Op::PeerOnline,
            &member.client_id,
            &member.mesh_id,
        );
    }

    fn on_membership(&mut self, key: &str, alive: bool) {
        let Some(member) = keys::parse_member(key) else {
            debug!(%key, "mesh: not a membership key");
            return;
        };
        if member.mesh_id == self.mesh_id {
            return; // our own token
        }
        let id: ChannelId = (member.app.as_str().into(), member.channel.as_str().into());
        let Some(link) = self.channels.get_mut(&id) else {
            return; // a channel without local members
        };
        let who = (member.mesh_id.clone(), member.sid);
        let now = Instant::now();
        link.gone
            .retain(|_, (_, since)| now.duration_since(*since) < GONE_MEMORY);
        if alive {
            if link.remote.contains_key(&who) {
                return;
            }
            let healed = link.gone.remove(&who);
            debug!(app = %id.0, channel = %id.1, peer = %member.client_id, mesh = %member.mesh_id, healed = healed.is_some(), "mesh: remote member");
            let last_state = healed.as_ref().and_then(|(r, _)| r.last_state.clone());
            self.stats.mesh.remote_members.fetch_add(1, Relaxed);
            link.remote.insert(
                who,
                Remote {
                    last_state: last_state.clone(),
                    heard: healed.is_some(),
                },
            );
            if let (None, Some(grace)) = (&healed, self.presence_check) {
                let (tx, channel, member) = (self.inbound_tx.clone(), id.clone(), member.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(grace).await;
                    let _ = tx.send(FromZenoh::Check { channel, member });
                });
            }
            if healed.is_some() {
                // Back after a partition: tell the local members again.
                info!(app = %id.0, channel = %id.1, peer = %member.client_id, mesh = %member.mesh_id, "mesh: peer back after a partition");
                deliver_presence(
                    &self.hub,
                    &id,
                    Op::PeerOnline,
                    &member.client_id,
                    &member.mesh_id,
                );
                if let Some(state) = last_state {
                    self.hub
                        .deliver_remote(&id.0, &id.1, &state, Kind::Control(Op::PeerState));
                }
            }
        } else if let Some(remote) = link.remote.remove(&who) {
            debug!(app = %id.0, channel = %id.1, peer = %member.client_id, mesh = %member.mesh_id, "mesh: remote peer gone");
            link.gone.insert(who, (remote, now));
            self.stats.mesh.remote_members.fetch_sub(1, Relaxed);
            self.stats.mesh.remote_offline.fetch_add(1, Relaxed);
            deliver_presence(
                &self.hub,
                &id,
                Op::PeerOffline,
                &member.client_id,
                &member.mesh_id,
            );
        }
    }
}

/// Delivers a node-made presence message (`op` on behalf of the remote
/// member `client_id` of node `mesh_id`) to the channel's local members.
fn deliver_presence(hub: &Hub, id: &ChannelId, op: Op, client_id: &str, mesh_id: &str) {
    let msg = Bytes::from(protocol::encode_control(op, &id.1, client_id, mesh_id));
    hub.deliver_remote(&id.0, &id.1, &msg, Kind::Control(op));
}

/// The zenoh attachment of a node's publish: where it came from, when, and
/// the W3C trace context of its publish span. msgpack map
/// `{"ts": u64 µs since the epoch, "sid": str, "traceparent": str}`; every
/// key optional, unknown keys ignored (backends may send their own).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origin {
    pub sid: Option<u64>,
    pub sent_us: u64,
    pub traceparent: Option<String>,
}

impl Origin {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(96);
        let n = 1 + u32::from(self.sid.is_some()) + u32::from(self.traceparent.is_some());
        rmp::encode::write_map_len(&mut out, n).expect("vec");
        rmp::encode::write_str(&mut out, "ts").expect("vec");
        rmp::encode::write_uint(&mut out, self.sent_us).expect("vec");
        if let Some(sid) = self.sid {
            rmp::encode::write_str(&mut out, "sid").expect("vec");
            rmp::encode::write_str(&mut out, &sid.to_string()).expect("vec");
        }
        if let Some(tp) = &self.traceparent {
            rmp::encode::write_str(&mut out, "traceparent").expect("vec");
            rmp::encode::write_str(&mut out, tp).expect("vec");
        }
        out
    }

    /// Whatever can be read; a foreign or broken attachment gives defaults.
    pub fn decode(bytes: &[u8]) -> Origin {
        let mut origin = Origin::default();
        let Ok(rmpv::Value::Map(entries)) = rmpv::decode::read_value(&mut &bytes[..]) else {
            return origin;
        };
        for (k, v) in entries {
            match (k.as_str(), v) {
                (Some("sid"), rmpv::Value::String(s)) => {
                    origin.sid = s.as_str().and_then(|s| s.parse().ok())
                }
                (Some("ts"), v) => origin.sent_us = v.as_u64().unwrap_or(0),
                (Some("traceparent"), rmpv::Value::String(s)) => origin.traceparent = s.into_str(),
                _ => {}
            }
        }
        origin
    }
}

fn unix_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attachment_roundtrip() {
        let origin = Origin {
            sid: Some(123456),
            sent_us: 1_700_000_000_000_000,
            traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
        };
        assert_eq!(Origin::decode(&origin.encode()), origin);
        assert_eq!(Origin::decode(b"junk"), Origin::default());
        let bare = Origin {
            sid: None,
            sent_us: 5,
            traceparent: None,
        };
        assert_eq!(Origin::decode(&bare.encode()), bare);
    }

    #[test]
    fn embedded_config_is_valid_and_endpoints_override() {
        let settings = MeshSettings {
            listen: vec!["tcp/127.0.0.1:0".into()],
            connect: vec!["tcp/127.0.0.2:7447".into(), "tcp/127.0.0.3:7447".into()],
            ..MeshSettings::default()
        };
        let config = zenoh_config(&settings).unwrap();
        let json = format!("{config:?}");
        assert!(json.contains("127.0.0.3:7447"), "{json}");
        assert!(zenoh_config(&MeshSettings {
            config_file: Some("/nonexistent.json5".into()),
            ..MeshSettings::default()
        })
        .is_err());
    }
}
