//! Presence per user across tabs and nodes, on real nodes meshed over
//! zenoh: a user with two connections (on one node or on two) goes offline
//! once, with its last one; a reload within `PRESENCE_GRACE_MS` is no leave;
//! a killed node's users leave at once unless connected elsewhere.
//!
//! "Nothing was sent" is checked without waiting for silence: after the
//! nodes have processed a leave (their counters say so), a marker message
//! is sent, and everything a watcher got before the marker is inspected.

mod common;

use std::time::{Duration, Instant};

use common::*;
use rmpv::Value;

async fn wait_meshed(nodes: &[Node]) {
    for node in nodes {
        node.wait_counter(&["mesh", "peers"], nodes.len() as u64 - 1)
            .await;
        node.wait_mesh_state("connected").await;
    }
}

/// Waits until `node` has exactly `n` connections.
async fn wait_peers(node: &Node, n: u64) {
    let deadline = Instant::now() + WAIT;
    loop {
        let got = node.counter(&["peers"]).await;
        if got == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "peers stuck at {got}, wanted {n}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends a data message `tag` from `from` into `channel` and returns what
/// `watcher` received before it.
async fn before_marker(
    from: &mut Client,
    watcher: &mut Client,
    channel: &str,
    tag: &str,
) -> Vec<Value> {
    from.send(&data(channel, tag, "{}")).await;
    let mut got = Vec::new();
    loop {
        let v = watcher.recv().await;
        if field(&v, "t") == Some("data") && event(&v).as_deref() == Some(tag) {
            return got;
        }
        got.push(v);
    }
}

/// [`before_marker`] from `a` to `b`, then from `b` to `a`: what `b` got, what `a` got.
async fn both_ways(a: &mut Client, b: &mut Client, tag: &str) -> [Vec<Value>; 2] {
    let to_b = before_marker(a, b, "room", tag).await;
    let to_a = before_marker(b, a, "room", tag).await;
    [to_b, to_a]
}

/// The `event` of a data message.
fn event(v: &Value) -> Option<String> {
    let pl = bin(v, "pl")?;
    let inner = rmpv::decode::read_value(&mut &pl[..]).ok()?;
    field(&inner, "event").map(str::to_owned)
}

fn offlines_of<'a>(msgs: &'a [Value], user: &str) -> Vec<&'a Value> {
    msgs.iter()
        .filter(|v| field(v, "op") == Some("peer_offline") && field(v, "p") == Some(user))
        .collect()
}

fn onlines_of<'a>(msgs: &'a [Value], user: &str) -> Vec<&'a Value> {
    msgs.iter()
        .filter(|v| field(v, "op") == Some("peer_online") && field(v, "p") == Some(user))
        .collect()
}

/// Joins `channel` as the published client does: the join, then after its
/// ack `peer_online` and the client's state.
async fn join_like_the_client(c: &mut Client, id: &str, channel: &str) {
    c.join(channel).await;
    c.send(&control("peer_online", channel, None)).await;
    c.send(&control("peer_state", channel, Some(state(id))))
        .await;
}

/// Receives until `c` has a `peer_state` from each of `senders`; panics
/// after [`WAIT`] or if the connection ends.
async fn wait_states_from(c: &mut Client, senders: &[&str]) {
    let mut missing: Vec<&str> = senders.to_vec();
    let deadline = Instant::now() + WAIT;
    while !missing.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        match c.next_within(left).await {
            Next::Msg(raw) => {
                let v = decode(&raw);
                if field(&v, "op") == Some("peer_state") {
                    missing.retain(|s| field(&v, "p") != Some(*s));
                }
            }
            Next::Quiet => panic!("no state from {missing:?} within {WAIT:?}"),
            Next::Closed => panic!("connection ended waiting for states of {missing:?}"),
        }
    }
}

