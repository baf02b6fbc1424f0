//! Smoke runs of every `prscd-bench` scenario, seconds each, so the load
//! tool cannot rot: against prscd (WebSocket and WebTransport datagrams,
//! one node and two meshed nodes), the uWebSockets.js, Node `ws` and
//! socket.io comparison servers of `bench/servers/` (socket.io also as three
//! servers sharing rooms through Redis), and the tokio-tungstenite ceiling. They
//! check that each run completes without loss and reports its numbers; the
//! numbers themselves are for BENCHMARKS.md, never asserted here.

mod common;

use std::path::Path;
use std::process::Command;

use common::{pki, Node, ReadyProcess, KEY1};

fn bench(args: &[&str]) -> serde_json::Value {
    let dir = common::scratch_dir("bench");
    let out = dir.join("result.json");
    let status = Command::new(common::tool_binary("prscd-bench"))
        .args(args)
        .args(["--quiet", "--duration-limit", "60", "--json"])
        .arg(&out)
        .status()
        .expect("run prscd-bench");
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    eprintln!("prscd-bench {}: {text}", args.join(" "));
    assert!(status.success(), "prscd-bench {args:?} exited {status}");
    let result: serde_json::Value = serde_json::from_str(&text).expect("JSON result");
    assert_eq!(result["complete"], true, "{result}");
    result
}

/// [`bench`] with `args` given as one string, then `common`.
fn bench_with(args: &str, common: &[&str]) -> serde_json::Value {
    let mut all: Vec<&str> = args.split_whitespace().collect();
    all.extend_from_slice(common);
    bench(&all)
}

fn url(port: u16, path: &str) -> String {
    format!("wss://127.0.0.1:{port}{path}")
}

