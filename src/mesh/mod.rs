//! The mesh: this node's bridge between its hub and a zenoh session, so
//! that peers on every node of the mesh share channels.
//!
//! Out: the hub's [`MeshEvent`]s, in order. A channel's first local member
//! links it: its subscriber (plus the app's watch and this node's token of
//! the app, if it is the app's first linked channel) and a query for the
//! other nodes' rosters. Every local join and leave is published on the
//! channel's key (`channel_join`, `peer_offline`), as is every local message,
//! with the sender's sid in the attachment; the last leave unsubscribes.
//!
//! In: a sample on a joined channel's key is checked, re-encoded without
//! `sid`/`app`, and handed to the hub for the local members (never back to
//! zenoh: no loops). Every remote join and leave is told to the hub, which
//! counts connections per user ([`crate::presence`]): another node's leave
//! becomes one `peer_offline` for the local members if it was its user's
//! last connection (after the grace period); so does each of its members,
//! at once, when its node's token of the app goes away (it left the app's
//! channels, died, or was cut off and zenoh's lease expired). The presence
//! API and the webhooks ask the other nodes through [`admin`]. A node whose
//! token appears is asked for its rosters; a member back from a partition
//! becomes `peer_online` plus its last state, so the browsers on this side
//! see it again without it having to rejoin. A `channel_join` is the bridge's, never the browsers'.
//! What no node would send is refused and counted, ACLs or not
//! (`Bridge::sender`): a member of a node needs that node's live token, a
//! roster too, and one node's members of a channel stay within the app's
//! cap. What zenoh hands over waits in a bounded queue (`Inbound`).
//!
//! The hub never waits for zenoh: events cross an unbounded, ordered queue
//! whose publish backlog is capped by the hub. The mesh knows nothing of
//! sockets; transports know nothing of zenoh. Key expressions: [`keys`].

pub mod admin;
pub use prscd_wire::mesh::{keys, membership, Origin};

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};
use zenoh::bytes::ZBytes;
use zenoh::liveliness::LivelinessToken;
use zenoh::pubsub::Subscriber;
use zenoh::qos::CongestionControl;
use zenoh::query::{ConsolidationMode, Query, QueryTarget, Queryable};
use zenoh::sample::{Locality, SampleKind};
use zenoh::session::SessionPutBuilder;
use zenoh::Session;

use crate::apps::AppLimits;
use crate::clock::unix_micros;
use crate::hub::{Hub, MeshEvent, PeerId};
use crate::presence::{Arrival, Why};
use crate::protocol::{self, Kind, Op};
use crate::stats::{DropReason, Stats};
use crate::telemetry;
use membership::Membership;
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
    /// Samples, rosters and roster queries that may wait for the bridge
    /// before new ones are dropped (counted `mesh_inbound_full`).
    pub inbound_queue: usize,
    /// `MESH_ALLOW_UNAUTHENTICATED`: accept zenoh links from beyond loopback
    /// without mTLS or user/password (see [`check_authenticated`]).
    pub allow_unauthenticated: bool,
}

/// The app's caps, as the transports admit with them now (reloaded on
/// SIGHUP); `None` for an app this node does not know.
pub type AppLimitsOf = Arc<dyn Fn(&str) -> Option<AppLimits> + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    #[error("zenoh config {path}: {why}")]
    ConfigFile { path: PathBuf, why: String },
    #[error("zenoh config key {key}: {why}")]
    ConfigKey { key: &'static str, why: String },
    #[error("cannot open the zenoh session: {0}")]
    Open(String),
    #[error("cannot serve the presence API on the mesh: {0}")]
    Admin(String),
    #[error("zenoh would accept links on {endpoint} from beyond loopback without authentication: configure TLS with client certificates (transport.link.tls.enable_mtls and a tls/ or quic/ endpoint) or user/password (transport.auth.usrpwd), or set MESH_ALLOW_UNAUTHENTICATED=true to accept anyone")]
    Unauthenticated { endpoint: String },
}

/// When a channel's roster query is asked again; a node's first wait
/// (doubling each time) and how many times it is asked again at most (see
/// `Bridge::on_roster_query_over`).
const ROSTER_RECHECK: Duration = Duration::from_secs(1);
const ROSTER_RETRY: Duration = Duration::from_millis(250);
const ROSTER_ATTEMPTS: u32 = 5;

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
            zenoh::Config::from_json5(EMBEDDED_DEFAULTS).map_err(|e| MeshError::ConfigFile {
                path: "mesh/p2p/node.json5 (embedded)".into(),
                why: e.to_string(),
            })?
        }
    };
    let list = |endpoints: &[String]| serde_json::to_string(endpoints).expect("strings");
    if !settings.listen.is_empty() {
        insert(&mut config, "listen/endpoints", &list(&settings.listen))?;
    }
    if !settings.connect.is_empty() {
        insert(&mut config, "connect/endpoints", &list(&settings.connect))?;
    }
    check_authenticated(&config, settings.allow_unauthenticated)?;
    Ok(config)
}

