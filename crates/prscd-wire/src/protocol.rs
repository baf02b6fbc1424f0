//! The Presencejs v2 "Signalling" message: pure msgpack, no I/O.
//!
//! Every message on every transport is one msgpack map with string keys
//! (`t`, `op`, `c`, `p`, `pl`, `sid`, `app`, `mesh`; see PROTOCOL.md §2).
//! This module decodes what a client sends into a borrowed [`Inbound`],
//! encodes what the server relays, and finds where one msgpack value ends
//! ([`value_len`]) so that stream transports can split back-to-back messages.
//!
//! The decoder is hand-rolled rather than serde-derived for three reasons:
//! it must reject anything that is not exactly one map (serde would also take
//! arrays, and would ignore trailing bytes the browser's decoder chokes on),
//! it must keep `pl` as the raw msgpack bytes the client sent so they pass
//! through byte for byte whatever their type, and it must not allocate.

use std::fmt;

/// The two message kinds (`t`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Control(Op),
    Data,
}

/// Control operations (`op`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    ChannelJoin,
    PeerOnline,
    PeerState,
    PeerOffline,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::ChannelJoin => "channel_join",
            Op::PeerOnline => "peer_online",
            Op::PeerState => "peer_state",
            Op::PeerOffline => "peer_offline",
        }
    }

    fn parse(s: &str) -> Option<Op> {
        Some(match s {
            "channel_join" => Op::ChannelJoin,
            "peer_online" => Op::PeerOnline,
            "peer_state" => Op::PeerState,
            "peer_offline" => Op::PeerOffline,
            _ => return None,
        })
    }
}

impl Kind {
    pub fn t(self) -> &'static str {
        match self {
            Kind::Control(_) => "control",
            Kind::Data => "data",
        }
    }

    pub fn op(self) -> Option<Op> {
        match self {
            Kind::Control(op) => Some(op),
            Kind::Data => None,
        }
    }

    /// Short label for logs and metrics: `data` or the control op.
    pub fn label(self) -> &'static str {
        match self {
            Kind::Control(op) => op.as_str(),
            Kind::Data => "data",
        }
    }
}

/// A decoded client message, borrowing from the frame it came in.
///
/// `p`, `sid` and `app` are deliberately absent: the server sets the sender
/// itself and never trusts a client-sent identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inbound<'a> {
    pub kind: Kind,
    pub channel: &'a str,
    /// The raw msgpack value of `pl` (header included), if present and not nil.
    pub payload: Option<&'a [u8]>,
}

/// A message as the server relays it: `p` set by the server, `mesh` the node
/// where it entered. `sid` and `app` are never encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outbound<'a> {
    pub kind: Kind,
    pub channel: &'a str,
    pub peer: &'a str,
    pub payload: Option<&'a [u8]>,
    pub mesh: Option<&'a str>,
}

/// Why a frame could not be decoded. Each maps to a drop reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The bytes end before the value does.
    #[error("incomplete msgpack value")]
    Incomplete,
    #[error("invalid msgpack: {0}")]
    Malformed(&'static str),
    #[error("message is not a msgpack map")]
    NotAMap,
    #[error("{0} trailing bytes after the message")]
    TrailingBytes(usize),
    #[error("field `{0}` missing")]
    Missing(&'static str),
    #[error("field `{0}` has the wrong type")]
    WrongType(&'static str),
    #[error("unknown message type `t`")]
    UnknownType,
    #[error("unknown control `op`")]
    UnknownOp,
    #[error("channel name empty or longer than {MAX_CHANNEL_LEN} bytes")]
    BadChannel,
}

impl DecodeError {
    /// True when the message was well-formed msgpack but not one we speak.
    pub fn is_unknown_kind(&self) -> bool {
        matches!(self, DecodeError::UnknownType | DecodeError::UnknownOp)
    }
}

/// Longest channel name accepted, in bytes.
pub const MAX_CHANNEL_LEN: usize = 256;

/// Decodes one client message. `frame` must hold exactly one msgpack map.
pub fn decode(frame: &[u8]) -> Result<Inbound<'_>, DecodeError> {
    let fields = decode_fields(frame)?;
    Ok(Inbound {
        kind: fields.kind,
        channel: fields.channel,
        payload: fields.payload,
    })
}

/// Decodes a message that arrived through the mesh: like [`decode`], but
/// `p` (the sender, set by the node or backend that published it) is
/// required and `mesh` is kept.
pub fn decode_relayed(frame: &[u8]) -> Result<Outbound<'_>, DecodeError> {
    let fields = decode_fields(frame)?;
    Ok(Outbound {
        kind: fields.kind,
        channel: fields.channel,
        peer: fields
            .peer
            .filter(|p| !p.is_empty())
            .ok_or(DecodeError::Missing("p"))?,
        payload: fields.payload,
        mesh: fields.mesh,
    })
}