/// A user's second, third and fourth connection (on the same node, on
/// another node following the channel, and on a node where the channel is
/// new) are not announced again: the members got one `peer_online` for the
/// user, and every new connection still learns every member's state.
#[tokio::test]
async fn a_user_is_announced_once_whatever_its_connections() {
    let nodes = mesh_of(&["eu", "us", "ap"], &[]);
    wait_meshed(&nodes).await;
    let mut bob = nodes[0].ws(KEY1, "bob").await;
    let mut carol = nodes[1].ws(KEY1, "carol").await;
    join_like_the_client(&mut bob, "bob", "room").await;
    join_like_the_client(&mut carol, "carol", "room").await;
    nodes[0].wait_remote_members(1).await;
    nodes[1].wait_remote_members(1).await;
    // Joined at once, each node may have published before it knew the
    // other's subscription: send the states again, as the published client
    // does when the other's peer_online reaches it.
    for (c, id) in [(&mut bob, "bob"), (&mut carol, "carol")] {
        c.send(&control("peer_state", "room", Some(state(id))))
            .await;
    }
    wait_states_from(&mut bob, &["carol"]).await;
    wait_states_from(&mut carol, &["bob"]).await;

    let mut tab1 = nodes[0].ws(KEY1, "alice").await;
    join_like_the_client(&mut tab1, "alice", "room").await;
    wait_states_from(&mut tab1, &["bob", "carol"]).await;
    let mut tab2 = nodes[0].wt(KEY1, "alice", false).await;
    join_like_the_client(&mut tab2, "alice", "room").await;
    wait_states_from(&mut tab2, &["bob", "carol"]).await;
    nodes[1].wait_remote_members(3).await;
    let mut tab3 = nodes[1].ws(KEY1, "alice").await;
    join_like_the_client(&mut tab3, "alice", "room").await;
    wait_states_from(&mut tab3, &["bob", "carol"]).await;
    // ap has no member in the room: it learns the states from the nodes
    // that answer for their members.
    let mut tab4 = nodes[2].ws(KEY1, "alice").await;
    join_like_the_client(&mut tab4, "alice", "room").await;
    wait_states_from(&mut tab4, &["bob", "carol"]).await;

    nodes[0].wait_remote_members(3).await;
    nodes[1].wait_remote_members(4).await;
    for got in both_ways(&mut bob, &mut carol, "four-tabs").await {
        assert_eq!(
            onlines_of(&got, "alice").len(),
            1,
            "one peer_online: {got:?}"
        );
    }
}

#[tokio::test]
async fn two_tabs_on_one_node_go_offline_with_the_last() {
    let nodes = mesh_of(&["eu", "us"], &[]);
    wait_meshed(&nodes).await;
    let mut tab1 = nodes[0].ws(KEY1, "alice").await;
    let mut tab2 = nodes[0].wt(KEY1, "alice", false).await;
    let mut carol = nodes[0].ws(KEY1, "carol").await;
    let mut bob = nodes[1].ws(KEY1, "bob").await;
    for c in [&mut tab1, &mut tab2, &mut carol, &mut bob] {
        c.join("room").await;
    }
    nodes[1].wait_remote_members(3).await;
    nodes[0].wait_remote_members(1).await;

    tab1.close().await;
    wait_peers(&nodes[0], 2).await;
    nodes[1].wait_remote_members(2).await;
    let to_bob = before_marker(&mut tab2, &mut bob, "room", "one-tab-left").await;
    let to_carol = before_marker(&mut bob, &mut carol, "room", "one-tab-left").await;
    for got in [to_bob, to_carol] {
        assert_eq!(offlines_of(&got, "alice"), Vec::<&Value>::new());
    }

    tab2.close().await;
    wait_peers(&nodes[0], 1).await;
    nodes[1].wait_remote_members(1).await;
    for got in both_ways(&mut carol, &mut bob, "both-tabs-left").await {
        let off = offlines_of(&got, "alice");
        assert_eq!(off.len(), 1, "one peer_offline: {got:?}");
        assert_eq!(field(off[0], "mesh"), Some("eu"));
    }
}

