//! Backend services on the mesh, as YoMo source/stream functions were:
//! `examples/backend.py` (Python `eclipse-zenoh` 1.10.2) publishes into a
//! channel and reads its traffic and membership, against a real node; and
//! a zenoh session in the test holds a node to the membership contract
//! (`mesh/README.md`).
//!
//! The Python test needs the venv from `mesh/install-python.sh` (`scripts/test`
//! makes it). Without it the test says so and passes, unless
//! `PRSCD_REQUIRE_MESH_TOOLS` is set, as `scripts/test` and CI do.

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn python() -> Option<PathBuf> {
    installed_tool(
        "venv/bin/python",
        "PRSCD_REQUIRE_MESH_TOOLS",
        "mesh/install-python.sh",
    )
}

#[tokio::test]
async fn python_backend_writes_into_and_reads_a_channel() {
    let Some(py) = python() else { return };
    let zport = free_port();
    let node = Node::start_with(&[
        ("MESH_ID", "eu"),
        ("ZENOH_LISTEN", &format!("tcp/127.0.0.1:{zport}")),
    ]);
    let mut alice = node.ws(KEY1, "alice").await;
    alice.join("room 1/a").await; // a name that needs key-expression escaping

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/backend.py");
    let mut child = Command::new(&py)
        .arg(script)
        .args(["--connect", &format!("tcp/127.0.0.1:{zport}")])
        .args([
            "--app",
            "app1",
            "--channel",
            "room 1/a",
            "--name",
            "backend-bot",
        ])
        .args(["--messages", "2", "--seconds", "20"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python");
    let (tx, mut lines) = tokio::sync::mpsc::unbounded_channel::<serde_json::Value>();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            println!("backend.py: {line}");
            if let Ok(v) = serde_json::from_str(&line) {
                let _ = tx.send(v);
            }
        }
    });
    // It finds alice in the node's roster and publishes (in either order).
    let (mut member, mut published) = (None, false);
    while member.is_none() || !published {
        let event = next(&mut lines, "member and published").await;
        match event["event"].as_str() {
            Some("member") => member = Some(event),
            Some("ready") => {
                assert_eq!(event["matching"], true, "a node subscribes to the channel")
            }
            Some("published") => published = true,
            _ => panic!("unexpected {event}"),
        }
    }
    let member = member.unwrap();
    assert_eq!(
        (member["client"].as_str(), member["mesh"].as_str()),
        (Some("alice"), Some("eu"))
    );
    assert_eq!(member["alive"], true);
    assert_eq!(member["via"], "roster");

    // Its message reaches the browser peer, with p = its name.
    let got = alice.recv_op("data").await;
    assert_eq!(field(&got, "p"), Some("backend-bot"));
    assert_eq!(field(&got, "c"), Some("room 1/a"));
    let pl = decode(bin(&got, "pl").expect("pl"));
    assert_eq!(field(&pl, "event"), Some("chat"));

    // It follows joins and leaves in the channel's traffic.
    let mut bob = node.ws(KEY1, "bob").await;
    bob.join("room 1/a").await;
    let joined = next(&mut lines, "bob's join").await;
    drop(bob);
    let left = next(&mut lines, "bob's leave").await;
    for (event, alive) in [(joined, true), (left, false)] {
        assert_eq!(
            (event["event"].as_str(), event["client"].as_str()),
            (Some("member"), Some("bob")),
            "{event}"
        );
        assert_eq!(
            (&event["alive"], event["via"].as_str()),
            (&serde_json::json!(alive), Some("traffic"))
        );
    }

    // And it reads the channel's traffic: state and data, with sender and mesh.
    alice
        .send(&control("peer_state", "room 1/a", Some(state("alice"))))
        .await;
    alice.send(&data("room 1/a", "cursor", r#"{"x":3}"#)).await;
    for t in ["control", "data"] {
        let msg = next(&mut lines, "message").await;
        assert_eq!(msg["event"], "message");
        assert_eq!(
            (msg["t"].as_str(), msg["p"].as_str(), msg["mesh"].as_str()),
            (Some(t), Some("alice"), Some("eu"))
        );
    }
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success());
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "backend.py did not exit"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(node.counter(&["mesh", "received"]).await, 1);
}

