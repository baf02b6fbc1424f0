//! The operator's console (README, "Console"): one page on the admin port
//! (`METRICS_PORT`) showing the mesh, each app's traffic, a channel
//! inspector and recent errors, live.
//!
//! This module gathers and shapes the data; [`http`] only routes and
//! writes. Who looks decides what is shown ([`Viewer`]): the admin token
//! (`ADMIN_TOKEN`) sees everything, an app's API key only its own app, and
//! never the node-wide counters, which mix every app.
//!
//! The mesh view comes from every node's [`NodeSummary`], asked over zenoh
//! (`prscd/@console/<mesh_id>`) at most once a second whoever watches, and
//! the liveness of nodes and links zenoh reports. Lists are paged and
//! searched here, so a node with 10,000 channels sends a page, not all.

pub mod http;
pub mod recorder;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::apps::Apps;
use crate::hub::Hub;
use crate::mesh::admin::MeshAdmin;
use crate::protocol::Kind;
use crate::stats::{DropReason, Stats, Transport};

pub use recorder::{AppTraffic, Recorder, Sample};

/// How long the other nodes have to answer for one snapshot.
pub const MESH_ASK_TIMEOUT: Duration = Duration::from_millis(700);
/// A mesh view younger than this is reused by every viewer.
const MESH_VIEW_TTL: Duration = Duration::from_millis(900);
/// How long a node that went stays listed as down.
const DOWN_KEPT: Duration = Duration::from_secs(600);
/// Largest page of any list.
pub const MAX_PAGE: usize = 200;
/// Longest rendering of one state or payload, in bytes of JSON.
const MAX_VALUE_JSON: usize = 2_048;

/// Who is looking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Viewer {
    /// `ADMIN_TOKEN`: every app and the node-wide counters.
    Admin,
    /// An app's API key: that app only.
    App(String),
}

impl Viewer {
    pub fn sees(&self, app: &str) -> bool {
        match self {
            Viewer::Admin => true,
            Viewer::App(mine) => mine == app,
        }
    }

    fn label(&self) -> String {
        match self {
            Viewer::Admin => "admin".into(),
            Viewer::App(app) => format!("app:{app}"),
        }
    }
}

/// The viewer a bearer token makes, if any: the admin token, or one app's
/// API key. Both compared in constant time.
pub fn viewer(admin_token: &str, apps: &Apps, authorization: Option<&str>) -> Option<Viewer> {
    use subtle::ConstantTimeEq as _;
    let given = authorization?.strip_prefix("Bearer ")?.trim();
    if given.is_empty() {
        return None;
    }
    if bool::from(given.as_bytes().ct_eq(admin_token.as_bytes())) {
        return Some(Viewer::Admin);
    }
    apps.iter()
        .find(|app| app.api_key_matches(given))
        .map(|app| Viewer::App(app.id.to_string()))
}

/// Open connections by transport.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transports {
    pub websocket: u64,
    pub webtransport: u64,
}

impl Transports {
    fn add(&mut self, other: &Transports) {
        self.websocket += other.websocket;
        self.webtransport += other.webtransport;
    }
}

/// One app on one node.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AppSummary {
    pub app: String,
    pub connections: Transports,
    pub channels: u64,
    /// Channel memberships of the node's connections.
    pub members: u64,
    /// Distinct user ids among the node's connections.
    pub users: u64,
    /// Client messages received, and copies queued for members.
    pub messages_in: u64,
    pub messages_out: u64,
    pub bytes_in: u64,
    /// Drops the node can tie to the app, by reason (non-zero only).
    pub dropped: BTreeMap<String, u64>,
    pub slow_readers: u64,
}

/// Hop times of mesh messages from one node, measured on arrival.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hop {
    pub from: String,
    pub p50_us: u32,
    pub p99_us: u32,
    pub samples: usize,
}

/// What one node tells the console about itself; also what nodes exchange
/// over zenoh (`prscd/@console/<mesh_id>`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct NodeSummary {
    pub mesh_id: String,
    pub zid: String,
    pub version: String,
    pub draining: bool,
    pub uptime_s: u64,
    pub connections: Transports,
    pub apps: Vec<AppSummary>,
    /// `/health`'s counters: node-wide, every app mixed (admin only).
    pub counters: Value,
    pub hops: Vec<Hop>,
}

