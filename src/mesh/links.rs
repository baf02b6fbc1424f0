//! What the mesh decides, without zenoh: which channels are linked, who is a
//! member on the other nodes, when a node is gone or back, when rosters are
//! asked for again, and when the node announces on a silent member's behalf.
//!
//! [`Links::handle`] takes one [`Event`] and returns what zenoh must do, in
//! order ([`Action`]); timers are actions too ([`Action::After`]). The local
//! members hear through the [`Hub`], which is in memory. The bridge in
//! `mod.rs` turns zenoh's callbacks and the hub's events into events and runs
//! the actions, so the tests below drive orders of events (a leave overtaken
//! by its node's token, a roster before the token, a heal) that multi-process
//! tests cannot produce reliably.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tracing::{debug, info};

use super::dedup::{Dedup, Verdict};
use super::membership::{self, Membership};
use super::{keys, AppLimitsOf, Origin};
use crate::clock::unix_micros;
use crate::hub::{Hub, PeerId};
use crate::presence::{Arrival, Why};
use crate::protocol::{self, Kind, Op};
use crate::stats::{DropReason, Stats};
use crate::telemetry;

/// When a channel's roster query is asked again; a node's first wait
/// (doubling each time) and how many times it is asked again at most (see
/// `Links::on_roster_query_over`).
const ROSTER_RECHECK: Duration = Duration::from_secs(1);
const ROSTER_RETRY: Duration = Duration::from_millis(250);
const ROSTER_ATTEMPTS: u32 = 5;

/// How long a forgotten membership is remembered, to recognise it if it
/// comes back after a partition heals.
const GONE_MEMORY: Duration = Duration::from_secs(600);

/// (app, channel).
pub(crate) type ChannelId = (Arc<str>, Arc<str>);

/// What happens to the mesh: a local join or leave (from the hub), and what
/// zenoh hands over (samples, node tokens, rosters), and the timers.
#[derive(Debug)]
pub(crate) enum Event {
    /// A local peer joined a channel.
    Joined {
        channel: ChannelId,
        sid: PeerId,
        client_id: Arc<str>,
    },
    /// A local peer left a channel.
    Left { channel: ChannelId, sid: PeerId },
    /// Subscribing to a channel or watching its app failed: the channel is
    /// not linked (the next local join tries again).
    LinkFailed(ChannelId),
    /// A sample on a linked channel's key.
    Sample {
        channel: ChannelId,
        payload: Vec<u8>,
        origin: Origin,
    },
    /// A node token of an app appeared (`alive`) or went away.
    NodeToken { key: String, alive: bool },
    /// One node's roster of one channel, in reply to this node's query.
    Roster { key: String, payload: Vec<u8> },
    /// A roster query of this node is over, with that many replies.
    RosterQueryOver { ask: RosterAsk, replies: usize },
    /// An [`Action::After`] is due.
    Timer(Timer),
}

/// What a timer brings back.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Timer {
    /// A roster query's next attempt.
    AskAgain(RosterAsk),
    /// A new remote member's grace period is over.
    Check {
        channel: ChannelId,
        member: RemoteMember,
    },
}

/// What zenoh must do, in the order given.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Action {
    /// Declare the channel's subscriber (remote samples only).
    Subscribe(ChannelId),
    /// Undeclare it.
    Unsubscribe(ChannelId),
    /// Watch the channel's app: declare this node's roster queryable, a
    /// liveliness subscriber (with history) for the app's node tokens, then
    /// this node's token of the app.
    WatchApp(ChannelId),
    /// Undeclare them.
    UnwatchApp(Arc<str>),
    /// Publish a local join or leave on the channel's key, the sid in the
    /// attachment.
    Publish {
        channel: ChannelId,
        sid: PeerId,
        msg: Vec<u8>,
    },
    /// Ask for rosters; report [`Event::RosterQueryOver`] when it is over.
    AskRosters(RosterAsk),
    /// Hand the timer back as [`Event::Timer`] after the delay.
    After(Duration, Timer),
}