/// Secure by default: without authentication a zenoh link is anyone's, and
/// anyone on the mesh can read every app and forge presence (`mesh/README.md`,
/// threat model). So a listen endpoint beyond loopback needs mTLS (on a
/// `tls/` or `quic/` endpoint) or a user/password dictionary, unless
/// `allow` (`MESH_ALLOW_UNAUTHENTICATED=true`) says otherwise, with a warning.
/// Connecting out needs neither: the other side decides whom it accepts.
pub fn check_authenticated(config: &zenoh::Config, allow: bool) -> Result<(), MeshError> {
    let json = |key: &str| {
        config
            .get_json(key)
            .ok()
            .and_then(|v| serde_json::from_str::<serde_json::Value>(&v).ok())
            .unwrap_or(serde_json::Value::Null)
    };
    let mode = json("mode");
    let mode = mode.as_str().unwrap_or("peer");
    // A mode-dependent value ({peer: [...], router: [...]}) or one list.
    let endpoints = match json("listen/endpoints") {
        serde_json::Value::Object(by_mode) => by_mode.get(mode).cloned(),
        other => Some(other),
    };
    let endpoints: Vec<String> = match endpoints {
        Some(serde_json::Value::Array(list)) => list
            .iter()
            .filter_map(|e| e.as_str().map(str::to_owned))
            .collect(),
        // Unset: zenoh listens on `tcp/[::]:0` in peer and router mode.
        _ if mode == "client" => Vec::new(),
        _ => vec!["tcp/[::]:0".to_owned()],
    };
    let mtls = json("transport/link/tls/enable_mtls").as_bool() == Some(true);
    let usrpwd = json("transport/auth/usrpwd/dictionary_file").is_string();
    // zenoh refuses to open a listener outside `transport/link/protocols`.
    let protocols = json("transport/link/protocols");
    let opened = |endpoint: &String| {
        protocols.as_array().is_none_or(|list| {
            let proto = endpoint.split('/').next().unwrap_or_default();
            list.iter().any(|p| p.as_str() == Some(proto))
        })
    };
    let open = endpoints
        .into_iter()
        .filter(opened)
        .find(|e| !usrpwd && !endpoint_is_safe(e, mtls));
    match open {
        None => Ok(()),
        Some(endpoint) if allow => {
            warn!(%endpoint, "mesh: MESH_ALLOW_UNAUTHENTICATED=true: accepting zenoh links from beyond loopback without authentication; anyone who reaches this endpoint can read every app and forge presence");
            Ok(())
        }
        Some(endpoint) => Err(MeshError::Unauthenticated { endpoint }),
    }
}

/// Whether a listen endpoint (`proto/address[?metadata][#config]`) only
/// accepts authenticated or local links.
fn endpoint_is_safe(endpoint: &str, mtls: bool) -> bool {
    let endpoint = endpoint.split(['?', '#']).next().unwrap_or_default();
    let Some((proto, address)) = endpoint.split_once('/') else {
        return false;
    };
    if mtls && matches!(proto, "tls" | "quic") {
        return true;
    }
    // Unix sockets and pipes never leave the host.
    if matches!(proto, "unixsock-stream" | "unixpipe") {
        return true;
    }
    let host = match address.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => address.rsplit_once(':').map_or(address, |(h, _)| h),
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The embedded default: peer mode, listening only where told
/// (ZENOH_LISTEN), multicast scouting off, a 2 s lease (a dead node's peers go
/// offline within it), 2 s handshakes and background reconnects. The file
/// is the one operators read and copy.
const EMBEDDED_DEFAULTS: &str = include_str!("../../mesh/p2p/node.json5");

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
    admin: admin::Served,
}

impl Mesh {
    /// Opens the zenoh session and starts bridging. Call outside any span:
    /// zenoh's background tasks inherit the current one.
    pub async fn start(
        hub: Arc<Hub>,
        settings: &MeshSettings,
        limits: AppLimitsOf,
    ) -> Result<Mesh, MeshError> {
        let config = zenoh_config(settings)?;
        let session = zenoh::open(config)
            .await
            .map_err(|e| MeshError::Open(e.to_string()))?;
        let stats = hub.stats().clone();
        stats.mesh.open.store(true, Relaxed);
        info!(zid = %session.zid(), mesh_id = hub.mesh_id(), "mesh: zenoh session open");

        let admin = admin::serve(&session, hub.clone())
            .await
            .map_err(|e| MeshError::Admin(e.to_string()))?;
        let (events, backlog) = hub.attach_mesh(settings.max_backlog.max(1));
        let (inbound_tx, inbound) = mpsc::channel(settings.inbound_queue.max(1));
        let (control_tx, control) = mpsc::unbounded_channel();
        let bridge = Bridge {
            session: session.clone(),
            mesh_id: hub.mesh_id().to_owned(),
            hub,
            stats: stats.clone(),
            backlog,
            inbound: Inbound {
                tx: inbound_tx,
                stats: stats.clone(),
            },
            control_tx,
            limits,
            presence_check: settings.presence_check,
            channels: HashMap::new(),
            apps: HashMap::new(),
        };
        let task = tokio::spawn(bridge.run(events, control, inbound));
        tokio::spawn(watch_neighbours(session.clone(), stats));
        Ok(Mesh {
            session,
            task,
            admin,
        })
    }

