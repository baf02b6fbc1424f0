//! Counters an operator reads: connections per transport, handshake
//! rejections per status, and every dropped message per reason.
//!
//! Nothing is dropped silently: each drop site calls [`Stats::drop`] with a
//! [`DropReason`], and `/health` and `SIGUSR2` print the totals. Counters are
//! plain relaxed atomics: they are read for reporting, never for control.
//! `/metrics` encodes them with prometheus-client at scrape time.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    prometheus_text, DescriptorEncoder, EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet,
};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::protocol::{Kind, Op};

macro_rules! reasons {
    ($($variant:ident => $name:literal: $doc:literal,)*) => {
        /// Why a message (or a connection) was dropped.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum DropReason { $(#[doc = $doc] $variant,)* }

        impl DropReason {
            pub const ALL: &'static [DropReason] = &[$(DropReason::$variant,)*];
            pub fn as_str(self) -> &'static str {
                match self { $(DropReason::$variant => $name,)* }
            }
        }
    };
}

reasons! {
    Malformed => "malformed": "Not exactly one well-formed msgpack Signalling map.",
    UnknownType => "unknown_type": "Well-formed, but an unknown `t` or `op`.",
    NotJoined => "not_joined": "For a channel the sender has not joined.",
    RateLimited => "rate_limited": "A datagram over the connection's budget (reliable transports are slowed instead).",
    TooManyChannels => "too_many_channels": "A join over the per-peer channel limit.",
    ChannelNotAllowed => "channel_not_allowed": "A join outside the channels the peer's token grants.",
    AppChannelLimit => "app_channel_limit": "A join that would open a channel over the app's channel cap on this node.",
    ChannelFull => "channel_full": "A join into a channel at the app's member cap on this node.",
    TextFrame => "text_frame": "A WebSocket text frame (connection closed 1003).",
    Oversize => "oversize": "Over MAX_MESSAGE_SIZE (connection closed 1009).",
    DatagramTooLarge => "datagram_too_large": "Too large for the receiver's datagram size, and it has no stream.",
    SlowReader => "slow_reader": "A receiver's queue was full: that receiver is disconnected.",
    MeshBacklog => "mesh_backlog": "Too many messages waiting to be published to the mesh.",
    MeshInvalid => "mesh_invalid": "A sample from the mesh that is not a valid relayed Signalling.",
    MeshNoToken => "mesh_no_token": "A node's membership, roster or member message from a mesh_id without a live node token of the app.",
    MeshForged => "mesh_forged": "A sample whose attachment claims a node's sid space it cannot hold: a sid without a node, this node's own mesh_id, or presence without a node's sid.",
    MeshMemberCap => "mesh_member_cap": "A remote member over the app's member cap for one node's share of a channel.",
    MeshInboundFull => "mesh_inbound_full": "A sample or roster from zenoh while the bridge's inbound queue was full.",
    WebhookQueueFull => "webhook_queue_full": "A webhook event while the app's webhook queue was full.",
    WebhookFailed => "webhook_failed": "A webhook event whose batch the receiver did not take within every retry.",
}

/// The two client transports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    WebSocket,
    WebTransport,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::WebSocket => "websocket",
            Transport::WebTransport => "webtransport",
        }
    }
}

/// Handshake statuses that are counted (PROTOCOL.md §1 plus 426 and 503).
pub const REJECT_STATUSES: &[u16] = &[400, 401, 403, 404, 426, 429, 503];

#[derive(Default)]
pub struct Stats {
    drops: [AtomicU64; DropReason::ALL.len()],
    connections: [AtomicU64; 2],
    connections_total: [AtomicU64; 2],
    rejected: [AtomicU64; REJECT_STATUSES.len()],
    /// Times a connection's reading was paused for being over its budget.
    throttled: AtomicU64,
    /// The served certificate's notAfter, Unix seconds (0: not known yet).
    cert_not_after: std::sync::atomic::AtomicI64,
    /// Per transport and message kind: (messages, bytes), in and out.
    traffic_in: [[Counter2; KINDS]; 2],
    traffic_out: [[Counter2; KINDS]; 2],
    pub mesh: MeshStats,
    /// Per-app traffic, recent errors and samples for the console.
    pub console: crate::console::Recorder,
}

/// Message kinds for the traffic counters: the four control ops, data, and
/// `invalid` (what did not decode).
pub const KIND_NAMES: [&str; KINDS] = [
    "data",
    "channel_join",
    "peer_online",
    "peer_state",
    "peer_offline",
    "invalid",
];
const KINDS: usize = 6;

