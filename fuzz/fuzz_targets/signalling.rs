//! The Signalling decoder, on any bytes a client or the mesh can send.
//! Oracle: whatever the node accepts, it relays in a form that decodes back
//! to the same message, and a pinned state is still one msgpack value.
#![no_main]
use libfuzzer_sys::fuzz_target;
use prscd_wire::protocol::{self, Outbound};

fuzz_target!(|data: &[u8]| {
    if let Ok(n) = protocol::value_len(data) {
        assert!(n >= 1 && n <= data.len());
    }
    if let Ok(msg) = protocol::decode(data) {
        let out = Outbound {
            kind: msg.kind,
            channel: msg.channel,
            peer: "fuzz",
            payload: msg.payload,
            mesh: Some("eu"),
        };
        let wire = protocol::encode(&out);
        assert_eq!(protocol::decode_relayed(&wire), Ok(out));
        if let Some(pl) = msg.payload {
            if let Some(pinned) = protocol::pin_state(pl, "fuzz", &[]) {
                assert_eq!(protocol::value_len(&pinned), Ok(pinned.len()));
            }
        }
    }
    if let Ok(relayed) = protocol::decode_relayed(data) {
        assert!(!relayed.peer.is_empty());
    }
});
