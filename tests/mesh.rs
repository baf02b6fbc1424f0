//! Several real nodes meshed over real zenoh sessions (peer to peer on
//! loopback): shared channels, presence across nodes, node death, restart,
//! partition and heal, app isolation, and TLS between nodes.

mod common;

use std::time::{Duration, Instant};

use common::*;
use rmpv::Value;

const QUIET: Duration = Duration::from_millis(400);

/// A payload carrying a sequence number, to check order and duplicates.
fn numbered(channel: &str, n: u32) -> Vec<u8> {
    msg(vec![
        ("t", Value::from("data")),
        ("c", Value::from(channel)),
        ("pl", Value::Binary(n.to_be_bytes().to_vec())),
    ])
}

fn number(v: &Value) -> u32 {
    u32::from_be_bytes(bin(v, "pl").expect("pl").try_into().expect("4 bytes"))
}

async fn wait_meshed(nodes: &[Node]) {
    for node in nodes {
        node.wait_counter(&["mesh", "peers"], nodes.len() as u64 - 1)
            .await;
        node.wait_mesh_state("connected").await;
    }
}

#[tokio::test]
async fn three_nodes_share_a_channel_in_order_without_duplicates() {
    let nodes = mesh_of(
        &["eu", "us", "ap"],
        &[("PEER_MSG_RATE", "0"), ("PEER_BYTE_RATE", "0")],
    );
    wait_meshed(&nodes).await;
    let mut a = nodes[0].connect(Via::Ws, KEY1, "alice").await;
    let mut b = nodes[1].connect(Via::Datagram, KEY1, "bob").await;
    let mut c = nodes[2].connect(Via::Stream, KEY1, "carol").await;
    for (client, mesh) in [(&mut a, "eu"), (&mut b, "us"), (&mut c, "ap")] {
        let ack = client.join("room").await;
        assert_eq!(field(&ack, "mesh"), Some(mesh));
    }
    for node in &nodes {
        node.wait_remote_members(2).await;
    }

    // Presence: each peer's online and state reach the two others, with the
    // sender's id and the MESH_ID of the node it entered on.
    let senders = [("alice", "eu"), ("bob", "us"), ("carol", "ap")];
    for (i, (name, mesh)) in senders.into_iter().enumerate() {
        let st = state(name);
        let [x, y, z] = [&mut a, &mut b, &mut c];
        let (sender, others): (&mut Client, [&mut Client; 2]) = match i {
            0 => (x, [y, z]),
            1 => (y, [x, z]),
            _ => (z, [x, y]),
        };
        sender.send(&control("peer_online", "room", None)).await;
        sender
            .send(&control("peer_state", "room", Some(st.clone())))
            .await;
        for other in others {
            let online = other.recv_op("peer_online").await;
            assert_eq!(
                (field(&online, "p"), field(&online, "mesh")),
                (Some(name), Some(mesh))
            );
            let got = other.recv_op("peer_state").await;
            assert_eq!(field(&got, "p"), Some(name));
            assert_eq!(
                bin(&got, "pl"),
                Some(st.as_slice()),
                "payload byte for byte"
            );
            assert!(!has_key(&got, "sid") && !has_key(&got, "app"));
        }
        sender.expect_silence(QUIET).await;
    }

    // Broadcasts from every node reach every other node, in order, once.
    let n = 100;
    for (i, sender) in [&mut a, &mut b, &mut c].into_iter().enumerate() {
        for k in 0..n {
            sender.send(&numbered("room", i as u32 * 1000 + k)).await;
            if k % 20 == 0 {
                tokio::time::sleep(Duration::from_millis(2)).await; // datagram receiver on loopback
            }
        }
    }
    for (me, client) in [&mut a, &mut b, &mut c].into_iter().enumerate() {
        let mut next = [0u32; 3];
        for _ in 0..2 * n {
            let got = client.recv_op("data").await;
            let num = number(&got);
            let from = (num / 1000) as usize;
            assert_ne!(from, me, "echo to the sender");
            assert_eq!(
                num % 1000,
                next[from],
                "order from sender {from} at receiver {me}"
            );
            assert_eq!(field(&got, "p"), Some(senders[from].0));
            assert_eq!(field(&got, "mesh"), Some(senders[from].1));
            next[from] += 1;
        }
        client.expect_silence(QUIET).await;
    }

    // A peer that leaves shows up offline everywhere, once.
    c.close().await;
    for other in [&mut a, &mut b] {
        let off = other.recv_op("peer_offline").await;
        assert_eq!(
            (field(&off, "p"), field(&off, "mesh")),
            (Some("carol"), Some("ap"))
        );
        other.expect_silence(QUIET).await;
    }
}