/// One roster query: for one channel of every node (`node: None`), or for
/// every channel of one node.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RosterAsk {
    pub app: Arc<str>,
    pub selector: String,
    pub node: Option<String>,
    pub attempt: u32,
}

/// A peer of another node, as named in its node's `channel_join` or roster.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RemoteMember {
    pub mesh_id: String,
    pub sid: u64,
    pub client_id: String,
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

/// A channel with local members: what is known of its members on every node.
#[derive(Default)]
struct ChannelLink {
    /// sid → client id of this node's members: the roster it answers with.
    local: HashMap<PeerId, Arc<str>>,
    /// (mesh_id, sid) → peer, while it is a member and its node's token lives.
    remote: HashMap<(String, u64), Remote>,
    /// Members whose node's token went away, to recognise a heal.
    gone: HashMap<(String, u64), (Remote, Instant)>,
    /// mesh_id → how many of `remote` are its: a node never has more members
    /// in a channel than the app's cap, so more is refused.
    per_node: HashMap<String, usize>,
    /// The newest publication delivered per node: copies and stragglers are dropped.
    dedup: Dedup,
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

/// A linked channel's name and this node's members of it (sid → client id).
pub(crate) type LocalMembers<'a> = (&'a Arc<str>, &'a HashMap<PeerId, Arc<str>>);

/// An app with linked channels: how many, and the other nodes whose token of
/// the app lives. Tokens of nodes in apps without local members are ignored.
struct AppNodes {
    linked_channels: usize,
    nodes: HashSet<String>,
}

/// The mesh's state: this node's linked channels and what it knows of the
/// other nodes in them.
pub(crate) struct Links {
    mesh_id: String,
    hub: Arc<Hub>,
    stats: Arc<Stats>,
    limits: AppLimitsOf,
    presence_check: Option<Duration>,
    channels: HashMap<ChannelId, ChannelLink>,
    apps: HashMap<Arc<str>, AppNodes>,
    /// The actions of the event being handled.
    out: Vec<Action>,
}

impl Links {
    /// `presence_check`: how long a new remote member may stay silent before
    /// the local members are asked to announce themselves to it; `None`
    /// turns the check off.
    pub(crate) fn new(
        hub: Arc<Hub>,
        limits: AppLimitsOf,
        presence_check: Option<Duration>,
    ) -> Links {
        Links {
            mesh_id: hub.mesh_id().to_owned(),
            stats: hub.stats().clone(),
            hub,
            limits,
            presence_check,
            channels: HashMap::new(),
            apps: HashMap::new(),
            out: Vec::new(),
        }
    }

    /// Handles one event; returns what zenoh must do, in order.
    pub(crate) fn handle(&mut self, event: Event, now: Instant) -> Vec<Action> {
        match event {
            Event::Joined {
                channel,
                sid,
                client_id,
            } => self.on_joined(channel, sid, client_id),
            Event::Left { channel, sid } => self.on_left(channel, sid),
            Event::LinkFailed(channel) => self.on_link_failed(&channel),
            Event::Sample {
                channel,
                payload,
                origin,
            } => self.on_message(channel, &payload, origin, now),
            Event::NodeToken { key, alive } => self.on_node_token(&key, alive, now),
            Event::Roster { key, payload } => self.on_roster(&key, &payload, now),
            Event::RosterQueryOver { ask, replies } => self.on_roster_query_over(ask, replies),
            Event::Timer(Timer::AskAgain(ask)) => {
                if self.has_someone_to_ask(&ask) {
                    debug!(app = %ask.app, selector = %ask.selector, attempt = ask.attempt, "mesh: asking for rosters again");
                    self.out.push(Action::AskRosters(ask));
                }
            }
            Event::Timer(Timer::Check { channel, member }) => self.on_check(channel, &member),
        }
        std::mem::take(&mut self.out)
    }