    /// What the presence API asks of the other nodes.
    pub fn admin(&self) -> admin::MeshAdmin {
        self.admin.admin.clone()
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

/// What arrives from zenoh's callbacks, for the bridge task. Samples,
/// rosters and roster queries, which anyone on the mesh can send at any
/// rate, cross a bounded queue ([`Inbound`]); node tokens and the bridge's
/// own timers cross an unbounded one, taken first: dropping a token's
/// coming or going would leave ghosts or miss a node.
enum FromZenoh {
    Message {
        channel: ChannelId,
        payload: Vec<u8>,
        origin: Origin,
    },
    /// A node token of the app appeared (`alive`) or went away.
    NodeToken { key: String, alive: bool },
    /// One node's roster of one channel, in reply to this node's query.
    Roster { key: String, payload: Vec<u8> },
    /// Another session asks for this node's members in the app's channels.
    RosterQuery { app: Arc<str>, query: Query },
    /// A roster query of this node is over (zenoh dropped its callback).
    RosterQueryOver { ask: RosterAsk, replies: usize },
    /// A roster query's next attempt is due.
    AskAgain(RosterAsk),
    /// A new remote member's grace period is over.
    Check {
        channel: ChannelId,
        member: RemoteMember,
    },
}

/// One roster query: for one channel of every node (`node: None`), or for
/// every channel of one node.
#[derive(Debug, Clone)]
struct RosterAsk {
    app: Arc<str>,
    selector: String,
    node: Option<String>,
    attempt: u32,
}

/// The bounded queue from zenoh's callbacks to the bridge: when the bridge
/// falls behind, what does not fit is dropped and counted, so a flood from
/// the mesh costs bounded memory.
#[derive(Clone)]
struct Inbound {
    tx: mpsc::Sender<FromZenoh>,
    stats: Arc<Stats>,
}

impl Inbound {
    fn offer(&self, msg: FromZenoh) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.tx.try_send(msg) {
            self.stats.count_drop(DropReason::MeshInboundFull);
        }
    }
}

/// Lives in a roster query's callback; zenoh drops the callback when the
/// query is over, and this tells the bridge how many replies came.
struct QueryOver {
    inbound: Inbound,
    control: mpsc::UnboundedSender<FromZenoh>,
    ask: Option<RosterAsk>,
    replies: AtomicUsize,
}

impl Drop for QueryOver {
    fn drop(&mut self) {
        if let Some(ask) = self.ask.take() {
            let replies = self.replies.load(Relaxed);
            let _ = self
                .control
                .send(FromZenoh::RosterQueryOver { ask, replies });
        }
    }
}

/// A peer of another node, as named in its node's `channel_join` or roster.
#[derive(Debug, Clone)]
struct RemoteMember {
    mesh_id: String,
    sid: u64,
    client_id: String,
}

/// A peer of another node in a channel this node has members in.
struct Remote {
    client_id: String,
    /// Its last `peer_state`, replayed if it comes back after a partition.
    last_state: Option<Bytes>,
    /// Whether any message of it reached this node.
    heard: bool,
    /// Whether it was its user's first connection here ([`Arrival::First`]):
    /// only then do the local members hear its `peer_online`; otherwise
    /// they know the user, and the node answers for them.
    announce: bool,
}

/// A channel with local members: its subscription, and what is known of the
/// members on every node.
struct ChannelLink {
    /// sid → client id of this node's members: the roster it answers with.
    local: HashMap<PeerId, Arc<str>>,
    _messages: Subscriber<()>,
    /// (mesh_id, sid) → peer, while it is a member and its node's token lives.
    remote: HashMap<(String, u64), Remote>,
    /// Members whose node's token went away, to recognise a heal.
    gone: HashMap<(String, u64), (Remote, Instant)>,
    /// mesh_id → how many of `remote` are its: a node never has more members
    /// in a channel than the app's cap, so more is refused.
    per_node: HashMap<String, usize>,
}

impl ChannelLink {
    fn remove_remote(&mut self, who: &(String, u64)) -> Option<Remote> {
        let remote = self.remote.remove(who)?;
        if let Some(n) = self.per_node.get_mut(&who.0) {
            *n -= 1;
            if *n == 0 {
                self.per_node.remove(&who.0);
            }
        }
        Some(remote)
    }