#[tokio::test]
async fn node_death_yields_peer_offline_elsewhere_and_a_restart_leaves_no_phantom() {
    let mut nodes = mesh_of(&["eu", "us", "ap"], &[]);
    wait_meshed(&nodes).await;
    let mut a = nodes[0].ws(KEY1, "alice").await;
    let mut b = nodes[1].ws(KEY1, "bob").await;
    let mut b2 = nodes[1].wt(KEY1, "bob-tab2", false).await;
    let mut c = nodes[2].ws(KEY1, "carol").await;
    for client in [&mut a, &mut b, &mut b2, &mut c] {
        client.join("room").await;
    }
    for node in &nodes {
        node.wait_remote_members(2 + u64::from(node.port != nodes[1].port))
            .await;
    }
    let killed = Instant::now();
    nodes[1].kill9();
    for (name, watcher) in [("alice@eu", &mut a), ("carol@ap", &mut c)] {
        let mut gone = Vec::new();
        for _ in 0..2 {
            let off = watcher.recv_op("peer_offline").await;
            assert_eq!(field(&off, "mesh"), Some("us"));
            gone.push(field(&off, "p").unwrap().to_owned());
        }
        let elapsed = killed.elapsed();
        gone.sort();
        assert_eq!(gone, ["bob", "bob-tab2"]);
        println!(
            "node death (kill -9): {name} got both peer_offline after {} ms",
            elapsed.as_millis()
        );
        assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
        watcher.expect_silence(QUIET).await;
    }

    // The node comes back; bob reconnects to it. Nothing stale reappears,
    // and bob's new presence arrives exactly once.
    nodes[1] = nodes[1].restart();
    nodes[1].wait_counter(&["mesh", "peers"], 2).await;
    a.expect_silence(Duration::from_millis(800)).await;
    let mut bob = nodes[1].ws(KEY1, "bob").await;
    bob.join("room").await;
    nodes[0].wait_remote_members(2).await;
    bob.send(&control("peer_online", "room", None)).await;
    for watcher in [&mut a, &mut c] {
        let online = watcher.recv_op("peer_online").await;
        assert_eq!(
            (field(&online, "p"), field(&online, "mesh")),
            (Some("bob"), Some("us"))
        );
        watcher.expect_silence(QUIET).await;
    }
    bob.close().await;
    for watcher in [&mut a, &mut c] {
        assert_eq!(
            field(&watcher.recv_op("peer_offline").await, "p"),
            Some("bob")
        );
        watcher.expect_silence(QUIET).await;
    }
}

#[tokio::test]
async fn partition_yields_offline_within_the_lease_and_heal_restores_presence_once() {
    // eu listens; us reaches it only through a relay the test can cut.
    let port = free_port();
    let eu = Node::start_with(&[
        SILENT_CLIENTS,
        ("MESH_ID", "eu"),
        ("ZENOH_LISTEN", &format!("tcp/127.0.0.1:{port}")),
    ]);
    let relay = TcpRelay::start(([127, 0, 0, 1], port).into()).await;
    let us = Node::start_with(&[
        SILENT_CLIENTS,
        ("MESH_ID", "us"),
        ("ZENOH_CONNECT", &format!("tcp/127.0.0.1:{}", relay.port)),
    ]);
    let nodes = [eu, us];
    wait_meshed(&nodes).await;
    let (mut a, mut b) = alice_and_bob_in_room(&nodes).await;
    let bob_state = state("bob");
    b.send(&control("peer_state", "room", Some(bob_state.clone())))
        .await;
    assert_eq!(
        bin(&a.recv_op("peer_state").await, "pl"),
        Some(bob_state.as_slice())
    );

    // A silent cut: no FIN, no RST. The 2 s lease notices.
    let cut = Instant::now();
    relay.cut();
    let off = a.recv_op("peer_offline").await;
    assert_eq!(field(&off, "p"), Some("bob"));
    let a_after = cut.elapsed();
    assert_eq!(field(&b.recv_op("peer_offline").await, "p"), Some("alice"));
    let b_after = cut.elapsed();
    println!(
        "partition: peer_offline after {} ms (eu side) and {} ms (us side)",
        a_after.as_millis(),
        b_after.as_millis()
    );
    assert!(a_after < Duration::from_secs(3) && b_after < Duration::from_secs(3));
    nodes[0].wait_mesh_state("alone").await;
    nodes[1].wait_mesh_state("alone").await;
    // Each node keeps serving its own peers meanwhile.
    let mut a2 = nodes[0].ws(KEY1, "alice-2").await;
    a2.join("room").await;
    a2.send(&data("room", "local", "{}")).await;
    assert_eq!(field(&a.recv_op("data").await, "p"), Some("alice-2"));
    a2.close().await;
    assert_eq!(
        field(&a.recv_op("peer_offline").await, "p"),
        Some("alice-2")
    );

    // Heal: zenoh reconnects by itself; each side sees the other again,
    // with its last state, exactly once.
    relay.heal();
    let healed = Instant::now();
    let online = tokio::time::timeout(
        Duration::from_secs(15),
        a.recv_op_within("peer_online", Duration::from_secs(15)),
    )
    .await
    .expect("bob back after the heal");
    println!(
        "heal: bob back on eu after {} ms",
        healed.elapsed().as_millis()
    );
    assert_eq!(
        (field(&online, "p"), field(&online, "mesh")),
        (Some("bob"), Some("us"))
    );
    let st = a.recv_op("peer_state").await;
    assert_eq!(bin(&st, "pl"), Some(bob_state.as_slice()));
    assert_eq!(field(&b.recv_op("peer_online").await, "p"), Some("alice"));
    a.expect_silence(QUIET).await;
    b.expect_silence(QUIET).await;
    // And traffic flows again.
    b.send(&data("room", "back", "{}")).await;
    assert_eq!(field(&a.recv_op("data").await, "p"), Some("bob"));
}