impl NodeSummary {
    pub fn of(hub: &Hub, zid: &str) -> NodeSummary {
        let stats = hub.stats();
        let mut apps: BTreeMap<String, AppSummary> = BTreeMap::new();
        for counts in hub.console_apps() {
            let a = apps.entry(counts.app.to_string()).or_default();
            a.connections = Transports {
                websocket: counts.connections[Transport::WebSocket as usize] as u64,
                webtransport: counts.connections[Transport::WebTransport as usize] as u64,
            };
            a.channels = counts.channels as u64;
            a.members = counts.members as u64;
            a.users = counts.users as u64;
        }
        for (app, traffic) in stats.console.apps() {
            let a = apps.entry(app.to_string()).or_default();
            fill_traffic(a, &traffic);
        }
        let apps: Vec<AppSummary> = apps
            .into_iter()
            .map(|(app, mut a)| {
                a.app = app;
                a
            })
            .collect();
        NodeSummary {
            mesh_id: hub.mesh_id().to_owned(),
            zid: zid.to_owned(),
            version: crate::transport::VERSION.to_owned(),
            draining: hub.is_draining(),
            uptime_s: stats.console.uptime().as_secs(),
            connections: sum_connections(&apps),
            apps,
            counters: stats.to_json(),
            hops: stats
                .console
                .hop_percentiles()
                .into_iter()
                .map(|(from, p50_us, p99_us, samples)| Hop {
                    from,
                    p50_us,
                    p99_us,
                    samples,
                })
                .collect(),
        }
    }

    /// What `viewer` may see of it: an app's key sees its app only, and
    /// neither node-wide counters nor connection totals.
    pub fn for_viewer(mut self, viewer: &Viewer) -> NodeSummary {
        if let Viewer::App(_) = viewer {
            self.apps.retain(|a| viewer.sees(&a.app));
            self.counters = Value::Null;
            self.connections = sum_connections(&self.apps);
        }
        self
    }
}

fn sum_connections(apps: &[AppSummary]) -> Transports {
    apps.iter().fold(Transports::default(), |mut t, a| {
        t.add(&a.connections);
        t
    })
}

fn fill_traffic(a: &mut AppSummary, t: &AppTraffic) {
    use std::sync::atomic::Ordering::Relaxed;
    a.messages_in = t.messages_in.load(Relaxed);
    a.messages_out = t.messages_out.load(Relaxed);
    a.bytes_in = t.bytes_in.load(Relaxed);
    a.dropped = DropReason::ALL
        .iter()
        .map(|r| (r.as_str().to_owned(), t.drops(*r)))
        .filter(|(_, n)| *n > 0)
        .collect();
    a.slow_readers = t.drops(DropReason::SlowReader);
}

/// Records a relayed message for the channel inspector, if it watches
/// `app/channel`: sender, node, op and size; the bytes only when payloads
/// were asked for. One atomic load when nobody watches.
pub fn tap(stats: &Stats, app: &str, channel: &str, from: (&str, &str), kind: Kind, msg: &Bytes) {
    stats.console.taps.observe(app, channel, |payloads| Sample {
        time_ms: crate::clock::unix_ms(),
        from: from.0.to_owned(),
        mesh: (!from.1.is_empty()).then(|| from.1.to_owned()),
        op: kind.label(),
        bytes: msg.len(),
        raw: payloads.then(|| msg.clone()),
    });
}

/// A node of the mesh as the console lists it.
#[derive(Debug, Clone, Serialize)]
pub struct NodeRow {
    pub mesh_id: String,
    /// `self`, `up` (answered now), `slow` (did not answer in time, but its
    /// liveness token lives: its last summary is shown) or `down` (gone).
    pub state: &'static str,
    /// `self`, `direct` (a zenoh link to it), `routed` (reached through a
    /// router or another peer) or `lost`.
    pub link: &'static str,
    /// Round trip of its summary over zenoh, this time (ms).
    pub rtt_ms: Option<f64>,
    /// Hop times of its messages arriving here (ms): p50, p99, samples.
    pub hop_p50_ms: Option<f64>,
    pub hop_p99_ms: Option<f64>,
    pub hop_samples: usize,
    pub last_seen_ms: u64,
    pub summary: NodeSummary,
}

/// The whole mesh, before it is cut for a viewer.
#[derive(Debug, Clone, Default)]
pub struct MeshView {
    pub nodes: Vec<NodeRow>,
    /// Zenoh routers this node is linked to (their zenoh ids).
    pub routers: Vec<String>,
    /// Zenoh peers linked to this node that are no prscd node (backends, tools).
    pub other_peers: Vec<String>,
    pub mesh_state: String,
}

/// A node seen once, remembered to show it down after it went.
struct Known {
    summary: NodeSummary,
    last_seen: Instant,
    last_seen_ms: u64,
}