/// The slot of a message kind in [`KIND_NAMES`].
pub fn kind_index(kind: Option<Kind>) -> usize {
    match kind {
        Some(Kind::Data) => 0,
        Some(Kind::Control(Op::ChannelJoin)) => 1,
        Some(Kind::Control(Op::PeerOnline)) => 2,
        Some(Kind::Control(Op::PeerState)) => 3,
        Some(Kind::Control(Op::PeerOffline)) => 4,
        None => 5,
    }
}

/// A message count and a byte count.
#[derive(Default)]
struct Counter2 {
    messages: AtomicU64,
    bytes: AtomicU64,
}

impl Counter2 {
    fn add(&self, messages: u64, bytes: u64) {
        self.messages.fetch_add(messages, Relaxed);
        self.bytes.fetch_add(bytes, Relaxed);
    }
}

/// Upper bounds (µs) of the mesh hop latency histogram buckets.
pub const HOP_BUCKETS_US: [u64; 12] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000,
];

/// The mesh link, as `/health` shows it.
#[derive(Default)]
pub struct MeshStats {
    /// Zenoh peers and routers this node is connected to right now.
    pub peers: AtomicU64,
    pub routers: AtomicU64,
    /// Whether the zenoh session is open at all.
    pub open: std::sync::atomic::AtomicBool,
    /// Messages published to / received from the mesh.
    pub published: AtomicU64,
    pub received: AtomicU64,
    /// `peer_offline` sent to local members for peers of other nodes.
    pub remote_offline: AtomicU64,
    /// Memberships of other nodes' peers in channels this node has members in.
    pub remote_members: AtomicU64,
    /// Publish-to-arrival time of mesh messages (sender's clock vs ours).
    hop_buckets: [AtomicU64; HOP_BUCKETS_US.len()],
    hop_count: AtomicU64,
    hop_sum_us: AtomicU64,
}

impl MeshStats {
    /// A remote member went offline here (its `peer_offline` is delivered).
    pub fn remote_member_gone(&self) {
        self.remote_members.fetch_sub(1, Relaxed);
        self.remote_offline.fetch_add(1, Relaxed);
    }

    pub fn observe_hop(&self, micros: u64) {
        if let Some(i) = HOP_BUCKETS_US.iter().position(|b| micros <= *b) {
            self.hop_buckets[i].fetch_add(1, Relaxed);
        }
        self.hop_count.fetch_add(1, Relaxed);
        self.hop_sum_us.fetch_add(micros, Relaxed);
    }

    /// `disabled` (no session), `alone` (no zenoh neighbour) or `connected`.
    pub fn state(&self) -> &'static str {
        if !self.open.load(Relaxed) {
            "disabled"
        } else if self.peers.load(Relaxed) + self.routers.load(Relaxed) == 0 {
            "alone"
        } else {
            "connected"
        }
    }

    fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "state": self.state(),
            "peers": self.peers.load(Relaxed),
            "routers": self.routers.load(Relaxed),
            "published": self.published.load(Relaxed),
            "received": self.received.load(Relaxed),
            "remote_offline": self.remote_offline.load(Relaxed),
            "remote_members": self.remote_members.load(Relaxed),
        })
    }
}

impl Stats {
    pub fn count_drop(&self, reason: DropReason) {
        self.drops[reason as usize].fetch_add(1, Relaxed);
    }

    pub fn drops(&self, reason: DropReason) -> u64 {
        self.drops[reason as usize].load(Relaxed)
    }

    pub fn count_throttle(&self) {
        self.throttled.fetch_add(1, Relaxed);
    }

    /// Records the notAfter (Unix seconds) of the certificate now served.
    pub fn set_certificate_expiry(&self, not_after_unix: i64) {
        self.cert_not_after.store(not_after_unix, Relaxed);
    }

    /// Seconds until the served certificate expires, once one is known.
    pub fn certificate_seconds_left(&self) -> Option<i64> {
        let not_after = self.cert_not_after.load(Relaxed);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        (not_after != 0).then(|| not_after - now)
    }

    pub fn reject(&self, status: u16) {
        if let Some(i) = REJECT_STATUSES.iter().position(|s| *s == status) {
            self.rejected[i].fetch_add(1, Relaxed);
        }
    }

