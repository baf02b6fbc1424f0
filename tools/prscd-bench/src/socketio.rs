//! socket.io 4 (Engine.IO v4) over the WebSocket transport only, for the
//! room server of `bench/servers/socketio-rooms.js`:
//! `emit("join", room, ack)` and `emit("msg", room, <binary payload>)`; the
//! server relays `emit("msg", payload)` to the room's other members.
//!
//! The exchange, checked against socket.io 4.8 (`→` client, `←` server):
//!
//! ```text
//! → 40                                        join(): CONNECT to "/"
//! ← 0{"sid":…,"pingInterval":25000,…}         Engine.IO open: Other
//! ← 40{"sid":…}                               CONNECT ack: Other, and
//! → 420["join","<room>"]                        the join goes to `reply`
//! ← 430[]                                     the join's ack: Joined
//! → 451-["msg","<room>",{"_placeholder":true,"num":0}]   publish():
//! → <binary payload>                            text, then attachment
//! ← 451-["msg",{"_placeholder":true,"num":0}] Other; one attachment due
//! ← <binary payload>                          Data
//! ← 2   → 3                                   Engine.IO ping, pong to `reply`
//! ```
//!
//! Why the join is not sent with the `40` by [`join`](Wire::join): the
//! server adds the socket to the namespace asynchronously (an `await` and a
//! `nextTick` in `Namespace._add`), and an event read before that finds no
//! socket: "invalid state", the server closes the connection (a bare Close).
//! Node drains its tick queue between TLS records but not within one, so it
//! hinges on the client's write buffering: `40` and the join written in one
//! TLS record (tungstenite's default write buffer, one flush) failed on 200
//! of 200 connections; as two records (a flush between, or a write buffer of
//! 0) 500 of 500 concurrent connections were acked. Too fragile to rely on:
//! the join waits for the CONNECT ack, as the official client's emit buffer
//! does. Sending the `40` before the `0` arrives is safe: the server has
//! its handlers on the socket before it reads anything after the 101.
//!
//! The engine must therefore (1) create each connection's [`WireState`] with
//! `room` set to the room the client joins, and (2) send the frames
//! [`incoming`](Wire::incoming) leaves in `reply` (the join, pongs), and keep
//! reading until [`Incoming::Joined`].

use bytes::Bytes;
use tokio_tungstenite::tungstenite::Message;

use crate::wire::{Incoming, Wire, WireState};

/// The ack id of the `join` event.
const JOIN_ACK: u32 = 0;

pub struct SocketIo;

impl Wire for SocketIo {
    fn name(&self) -> &str {
        "socketio"
    }

    fn ws_path(&self, _id: &str, _room: &str) -> String {
        "/socket.io/?EIO=4&transport=websocket".into()
    }

    fn join(&self, _room: &str, _id: &str) -> Vec<Message> {
        vec![Message::text("40")]
    }

    fn incoming(
        &self,
        state: &mut WireState,
        frame: Message,
        reply: &mut Vec<Message>,
    ) -> Incoming {
        match frame {
            Message::Text(text) => text_packet(state, text.as_str(), reply),
            Message::Binary(bytes) if state.attachments_due > 0 => {
                state.attachments_due -= 1;
                if std::mem::take(&mut state.msg_attachment) {
                    Incoming::Data(bytes)
                } else {
                    Incoming::Other
                }
            }
            _ => Incoming::Other,
        }
    }

    fn publish(&self, room: &str, _id: &str, payload: &[u8]) -> Vec<Message> {
        vec![
            Message::text(format!(
                r#"451-["msg",{},{{"_placeholder":true,"num":0}}]"#,
                json_string(room)
            )),
            Message::Binary(Bytes::copy_from_slice(payload)),
        ]
    }
}

