//! The operator's console on `METRICS_PORT`, on three real nodes meshed
//! over zenoh with clients on both transports: the page in headless
//! Chromium shows the three nodes and their counts and follows a killed
//! node; the endpoints refuse a missing or wrong token (401), serve
//! nothing without `ADMIN_TOKEN` (404), and an app's API key never sees
//! another app's data. Also across the shipped routers and their ACLs.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

const ADMIN: &str = "console-admin-token-0123456789";
const APP1_KEY: &str = "app1-console-key-0123456789";
const APP2_KEY: &str = "app2-console-key-0123456789";
/// Longest wait for the console to show a change (the mesh view refreshes
/// about once a second; a killed node's answers stop at once).
const SETTLE: Duration = Duration::from_secs(20);

fn mesh() -> Vec<Node> {
    let keys = format!("app1:{APP1_KEY},app2:{APP2_KEY}");
    mesh_of(
        &["eu", "us", "ap"],
        &[
            ("ADMIN_TOKEN", ADMIN),
            ("APP_API_KEYS", &keys),
            ("METRICS_PORT", "0"),
        ],
    )
}

/// The admin port a node announced (`METRICS_PORT=0` picks a free one).
fn admin_port(node: &Node) -> u16 {
    let line = node.wait_log_blocking("metrics: http://", Duration::from_secs(5));
    let addr = line.split("metrics: http://").nth(1).unwrap();
    let port = addr.split('/').next().unwrap().rsplit(':').next().unwrap();
    port.trim().parse().unwrap()
}

/// `GET path` on the admin port: (status, body).
async fn get(port: u16, path: &str, token: Option<&str>) -> (u16, String) {
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
    let (status, _, body) = http_request(&mut tcp, "GET", path, &headers, None).await;
    (status, body)
}