struct Fields<'a> {
    kind: Kind,
    channel: &'a str,
    peer: Option<&'a str>,
    payload: Option<&'a [u8]>,
    mesh: Option<&'a str>,
}

fn decode_fields(frame: &[u8]) -> Result<Fields<'_>, DecodeError> {
    let total = value_len(frame)?;
    if total != frame.len() {
        return Err(DecodeError::TrailingBytes(frame.len() - total));
    }
    let mut r = Reader { buf: frame, pos: 0 };
    let entries = r.map_len()?;

    let (mut t, mut op, mut channel, mut peer, mut payload, mut mesh) =
        (None, None, None, None, None, None);
    for _ in 0..entries {
        let key = r.str_or(DecodeError::Malformed("map key is not a string"))?;
        match key {
            "t" => t = r.opt_str("t")?,
            "op" => op = r.opt_str("op")?,
            "c" => channel = r.opt_str("c")?,
            "p" => peer = r.opt_str("p")?,
            "mesh" => mesh = r.opt_str("mesh")?,
            "pl" => {
                let raw = r.raw_value()?;
                payload = (raw != [NIL]).then_some(raw);
            }
            // sid, app and unknown keys: skipped (never trusted).
            _ => {
                r.raw_value()?;
            }
        }
    }

    let kind = match t.ok_or(DecodeError::Missing("t"))? {
        "data" => Kind::Data,
        "control" => Kind::Control(
            Op::parse(op.ok_or(DecodeError::Missing("op"))?).ok_or(DecodeError::UnknownOp)?,
        ),
        _ => return Err(DecodeError::UnknownType),
    };
    let channel = channel.ok_or(DecodeError::Missing("c"))?;
    if channel.is_empty() || channel.len() > MAX_CHANNEL_LEN {
        return Err(DecodeError::BadChannel);
    }
    Ok(Fields {
        kind,
        channel,
        peer,
        payload,
        mesh: mesh.filter(|m| !m.is_empty()),
    })
}

/// Encodes a relayed message. Keys are written in a fixed order; `pl` is
/// copied verbatim.
pub fn encode(msg: &Outbound<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        32 + msg.channel.len()
            + msg.peer.len()
            + msg.payload.map_or(0, <[u8]>::len)
            + msg.mesh.map_or(0, str::len),
    );
    let op = msg.kind.op();
    let entries =
        3 + op.is_some() as u32 + msg.payload.is_some() as u32 + msg.mesh.is_some() as u32;
    rmp::encode::write_map_len(&mut out, entries).expect("vec write");
    write_pair(&mut out, "t", msg.kind.t());
    if let Some(op) = op {
        write_pair(&mut out, "op", op.as_str());
    }
    write_pair(&mut out, "c", msg.channel);
    write_pair(&mut out, "p", msg.peer);
    if let Some(pl) = msg.payload {
        rmp::encode::write_str(&mut out, "pl").expect("vec write");
        out.extend_from_slice(pl);
    }
    if let Some(mesh) = msg.mesh {
        write_pair(&mut out, "mesh", mesh);
    }
    out
}

/// A control message without payload: presence a node emits itself.
pub fn encode_control(op: Op, channel: &str, peer: &str, mesh: &str) -> Vec<u8> {
    encode(&Outbound {
        kind: Kind::Control(op),
        channel,
        peer,
        payload: None,
        mesh: Some(mesh),
    })
}

/// The join acknowledgement, sent to the joiner only. `p` is empty, as the
/// original sent it: the client drops presence ops whose `p` is its own id.
pub fn encode_join_ack(channel: &str, mesh: &str) -> Vec<u8> {
    encode_control(Op::ChannelJoin, channel, "", mesh)
}