/// `420["join","<room>"]`: the join event, with an ack.
pub fn join_event(room: &str) -> Message {
    Message::text(format!(r#"42{JOIN_ACK}["join",{}]"#, json_string(room)))
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

/// One Engine.IO text packet: a type digit, then for `4` (message) a
/// socket.io packet: a type digit, for binary packets `<attachments>-`, the
/// namespace if not `/` (`/nsp,`), an ack id, then the JSON data.
fn text_packet(state: &mut WireState, packet: &str, reply: &mut Vec<Message>) -> Incoming {
    let Some(eio) = packet.get(..1) else {
        return Incoming::Other;
    };
    let rest = &packet[1..];
    match eio {
        // ping → pong, echoing any payload
        "2" => {
            reply.push(Message::text(format!("3{rest}")));
            return Incoming::Other;
        }
        "4" => {}
        // open, close, pong, noop, upgrade
        _ => return Incoming::Other,
    }
    let (kind, body) = rest.split_at(rest.len().min(1));
    if body.starts_with('/') {
        return Incoming::Other; // not the default namespace
    }
    match kind {
        // CONNECT ack of "/": now the join may go.
        "0" => {
            debug_assert!(!state.room.is_empty(), "WireState::room not set");
            reply.push(join_event(&state.room));
            Incoming::Other
        }
        // ACK
        "3" => {
            let digits = body.bytes().take_while(u8::is_ascii_digit).count();
            match body[..digits].parse::<u32>() {
                Ok(JOIN_ACK) => Incoming::Joined,
                _ => Incoming::Other,
            }
        }
        // BINARY_EVENT: `<n>-` then the data, whose placeholders the next n
        // binary frames fill.
        "5" => {
            let Some((n, data)) = body.split_once('-') else {
                return Incoming::Other;
            };
            let Ok(n) = n.parse::<u32>() else {
                return Incoming::Other;
            };
            state.attachments_due = n;
            let data = data.trim_start_matches(|c: char| c.is_ascii_digit());
            state.msg_attachment = n > 0 && data.starts_with(r#"["msg","#);
            Incoming::Other
        }
        _ => Incoming::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(state: &mut WireState, frame: Message) -> (Incoming, Vec<Message>) {
        let mut reply = Vec::new();
        let incoming = SocketIo.incoming(state, frame, &mut reply);
        (incoming, reply)
    }

    #[test]
    fn connect_then_join_on_the_connect_ack() {
        let mut state = WireState {
            room: "r\"1".into(),
            ..Default::default()
        };
        assert_eq!(SocketIo.join("r\"1", "a"), vec![Message::text("40")]);
        let open = r#"0{"sid":"x","upgrades":[],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1048576}"#;
        assert_eq!(
            read(&mut state, Message::text(open)),
            (Incoming::Other, vec![])
        );
        assert_eq!(
            read(&mut state, Message::text(r#"40{"sid":"y"}"#)),
            (
                Incoming::Other,
                vec![Message::text(r#"420["join","r\"1"]"#)]
            )
        );
        assert_eq!(read(&mut state, Message::text("430[]")).0, Incoming::Joined);
        // Another ack id, a connect error, another namespace: not the join.
        assert_eq!(read(&mut state, Message::text("431[]")).0, Incoming::Other);
        let error = r#"44{"message":"Invalid namespace"}"#;
        assert_eq!(
            read(&mut state, Message::text(error)),
            (Incoming::Other, vec![])
        );
        assert_eq!(
            read(&mut state, Message::text("40/admin,{}")),
            (Incoming::Other, vec![])
        );
    }

    #[test]
    fn ping_gets_a_pong() {
        let mut state = WireState::default();
        assert_eq!(
            read(&mut state, Message::text("2")),
            (Incoming::Other, vec![Message::text("3")])
        );
        assert_eq!(
            read(&mut state, Message::text("2probe")).1,
            vec![Message::text("3probe")]
        );
    }

    #[test]
    fn publish_is_a_binary_event_with_one_attachment() {
        assert_eq!(
            SocketIo.publish("room", "c0", b"\x00\x01"),
            vec![
                Message::text(r#"451-["msg","room",{"_placeholder":true,"num":0}]"#),
                Message::Binary(Bytes::from_static(b"\x00\x01")),
            ]
        );
    }

    #[test]
    fn relayed_msg_is_the_attachment() {
        let mut state = WireState::default();
        let head = Message::text(r#"451-["msg",{"_placeholder":true,"num":0}]"#);
        assert_eq!(read(&mut state, head).0, Incoming::Other);
        assert_eq!(state.attachments_due, 1);
        let payload = Bytes::from_static(b"12345678");
        assert_eq!(
            read(&mut state, Message::Binary(payload.clone())).0,
            Incoming::Data(payload)
        );
        assert_eq!(state.attachments_due, 0);
        // A binary frame nobody announced, or another event's attachment.
        assert_eq!(
            read(&mut state, Message::binary(b"x".to_vec())).0,
            Incoming::Other
        );
        let other = Message::text(r#"451-["other",{"_placeholder":true,"num":0}]"#);
        assert_eq!(read(&mut state, other).0, Incoming::Other);
        assert_eq!(
            read(&mut state, Message::binary(b"x".to_vec())).0,
            Incoming::Other
        );
        // A plain event (no attachments) and an acked binary event.
        assert_eq!(
            read(&mut state, Message::text(r#"42["msg","hi"]"#)).0,
            Incoming::Other
        );
        let acked = Message::text(r#"451-7["msg",{"_placeholder":true,"num":0}]"#);
        assert_eq!(read(&mut state, acked).0, Incoming::Other);
        assert_eq!(
            read(&mut state, Message::binary(b"y".to_vec())).0,
            Incoming::Data(Bytes::from_static(b"y"))
        );
    }
}
