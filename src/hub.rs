//! The hub owns presence state: apps, their channels, and the peers in them.
//!
//! Transports hand every decoded client frame to a [`Peer`]; the peer applies
//! PROTOCOL.md §3 and the hub fans the result out to the other members'
//! bounded outboxes. The message path is the same for every transport:
//! transport → [`Peer::handle`] → [`Hub::relay`] → each member's outbox →
//! that member's transport writer.
//!
//! A member whose outbox is full is a slow reader: it is told to close
//! ([`PeerCtl::close`]) and its messages are skipped, so it never slows the
//! channel. Dropping a [`Peer`] (its connection ended, for whatever reason)
//! removes it from every channel and sends `peer_offline` to the others.
//!
//! Presence is per user ([`crate::presence`]): a member's `peer_offline`
//! reaches the others only when the user's last connection in the channel,
//! on any node, is gone, after the grace period (`PRESENCE_GRACE_MS`) that
//! [`Hub::run_leaves`] keeps.
//!
//! State sits behind one `RwLock`, held only for map work and `try_send`s,
//! never across an `.await`.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, RwLock, RwLockWriteGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::apps::App;
use crate::auth::Grant;
use crate::budget::Budget;
use crate::outbox::{outbox, Outbox, OutboxReceiver, SendError};
use crate::presence::{Arrival, Departure, LocalUser, Place, Presence, Why};
use crate::protocol::{self, DecodeError, Kind, Op, Outbound};
use crate::stats::{DropReason, Gauges, Stats, Transport};

#[path = "console/hub_view.rs"]
pub mod console_view;

/// A connection's id on this node (the original's `sid`); never sent to clients.
pub type PeerId = u64;

/// Per-peer limits, from config.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Capacity of each peer's outgoing queue, in messages.
    pub outbox: usize,
    /// ... and in bytes; 0 = no byte bound.
    pub outbox_bytes: usize,
    /// Messages per second a peer may send; 0 = unlimited.
    pub msg_rate: u32,
    /// Bytes per second a peer may send; 0 = unlimited.
    pub byte_rate: u32,
    /// Channels one connection may join.
    pub max_channels: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            outbox: 1024,
            outbox_bytes: 8 << 20,
            msg_rate: 500,
            byte_rate: 1 << 20,
            max_channels: 64,
        }
    }
}

/// Why the server ends a connection. Transports map it to a close code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The client closed, reset or vanished; nothing left to tell it.
    PeerGone,
    /// The server is draining (WebSocket 1001).
    GoingAway,
    /// A text frame (1003).
    UnsupportedData,
    /// A message over MAX_MESSAGE_SIZE (1009).
    MessageTooBig,
    /// The outgoing queue overflowed (1008).
    SlowReader,
    /// No traffic, not even a Pong, within the idle timeout.
    Idle,
    /// The app's backend asked (`POST /v1/apps/{app}/users/{id}/disconnect`; 1008).
    Disconnected,
}

impl CloseReason {
    /// The WebSocket close code; WebTransport reuses it as the session error code.
    pub fn code(self) -> u16 {
        match self {
            CloseReason::PeerGone => 1000,
            CloseReason::GoingAway | CloseReason::Idle => 1001,
            CloseReason::UnsupportedData => 1003,
            CloseReason::MessageTooBig => 1009,
            CloseReason::SlowReader | CloseReason::Disconnected => 1008,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::PeerGone => "connection ended",
            CloseReason::GoingAway => "server shutting down",
            CloseReason::UnsupportedData => "text frames are not supported",
            CloseReason::MessageTooBig => "message too big",
            CloseReason::SlowReader => "slow reader",
            CloseReason::Idle => "idle timeout",
            CloseReason::Disconnected => "disconnected by the app",
        }
    }
}

/// Lets the hub (or anyone holding it) end a connection with a reason.
#[derive(Debug, Default)]
pub struct PeerCtl {
    token: CancellationToken,
    reason: OnceLock<CloseReason>,
}

impl PeerCtl {
    /// Asks the connection to close. The first reason wins; returns whether
    /// this call was the first.
    pub fn close(&self, reason: CloseReason) -> bool {
        let first = self.reason.set(reason).is_ok();
        self.token.cancel();
        first
    }

    pub fn reason(&self) -> Option<CloseReason> {
        self.reason.get().copied()
    }

    /// Lock-free (the token's own check takes a mutex; this runs once per
    /// delivery): `close` sets the reason before cancelling.
    pub fn is_closing(&self) -> bool {
        self.reason.get().is_some()
    }

    pub async fn closing(&self) {
        self.token.cancelled().await
    }
}

/// What the hub tells the mesh, in the order it happened.
#[derive(Debug)]
pub enum MeshEvent {
    /// A local peer joined a channel (first time for this connection).
    Joined {
        app: Arc<str>,
        channel: Arc<str>,
        sid: PeerId,
        client_id: Arc<str>,
    },
    /// A local peer left a channel (explicitly, or its connection ended).
    Left {
        app: Arc<str>,
        channel: Arc<str>,
        sid: PeerId,
    },
    /// A local peer's message, encoded as relayed, for the other nodes.
    Publish {
        app: Arc<str>,
        channel: Arc<str>,
        sid: PeerId,
        msg: Bytes,
        /// The message's span: the mesh hop is traced as its child.
        span: tracing::Span,
    },
}

/// The hub's side of the mesh link. Membership events are never dropped
/// (they are small and the mesh's view must stay true); publishes are
/// dropped and counted once `max_backlog` of them wait.
struct Uplink {
    tx: mpsc::UnboundedSender<MeshEvent>,
    backlog: Arc<AtomicUsize>,
    max_backlog: usize,
}

/// Where a member's messages go.
#[derive(Clone)]
struct Member {
    client_id: Arc<str>,
    outbox: Outbox,
    ctl: Arc<PeerCtl>,
    transport: Transport,
}

/// What one relay did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Delivery {
    /// Members it was queued for.
    pub sent: usize,
    /// Members skipped because their queue was full (now disconnecting).
    pub dropped: usize,
}

struct PeerEntry {
    app: Arc<str>,
    transport: Transport,
    member: Member,
}

/// A channel on this node: its members, and what each sender's state last
/// was (README, "Big rooms": the client answers every `peer_online` by
/// re-sending its unchanged state to all). A joiner gets those states from
/// the node with its join ack, so every member has every last state and a
/// repeated one goes to no one.
#[derive(Default)]
struct Channel {
    members: HashMap<PeerId, Member>,
    /// By sender ([`state_key`]): its last state as relayed.
    states: HashMap<Box<str>, Bytes>,
}

/// A state's sender across the mesh: its client id and the node it is on.
fn state_key(client_id: &str, mesh_id: &str) -> String {
    format!("{client_id}\u{0}{mesh_id}")
}

/// An app's channels.
type Channels = HashMap<Arc<str>, Channel>;

struct State {
    apps: HashMap<Arc<str>, Channels>,
    peers: HashMap<PeerId, PeerEntry>,
    /// Users per channel, here and on the other nodes the mesh reports.
    presence: Presence,
}

pub struct Hub {
    mesh_id: Arc<str>,
    limits: Limits,
    stats: Arc<Stats>,
    state: RwLock<State>,
    next_id: AtomicU64,
    draining: AtomicBool,
    uplink: OnceLock<Uplink>,
    /// Wakes [`Hub::run_leaves`] when a user starts leaving.
    leaving: tokio::sync::Notify,
}

impl Hub {
    pub fn new(mesh_id: &str, limits: Limits, stats: Arc<Stats>) -> Arc<Hub> {
        Arc::new(Hub {
            mesh_id: mesh_id.into(),
            limits,
            stats,
            state: RwLock::new(State {
                apps: HashMap::new(),
                peers: HashMap::new(),
                presence: Presence::new(mesh_id, Duration::ZERO),
            }),
            next_id: AtomicU64::new(first_peer_id()),
            draining: AtomicBool::new(false),
            uplink: OnceLock::new(),
            leaving: tokio::sync::Notify::new(),
        })
    }