/// The console's state: the admin token, the mesh, the nodes seen.
pub struct Console {
    hub: Arc<Hub>,
    admin_token: Option<String>,
    mesh: OnceLock<MeshAdmin>,
    view: tokio::sync::Mutex<Option<(Instant, MeshView)>>,
    known: Mutex<BTreeMap<String, Known>>,
    /// Event streams open now, to bound them.
    pub streams: std::sync::atomic::AtomicUsize,
}

/// Event streams (SSE) open at once.
pub const MAX_STREAMS: usize = 32;

impl Console {
    pub fn new(hub: Arc<Hub>, admin_token: Option<String>) -> Console {
        hub.stats().console.start();
        Console {
            hub,
            admin_token: admin_token.filter(|t| !t.is_empty()),
            mesh: OnceLock::new(),
            view: tokio::sync::Mutex::new(None),
            known: Mutex::new(BTreeMap::new()),
            streams: Default::default(),
        }
    }

    /// From now on the console shows the other nodes too.
    pub fn attach_mesh(&self, mesh: MeshAdmin) {
        let _ = self.mesh.set(mesh);
    }

    /// Whether the console is served at all (`ADMIN_TOKEN` set).
    pub fn enabled(&self) -> bool {
        self.admin_token.is_some()
    }

    pub fn viewer(&self, apps: &Apps, authorization: Option<&str>) -> Option<Viewer> {
        viewer(self.admin_token.as_deref()?, apps, authorization)
    }

    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// The mesh now, shared by every viewer for [`MESH_VIEW_TTL`].
    pub async fn mesh_view(&self) -> MeshView {
        let mut cached = self.view.lock().await;
        if let Some((at, view)) = cached.as_ref() {
            if at.elapsed() < MESH_VIEW_TTL {
                return view.clone();
            }
        }
        let view = self.gather().await;
        *cached = Some((Instant::now(), view.clone()));
        view
    }

    async fn gather(&self) -> MeshView {
        let zid = self.mesh.get().map(MeshAdmin::zid).unwrap_or_default();
        let own = NodeSummary::of(&self.hub, &zid);
        let (answers, (peers, routers)) = match self.mesh.get() {
            Some(mesh) => {
                let answers = mesh.summaries(MESH_ASK_TIMEOUT).await.unwrap_or_else(|e| {
                    let why = format!("console summary query failed: {e}");
                    self.hub.stats().console.error("mesh", None, why);
                    Vec::new()
                });
                (answers, mesh.neighbours().await)
            }
            None => (Vec::new(), (Vec::new(), Vec::new())),
        };
        let live = self
            .mesh
            .get()
            .map(MeshAdmin::live_nodes)
            .unwrap_or_default();
        let now = (Instant::now(), crate::clock::unix_ms());
        let rows = self.merge_known(own, answers, (peers.as_slice(), &live), now);
        let node_zids: BTreeSet<&str> = rows.iter().map(|r| r.summary.zid.as_str()).collect();
        let other_peers = peers
            .iter()
            .filter(|z| !node_zids.contains(z.as_str()))
            .cloned()
            .collect();
        MeshView {
            nodes: rows,
            routers,
            other_peers,
            mesh_state: self.hub.stats().mesh.state().to_owned(),
        }
    }

    /// This node, the nodes that answered, and those known before that did
    /// not (down), with their links and hop times.
    fn merge_known(
        &self,
        own: NodeSummary,
        answers: Vec<(NodeSummary, Duration)>,
        (direct, live): (&[String], &BTreeSet<String>),
        (now, now_ms): (Instant, u64),
    ) -> Vec<NodeRow> {
        let hops: BTreeMap<String, Hop> = own
            .hops
            .iter()
            .map(|h| (h.from.clone(), h.clone()))
            .collect();
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        let mut rows = Vec::new();
        let mut answered = BTreeSet::new();
        for (summary, rtt) in answers {
            if summary.mesh_id == own.mesh_id || !answered.insert(summary.mesh_id.clone()) {
                continue;
            }
            let link = if direct.contains(&summary.zid) {
                "direct"
            } else {
                "routed"
            };
            known.insert(
                summary.mesh_id.clone(),
                Known {
                    summary: summary.clone(),
                    last_seen: now,
                    last_seen_ms: now_ms,
                },
            );
            rows.push(row(summary, "up", link, Some(rtt), &hops, now_ms));
        }
        known.retain(|_, k| now.duration_since(k.last_seen) < DOWN_KEPT);
        for (mesh_id, k) in known.iter() {
            if answered.contains(mesh_id) {
                continue;
            }
            if live.contains(mesh_id) {
                let summary = k.summary.clone();
                rows.push(row(summary, "slow", "slow", None, &hops, k.last_seen_ms));
            } else {
                let mut summary = k.summary.clone();
                // A node that went holds nothing any more.
                summary.connections = Transports::default();
                summary.apps.clear();
                rows.push(row(summary, "down", "lost", None, &hops, k.last_seen_ms));
            }
        }
        rows.push(row(own, "self", "self", None, &hops, now_ms));
        rows.sort_by(|a, b| a.mesh_id.cmp(&b.mesh_id));
        rows
    }