/// A `channel_join` or `peer_state` payload with its `id` pinned to the
/// sender `peer` and the server-vouched `overlay` fields set over the
/// sender's (PROTOCOL.md §2: the client builds a member as `{id: p, ...pl}`,
/// so an unchecked `pl.id` would rename the sender). `payload` is the raw
/// `pl` value: a bin holding the msgpack state, as the published client
/// sends it, or the state map itself. `None` when the bytes may pass as
/// they are: no map inside, or a map whose `id` is already `peer` and no
/// overlay.
pub fn pin_state(payload: &[u8], peer: &str, overlay: &[(String, rmpv::Value)]) -> Option<Vec<u8>> {
    let read = |mut bytes: &[u8]| rmpv::decode::read_value(&mut bytes).ok();
    let (entries, in_bin) = match read(payload)? {
        rmpv::Value::Map(entries) => (entries, false),
        rmpv::Value::Binary(inner) => match read(&inner)? {
            rmpv::Value::Map(entries) => (entries, true),
            _ => return None,
        },
        _ => return None,
    };
    let is_key = |k: &rmpv::Value, name: &str| k.as_str() == Some(name);
    let id_ok = entries
        .iter()
        .filter(|(k, _)| is_key(k, "id"))
        .all(|(_, v)| v.as_str() == Some(peer));
    if id_ok && overlay.is_empty() {
        return None;
    }
    let mut pinned = Vec::with_capacity(entries.len() + overlay.len() + 1);
    pinned.push((rmpv::Value::from("id"), rmpv::Value::from(peer)));
    pinned.extend(
        entries
            .into_iter()
            .filter(|(k, _)| !is_key(k, "id") && !overlay.iter().any(|(name, _)| is_key(k, name))),
    );
    pinned.extend(
        overlay
            .iter()
            .map(|(k, v)| (rmpv::Value::from(k.as_str()), v.clone())),
    );
    let mut state = Vec::with_capacity(payload.len() + 16);
    rmpv::encode::write_value(&mut state, &rmpv::Value::Map(pinned)).expect("vec write");
    if !in_bin {
        return Some(state);
    }
    let mut out = Vec::with_capacity(state.len() + 5);
    rmpv::encode::write_value(&mut out, &rmpv::Value::Binary(state)).expect("vec write");
    Some(out)
}

fn write_pair(out: &mut Vec<u8>, key: &str, value: &str) {
    rmp::encode::write_str(out, key).expect("vec write");
    rmp::encode::write_str(out, value).expect("vec write");
}

const NIL: u8 = 0xc0;

/// Length in bytes of the first complete msgpack value in `buf`.
///
/// Returns [`DecodeError::Incomplete`] when `buf` ends first (a stream reader
/// then waits for more bytes) and [`DecodeError::Malformed`] on the reserved
/// marker 0xc1. Iterative, so nesting depth cannot overflow the stack.
pub fn value_len(buf: &[u8]) -> Result<usize, DecodeError> {
    ValueScan::default().next(buf)
}

/// [`value_len`] that resumes where it stopped. A stream reader fed a value
/// in small pieces then reads each byte once, instead of rescanning the
/// whole value for every piece (quadratic in a value of many small items).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueScan {
    /// Where the next item's header starts.
    pos: usize,
    /// Items still to be read; u64 because a map32 announces 2 * u32::MAX.
    pending: u64,
}

impl Default for ValueScan {
    fn default() -> Self {
        ValueScan { pos: 0, pending: 1 }
    }
}

impl ValueScan {
    /// The length of the first value of `buf` once it is complete, and the
    /// scan starts over for the next one. Between calls `buf` may only grow
    /// at its end; after a value is split off its front, the scan is
    /// already fresh.
    pub fn next(&mut self, buf: &[u8]) -> Result<usize, DecodeError> {
        while self.pending > 0 {
            let (header, body, children) = header_at(buf, self.pos)?;
            let end = self
                .pos
                .checked_add(header)
                .and_then(|p| p.checked_add(body))
                .ok_or(DecodeError::Incomplete)?;
            if end > buf.len() {
                return Err(DecodeError::Incomplete);
            }
            self.pos = end;
            self.pending = self.pending - 1 + children;
            // Every child takes at least one byte: an announcement larger
            // than what is left cannot be complete yet.
            if self.pending > (buf.len() - self.pos) as u64 {
                return Err(DecodeError::Incomplete);
            }
        }
        let len = self.pos;
        *self = ValueScan::default();
        Ok(len)
    }
}