async fn get_json(port: u16, path: &str, token: &str) -> Value {
    let (status, body) = get(port, path, Some(token)).await;
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// Polls the snapshot until `ready` holds, within [`SETTLE`].
async fn wait_snapshot(port: u16, token: &str, ready: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + SETTLE;
    loop {
        let s = get_json(port, "/console/api/snapshot", token).await;
        if ready(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "console never settled: {s:#}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn node<'a>(s: &'a Value, mesh_id: &str) -> &'a Value {
    s["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["mesh_id"] == mesh_id)
        .unwrap_or_else(|| panic!("no node {mesh_id} in {s:#}"))
}

fn app<'a>(s: &'a Value, name: &str) -> Option<&'a Value> {
    s["apps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["app"] == name)
}

/// The traffic of the tests: app1 on eu (a WebSocket and a WebTransport
/// client) and us (a WebSocket client) in `room-1`, app2 on ap in
/// `secret-room`. Alice keeps talking, bounded, until dropped.
struct Traffic {
    _clients: Vec<Client>,
    talker: tokio::task::JoinHandle<()>,
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.talker.abort();
    }
}

async fn traffic(nodes: &[Node]) -> Traffic {
    let mut alice = nodes[0].ws(KEY1, "alice").await;
    let mut bob = nodes[0].wt(KEY1, "bob", false).await;
    let mut carol = nodes[1].ws(KEY1, "carol").await;
    let mut dave = nodes[2].ws(KEY2, "dave").await;
    alice.join("room-1").await;
    bob.join("room-1").await;
    carol.join("room-1").await;
    dave.join("secret-room").await;
    let talker = tokio::spawn(async move {
        // At most 400 messages over 100 s: under every member's queue.
        for i in 0..400 {
            alice
                .send(&data("room-1", "chat", &format!("\"hello {i}\"")))
                .await;
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
    Traffic {
        _clients: vec![bob, carol, dave],
        talker,
    }
}

fn three_up(s: &Value) -> bool {
    s["nodes_up"] == 3
        && app(s, "app1").is_some_and(|a| {
            a["connections"]["websocket"] == 2 && a["connections"]["webtransport"] == 1
        })
        && app(s, "app2").is_some_and(|a| a["connections"]["websocket"] == 1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_and_what_each_viewer_sees() {
    let nodes = mesh();
    let port = admin_port(&nodes[0]);
    let _traffic = traffic(&nodes).await;

    // No token, a wrong one, the wrong scheme: 401, even for another app's name.
    for token in [None, Some("wrong-token-0123456789")] {
        for path in [
            "/console/api/snapshot",
            "/console/api/events",
            "/console/api/channels?app=app1",
            "/console/api/channel?app=app1&name=room-1",
        ] {
            let (status, body) = get(port, path, token).await;
            assert_eq!(status, 401, "{path} with {token:?}: {body}");
        }
    }
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let basic = format!("Basic {ADMIN}");
    let (status, _, _) = http_request(
        &mut tcp,
        "GET",
        "/console/api/snapshot",
        &[("Authorization", basic.as_str())],
        None,
    )
    .await;
    assert_eq!(status, 401);
    // The page itself is static and holds no data.
    let (status, page) = get(port, "/console", None).await;
    assert_eq!(status, 200);
    assert!(page.contains("console.js"), "{page}");

    // The admin sees the three nodes and every app, with the right counts.
    let s = wait_snapshot(port, ADMIN, three_up).await;
    assert_eq!(s["viewer"], "admin");
    let eu = node(&s, "eu");
    assert_eq!(eu["state"], "self");
    assert_eq!(eu["connections"]["websocket"], 1);
    assert_eq!(eu["connections"]["webtransport"], 1);
    for (mesh_id, ws) in [("us", 1), ("ap", 1)] {
        let n = node(&s, mesh_id);
        assert_eq!(n["state"], "up", "{n}");
        assert_eq!(n["link"], "direct", "peer to peer: {n}");
        assert_eq!(n["connections"]["websocket"], ws, "{n}");
        assert!(n["rtt_ms"].as_f64().is_some(), "{n}");
    }
    assert_eq!(
        app(&s, "app1").unwrap()["channels"],
        2,
        "room-1 on eu and on us"
    );
    assert_eq!(app(&s, "app2").unwrap()["users"], 1);
    assert!(s["counters"]["handshake_rejected"].is_object());
    // Counters move: app1's messages in, as alice talks.
    let before = app(&s, "app1").unwrap()["messages_in"].as_u64().unwrap();
    wait_snapshot(port, ADMIN, |s| {
        app(s, "app1").unwrap()["messages_in"].as_u64().unwrap() > before
    })
    .await;
    // A refused handshake is a recent error, for the admin only.
    let refused = ws_handshake(nodes[0].addr(), "/v1?publickey=nope&id=mallory").await;
    assert_eq!(refused.err().map(|(status, _)| status), Some(403));
    let s = wait_snapshot(port, ADMIN, |s| {
        s["errors"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "rejected" && e["detail"].as_str().unwrap().contains("403"))
    })
    .await;
    assert_eq!(s["errors"][0]["app"], Value::Null, "no app: admin only");
    // Alice's messages cross to us: its hop times from eu are measured there.
    let us_port = admin_port(&nodes[1]);
    let s_us = wait_snapshot(us_port, ADMIN, |s| {
        node(s, "eu")["hop_samples"].as_u64().unwrap_or(0) > 0
    })
    .await;
    let hop = node(&s_us, "eu");
    assert!(hop["hop_p99_ms"].as_f64().unwrap() >= hop["hop_p50_ms"].as_f64().unwrap());

    // app1's key: its app only, on every node; never app2's name, channel or user.
    let s = wait_snapshot(port, APP1_KEY, |s| s["nodes_up"] == 3).await;
    assert_eq!(s["viewer"], "app:app1");
    let apps: Vec<&str> = s["apps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["app"].as_str().unwrap())
        .collect();
    assert_eq!(apps, ["app1"]);
    assert_eq!(
        node(&s, "ap")["connections"]["websocket"],
        0,
        "ap holds app2 only"
    );
    assert_eq!(s["counters"], Value::Null, "node-wide counters mix apps");
    assert!(s["errors"].as_array().unwrap().is_empty(), "{s:#}");
    let text = s.to_string();
    for secret in ["app2", "secret-room", "dave"] {
        assert!(!text.contains(secret), "app1's key sees {secret}: {text}");
    }
    let (status, _) = get(port, "/console/api/channels?app=app2", Some(APP1_KEY)).await;
    assert_eq!(status, 404);
    let path = "/console/api/channel?app=app2&name=secret-room";
    let (status, _) = get(port, path, Some(APP1_KEY)).await;
    assert_eq!(status, 404);
    let path = "/console/api/channel?app=app1&name=room-1";
    let (status, _) = get(port, path, Some(APP2_KEY)).await;
    assert_eq!(status, 404);
    let listed = get_json(port, "/console/api/channels", APP1_KEY).await;
    assert_eq!(listed["total"], 1);
    assert_eq!(listed["channels"][0]["name"], "room-1");
    assert_eq!(listed["channels"][0]["members"], 2);

    // The inspector: the users here and on us, then messages sampled while
    // it watches, with their payload only when asked for.
    let path = "/console/api/channel?app=app1&name=room-1";
    let deadline = Instant::now() + SETTLE;
    let v = loop {
        let v = get_json(port, path, ADMIN).await;
        if v["total"] == 3 && !v["samples"].as_array().unwrap().is_empty() {
            break v;
        }
        assert!(Instant::now() < deadline, "inspector never filled: {v:#}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let ids: Vec<&str> = v["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["alice", "bob", "carol"]);
    assert_eq!(v["users"][2]["elsewhere"][0]["node"], "us");
    let sample = &v["samples"][0];
    assert_eq!(sample["from"], "alice");
    assert_eq!(sample["op"], "data");
    assert!(sample.get("payload").is_none(), "{sample}");
    let deadline = Instant::now() + SETTLE;
    loop {
        let v = get_json(port, &format!("{path}&payloads=1"), ADMIN).await;
        let payload = &v["samples"][0]["payload"];
        if payload["event"] == "chat" {
            assert!(payload["data"].as_str().unwrap().contains("hello"));
            break;
        }
        assert!(Instant::now() < deadline, "no payload: {v:#}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Paged and searched on the node.
    let v = get_json(port, &format!("{path}&q=CAR&limit=1"), ADMIN).await;
    assert_eq!(
        (v["total"].as_u64(), v["users"][0]["id"].as_str()),
        (Some(1), Some("carol"))
    );

    // The event stream sends snapshots to a token, as text/event-stream.
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let req = format!(
        "GET /console/api/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {APP1_KEY}\r\n\r\n"
    );
    tokio::io::AsyncWriteExt::write_all(&mut tcp, req.as_bytes())
        .await
        .unwrap();
    let mut got = Vec::new();
    let deadline = Instant::now() + WAIT;
    while got.windows(2).filter(|w| w == b"\n\n").count() < 2 {
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline.into(), tcp.read(&mut buf))
            .await
            .expect("two events within WAIT")
            .unwrap();
        assert!(n > 0, "stream ended: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("Content-Type: text/event-stream"), "{text}");
    assert!(text.contains("event: snapshot\ndata: {"), "{text}");
    assert!(!text.contains("app2"), "{text}");
}

/// Behind the shipped regional routers and their ACLs (`mesh/regions`):
/// the other node's summary crosses both routers, and the node lists the
/// router it is linked to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_the_shipped_routers_and_their_acls() {
    let Some(zenohd) = common::zmesh::zenohd() else {
        return;
    };
    let mesh = common::zmesh::Shipped::plaintext("console-routers");
    let _routers = [mesh.router(&zenohd, 0), mesh.router(&zenohd, 1)];
    let extra = [("ADMIN_TOKEN", ADMIN), ("METRICS_PORT", "0")];
    let (eu, _us) = (mesh.node_with(0, &extra), mesh.node_with(1, &extra));
    eu.wait_mesh_state("connected").await;
    let s = wait_snapshot(admin_port(&eu), ADMIN, |s| s["nodes_up"] == 2).await;
    let us = node(&s, "us");
    assert_eq!(
        (us["state"].as_str(), us["link"].as_str()),
        (Some("up"), Some("routed")),
        "{s:#}"
    );
    assert_eq!(s["routers"].as_array().unwrap().len(), 1, "{s:#}");
}

#[tokio::test]
async fn no_admin_token_no_console() {
    let node = Node::start_with(&[("METRICS_PORT", "0")]);
    let port = admin_port(&node);
    for path in ["/console", "/console/api/snapshot", "/console/console.js"] {
        let (status, _) = get(port, path, Some("anything-0123456789")).await;
        assert_eq!(status, 404, "{path}");
    }
    // The console is on the admin port only, never on the client port.
    let node = Node::start_with(&[("ADMIN_TOKEN", ADMIN)]);
    let (status, _, _) = node.get("/console").await;
    assert_eq!(status, 404);
}

/// Chromium and playwright-core, or why the browser test is skipped
/// (as in tests/browser.rs: required when `PRSCD_REQUIRE_BROWSER` is set).
fn chromium() -> Option<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let ready = Path::new(&chromium).exists()
        && root
            .join("tests/browser/node_modules/playwright-core")
            .exists();
    if !ready {
        assert!(
            std::env::var_os("PRSCD_REQUIRE_BROWSER").is_none(),
            "chromium or tests/browser/node_modules missing: run ./scripts/test"
        );
        eprintln!("SKIPPED: chromium or tests/browser/node_modules missing");
        return None;
    }
    Some(chromium)
}

/// `SEEN <json>` lines of the page driver, bounded in time.
fn next_seen(lines: &mpsc::Receiver<String>, all: &mut Vec<String>) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("page driver went quiet:\n{}", all.join("\n")));
        all.push(line.clone());
        if let Some(json) = line.strip_prefix("SEEN ") {
            return serde_json::from_str(json).unwrap();
        }
        assert!(!line.starts_with("FAIL"), "{}", all.join("\n"));
    }
}

fn row<'a>(seen: &'a Value, key: &str, name: &str) -> Option<&'a Value> {
    seen[key]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r[if key == "nodes" { "mesh_id" } else { "app" }] == name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_the_mesh_and_follows_a_killed_node() {
    let Some(chromium) = chromium() else {
        return;
    };
    let mut nodes = mesh();
    let port = admin_port(&nodes[0]);
    let _traffic = traffic(&nodes).await;
    wait_snapshot(port, ADMIN, three_up).await;

    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut driver = Command::new("node")
        .arg(root.join("tests/browser/console.mjs"))
        .args(["--url", &format!("http://127.0.0.1:{port}/console")])
        .args(["--token", ADMIN, "--step", "nodes=3", "--step", "nodes=2"])
        .args(["--inspect", "app1/room-1"])
        .args(["--app-key", APP1_KEY, "--hidden", "app2,secret-room,dave"])
        .env("CHROMIUM", &chromium)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("node");
    let stdout = driver.stdout.take().unwrap();
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            println!("[console.mjs] {line}");
            let _ = tx.send(line);
        }
    });
    let mut all = Vec::new();
    let mut seen = || next_seen(&lines, &mut all);

    assert_eq!(seen()["wrong_token"], "refused");
    let three = seen();
    assert_eq!(three["nodes_up"], 3, "{three:#}");
    let eu = row(&three, "nodes", "eu").unwrap();
    assert_eq!(
        (
            eu["state"].as_str(),
            eu["websocket"].as_u64(),
            eu["webtransport"].as_u64()
        ),
        (Some("self"), Some(1), Some(1)),
        "{three:#}"
    );
    for name in ["us", "ap"] {
        let n = row(&three, "nodes", name).unwrap();
        assert_eq!(
            (n["state"].as_str(), n["websocket"].as_u64()),
            (Some("up"), Some(1)),
            "{three:#}"
        );
    }
    let app1 = row(&three, "apps", "app1").unwrap();
    assert_eq!(
        (app1["websocket"].as_u64(), app1["webtransport"].as_u64()),
        (Some(2), Some(1))
    );
    assert_eq!(row(&three, "apps", "app2").unwrap()["websocket"], 1);

    nodes[2].kill9();
    driver
        .stdin
        .as_mut()
        .unwrap()
        .write_all(b"killed\n")
        .unwrap();
    let two = seen();
    assert_eq!(two["nodes_up"], 2, "{two:#}");
    let ap = row(&two, "nodes", "ap").unwrap();
    assert_eq!(
        (ap["state"].as_str(), ap["websocket"].as_u64()),
        (Some("down"), Some(0)),
        "{two:#}"
    );
    assert!(
        row(&two, "apps", "app2").is_none(),
        "app2 lived on ap only: {two:#}"
    );
    assert_eq!(row(&two, "apps", "app1").unwrap()["websocket"], 2);

    let app_view = seen();
    let apps = app_view["app_view"]["apps"].as_array().unwrap();
    assert_eq!(apps.len(), 1, "{app_view:#}");
    assert_eq!(apps[0]["app"], "app1");
    let status = driver.wait().unwrap();
    assert!(status.success(), "{}", all.join("\n"));
}