    /// The snapshot `viewer` gets: the mesh, the apps mesh-wide, this
    /// node's counters (admin) and the recent errors it may see.
    pub async fn snapshot(&self, viewer: &Viewer) -> Value {
        let view = self.mesh_view().await;
        snapshot_for(&view, viewer, &self.hub, crate::clock::unix_ms())
    }
}

fn row(
    summary: NodeSummary,
    state: &'static str,
    link: &'static str,
    rtt: Option<Duration>,
    hops: &BTreeMap<String, Hop>,
    last_seen_ms: u64,
) -> NodeRow {
    let hop = hops.get(&summary.mesh_id);
    NodeRow {
        mesh_id: summary.mesh_id.clone(),
        state,
        link,
        rtt_ms: rtt.map(|d| d.as_secs_f64() * 1e3),
        hop_p50_ms: hop.map(|h| h.p50_us as f64 / 1e3),
        hop_p99_ms: hop.map(|h| h.p99_us as f64 / 1e3),
        hop_samples: hop.map_or(0, |h| h.samples),
        last_seen_ms,
        summary,
    }
}

/// Cuts a mesh view for `viewer` (pure, so it is tested without a mesh).
pub fn snapshot_for(view: &MeshView, viewer: &Viewer, hub: &Hub, now_ms: u64) -> Value {
    let admin = *viewer == Viewer::Admin;
    let nodes: Vec<Value> = view
        .nodes
        .iter()
        .map(|n| {
            let s = n.summary.clone().for_viewer(viewer);
            let totals = app_totals(&s.apps);
            json!({
                "mesh_id": n.mesh_id,
                "zid": if admin { s.zid.clone() } else { String::new() },
                "state": n.state,
                "link": n.link,
                "rtt_ms": n.rtt_ms,
                "hop_p50_ms": n.hop_p50_ms,
                "hop_p99_ms": n.hop_p99_ms,
                "hop_samples": n.hop_samples,
                "last_seen_ms": n.last_seen_ms,
                "version": s.version,
                "draining": s.draining,
                "uptime_s": s.uptime_s,
                "connections": s.connections,
                "channels": totals.channels,
                "users": totals.users,
                "messages_in": totals.messages_in,
                "messages_out": totals.messages_out,
                "apps": s.apps,
            })
        })
        .collect();
    let up: Vec<&NodeRow> = view.nodes.iter().filter(|n| n.state != "down").collect();
    let mut apps: BTreeMap<String, AppSummary> = BTreeMap::new();
    for n in &up {
        for a in n.summary.apps.iter().filter(|a| viewer.sees(&a.app)) {
            let t = apps.entry(a.app.clone()).or_insert_with(|| AppSummary {
                app: a.app.clone(),
                ..AppSummary::default()
            });
            t.connections.add(&a.connections);
            t.channels += a.channels;
            t.members += a.members;
            t.users += a.users;
            t.messages_in += a.messages_in;
            t.messages_out += a.messages_out;
            t.bytes_in += a.bytes_in;
            t.slow_readers += a.slow_readers;
            for (reason, count) in &a.dropped {
                *t.dropped.entry(reason.clone()).or_default() += count;
            }
        }
    }
    if let Viewer::App(app) = viewer {
        apps.entry(app.clone()).or_insert_with(|| AppSummary {
            app: app.clone(),
            ..AppSummary::default()
        });
    }
    let errors = hub
        .stats()
        .console
        .errors(|e| admin || e.app.as_deref().is_some_and(|a| viewer.sees(a)));
    let node = view
        .nodes
        .iter()
        .find(|n| n.state == "self")
        .map(|n| n.summary.counters.clone())
        .unwrap_or(Value::Null);
    json!({
        "time_ms": now_ms,
        "mesh_id": hub.mesh_id(),
        "viewer": viewer.label(),
        "mesh_state": view.mesh_state,
        "nodes": nodes,
        "nodes_up": up.len(),
        "routers": if admin { view.routers.clone() } else { Vec::new() },
        "other_peers": if admin { view.other_peers.len() } else { 0 },
        "apps": apps.into_values().collect::<Vec<_>>(),
        "counters": if admin { node } else { Value::Null },
        "errors": errors.into_iter().take(50).collect::<Vec<_>>(),
    })
}