#[tokio::test]
async fn apps_stay_isolated_across_nodes() {
    let nodes = mesh_of(&["eu", "us"], &[]);
    wait_meshed(&nodes).await;
    let mut a1 = nodes[0].ws(KEY1, "a1").await;
    let mut b1 = nodes[1].ws(KEY1, "b1").await;
    let mut b2 = nodes[1].ws(KEY2, "b2").await;
    for c in [&mut a1, &mut b1, &mut b2] {
        c.join("same-channel").await;
    }
    nodes[0].wait_remote_members(1).await;
    a1.send(&data("same-channel", "e", "{}")).await;
    assert_eq!(field(&b1.recv().await, "p"), Some("a1"));
    b2.expect_silence(QUIET).await;
    b2.send(&data("same-channel", "e", "{}")).await;
    a1.expect_silence(QUIET).await;
    b1.expect_silence(QUIET).await;
}

/// A node watches every membership of an app it serves (one watch per app,
/// not per channel): the memberships of channels it has no member in are
/// ignored, and joining one of those later picks up who is already there.
#[tokio::test]
async fn memberships_of_other_channels_are_ignored_until_joined() {
    let nodes = mesh_of(&["eu", "us"], &[]);
    wait_meshed(&nodes).await;
    let mut alice = nodes[0].ws(KEY1, "alice").await;
    let mut bob = nodes[1].ws(KEY1, "bob").await;
    alice.join("room-a").await;
    bob.join("room-b").await;
    // Each node has heard the other's token by now and had its rosters
    // (room-a or room-b), yet neither counts a remote member.
    tokio::time::sleep(QUIET).await;
    for node in &nodes {
        assert_eq!(node.counter(&["mesh", "remote_members"]).await, 0);
    }
    let mut carol = nodes[1].ws(KEY1, "carol").await;
    carol.join("room-a").await;
    nodes[1].wait_remote_members(1).await; // alice, already there
    nodes[0].wait_remote_members(1).await; // carol
    alice.send(&data("room-a", "hi", "{}")).await;
    assert_eq!(field(&carol.recv_op("data").await, "p"), Some("alice"));
    bob.expect_silence(QUIET).await;
    // Bob leaving room-b is nothing to eu.
    drop(bob);
    alice.expect_silence(QUIET).await;
    nodes[0].wait_remote_members(1).await;
}