fn assert_delivered(r: &serde_json::Value) {
    let d = &r["delivery"];
    assert!(d["delivered"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(d["delivered"], d["expected"], "{r}");
    assert!(r["latency_us"]["p99"].as_u64().is_some(), "{r}");
}

#[test]
fn every_client_scenario_against_prscd() {
    let node = Node::start_with(&[("PEER_MSG_RATE", "0"), ("PEER_BYTE_RATE", "0")]);
    let (u, pid) = (url(node.port, "/v1"), node.pid().to_string());
    let common = ["--url", &u, "--publickey", KEY1, "--server-pid", &pid];
    let r = bench_with("fanout --subscribers 20 --messages 100", &common);
    assert_delivered(&r);
    assert!(r["server_process"]["cpu_s"].as_f64().is_some(), "{r}");
    assert!(
        r["server_process"]["traffic_cpu_s"].as_f64().is_some(),
        "{r}"
    );
    assert!(r["client"]["traffic_cpu_s"].as_f64().is_some(), "{r}");
    for phase in ["setup", "traffic"] {
        let share = r["machine"][phase]["steal_share"].as_f64();
        assert!(share.is_some_and(|s| (0.0..=1.0).contains(&s)), "{r}");
    }
    let r = bench_with("fanout --subscribers 10 --messages 50 --rate 500", &common);
    assert_delivered(&r);
    let r = bench_with(
        "fanout --transport datagram --subscribers 10 --messages 50 --rate 500",
        &common,
    );
    assert_delivered(&r);
    let r = bench_with(
        "rooms --rooms 10 --room-size 4 --rate 5 --duration 1",
        &common,
    );
    assert_delivered(&r);
    let r = bench_with(
        "idle --connections 100 --settle 0.5 --source-ips 4",
        &common,
    );
    assert_eq!(r["setup"]["joined"], 100, "{r}");
    assert!(
        r["server_process"]["rss_kb_per_conn"].as_f64().is_some(),
        "{r}"
    );
    let r = bench_with("storm --connections 200 --connect-concurrency 32", &common);
    assert_eq!(r["setup"]["joined"], 200, "{r}");
    assert!(r["setup"]["conn_per_s"].as_f64().unwrap() > 0.0, "{r}");
    assert_eq!(r["setup"]["tls_resumed"], 0, "new clients: {r}");
    // A reconnect storm: later connections resume the sessions of earlier ones.
    let r = bench_with(
        "storm --connections 200 --connect-concurrency 8 --tls-resume",
        &common,
    );
    assert_eq!(r["setup"]["joined"], 200, "{r}");
    assert!(r["setup"]["tls_resumed"].as_u64().unwrap() > 0, "{r}");
}

/// The tool's own WebSocket client answers the node's pings: with a ping
/// every 100 ms and 400 ms of silence allowed, idle clients that did not
/// answer would be closed during the 1.5 s settle.
#[test]
fn idle_clients_answer_the_nodes_pings() {
    let node = Node::start_with(&[("KEEPALIVE_INTERVAL_MS", "100"), ("IDLE_TIMEOUT_MS", "400")]);
    let (u, pid) = (url(node.port, "/v1"), node.pid().to_string());
    let common = ["--url", &u, "--publickey", KEY1, "--server-pid", &pid];
    let r = bench_with("idle --connections 20 --settle 1.5", &common);
    assert_eq!(r["setup"]["joined"], 20, "{r}");
    assert_eq!(r["delivery"]["disconnected"], 0, "{r}");
}

#[test]
fn cross_node_and_node_death() {
    let nodes = common::mesh_of(
        &["a", "b"],
        &[("PEER_MSG_RATE", "0"), ("PEER_BYTE_RATE", "0")],
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        nodes[0].wait_mesh_state("connected").await;
        nodes[1].wait_mesh_state("connected").await;
    });
    let (sub, publ) = (url(nodes[1].port, "/v1"), url(nodes[0].port, "/v1"));
    let r = bench(&[
        "cross-node",
        "--url",
        &sub,
        "--pub-url",
        &publ,
        "--publickey",
        KEY1,
        "--subscribers",
        "10",
        "--messages",
        "50",
        "--rate",
        "200",
    ]);
    assert_delivered(&r);
    drop(nodes);
    let r = bench(&[
        "node-death",
        "--prscd",
        common::binary(),
        "--nodes",
        "3",
        "--clients",
        "2",
        "--trials",
        "2",
    ]);
    assert_eq!(r["kill_to_last_peer_offline_ms"]["trials"], 2, "{r}");
}

/// The comparison servers, each with the fan-out and many-rooms scenarios.
#[test]
fn comparison_servers() {
    let pki = pki();
    let mut servers = vec![("ceiling", {
        let mut c = Command::new(common::tool_binary("prscd-bench"));
        c.args(["serve-ceiling", "--cert"])
            .arg(&pki.chain_pem)
            .arg("--key")
            .arg(&pki.key_pem);
        c
    })];
    let node_servers = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/servers");
    if node_servers_installed(&node_servers) {
        for (kind, script) in [
            ("uws", "uws-rooms.js"),
            ("node-ws", "ws-broadcast.js"),
            ("socketio", "socketio-rooms.js"),
        ] {
            let mut c = Command::new("node");
            c.arg(node_servers.join(script))
                .env("CERT_FILE", &pki.chain_pem)
                .env("KEY_FILE", &pki.key_pem)
                .env("PORT", "0");
            servers.push((kind, c));
        }
    }
    for (kind, cmd) in servers {
        let server = ReadyProcess::start(cmd);
        let (u, pid) = (url(server.port, "/"), server.pid().to_string());
        let common = ["--server", kind, "--url", &u, "--server-pid", &pid];
        let r = bench_with("fanout --subscribers 20 --messages 100", &common);
        assert_eq!(r["server"], kind);
        assert_delivered(&r);
        if kind != "socketio" {
            // prscd's frames through the bare broadcast: read back as prscd's.
            let r = bench_with(
                "fanout --subscribers 20 --messages 100 --frames prscd",
                &common,
            );
            assert_delivered(&r);
        }
        let r = bench_with(
            "rooms --rooms 5 --room-size 4 --rate 5 --duration 1",
            &common,
        );
        assert_delivered(&r);
        let r = bench_with("idle --connections 50 --settle 0.5", &common);
        assert_eq!(r["setup"]["joined"], 50, "{r}");
    }
}

fn node_servers_installed(dir: &Path) -> bool {
    let installed = [
        "ws",
        "socket.io",
        "uwebsockets",
        "@socket.io/redis-adapter",
        "redis",
    ]
    .iter()
    .all(|m| dir.join("node_modules").join(m).exists());
    if !installed {
        assert!(
            std::env::var_os("PRSCD_REQUIRE_BENCH_SERVERS").is_none(),
            "bench/servers/node_modules missing: run bench/servers/install.sh"
        );
        eprintln!("SKIPPED: Node comparison servers (run bench/servers/install.sh)");
    }
    installed
}

/// uWebSockets.js without TLS, through the load tool's `ws://`: the
/// comparison BENCHMARKS.md makes to explain uWS's fan-out.
#[test]
fn uws_without_tls() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/servers");
    if !node_servers_installed(&dir) {
        return;
    }
    let mut c = Command::new("node");
    c.arg(dir.join("uws-rooms.js"))
        .env("TLS", "0")
        .env("PORT", "0");
    let server = ReadyProcess::start(c);
    let u = format!("ws://127.0.0.1:{}/", server.port);
    let r = bench_with(
        "fanout --subscribers 20 --messages 100",
        &["--server", "uws", "--url", &u],
    );
    assert_delivered(&r);
}

/// Three socket.io servers sharing rooms through the Redis adapter and a
/// redis-server, as bench/multinode.sh runs them: the publisher on one,
/// subscribers on the other two.
#[test]
fn socketio_across_three_servers_through_redis() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/servers");
    if !node_servers_installed(&dir) {
        return;
    }
    let port = common::free_port();
    let mut redis = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("redis-server (bench/servers/install.sh installs it)");
    let deadline = std::time::Instant::now() + common::WAIT;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "redis-server did not listen"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let pki = pki();
    let servers: Vec<ReadyProcess> = (0..3)
        .map(|_| {
            let mut c = Command::new("node");
            c.arg(dir.join("socketio-rooms.js"))
                .env("CERT_FILE", &pki.chain_pem)
                .env("KEY_FILE", &pki.key_pem)
                .env("PORT", "0")
                .env("REDIS_URL", format!("redis://127.0.0.1:{port}"));
            ReadyProcess::start(c)
        })
        .collect();
    let [a, b, c] = [0, 1, 2].map(|i| url(servers[i].port, "/"));
    let r = bench(&[
        "cross-node",
        "--server",
        "socketio",
        "--pub-url",
        &a,
        "--url",
        &b,
        "--sub-urls",
        &c,
        "--subscribers",
        "20",
        "--messages",
        "100",
        "--settle",
        "1",
    ]);
    assert_delivered(&r);
    let _ = redis.kill();
    let _ = redis.wait();
}