/// Sums of a node's apps (what its row shows).
fn app_totals(apps: &[AppSummary]) -> AppSummary {
    apps.iter().fold(AppSummary::default(), |mut t, a| {
        t.channels += a.channels;
        t.users += a.users;
        t.messages_in += a.messages_in;
        t.messages_out += a.messages_out;
        t
    })
}

/// Paging and search of a list: `limit` (≤ [`MAX_PAGE`]), `offset`, and a
/// case-insensitive substring `q`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Page {
    pub offset: usize,
    pub limit: usize,
    pub query: String,
}

impl Page {
    pub fn new(offset: Option<usize>, limit: Option<usize>, query: Option<String>) -> Page {
        Page {
            offset: offset.unwrap_or(0),
            limit: limit.unwrap_or(50).clamp(1, MAX_PAGE),
            query: query.unwrap_or_default().to_lowercase(),
        }
    }

    fn matches(&self, name: &str) -> bool {
        self.query.is_empty() || name.to_lowercase().contains(&self.query)
    }

    /// The matching items' count and this page of them.
    pub fn cut<T>(&self, items: Vec<T>, name: impl Fn(&T) -> &str) -> (usize, Vec<T>) {
        let matching: Vec<T> = items
            .into_iter()
            .filter(|i| self.matches(name(i)))
            .collect();
        let total = matching.len();
        (
            total,
            matching
                .into_iter()
                .skip(self.offset)
                .take(self.limit)
                .collect(),
        )
    }
}

/// `app`'s channels on this node, largest first, paged.
pub fn channels(hub: &Hub, app: &str, page: &Page) -> Value {
    let mut all = hub.console_channels(app);
    all.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let (total, items) = page.cut(all, |(name, _)| &**name);
    let channels: Vec<Value> = items
        .into_iter()
        .map(|(name, members)| json!({ "name": &*name, "members": members }))
        .collect();
    json!({
        "app": app, "total": total, "offset": page.offset, "limit": page.limit,
        "channels": channels,
    })
}