    /// How long a user whose last connection in a channel went stays a
    /// member (`PRESENCE_GRACE_MS`; zero until set).
    pub fn set_presence_grace(&self, grace: Duration) {
        self.write().presence.set_grace(grace);
    }

    pub fn mesh_id(&self) -> &str {
        &self.mesh_id
    }

    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// Registers a new connection of `client_id` in `app`, with what its
    /// token granted. The receiver is the peer's outbox, drained by its
    /// transport's writer.
    pub fn connect(
        self: &Arc<Self>,
        app: &Arc<App>,
        client_id: &str,
        transport: Transport,
        grant: Grant,
    ) -> (Peer, OutboxReceiver) {
        let (tx, rx) = outbox(self.limits.outbox, self.limits.outbox_bytes);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let member = Member {
            client_id: client_id.into(),
            outbox: tx,
            ctl: Arc::default(),
            transport,
        };
        let settings = app.clone();
        let app: Arc<str> = app.id.clone();
        self.write().peers.insert(
            id,
            PeerEntry {
                app: app.clone(),
                transport,
                member: member.clone(),
            },
        );
        let peer = Peer {
            hub: self.clone(),
            id,
            app,
            member,
            joined: HashMap::new(),
            budget: Budget::new(self.limits.msg_rate, self.limits.byte_rate, Instant::now()),
            traffic: self.stats.console.app(&settings.id),
            settings,
            grant: (grant != Grant::default()).then(|| Box::new(grant)),
        };
        (peer, rx)
    }

    /// Sends `msg` (of `kind`) to every member of `app/channel` except `from`.
    pub fn relay(
        &self,
        app: &str,
        channel: &str,
        from: Option<PeerId>,
        msg: &Bytes,
        kind: Kind,
    ) -> Delivery {
        let state = self.read();
        let Some(ch) = state.apps.get(app).and_then(|a| a.get(channel)) else {
            return Delivery::default();
        };
        self.deliver_to(ch, from, msg, kind)
    }

    /// Relays a `peer_state` of the sender `key` ([`state_key`]) to every
    /// other member if it changed: an unchanged one every member has. A
    /// local sender's changed state (`user`: its client id and `pl`) is also
    /// kept as its user's, for the presence API.
    fn relay_state(
        &self,
        app: &str,
        channel: &str,
        from: Option<PeerId>,
        (key, user): (&str, Option<(&str, &[u8])>),
        msg: &Bytes,
    ) -> Delivery {
        // Most states in a big room are answers to a join, unchanged: they
        // need no write lock, which would stall every fan-out.
        let state = self.read();
        let Some(ch) = state.apps.get(app).and_then(|a| a.get(channel)) else {
            return Delivery::default();
        };
        if ch.states.get(key) == Some(msg) {
            return Delivery::default();
        }
        drop(state);
        let mut guard = self.write();
        let state = &mut *guard;
        let Some(ch) = state.apps.get_mut(app).and_then(|a| a.get_mut(channel)) else {
            return Delivery::default();
        };
        ch.states.insert(key.into(), msg.clone());
        if let Some((client_id, pl)) = user {
            let pl = Bytes::copy_from_slice(pl);
            state.presence.set_state(app, channel, client_id, pl);
        }
        self.deliver_to(ch, from, msg, Kind::Control(Op::PeerState))
    }

    /// Relays a `peer_offline` of `client_id`: those who get it forget the
    /// user, so its next state must reach them all.
    fn relay_offline(
        &self,
        app: &str,
        channel: &str,
        from: Option<PeerId>,
        client_id: &str,
        msg: &Bytes,
    ) -> Delivery {
        self.forget_states(app, channel, client_id, None);
        self.relay(app, channel, from, msg, Kind::Control(Op::PeerOffline))
    }

    /// Forgets the last states of `client_id` (from node `mesh_id`, or from
    /// every node) in `app/channel`: the members who are told that it went
    /// offline, or came online again, no longer hold it (the client resets a
    /// member on `peer_online`), so its next state must reach them all.
    fn forget_states(&self, app: &str, channel: &str, client_id: &str, mesh_id: Option<&str>) {
        let mut state = self.write();
        if let Some(ch) = state.apps.get_mut(app).and_then(|a| a.get_mut(channel)) {
            match mesh_id {
                Some(mesh_id) => {
                    ch.states.remove(state_key(client_id, mesh_id).as_str());
                }
                None => {
                    let prefix = state_key(client_id, "");
                    ch.states.retain(|k, _| !k.starts_with(&prefix));
                }
            }
        }
    }

    /// Queues `msg` for the members of `ch` but `from`.
    fn deliver_to(&self, ch: &Channel, from: Option<PeerId>, msg: &Bytes, kind: Kind) -> Delivery {
        let mut delivery = Delivery::default();
        let mut per_transport = [0u64; 2];
        for (id, member) in &ch.members {
            if Some(*id) == from {
                continue;
            }
            match self.offer(member, msg.clone()) {
                Offer::Queued => {
                    delivery.sent += 1;
                    per_transport[member.transport as usize] += 1;
                }
                Offer::Full => delivery.dropped += 1,
                Offer::Closing => {}
            }
        }
        for t in [Transport::WebSocket, Transport::WebTransport] {
            self.stats
                .record_out(t, kind, per_transport[t as usize], msg.len());
        }
        delivery
    }

    /// Queues one message for one member; a full queue disconnects it.
    fn offer(&self, member: &Member, msg: Bytes) -> Offer {
        self.offer_with(member, |outbox| outbox.try_send(msg))
    }

    fn offer_with(
        &self,
        member: &Member,
        send: impl FnOnce(&Outbox) -> Result<(), SendError>,
    ) -> Offer {
        if member.ctl.is_closing() {
            return Offer::Closing;
        }
        match send(&member.outbox) {
            Ok(()) => Offer::Queued,
            Err(SendError::Full) => {
                if member.ctl.close(CloseReason::SlowReader) {
                    self.stats.count_drop(DropReason::SlowReader);
                    tracing::debug!(peer = %member.client_id, "outbox full: disconnecting slow reader");
                }
                Offer::Full
            }
            Err(SendError::Closed) => Offer::Closing,
        }
    }

    /// Adds `id` to `app/channel` within the app's caps on this node, and
    /// queues for it `ack` then every member's last state, in one reply:
    /// the members' answers to its `peer_online` are then unchanged states,
    /// relayed to no one, and the joiner's queue takes the room's states
    /// whatever the room's size (README, "Big rooms").
    fn join(
        &self,
        app: &App,
        channel: &str,
        id: PeerId,
        member: &Member,
        ack: Bytes,
    ) -> Result<Arrival, DropReason> {
        let limits = &app.limits;
        let mut state = self.write();
        let channels = state.apps.entry(app.id.clone()).or_default();
        let members = match channels.get_mut(channel) {
            Some(members) => members,
            None => {
                if limits.max_channels != 0 && channels.len() >= limits.max_channels {
                    return Err(DropReason::AppChannelLimit);
                }
                channels.entry(channel.into()).or_default()
            }
        };
        if limits.max_members != 0 && members.members.len() >= limits.max_members {
            if members.members.is_empty() {
                channels.remove(channel);
            }
            return Err(DropReason::ChannelFull);
        }
        members.members.insert(id, member.clone());
        let ack_len = ack.len();
        let mut reply = Vec::with_capacity(1 + members.states.len());
        reply.push(ack);
        reply.extend(members.states.values().cloned());
        let user = &member.client_id;
        let arrival = state.presence.arrive(&app.id, channel, user, Place::Here);
        if self.offer_with(member, |outbox| outbox.try_send_all(&reply)) == Offer::Queued {
            let stats = &self.stats;
            stats.record_out(member.transport, Kind::Control(Op::ChannelJoin), 1, ack_len);
            let states = reply[1..].iter().map(Bytes::len).sum();
            let n = reply.len() as u64 - 1;
            stats.record_out_total(member.transport, Kind::Control(Op::PeerState), n, states);
        }
        drop(state);
        log_arrival(&app.id, channel, user, &self.mesh_id, arrival);
        Ok(arrival)
    }

