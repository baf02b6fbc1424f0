//! What the bench says on a WebSocket, per kind of server under test.
//!
//! The load scenarios are the same for every server: clients join a room,
//! publish payloads that start with a send timestamp, and time what comes
//! back. Only the framing differs, so each server kind is a [`Wire`]:
//! prscd's msgpack Signalling ([`Prscd`]), a bare room broadcast where the
//! room is in the URL and a frame is the payload ([`Raw`]: the Node `ws`
//! server and the tokio-tungstenite ceiling), and socket.io's Engine.IO v4
//! framing ([`crate::socketio::SocketIo`]).

use bytes::Bytes;
use prscd::protocol::{self, Kind, Op};
use tokio_tungstenite::tungstenite::Message;

/// How a frame from the server reads.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    /// The join of `room` is acknowledged.
    Joined,
    /// A bench payload relayed from another client (the bytes the publisher
    /// passed to [`Wire::publish`]).
    Data(Bytes),
    /// Anything else (presence, pings, handshake chatter).
    Other,
}

/// Per-connection scratch a wire may need across frames.
#[derive(Debug, Default)]
pub struct WireState {
    /// socket.io: binary attachments announced by the last text packet and
    /// not yet received.
    pub attachments_due: u32,
    /// socket.io: the next attachment is a `msg` event's payload.
    pub msg_attachment: bool,
    /// The room this connection joins. socket.io sends its join only once
    /// the namespace connect is acknowledged, from `incoming`, so the engine
    /// sets this when it makes the state.
    pub room: String,
}

/// One server protocol, spoken over a WebSocket.
pub trait Wire: Send + Sync + 'static {
    /// Name in reports (`prscd`, `node-ws`, `socketio`, `ceiling`).
    fn name(&self) -> &str;
    /// Path and query of the WebSocket URL for client `id` in `room`.
    fn ws_path(&self, id: &str, room: &str) -> String;
    /// Frames to send right after the handshake to join `room`. Empty means
    /// the URL joined it and no ack comes: the client counts as joined.
    fn join(&self, room: &str, id: &str) -> Vec<Message>;
    /// Reads one frame from the server; frames the protocol requires in
    /// answer (socket.io pongs) go to `reply`.
    fn incoming(&self, state: &mut WireState, frame: Message, reply: &mut Vec<Message>)
        -> Incoming;
    /// Frames that publish `payload` to `room`.
    fn publish(&self, room: &str, payload: &[u8]) -> Vec<Message>;
}

/// prscd's Signalling (PROTOCOL.md): `channel_join` with the ack, `data`
/// messages whose `pl` is the payload as msgpack bin.
pub struct Prscd {
    pub base_path: String,
    pub publickey: String,
}

impl Wire for Prscd {
    fn name(&self) -> &str {
        "prscd"
    }

    fn ws_path(&self, id: &str, _room: &str) -> String {
        format!("{}?publickey={}&id={}", self.base_path, self.publickey, id)
    }

    fn join(&self, room: &str, id: &str) -> Vec<Message> {
        vec![Message::Binary(join_frame(room, id).into())]
    }

    fn incoming(&self, _: &mut WireState, frame: Message, _: &mut Vec<Message>) -> Incoming {
        match frame {
            Message::Binary(b) => prscd_frame(&b),
            _ => Incoming::Other,
        }
    }

    fn publish(&self, room: &str, payload: &[u8]) -> Vec<Message> {
        vec![Message::Binary(data_frame(room, payload).into())]
    }
}

/// Reads a prscd frame (WebSocket message or WebTransport datagram). The
/// payload is a slice of the frame, not a copy.
pub fn prscd_frame(frame: &Bytes) -> Incoming {
    // Most frames under load are data: find `pl` without the full decoder
    // (which validates every string), so the client is not the bottleneck.
    if let Some(range) = data_payload(frame) {
        return Incoming::Data(frame.slice(range));
    }
    if let Ok(m) = protocol::decode_relayed(frame) {
        if m.kind == Kind::Data {
            let Some(mut raw) = m.payload else {
                return Incoming::Other;
            };
            let Ok(len) = rmp::decode::read_bin_len(&mut raw) else {
                return Incoming::Other;
            };
            let start = raw.as_ptr() as usize - frame.as_ptr() as usize;
            return match frame.get(start..start + len as usize) {
                Some(_) => Incoming::Data(frame.slice(start..start + len as usize)),
                None => Incoming::Other,
            };
        }
        if m.kind == Kind::Control(Op::ChannelJoin) {
            return Incoming::Joined;
        }
    }
    // The join ack is addressed like a client message (no `p`).
    match protocol::decode(frame) {
        Ok(m) if m.kind == Kind::Control(Op::ChannelJoin) => Incoming::Joined,
        _ => Incoming::Other,
    }
}

