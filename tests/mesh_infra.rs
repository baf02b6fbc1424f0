//! The mesh on real infrastructure: nodes behind real `zenohd` routers (one
//! per "region", routers linked), and TLS between nodes, where a node with
//! a certificate from the wrong CA cannot join.
//!
//! Needs zenohd 1.10.2 from `mesh/install-zenohd.sh` for the router case;
//! without it that case says so and passes, unless `PRSCD_REQUIRE_MESH_TOOLS`
//! is set, as `scripts/test` and CI do.

mod common;

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use common::*;

const QUIET: Duration = Duration::from_millis(400);

fn zenohd() -> Option<PathBuf> {
    installed_tool(
        "bin/zenohd",
        "PRSCD_REQUIRE_MESH_TOOLS",
        "mesh/install-zenohd.sh",
    )
}

struct Router(Child);

impl Drop for Router {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Settings every test config shares with the embedded default.
const COMMON: &str = r#"
  scouting: { multicast: { enabled: false } },
  transport: { unicast: { open_timeout: 2000 }, link: { tx: { lease: 2000, keep_alive: 4 }TLS } },
"#;

fn write_config(dir: &Path, name: &str, body: &str, tls: &str) -> PathBuf {
    let path = dir.join(name);
    let common = COMMON.replace("TLS", tls);
    std::fs::write(&path, format!("{{\n{body}\n{common}\n}}\n")).unwrap();
    path
}

fn start_router(bin: &Path, dir: &Path, name: &str, listen: u16, connect: &[u16]) -> Router {
    let connect: Vec<String> = connect
        .iter()
        .map(|p| format!("\"tcp/127.0.0.1:{p}\""))
        .collect();
    let body = format!(
        r#"mode: "router",
  listen: {{ endpoints: ["tcp/127.0.0.1:{listen}"] }},
  connect: {{ endpoints: [{}], timeout_ms: -1, exit_on_failure: false, retry: {{ period_init_ms: 250, period_max_ms: 1000 }} }},"#,
        connect.join(",")
    );
    let config = write_config(dir, &format!("{name}.json5"), &body, "");
    let child = common::zmesh::spawn_zenohd(bin, &config, listen, name);
    Router(child)
}

/// A node as a peer of its region's router only (no gossip autoconnect, so
/// regions talk through their routers).
fn node_behind(dir: &Path, mesh_id: &str, router: u16) -> Node {
    let body = format!(
        r#"mode: "peer",
  connect: {{ endpoints: ["tcp/127.0.0.1:{router}"], timeout_ms: -1, exit_on_failure: false, retry: {{ period_init_ms: 250, period_max_ms: 1000 }} }},
  listen: {{ endpoints: [] }},"#
    );
    let config = write_config(dir, &format!("node-{mesh_id}.json5"), &body, "");
    Node::start_with(&[
        SILENT_CLIENTS,
        ("MESH_ID", mesh_id),
        ("ZENOH_CONFIG", config.to_str().unwrap()),
    ])
}

#[tokio::test]
async fn two_regions_through_zenohd_routers() {
    let Some(zenohd) = zenohd() else { return };
    let dir = scratch_dir("routers");
    let (eu_port, us_port) = (free_port(), free_port());
    let _eu_router = start_router(&zenohd, &dir, "router-eu", eu_port, &[]);
    let _us_router = start_router(&zenohd, &dir, "router-us", us_port, &[eu_port]);
    let mut eu = node_behind(&dir, "eu", eu_port);
    let us = node_behind(&dir, "us", us_port);
    for node in [&eu, &us] {
        node.wait_counter(&["mesh", "routers"], 1).await;
        node.wait_mesh_state("connected").await;
    }

    let mut a = eu.ws(KEY1, "alice").await;
    let mut b = us.wt(KEY1, "bob", true).await;
    a.join("room").await;
    b.join("room").await;
    eu.wait_remote_members(1).await;
    us.wait_remote_members(1).await;
    for k in 0..20u8 {
        a.send(&msg(vec![
            ("t", rmpv::Value::from("data")),
            ("c", rmpv::Value::from("room")),
            ("pl", rmpv::Value::Binary(vec![k])),
        ]))
        .await;
    }
    for k in 0..20u8 {
        let got = b.recv_op("data").await;
        assert_eq!(
            (field(&got, "p"), field(&got, "mesh")),
            (Some("alice"), Some("eu"))
        );
        assert_eq!(
            bin(&got, "pl"),
            Some(&[k][..]),
            "in order through two routers"
        );
    }
    b.expect_silence(QUIET).await;
    a.expect_silence(QUIET).await;

    // The eu node dies: the us side learns it through the routers.
    let killed = Instant::now();
    eu.kill9();
    let off = b.recv_op("peer_offline").await;
    assert_eq!(
        (field(&off, "p"), field(&off, "mesh")),
        (Some("alice"), Some("eu"))
    );
    println!(
        "via routers: peer_offline {} ms after kill -9",
        killed.elapsed().as_millis()
    );
    assert!(killed.elapsed() < Duration::from_secs(3));
    b.expect_silence(QUIET).await;
}

/// A CA and node certificates for zenoh's TLS transport.
struct MeshPki {
    dir: PathBuf,
}

impl MeshPki {
    fn new(name: &str) -> MeshPki {
        let dir = scratch_dir(name);
        MeshPki { dir }
    }