    /// Removes `id` (client `client_id`) from `app/channel`; if that was
    /// the user's last connection there, the others are told it went
    /// offline, now or after the grace period.
    fn leave(&self, app: &str, channel: &str, id: PeerId, client_id: &str, offline: &Bytes) {
        let mut state = self.write();
        if remove_member(&mut state, app, channel, id) {
            let now = Instant::now();
            let departure =
                state
                    .presence
                    .depart(app, channel, client_id, Place::Here, Why::Left, now);
            drop(state);
            self.on_departure(app, channel, Some(id), client_id, departure, offline);
        }
    }

    /// Acts on what a connection's leave means for its user.
    fn on_departure(
        &self,
        app: &str,
        channel: &str,
        from: Option<PeerId>,
        client_id: &str,
        departure: Departure,
        offline: &Bytes,
    ) -> Delivery {
        match departure {
            Departure::Offline => self.relay_offline(app, channel, from, client_id, offline),
            Departure::Leaving { .. } => {
                self.leaving.notify_one();
                Delivery::default()
            }
            Departure::Stays => Delivery::default(),
        }
    }

    /// A connection of `client_id` on node `mesh_id` joined `app/channel`
    /// (the mesh reports it for the channels this node has members in).
    /// Only a [`Arrival::First`] one is announced to the local members.
    pub fn remote_joined(
        &self,
        app: &str,
        channel: &str,
        client_id: &str,
        mesh_id: &str,
    ) -> Arrival {
        let place = Place::Node(mesh_id);
        let arrival = self.write().presence.arrive(app, channel, client_id, place);
        log_arrival(app, channel, client_id, mesh_id, arrival);
        arrival
    }

    /// Answers a new connection elsewhere of a user already present here,
    /// whose `peer_online` the local members therefore don't get: publishes
    /// each local user's last state in `app/channel` to the mesh, as their
    /// answers would have, so that connection's node learns them. Unchanged
    /// states go to no browser on any node that has them.
    pub fn republish_states(&self, app: &str, channel: &str) {
        let state = self.read();
        let Some((app, channels)) = state.apps.get_key_value(app) else {
            return;
        };
        let Some((channel, ch)) = channels.get_key_value(channel) else {
            return;
        };
        let mut publish = Vec::new();
        let mut seen = HashSet::new();
        for (sid, member) in &ch.members {
            if !seen.insert(&member.client_id) {
                continue;
            }
            let key = state_key(&member.client_id, &self.mesh_id);
            if let Some(msg) = ch.states.get(key.as_str()) {
                publish.push((*sid, msg.clone()));
            }
        }
        let (app, channel) = (app.clone(), channel.clone());
        drop(state);
        for (sid, msg) in publish {
            self.to_mesh(MeshEvent::Publish {
                app: app.clone(),
                channel: channel.clone(),
                sid,
                msg,
                span: tracing::Span::current(),
            });
        }
    }

    /// A connection of `client_id` on node `mesh_id` left `app/channel`:
    /// `offline` (its node's `peer_offline`) goes to the local members if
    /// that was the user's last connection, now or after the grace period.
    pub fn remote_left(
        &self,
        app: &str,
        channel: &str,
        (client_id, mesh_id): (&str, &str),
        why: Why,
        offline: &Bytes,
    ) -> Delivery {
        let now = Instant::now();
        let place = Place::Node(mesh_id);
        let departure = self
            .write()
            .presence
            .depart(app, channel, client_id, place, why, now);
        self.on_departure(app, channel, None, client_id, departure, offline)
    }

    /// The mesh stopped following `app/channel` (no local member is left):
    /// forget the other nodes' connections there.
    pub fn forget_remote(&self, app: &str, channel: &str) {
        self.write().presence.forget_elsewhere(app, channel);
    }

    /// Whether `client_id` is in `app/channel`, connected anywhere this
    /// node knows of or within its grace period.
    pub fn is_present(&self, app: &str, channel: &str, client_id: &str) -> bool {
        self.read().presence.is_present(app, channel, client_id)
    }

    /// Tells the local members about the users whose grace period is over
    /// at `now`; returns how many users went offline.
    pub fn expire_leaves(&self, now: Instant) -> usize {
        let gone = self.write().presence.due(now);
        for g in &gone {
            let offline = offline_msg(&g.channel, &g.user, &g.mesh_id);
            self.relay_offline(&g.app, &g.channel, None, &g.user, &offline);
            tracing::debug!(app = %g.app, channel = %g.channel, peer = %g.user, mesh_id = %g.mesh_id, "presence: user gone after the grace period");
        }
        gone.len()
    }

    /// Ends grace periods as they fall due; runs for the node's life.
    pub async fn run_leaves(self: Arc<Self>) {
        loop {
            let next = self.read().presence.next_due();
            match next {
                Some(due) => {
                    let due = tokio::time::Instant::from_std(due);
                    tokio::select! {
                        _ = tokio::time::sleep_until(due) => {}
                        _ = self.leaving.notified() => {}
                    }
                }
                None => self.leaving.notified().await,
            }
            self.expire_leaves(Instant::now());
        }
    }

    /// This node's users of each of `app`'s channels, for the presence API.
    pub fn hosted(&self, app: &str) -> Vec<(Arc<str>, Vec<LocalUser>)> {
        self.read().presence.hosted(app)
    }

    /// Connects the mesh: from now on joins, leaves and local messages are
    /// also sent to it, in order. Returns the event stream and the publish
    /// backlog counter (the mesh decrements it as it publishes).
    pub fn attach_mesh(
        &self,
        max_backlog: usize,
    ) -> (mpsc::UnboundedReceiver<MeshEvent>, Arc<AtomicUsize>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let backlog = Arc::new(AtomicUsize::new(0));
        let uplink = Uplink {
            tx,
            backlog: backlog.clone(),
            max_backlog,
        };
        if self.uplink.set(uplink).is_err() {
            panic!("mesh attached twice");
        }
        (rx, backlog)
    }

    fn to_mesh(&self, event: MeshEvent) {
        let Some(uplink) = self.uplink.get() else {
            return;
        };
        if matches!(event, MeshEvent::Publish { .. }) {
            if uplink.backlog.load(Ordering::Relaxed) >= uplink.max_backlog {
                self.stats.count_drop(DropReason::MeshBacklog);
                return;
            }
            uplink.backlog.fetch_add(1, Ordering::Relaxed);
        }
        let _ = uplink.tx.send(event);
    }

    /// Delivers a message that came through the mesh to the local members.
    /// A state is pinned to its sender here too: the node that relayed it
    /// did so already, unless it was no node.
    pub fn deliver_remote(&self, app: &str, channel: &str, msg: &Bytes, kind: Kind) -> Delivery {
        let op = kind.op();
        if !matches!(op, Some(Op::PeerState | Op::PeerOffline | Op::PeerOnline)) {
            return self.relay(app, channel, None, msg, kind);
        }
        let Ok(relayed) = protocol::decode_relayed(msg) else {
            return self.relay(app, channel, None, msg, kind);
        };
        let sender = (relayed.peer, relayed.mesh.unwrap_or(""));
        if op == Some(Op::PeerOffline) {
            return self.relay_offline(app, channel, None, sender.0, msg);
        }
        if op == Some(Op::PeerOnline) {
            self.forget_states(app, channel, sender.0, Some(sender.1));
            return self.relay(app, channel, None, msg, kind);
        }
        let key = state_key(sender.0, sender.1);
        match pin_relayed(&relayed) {
            Some(pinned) => self.relay_state(app, channel, None, (&key, None), &pinned),
            None => self.relay_state(app, channel, None, (&key, None), msg),
        }
    }

