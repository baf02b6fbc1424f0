//! Who is where, mesh-wide, for the presence API: each node's snapshot of
//! its own users ([`NodePresence`], also the JSON the nodes exchange over
//! the mesh) and their merge into one answer; pure, unit-tested.
//!
//! Why per node and merged on demand: a node follows only the channels it
//! has members in, so no node holds the whole app; every node holds its own
//! users exactly. The node asked queries the others and merges, so every
//! node gives the same answer once the mesh has settled.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::presence::LocalUser;

/// One node's users of one app.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodePresence {
    pub mesh_id: String,
    pub channels: Vec<ChannelUsers>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChannelUsers {
    pub name: String,
    pub users: Vec<User>,
}

/// A user of a channel: `GET /v1/apps/{app}/channels/{channel}/users`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct User {
    pub id: String,
    /// Connections in the channel (0 while within its grace period).
    pub connections: usize,
    /// Its last `peer_state`, as JSON; `null` if it sent none.
    pub state: serde_json::Value,
}

/// A channel's occupancy: `GET /v1/apps/{app}/channels`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Channel {
    pub name: String,
    pub users: usize,
    pub connections: usize,
}

impl NodePresence {
    /// From the hub's view of its own users ([`crate::hub::Hub::hosted`]).
    pub fn from_hosted(mesh_id: &str, hosted: Vec<(std::sync::Arc<str>, Vec<LocalUser>)>) -> Self {
        let channels = hosted
            .into_iter()
            .map(|(name, users)| ChannelUsers {
                name: name.to_string(),
                users: users
                    .into_iter()
                    .map(|u| User {
                        id: u.id.to_string(),
                        connections: u.connections,
                        state: u
                            .state
                            .as_deref()
                            .map_or(serde_json::Value::Null, state_json),
                    })
                    .collect(),
            })
            .collect();
        NodePresence {
            mesh_id: mesh_id.to_owned(),
            channels,
        }
    }
}

/// A `peer_state`'s `pl` (a msgpack bin holding the state's msgpack, or
/// the state itself) as JSON; `null` if it is neither.
pub fn state_json(pl: &[u8]) -> serde_json::Value {
    let inner = match rmpv::decode::read_value(&mut &pl[..]) {
        Ok(rmpv::Value::Binary(inner)) => inner,
        Ok(_) => pl.to_vec(),
        Err(_) => return serde_json::Value::Null,
    };
    rmp_serde::from_slice(&inner).unwrap_or(serde_json::Value::Null)
}

/// Every node's users of each channel, merged per user (connections add
/// up; the state is the one of the node with most of its connections, ties
/// broken by MESH_ID, so every node picks the same), sorted by channel and id.
pub fn merge(nodes: &[NodePresence]) -> BTreeMap<String, Vec<User>> {
    let mut nodes: Vec<&NodePresence> = nodes.iter().collect();
    nodes.sort_by(|a, b| a.mesh_id.cmp(&b.mesh_id));
    let mut channels: BTreeMap<String, BTreeMap<String, (User, usize)>> = BTreeMap::new();
    for node in nodes {
        for ch in &node.channels {
            let users = channels.entry(ch.name.clone()).or_default();
            for u in &ch.users {
                match users.get_mut(&u.id) {
                    None => {
                        users.insert(u.id.clone(), (u.clone(), u.connections));
                    }
                    Some((merged, best)) => {
                        merged.connections += u.connections;
                        if u.connections > *best && !u.state.is_null() || merged.state.is_null() {
                            merged.state = u.state.clone();
                            *best = u.connections;
                        }
                    }
                }
            }
        }
    }
    channels
        .into_iter()
        .map(|(name, users)| (name, users.into_values().map(|(u, _)| u).collect()))
        .collect()
}

/// The occupancy of every channel, from [`merge`].
pub fn occupancy(merged: &BTreeMap<String, Vec<User>>) -> Vec<Channel> {
    merged
        .iter()
        .map(|(name, users)| Channel {
            name: name.clone(),
            users: users.len(),
            connections: users.iter().map(|u| u.connections).sum(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// (id, connections, state) of one user.
    type Row<'a> = (&'a str, usize, serde_json::Value);

    fn node(mesh_id: &str, channels: &[(&str, &[Row<'_>])]) -> NodePresence {
        NodePresence {
            mesh_id: mesh_id.into(),
            channels: channels
                .iter()
                .map(|(name, users)| ChannelUsers {
                    name: (*name).into(),
                    users: users
                        .iter()
                        .map(|(id, n, state)| User {
                            id: (*id).into(),
                            connections: *n,
                            state: state.clone(),
                        })
                        .collect(),
                })
                .collect(),
        }
    }

    #[test]
    fn a_user_on_two_nodes_is_one_user_with_its_connections_added() {
        let eu = node(
            "eu",
            &[(
                "r",
                &[("alice", 1, json!({"n": "eu"})), ("bob", 1, json!(null))],
            )],
        );
        let us = node(
            "us",
            &[
                ("r", &[("alice", 2, json!({"n": "us"}))]),
                ("z", &[("carol", 1, json!(null))]),
            ],
        );
        let merged = merge(&[us.clone(), eu.clone()]);
        assert_eq!(merged, merge(&[eu, us]), "the same from every node");
        let r = &merged["r"];
        assert_eq!(r.len(), 2);
        assert_eq!((r[0].id.as_str(), r[0].connections), ("alice", 3));
        assert_eq!(
            r[0].state,
            json!({"n": "us"}),
            "the node with most connections"
        );
        assert_eq!(
            occupancy(&merged),
            [
                Channel {
                    name: "r".into(),
                    users: 2,
                    connections: 4
                },
                Channel {
                    name: "z".into(),
                    users: 1,
                    connections: 1
                },
            ]
        );
    }

    #[test]
    fn states_decode_from_the_wire_or_are_null() {
        let state = rmp_serde::to_vec_named(&json!({"id": "a", "x": [1, 2]})).unwrap();
        let mut pl = Vec::new();
        rmpv::encode::write_value(&mut pl, &rmpv::Value::Binary(state.clone())).unwrap();
        assert_eq!(state_json(&pl), json!({"id": "a", "x": [1, 2]}));
        assert_eq!(state_json(&state), json!({"id": "a", "x": [1, 2]}));
        assert_eq!(state_json(b"\xc1"), serde_json::Value::Null);
    }

    #[test]
    fn the_node_snapshot_is_json_both_ways() {
        let eu = node("eu", &[("r", &[("alice", 1, json!({"n": 1}))])]);
        let text = serde_json::to_string(&eu).unwrap();
        assert_eq!(serde_json::from_str::<NodePresence>(&text).unwrap(), eu);
    }
}