/// Where the `pl` bin of a `t: "data"` message is, by a quick walk of the
/// map: keys are strings, other values are skipped by their length. `None`
/// for anything else (the full decoder then decides).
fn data_payload(frame: &[u8]) -> Option<std::ops::Range<usize>> {
    let mut rd = frame;
    let fields = rmp::decode::read_map_len(&mut rd).ok()?;
    let (mut is_data, mut payload) = (false, None);
    for _ in 0..fields {
        let key_len = rmp::decode::read_str_len(&mut rd).ok()? as usize;
        let key = rd.get(..key_len)?;
        rd = &rd[key_len..];
        match key {
            b"t" => {
                let n = rmp::decode::read_str_len(&mut rd).ok()? as usize;
                is_data = rd.get(..n)? == b"data";
                rd = &rd[n..];
            }
            b"pl" => {
                let n = rmp::decode::read_bin_len(&mut rd).ok()? as usize;
                let start = frame.len() - rd.len();
                rd.get(..n)?;
                payload = Some(start..start + n);
                rd = &rd[n..];
            }
            _ => {
                let n = protocol::value_len(rd).ok()?;
                rd = rd.get(n..)?;
            }
        }
    }
    (is_data && rd.is_empty()).then_some(payload).flatten()
}

/// msgpack `{t:"control", op:"channel_join", c, pl:<bin: msgpack {id}>}`.
pub fn join_frame(channel: &str, id: &str) -> Vec<u8> {
    let mut state = Vec::new();
    rmp::encode::write_map_len(&mut state, 1).unwrap();
    rmp::encode::write_str(&mut state, "id").unwrap();
    rmp::encode::write_str(&mut state, id).unwrap();
    let mut out = Vec::new();
    rmp::encode::write_map_len(&mut out, 4).unwrap();
    for (k, v) in [("t", "control"), ("op", "channel_join"), ("c", channel)] {
        rmp::encode::write_str(&mut out, k).unwrap();
        rmp::encode::write_str(&mut out, v).unwrap();
    }
    rmp::encode::write_str(&mut out, "pl").unwrap();
    rmp::encode::write_bin(&mut out, &state).unwrap();
    out
}

/// msgpack `{t:"data", c, pl:<bin payload>}`.
pub fn data_frame(channel: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + channel.len() + 24);
    rmp::encode::write_map_len(&mut out, 3).unwrap();
    for (k, v) in [("t", "data"), ("c", channel)] {
        rmp::encode::write_str(&mut out, k).unwrap();
        rmp::encode::write_str(&mut out, v).unwrap();
    }
    rmp::encode::write_str(&mut out, "pl").unwrap();
    rmp::encode::write_bin(&mut out, payload).unwrap();
    out
}

/// A bare room broadcast: `GET /?room=R`, every binary frame is a payload
/// relayed to the room's other members. The Node `ws` server of `bench/`
/// and the tokio-tungstenite ceiling speak it.
pub struct Raw {
    pub label: &'static str,
}

impl Wire for Raw {
    fn name(&self) -> &str {
        self.label
    }

    fn ws_path(&self, id: &str, room: &str) -> String {
        format!("/?room={room}&id={id}")
    }

    fn join(&self, _room: &str, _id: &str) -> Vec<Message> {
        Vec::new()
    }

    fn incoming(&self, _: &mut WireState, frame: Message, _: &mut Vec<Message>) -> Incoming {
        match frame {
            Message::Binary(b) => Incoming::Data(b),
            _ => Incoming::Other,
        }
    }

    fn publish(&self, _room: &str, payload: &[u8]) -> Vec<Message> {
        vec![Message::Binary(Bytes::copy_from_slice(payload))]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prscd_data_round_trip_through_the_relay_shape() {
        // What the node relays: the client's map plus `p` (sender).
        let mut relayed = Vec::new();
        rmp::encode::write_map_len(&mut relayed, 4).unwrap();
        for (k, v) in [("t", "data"), ("c", "room"), ("p", "alice")] {
            rmp::encode::write_str(&mut relayed, k).unwrap();
            rmp::encode::write_str(&mut relayed, v).unwrap();
        }
        rmp::encode::write_str(&mut relayed, "pl").unwrap();
        rmp::encode::write_bin(&mut relayed, b"12345678").unwrap();
        assert_eq!(
            prscd_frame(&Bytes::from(relayed)),
            Incoming::Data(Bytes::from_static(b"12345678"))
        );
        assert_eq!(
            prscd_frame(&Bytes::from(join_frame("room", "a"))),
            Incoming::Joined
        );
        assert_eq!(prscd_frame(&Bytes::from_static(b"\xc1")), Incoming::Other);
    }
}