/// For the value at `pos`: (header bytes, body bytes, child values).
fn header_at(buf: &[u8], pos: usize) -> Result<(usize, usize, u64), DecodeError> {
    let marker = *buf.get(pos).ok_or(DecodeError::Incomplete)?;
    let be = |n: usize| -> Result<u64, DecodeError> {
        let bytes = buf
            .get(pos + 1..pos + 1 + n)
            .ok_or(DecodeError::Incomplete)?;
        Ok(bytes.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
    };
    let size = |n: u64| usize::try_from(n).map_err(|_| DecodeError::Incomplete);
    Ok(match marker {
        0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => (1, 0, 0),
        0x80..=0x8f => (1, 0, 2 * u64::from(marker & 0x0f)),
        0x90..=0x9f => (1, 0, u64::from(marker & 0x0f)),
        0xa0..=0xbf => (1, usize::from(marker & 0x1f), 0),
        0xc1 => return Err(DecodeError::Malformed("reserved marker 0xc1")),
        0xc4 | 0xd9 => (2, size(be(1)?)?, 0),
        0xc5 | 0xda => (3, size(be(2)?)?, 0),
        0xc6 | 0xdb => (5, size(be(4)?)?, 0),
        0xc7 => (3, size(be(1)?)?, 0),
        0xc8 => (4, size(be(2)?)?, 0),
        0xc9 => (6, size(be(4)?)?, 0),
        0xca => (1, 4, 0),
        0xcb => (1, 8, 0),
        0xcc | 0xd0 => (1, 1, 0),
        0xcd | 0xd1 => (1, 2, 0),
        0xce | 0xd2 => (1, 4, 0),
        0xcf | 0xd3 => (1, 8, 0),
        0xd4 => (2, 1, 0),
        0xd5 => (2, 2, 0),
        0xd6 => (2, 4, 0),
        0xd7 => (2, 8, 0),
        0xd8 => (2, 16, 0),
        0xdc => (3, 0, be(2)?),
        0xdd => (5, 0, be(4)?),
        0xde => (3, 0, 2 * be(2)?),
        0xdf => (5, 0, 2 * be(4)?),
    })
}

/// A cursor over a buffer already checked by [`value_len`].
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn map_len(&mut self) -> Result<u64, DecodeError> {
        let (header, _, children) = header_at(self.buf, self.pos)?;
        if !matches!(self.buf[self.pos], 0x80..=0x8f | 0xde | 0xdf) {
            return Err(DecodeError::NotAMap);
        }
        self.pos += header;
        Ok(children / 2)
    }

    fn raw_value(&mut self) -> Result<&'a [u8], DecodeError> {
        let len = value_len(&self.buf[self.pos..])?;
        let raw = &self.buf[self.pos..self.pos + len];
        self.pos += len;
        Ok(raw)
    }

    fn str_or(&mut self, wrong_type: DecodeError) -> Result<&'a str, DecodeError> {
        let marker = self.buf[self.pos];
        if !matches!(marker, 0xa0..=0xbf | 0xd9 | 0xda | 0xdb) {
            return Err(wrong_type);
        }
        let (header, body, _) = header_at(self.buf, self.pos)?;
        let bytes = &self.buf[self.pos + header..self.pos + header + body];
        self.pos += header + body;
        std::str::from_utf8(bytes).map_err(|_| DecodeError::Malformed("string is not UTF-8"))
    }

    /// A string field, where nil means absent.
    fn opt_str(&mut self, field: &'static str) -> Result<Option<&'a str>, DecodeError> {
        if self.buf[self.pos] == NIL {
            self.pos += 1;
            return Ok(None);
        }
        self.str_or(DecodeError::WrongType(field)).map(Some)
    }
}