    /// One message received from a client (`kind` None: undecodable).
    pub fn record_in(&self, transport: Transport, kind: Option<Kind>, bytes: usize) {
        self.traffic_in[transport as usize][kind_index(kind)].add(1, bytes as u64);
    }

    /// `n` copies of a `bytes`-long message queued for clients of `transport`.
    pub fn record_out(&self, transport: Transport, kind: Kind, n: u64, bytes: usize) {
        self.record_out_total(transport, kind, n, n as usize * bytes);
    }

    /// `n` messages of `kind` sent, `bytes` in all.
    pub fn record_out_total(&self, transport: Transport, kind: Kind, n: u64, bytes: usize) {
        if n > 0 {
            self.traffic_out[transport as usize][kind_index(Some(kind))].add(n, bytes as u64);
        }
    }

    fn total(traffic: &[[Counter2; KINDS]; 2]) -> u64 {
        traffic
            .iter()
            .flatten()
            .map(|c| c.messages.load(Relaxed))
            .sum()
    }

    /// Counts a live connection until the guard is dropped.
    pub fn connection(self: &std::sync::Arc<Self>, transport: Transport) -> ConnectionGuard {
        self.connections[transport as usize].fetch_add(1, Relaxed);
        self.connections_total[transport as usize].fetch_add(1, Relaxed);
        ConnectionGuard {
            stats: self.clone(),
            transport,
        }
    }

    pub fn open_connections(&self, transport: Transport) -> u64 {
        self.connections[transport as usize].load(Relaxed)
    }

    /// The counters as JSON, for `/health`.
    pub fn to_json(&self) -> serde_json::Value {
        let drops: serde_json::Map<_, _> = DropReason::ALL
            .iter()
            .map(|r| (r.as_str().to_owned(), self.drops(*r).into()))
            .collect();
        let rejected: serde_json::Map<_, _> = REJECT_STATUSES
            .iter()
            .zip(&self.rejected)
            .map(|(s, n)| (s.to_string(), n.load(Relaxed).into()))
            .collect();
        let per_transport = |a: &[AtomicU64; 2]| {
            serde_json::json!({
                "websocket": a[Transport::WebSocket as usize].load(Relaxed),
                "webtransport": a[Transport::WebTransport as usize].load(Relaxed),
            })
        };
        serde_json::json!({
            "connections": per_transport(&self.connections),
            "connections_total": per_transport(&self.connections_total),
            "messages_in": Self::total(&self.traffic_in),
            "messages_out": Self::total(&self.traffic_out),
            "dropped": drops,
            "throttled": self.throttled.load(Relaxed),
            "handshake_rejected": rejected,
            "mesh": self.mesh.to_json(),
        })
    }
}

/// Gauges only the hub knows, for [`Stats::prometheus`].
#[derive(Clone)]
pub struct Gauges {
    /// (app, transport, open connections)
    pub connections: Vec<(String, Transport, usize)>,
    pub channels: usize,
    pub draining: bool,
}

/// `/metrics` through prometheus-client: one [`Collector`] reads the atomics
/// above (and the hub's gauges) at scrape time, so that the hot path stays a
/// relaxed `fetch_add` and `/health` reads the same counters. The hub's
/// gauges are taken under its lock per scrape, so the registry is built per
/// scrape around them.
struct Scrape {
    stats: std::sync::Arc<Stats>,
    gauges: Gauges,
}

impl std::fmt::Debug for Scrape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scrape").finish_non_exhaustive()
    }
}

/// A counter family's name as registered: the encoder appends `_total`.
fn counter(
    x: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl FnOnce(MetricEncoder) -> std::fmt::Result,
) -> std::fmt::Result {
    let name = name.strip_suffix("_total").expect("counters end in _total");
    samples(x.encode_descriptor(name, help, None, MetricType::Counter)?)
}