    /// Writes `<ca>.pem` and, for each node, `<node>.pem`/`<node>.key`.
    fn issue(&self, ca: &str, nodes: &[&str]) {
        let authority = TestCa::new("prscd mesh CA");
        std::fs::write(self.dir.join(format!("{ca}.pem")), authority.cert.pem()).unwrap();
        for node in nodes {
            let (cert, key) = authority.issue(node, 30);
            std::fs::write(self.dir.join(format!("{node}.pem")), cert.pem()).unwrap();
            std::fs::write(self.dir.join(format!("{node}.key")), key.serialize_pem()).unwrap();
        }
    }

    /// A peer-mode config with mTLS, trusting `ca`, presenting `node`'s cert.
    fn config(&self, node: &str, ca: &str, listen: Option<u16>, connect: Option<u16>) -> PathBuf {
        let d = self.dir.display();
        let tls = format!(
            r#", tls: {{ root_ca_certificate: "{d}/{ca}.pem", listen_certificate: "{d}/{node}.pem", listen_private_key: "{d}/{node}.key", connect_certificate: "{d}/{node}.pem", connect_private_key: "{d}/{node}.key", enable_mtls: true, verify_name_on_connect: true }}"#
        );
        let listen = listen.map_or(String::new(), |p| format!("\"tls/127.0.0.1:{p}\""));
        let connect = connect.map_or(String::new(), |p| format!("\"tls/127.0.0.1:{p}\""));
        let body = format!(
            r#"mode: "peer",
  listen: {{ endpoints: [{listen}] }},
  connect: {{ endpoints: [{connect}], timeout_ms: -1, exit_on_failure: false, retry: {{ period_init_ms: 250, period_max_ms: 1000 }} }},"#
        );
        write_config(&self.dir, &format!("{node}.json5"), &body, &tls)
    }
}

#[tokio::test]
async fn tls_between_nodes_refuses_a_certificate_from_another_ca() {
    crypto();
    let pki = MeshPki::new("mesh-tls");
    pki.issue("ca", &["eu", "us"]);
    pki.issue("rogue-ca", &["rogue"]);
    let port = free_port();
    let eu = Node::start_with(&[
        SILENT_CLIENTS,
        ("MESH_ID", "eu"),
        (
            "ZENOH_CONFIG",
            pki.config("eu", "ca", Some(port), None).to_str().unwrap(),
        ),
    ]);
    let us = Node::start_with(&[
        SILENT_CLIENTS,
        ("MESH_ID", "us"),
        (
            "ZENOH_CONFIG",
            pki.config("us", "ca", None, Some(port)).to_str().unwrap(),
        ),
    ]);
    // The rogue node trusts the real CA (so it would accept eu), but its own
    // certificate is signed by another CA: eu's mTLS must refuse it.
    let rogue = Node::start_with(&[
        SILENT_CLIENTS,
        ("MESH_ID", "rogue"),
        (
            "ZENOH_CONFIG",
            pki.config("rogue", "ca", None, Some(port))
                .to_str()
                .unwrap(),
        ),
    ]);

    eu.wait_counter(&["mesh", "peers"], 1).await;
    us.wait_mesh_state("connected").await;
    // Over TLS, traffic flows between the two legitimate nodes.
    let mut a = eu.ws(KEY1, "alice").await;
    let mut b = us.ws(KEY1, "bob").await;
    let mut r = rogue.ws(KEY1, "mallory").await;
    let mut mole = rogue.ws(KEY1, "mole").await;
    a.join("room").await;
    b.join("room").await;
    r.join("room").await;
    mole.join("room").await;
    // Both sides know the other's member (each has the other's subscription).
    eu.wait_remote_members(1).await;
    us.wait_remote_members(1).await;
    a.send(&data("room", "hi", "{}")).await;
    assert_eq!(field(&b.recv_op("data").await, "p"), Some("alice"));

    // The rogue node stays alone: nothing reaches it, nothing from it arrives.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(rogue.counter(&["mesh", "peers"]).await, 0);
    let (_, health) = rogue.health().await;
    assert_eq!(health["mesh"]["state"], "alone");
    assert_eq!(eu.counter(&["mesh", "peers"]).await, 1, "only us joined eu");
    r.expect_silence(QUIET).await;
    r.send(&data("room", "spoof", "{}")).await;
    // The rogue node itself works: its own member hears the spoof, so the
    // silence checks around it are about the mesh, not a dead node.
    assert_eq!(field(&mole.recv_op("data").await, "p"), Some("mallory"));
    // Only what comes from the rogue matters here: zenoh 1.10.2 was seen to
    // reset a fresh TLS link once, a few seconds after start, which shows
    // up as a peer_offline/peer_online of bob on eu.
    a.expect_nothing_from("mallory", QUIET).await;
    b.expect_nothing_from("mallory", QUIET).await;
    b.send(&data("room", "still here", "{}")).await;
    assert_eq!(field(&a.recv_op("data").await, "p"), Some("bob"));
}