    /// This node's members of the app's linked channels, for its rosters:
    /// (channel, sid → client id).
    pub(crate) fn local_members<'a>(
        &'a self,
        app: &'a str,
    ) -> impl Iterator<Item = LocalMembers<'a>> + 'a {
        self.channels
            .iter()
            .filter(move |((a, _), _)| **a == *app)
            .map(|((_, c), link)| (c, &link.local))
    }

    /// This node's members of one linked channel.
    pub(crate) fn local_members_of<'a>(
        &'a self,
        app: &Arc<str>,
        channel: &str,
    ) -> Option<LocalMembers<'a>> {
        let (id, link) = self
            .channels
            .get_key_value(&(app.clone(), channel.into()))?;
        Some((&id.1, &link.local))
    }

    /// A channel's first local member links it: its subscriber (plus the
    /// app's watch, if it is the app's first linked channel) and a query for
    /// the rosters of the other nodes known to serve the app; the replies
    /// come in as memberships, after the link exists. A node whose token is
    /// not known yet is asked when it arrives ([`Links::on_node_token`]), so
    /// none is missed and a node alone in the mesh sends no query. Every join
    /// is published on the channel's key.
    fn on_joined(&mut self, id: ChannelId, sid: PeerId, client_id: Arc<str>) {
        if !self.channels.contains_key(&id) {
            self.out.push(Action::Subscribe(id.clone()));
            self.watch(&id);
            let ask = RosterAsk {
                app: id.0.clone(),
                selector: keys::members_of(&id.0, &id.1),
                node: None,
                attempt: 0,
            };
            if self.has_someone_to_ask(&ask) {
                self.out.push(Action::AskRosters(ask));
            }
            debug!(app = %id.0, channel = %id.1, "mesh: linking channel");
            self.channels.insert(id.clone(), ChannelLink::default());
        }
        let Some(link) = self.channels.get_mut(&id) else {
            return;
        };
        link.local.insert(sid, client_id.clone());
        let msg = protocol::encode_control(Op::ChannelJoin, &id.1, &client_id, &self.mesh_id);
        self.out.push(Action::Publish {
            channel: id,
            sid,
            msg,
        });
    }

    /// Every local leave is published; the last one unlinks the channel (its
    /// subscriber before the app's watch).
    fn on_left(&mut self, id: ChannelId, sid: PeerId) {
        let Some(link) = self.channels.get_mut(&id) else {
            return; // never linked
        };
        let Some(client_id) = link.local.remove(&sid) else {
            return;
        };
        let last = link.local.is_empty();
        let msg = protocol::encode_control(Op::PeerOffline, &id.1, &client_id, &self.mesh_id);
        self.out.push(Action::Publish {
            channel: id.clone(),
            sid,
            msg,
        });
        if last {
            self.unlink(&id);
            debug!(app = %id.0, channel = %id.1, "mesh: last local member left, unsubscribed");
        }
    }

    fn on_link_failed(&mut self, id: &ChannelId) {
        if self.channels.contains_key(id) {
            self.unlink(id);
        }
    }

    fn unlink(&mut self, id: &ChannelId) {
        if let Some(link) = self.channels.remove(id) {
            let remote = link.remote.len() as u64;
            self.stats.mesh.remote_members.fetch_sub(remote, Relaxed);
            self.out.push(Action::Unsubscribe(id.clone()));
            self.hub.forget_remote(&id.0, &id.1);
            self.unwatch(&id.0);
        }
    }

    /// Counts one more linked channel of `app`, watching it first.
    fn watch(&mut self, id: &ChannelId) {
        if let Some(watch) = self.apps.get_mut(&id.0) {
            watch.linked_channels += 1;
            return;
        }
        self.out.push(Action::WatchApp(id.clone()));
        self.apps.insert(
            id.0.clone(),
            AppNodes {
                linked_channels: 1,
                nodes: HashSet::new(),
            },
        );
    }

    /// Counts one linked channel of `app` less; the last one ends the watch.
    fn unwatch(&mut self, app: &Arc<str>) {
        if let Some(watch) = self.apps.get_mut(app) {
            watch.linked_channels -= 1;
            if watch.linked_channels == 0 {
                self.apps.remove(app);
                self.out.push(Action::UnwatchApp(app.clone()));
                debug!(%app, "mesh: no linked channel left, stopped watching the app");
            }
        }
    }

    fn on_message(&mut self, id: ChannelId, payload: &[u8], origin: Origin, now: Instant) {
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
        if let (Some(mesh), Some(stamp)) = (relayed.mesh, origin.stamp) {
            let verdict = link.dedup.check(mesh, stamp, now);
            if verdict != Verdict::Deliver {
                // Through routers, while they reroute (see [`super::dedup`]).
                debug!(app = %id.0, channel = %id.1, peer = relayed.peer, %mesh, seq = stamp.seq, ?verdict, "mesh: sample dropped");
                tracing::info!(target: "otel", reason = "mesh_duplicate", ?verdict, "dropped");
                return;
            }
        }
        if relayed.kind == Kind::Control(Op::ChannelJoin) {
            // A node announcing a member: for this bridge, never for browsers.
            let Some((mesh, sid)) = member else {
                return; // no sid: refused above
            };
            let joined = Membership {
                sid,
                client_id: relayed.peer.to_owned(),
            };
            self.member_alive(&id, mesh.to_owned(), joined, now);
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
    fn on_node_token(&mut self, key: &str, alive: bool, now: Instant) {
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
            self.out.push(Action::AskRosters(RosterAsk {
                app: app.into(),
                selector,
                node: Some(mesh_id),
                attempt: 0,
            }));
            return;
        }
        watch.nodes.remove(&mesh_id);
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

    fn on_roster(&mut self, key: &str, payload: &[u8], now: Instant) {
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
                    self.member_alive(&id, mesh_id.clone(), m, now);
                }
            }
            Err(e) => {
                debug!(%key, error = %e, "mesh: invalid roster dropped");
                self.stats.count_drop(DropReason::MeshInvalid);
            }
        }
    }

    /// A remote member, from a join or a roster. One that comes back after
    /// its node's token went away (a partition healed) is announced again
    /// with its last state; a new one gets the presence check.
    fn member_alive(&mut self, id: &ChannelId, mesh_id: String, m: Membership, now: Instant) {
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
            let check = Timer::Check {
                channel: id.clone(),
                member,
            };
            self.out.push(Action::After(grace, check));
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

    /// A roster query is over. Through routers, a node's token or
    /// subscription can reach this node before its queryable is routable
    /// from here, so: a node asked for all its rosters of an app always has
    /// at least one (it holds the token only while it has members in the
    /// app), and is asked again, with backoff, until it answers or its token
    /// goes; a channel's query, which may rightly get no answer, is asked
    /// once more [`ROSTER_RECHECK`] later. A roster only adds members not
    /// known yet, so asking twice does no harm.
    fn on_roster_query_over(&mut self, mut ask: RosterAsk, replies: usize) {
        let delay = match &ask.node {
            Some(_) if replies > 0 || ask.attempt >= ROSTER_ATTEMPTS => return,
            Some(_) => ROSTER_RETRY * 2u32.pow(ask.attempt),
            None if ask.attempt > 0 => return,
            None => ROSTER_RECHECK,
        };
        ask.attempt += 1;
        self.out.push(Action::After(delay, Timer::AskAgain(ask)));
    }

    /// Whether a roster query has someone to ask: its node, or any other
    /// node of the app.
    fn has_someone_to_ask(&self, ask: &RosterAsk) -> bool {
        self.apps.get(&ask.app).is_some_and(|w| match &ask.node {
            Some(node) => w.nodes.contains(node),
            None => !w.nodes.is_empty(),
        })
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
    //! Each test drives one node's links through an order of events, with a
    //! real hub whose local members' outboxes show what browsers would get.
    //! Another node's messages are made by a second hub, as it publishes them.

    use super::*;
    use crate::apps::{App, AppLimits};
    use crate::auth::Grant;
    use crate::hub::{Limits, MeshEvent, Peer};
    use crate::outbox::OutboxReceiver;
    use crate::stats::Transport;
    use serde_json::{json, Value};

    const APP: &str = "app";
    const ROOM: &str = "room";

    /// One node: its hub, the hub's events for the mesh, and its links.
    struct Node {
        hub: Arc<Hub>,
        events: tokio::sync::mpsc::UnboundedReceiver<MeshEvent>,
        links: Links,
        app: Arc<App>,
        now: Instant,
    }

    fn node(mesh_id: &str, presence_check: Option<Duration>) -> Node {
        let hub = Hub::new(mesh_id, Limits::default(), Arc::default());
        let (events, _backlog) = hub.attach_mesh(1000);
        let limits: AppLimitsOf = Arc::new(|_| Some(AppLimits::default()));
        Node {
            links: Links::new(hub.clone(), limits, presence_check),
            hub,
            events,
            app: Arc::new(App::new(APP, AppLimits::default())),
            now: Instant::now(),
        }
    }

    fn id() -> ChannelId {
        (APP.into(), ROOM.into())
    }

    fn frame(v: Value) -> Vec<u8> {
        rmp_serde::to_vec_named(&v).unwrap()
    }

    impl Node {
        /// A local browser joins `channel`; the actions its join causes.
        fn join(&mut self, client_id: &str, channel: &str) -> (Peer, OutboxReceiver, Vec<Action>) {
            let (mut peer, mut rx) =
                self.hub
                    .connect(&self.app, client_id, Transport::WebSocket, Grant::default());
            peer.handle(&frame(
                json!({"t": "control", "op": "channel_join", "c": channel}),
            ))
            .unwrap();
            rx.try_recv_one().expect("the join ack");
            let actions = self.pump().0;
            (peer, rx, actions)
        }

        /// Feeds the hub's membership events to the links: their actions,
        /// and the messages the hub publishes (as another node receives them).
        fn pump(&mut self) -> (Vec<Action>, Vec<(PeerId, Vec<u8>)>) {
            let (mut actions, mut published) = (Vec::new(), Vec::new());
            while let Ok(event) = self.events.try_recv() {
                match event {
                    MeshEvent::Joined {
                        app,
                        channel,
                        sid,
                        client_id,
                    } => actions.extend(self.handle(Event::Joined {
                        channel: (app, channel),
                        sid,
                        client_id,
                    })),
                    MeshEvent::Left { app, channel, sid } => {
                        actions.extend(self.handle(Event::Left {
                            channel: (app, channel),
                            sid,
                        }))
                    }
                    MeshEvent::Publish { sid, msg, .. } => published.push((sid, msg.to_vec())),
                }
            }
            (actions, published)
        }

        fn handle(&mut self, event: Event) -> Vec<Action> {
            self.links.handle(event, self.now)
        }

        /// A sample from node `mesh`'s member `sid`.
        fn sample(&mut self, sid: Option<u64>, payload: Vec<u8>) -> Vec<Action> {
            let origin = Origin {
                sid,
                ..Origin::default()
            };
            self.handle(Event::Sample {
                channel: id(),
                payload,
                origin,
            })
        }

        /// Node `mesh` announcing its member (`channel_join` on the channel's key).
        fn remote_join(&mut self, mesh: &str, sid: u64, client_id: &str) -> Vec<Action> {
            let join = protocol::encode_control(Op::ChannelJoin, ROOM, client_id, mesh);
            self.sample(Some(sid), join)
        }

        fn token(&mut self, mesh: &str, alive: bool) -> Vec<Action> {
            let key = keys::node_token_key(APP, mesh);
            self.handle(Event::NodeToken { key, alive })
        }

        fn roster(&mut self, mesh: &str, members: &[(u64, &str)]) -> Vec<Action> {
            let key = keys::members_key(APP, ROOM, mesh);
            let payload = membership::encode_roster(members.iter().copied());
            self.handle(Event::Roster { key, payload })
        }
    }

    /// What a browser got: (op or "data", peer), in order.
    fn got(rx: &mut OutboxReceiver) -> Vec<(String, String)> {
        let mut out = Vec::new();
        while let Some(msg) = rx.try_recv_one() {
            let v: Value = rmp_serde::from_slice(&msg).unwrap();
            let what = v["op"].as_str().or(v["t"].as_str()).unwrap_or("?");
            out.push((what.to_owned(), v["p"].as_str().unwrap_or("").to_owned()));
        }
        out
    }

    fn pair(what: &str, peer: &str) -> (String, String) {
        (what.to_owned(), peer.to_owned())
    }

    fn publish(sid: PeerId, op: Op) -> Action {
        Action::Publish {
            channel: id(),
            sid,
            msg: protocol::encode_control(op, ROOM, "alice", "a"),
        }
    }

    /// What node "b"'s member carol sends: her `peer_online` and a state, as
    /// node b publishes them.
    fn carol_online_and_state() -> (u64, Vec<Vec<u8>>) {
        let mut b = node("b", None);
        let (mut carol, _rx, _) = b.join("carol", ROOM);
        carol
            .handle(&frame(
                json!({"t": "control", "op": "peer_online", "c": ROOM}),
            ))
            .unwrap();
        let state = rmp_serde::to_vec_named(&json!({"x": 1})).unwrap();
        carol
            .handle(&frame(json!({"t": "control", "op": "peer_state", "c": ROOM, "pl": serde_bytes::ByteBuf::from(state)})))
            .unwrap();
        let published = b.pump().1;
        let sid = published[0].0;
        (sid, published.into_iter().map(|(_, m)| m).collect())
    }

    /// Node "a" with alice in the room and node "b" alive, whose member carol
    /// has joined and been heard: alice got her `peer_online` and her state.
    /// Returns carol's sid with alice.
    fn alice_hears_carol() -> (Node, Peer, OutboxReceiver, u64) {
        let mut a = node("a", None);
        let (alice, mut rx, _) = a.join("alice", ROOM);
        a.token("b", true);
        let (carol, messages) = carol_online_and_state();
        a.remote_join("b", carol, "carol");
        for m in messages {
            a.sample(Some(carol), m);
        }
        assert_eq!(
            got(&mut rx),
            vec![pair("peer_online", "carol"), pair("peer_state", "carol")]
        );
        (a, alice, rx, carol)
    }

    #[test]
    fn a_channel_is_linked_once_and_asks_only_nodes_it_knows() {
        let mut a = node("a", None);
        let (alice, _rx, actions) = a.join("alice", ROOM);
        let sid = alice.id();
        assert_eq!(
            actions,
            vec![
                Action::Subscribe(id()),
                Action::WatchApp(id()),
                publish(sid, Op::ChannelJoin)
            ],
            "alone in the mesh: no roster query"
        );
        let ask_b = RosterAsk {
            app: APP.into(),
            selector: keys::node_members_of_app(APP, "b"),
            node: Some("b".into()),
            attempt: 0,
        };
        assert_eq!(a.token("b", true), vec![Action::AskRosters(ask_b)]);
        assert_eq!(a.token("a", true), vec![], "its own token");

        let (_bob, _rx, actions) = a.join("bob", ROOM);
        assert!(
            matches!(actions[..], [Action::Publish { .. }]),
            "{actions:?}"
        );

        let (_alice2, _rx, actions) = a.join("alice", "other");
        let other: ChannelId = (APP.into(), "other".into());
        assert_eq!(actions[0], Action::Subscribe(other.clone()));
        assert_eq!(
            actions[1],
            Action::AskRosters(RosterAsk {
                app: APP.into(),
                selector: keys::members_of(APP, "other"),
                node: None,
                attempt: 0,
            }),
            "the app is watched already; node b is asked for the new channel"
        );
        assert!(matches!(actions[2], Action::Publish { .. }));
    }

    #[test]
    fn the_last_leave_unlinks_the_subscriber_before_the_watch() {
        let mut a = node("a", None);
        let (alice, _rx, _) = a.join("alice", ROOM);
        let (bob, _rx2, _) = a.join("bob", ROOM);
        drop(bob);
        let actions = a.pump().0;
        assert!(
            matches!(actions[..], [Action::Publish { .. }]),
            "{actions:?}"
        );
        let sid = alice.id();
        drop(alice);
        let actions = a.pump().0;
        assert_eq!(
            actions,
            vec![
                Action::Publish {
                    channel: id(),
                    sid,
                    msg: protocol::encode_control(Op::PeerOffline, ROOM, "alice", "a"),
                },
                Action::Unsubscribe(id()),
                Action::UnwatchApp(APP.into()),
            ]
        );
        assert_eq!(
            a.remote_join("b", 7, "carol"),
            vec![],
            "not linked any more"
        );
    }

    #[test]
    fn a_lost_node_token_takes_its_members_offline_once_even_if_their_leave_follows() {
        let (mut a, _alice, mut rx, carol) = alice_hears_carol();
        a.token("b", false);
        assert_eq!(got(&mut rx), vec![pair("peer_offline", "carol")]);
        // Her node's leave, overtaken by the token's going: known, quiet.
        let leave = protocol::encode_control(Op::PeerOffline, ROOM, "carol", "b");
        a.sample(Some(carol), leave);
        assert_eq!(got(&mut rx), vec![]);
        assert_eq!(a.hub.stats().drops(DropReason::MeshNoToken), 0);
    }

    #[test]
    fn a_member_back_after_a_partition_comes_back_with_its_last_state() {
        let (mut a, _alice, mut rx, carol) = alice_hears_carol();
        a.token("b", false);
        assert_eq!(got(&mut rx), vec![pair("peer_offline", "carol")]);

        // The partition heals: b's token is back, a asks, b's roster answers.
        assert!(matches!(a.token("b", true)[..], [Action::AskRosters(_)]));
        a.roster("b", &[(carol, "carol")]);
        assert_eq!(
            got(&mut rx),
            vec![pair("peer_online", "carol"), pair("peer_state", "carol")]
        );
        // The same roster again (a second answer) changes nothing.
        a.roster("b", &[(carol, "carol")]);
        assert_eq!(got(&mut rx), vec![]);
    }

    #[test]
    fn a_silent_new_member_is_announced_when_its_check_is_due() {
        let grace = Duration::from_millis(1500);
        let mut a = node("a", Some(grace));
        let (_alice, mut rx, _) = a.join("alice", ROOM);
        a.token("b", true);
        let actions = a.remote_join("b", 9, "carol");
        let member = RemoteMember {
            mesh_id: "b".into(),
            sid: 9,
            client_id: "carol".into(),
        };
        let check = Timer::Check {
            channel: id(),
            member,
        };
        assert_eq!(actions, vec![Action::After(grace, check.clone())]);
        assert_eq!(got(&mut rx), vec![]);
        // Nothing came from carol: the node says peer_online for her, and
        // alice's answer (her state) will reach carol's node.
        a.handle(Event::Timer(check.clone()));
        assert_eq!(got(&mut rx), vec![pair("peer_online", "carol")]);
        // Once only.
        a.handle(Event::Timer(check));
        assert_eq!(got(&mut rx), vec![]);
    }

    #[test]
    fn a_check_stands_down_once_the_member_was_heard() {
        let grace = Duration::from_millis(1500);
        let mut a = node("a", Some(grace));
        let (_alice, mut rx, _) = a.join("alice", ROOM);
        a.token("b", true);
        let (carol, messages) = carol_online_and_state();
        let check = match &a.remote_join("b", carol, "carol")[..] {
            [Action::After(_, check)] => check.clone(),
            other => panic!("{other:?}"),
        };
        for m in messages {
            a.sample(Some(carol), m);
        }
        assert_eq!(
            got(&mut rx),
            vec![pair("peer_online", "carol"), pair("peer_state", "carol")]
        );
        a.handle(Event::Timer(check));
        assert_eq!(got(&mut rx), vec![], "no second peer_online");
    }

    #[test]
    fn what_no_live_node_would_send_is_refused() {
        let mut a = node("a", None);
        let (_alice, mut rx, _) = a.join("alice", ROOM);
        let stats = a.hub.stats().clone();
        // A roster and a member of node b before b's token: refused.
        a.roster("b", &[(5, "carol")]);
        let (carol, messages) = carol_online_and_state();
        a.remote_join("b", carol, "carol");
        a.sample(Some(carol), messages[0].clone());
        assert_eq!(stats.drops(DropReason::MeshNoToken), 3);
        // This node's own mesh id, or a sid without a node: forged.
        let own = protocol::encode_control(Op::ChannelJoin, ROOM, "mallory", "a");
        a.sample(Some(1), own);
        let no_node = protocol::encode_control(Op::PeerOnline, ROOM, "mallory", "");
        a.sample(None, no_node);
        assert_eq!(stats.drops(DropReason::MeshForged), 2);
        assert_eq!(got(&mut rx), vec![]);
        // Once b's token lives, the same member is taken.
        a.token("b", true);
        a.remote_join("b", carol, "carol");
        a.sample(Some(carol), messages[0].clone());
        assert_eq!(got(&mut rx), vec![pair("peer_online", "carol")]);
    }

    #[test]
    fn a_node_is_asked_again_with_backoff_until_it_answers_or_goes() {
        let mut a = node("a", None);
        let (_alice, _rx, _) = a.join("alice", ROOM);
        let ask = match &a.token("b", true)[..] {
            [Action::AskRosters(ask)] => ask.clone(),
            other => panic!("{other:?}"),
        };
        let mut delays = Vec::new();
        let mut current = ask.clone();
        loop {
            let over = Event::RosterQueryOver {
                ask: current.clone(),
                replies: 0,
            };
            match &a.handle(over)[..] {
                [Action::After(delay, Timer::AskAgain(next))] => {
                    delays.push(delay.as_millis());
                    assert_eq!(
                        a.handle(Event::Timer(Timer::AskAgain(next.clone()))),
                        vec![Action::AskRosters(next.clone())]
                    );
                    current = next.clone();
                }
                [] => break,
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(delays, vec![250, 500, 1000, 2000, 4000]);
        // An answered query is not asked again; nor is a node that went.
        let answered = Event::RosterQueryOver {
            ask: ask.clone(),
            replies: 1,
        };
        assert_eq!(a.handle(answered), vec![]);
        a.token("b", false);
        let again = Timer::AskAgain(RosterAsk { attempt: 1, ..ask });
        assert_eq!(a.handle(Event::Timer(again)), vec![]);
    }

    #[test]
    fn a_failed_link_is_forgotten_and_tried_again() {
        let mut a = node("a", None);
        let (_alice, _rx, _) = a.join("alice", ROOM);
        assert_eq!(
            a.handle(Event::LinkFailed(id())),
            vec![Action::Unsubscribe(id()), Action::UnwatchApp(APP.into())]
        );
        let (_bob, _rx, actions) = a.join("bob", ROOM);
        assert_eq!(actions[0], Action::Subscribe(id()));
        assert_eq!(actions[1], Action::WatchApp(id()));
    }

    #[test]
    fn a_stamped_sample_reaches_the_browsers_once() {
        let mut a = node("a", None);
        let (_alice, mut rx, _) = a.join("alice", ROOM);
        a.token("b", true);
        let (carol, messages) = carol_online_and_state();
        a.remote_join("b", carol, "carol");
        let stamped = |seq| Origin {
            sid: Some(carol),
            stamp: Some(super::super::dedup::Stamp {
                incarnation: 7,
                seq,
            }),
            ..Origin::default()
        };
        for (seq, origin) in [(2, stamped(2)), (2, stamped(2)), (1, stamped(1))] {
            let payload = messages[seq as usize - 1].clone();
            a.handle(Event::Sample {
                channel: id(),
                payload,
                origin,
            });
        }
        // The copy of 2 and the straggler 1 are dropped.
        assert_eq!(got(&mut rx), vec![pair("peer_state", "carol")]);
    }
}
