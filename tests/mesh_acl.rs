//! Issue #24 on real infrastructure: the shipped TLS configs with their
//! default-deny ACLs (`mesh/regions/tls`), on real `zenohd` routers, real
//! prscd nodes and the Python zenoh client (`tests/common/zenoh_probe.py`)
//! with certificates from `mesh/certs.sh`: a backend of one app can neither
//! read nor write another, nor forge presence in its own; a certificate
//! from a foreign CA and a plaintext client get no link; in the 3-router
//! triangle, killing a router keeps the other two regions talking.
//!
//! Needs zenohd and the Python venv (`mesh/install-zenohd.sh`,
//! `mesh/install-python.sh`); without them the tests say so and pass,
//! unless `PRSCD_REQUIRE_MESH_TOOLS` is set, as `scripts/test` and CI do.

mod common;

use std::time::{Duration, Instant};

use common::zmesh::{certs, python, relayed, zenohd, Probe, Shipped};
use common::*;
use prscd_wire::mesh::{keys, Origin};

const QUIET: Duration = Duration::from_millis(400);

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Everything a client gets within `within`.
async fn collect(client: &mut Client, within: Duration) -> Vec<rmpv::Value> {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    while let Some(raw) = client
        .recv_raw(deadline.saturating_duration_since(Instant::now()))
        .await
    {
        got.push(decode(&raw));
    }
    got
}