/// What a zenoh client sees of a node's memberships, and what it may not do:
/// the roster query answers, a `channel_join` needs a node's sid, broken
/// samples are dropped and counted, a node's member needs its node's token,
/// and a node's join and leave (here forged by the test, with a sid and the
/// node's token: only ACLs tell it from a node) become a remote member and
/// one `peer_offline` for the browsers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)] // zenoh needs it
async fn the_membership_contract_seen_from_a_zenoh_client() {
    use prscd_wire::mesh::{keys, membership, Origin};
    let zport = free_port();
    let node = Node::start_with(&[
        ("MESH_ID", "eu"),
        ("ZENOH_LISTEN", &format!("tcp/127.0.0.1:{zport}")),
    ]);
    let mut alice = node.ws(KEY1, "alice").await;
    alice.join("room").await;

    let session = common::zmesh::zenoh_client(zport).await;
    let channel = keys::channel_key("app1", "room");
    let publisher = session.declare_publisher(channel.clone()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !publisher.matching_status().await.unwrap().matching() {
        assert!(Instant::now() < deadline, "the node never subscribed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The roster: one reply per node, alice in it.
    let replies = session.get(keys::members_of("app1", "room")).await.unwrap();
    let reply = replies.recv_async().await.expect("a roster reply");
    let sample = reply.result().expect("a roster");
    assert_eq!(
        sample.key_expr().as_str(),
        keys::members_key("app1", "room", "eu")
    );
    let roster = membership::decode_roster(&sample.payload().to_bytes()).unwrap();
    assert_eq!(roster.len(), 1);
    assert_eq!(roster[0].client_id, "alice");

    // A backend cannot join, and junk is dropped: counted, alice undisturbed.
    let join = |p: &str| {
        msg(vec![
            ("t", "control".into()),
            ("op", "channel_join".into()),
            ("c", "room".into()),
            ("p", p.into()),
        ])
    };
    publisher.put(join("intruder")).await.unwrap();
    publisher.put(b"junk".to_vec()).await.unwrap();
    node.wait_counter(&["dropped", "mesh_invalid"], 2).await;
    assert_eq!(node.counter(&["mesh", "remote_members"]).await, 0);
    alice.expect_silence(Duration::from_millis(300)).await;

    // A node's join (its sid in the attachment) is a remote member; its
    // leave is one peer_offline.
    let from_node = |p: &str, op: &str| {
        let body = msg(vec![
            ("t", "control".into()),
            ("op", op.into()),
            ("c", "room".into()),
            ("p", p.into()),
            ("mesh", "us".into()),
        ]);
        let origin = Origin {
            sid: Some(7),
            sent_us: 0,
            traceparent: None,
            stamp: None,
        };
        (body, origin.encode())
    };
    let (body, attachment) = from_node("bob", "channel_join");
    publisher
        .put(body.clone())
        .attachment(attachment.clone())
        .await
        .unwrap();
    node.wait_counter(&["dropped", "mesh_no_token"], 1).await;
    assert_eq!(node.counter(&["mesh", "remote_members"]).await, 0);
    let _token = session
        .liveliness()
        .declare_token(keys::node_token_key("app1", "us"))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while node.counter(&["mesh", "remote_members"]).await == 0 {
        assert!(
            Instant::now() < deadline,
            "the join with a token was refused"
        );
        publisher
            .put(body.clone())
            .attachment(attachment.clone())
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (body, attachment) = from_node("bob", "peer_offline");
    publisher.put(body).attachment(attachment).await.unwrap();
    let off = alice.recv_op("peer_offline").await;
    assert_eq!(
        (field(&off, "p"), field(&off, "mesh")),
        (Some("bob"), Some("us"))
    );
    alice.expect_silence(Duration::from_millis(300)).await;
    assert_eq!(node.counter(&["mesh", "remote_members"]).await, 0);
    session.close().await.unwrap();
}

async fn next(
    lines: &mut tokio::sync::mpsc::UnboundedReceiver<serde_json::Value>,
    what: &str,
) -> serde_json::Value {
    tokio::time::timeout(Duration::from_secs(15), lines.recv())
        .await
        .unwrap_or_else(|_| panic!("backend.py: no {what}"))
        .unwrap_or_else(|| panic!("backend.py ended before {what}"))
}