impl fmt::Display for Inbound<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} c={}", self.kind.label(), self.channel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_is_pinned_to_its_sender() {
        let decode = |b: &[u8]| rmpv::decode::read_value(&mut &b[..]).unwrap();
        let forged = pack(&serde_json::json!({"id": "mallory", "name": "M"}));
        let pinned = decode(&pin_state(&forged, "alice", &[]).unwrap());
        assert_eq!(pinned["id"].as_str(), Some("alice"));
        assert_eq!(pinned["name"].as_str(), Some("M"));
        // As the published client sends it: the state inside a bin.
        let mut bin = Vec::new();
        rmpv::encode::write_value(&mut bin, &rmpv::Value::Binary(forged)).unwrap();
        let rmpv::Value::Binary(inner) = decode(&pin_state(&bin, "alice", &[]).unwrap()) else {
            panic!("a bin stays a bin");
        };
        assert_eq!(decode(&inner)["id"].as_str(), Some("alice"));
        // Already right, or not a map: passed through as sent.
        assert_eq!(
            pin_state(&pack(&serde_json::json!({"id": "alice"})), "alice", &[]),
            None
        );
        assert_eq!(
            pin_state(&pack(&serde_json::json!({"x": 1})), "alice", &[]),
            None
        );
        assert_eq!(
            pin_state(&pack(&serde_json::json!([1, 2])), "alice", &[]),
            None
        );
        assert_eq!(pin_state(&[0xc1], "alice", &[]), None);
        // The server's fields win over the sender's.
        let overlay = [("name".to_owned(), rmpv::Value::from("Alice"))];
        let state = pack(&serde_json::json!({"name": "Evil", "cursor": 3}));
        let pinned = decode(&pin_state(&state, "alice", &overlay).unwrap());
        assert_eq!(pinned["name"].as_str(), Some("Alice"));
        assert_eq!(pinned["id"].as_str(), Some("alice"));
        assert_eq!(pinned["cursor"].as_u64(), Some(3));
    }
    use serde::Serialize;

    #[derive(Serialize, Default)]
    struct Wire<'a> {
        t: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        op: Option<&'a str>,
        c: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        p: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none", with = "serde_bytes")]
        pl: Option<&'a [u8]>,
        #[serde(skip_serializing_if = "Option::is_none")]
        sid: Option<&'a str>,
    }

    fn pack<T: Serialize>(v: &T) -> Vec<u8> {
        rmp_serde::to_vec_named(v).unwrap()
    }

    #[test]
    fn decodes_what_the_browser_client_sends() {
        let state = pack(&serde_json::json!({"id": "alice", "cursor": [1, 2]}));
        let frame = pack(&Wire {
            t: "control",
            op: Some("channel_join"),
            c: "room",
            p: Some("spoofed"),
            pl: Some(&state),
            sid: Some("x"),
        });
        let msg = decode(&frame).unwrap();
        assert_eq!(msg.kind, Kind::Control(Op::ChannelJoin));
        assert_eq!(msg.channel, "room");
        // pl is the raw bin value: marker, length, then the state bytes.
        let pl = msg.payload.unwrap();
        assert_eq!(pl[0], 0xc4);
        assert_eq!(&pl[2..], &state[..]);
    }

    #[test]
    fn relayed_message_roundtrips_and_drops_client_identity() {
        let data = pack(&serde_json::json!({"event": "move", "data": "{\"x\":1}"}));
        let frame = pack(&Wire {
            t: "data",
            c: "room",
            p: Some("mallory"),
            pl: Some(&data),
            ..Default::default()
        });
        let inbound = decode(&frame).unwrap();
        let out = encode(&Outbound {
            kind: inbound.kind,
            channel: inbound.channel,
            peer: "alice",
            payload: inbound.payload,
            mesh: Some("eu"),
        });
        let v = rmpv::decode::read_value(&mut out.as_slice()).unwrap();
        let keys: Vec<_> = v
            .as_map()
            .unwrap()
            .iter()
            .map(|(k, _)| k.as_str().unwrap())
            .collect();
        assert_eq!(keys, ["t", "c", "p", "pl", "mesh"]);
        assert_eq!(v["t"].as_str(), Some("data"));
        assert_eq!(v["p"].as_str(), Some("alice"));
        assert_eq!(v["c"].as_str(), Some("room"));
        assert_eq!(v["mesh"].as_str(), Some("eu"));
        // Payload byte for byte.
        assert_eq!(decode(&out).unwrap().payload, inbound.payload);
        assert_eq!(value_len(&out).unwrap(), out.len());
    }

    #[test]
    fn relayed_messages_need_a_sender_and_keep_mesh() {
        let frame = pack(&serde_json::json!({"t": "data", "c": "a", "p": "backend-1", "sid": "x"}));
        let msg = decode_relayed(&frame).unwrap();
        assert_eq!((msg.peer, msg.mesh), ("backend-1", None));
        let frame = pack(&serde_json::json!({"t": "data", "c": "a", "p": "bob", "mesh": "eu"}));
        assert_eq!(decode_relayed(&frame).unwrap().mesh, Some("eu"));
        let frame = pack(&serde_json::json!({"t": "data", "c": "a"}));
        assert_eq!(decode_relayed(&frame), Err(DecodeError::Missing("p")));
        let frame = pack(&serde_json::json!({"t": "data", "c": "a", "p": ""}));
        assert_eq!(decode_relayed(&frame), Err(DecodeError::Missing("p")));
    }

    #[test]
    fn join_ack_has_empty_peer_and_mesh() {
        let v: serde_json::Value = rmp_serde::from_slice(&encode_join_ack("c1", "m1")).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"t":"control","op":"channel_join","c":"c1","p":"","mesh":"m1"})
        );
    }

    #[test]
    fn rejects_what_is_not_one_map() {
        assert_eq!(decode(&[]), Err(DecodeError::Incomplete));
        assert_eq!(decode(&[0x93, 1, 2, 3]), Err(DecodeError::NotAMap));
        assert_eq!(
            decode(&[0xc1]),
            Err(DecodeError::Malformed("reserved marker 0xc1"))
        );
        let mut two = pack(&Wire {
            t: "data",
            c: "a",
            ..Default::default()
        });
        two.extend_from_within(..);
        assert!(matches!(decode(&two), Err(DecodeError::TrailingBytes(_))));
        // Truncated string inside the map.
        let one = pack(&Wire {
            t: "data",
            c: "abc",
            ..Default::default()
        });
        assert_eq!(decode(&one[..one.len() - 1]), Err(DecodeError::Incomplete));
        // Non-string key.
        assert!(matches!(
            decode(&[0x81, 0x01, 0x02]),
            Err(DecodeError::Malformed(_))
        ));
    }

    #[test]
    fn rejects_unknown_kinds_and_missing_fields() {
        let f = |w: Wire| decode(&pack(&w)).map(|_| ());
        assert_eq!(
            f(Wire {
                t: "telemetry",
                c: "a",
                ..Default::default()
            }),
            Err(DecodeError::UnknownType)
        );
        assert_eq!(
            f(Wire {
                t: "control",
                op: Some("kick"),
                c: "a",
                ..Default::default()
            }),
            Err(DecodeError::UnknownOp)
        );
        assert_eq!(
            f(Wire {
                t: "control",
                c: "a",
                ..Default::default()
            }),
            Err(DecodeError::Missing("op"))
        );
        assert_eq!(
            f(Wire {
                t: "data",
                c: "",
                ..Default::default()
            }),
            Err(DecodeError::BadChannel)
        );
        let long = "x".repeat(MAX_CHANNEL_LEN + 1);
        assert_eq!(
            f(Wire {
                t: "data",
                c: &long,
                ..Default::default()
            }),
            Err(DecodeError::BadChannel)
        );
        assert_eq!(
            decode(&pack(&serde_json::json!({"c": "a"}))),
            Err(DecodeError::Missing("t"))
        );
        assert_eq!(
            decode(&pack(&serde_json::json!({"t": "data"}))),
            Err(DecodeError::Missing("c"))
        );
        assert_eq!(
            decode(&pack(&serde_json::json!({"t": 5, "c": "a"}))),
            Err(DecodeError::WrongType("t"))
        );
    }

    #[test]
    fn payload_of_any_type_passes_through() {
        // A non-browser client may send pl as a nested map rather than bin.
        let frame = pack(&serde_json::json!({"t": "data", "c": "a", "pl": {"k": [1, 2.5, null]}}));
        let msg = decode(&frame).unwrap();
        let inner: serde_json::Value = rmp_serde::from_slice(msg.payload.unwrap()).unwrap();
        assert_eq!(inner, serde_json::json!({"k": [1, 2.5, null]}));
        // nil payload counts as none.
        let frame = pack(&serde_json::json!({"t": "data", "c": "a", "pl": null}));
        assert_eq!(decode(&frame).unwrap().payload, None);
    }

    #[test]
    fn value_len_splits_back_to_back_messages() {
        let a = pack(&Wire {
            t: "data",
            c: "a",
            ..Default::default()
        });
        let b = pack(&serde_json::json!({"t": "data", "c": "b", "pl": [1, {"x": "y"}]}));
        let mut stream = a.clone();
        stream.extend_from_slice(&b);
        assert_eq!(value_len(&stream).unwrap(), a.len());
        assert_eq!(value_len(&stream[a.len()..]).unwrap(), b.len());
        for cut in 0..b.len() {
            assert_eq!(
                value_len(&b[..cut]),
                Err(DecodeError::Incomplete),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn huge_announced_lengths_are_incomplete_not_a_panic() {
        assert_eq!(
            value_len(&[0xdf, 0xff, 0xff, 0xff, 0xff]),
            Err(DecodeError::Incomplete)
        );
        assert_eq!(
            value_len(&[0xc6, 0xff, 0xff, 0xff, 0xff]),
            Err(DecodeError::Incomplete)
        );
        assert_eq!(
            value_len(&[0xdd, 0xff, 0xff, 0xff, 0xff, 0x01]),
            Err(DecodeError::Incomplete)
        );
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]

            /// The decoder never panics and never reads past a value's end.
            #[test]
            fn decoder_total_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
                let _ = decode(&bytes);
                if let Ok(n) = value_len(&bytes) {
                    prop_assert!(n <= bytes.len());
                }
            }

            /// Anything rmp-serde encodes, value_len measures exactly.
            #[test]
            fn value_len_agrees_with_rmp(
                keys in proptest::collection::vec("[a-z]{0,40}", 0..8),
                blob in proptest::collection::vec(any::<u8>(), 0..300),
                n in any::<i64>(),
                f in any::<f64>(),
            ) {
                let v = (keys, serde_bytes::ByteBuf::from(blob), n, f, Option::<bool>::None);
                let packed = rmp_serde::to_vec(&v).unwrap();
                prop_assert_eq!(value_len(&packed), Ok(packed.len()));
            }

            /// Scanning a stream fed in pieces finds the same values as
            /// measuring each whole.
            #[test]
            fn value_scan_in_pieces_agrees_with_value_len(
                items in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 1..6),
                piece in 1usize..9,
            ) {
                let values: Vec<Vec<u8>> = items
                    .iter()
                    .map(|item| rmp_serde::to_vec(&(item, item.len(), vec![1u8; item.len() % 5])).unwrap())
                    .collect();
                let stream = values.concat();
                let (mut scan, mut buf, mut found) = (ValueScan::default(), Vec::new(), Vec::new());
                for chunk in stream.chunks(piece) {
                    buf.extend_from_slice(chunk);
                    while let Ok(n) = scan.next(&buf) {
                        prop_assert_eq!(value_len(&buf), Ok(n));
                        found.push(buf.drain(..n).collect::<Vec<u8>>());
                    }
                }
                prop_assert_eq!(found, values);
                prop_assert!(buf.is_empty());
            }

            /// Whatever decodes re-encodes to something that decodes the same.
            #[test]
            fn decode_encode_decode(
                channel in "[ -~]{1,64}",
                peer in "[ -~]{0,32}",
                pl in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..2000)),
                data in any::<bool>(),
            ) {
                let w = Wire {
                    t: if data { "data" } else { "control" },
                    op: (!data).then_some("peer_state"),
                    c: &channel,
                    pl: pl.as_deref(),
                    ..Default::default()
                };
                let frame = pack(&w);
                let inbound = decode(&frame).unwrap();
                let out = encode(&Outbound { kind: inbound.kind, channel: inbound.channel, peer: &peer, payload: inbound.payload, mesh: None });
                let again = decode(&out).unwrap();
                prop_assert_eq!(again, inbound);
            }
        }
    }
}