fn from<'a>(got: &'a [rmpv::Value], peer: &str) -> Vec<&'a rmpv::Value> {
    got.iter().filter(|v| field(v, "p") == Some(peer)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_of_one_app_can_neither_read_nor_write_another_nor_forge_presence() {
    let (Some(zenohd), Some(py)) = (zenohd(), python()) else {
        return;
    };
    let mesh = Shipped::new("acl-backend");
    let _routers = [mesh.router(&zenohd, 0), mesh.router(&zenohd, 1)];
    let (eu, us) = (mesh.node(0), mesh.node(1));
    for node in [&eu, &us] {
        node.wait_mesh_state("connected").await;
    }
    // dev (pk1) and app2 (pk2) members on both nodes.
    let mut alice = eu.ws(KEY1, "alice").await;
    let mut carol = eu.ws(KEY2, "carol").await;
    let mut bob = us.ws(KEY1, "bob").await;
    let mut dave = us.ws(KEY2, "dave").await;
    for c in [&mut alice, &mut carol, &mut bob, &mut dave] {
        c.join("room").await;
    }
    eu.wait_remote_members(2).await;
    us.wait_remote_members(2).await;

    let sid = |sid| {
        Origin {
            sid: Some(sid),
            sent_us: 0,
            traceparent: None,
            stamp: None,
        }
        .encode()
    };
    let (dev, app2) = (
        keys::channel_key("dev", "room"),
        keys::channel_key("app2", "room"),
    );
    let put = |key: &str, body: Vec<u8>, attachment: Option<Vec<u8>>| {
        vec![
            "--put".to_owned(),
            key.to_owned(),
            hex(&body),
            attachment.map_or("-".to_owned(), |a| hex(&a)),
        ]
    };
    let mut args: Vec<String> = Vec::new();
    for key in [&dev, &app2] {
        args.extend(["--sub".to_owned(), key.clone()]);
    }
    for key in [
        keys::members_of("dev", "room"),
        keys::members_of("app2", "room"),
    ] {
        args.extend(["--get".to_owned(), key]);
    }
    // A node token of its own, to make its joins a node's.
    args.extend(["--token".to_owned(), keys::node_token_key("dev", "rogue")]);
    args.extend(put(&dev, relayed("data", None, "backend-bot", None), None));
    args.extend(put(&app2, relayed("data", None, "backend-bot", None), None));
    args.extend(put(
        &dev,
        relayed("control", Some("channel_join"), "ghost", Some("rogue")),
        Some(sid(9)),
    ));
    args.extend(put(
        &dev,
        relayed("control", Some("peer_offline"), "alice", None),
        None,
    ));
    args.extend(["--seconds".to_owned(), "4".to_owned()]);
    let config = mesh.client_config(
        "backend-dev",
        &format!("tls/127.0.0.1:{}", mesh.ports[1]),
        Some((&mesh.certs, "backend-dev")),
    );
    let mut probe = Probe::start(&py, &config, &args);
    let open = probe
        .wait("open", Duration::from_secs(15))
        .unwrap_or_else(|| panic!("backend-dev did not connect: {:?}", probe.seen));
    assert_eq!(open["routers"], 1, "{open}");
    probe.wait("declared", Duration::from_secs(10)).unwrap();

    // Every member talks in its app while the backend does its worst.
    let talk = Instant::now();
    while talk.elapsed() < Duration::from_secs(3) {
        for c in [&mut alice, &mut carol, &mut bob, &mut dave] {
            c.send(&data("room", "hi", "{}")).await;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let got: Vec<_> = [
        collect(&mut alice, QUIET).await,
        collect(&mut carol, QUIET).await,
        collect(&mut bob, QUIET).await,
        collect(&mut dave, QUIET).await,
    ]
    .into();
    probe.finish(Duration::from_secs(15));

    // Its own app: it reads the traffic and the rosters, and writes.
    assert!(probe.count("sample", &dev) > 0, "{:?}", probe.seen);
    assert!(probe.count("reply", &keys::members_key("dev", "room", "eu")) > 0);
    assert!(
        !from(&got[0], "backend-bot").is_empty(),
        "alice: {:?}",
        got[0]
    );
    // Another app: nothing in, nothing out.
    assert_eq!(probe.count("sample", &app2), 0, "{:?}", probe.seen);
    assert_eq!(
        probe.count("reply", &keys::members_key("app2", "room", "eu"))
            + probe.count("reply", &keys::members_key("app2", "room", "us")),
        0
    );
    for (who, got) in [("carol", &got[1]), ("dave", &got[3])] {
        assert!(from(got, "backend-bot").is_empty(), "{who}: {got:?}");
    }
    // No presence forged: no ghost, alice still online for bob, and the
    // backend's node token never reached a node (the join needed it). The
    // forged leave names no node; a leave a node announces names it (zenohd
    // was seen to drop and restore both nodes' tokens within 20 ms about
    // once in five runs; the nodes then rightly say offline, then back).
    for got in &got {
        assert!(from(got, "ghost").is_empty(), "{got:?}");
        let forged_leave = |v: &rmpv::Value| {
            field(v, "op") == Some("peer_offline") && !matches!(field(v, "mesh"), Some("eu" | "us"))
        };
        assert!(!got.iter().any(forged_leave), "{got:?}");
    }
    assert!(!from(&got[2], "alice").is_empty(), "bob hears alice");
    assert_eq!(eu.counter(&["mesh", "remote_members"]).await, 2);
    assert_eq!(us.counter(&["mesh", "remote_members"]).await, 2);
    for node in [&eu, &us] {
        assert!(node.counter(&["dropped", "mesh_no_token"]).await > 0);
        assert!(node.counter(&["dropped", "mesh_forged"]).await > 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_ca_and_a_plaintext_client_get_no_link() {
    let (Some(zenohd), Some(py)) = (zenohd(), python()) else {
        return;
    };
    let mesh = Shipped::new("acl-foreign");
    // The right name, the wrong CA.
    let rogue = mesh.dir.join("rogue");
    certs(&["--rogue", rogue.to_str().unwrap(), "backend:dev:dev"]);
    let _router = mesh.router(&zenohd, 0);
    let eu = mesh.node(0);
    eu.wait_mesh_state("connected").await;
    let mut alice = eu.ws(KEY1, "alice").await;
    alice.join("room").await;

    let dev = keys::channel_key("dev", "room");
    let args: Vec<String> = [
        "--sub",
        &dev,
        "--put",
        &dev,
        &hex(&relayed("data", None, "intruder", None)),
        "-",
        "--seconds",
        "2",
    ]
    .map(str::to_owned)
    .into();
    let endpoint = format!("tls/127.0.0.1:{}", mesh.ports[0]);
    let foreign = mesh.client_config("foreign", &endpoint, Some((&rogue, "backend-dev")));
    let plaintext = mesh.client_config(
        "plaintext",
        &format!("tcp/127.0.0.1:{}", mesh.ports[0]),
        None,
    );
    // The legitimate certificate gets in, as a control.
    let good = mesh.client_config("good", &endpoint, Some((&mesh.certs, "backend-dev")));
    for (name, config, admitted) in [
        ("foreign CA", &foreign, false),
        ("plaintext", &plaintext, false),
        ("backend-dev", &good, true),
    ] {
        let mut probe = Probe::start(&py, config, &args);
        let outcome = loop {
            let v = probe
                .wait("open", Duration::from_secs(20))
                .or_else(|| probe.seen.last().cloned())
                .unwrap_or_else(|| panic!("{name}: no outcome"));
            if v["event"] == "open" || v["event"] == "open_failed" {
                break v;
            }
        };
        let linked = outcome["event"] == "open" && outcome["routers"] != 0;
        assert_eq!(linked, admitted, "{name}: {outcome}");
        if admitted {
            probe.finish(Duration::from_secs(10));
            assert!(!from(&collect(&mut alice, QUIET).await, "intruder").is_empty());
        } else {
            alice.expect_nothing_from("intruder", QUIET).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_the_router_triangle_killing_one_keeps_the_other_two_regions_talking() {
    let Some(zenohd) = zenohd() else { return };
    let mesh = Shipped::new("acl-triangle");
    let mut routers: Vec<_> = (0..3).map(|r| mesh.router(&zenohd, r)).collect();
    let nodes: Vec<_> = (0..3).map(|r| mesh.node(r)).collect();
    for node in &nodes {
        node.wait_mesh_state("connected").await;
    }
    let mut clients = Vec::new();
    for (node, id) in nodes.iter().zip(["alice", "bob", "carol"]) {
        let mut c = node.ws(KEY1, id).await;
        c.join("room").await;
        clients.push(c);
    }
    for node in &nodes {
        node.wait_remote_members(2).await;
    }
    // eu's router dialled both others: after it, only the us–ap link is left.
    routers[0].kill();
    let started = Instant::now();
    for c in &mut clients[1..] {
        let off = c
            .recv_op_within("peer_offline", Duration::from_secs(10))
            .await;
        assert_eq!(field(&off, "p"), Some("alice"));
    }
    println!(
        "triangle: router eu killed, alice offline in us and ap within {} ms",
        started.elapsed().as_millis()
    );
    for k in 0..5 {
        let (us_side, ap_side) = clients.split_at_mut(2);
        let (bob, carol) = (&mut us_side[1], &mut ap_side[0]);
        bob.send(&data("room", "from-us", &format!("{{\"k\":{k}}}")))
            .await;
        let got = carol.recv_op("data").await;
        assert_eq!(
            (field(&got, "p"), field(&got, "mesh")),
            (Some("bob"), Some("us"))
        );
        carol
            .send(&data("room", "from-ap", &format!("{{\"k\":{k}}}")))
            .await;
        let got = bob.recv_op("data").await;
        assert_eq!(
            (field(&got, "p"), field(&got, "mesh")),
            (Some("carol"), Some("ap"))
        );
    }
}

/// The plaintext loopback configs carry a default-deny ACL too, whose only
/// subject is the loopback interface: the mesh works through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plaintext_loopback_configs_let_the_mesh_through_their_acl() {
    let Some(zenohd) = zenohd() else { return };
    let mesh = Shipped::plaintext("acl-plaintext");
    let _routers = [mesh.router(&zenohd, 0), mesh.router(&zenohd, 1)];
    let (eu, us) = (mesh.node(0), mesh.node(1));
    for node in [&eu, &us] {
        node.wait_mesh_state("connected").await;
    }
    let mut alice = eu.ws(KEY1, "alice").await;
    let mut bob = us.ws(KEY1, "bob").await;
    alice.join("room").await;
    bob.join("room").await;
    eu.wait_remote_members(1).await;
    us.wait_remote_members(1).await;
    alice.send(&data("room", "hi", "{}")).await;
    let got = bob.recv_op("data").await;
    assert_eq!(
        (field(&got, "p"), field(&got, "mesh")),
        (Some("alice"), Some("eu"))
    );
}

/// The peer-to-peer TLS template's ACL lets two nodes of the mesh through,
/// and the node refuses a backend of app dev reading app2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_p2p_tls_config_meshes_nodes_through_its_acl() {
    let Some(py) = python() else { return };
    let mesh = Shipped::new("acl-p2p");
    let (port, us_port) = (free_port(), free_port());
    let listen = format!("tls/127.0.0.1:{port}");
    let us_listen = format!("tls/127.0.0.1:{us_port}");
    let node = |mesh_id: &str, env: &[(&str, &str)]| {
        let config = mesh.p2p_config(mesh_id);
        Node::start_with(&[
            SILENT_CLIENTS,
            ("MESH_ID", mesh_id),
            ("APPS", "pk1:dev,pk2:app2"),
            ("APP_TOKEN_SECRETS", ""),
            ("ZENOH_CONFIG", config.to_str().unwrap()),
            env[0],
            env[1],
        ])
    };
    // As the template says: every node listens, and dials the others.
    let eu = node(
        "eu",
        &[("ZENOH_LISTEN", &listen), ("ZENOH_CONNECT", &us_listen)],
    );
    let us = node(
        "us",
        &[("ZENOH_LISTEN", &us_listen), ("ZENOH_CONNECT", &listen)],
    );
    let mut alice = eu.ws(KEY1, "alice").await;
    let mut bob = us.ws(KEY1, "bob").await;
    let mut carol = us.ws(KEY2, "carol").await;
    alice.join("room").await;
    bob.join("room").await;
    carol.join("room").await;
    eu.wait_remote_members(1).await;
    alice.send(&data("room", "hi", "{}")).await;
    assert_eq!(field(&bob.recv_op("data").await, "p"), Some("alice"));

    let app2 = keys::channel_key("app2", "room");
    let args: Vec<String> = ["--sub", &app2, "--seconds", "2"].map(str::to_owned).into();
    let config = mesh.client_config("backend-dev", &listen, Some((&mesh.certs, "backend-dev")));
    let mut probe = Probe::start(&py, &config, &args);
    let open = probe.wait("open", Duration::from_secs(15)).expect("open");
    assert_eq!(open["peers"], 1, "{open}");
    probe.wait("declared", Duration::from_secs(10)).unwrap();
    for _ in 0..5 {
        carol.send(&data("room", "secret", "{}")).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    probe.finish(Duration::from_secs(10));
    assert_eq!(probe.count("sample", &app2), 0, "{:?}", probe.seen);
}