#[tokio::test]
async fn two_tabs_on_two_nodes_go_offline_with_the_last() {
    let nodes = mesh_of(&["eu", "us"], &[]);
    wait_meshed(&nodes).await;
    let mut at_eu = nodes[0].ws(KEY1, "alice").await;
    let mut at_us = nodes[1].ws(KEY1, "alice").await;
    let mut bob = nodes[0].ws(KEY1, "bob").await;
    let mut carol = nodes[1].wt(KEY1, "carol", true).await;
    for c in [&mut at_eu, &mut at_us, &mut bob, &mut carol] {
        c.join("room").await;
    }
    nodes[0].wait_remote_members(2).await;
    nodes[1].wait_remote_members(2).await;

    at_eu.close().await;
    wait_peers(&nodes[0], 1).await;
    nodes[1].wait_remote_members(1).await;
    for got in both_ways(&mut carol, &mut bob, "eu-tab-left").await {
        assert_eq!(offlines_of(&got, "alice"), Vec::<&Value>::new());
    }

    at_us.close().await;
    wait_peers(&nodes[1], 1).await;
    nodes[0].wait_remote_members(1).await;
    for got in both_ways(&mut carol, &mut bob, "us-tab-left").await {
        let off = offlines_of(&got, "alice");
        assert_eq!(off.len(), 1, "one peer_offline: {got:?}");
        assert_eq!(field(off[0], "mesh"), Some("us"));
    }
}

#[tokio::test]
async fn a_reload_within_the_grace_is_no_leave_even_onto_another_node() {
    let nodes = mesh_of(&["eu", "us"], &[("PRESENCE_GRACE_MS", "5000")]);
    wait_meshed(&nodes).await;
    let mut alice = nodes[0].ws(KEY1, "alice").await;
    let mut bob = nodes[0].ws(KEY1, "bob").await;
    let mut carol = nodes[1].ws(KEY1, "carol").await;
    for c in [&mut alice, &mut bob, &mut carol] {
        c.join("room").await;
    }
    nodes[1].wait_remote_members(2).await;

    // The page reloads and its new connection lands on the other node,
    // once us has heard the old one leave (else it is just a second tab).
    alice.close().await;
    nodes[1].wait_remote_members(1).await;
    let mut reloaded = nodes[1].ws(KEY1, "alice").await;
    reloaded.join("room").await;
    for node in &nodes {
        node.wait_log("presence: user back within the grace period")
            .await;
    }

    // It leaves for good: one peer_offline, a grace period later, and only
    // one (a leave of the first connection would have made two).
    let left = Instant::now();
    reloaded.close().await;
    for watcher in [&mut bob, &mut carol] {
        let off = watcher.recv_op_within("peer_offline", WAIT * 3).await;
        assert_eq!(field(&off, "p"), Some("alice"));
        assert_eq!(field(&off, "mesh"), Some("us"));
        assert!(
            left.elapsed() >= Duration::from_millis(3000),
            "after the grace"
        );
    }
    for got in both_ways(&mut carol, &mut bob, "after").await {
        assert_eq!(offlines_of(&got, "alice"), Vec::<&Value>::new(), "once");
    }
}

#[tokio::test]
async fn a_killed_nodes_users_leave_at_once_unless_connected_elsewhere() {
    // A long grace, which a node's death must not wait for.
    let mut nodes = mesh_of(&["eu", "us", "ap"], &[("PRESENCE_GRACE_MS", "10000")]);
    wait_meshed(&nodes).await;
    let mut alice_eu = nodes[0].ws(KEY1, "alice").await;
    let mut carol = nodes[0].ws(KEY1, "carol").await;
    let mut alice_us = nodes[1].ws(KEY1, "alice").await;
    let mut bob = nodes[2].ws(KEY1, "bob").await;
    for c in [&mut alice_eu, &mut carol, &mut alice_us, &mut bob] {
        c.join("room").await;
    }
    nodes[2].wait_remote_members(3).await;
    nodes[1].wait_remote_members(3).await;

    let killed = Instant::now();
    nodes[0].kill9();
    let off = bob
        .recv_op_within("peer_offline", Duration::from_secs(3))
        .await;
    assert_eq!(
        (field(&off, "p"), field(&off, "mesh")),
        (Some("carol"), Some("eu"))
    );
    println!(
        "node death: carol offline after {} ms",
        killed.elapsed().as_millis()
    );
    nodes[2].wait_remote_members(1).await;
    let got = before_marker(&mut alice_us, &mut bob, "room", "alice-still-on-us").await;
    assert_eq!(offlines_of(&got, "alice"), Vec::<&Value>::new());
    drop(alice_eu);
    drop(carol);
}