fn gauge(
    x: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl FnOnce(MetricEncoder) -> std::fmt::Result,
) -> std::fmt::Result {
    samples(x.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

fn labelled<M: EncodeMetric>(
    m: &mut MetricEncoder,
    labels: &impl EncodeLabelSet,
    metric: M,
) -> std::fmt::Result {
    metric.encode(m.encode_family(labels)?)
}

impl Collector for Scrape {
    fn encode(&self, mut x: DescriptorEncoder) -> std::fmt::Result {
        let (stats, gauges) = (&*self.stats, &self.gauges);
        let transports = [Transport::WebSocket, Transport::WebTransport];

        gauge(
            &mut x,
            "prscd_connections",
            "Open client connections by app and transport.",
            |mut m| {
                for (app, transport, count) in &gauges.connections {
                    let labels = [("app", app.as_str()), ("transport", transport.as_str())];
                    labelled(&mut m, &labels, ConstGauge::new(*count as i64))?;
                }
                Ok(())
            },
        )?;
        counter(
            &mut x,
            "prscd_connections_accepted_total",
            "Client connections accepted, by transport.",
            |mut m| {
                for t in transports {
                    let value = stats.connections_total[t as usize].load(Relaxed);
                    labelled(
                        &mut m,
                        &[("transport", t.as_str())],
                        ConstCounter::new(value),
                    )?;
                }
                Ok(())
            },
        )?;
        gauge(
            &mut x,
            "prscd_channels",
            "Channels with at least one member on this node.",
            |m| ConstGauge::new(gauges.channels as i64).encode(m),
        )?;
        if let Some(left) = stats.certificate_seconds_left() {
            gauge(
                &mut x,
                "prscd_certificate_expiry_seconds",
                "Seconds until the served TLS certificate expires (negative: expired).",
                |m| ConstGauge::new(left).encode(m),
            )?;
        }
        gauge(&mut x, "prscd_draining", "1 while the node drains.", |m| {
            ConstGauge::new(i64::from(gauges.draining)).encode(m)
        })?;

        for (dir, traffic) in [("in", &stats.traffic_in), ("out", &stats.traffic_out)] {
            for unit in ["messages", "bytes"] {
                let name = format!("prscd_{unit}_{dir}_total");
                let help = format!("{unit} {dir} (client side), by op and transport");
                counter(&mut x, &name, &help, |mut m| {
                    for t in transports {
                        for (k, op) in KIND_NAMES.iter().enumerate() {
                            let c = &traffic[t as usize][k];
                            let v = if unit == "messages" {
                                &c.messages
                            } else {
                                &c.bytes
                            };
                            let labels = [("op", *op), ("transport", t.as_str())];
                            labelled(&mut m, &labels, ConstCounter::new(v.load(Relaxed)))?;
                        }
                    }
                    Ok(())
                })?;
            }
        }
        counter(
            &mut x,
            "prscd_dropped_total",
            "Messages dropped (or connections closed), by reason.",
            |mut m| {
                for r in DropReason::ALL {
                    let labels = [("reason", r.as_str())];
                    labelled(&mut m, &labels, ConstCounter::new(stats.drops(*r)))?;
                }
                Ok(())
            },
        )?;
        counter(
            &mut x,
            "prscd_slow_reader_disconnects_total",
            "Connections closed because their queue was full.",
            |m| ConstCounter::new(stats.drops(DropReason::SlowReader)).encode(m),
        )?;
        counter(
            &mut x,
            "prscd_throttled_total",
            "Times a connection's reading was paused for being over its message or byte budget (nothing dropped).",
            |m| ConstCounter::new(stats.throttled.load(Relaxed)).encode(m),
        )?;
        counter(
            &mut x,
            "prscd_handshake_failures_total",
            "Refused handshakes by HTTP status.",
            |mut m| {
                for (status, c) in REJECT_STATUSES.iter().zip(&stats.rejected) {
                    let labels = [("status", *status)];
                    labelled(&mut m, &labels, ConstCounter::new(c.load(Relaxed)))?;
                }
                Ok(())
            },
        )?;

        let mesh = &stats.mesh;
        gauge(
            &mut x,
            "prscd_mesh_state",
            "Zenoh session: 0 disabled, 1 alone, 2 connected.",
            |m| {
                let state = match mesh.state() {
                    "disabled" => 0,
                    "alone" => 1,
                    _ => 2,
                };
                ConstGauge::new(state as i64).encode(m)
            },
        )?;
        gauge(
            &mut x,
            "prscd_mesh_neighbours",
            "Zenoh peers and routers this node is linked to.",
            |mut m| {
                for (kind, v) in [("peer", &mesh.peers), ("router", &mesh.routers)] {
                    labelled(&mut m, &[("kind", kind)], ConstGauge::new(v.load(Relaxed)))?;
                }
                Ok(())
            },
        )?;
        for (name, help, v) in [
            (
                "prscd_mesh_published_total",
                "Messages published to the mesh.",
                &mesh.published,
            ),
            (
                "prscd_mesh_received_total",
                "Messages received from the mesh.",
                &mesh.received,
            ),
            (
                "prscd_mesh_remote_offline_total",
                "peer_offline sent for peers of other nodes.",
                &mesh.remote_offline,
            ),
        ] {
            counter(&mut x, name, help, |m| {
                ConstCounter::new(v.load(Relaxed)).encode(m)
            })?;
        }
        gauge(
            &mut x,
            "prscd_mesh_remote_members",
            "Other nodes' memberships in channels with local members.",
            |m| ConstGauge::new(mesh.remote_members.load(Relaxed)).encode(m),
        )?;

        let buckets: Vec<(f64, u64)> = HOP_BUCKETS_US
            .iter()
            .zip(&mesh.hop_buckets)
            .map(|(bound, c)| (*bound as f64 / 1e6, c.load(Relaxed)))
            .collect();
        x.encode_descriptor(
            "prscd_mesh_hop_seconds",
            "Publish (sender's clock) to arrival (ours) of mesh messages.",
            None,
            MetricType::Histogram,
        )?
        .encode_histogram::<NoLabelSet>(
            mesh.hop_sum_us.load(Relaxed) as f64 / 1e6,
            mesh.hop_count.load(Relaxed),
            &buckets,
            None,
        )
    }
}

impl Stats {
    /// `/metrics`: the Prometheus text exposition format (0.0.4), served
    /// with [`METRICS_CONTENT_TYPE`].
    pub fn prometheus(self: &std::sync::Arc<Self>, gauges: &Gauges) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Scrape {
            stats: self.clone(),
            gauges: gauges.clone(),
        }));
        let mut text = String::with_capacity(8 * 1024);
        prometheus_text::encode(&mut text, &registry).expect("writing to a String");
        text
    }
}