/// One channel: its users (here and on other nodes, with their last
/// state), this node's connections in it, paged by user id, and the recent
/// messages sampled while watched (payloads when `payloads`).
pub fn channel(hub: &Hub, app: &str, name: &str, page: &Page, payloads: bool) -> Option<Value> {
    let view = hub.console_channel(app, name)?;
    let remote_states: BTreeMap<(&str, &str), &Bytes> = view
        .states
        .iter()
        .map(|(user, node, msg)| ((user.as_str(), node.as_str()), msg))
        .collect();
    let (total, users) = page.cut(view.users.clone(), |u| &*u.id);
    let users: Vec<Value> = users
        .iter()
        .map(|u| {
            let state = match &u.state {
                Some(pl) => payload_json(pl),
                // A user of another node: the last state its node relayed.
                None => u
                    .elsewhere
                    .iter()
                    .find_map(|(node, _)| remote_states.get(&(&*u.id, &**node)))
                    .map_or(Value::Null, |msg| relayed_payload_json(msg)),
            };
            let connections: Vec<&_> = view
                .members
                .iter()
                .filter(|m| m.client_id == u.id)
                .collect();
            json!({
                "id": &*u.id,
                "here": u.here,
                "elsewhere": u.elsewhere.iter().map(|(n, c)| json!({"node": &**n, "connections": c})).collect::<Vec<_>>(),
                "leaving": u.leaving,
                "state": bounded(state),
                "connections": connections.iter().map(|m| json!({
                    "sid": m.sid, "transport": m.transport.as_str(), "closing": m.closing,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let samples: Vec<Value> = hub
        .stats()
        .console
        .taps
        .samples(app, name)
        .into_iter()
        .map(|s| {
            let mut v = serde_json::to_value(&s).unwrap_or(Value::Null);
            if payloads {
                if let Some(raw) = &s.raw {
                    v["payload"] = bounded(relayed_payload_json(raw));
                }
            }
            v
        })
        .collect();
    Some(json!({
        "app": app, "name": name,
        "members_here": view.members.len(),
        "total": total, "offset": page.offset, "limit": page.limit,
        "users": users,
        "samples": samples,
    }))
}

/// A relayed message's `pl` as JSON: the msgpack it holds (as the
/// published client sends it, wrapped in a bin or not), or, for bytes that
/// are not one whole msgpack value, their size and first bytes in hex.
fn relayed_payload_json(msg: &[u8]) -> Value {
    match crate::protocol::decode_relayed(msg) {
        Ok(m) => m.payload.map_or(Value::Null, payload_json),
        Err(_) => Value::Null,
    }
}

fn payload_json(pl: &[u8]) -> Value {
    let whole = |bytes: &[u8]| {
        let mut rest = bytes;
        let value = rmpv::decode::read_value(&mut rest).ok()?;
        rest.is_empty().then_some(value)
    };
    let inner = match whole(pl) {
        Some(rmpv::Value::Binary(inner)) => inner,
        Some(_) => pl.to_vec(),
        None => Vec::new(),
    };
    match whole(&inner).and_then(|_| rmp_serde::from_slice::<Value>(&inner).ok()) {
        Some(v) => v,
        None => {
            let raw = if inner.is_empty() { pl } else { &inner[..] };
            let hex: String = raw.iter().take(32).map(|b| format!("{b:02x}")).collect();
            json!({ "bytes": raw.len(), "hex": hex })
        }
    }
}

/// A value whose JSON is over [`MAX_VALUE_JSON`] bytes becomes its cut text.
fn bounded(v: Value) -> Value {
    let text = v.to_string();
    if text.len() <= MAX_VALUE_JSON {
        return v;
    }
    let mut end = MAX_VALUE_JSON;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    json!({ "truncated": format!("{}…", &text[..end]), "bytes": text.len() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apps::AppSources;
    use crate::auth::Grant;

    fn apps() -> Apps {
        AppSources {
            pairs: Some("k1:app1,k2:app2".into()),
            api_keys: Some("app1:key-of-app1-0123456,app2:key-of-app2-0123456".into()),
            ..AppSources::default()
        }
        .load()
        .unwrap()
        .unwrap()
    }

    fn join(c: &str) -> Vec<u8> {
        rmp_serde::to_vec_named(&json!({"t": "control", "op": "channel_join", "c": c})).unwrap()
    }

    #[test]
    fn who_is_looking() {
        let apps = apps();
        let v = |auth| viewer("the-admin-token", &apps, auth);
        assert_eq!(v(Some("Bearer the-admin-token")), Some(Viewer::Admin));
        assert_eq!(
            v(Some("Bearer key-of-app2-0123456")),
            Some(Viewer::App("app2".into()))
        );
        assert_eq!(v(Some("Bearer wrong")), None);
        assert_eq!(v(Some("Bearer ")), None);
        assert_eq!(v(Some("Basic the-admin-token")), None);
        assert_eq!(v(None), None);
    }

    #[test]
    fn paging_and_search() {
        let page = Page::new(Some(2), Some(3), Some("ROOM".into()));
        let items: Vec<String> = (0..10)
            .map(|i| format!("room-{i}"))
            .chain(["x".into()])
            .collect();
        let (total, cut) = page.cut(items, |s| s.as_str());
        assert_eq!(total, 10);
        assert_eq!(cut, ["room-2", "room-3", "room-4"]);
        assert_eq!(Page::new(None, Some(100_000), None).limit, MAX_PAGE);
        assert_eq!(Page::new(None, Some(0), None).limit, 1);
    }

    /// A node of two apps: an app's key sees its app, never the other's
    /// name, counts, errors or the node-wide counters.
    #[test]
    fn an_apps_key_sees_only_its_app() {
        let hub = Hub::new("eu", Default::default(), Arc::default());
        let apps = apps();
        let (mut a, _ra) = hub.connect(
            apps.get("app1").unwrap(),
            "alice",
            Transport::WebSocket,
            Grant::default(),
        );
        let (mut b, _rb) = hub.connect(
            apps.get("app2").unwrap(),
            "bob",
            Transport::WebTransport,
            Grant::default(),
        );
        a.handle(&join("room-a")).unwrap();
        b.handle(&join("secret-room")).unwrap();
        hub.stats()
            .console
            .error("mesh_refused", Some("app2"), "secret-room refused");
        hub.stats()
            .console
            .error("rejected", None, "403 from 10.0.0.1");
        let own = NodeSummary::of(&hub, "zid-eu");
        let view = MeshView {
            nodes: vec![row(own, "self", "self", None, &BTreeMap::new(), 0)],
            ..MeshView::default()
        };
        let admin = snapshot_for(&view, &Viewer::Admin, &hub, 1);
        let text = admin.to_string();
        assert!(
            text.contains("app2") && text.contains("secret-room"),
            "{text}"
        );
        assert_eq!(admin["apps"].as_array().unwrap().len(), 2);
        assert_eq!(admin["nodes"][0]["connections"]["webtransport"], 1);
        assert_eq!(admin["errors"].as_array().unwrap().len(), 2);

        let app1 = snapshot_for(&view, &Viewer::App("app1".into()), &hub, 1);
        let text = app1.to_string();
        assert!(
            !text.contains("app2") && !text.contains("secret") && !text.contains("10.0.0.1"),
            "{text}"
        );
        assert_eq!(app1["apps"].as_array().unwrap().len(), 1);
        assert_eq!(app1["apps"][0]["connections"]["websocket"], 1);
        assert_eq!(app1["apps"][0]["messages_in"], 1);
        assert_eq!(app1["nodes"][0]["connections"]["webtransport"], 0);
        assert_eq!(app1["counters"], Value::Null);
        assert!(app1["errors"].as_array().unwrap().is_empty());

        let listed = channels(&hub, "app1", &Page::new(None, None, None));
        assert_eq!(listed["total"], 1);
        assert_eq!(listed["channels"][0]["name"], "room-a");
    }

    /// A node that stops answering is `down` with nothing in it once its
    /// liveness token is gone, `slow` (last summary kept) while it lives.
    #[test]
    fn nodes_that_stop_answering() {
        let hub = Hub::new("eu", Default::default(), Arc::default());
        let console = Console::new(hub.clone(), Some("t".repeat(16)));
        let summary = |mesh_id: &str, ws| NodeSummary {
            mesh_id: mesh_id.into(),
            zid: format!("zid-{mesh_id}"),
            connections: Transports {
                websocket: ws,
                webtransport: 0,
            },
            apps: vec![AppSummary {
                app: "a".into(),
                ..AppSummary::default()
            }],
            ..NodeSummary::default()
        };
        let own = || NodeSummary::of(&hub, "zid-eu");
        let rtt = Duration::from_millis(1);
        let direct = ["zid-us".to_owned()];
        let now = (Instant::now(), 1);
        let states = |rows: &[NodeRow]| {
            rows.iter()
                .map(|r| {
                    (
                        r.mesh_id.clone(),
                        r.state,
                        r.link,
                        r.summary.connections.websocket,
                    )
                })
                .collect::<Vec<_>>()
        };
        let rows = console.merge_known(
            own(),
            vec![(summary("us", 2), rtt), (summary("ap", 3), rtt)],
            (&direct, &BTreeSet::new()),
            now,
        );
        assert_eq!(
            states(&rows),
            [
                ("ap".into(), "up", "routed", 3),
                ("eu".into(), "self", "self", 0),
                ("us".into(), "up", "direct", 2)
            ]
        );
        let live: BTreeSet<String> = ["ap".to_owned()].into();
        let rows = console.merge_known(own(), vec![(summary("us", 2), rtt)], (&direct, &live), now);
        assert_eq!(states(&rows)[0], ("ap".into(), "slow", "slow", 3));
        let rows = console.merge_known(
            own(),
            vec![(summary("us", 2), rtt)],
            (&direct, &BTreeSet::new()),
            now,
        );
        assert_eq!(states(&rows)[0], ("ap".into(), "down", "lost", 0));
        assert!(rows[0].summary.apps.is_empty());
        let v = snapshot_for(
            &MeshView {
                nodes: rows,
                ..MeshView::default()
            },
            &Viewer::Admin,
            &hub,
            1,
        );
        assert_eq!(v["nodes_up"], 2);
    }

    /// 10,000 channels and 50,000 members: every answer is a page, and the
    /// time each read takes is printed (not asserted: benchmarks time).
    #[test]
    fn a_big_node_answers_in_pages() {
        let hub = Hub::new("eu", Default::default(), Arc::default());
        let apps = apps();
        let app = apps.get("app1").unwrap();
        let mut peers = Vec::with_capacity(50_000);
        for c in 0..10_000 {
            for m in 0..5 {
                let id = format!("user-{c}-{m}");
                let (mut p, rx) = hub.connect(app, &id, Transport::WebSocket, Grant::default());
                p.handle(&join(&format!("room-{c}"))).unwrap();
                peers.push((p, rx));
            }
        }
        let t = Instant::now();
        drop(hub.console_apps());
        let counts_took = t.elapsed();
        let t = Instant::now();
        let own = NodeSummary::of(&hub, "zid");
        let summary_took = t.elapsed();
        assert_eq!(own.apps[0].members, 50_000);
        assert_eq!(own.apps[0].channels, 10_000);
        let t = Instant::now();
        let page = channels(
            &hub,
            "app1",
            &Page::new(Some(100), None, Some("room-99".into())),
        );
        let channels_took = t.elapsed();
        assert_eq!(
            page["total"], 111,
            "room-99, room-990..999, room-9900..9999"
        );
        assert_eq!(page["channels"].as_array().unwrap().len(), 11);
        let t = Instant::now();
        let one = channel(
            &hub,
            "app1",
            "room-42",
            &Page::new(None, Some(2), None),
            false,
        )
        .unwrap();
        let channel_took = t.elapsed();
        assert_eq!(
            (
                one["total"].as_u64(),
                one["users"].as_array().unwrap().len()
            ),
            (Some(5), 2)
        );
        let view = MeshView {
            nodes: vec![row(own, "self", "self", None, &BTreeMap::new(), 0)],
            ..MeshView::default()
        };
        let t = Instant::now();
        let snapshot = snapshot_for(&view, &Viewer::Admin, &hub, 1).to_string();
        let snapshot_took = t.elapsed();
        assert!(snapshot.len() < 16 * 1024, "{} bytes", snapshot.len());
        println!(
            "10,000 channels, 50,000 members: counts {counts_took:?}, summary \
             {summary_took:?}, channel page {channels_took:?}, one channel \
             {channel_took:?}, snapshot {snapshot_took:?} ({} bytes)",
            snapshot.len()
        );
    }

    /// Every metric the Grafana dashboard queries is one `/metrics` serves.
    #[test]
    fn the_grafana_dashboard_uses_existing_metrics() {
        let dashboard = include_str!("../../deploy/observability/grafana-prscd.json");
        let stats = Arc::new(Stats::default());
        stats.set_certificate_expiry(1);
        let gauges = crate::stats::Gauges {
            connections: vec![("a".into(), Transport::WebSocket, 1)],
            channels: 0,
            draining: false,
        };
        let served = stats.prometheus(&gauges);
        let mut checked = 0;
        for (i, _) in dashboard.match_indices("prscd_") {
            let name: String = dashboard[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if name == "prscd_" {
                continue;
            }
            assert!(
                served.contains(&format!("\n{name}")),
                "{name} is not served"
            );
            checked += 1;
        }
        assert!(checked > 15, "{checked}");
    }

    #[test]
    fn the_inspector_shows_members_and_only_watched_samples() {
        let hub = Hub::new("eu", Default::default(), Arc::default());
        let apps = apps();
        let app = apps.get("app1").unwrap();
        let (mut a, _ra) = hub.connect(app, "alice", Transport::WebSocket, Grant::default());
        let (mut b, _rb) = hub.connect(app, "<b>bob</b>", Transport::WebSocket, Grant::default());
        a.handle(&join("room")).unwrap();
        b.handle(&join("room")).unwrap();
        let data = |text: &str| {
            let inner = rmp_serde::to_vec_named(&json!({"event": "chat", "data": text})).unwrap();
            let msg = rmpv::Value::Map(vec![
                ("t".into(), "data".into()),
                ("c".into(), "room".into()),
                ("pl".into(), rmpv::Value::Binary(inner)),
            ]);
            let mut out = Vec::new();
            rmpv::encode::write_value(&mut out, &msg).unwrap();
            out
        };
        a.handle(&data("unwatched")).unwrap();
        let page = Page::new(None, None, None);
        let v = channel(&hub, "app1", "room", &page, false).unwrap();
        assert_eq!(v["total"], 2);
        assert_eq!(
            v["users"][0]["id"], "<b>bob</b>",
            "names are data, the page prints them as text"
        );
        assert!(v["samples"].as_array().unwrap().is_empty());

        hub.stats()
            .console
            .taps
            .watch("app1", "room", true)
            .unwrap();
        a.handle(&data("hello")).unwrap();
        let v = channel(&hub, "app1", "room", &page, false).unwrap();
        let s = &v["samples"][0];
        assert_eq!(
            (s["from"].as_str(), s["op"].as_str()),
            (Some("alice"), Some("data"))
        );
        assert!(s["bytes"].as_u64().unwrap() > 5);
        assert!(s.get("payload").is_none(), "no payload unless asked");
        let v = channel(&hub, "app1", "room", &page, true).unwrap();
        assert_eq!(v["samples"][0]["payload"]["data"], "hello");
        assert!(channel(&hub, "app2", "room", &page, false).is_none());
        assert_eq!(
            payload_json(&[0xc4, 2, 0x00, 0xff])["hex"],
            "00ff",
            "not one msgpack value"
        );
        assert_eq!(
            payload_json(&[0x2a])["bytes"],
            Value::Null,
            "a bare msgpack value"
        );
        assert_eq!(payload_json(&[0x2a]), json!(42));
    }
}