    fn insert_remote(&mut self, who: (String, u64), remote: Remote) {
        *self.per_node.entry(who.0.clone()).or_default() += 1;
        self.remote.insert(who, remote);
    }
}

struct Bridge {
    session: Session,
    mesh_id: String,
    hub: Arc<Hub>,
    stats: Arc<Stats>,
    backlog: Arc<AtomicUsize>,
    inbound: Inbound,
    control_tx: mpsc::UnboundedSender<FromZenoh>,
    limits: AppLimitsOf,
    presence_check: Option<Duration>,
    channels: HashMap<ChannelId, ChannelLink>,
    /// One membership watch per app with linked channels (see [`AppWatch`]).
    apps: HashMap<Arc<str>, AppWatch>,
}

/// While at least one of an app's channels is linked: this node's token for
/// the app, one liveliness subscriber for the other nodes' tokens, and the
/// queryable that answers with this node's rosters. Tokens of nodes in apps
/// without local members are ignored. Per app rather than per channel or per
/// membership: in zenoh 1.10 a declaration costs time linear in the node's
/// key space, while a publication on a key this node subscribes to is cheap
/// (BENCHMARKS-HISTORY.md, fixes 8 and 16).
struct AppWatch {
    linked_channels: usize,
    /// The other nodes whose token of the app lives.
    nodes: HashSet<String>,
    _token: LivelinessToken,
    _node_tokens: Subscriber<()>,
    _roster: Queryable<()>,
}

impl Bridge {
    async fn run(
        mut self,
        mut events: mpsc::UnboundedReceiver<MeshEvent>,
        mut control: mpsc::UnboundedReceiver<FromZenoh>,
        mut inbound: mpsc::Receiver<FromZenoh>,
    ) {
        loop {
            tokio::select! {
                biased;
                event = events.recv() => match event {
                    Some(event) => self.on_local(event).await,
                    None => return,
                },
                // Before samples: a node's token, announced before its
                // first sample, is known when the sample is checked.
                Some(msg) = control.recv() => self.on_remote(msg).await,
                Some(msg) = inbound.recv() => self.on_remote(msg).await,
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
                let Some(link) = self.channels.get_mut(&id) else {
                    return;
                };
                link.local.insert(sid, client_id.clone());
                let join =
                    protocol::encode_control(Op::ChannelJoin, &id.1, &client_id, &self.mesh_id);
                self.publish_membership(&id, sid, join).await;
            }
            MeshEvent::Left { app, channel, sid } => {
                let id = (app, channel);
                let Some(link) = self.channels.get_mut(&id) else {
                    return; // never linked
                };
                let Some(client_id) = link.local.remove(&sid) else {
                    return;
                };
                let last = link.local.is_empty();
                let leave =
                    protocol::encode_control(Op::PeerOffline, &id.1, &client_id, &self.mesh_id);
                self.publish_membership(&id, sid, leave).await;
                if !last {
                    return;
                }
                if let Some(link) = self.channels.remove(&id) {
                    let remote = link.remote.len() as u64;
                    self.stats.mesh.remote_members.fetch_sub(remote, Relaxed);
                    drop(link); // undeclares its subscriber, before the app's watch
                    self.hub.forget_remote(&id.0, &id.1);
                    self.unwatch(&id.0);
                    debug!(app = %id.0, channel = %id.1, "mesh: last local member left, unsubscribed");
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
                let put = self.channel_put(&key, sid, msg, telemetry::traceparent(&publish));
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

    /// Subscribes to a channel's messages, watches its app (see
    /// [`AppWatch`]), and asks the other nodes known to serve the app for
    /// their rosters of the channel: the replies come in as memberships,
    /// after the link exists. A node whose token is not known yet is asked
    /// when it arrives ([`Bridge::on_node_token`]), so none is missed and a
    /// node alone in the mesh sends no query.
    async fn link(&mut self, id: &ChannelId) -> zenoh::Result<ChannelLink> {
        let (app, channel) = id;
        let inbound = self.inbound.clone();
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
                inbound.offer(FromZenoh::Message {
                    channel: cid.clone(),
                    payload: sample.payload().to_bytes().into_owned(),
                    origin,
                });
            })
            .await?;
        self.watch(app).await?;
        // Nodes not known yet are asked when their token arrives.
        let ask = RosterAsk {
            app: app.clone(),
            selector: keys::members_of(app, channel),
            node: None,
            attempt: 0,
        };
        if self.has_someone_to_ask(&ask) {
            self.ask_rosters(ask).await;
        }
        debug!(%app, %channel, "mesh: subscribed to channel");
        Ok(ChannelLink {
            local: HashMap::new(),
            _messages: messages,
            remote: HashMap::new(),
            gone: HashMap::new(),
            per_node: HashMap::new(),
        })
    }

    /// A publication on a channel's key, with the sender's sid in the
    /// attachment. Remote only: this node's own subscribers take remote
    /// samples only, and a local destination would make zenoh match every
    /// put against every local subscriber (one per channel).
    fn channel_put<'a>(
        &'a self,
        key: &'a str,
        sid: PeerId,
        msg: impl Into<ZBytes>,
        traceparent: Option<String>,
    ) -> SessionPutBuilder<'a, 'a> {
        let attachment = Origin {
            sid: Some(sid),
            sent_us: unix_micros(),
            traceparent,
        }
        .encode();
        self.session
            .put(key, msg)
            .attachment(attachment)
            .allowed_destination(Locality::Remote)
            .congestion_control(CongestionControl::Block)
    }

    /// Publishes a local join (`channel_join`, never delivered to browsers)
    /// or leave (`peer_offline`) on the channel's key, in order with the
    /// member's messages, the sid in the attachment as for its messages.
    async fn publish_membership(&self, id: &ChannelId, sid: PeerId, msg: Vec<u8>) {
        let key = keys::channel_key(&id.0, &id.1);
        if let Err(e) = self.channel_put(&key, sid, msg, None).await {
            warn!(%key, error = %e, "mesh: cannot publish a membership change");
        }
    }

    /// Asks for rosters, and again if the answer may have been missed
    /// (see [`Bridge::on_roster_query_over`]).
    async fn ask_rosters(&self, ask: RosterAsk) {
        let over = QueryOver {
            inbound: self.inbound.clone(),
            control: self.control_tx.clone(),
            ask: Some(ask.clone()),
            replies: AtomicUsize::new(0),
        };
        let query = self
            .session
            .get(&ask.selector)
            .target(QueryTarget::All)
            .consolidation(ConsolidationMode::None)
            .allowed_destination(Locality::Remote)
            .callback(move |reply| {
                if let Ok(sample) = reply.result() {
                    over.replies.fetch_add(1, Relaxed);
                    over.inbound.offer(FromZenoh::Roster {
                        key: sample.key_expr().as_str().to_owned(),
                        payload: sample.payload().to_bytes().into_owned(),
                    });
                }
            });
        if let Err(e) = query.await {
            warn!(app = %ask.app, selector = %ask.selector, error = %e, "mesh: cannot ask for rosters");
        }
    }

    /// A roster query is over. Through routers, a node's token or
    /// subscription can reach this node before its queryable is routable
    /// from here, so: a node asked for all its rosters of an app always has
    /// at least one (it holds the token only while it has members in the
    /// app), and is asked again, with backoff, until it answers or its token
    /// goes; a channel's query, which may rightly get no answer, is asked
    /// once more [`ROSTER_RECHECK`] later. A roster only adds members not
    /// known yet, so asking twice does no harm.
    fn on_roster_query_over(&self, mut ask: RosterAsk, replies: usize) {
        let delay = match &ask.node {
            Some(_) if replies > 0 || ask.attempt >= ROSTER_ATTEMPTS => return,
            Some(_) => ROSTER_RETRY * 2u32.pow(ask.attempt),
            None if ask.attempt > 0 => return,
            None => ROSTER_RECHECK,
        };
        ask.attempt += 1;
        let tx = self.control_tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = tx.send(FromZenoh::AskAgain(ask));
        });
    }

    /// Whether a roster query has someone to ask: its node, or any other
    /// node of the app.
    fn has_someone_to_ask(&self, ask: &RosterAsk) -> bool {
        self.apps.get(&ask.app).is_some_and(|w| match &ask.node {
            Some(node) => w.nodes.contains(node),
            None => !w.nodes.is_empty(),
        })
    }

