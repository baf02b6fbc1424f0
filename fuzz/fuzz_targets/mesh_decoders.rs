//! What a zenoh participant can put in front of the node: the publish
//! attachment, a roster reply, another node's presence reply (merged into
//! the presence API's answers), key expressions and encoded key chunks.
//! Oracle: no panic, and what a roster or attachment decodes to encodes and
//! decodes back the same.
#![no_main]
use libfuzzer_sys::fuzz_target;
use prscd::fuzzing::occupancy::{self, NodePresence};
use prscd_wire::mesh::{keys, membership, Origin};

fuzz_target!(|data: &[u8]| {
    let origin = Origin::decode(data);
    assert_eq!(Origin::decode(&origin.encode()), origin);

    if let Ok(roster) = membership::decode_roster(data) {
        let again = membership::encode_roster(roster.iter().map(|m| (m.sid, m.client_id.as_str())));
        assert_eq!(membership::decode_roster(&again), Ok(roster));
    }

    if let Ok(node) = serde_json::from_slice::<NodePresence>(data) {
        let merged = occupancy::merge(std::slice::from_ref(&node));
        let _ = occupancy::occupancy(&merged);
    }
    let _ = occupancy::state_json(data);

    if let Ok(key) = std::str::from_utf8(data) {
        let _ = keys::parse_members_key(key);
        let _ = keys::parse_node_token(key);
        let _ = keys::concrete_channel(key);
        if let Some(chunk) = keys::decode_chunk(key) {
            assert_eq!(keys::decode_chunk(&keys::encode_chunk(&chunk)), Some(chunk));
        }
    }
});