#[tokio::test]
async fn a_remote_member_never_heard_from_is_announced_after_the_presence_check() {
    let nodes = mesh_of(&["eu", "us"], &[("MESH_PRESENCE_CHECK_MS", "1000")]);
    wait_meshed(&nodes).await;
    // alice announces herself while nobody on us listens: that is lost, as
    // it is when two nodes subscribe to a channel at the same moment.
    let mut a = nodes[0].ws(KEY1, "alice").await;
    a.join("room").await;
    a.send(&control("peer_online", "room", None)).await;
    a.send(&control("peer_state", "room", Some(state("alice"))))
        .await;
    nodes[0].wait_counter(&["mesh", "published"], 2).await;
    assert_eq!(nodes[0].counter(&["mesh", "published"]).await, 2);
    let mut b = nodes[1].ws(KEY1, "bob").await;
    b.join("room").await;
    let joined = Instant::now();
    b.send(&control("peer_online", "room", None)).await;
    // eu heard bob: alice gets his real peer_online, and nothing made up.
    assert_eq!(field(&a.recv_op("peer_online").await, "p"), Some("bob"));
    // us never heard alice: after the check, bob is told she is online, so
    // that his browser answers with its state.
    let online = b
        .recv_op_within("peer_online", Duration::from_secs(5))
        .await;
    assert_eq!(
        (field(&online, "p"), field(&online, "mesh")),
        (Some("alice"), Some("eu"))
    );
    let after = joined.elapsed();
    println!(
        "presence check: silent remote member announced after {} ms",
        after.as_millis()
    );
    assert!(after >= Duration::from_millis(900), "{after:?}");
    b.send(&control("peer_state", "room", Some(state("bob"))))
        .await;
    assert_eq!(
        bin(&a.recv_op("peer_state").await, "pl"),
        Some(state("bob").as_slice())
    );
    a.expect_silence(Duration::from_millis(1500)).await;
    b.expect_silence(QUIET).await;
}

#[tokio::test]
async fn a_remote_member_first_heard_by_its_state_is_announced_at_once() {
    // Two nodes subscribed at once and one side's presence check fired
    // first: the first thing us hears of alice is her state (her answer to
    // that check). us's own check stands down once anything is heard, so us
    // must announce her right away, before her state: bob's browser then
    // answers with his, and alice learns of bob too.
    let nodes = mesh_of(&["eu", "us"], &[("MESH_PRESENCE_CHECK_MS", "10000")]);
    wait_meshed(&nodes).await;
    let (mut a, mut b) = alice_and_bob_in_room(&nodes).await;
    a.send(&control("peer_state", "room", Some(state("alice"))))
        .await;
    let online = decode(&b.recv_raw(WAIT).await.expect("bob hears of alice"));
    assert_eq!(
        (
            field(&online, "op"),
            field(&online, "p"),
            field(&online, "mesh")
        ),
        (Some("peer_online"), Some("alice"), Some("eu"))
    );
    let her_state = b.recv_op("peer_state").await;
    assert_eq!(bin(&her_state, "pl"), Some(state("alice").as_slice()));
    b.send(&control("peer_state", "room", Some(state("bob"))))
        .await;
    assert_eq!(
        bin(&a.recv_op("peer_state").await, "pl"),
        Some(state("bob").as_slice())
    );
    // Heard now, both ways: nothing more is made up.
    a.expect_silence(QUIET).await;
    b.expect_silence(QUIET).await;
}

/// Once a node counts another node's member, a message to the channel
/// reaches it: the member is learned from its node's `channel_join` or
/// roster, both sent after that node's subscription. Twenty fresh channels,
/// joined in both orders.
#[tokio::test]
async fn the_first_message_after_a_remote_member_is_known_arrives() {
    let nodes = mesh_of(&["eu", "us"], &[SILENT_CLIENTS]);
    wait_meshed(&nodes).await;
    for i in 0..20 {
        let room = format!("room-{i}");
        let mut a = nodes[0].ws(KEY1, &format!("alice-{i}")).await;
        let mut b = nodes[1].ws(KEY1, &format!("bob-{i}")).await;
        if i % 2 == 0 {
            a.join(&room).await;
            b.join(&room).await;
        } else {
            b.join(&room).await;
            a.join(&room).await;
        }
        nodes[0].wait_remote_members(1).await;
        a.send(&data(&room, "first", "{}")).await;
        let got = b.recv_op("data").await;
        assert_eq!(
            field(&got, "p"),
            Some(format!("alice-{i}").as_str()),
            "{room}"
        );
        a.close().await;
        b.close().await;
        for node in &nodes {
            node.wait_remote_members(0).await;
        }
    }
}

/// alice on `nodes[0]` and bob on `nodes[1]`, both in `room`, each node
/// knowing the other's member.
async fn alice_and_bob_in_room(nodes: &[Node]) -> (Client, Client) {
    let mut a = nodes[0].ws(KEY1, "alice").await;
    let mut b = nodes[1].ws(KEY1, "bob").await;
    a.join("room").await;
    b.join("room").await;
    nodes[0].wait_remote_members(1).await;
    nodes[1].wait_remote_members(1).await;
    (a, b)
}