    /// Counts one more linked channel of `app`, watching its memberships first.
    async fn watch(&mut self, app: &Arc<str>) -> zenoh::Result<()> {
        if let Some(watch) = self.apps.get_mut(app) {
            watch.linked_channels += 1;
            return Ok(());
        }
        let (inbound, for_app) = (self.inbound.clone(), app.clone());
        let roster = self
            .session
            .declare_queryable(keys::node_members_of_app(app, &self.mesh_id))
            .callback(move |query| {
                inbound.offer(FromZenoh::RosterQuery {
                    app: for_app.clone(),
                    query,
                });
            })
            .await?;
        let tx = self.control_tx.clone();
        let node_tokens = self
            .session
            .liveliness()
            .declare_subscriber(keys::node_tokens_of_app(app))
            .history(true)
            .callback(move |sample| {
                let _ = tx.send(FromZenoh::NodeToken {
                    key: sample.key_expr().as_str().to_owned(),
                    alive: sample.kind() == SampleKind::Put,
                });
            })
            .await?;
        // Declared last: a node that sees it can already query this one.
        let token = self
            .session
            .liveliness()
            .declare_token(keys::node_token_key(app, &self.mesh_id))
            .await?;
        debug!(%app, "mesh: watching the app's memberships");
        self.apps.insert(
            app.clone(),
            AppWatch {
                linked_channels: 1,
                nodes: HashSet::new(),
                _token: token,
                _node_tokens: node_tokens,
                _roster: roster,
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

    async fn on_remote(&mut self, msg: FromZenoh) {
        match msg {
            FromZenoh::Message {
                channel,
                payload,
                origin,
            } => self.on_message(channel, &payload, origin),
            FromZenoh::NodeToken { key, alive } => self.on_node_token(&key, alive).await,
            FromZenoh::Roster { key, payload } => self.on_roster(&key, &payload),
            FromZenoh::RosterQuery { app, query } => self.on_roster_query(&app, &query).await,
            FromZenoh::Check { channel, member } => self.on_check(channel, &member),
            FromZenoh::RosterQueryOver { ask, replies } => self.on_roster_query_over(ask, replies),
            FromZenoh::AskAgain(ask) => {
                if self.has_someone_to_ask(&ask) {
                    debug!(app = %ask.app, selector = %ask.selector, attempt = ask.attempt, "mesh: asking for rosters again");
                    self.ask_rosters(ask).await;
                }
            }
        }
    }

    fn on_message(&mut self, id: ChannelId, payload: &[u8], origin: Origin) {
        if !self.channels.contains_key(&id) {
            return; // unsubscribed meanwhile
        }
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
            Ok(m) if m.channel == &*id.1 => m,
            other => {
                debug!(app = %id.0, channel = %id.1, result = ?other.err(), "mesh: invalid sample dropped");
                self.stats.count_drop(DropReason::MeshInvalid);
                let why = format!("mesh_invalid: undecodable sample in {}", id.1);
                self.stats.console.error("mesh_refused", Some(&*id.0), why);
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
            if let Some(mesh) = relayed.mesh {
                self.stats.console.observe_hop(mesh, hop_us);
            }
        }
        if relayed.kind == Kind::Control(Op::ChannelJoin) && origin.sid.is_none() {
            debug!(app = %id.0, channel = %id.1, "mesh: channel_join without a node's sid dropped");
            self.stats.count_drop(DropReason::MeshInvalid);
            tracing::info!(target: "otel", reason = DropReason::MeshInvalid.as_str(), "dropped");
            return;
        }
        let member = match self.sender(&id, relayed.mesh, origin.sid, relayed.kind) {
            Ok(member) => member,
            Err(reason) => {
                debug!(app = %id.0, channel = %id.1, peer = relayed.peer, mesh = ?relayed.mesh, sid = ?origin.sid, reason = reason.as_str(), "mesh: sample refused");
                let why = format!(
                    "{}: {} in {} from node {:?}",
                    reason.as_str(),
                    relayed.peer,
                    id.1,
                    relayed.mesh.unwrap_or("-")
                );
                self.stats.console.error("mesh_refused", Some(&*id.0), why);
                self.stats.count_drop(reason);
                tracing::info!(target: "otel", reason = reason.as_str(), "dropped");
                return;
            }
        };
        let Some(link) = self.channels.get_mut(&id) else {
            return;
        };
        if relayed.kind == Kind::Control(Op::ChannelJoin) {
            // A node announcing a member: for this bridge, never for browsers.
            let Some((mesh, sid)) = member else {
                return; // no sid: refused above
            };
            let joined = Membership {
                sid,
                client_id: relayed.peer.to_owned(),
            };
            self.member_alive(&id, mesh.to_owned(), joined);
            return;
        }
        // Re-encoded: whatever a backend sent, browsers get a clean map.
        let bytes = Bytes::from(protocol::encode(&relayed));
        let mut missed_announcement = None;
        let mut repeated_online = false;
        if let Some((mesh, sid)) = member {
            let who = (mesh.to_owned(), sid);
            if relayed.kind == Kind::Control(Op::PeerOffline) {
                // A node's leave: delivered below like any message, unless
                // its node's token went first (declarations can overtake
                // data) and said so already. One of a member never known
                // here is delivered: the browsers may know it from its own
                // messages.
                // Per user: the local members hear of it only with the
                // user's last connection ([`Hub::remote_left`]).
                if link.remove_remote(&who).is_some() {
                    self.stats.mesh.remote_member_gone();
                    self.stats.mesh.received.fetch_add(1, Relaxed);
                    let sender = (relayed.peer, mesh);
                    self.hub
                        .remote_left(&id.0, &id.1, sender, Why::Left, &bytes);
                    return;
                } else if link.gone.remove(&who).is_some() {
                    debug!(app = %id.0, channel = %id.1, peer = relayed.peer, %mesh, "mesh: leave of a member already offline");
                    return;
                } else if self.hub.is_present(&id.0, &id.1, relayed.peer) {
                    debug!(app = %id.0, channel = %id.1, peer = relayed.peer, %mesh, "mesh: leave of an unknown connection of a present user");
                    return;
                }
            } else if let Some(remote) = link.remote.get_mut(&who) {
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
                    missed_announcement = Some((mesh, sid));
                }
                remote.heard = true;
                if relayed.kind == Kind::Control(Op::PeerState) {
                    remote.last_state = Some(bytes.clone());
                }
                if relayed.kind == Kind::Control(Op::PeerOnline) {
                    repeated_online = !std::mem::take(&mut remote.announce);
                }
            } else if relayed.kind == Kind::Control(Op::PeerOnline) {
                // Its join is not known here yet (data can overtake it).
                repeated_online = self.hub.is_present(&id.0, &id.1, relayed.peer);
            }
        }
        if let Some((mesh, sid)) = missed_announcement {
            debug!(app = %id.0, channel = %id.1, peer = relayed.peer, %mesh, "mesh: new remote member's announcement missed; asking local members to announce");
            self.announce(&id, relayed.peer, (mesh, sid));
        }
        if repeated_online {
            debug!(app = %id.0, channel = %id.1, peer = relayed.peer, "mesh: peer_online of a present user; answering for the local members");
            self.stats.mesh.received.fetch_add(1, Relaxed);
            self.hub.republish_states(&id.0, &id.1);
            return;
        }
        self.stats.mesh.received.fetch_add(1, Relaxed);
        let deliver = tracing::info_span!(target: "otel", "deliver", delivered = tracing::field::Empty, dropped_slow = tracing::field::Empty);
        let delivery =
            deliver.in_scope(|| self.hub.deliver_remote(&id.0, &id.1, &bytes, relayed.kind));
        deliver.record("delivered", delivery.sent);
        deliver.record("dropped_slow", delivery.dropped);
        self.stats.console.app(&id.0).count_out(delivery.sent);
        let from = (relayed.peer, relayed.mesh.unwrap_or(""));
        crate::console::tap(&self.stats, &id.0, &id.1, from, relayed.kind, &bytes);
    }

    /// Who a sample says it comes from, if that can be so: `Some((mesh_id,
    /// sid))` for a member of another node, `None` for a backend. The second
    /// wall behind the mesh's ACLs (`mesh/README.md`, threat model), which
    /// holds without them: a sid (a node's member) needs the node's
    /// `mesh_id` beside it, not this node's own, and that node's live token
    /// of the app, or the member known from when it was live; presence
    /// (`op`) only ever comes from a node's member. The token alone does not
    /// prove the sender is that node; zenoh's authentication and ACLs do.
    fn sender<'a>(
        &self,
        id: &ChannelId,
        mesh: Option<&'a str>,
        sid: Option<u64>,
        kind: Kind,
    ) -> Result<Option<(&'a str, u64)>, DropReason> {
        let (mesh, sid) = match (mesh, sid) {
            (Some(mesh), Some(sid)) => (mesh, sid),
            (None, None) if kind == Kind::Data => return Ok(None),
            // A sid without its node, a node without a sid, or presence
            // from a backend.
            _ => return Err(DropReason::MeshForged),
        };
        if mesh == self.mesh_id {
            return Err(DropReason::MeshForged);
        }
        let who = (mesh.to_owned(), sid);
        let link = self.channels.get(id);
        let live = self
            .apps
            .get(&id.0)
            .is_some_and(|w| w.nodes.contains(mesh))
            || link.is_some_and(|l| l.remote.contains_key(&who))
            // A leave overtaken by its node's token going: known, dropped quietly later.
            || (kind == Kind::Control(Op::PeerOffline)
                && link.is_some_and(|l| l.gone.contains_key(&who)));
        if live {
            Ok(Some((mesh, sid)))
        } else {
            Err(DropReason::MeshNoToken)
        }
    }

    /// A remote member whose token appeared a grace period ago and from
    /// whom nothing arrived: its `peer_online` (and our members' answers) can
    /// have been lost, if both nodes subscribed to the channel within the
    /// time a subscription takes to cross (zenoh routes a publication only to
    /// the subscribers its node already knows). Deliver `peer_online` on its
    /// behalf: the local browsers answer with their state, which now reaches
    /// it. The other node does the same for ours, so both sides converge.
    fn on_check(&mut self, id: ChannelId, member: &RemoteMember) {
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
        self.announce(&id, &member.client_id, (&member.mesh_id, member.sid));
    }

    /// Makes the local members' states reach a new remote member: a user's
    /// first connection is announced to them (`peer_online` on its behalf;
    /// they answer with their state), another one of a present user is
    /// answered by the node for them ([`Hub::republish_states`]).
    fn announce(&mut self, id: &ChannelId, client_id: &str, (mesh_id, sid): (&str, u64)) {
        let first = self
            .channels
            .get_mut(id)
            .and_then(|link| link.remote.get_mut(&(mesh_id.to_owned(), sid)))
            .is_some_and(|remote| std::mem::take(&mut remote.announce));
        if first {
            deliver_presence(&self.hub, id, Op::PeerOnline, client_id, mesh_id);
        } else {
            self.hub.republish_states(&id.0, &id.1);
        }
    }

    /// The linked channel and the other node a membership key names; `None`
    /// for this node's own keys and for channels without local members.
    fn remote_node(&self, key: &str) -> Option<(ChannelId, String)> {
        let Some(place) = keys::parse_members_key(key) else {
            debug!(%key, "mesh: not a membership key");
            return None;
        };
        if place.mesh_id == self.mesh_id {
            return None;
        }
        let id: ChannelId = (place.app.as_str().into(), place.channel.as_str().into());
        self.channels
            .contains_key(&id)
            .then_some((id, place.mesh_id))
    }

    /// A node's token of an app appeared (it is new to the app, already
    /// there when the watch began, or back after a partition): ask it for its
    /// rosters of the app's channels. It went away: every member of that node
    /// is offline.
    async fn on_node_token(&mut self, key: &str, alive: bool) {
        let Some((app, mesh_id)) = keys::parse_node_token(key) else {
            debug!(%key, "mesh: not a node token");
            return;
        };
        if mesh_id == self.mesh_id {
            return;
        }
        let Some(watch) = self.apps.get_mut(app.as_str()) else {
            return;
        };
        if alive {
            watch.nodes.insert(mesh_id.clone());
            let selector = keys::node_members_of_app(&app, &mesh_id);
            self.ask_rosters(RosterAsk {
                app: app.into(),
                selector,
                node: Some(mesh_id),
                attempt: 0,
            })
            .await;
            return;
        }
        watch.nodes.remove(&mesh_id);
        let now = Instant::now();
        let mut offline = Vec::new();
        for (id, link) in self.channels.iter_mut().filter(|((a, _), _)| **a == *app) {
            let cut: Vec<_> = link
                .remote
                .keys()
                .filter(|(mesh, _)| *mesh == mesh_id)
                .cloned()
                .collect();
            for who in cut {
                if let Some(remote) = link.remove_remote(&who) {
                    offline.push((id.clone(), remote.client_id.clone()));
                    link.gone.insert(who, (remote, now));
                }
            }
        }
        debug!(%app, mesh = %mesh_id, members = offline.len(), "mesh: node left the app");
        for (id, client_id) in offline {
            self.offline(&id, &client_id, &mesh_id);
        }
    }

    fn on_roster(&mut self, key: &str, payload: &[u8]) {
        let Some((id, mesh_id)) = self.remote_node(key) else {
            return;
        };
        // A node's rosters come with its token; its token's arrival asks
        // again, so nothing of a live node is lost by waiting for it.
        if !self
            .apps
            .get(&id.0)
            .is_some_and(|w| w.nodes.contains(&mesh_id))
        {
            debug!(%key, "mesh: roster of a node without a live token refused");
            self.stats.count_drop(DropReason::MeshNoToken);
            return;
        }
        match membership::decode_roster(payload) {
            Ok(members) => {
                for m in members {
                    self.member_alive(&id, mesh_id.clone(), m);
                }
            }
            Err(e) => {
                debug!(%key, error = %e, "mesh: invalid roster dropped");
                self.stats.count_drop(DropReason::MeshInvalid);
            }
        }
    }

    /// Answers with this node's members of the app's channels the query's
    /// key matches, one reply per channel, from this task: a reply is never
    /// older than a join or leave published before it.
    async fn on_roster_query(&self, app: &Arc<str>, query: &Query) {
        let wanted = query.key_expr();
        let answer = |channel: &Arc<str>, link: &ChannelLink| {
            let key = keys::members_key(app, channel, &self.mesh_id);
            let matches = zenoh::key_expr::KeyExpr::try_from(key.as_str())
                .is_ok_and(|k| wanted.intersects(&k));
            matches.then(|| {
                let roster =
                    membership::encode_roster(link.local.iter().map(|(sid, p)| (*sid, &**p)));
                (key, roster)
            })
        };
        let replies: Vec<_> = match keys::concrete_channel(wanted.as_str()) {
            Some(channel) => {
                let id: ChannelId = (app.clone(), channel.as_str().into());
                self.channels
                    .get(&id)
                    .and_then(|link| answer(&id.1, link))
                    .into_iter()
                    .collect()
            }
            None => self
                .channels
                .iter()
                .filter(|((a, _), _)| a == app)
                .filter_map(|((_, c), link)| answer(c, link))
                .collect(),
        };
        for (key, roster) in replies {
            if let Err(e) = query.reply(key, roster).await {
                debug!(error = %e, "mesh: roster reply failed");
            }
        }
    }

    /// A remote member, from a join or a roster. One that comes back after
    /// its node's token went away (a partition healed) is announced again
    /// with its last state; a new one gets the presence check.
    fn member_alive(&mut self, id: &ChannelId, mesh_id: String, m: Membership) {
        let Some(link) = self.channels.get_mut(id) else {
            return;
        };
        let who = (mesh_id, m.sid);
        if link.remote.contains_key(&who) {
            return;
        }
        let cap = (self.limits)(&id.0).unwrap_or_default().max_members;
        if cap != 0 && link.per_node.get(&who.0).copied().unwrap_or(0) >= cap {
            debug!(app = %id.0, channel = %id.1, mesh = %who.0, cap, "mesh: remote member over the app's member cap refused");
            self.stats.count_drop(DropReason::MeshMemberCap);
            return;
        }
        let now = Instant::now();
        link.gone
            .retain(|_, (_, since)| now.duration_since(*since) < GONE_MEMORY);
        let healed = link.gone.remove(&who);
        let member = RemoteMember {
            mesh_id: who.0.clone(),
            sid: m.sid,
            client_id: m.client_id,
        };
        debug!(app = %id.0, channel = %id.1, peer = %member.client_id, mesh = %member.mesh_id, healed = healed.is_some(), "mesh: remote member");
        let last_state = healed.as_ref().and_then(|(r, _)| r.last_state.clone());
        self.stats.mesh.remote_members.fetch_add(1, Relaxed);
        let arrival = self
            .hub
            .remote_joined(&id.0, &id.1, &member.client_id, &member.mesh_id);
        let first = arrival == Arrival::First;
        link.insert_remote(
            who,
            Remote {
                client_id: member.client_id.clone(),
                last_state: last_state.clone(),
                heard: healed.is_some(),
                announce: first && healed.is_none(),
            },
        );
        if healed.is_some() {
            // Back after a partition: tell the local members again, unless
            // they never heard the user go (connected elsewhere too).
            info!(app = %id.0, channel = %id.1, peer = %member.client_id, mesh = %member.mesh_id, "mesh: peer back after a partition");
            if first {
                deliver_presence(
                    &self.hub,
                    id,
                    Op::PeerOnline,
                    &member.client_id,
                    &member.mesh_id,
                );
            }
            if let Some(state) = last_state {
                self.hub
                    .deliver_remote(&id.0, &id.1, &state, Kind::Control(Op::PeerState));
            }
        } else if let Some(grace) = self.presence_check {
            let (tx, channel) = (self.control_tx.clone(), id.clone());
            tokio::spawn(async move {
                tokio::time::sleep(grace).await;
                let _ = tx.send(FromZenoh::Check { channel, member });
            });
        }
    }

    /// A remote member's node is gone: a `peer_offline` for the local
    /// members, at once, if that was its user's last connection.
    fn offline(&self, id: &ChannelId, client_id: &str, mesh_id: &str) {
        self.stats.mesh.remote_member_gone();
        let op = Op::PeerOffline;
        let msg = Bytes::from(protocol::encode_control(op, &id.1, client_id, mesh_id));
        let who = (client_id, mesh_id);
        self.hub.remote_left(&id.0, &id.1, who, Why::NodeGone, &msg);
    }
}

/// Delivers a node-made presence message (`op` on behalf of the remote
/// member `client_id` of node `mesh_id`) to the channel's local members.
fn deliver_presence(hub: &Hub, id: &ChannelId, op: Op, client_id: &str, mesh_id: &str) {
    let msg = Bytes::from(protocol::encode_control(op, &id.1, client_id, mesh_id));
    hub.deliver_remote(&id.0, &id.1, &msg, Kind::Control(op));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_beyond_loopback_needs_authentication_or_the_opt_out() {
        let with = |listen: &[&str], extra: &[(&str, &str)], allow: bool| {
            let mut config = zenoh_config(&MeshSettings {
                allow_unauthenticated: true,
                ..MeshSettings::default()
            })
            .unwrap();
            let list = serde_json::to_string(listen).unwrap();
            config.insert_json5("listen/endpoints", &list).unwrap();
            for (key, value) in extra {
                config.insert_json5(key, value).unwrap();
            }
            check_authenticated(&config, allow)
        };
        // The embedded default listens nowhere; loopback and sockets are local.
        assert!(zenoh_config(&MeshSettings::default()).is_ok());
        for local in [
            "tcp/127.0.0.1:7447",
            "tcp/127.0.0.13:7447",
            "tcp/[::1]:7447",
            "tcp/localhost:7447",
            "udp/127.0.0.1:7447#iface=lo",
            "unixsock-stream//tmp/z.sock",
        ] {
            assert!(with(&[local], &[], false).is_ok(), "{local}");
        }
        let err = with(&["tcp/127.0.0.1:1", "tcp/0.0.0.0:7447"], &[], false).unwrap_err();
        assert!(
            matches!(&err, MeshError::Unauthenticated { endpoint } if endpoint == "tcp/0.0.0.0:7447"),
            "{err}"
        );
        assert!(err.to_string().contains("MESH_ALLOW_UNAUTHENTICATED"));
        assert!(with(&["tcp/10.0.0.1:7447"], &[], true).is_ok(), "opt-out");
        let mtls = [("transport/link/tls/enable_mtls", "true")];
        assert!(with(&["tls/0.0.0.0:7447"], &mtls, false).is_ok());
        assert!(with(&["quic/[::]:7447"], &mtls, false).is_ok());
        assert!(
            with(&["tls/0.0.0.0:7447"], &[], false).is_err(),
            "TLS without client certificates"
        );
        assert!(
            with(&["tcp/0.0.0.0:7447"], &mtls, false).is_err(),
            "mTLS does not cover tcp/"
        );
        let usrpwd = [(
            "transport/auth/usrpwd/dictionary_file",
            r#""/etc/zenoh/users""#,
        )];
        assert!(with(&["tcp/0.0.0.0:7447"], &usrpwd, false).is_ok());
        // A listener zenoh will not open (outside link/protocols) accepts nobody.
        let tls_only = [("transport/link/protocols", r#"["tls"]"#)];
        assert!(with(&["tcp/0.0.0.0:7447"], &tls_only, false).is_ok());
        assert!(with(&["tls/0.0.0.0:7447"], &tls_only, false).is_err());
        // A file without listen endpoints: zenoh's own default, every interface.
        let dir = std::env::temp_dir().join(format!("prscd-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("peer.json5");
        std::fs::write(&file, r#"{ mode: "peer" }"#).unwrap();
        let from_file = |allow| {
            zenoh_config(&MeshSettings {
                config_file: Some(file.clone()),
                allow_unauthenticated: allow,
                ..MeshSettings::default()
            })
        };
        assert!(matches!(
            from_file(false),
            Err(MeshError::Unauthenticated { .. })
        ));
        assert!(from_file(true).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
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

    #[test]
    fn the_embedded_default_listens_nowhere_with_a_two_second_lease() {
        let config = zenoh_config(&MeshSettings::default()).unwrap();
        let get = |key: &str| config.get_json(key).unwrap();
        assert_eq!(get("mode"), r#""peer""#);
        assert_eq!(get("listen/endpoints"), "[]");
        assert_eq!(get("scouting/multicast/enabled"), "false");
        assert_eq!(get("transport/link/tx/lease"), "2000");
        assert_eq!(get("transport/unicast/open_timeout"), "2000");
        assert_eq!(get("connect/timeout_ms"), "-1");
    }
}
