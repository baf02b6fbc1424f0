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
use prscd_wire::protocol::{self, Kind, Op};
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
    /// Frames with which client `id` publishes `payload` to `room`.
    fn publish(&self, room: &str, id: &str, payload: &[u8]) -> Vec<Message>;
}

/// prscd's Signalling (PROTOCOL.md): `channel_join` with the ack, `data`
/// messages whose `pl` is the payload as msgpack bin.
pub struct Prscd {
    pub base_path: String,
    pub publickey: String,
    /// Connect with a signed token per client instead of `publickey`.
    pub token: Option<TokenKey>,
}

/// What a prscd client's signed token is minted with (README, "Signed tokens").
pub struct TokenKey {
    pub app: String,
    pub secret: String,
}

impl TokenKey {
    /// An HS256 token for `id`, valid for an hour.
    fn mint(&self, id: &str) -> String {
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
            + 3600;
        let claims = serde_json::json!({"app": self.app, "sub": id, "exp": exp});
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(self.secret.as_bytes()),
        )
        .expect("HS256 encoding")
    }
}

impl Wire for Prscd {
    fn name(&self) -> &str {
        "prscd"
    }

    fn ws_path(&self, id: &str, _room: &str) -> String {
        match &self.token {
            Some(key) => format!("{}?publickey={}&id={}", self.base_path, key.mint(id), id),
            None => format!("{}?publickey={}&id={}", self.base_path, self.publickey, id),
        }
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

    fn publish(&self, room: &str, _id: &str, payload: &[u8]) -> Vec<Message> {
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
///
/// Written out by marker byte rather than through `rmp`'s reader: the client
/// shares the cores with the server under test, and this runs once per
/// delivery (118 ns per 144-byte frame through `rmp`, 28 here; 55 through
/// the node's general `protocol::header_at`, hence the few string and bin
/// widths spelled out again).
fn data_payload(frame: &[u8]) -> Option<std::ops::Range<usize>> {
    let (fields, mut at) = match *frame.first()? {
        m @ 0x80..=0x8f => (usize::from(m & 0x0f), 1),
        0xde => (usize::from(be16(frame, 1)?), 3),
        _ => return None,
    };
    let (mut is_data, mut payload) = (false, None);
    for _ in 0..fields {
        let key = str_at(frame, &mut at)?;
        match key {
            b"t" => is_data = str_at(frame, &mut at)? == b"data",
            b"pl" => {
                let (header, len) = match *frame.get(at)? {
                    0xc4 => (2, usize::from(*frame.get(at + 1)?)),
                    0xc5 => (3, usize::from(be16(frame, at + 1)?)),
                    _ => (
                        5,
                        rmp::decode::read_bin_len(&mut frame.get(at..)?).ok()? as usize,
                    ),
                };
                let start = at + header;
                frame.get(start..start + len)?;
                payload = Some(start..start + len);
                at = start + len;
            }
            _ => {
                if str_at(frame, &mut at).is_none() {
                    at += protocol::value_len(frame.get(at..)?).ok()?;
                }
            }
        }
    }
    (is_data && at == frame.len()).then_some(payload).flatten()
}

/// The string at `*at` (fixstr, str8 or str16), moving `*at` past it; `None`
/// (and `*at` unmoved) for anything else.
fn str_at<'a>(frame: &'a [u8], at: &mut usize) -> Option<&'a [u8]> {
    let (header, len) = match *frame.get(*at)? {
        m @ 0xa0..=0xbf => (1, usize::from(m & 0x1f)),
        0xd9 => (2, usize::from(*frame.get(*at + 1)?)),
        0xda => (3, usize::from(be16(frame, *at + 1)?)),
        _ => return None,
    };
    let s = frame.get(*at + header..*at + header + len)?;
    *at += header + len;
    Some(s)
}

fn be16(frame: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(frame.get(at..at + 2)?.try_into().ok()?))
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

/// msgpack `{t:"control", op, c, pl?:<bin>}`.
pub fn control_frame(op: &str, channel: &str, pl: Option<&[u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    rmp::encode::write_map_len(&mut out, 3 + u32::from(pl.is_some())).unwrap();
    for (k, v) in [("t", "control"), ("op", op), ("c", channel)] {
        rmp::encode::write_str(&mut out, k).unwrap();
        rmp::encode::write_str(&mut out, v).unwrap();
    }
    if let Some(pl) = pl {
        rmp::encode::write_str(&mut out, "pl").unwrap();
        rmp::encode::write_bin(&mut out, pl).unwrap();
    }
    out
}

/// A `peer_state` carrying `{id, name}`, as the published client sends it.
pub fn state_frame(channel: &str, id: &str) -> Vec<u8> {
    let mut state = Vec::new();
    rmp::encode::write_map_len(&mut state, 2).unwrap();
    for (k, v) in [("id", id), ("name", id)] {
        rmp::encode::write_str(&mut state, k).unwrap();
        rmp::encode::write_str(&mut state, v).unwrap();
    }
    control_frame("peer_state", channel, Some(&state))
}

/// The `op` and sender `p` of a control message (`p` is empty in a join ack).
pub fn control_of(frame: &[u8]) -> Option<(String, String)> {
    let value = rmpv::decode::read_value(&mut &frame[..]).ok()?;
    let field = |key: &str| {
        value
            .as_map()?
            .iter()
            .find(|(k, _)| k.as_str() == Some(key))?
            .1
            .as_str()
    };
    Some((field("op")?.to_owned(), field("p").unwrap_or("").to_owned()))
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

/// What a prscd node whose MESH_ID is `mesh` delivers when `from` publishes
/// `payload` in `channel` ([`data_frame`] plus the node's `p` and `mesh`),
/// byte for byte.
pub fn delivered_frame(channel: &str, from: &str, mesh: &str, payload: &[u8]) -> Vec<u8> {
    let mut bin = Vec::with_capacity(payload.len() + 5);
    rmp::encode::write_bin(&mut bin, payload).unwrap();
    protocol::encode(&protocol::Outbound {
        kind: Kind::Data,
        channel,
        peer: from,
        payload: Some(&bin),
        mesh: Some(mesh),
    })
}

/// A bare room broadcast: `GET /?room=R`, every binary frame is relayed as
/// it is to the room's other members. The Node `ws` server of `bench/` and
/// the tokio-tungstenite ceiling speak it.
pub struct Raw {
    pub label: &'static str,
    /// `Some(mesh_id)`: publish, and read back, the bytes a prscd node with
    /// that MESH_ID delivers for the same message ([`delivered_frame`])
    /// instead of the bare payload: prscd's frames on the wire, without prscd.
    pub signalling: Option<String>,
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
            Message::Binary(b) if self.signalling.is_some() => prscd_frame(&b),
            Message::Binary(b) => Incoming::Data(b),
            _ => Incoming::Other,
        }
    }

    fn publish(&self, room: &str, id: &str, payload: &[u8]) -> Vec<Message> {
        let frame = if let Some(mesh) = &self.signalling {
            delivered_frame(room, id, mesh, payload).into()
        } else {
            Bytes::copy_from_slice(payload)
        };
        vec![Message::Binary(frame)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_with_prscd_frames_publishes_what_a_node_delivers() {
        let raw = Raw {
            label: "ceiling",
            signalling: Some("bench".into()),
        };
        let sent = raw.publish("room", "pub0", b"12345678");
        let [Message::Binary(frame)] = sent.as_slice() else {
            panic!("one binary frame: {sent:?}");
        };
        let m = protocol::decode_relayed(frame).unwrap();
        assert_eq!(m.kind, Kind::Data);
        assert_eq!((m.channel, m.peer, m.mesh), ("room", "pub0", Some("bench")));
        let got = raw.incoming(
            &mut WireState::default(),
            Message::Binary(frame.clone()),
            &mut Vec::new(),
        );
        assert_eq!(got, Incoming::Data(Bytes::from_static(b"12345678")));
        // Without it, the frame is the payload.
        let bare = Raw {
            label: "ceiling",
            signalling: None,
        };
        assert_eq!(
            bare.publish("room", "pub0", b"1234"),
            [Message::Binary(Bytes::from_static(b"1234"))]
        );
    }

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

    /// The quick walk agrees with the full decoder on every string and bin
    /// width, on `pl` anywhere in the map, and gives up (to the decoder) on
    /// what it does not know.
    #[test]
    fn quick_walk_agrees_with_the_decoder() {
        let long = "x".repeat(300);
        for (peer, payload_len) in [
            ("a", 0usize),
            ("b", 100),
            (long.as_str(), 300),
            ("c", 70_000),
        ] {
            let payload = vec![9u8; payload_len];
            let frame = delivered_frame("room", peer, "node-1", &payload);
            let range = data_payload(&frame).expect("quick walk");
            assert_eq!(&frame[range], &payload[..]);
            // Trailing bytes, a cut frame: not data.
            let mut trailing = frame.clone();
            trailing.push(0);
            assert_eq!(data_payload(&trailing), None);
            assert_eq!(data_payload(&frame[..frame.len() - 1]), None);
        }
        // `pl` first, an unknown key with a map value, str8 keys.
        let mut frame = Vec::new();
        rmp::encode::write_map_len(&mut frame, 4).unwrap();
        rmp::encode::write_str(&mut frame, "pl").unwrap();
        rmp::encode::write_bin(&mut frame, b"xyz").unwrap();
        rmp::encode::write_str(&mut frame, "extra").unwrap();
        rmp::encode::write_map_len(&mut frame, 1).unwrap();
        rmp::encode::write_str(&mut frame, "k").unwrap();
        rmp::encode::write_u32(&mut frame, 7).unwrap();
        rmp::encode::write_str(&mut frame, &"k".repeat(40)).unwrap();
        rmp::encode::write_nil(&mut frame).unwrap();
        rmp::encode::write_str(&mut frame, "t").unwrap();
        rmp::encode::write_str(&mut frame, "data").unwrap();
        assert_eq!(data_payload(&frame).map(|r| &frame[r]), Some(&b"xyz"[..]));
        // Control messages are not data.
        let control = protocol::encode_control(Op::PeerOnline, "room", "a", "m");
        assert_eq!(data_payload(&control), None);
    }
}
