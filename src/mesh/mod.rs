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
//! In: a sample on a joined channel's key is checked, dropped if its node's
//! stamp says it came already or late ([`dedup`]), re-encoded without
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
//! (`Links::sender`): a member of a node needs that node's live token, a
//! roster too, and one node's members of a channel stay within the app's
//! cap. What zenoh hands over waits in a bounded queue (`Inbound`).
//!
//! What to do about each of these is decided in [`links`], without zenoh;
//! this module owns the session and its declarations and runs what the
//! links decide. The hub never waits for zenoh: events cross an unbounded, ordered queue
//! whose publish backlog is capped by the hub. The mesh knows nothing of
//! sockets; transports know nothing of zenoh. Key expressions: [`keys`].

pub mod admin;
pub(crate) mod dedup;
mod links;
pub use prscd_wire::mesh::{keys, membership, Origin};

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

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
use crate::stats::{DropReason, Stats};
use crate::telemetry;
use dedup::Stamper;
use links::{Action, ChannelId, Event, Links, RosterAsk};
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

/// How long a roster query waits for its replies. zenoh's default (10 s)
/// holds a query whose reply was lost on a link that went down, and with
/// it the next attempt; a roster crosses the WAN in well under a second.
const ROSTER_TIMEOUT: Duration = Duration::from_secs(3);

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
            links: Links::new(hub, limits, settings.presence_check),
            stats: stats.clone(),
            backlog,
            inbound: Inbound {
                tx: inbound_tx,
                stats: stats.clone(),
            },
            control_tx,
            stamper: Stamper::new(incarnation()),
            subscribers: HashMap::new(),
            watches: HashMap::new(),
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

