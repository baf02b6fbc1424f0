//! The presence API (`/v1/apps/...`) on real nodes meshed over zenoh:
//! every node gives the same mesh-wide answer, a posted message reaches
//! members on every node, a disconnect closes a user's connections on every
//! node, and bad requests get their status. Also on `METRICS_PORT`.

mod common;

use std::time::{Duration, Instant};

use common::*;
use rmpv::Value;
use serde_json::json;

const KEY_APP1: &str = "app1-api-key-0123456789";
const KEY_APP2: &str = "app2-api-key-0123456789";

fn api_keys() -> String {
    format!("app1:{KEY_APP1},app2:{KEY_APP2}")
}

async fn wait_meshed(nodes: &[Node]) {
    for node in nodes {
        node.wait_counter(&["mesh", "peers"], nodes.len() as u64 - 1)
            .await;
        node.wait_mesh_state("connected").await;
    }
}

/// A request to a node's client port: (status, body as JSON).
async fn call(
    node: &Node,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<&[u8]>,
) -> (u16, serde_json::Value) {
    let auth = key.map(|k| format!("Bearer {k}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
    let mut tls = tls_connect(node.addr()).await;
    let (status, _, body) = http_request(&mut tls, method, path, &headers, body).await;
    let json = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body:?}"));
    (status, json)
}

/// Polls `GET path` on every node until each answers `want`.
async fn wait_all_agree(nodes: &[Node], path: &str, want: &serde_json::Value) {
    for node in nodes {
        let deadline = Instant::now() + WAIT;
        loop {
            let (status, got) = call(node, "GET", path, Some(KEY_APP1), None).await;
            if status == 200 && got == *want {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "port {}: {path} answered {status} {got}, wanted {want}",
                node.port
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn state_of(fields: &[(&str, &str)]) -> Vec<u8> {
    let map = fields
        .iter()
        .map(|(k, v)| (Value::from(*k), Value::from(*v)))
        .collect();
    let mut out = Vec::new();
    rmpv::encode::write_value(&mut out, &Value::Map(map)).unwrap();
    out
}

#[tokio::test]
async fn every_node_answers_for_the_mesh_and_acts_on_every_node() {
    let keys = api_keys();
    let nodes = mesh_of(
        &["eu", "us", "ap"],
        &[("APP_API_KEYS", &keys), ("MAX_MESSAGE_SIZE", "4096")],
    );
    wait_meshed(&nodes).await;
    let mut alice_eu = nodes[0].ws(KEY1, "alice").await;
    let mut alice_us = nodes[1].wt(KEY1, "alice", true).await;
    let mut bob = nodes[1].ws(KEY1, "bob").await;
    let mut carol = nodes[2].ws(KEY1, "carol").await;
    let mut dave = nodes[0].ws(KEY1, "dave").await;
    let mut other_app = nodes[2].ws(KEY2, "eve").await;
    for c in [&mut alice_eu, &mut alice_us, &mut bob, &mut carol] {
        c.join("room").await;
    }
    dave.join("lobby").await;
    other_app.join("room").await;
    let alice_state = state_of(&[("id", "alice"), ("name", "Alice")]);
    alice_us
        .send(&control("peer_state", "room", Some(alice_state)))
        .await;

    // Occupancy and members, mesh-wide, the same from every node.
    let channels = json!({"channels": [
        {"name": "lobby", "users": 1, "connections": 1},
        {"name": "room", "users": 3, "connections": 4},
    ]});
    wait_all_agree(&nodes, "/v1/apps/app1/channels", &channels).await;
    let users = json!({"users": [
        {"id": "alice", "connections": 2, "state": {"id": "alice", "name": "Alice"}},
        {"id": "bob", "connections": 1, "state": null},
        {"id": "carol", "connections": 1, "state": null},
    ]});
    wait_all_agree(&nodes, "/v1/apps/app1/channels/room/users", &users).await;
    let (status, app2) = call(
        &nodes[0],
        "GET",
        "/v1/apps/app2/channels",
        Some(KEY_APP2),
        None,
    )
    .await;
    assert_eq!(
        (status, app2),
        (
            200,
            json!({"channels": [{"name": "room", "users": 1, "connections": 1}]})
        )
    );

    // Refusals.
    let refused = [
        ("GET", "/v1/apps/app1/channels", None, 401),
        ("GET", "/v1/apps/app1/channels", Some(KEY_APP2), 401),
        ("GET", "/v1/apps/nope/channels", Some(KEY_APP1), 404),
        ("GET", "/v1/apps/app1/rooms", Some(KEY_APP1), 404),
        (
            "GET",
            "/v1/apps/app1/channels/room/messages",
            Some(KEY_APP1),
            405,
        ),
    ];
    for (method, path, key, want) in refused {
        let (status, body) = call(&nodes[1], method, path, key, None).await;
        assert_eq!(status, want, "{method} {path}: {body}");
        assert!(body["error"].is_string(), "{body}");
    }
    let post = "/v1/apps/app1/channels/room/messages";
    for (body, want) in [
        (&b"{not json"[..], 400),
        (br#"{"data": 1}"#, 400),
        (br#"{"from": "", "data": 1}"#, 400),
    ] {
        let (status, got) = call(&nodes[1], "POST", post, Some(KEY_APP1), Some(body)).await;
        assert_eq!(status, want, "{got}");
    }
    // Refused on its Content-Length (over MAX_MESSAGE_SIZE), before any byte of it is read.
    let auth = format!("Bearer {KEY_APP1}");
    let big = [("Authorization", auth.as_str()), ("Content-Length", "5000")];
    let mut tls = tls_connect(nodes[1].addr()).await;
    let (status, _, body) = http_request(&mut tls, "POST", post, &big, None).await;
    assert_eq!(status, 413, "{body}");

    // A message from the backend reaches the channel's members on every node.
    let data = json!({"event": "chat", "data": "{\"text\":\"hi\"}"});
    let body = serde_json::to_vec(&json!({"from": "backend", "data": data})).unwrap();
    let (status, _) = call(&nodes[2], "POST", post, Some(KEY_APP1), Some(&body)).await;
    assert_eq!(status, 202);
    for member in [&mut alice_eu, &mut alice_us, &mut bob, &mut carol] {
        let got = member.recv_op("data").await;
        assert_eq!(field(&got, "p"), Some("backend"));
        assert!(!has_key(&got, "mesh"), "from no node's member: {got}");
        let inner = bin(&got, "pl").expect("pl");
        assert_eq!(
            rmp_serde::from_slice::<serde_json::Value>(inner).unwrap(),
            data
        );
    }

    // A disconnect asked of a node alice is not on closes both her tabs.
    let kick = "/v1/apps/app1/users/alice/disconnect";
    let (status, _) = call(&nodes[2], "POST", kick, Some(KEY_APP2), None).await;
    assert_eq!(status, 401, "app2's key cannot disconnect app1's users");
    let (status, _) = call(&nodes[2], "POST", kick, Some(KEY_APP1), None).await;
    assert_eq!(status, 202);
    assert_eq!(alice_eu.closed_with().await, Some(1008));
    assert_eq!(alice_us.closed_with().await, Some(1008));
    let off = bob.recv_op("peer_offline").await;
    assert_eq!(field(&off, "p"), Some("alice"));
    let channels = json!({"channels": [
        {"name": "lobby", "users": 1, "connections": 1},
        {"name": "room", "users": 2, "connections": 2},
    ]});
    wait_all_agree(&nodes, "/v1/apps/app1/channels", &channels).await;
}

#[tokio::test]
async fn the_api_is_served_on_the_metrics_port_too() {
    let keys = api_keys();
    let port = free_port().to_string();
    let node = Node::start_with(&[("APP_API_KEYS", &keys), ("METRICS_PORT", &port)]);
    let mut alice = node.ws(KEY1, "alice").await;
    alice.join("room").await;
    let plain = || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port.parse::<u16>().unwrap()))
            .await
            .unwrap()
    };
    let auth = format!("Bearer {KEY_APP1}");
    let path = "/v1/apps/app1/channels/room/users";
    let (status, _, body) = http_request(
        &mut plain().await,
        "GET",
        path,
        &[("Authorization", &auth)],
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let users: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(users["users"][0]["id"], "alice");
    let (status, _, _) = http_request(&mut plain().await, "GET", path, &[], None).await;
    assert_eq!(status, 401);

    // The examples, against this port: Python posts a message, Node also disconnects.
    let url = format!("http://127.0.0.1:{port}");
    let example = |program: &str, script: &str, args: &[&str]| {
        let root = env!("CARGO_MANIFEST_DIR");
        let out = std::process::Command::new(program)
            .arg(format!("{root}/examples/{script}"))
            .args(args)
            .env("PRSCD_URL", &url)
            .env("APP", "app1")
            .env("API_KEY", KEY_APP1)
            .output()
            .unwrap_or_else(|e| panic!("{program}: {e}"));
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{script}: {stdout}{stderr}");
        stdout
    };
    let printed = example("python3", "api.py", &["room"]);
    assert!(printed.contains(r#""id": "alice""#), "{printed}");
    let got = alice.recv_op("data").await;
    assert_eq!(field(&got, "p"), Some("backend"));
    let printed = example("node", "api.mjs", &["room", "alice"]);
    assert!(printed.contains("disconnect 202"), "{printed}");
    assert_eq!(alice.recv_op("data").await["t"].as_str(), Some("data"));
    assert_eq!(alice.closed_with().await, Some(1008));
}
