//! Counters an operator reads: connections per transport, handshake
//! rejections per status, and every dropped message per reason.
//!
//! Nothing is dropped silently: each drop site calls [`Stats::drop`] with a
//! [`DropReason`], and `/health` and `SIGUSR2` print the totals. Counters are
//! plain relaxed atomics: they are read for reporting, never for control.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

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
    RateLimited => "rate_limited": "Over the per-peer message rate.",
    TooManyChannels => "too_many_channels": "A join over the per-peer channel limit.",
    TextFrame => "text_frame": "A WebSocket text frame (connection closed 1003).",
    Oversize => "oversize": "Over MAX_MESSAGE_SIZE (connection closed 1009).",
    DatagramTooLarge => "datagram_too_large": "Too large for the receiver's datagram size, and it has no stream.",
    SlowReader => "slow_reader": "A receiver's queue was full: that receiver is disconnected.",
    MeshBacklog => "mesh_backlog": "Too many messages waiting to be published to the mesh.",
    MeshInvalid => "mesh_invalid": "A sample from the mesh that is not a valid relayed Signalling.",
}

/// The two client transports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
pub const REJECT_STATUSES: &[u16] = &[400, 401, 403, 404, 426, 503];

#[derive(Default)]
pub struct Stats {
    drops: [AtomicU64; 11],
    connections: [AtomicU64; 2],
    connections_total: [AtomicU64; 2],
    rejected: [AtomicU64; 6],
    messages_in: AtomicU64,
    messages_out: AtomicU64,
    pub mesh: MeshStats,
}

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
}

impl MeshStats {
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

    pub fn reject(&self, status: u16) {
        if let Some(i) = REJECT_STATUSES.iter().position(|s| *s == status) {
            self.rejected[i].fetch_add(1, Relaxed);
        }
    }

    pub fn message_in(&self) {
        self.messages_in.fetch_add(1, Relaxed);
    }

    pub fn messages_out(&self, n: u64) {
        self.messages_out.fetch_add(n, Relaxed);
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
            "messages_in": self.messages_in.load(Relaxed),
            "messages_out": self.messages_out.load(Relaxed),
            "dropped": drops,
            "handshake_rejected": rejected,
            "mesh": self.mesh.to_json(),
        })
    }
}

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
}