/// This run's incarnation: random, so a restarted node's numbers are new.
fn incarnation() -> u64 {
    use ring::rand::SecureRandom as _;
    let mut bytes = [0u8; 8];
    let _ = ring::rand::SystemRandom::new().fill(&mut bytes);
    u64::from_le_bytes(bytes)
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

/// What zenoh's callbacks hand the bridge through the bounded queue
/// ([`Inbound`]): samples and rosters, which anyone on the mesh can send at
/// any rate, for [`Links`]; and other sessions' roster queries, which the
/// bridge answers. Node tokens, the ends of roster queries and the timers
/// cross an unbounded queue, taken first: dropping a token's coming or going
/// would leave ghosts or miss a node.
enum FromZenoh {
    Event(Event),
    /// Another session asks for this node's members in the app's channels.
    RosterQuery {
        app: Arc<str>,
        query: Query,
    },
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
    control: mpsc::UnboundedSender<Event>,
    ask: Option<RosterAsk>,
    replies: AtomicUsize,
}

impl Drop for QueryOver {
    fn drop(&mut self) {
        if let Some(ask) = self.ask.take() {
            let replies = self.replies.load(Relaxed);
            let _ = self.control.send(Event::RosterQueryOver { ask, replies });
        }
    }
}

/// The task between the hub, zenoh and [`Links`]: it publishes the local
/// messages, turns zenoh's callbacks into events, and runs what the links
/// decide with the zenoh declarations it owns.
struct Bridge {
    session: Session,
    mesh_id: String,
    links: Links,
    stats: Arc<Stats>,
    backlog: Arc<AtomicUsize>,
    inbound: Inbound,
    control_tx: mpsc::UnboundedSender<Event>,
    /// Numbers this node's publications ([`dedup`]).
    stamper: Stamper,
    /// One subscriber per linked channel.
    subscribers: HashMap<ChannelId, Subscriber<()>>,
    /// One membership watch per app with linked channels (see [`AppWatch`]).
    watches: HashMap<Arc<str>, AppWatch>,
}

/// While at least one of an app's channels is linked: this node's token for
/// the app, one liveliness subscriber for the other nodes' tokens, and the
/// queryable that answers with this node's rosters. Per app rather than per
/// channel or per membership: in zenoh 1.10 a declaration costs time linear
/// in the node's key space, while a publication on a key this node
/// subscribes to is cheap (BENCHMARKS-HISTORY.md, fixes 8 and 16).
struct AppWatch {
    _token: LivelinessToken,
    _node_tokens: Subscriber<()>,
    _roster: Queryable<()>,
}

impl Bridge {
    async fn run(
        mut self,
        mut events: mpsc::UnboundedReceiver<MeshEvent>,
        mut control: mpsc::UnboundedReceiver<Event>,
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
                Some(event) = control.recv() => self.apply(event).await,
                Some(msg) = inbound.recv() => match msg {
                    FromZenoh::Event(event) => self.apply(event).await,
                    FromZenoh::RosterQuery { app, query } => self.on_roster_query(&app, &query).await,
                },
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
                let channel = (app, channel);
                self.apply(Event::Joined {
                    channel,
                    sid,
                    client_id,
                })
                .await
            }
            MeshEvent::Left { app, channel, sid } => {
                let channel = (app, channel);
                self.apply(Event::Left { channel, sid }).await
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

    /// Hands an event to the links and runs their actions in order. A
    /// channel that cannot be linked is handed back ([`Event::LinkFailed`])
    /// and the rest of its actions are not run.
    async fn apply(&mut self, event: Event) {
        let mut actions = self.links.handle(event, Instant::now()).into_iter();
        while let Some(action) = actions.next() {
            if let Err((channel, e)) = self.run_action(action).await {
                warn!(app = %channel.0, channel = %channel.1, error = %e, "mesh: cannot subscribe to channel");
                let undo = self
                    .links
                    .handle(Event::LinkFailed(channel), Instant::now());
                actions = undo.into_iter();
            }
        }
    }

    async fn run_action(&mut self, action: Action) -> Result<(), (ChannelId, zenoh::Error)> {
        match action {
            Action::Subscribe(channel) => match self.subscribe(&channel).await {
                Ok(subscriber) => {
                    self.subscribers.insert(channel, subscriber);
                }
                Err(e) => return Err((channel, e)),
            },
            Action::Unsubscribe(channel) => {
                self.subscribers.remove(&channel);
            }
            Action::WatchApp(channel) => match self.watch(&channel.0).await {
                Ok(watch) => {
                    self.watches.insert(channel.0.clone(), watch);
                }
                Err(e) => return Err((channel, e)),
            },
            Action::UnwatchApp(app) => {
                self.watches.remove(&app);
            }
            Action::Publish { channel, sid, msg } => {
                self.publish_membership(&channel, sid, msg).await
            }
            Action::AskRosters(ask) => self.ask_rosters(ask).await,
            Action::After(delay, timer) => {
                let tx = self.control_tx.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let _ = tx.send(Event::Timer(timer));
                });
            }
        }
        Ok(())
    }

    /// Subscribes to a channel's messages (from other sessions only).
    async fn subscribe(&self, id: &ChannelId) -> zenoh::Result<Subscriber<()>> {
        let inbound = self.inbound.clone();
        let channel = id.clone();
        let subscriber = self
            .session
            .declare_subscriber(keys::channel_key(&id.0, &id.1))
            .allowed_origin(Locality::Remote)
            .callback(move |sample| {
                let origin = sample
                    .attachment()
                    .map(|a| Origin::decode(&a.to_bytes()))
                    .unwrap_or_default();
                inbound.offer(FromZenoh::Event(Event::Sample {
                    channel: channel.clone(),
                    payload: sample.payload().to_bytes().into_owned(),
                    origin,
                }));
            })
            .await?;
        debug!(app = %id.0, channel = %id.1, "mesh: subscribed to channel");
        Ok(subscriber)
    }

    /// Watches an app's memberships (see [`AppWatch`]).
    async fn watch(&self, app: &Arc<str>) -> zenoh::Result<AppWatch> {
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
                let _ = tx.send(Event::NodeToken {
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
        Ok(AppWatch {
            _token: token,
            _node_tokens: node_tokens,
            _roster: roster,
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
            stamp: Some(self.stamper.next()),
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
    /// (see [`Links`]).
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
            .timeout(ROSTER_TIMEOUT)
            .callback(move |reply| {
                if let Ok(sample) = reply.result() {
                    over.replies.fetch_add(1, Relaxed);
                    over.inbound.offer(FromZenoh::Event(Event::Roster {
                        key: sample.key_expr().as_str().to_owned(),
                        payload: sample.payload().to_bytes().into_owned(),
                    }));
                }
            });
        if let Err(e) = query.await {
            warn!(app = %ask.app, selector = %ask.selector, error = %e, "mesh: cannot ask for rosters");
        }
    }

    /// Answers with this node's members of the app's channels the query's
    /// key matches, one reply per channel, from this task: a reply is never
    /// older than a join or leave published before it.
    async fn on_roster_query(&self, app: &Arc<str>, query: &Query) {
        let wanted = query.key_expr();
        let members: Vec<_> = match keys::concrete_channel(wanted.as_str()) {
            Some(channel) => self
                .links
                .local_members_of(app, &channel)
                .into_iter()
                .collect(),
            None => self.links.local_members(app).collect(),
        };
        let replies: Vec<_> = members
            .into_iter()
            .filter_map(|(channel, local)| {
                let key = keys::members_key(app, channel, &self.mesh_id);
                let matches = zenoh::key_expr::KeyExpr::try_from(key.as_str())
                    .is_ok_and(|k| wanted.intersects(&k));
                matches.then(|| {
                    let roster =
                        membership::encode_roster(local.iter().map(|(sid, p)| (*sid, &**p)));
                    (key, roster)
                })
            })
            .collect();
        for (key, roster) in replies {
            if let Err(e) = query.reply(key, roster).await {
                debug!(error = %e, "mesh: roster reply failed");
            }
        }
    }
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