    /// (app, transport, connections) and the channel count, for `/metrics`.
    pub fn gauges(&self) -> Gauges {
        let state = self.read();
        let mut connections: HashMap<(&str, Transport), usize> = HashMap::new();
        for entry in state.peers.values() {
            *connections
                .entry((&entry.app, entry.transport))
                .or_default() += 1;
        }
        let mut connections: Vec<_> = connections
            .into_iter()
            .map(|((app, t), n)| (app.to_owned(), t, n))
            .collect();
        connections.sort_by(|a, b| (&a.0, a.1.as_str()).cmp(&(&b.0, b.1.as_str())));
        Gauges {
            connections,
            channels: state.apps.values().map(HashMap::len).sum(),
            draining: self.is_draining(),
        }
    }

    /// Starts draining: `/health` turns 503 and new connections are refused.
    pub fn begin_drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Announces every peer's departure to the other members of its channels,
    /// empties the channels, then asks every connection to close (1001).
    /// Writers flush what is queued before closing. Returns the peer count.
    pub fn close_all(&self) -> usize {
        let mut state = self.write();
        for (app, channels) in state.apps.drain() {
            for (channel, ch) in channels {
                let members = &ch.members;
                for sid in members.keys() {
                    self.to_mesh(MeshEvent::Left {
                        app: app.clone(),
                        channel: channel.clone(),
                        sid: *sid,
                    });
                }
                for (leaving_id, leaving) in members {
                    let offline = offline_msg(&channel, &leaving.client_id, &self.mesh_id);
                    for (id, member) in members {
                        // Everyone is leaving: a full queue is not a slow reader here.
                        if id != leaving_id {
                            let _ = member.outbox.try_send(offline.clone());
                        }
                    }
                }
                tracing::debug!(%app, %channel, members = members.len(), "drained channel");
            }
        }
        for entry in state.peers.values() {
            entry.member.ctl.close(CloseReason::GoingAway);
        }
        state.peers.len()
    }

    /// Closes every connection of user `client_id` of `app` on this node
    /// (the app's backend asked); returns how many.
    pub fn disconnect_user(&self, app: &str, client_id: &str) -> usize {
        let state = self.read();
        let mut closed = 0;
        for entry in state.peers.values() {
            if &*entry.app == app && &*entry.member.client_id == client_id {
                entry.member.ctl.close(CloseReason::Disconnected);
                closed += 1;
            }
        }
        if closed > 0 {
            tracing::info!(%app, peer = %client_id, connections = closed, "disconnected on the app's request");
        }
        closed
    }

    /// Live connections.
    pub fn peer_count(&self) -> usize {
        self.read().peers.len()
    }

    /// SIGUSR1: every app, channel and member, one line each.
    pub fn dump(&self) -> Vec<String> {
        let state = self.read();
        let mut lines = vec![format!(
            "dump: mesh_id={} apps={} peers={}",
            self.mesh_id,
            state.apps.len(),
            state.peers.len()
        )];
        let mut apps: Vec<_> = state.apps.iter().collect();
        apps.sort_by(|a, b| a.0.cmp(b.0));
        for (app, channels) in apps {
            lines.push(format!("dump: app={app} channels={}", channels.len()));
            let mut channels: Vec<_> = channels.iter().collect();
            channels.sort_by(|a, b| a.0.cmp(b.0));
            for (channel, ch) in channels {
                let mut peers: Vec<String> = ch
                    .members
                    .iter()
                    .map(|(id, member)| {
                        let transport = state.peers.get(id).map_or("?", |p| p.transport.as_str());
                        format!("{}(sid={id},{transport})", member.client_id)
                    })
                    .collect();
                peers.sort();
                lines.push(format!(
                    "dump: app={app} channel={channel} members={} [{}]",
                    ch.members.len(),
                    peers.join(", ")
                ));
            }
        }
        lines
    }