/// The content type of [`Stats::prometheus`].
pub const METRICS_CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

pub struct ConnectionGuard {
    stats: std::sync::Arc<Stats>,
    transport: Transport,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.stats.connections[self.transport as usize].fetch_sub(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_has_a_slot() {
        let stats = Stats::default();
        for r in DropReason::ALL {
            stats.count_drop(*r);
        }
        let json = stats.to_json();
        for r in DropReason::ALL {
            assert_eq!(json["dropped"][r.as_str()], 1);
        }
        assert_eq!(DropReason::ALL.len(), stats.drops.len());
    }

    /// The exposition is byte for byte what dashboards and scrapers have
    /// read so far: `tests/data/metrics-exposition.prom` was written by the
    /// hand-made renderer this encoder replaced, from these same counters.
    #[test]
    fn the_exposition_keeps_every_name_label_and_help() {
        let stats = std::sync::Arc::new(Stats::default());
        for (i, r) in DropReason::ALL.iter().enumerate() {
            for _ in 0..i {
                stats.count_drop(*r);
            }
        }
        stats.count_throttle();
        stats.set_certificate_expiry(4_102_444_800);
        stats.reject(403);
        stats.reject(429);
        stats.reject(429);
        let _ws = stats.connection(Transport::WebSocket);
        stats.record_in(Transport::WebSocket, Some(Kind::Data), 17);
        stats.record_in(Transport::WebTransport, None, 3);
        stats.record_out(
            Transport::WebTransport,
            Kind::Control(Op::PeerOnline),
            4,
            20,
        );
        stats.mesh.published.store(7, Relaxed);
        stats.mesh.open.store(true, Relaxed);
        stats.mesh.peers.store(2, Relaxed);
        for us in [50, 300, 300, 2_000, 2_000_000, 123_456] {
            stats.mesh.observe_hop(us);
        }
        let gauges = Gauges {
            connections: vec![
                ("a\"b\\c\nd".into(), Transport::WebSocket, 2),
                ("zz".into(), Transport::WebTransport, 1),
            ],
            channels: 3,
            draining: true,
        };
        // The certificate's seconds left depend on the clock.
        let clockless = |text: &str| -> String {
            text.lines()
                .map(
                    |l| match l.strip_prefix("prscd_certificate_expiry_seconds ") {
                        Some(left) => {
                            assert!(left.parse::<i64>().unwrap() > 0, "{l}");
                            "prscd_certificate_expiry_seconds (left)\n".to_owned()
                        }
                        None => format!("{l}\n"),
                    },
                )
                .collect()
        };
        let served = clockless(&stats.prometheus(&gauges));
        let expected = clockless(include_str!("../tests/data/metrics-exposition.prom"));
        assert_eq!(served, expected);
    }
}