    /// SIGUSR2: connections per app (connections, not channel memberships).
    pub fn connections_per_app(&self) -> Vec<(String, usize)> {
        let state = self.read();
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for entry in state.peers.values() {
            *counts.entry(&entry.app).or_default() += 1;
        }
        let mut counts: Vec<_> = counts.into_iter().map(|(a, n)| (a.to_owned(), n)).collect();
        counts.sort();
        counts
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Offer {
    Queued,
    Full,
    Closing,
}

/// Returns whether the member was there.
fn remove_member(state: &mut State, app: &str, channel: &str, id: PeerId) -> bool {
    let Some(channels) = state.apps.get_mut(app) else {
        return false;
    };
    let Some(members) = channels.get_mut(channel) else {
        return false;
    };
    let removed = members.members.remove(&id).is_some();
    if members.members.is_empty() {
        channels.remove(channel);
        if channels.is_empty() {
            state.apps.remove(app);
        }
    }
    removed
}

fn log_arrival(app: &str, channel: &str, user: &str, mesh_id: &str, arrival: Arrival) {
    if arrival == Arrival::Back {
        tracing::debug!(%app, %channel, peer = %user, %mesh_id, "presence: user back within the grace period");
    }
}

fn offline_msg(channel: &str, client_id: &str, mesh_id: &str) -> Bytes {
    Bytes::from(protocol::encode_control(
        Op::PeerOffline,
        channel,
        client_id,
        mesh_id,
    ))
}

/// A relayed state whose `pl.id` is not its `p`, pinned; `None` if it is
/// fine as it is.
fn pin_relayed(relayed: &Outbound<'_>) -> Option<Bytes> {
    let pinned = protocol::pin_state(relayed.payload?, relayed.peer, &[])?;
    Some(Bytes::from(protocol::encode(&Outbound {
        payload: Some(&pinned),
        ..*relayed
    })))
}

/// One connected client, owned by its transport's reader.
pub struct Peer {
    hub: Arc<Hub>,
    id: PeerId,
    app: Arc<str>,
    member: Member,
    /// Joined channels, each with whether the peer's `peer_online` there is
    /// still to go out: only a user's first connection announces itself.
    joined: HashMap<Arc<str>, bool>,
    budget: Budget,
    /// The app's settings when the peer connected (its caps).
    settings: Arc<App>,
    /// What the peer's token granted; `None`: no restriction, no overlay.
    grant: Option<Box<Grant>>,
    /// Its app's counters for the console.
    traffic: Arc<crate::console::AppTraffic>,
}

impl Peer {
    pub fn id(&self) -> PeerId {
        self.id
    }

    pub fn ctl(&self) -> &Arc<PeerCtl> {
        &self.member.ctl
    }

    /// Charges one message of `len` bytes read from a reliable transport
    /// (WebSocket, WebTransport stream) to the peer's budget. Returns how
    /// long the transport must stop reading: nothing is dropped, the
    /// sender is slowed by flow control instead.
    pub fn charge(&mut self, len: usize) -> Option<Duration> {
        let pause = self.budget.charge(len, Instant::now());
        if pause.is_some() {
            self.hub.stats.count_throttle();
        }
        pause
    }

    /// Charges one datagram; `false` when it is over budget, and counted.
    pub fn try_charge(&mut self, len: usize) -> bool {
        let ok = self.budget.try_charge(len, Instant::now());
        if !ok {
            self.hub.stats.count_drop(DropReason::RateLimited);
            self.traffic.count_drop(DropReason::RateLimited);
            self.hub.stats.record_in(self.member.transport, None, len);
        }
        ok
    }

    /// Applies one client frame (PROTOCOL.md §3). A frame that is dropped is
    /// counted, and the reason returned for the caller's debug log; the
    /// connection lives on either way.
    pub fn handle(&mut self, frame: &[u8]) -> Result<(), DropReason> {
        // One trace per message: a root span, not a child of the connection.
        let span = tracing::info_span!(
            target: "otel", parent: None, "message",
            app = %self.app, peer = %self.member.client_id, sid = self.id,
            mesh_id = %self.hub.mesh_id, transport = self.member.transport.as_str(),
            bytes = frame.len(), op = tracing::field::Empty, channel = tracing::field::Empty,
        );
        let _entered = span.enter();
        self.traffic.count_in(frame.len());
        let result = self.apply(frame, &span);
        if let Err(reason) = result {
            self.hub.stats.count_drop(reason);
            self.traffic.count_drop(reason);
            tracing::info!(target: "otel", reason = reason.as_str(), "dropped");
        }
        result
    }

    fn apply(&mut self, frame: &[u8], span: &tracing::Span) -> Result<(), DropReason> {
        let transport = self.member.transport;
        let msg = protocol::decode(frame).map_err(|e: DecodeError| {
            tracing::debug!(error = %e, len = frame.len(), "undecodable message");
            self.hub.stats.record_in(transport, None, frame.len());
            if e.is_unknown_kind() {
                DropReason::UnknownType
            } else {
                DropReason::Malformed
            }
        })?;
        self.hub
            .stats
            .record_in(transport, Some(msg.kind), frame.len());
        span.record("op", msg.kind.label());
        span.record("channel", msg.channel);

        if msg.kind == Kind::Control(Op::ChannelJoin) {
            if !self.joined.contains_key(msg.channel) {
                if self.joined.len() >= self.hub.limits.max_channels {
                    return Err(DropReason::TooManyChannels);
                }
                if self
                    .grant
                    .as_ref()
                    .is_some_and(|g| !g.may_join(msg.channel))
                {
                    return Err(DropReason::ChannelNotAllowed);
                }
                let channel: Arc<str> = msg.channel.into();
                let ack = Bytes::from(protocol::encode_join_ack(msg.channel, &self.hub.mesh_id));
                let arrival =
                    self.hub
                        .join(&self.settings, &channel, self.id, &self.member, ack)?;
                self.hub.to_mesh(MeshEvent::Joined {
                    app: self.app.clone(),
                    channel: channel.clone(),
                    sid: self.id,
                    client_id: self.member.client_id.clone(),
                });
                self.joined.insert(channel, arrival == Arrival::First);
                return Ok(());
            }
            let ack = Bytes::from(protocol::encode_join_ack(msg.channel, &self.hub.mesh_id));
            let len = ack.len();
            if self.hub.offer(&self.member, ack) == Offer::Queued {
                self.hub.stats.record_out(transport, msg.kind, 1, len);
            }
            return Ok(());
        }

        let Some(announce) = self.joined.get_mut(msg.channel) else {
            return Err(DropReason::NotJoined);
        };
        if msg.kind == Kind::Control(Op::PeerOnline) && !std::mem::take(announce) {
            // The user is known in the channel already (another tab, or a
            // reload within the grace), and this connection got every state
            // with its ack: the members have nothing to learn or answer.
            tracing::debug!(
                channel = msg.channel,
                "peer_online of a present user not relayed"
            );
            return Ok(());
        }
        let pinned = match (msg.kind, msg.payload) {
            (Kind::Control(Op::PeerState), Some(pl)) => {
                let overlay = self.grant.as_ref().map_or(&[][..], |g| &g.state[..]);
                protocol::pin_state(pl, &self.member.client_id, overlay)
            }
            _ => None,
        };
        let relayed = Bytes::from(protocol::encode(&Outbound {
            kind: msg.kind,
            channel: msg.channel,
            peer: &self.member.client_id,
            payload: pinned.as_deref().or(msg.payload),
            mesh: Some(&self.hub.mesh_id),
        }));
        if msg.kind == Kind::Control(Op::PeerOffline) {
            // Other nodes learn it from the peer_offline the mesh publishes on Left.
            if let Some((channel, _)) = self.joined.remove_entry(msg.channel) {
                let client_id = &self.member.client_id;
                self.hub
                    .leave(&self.app, &channel, self.id, client_id, &relayed);
                self.hub.to_mesh(MeshEvent::Left {
                    app: self.app.clone(),
                    channel,
                    sid: self.id,
                });
            }
        } else {
            let deliver = tracing::info_span!(target: "otel", "deliver", delivered = tracing::field::Empty, dropped_slow = tracing::field::Empty);
            let delivery = deliver.in_scope(|| {
                let (app, from) = (&self.app, Some(self.id));
                let client_id = &self.member.client_id;
                if msg.kind == Kind::Control(Op::PeerState) {
                    let pl = pinned.as_deref().or(msg.payload);
                    let key = state_key(client_id, &self.hub.mesh_id);
                    let sender = (key.as_str(), pl.map(|pl| (&**client_id, pl)));
                    self.hub
                        .relay_state(app, msg.channel, from, sender, &relayed)
                } else {
                    if msg.kind == Kind::Control(Op::PeerOnline) {
                        let mesh_id = Some(&*self.hub.mesh_id);
                        self.hub.forget_states(app, msg.channel, client_id, mesh_id);
                    }
                    self.hub.relay(app, msg.channel, from, &relayed, msg.kind)
                }
            });
            deliver.record("delivered", delivery.sent);
            deliver.record("dropped_slow", delivery.dropped);
            self.traffic.count_out(delivery.sent);
            let from = (&*self.member.client_id, &*self.hub.mesh_id);
            crate::console::tap(
                &self.hub.stats,
                &self.app,
                msg.channel,
                from,
                msg.kind,
                &relayed,
            );
            if let Some((channel, _)) = self.joined.get_key_value(msg.channel) {
                self.hub.to_mesh(MeshEvent::Publish {
                    app: self.app.clone(),
                    channel: channel.clone(),
                    sid: self.id,
                    msg: relayed,
                    span: span.clone(),
                });
            }
        }
        Ok(())
    }
}

impl Drop for Peer {
    /// The connection ended: leave every channel with a `peer_offline`.
    fn drop(&mut self) {
        if self.member.ctl.reason() == Some(CloseReason::SlowReader) {
            self.traffic.count_drop(DropReason::SlowReader);
            let why = format!("{} disconnected: queue full", self.member.client_id);
            self.hub
                .stats
                .console
                .error("slow_reader", Some(&*self.app), why);
        }
        let mut state = self.hub.write();
        state.peers.remove(&self.id);
        let (now, client_id) = (Instant::now(), &self.member.client_id);
        let mut left = Vec::new();
        for (channel, _) in self.joined.drain() {
            if remove_member(&mut state, &self.app, &channel, self.id) {
                let (place, why) = (Place::Here, Why::Left);
                let departure = state
                    .presence
                    .depart(&self.app, &channel, client_id, place, why, now);
                left.push((channel, departure));
            }
        }
        drop(state);
        for (channel, departure) in left {
            let offline = offline_msg(&channel, client_id, &self.hub.mesh_id);
            let from = Some(self.id);
            self.hub
                .on_departure(&self.app, &channel, from, client_id, departure, &offline);
            self.hub.to_mesh(MeshEvent::Left {
                app: self.app.clone(),
                channel,
                sid: self.id,
            });
        }
    }
}

/// Peer ids start at a random point so that a restarted node never reuses
/// the ids (and so the mesh membership keys) of its previous run.
fn first_peer_id() -> u64 {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 8];
    let _ = ring::rand::SystemRandom::new().fill(&mut bytes);
    // 48 bits: unique enough, and short in logs and keys.
    (u64::from_be_bytes(bytes) >> 16).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apps::AppLimits;
    use serde_json::{json, Value};

    fn frame(v: Value) -> Vec<u8> {
        rmp_serde::to_vec_named(&v).unwrap()
    }

    fn join(c: &str) -> Vec<u8> {
        frame(json!({"t": "control", "op": "channel_join", "c": c}))
    }

    /// A `peer_state` for `c` whose `pl` is `state` bin-wrapped, as the
    /// published client sends it.
    fn state_frame(c: &str, state: &Value) -> Vec<u8> {
        let pl = rmp_serde::to_vec_named(state).unwrap();
        let msg = rmpv::Value::Map(vec![
            ("t".into(), "control".into()),
            ("op".into(), "peer_state".into()),
            ("c".into(), c.into()),
            ("pl".into(), rmpv::Value::Binary(pl)),
        ]);
        let mut out = Vec::new();
        rmpv::encode::write_value(&mut out, &msg).unwrap();
        out
    }

    /// The state in the next relayed message's `pl`.
    fn recv_state(rx: &mut OutboxReceiver) -> rmpv::Value {
        let msg = rx.try_recv_one().expect("a message");
        let relayed = protocol::decode_relayed(&msg).unwrap();
        match rmpv::decode::read_value(&mut relayed.payload.unwrap()).unwrap() {
            rmpv::Value::Binary(inner) => rmpv::decode::read_value(&mut &inner[..]).unwrap(),
            other => other,
        }
    }

    fn recv(rx: &mut OutboxReceiver) -> Option<Value> {
        rx.try_recv_one()
            .map(|b| rmp_serde::from_slice(&b).unwrap())
    }

    fn hub(limits: Limits) -> Arc<Hub> {
        Hub::new("m1", limits, Arc::default())
    }

    fn app(id: &str) -> Arc<App> {
        Arc::new(App::new(id, AppLimits::default()))
    }

    #[test]
    fn join_acks_only_the_joiner_and_relays_without_echo() {
        let hub = hub(Limits::default());
        let (mut a, mut rx_a) =
            hub.connect(&app("app"), "alice", Transport::WebSocket, Grant::default());
        let (mut b, mut rx_b) =
            hub.connect(&app("app"), "bob", Transport::WebSocket, Grant::default());
        a.handle(&join("room")).unwrap();
        b.handle(&join("room")).unwrap();
        assert_eq!(
            recv(&mut rx_a).unwrap(),
            json!({"t":"control","op":"channel_join","c":"room","p":"","mesh":"m1"})
        );
        assert_eq!(recv(&mut rx_b).unwrap()["op"], "channel_join");
        assert!(recv(&mut rx_a).is_none(), "a must not see b's join ack");

        a.handle(&frame(
            json!({"t":"data","c":"room","p":"spoof","pl": serde_bytes::ByteBuf::from(vec![0x90])}),
        ))
        .unwrap();
        let got = recv(&mut rx_b).unwrap();
        assert_eq!(got["p"], "alice");
        assert_eq!(got["mesh"], "m1");
        assert!(recv(&mut rx_a).is_none(), "no echo to the sender");
    }

    #[test]
    fn apps_are_isolated() {
        let hub = hub(Limits::default());
        let (mut a, _rx_a) = hub.connect(
            &app("app1"),
            "alice",
            Transport::WebSocket,
            Grant::default(),
        );
        let (mut b, mut rx_b) =
            hub.connect(&app("app2"), "bob", Transport::WebSocket, Grant::default());
        a.handle(&join("room")).unwrap();
        b.handle(&join("room")).unwrap();
        recv(&mut rx_b);
        a.handle(&frame(json!({"t":"data","c":"room"}))).unwrap();
        assert!(recv(&mut rx_b).is_none());
    }

    #[test]
    fn drop_and_explicit_leave_send_peer_offline_once() {
        let hub = hub(Limits::default());
        let (mut a, _rx_a) =
            hub.connect(&app("app"), "alice", Transport::WebSocket, Grant::default());
        let (mut b, mut rx_b) =
            hub.connect(&app("app"), "bob", Transport::WebSocket, Grant::default());
        a.handle(&join("r1")).unwrap();
        a.handle(&join("r2")).unwrap();
        b.handle(&join("r1")).unwrap();
        b.handle(&join("r2")).unwrap();
        recv(&mut rx_b);
        recv(&mut rx_b);
        a.handle(&frame(json!({"t":"control","op":"peer_offline","c":"r1"})))
            .unwrap();
        let off = recv(&mut rx_b).unwrap();
        assert_eq!(
            (off["op"].as_str(), off["c"].as_str(), off["p"].as_str()),
            (Some("peer_offline"), Some("r1"), Some("alice"))
        );
        // Now not a member of r1: further messages there are dropped.
        assert_eq!(
            a.handle(&frame(json!({"t":"data","c":"r1"}))),
            Err(DropReason::NotJoined)
        );
        drop(a);
        let off = recv(&mut rx_b).unwrap();
        assert_eq!(
            (off["c"].as_str(), off["p"].as_str()),
            (Some("r2"), Some("alice"))
        );
        assert!(recv(&mut rx_b).is_none());
        assert_eq!(hub.peer_count(), 1);
    }

    #[test]
    fn not_joined_unknown_and_malformed_are_dropped_and_counted() {
        let hub = hub(Limits::default());
        let (mut a, _rx) =
            hub.connect(&app("app"), "alice", Transport::WebSocket, Grant::default());
        assert_eq!(
            a.handle(&frame(json!({"t":"data","c":"x"}))),
            Err(DropReason::NotJoined)
        );
        assert_eq!(
            a.handle(&frame(json!({"t":"nope","c":"x"}))),
            Err(DropReason::UnknownType)
        );
        assert_eq!(a.handle(&[0xc1, 0x00]), Err(DropReason::Malformed));
        assert_eq!(hub.stats().drops(DropReason::NotJoined), 1);
        assert_eq!(hub.stats().drops(DropReason::UnknownType), 1);
        assert_eq!(hub.stats().drops(DropReason::Malformed), 1);
    }

    #[test]
    fn slow_reader_is_disconnected_and_channel_keeps_flowing() {
        let hub = hub(Limits {
            outbox: 4,
            ..Limits::default()
        });
        let (mut a, _rx_a) =
            hub.connect(&app("app"), "alice", Transport::WebSocket, Grant::default());
        let (mut slow, _rx_slow) =
            hub.connect(&app("app"), "slow", Transport::WebSocket, Grant::default());
        let (mut fast, mut rx_fast) =
            hub.connect(&app("app"), "fast", Transport::WebSocket, Grant::default());
        for p in [&mut a, &mut slow, &mut fast] {
            p.handle(&join("room")).unwrap();
        }
        recv(&mut rx_fast);
        for i in 0..20 {
            a.handle(&frame(json!({"t":"data","c":"room","pl": i})))
                .unwrap();
            assert_eq!(recv(&mut rx_fast).unwrap()["pl"], i);
        }
        assert_eq!(slow.ctl().reason(), Some(CloseReason::SlowReader));
        assert_eq!(hub.stats().drops(DropReason::SlowReader), 1);
    }

    #[test]
    fn over_budget_reliable_waits_and_datagrams_are_dropped() {
        let hub = hub(Limits {
            msg_rate: 5,
            ..Limits::default()
        });
        let (mut a, _rx) =
            hub.connect(&app("app"), "alice", Transport::WebSocket, Grant::default());
        // Reliable: the burst passes, then every message asks for a pause.
        let waits: Vec<_> = (0..12).map(|_| a.charge(10)).collect();
        assert!(waits[..10].iter().all(Option::is_none), "{waits:?}");
        assert!(waits[10..].iter().all(Option::is_some), "{waits:?}");
        // Datagrams: refused and counted while the budget is in debt.
        assert!(!a.try_charge(10));
        assert_eq!(hub.stats().to_json()["dropped"]["rate_limited"], 1);
    }

    #[test]
    fn token_grants_limit_channels_and_pin_state() {
        let hub = hub(Limits::default());
        let grant = Grant {
            channels: Some(vec!["room-*".into()]),
            state: vec![("name".into(), "Alice".into())],
        };
        let (mut a, mut rx_a) = hub.connect(&app("app"), "alice", Transport::WebSocket, grant);
        let (mut b, mut rx_b) =
            hub.connect(&app("app"), "bob", Transport::WebSocket, Grant::default());
        assert_eq!(a.handle(&join("lobby")), Err(DropReason::ChannelNotAllowed));
        assert!(recv(&mut rx_a).is_none(), "no ack outside the grant");
        a.handle(&join("room-1")).unwrap();
        b.handle(&join("room-1")).unwrap();
        recv(&mut rx_a);
        recv(&mut rx_b);
        let state = state_frame("room-1", &json!({"id": "mallory", "name": "M", "x": 1}));
        a.handle(&state).unwrap();
        let bin = recv_state(&mut rx_b);
        assert_eq!(bin["id"].as_str(), Some("alice"));
        assert_eq!(bin["name"].as_str(), Some("Alice"));
        // bob has no grant: his forged id is pinned, his name left alone.
        b.handle(&state).unwrap();
        let bin = recv_state(&mut rx_a);
        assert_eq!(
            (bin["id"].as_str(), bin["name"].as_str()),
            (Some("bob"), Some("M"))
        );
    }

    #[test]
    fn a_repeated_state_reaches_only_those_who_have_not_seen_it() {
        let hub = hub(Limits::default());
        let app = app("app");
        let ws = Transport::WebSocket;
        let state = |v: u32| state_frame("r", &json!({"id": "a", "v": v}));
        let (mut a, _ra) = hub.connect(&app, "a", ws, Grant::default());
        let (mut b, mut rb) = hub.connect(&app, "b", ws, Grant::default());
        a.handle(&join("r")).unwrap();
        b.handle(&join("r")).unwrap();
        recv(&mut rb);
        a.handle(&state(1)).unwrap();
        assert_eq!(recv_state(&mut rb)["v"].as_u64(), Some(1));
        // Unchanged: b has it already.
        a.handle(&state(1)).unwrap();
        assert!(recv(&mut rb).is_none());
        // A newcomer gets it from the node, right after its ack; a's answer
        // is then for no one.
        let (mut c, mut rc) = hub.connect(&app, "c", ws, Grant::default());
        c.handle(&join("r")).unwrap();
        assert_eq!(recv(&mut rc).unwrap()["op"], "channel_join");
        assert_eq!(recv_state(&mut rc)["v"].as_u64(), Some(1));
        a.handle(&state(1)).unwrap();
        assert!(recv(&mut rc).is_none());
        assert!(recv(&mut rb).is_none());
        // A changed state reaches everyone.
        a.handle(&state(2)).unwrap();
        assert_eq!(recv_state(&mut rb)["v"].as_u64(), Some(2));
        assert_eq!(recv_state(&mut rc)["v"].as_u64(), Some(2));
        // b leaves and joins again: it has forgotten a, so it gets it again.
        b.handle(&frame(json!({"t":"control","op":"peer_offline","c":"r"})))
            .unwrap();
        b.handle(&join("r")).unwrap();
        recv(&mut rb);
        assert_eq!(recv_state(&mut rb)["v"].as_u64(), Some(2));
        recv(&mut rc); // b's peer_offline
        a.handle(&state(2)).unwrap();
        assert!(recv(&mut rb).is_none());
        assert!(recv(&mut rc).is_none());
        // A second join on the same connection is acked alone.
        b.handle(&join("r")).unwrap();
        assert_eq!(recv(&mut rb).unwrap()["op"], "channel_join");
        assert!(recv(&mut rb).is_none());
        // a goes offline: the members forget it, its next state is for all.
        drop(a);
        recv(&mut rb);
        recv(&mut rc);
        let (mut a, _ra) = hub.connect(&app, "a", ws, Grant::default());
        a.handle(&join("r")).unwrap();
        a.handle(&state(2)).unwrap();
        assert_eq!(recv_state(&mut rb)["v"].as_u64(), Some(2));
        assert_eq!(recv_state(&mut rc)["v"].as_u64(), Some(2));

        // The same rule for a sender on another node, per node.
        let remote = |v: u32| {
            let pl = rmp_serde::to_vec_named(&json!({"id": "z", "v": v})).unwrap();
            let mut bin = Vec::new();
            rmpv::encode::write_value(&mut bin, &rmpv::Value::Binary(pl)).unwrap();
            Bytes::from(protocol::encode(&Outbound {
                kind: Kind::Control(Op::PeerState),
                channel: "r",
                peer: "z",
                payload: Some(&bin),
                mesh: Some("m2"),
            }))
        };
        let st = Kind::Control(Op::PeerState);
        assert_eq!(hub.deliver_remote("app", "r", &remote(1), st).sent, 3);
        assert_eq!(hub.deliver_remote("app", "r", &remote(1), st).sent, 0);
        let off = Bytes::from(protocol::encode_control(Op::PeerOffline, "r", "z", "m2"));
        let off_kind = Kind::Control(Op::PeerOffline);
        assert_eq!(hub.deliver_remote("app", "r", &off, off_kind).sent, 3);
        assert_eq!(hub.deliver_remote("app", "r", &remote(1), st).sent, 3);
        // A joiner here gets the remote sender's state from this node too.
        let (mut d, mut rd) = hub.connect(&app, "d", ws, Grant::default());
        d.handle(&join("r")).unwrap();
        recv(&mut rd);
        let mut got: Vec<_> = (0..2).map(|_| recv_state(&mut rd)["id"].clone()).collect();
        got.sort_by_key(|v| v.to_string());
        assert_eq!(got, [rmpv::Value::from("a"), rmpv::Value::from("z")]);
        assert!(recv(&mut rd).is_none());
    }

    #[test]
    fn a_joiner_gets_every_state_past_the_message_bound() {
        let hub = hub(Limits {
            outbox: 4,
            ..Limits::default()
        });
        let app = app("app");
        let mut members: Vec<(Peer, OutboxReceiver)> = Vec::new();
        for i in 0..10 {
            let id = format!("m{i}");
            let (mut m, mut rx) = hub.connect(&app, &id, Transport::WebSocket, Grant::default());
            m.handle(&join("r")).unwrap();
            m.handle(&state_frame("r", &json!({"id": id}))).unwrap();
            // Drained as it goes: only the joiner below is put to the test.
            let mut batch = Vec::new();
            for (_, rx) in &mut members {
                rx.try_recv(&mut batch);
            }
            rx.try_recv(&mut batch);
            members.push((m, rx));
        }
        let (mut j, mut rj) = hub.connect(&app, "j", Transport::WebSocket, Grant::default());
        j.handle(&join("r")).unwrap();
        let mut batch = Vec::new();
        assert!(rj.try_recv(&mut batch));
        assert_eq!(batch.len(), 11, "the ack and ten states, past a bound of 4");
        assert_eq!(j.ctl().reason(), None);
        assert_eq!(hub.stats().drops(DropReason::SlowReader), 0);
    }

    #[test]
    fn app_caps_on_channels_and_members() {
        let hub = hub(Limits::default());
        let capped = Arc::new(App::new(
            "app",
            AppLimits {
                max_channels: 2,
                max_members: 2,
                ..AppLimits::default()
            },
        ));
        let (mut a, _ra) = hub.connect(&capped, "a", Transport::WebSocket, Grant::default());
        let (mut b, _rb) = hub.connect(&capped, "b", Transport::WebSocket, Grant::default());
        let (mut c, mut rc) = hub.connect(&capped, "c", Transport::WebSocket, Grant::default());
        a.handle(&join("1")).unwrap();
        a.handle(&join("2")).unwrap();
        assert_eq!(a.handle(&join("3")), Err(DropReason::AppChannelLimit));
        b.handle(&join("1")).unwrap();
        assert_eq!(c.handle(&join("1")), Err(DropReason::ChannelFull));
        assert!(recv(&mut rc).is_none(), "no ack over the cap");
        drop(b);
        c.handle(&join("1")).unwrap();
    }

    #[test]
    fn close_all_announces_everyone_then_closes() {
        let hub = hub(Limits::default());
        let (mut a, mut rx_a) =
            hub.connect(&app("app"), "alice", Transport::WebSocket, Grant::default());
        let (mut b, mut rx_b) = hub.connect(
            &app("app"),
            "bob",
            Transport::WebTransport,
            Grant::default(),
        );
        a.handle(&join("room")).unwrap();
        b.handle(&join("room")).unwrap();
        recv(&mut rx_a);
        recv(&mut rx_b);
        assert_eq!(hub.close_all(), 2);
        assert_eq!(recv(&mut rx_a).unwrap()["p"], "bob");
        assert_eq!(recv(&mut rx_b).unwrap()["p"], "alice");
        assert_eq!(a.ctl().reason(), Some(CloseReason::GoingAway));
        drop(a);
        assert!(
            recv(&mut rx_b).is_none(),
            "no second offline after the drain"
        );
    }

    #[test]
    fn a_user_in_two_tabs_goes_offline_with_the_last_one_after_the_grace() {
        let hub = hub(Limits::default());
        let grace = Duration::from_millis(1500);
        hub.set_presence_grace(grace);
        let ws = Transport::WebSocket;
        let (mut tab1, _r1) = hub.connect(&app("app"), "alice", ws, Grant::default());
        let (mut tab2, _r2) = hub.connect(&app("app"), "alice", ws, Grant::default());
        let (mut b, mut rb) = hub.connect(&app("app"), "bob", ws, Grant::default());
        for p in [&mut tab1, &mut tab2, &mut b] {
            p.handle(&join("room")).unwrap();
        }
        recv(&mut rb);
        drop(tab1);
        assert!(recv(&mut rb).is_none(), "alice is still there in tab 2");
        drop(tab2);
        let left = Instant::now();
        assert!(recv(&mut rb).is_none(), "within the grace period");
        assert_eq!(hub.expire_leaves(left), 0);
        assert_eq!(hub.expire_leaves(left + grace), 1);
        let off = recv(&mut rb).unwrap();
        assert_eq!(
            (off["op"].as_str(), off["p"].as_str(), off["mesh"].as_str()),
            (Some("peer_offline"), Some("alice"), Some("m1"))
        );
        assert!(recv(&mut rb).is_none(), "once");
    }

    #[test]
    fn a_reload_within_the_grace_sends_no_offline() {
        let hub = hub(Limits::default());
        hub.set_presence_grace(Duration::from_secs(60));
        let ws = Transport::WebSocket;
        let (mut a, _ra) = hub.connect(&app("app"), "alice", ws, Grant::default());
        let (mut b, mut rb) = hub.connect(&app("app"), "bob", ws, Grant::default());
        a.handle(&join("room")).unwrap();
        b.handle(&join("room")).unwrap();
        recv(&mut rb);
        drop(a);
        let (mut again, _ra) = hub.connect(&app("app"), "alice", ws, Grant::default());
        again.handle(&join("room")).unwrap();
        assert_eq!(
            hub.expire_leaves(Instant::now() + Duration::from_secs(61)),
            0
        );
        assert!(recv(&mut rb).is_none());
        assert!(hub.is_present("app", "room", "alice"));
    }

    #[test]
    fn a_users_connections_on_other_nodes_keep_it_online() {
        let hub = hub(Limits::default());
        let ws = Transport::WebSocket;
        let (mut a, _ra) = hub.connect(&app("app"), "alice", ws, Grant::default());
        let (mut b, mut rb) = hub.connect(&app("app"), "bob", ws, Grant::default());
        a.handle(&join("room")).unwrap();
        b.handle(&join("room")).unwrap();
        recv(&mut rb);
        hub.remote_joined("app", "room", "alice", "m2");
        hub.remote_joined("app", "room", "carol", "m2");
        drop(a);
        assert!(recv(&mut rb).is_none(), "alice is still on m2");
        let off = |p: &str| Bytes::from(protocol::encode_control(Op::PeerOffline, "room", p, "m2"));
        let gone = hub.remote_left("app", "room", ("alice", "m2"), Why::Left, &off("alice"));
        assert_eq!(gone.sent, 1);
        assert_eq!(recv(&mut rb).unwrap()["p"], "alice");
        // A node's death needs no grace, even with one set.
        hub.set_presence_grace(Duration::from_secs(60));
        let gone = hub.remote_left("app", "room", ("carol", "m2"), Why::NodeGone, &off("carol"));
        assert_eq!(gone.sent, 1);
        // An unknown connection's leave is nobody's.
        let none = hub.remote_left("app", "room", ("dan", "m2"), Why::Left, &off("dan"));
        assert_eq!(none.sent, 0);
    }

    #[test]
    fn a_users_second_tab_is_not_announced_but_a_changed_state_reaches_everyone() {
        let hub = hub(Limits::default());
        let ws = Transport::WebSocket;
        let st = |v: u64| state_frame("r", &json!({"id": "alice", "v": v}));
        let online = frame(json!({"t":"control","op":"peer_online","c":"r"}));
        let (mut tab1, _r1) = hub.connect(&app("app"), "alice", ws, Grant::default());
        let (mut b, mut rb) = hub.connect(&app("app"), "bob", ws, Grant::default());
        b.handle(&join("r")).unwrap();
        recv(&mut rb);
        tab1.handle(&join("r")).unwrap();
        tab1.handle(&online).unwrap();
        assert_eq!(recv(&mut rb).unwrap()["op"], "peer_online");
        tab1.handle(&st(1)).unwrap();
        assert_eq!(recv_state(&mut rb)["v"].as_u64(), Some(1));

        let (mut tab2, mut r2) = hub.connect(&app("app"), "alice", ws, Grant::default());
        tab2.handle(&join("r")).unwrap();
        assert_eq!(recv(&mut r2).unwrap()["op"], "channel_join");
        assert_eq!(
            recv_state(&mut r2)["v"].as_u64(),
            Some(1),
            "the joiner gets the states"
        );
        tab2.handle(&online).unwrap();
        tab2.handle(&st(1)).unwrap();
        assert_eq!(recv(&mut rb), None, "bob knows alice and her state already");
        tab2.handle(&st(2)).unwrap();
        assert_eq!(recv_state(&mut rb)["v"].as_u64(), Some(2));
        let hosted = hub.hosted("app");
        let alice = hosted[0].1.iter().find(|u| &*u.id == "alice").unwrap();
        assert_eq!(alice.connections, 2);
        assert!(alice.state.is_some());
    }

    #[test]
    fn channel_limit_per_peer() {
        let hub = hub(Limits {
            max_channels: 2,
            ..Limits::default()
        });
        let (mut a, _rx) =
            hub.connect(&app("app"), "alice", Transport::WebSocket, Grant::default());
        a.handle(&join("1")).unwrap();
        a.handle(&join("2")).unwrap();
        a.handle(&join("2")).unwrap();
        assert_eq!(a.handle(&join("3")), Err(DropReason::TooManyChannels));
    }
}
