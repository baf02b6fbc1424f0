//! The shipped zenoh configs on real processes: certificates by role from
//! `mesh/certs.sh`, `zenohd` routers and prscd nodes started from
//! `mesh/regions/tls/*.json5` (their fixed 127.0.0.1x:7447 addresses moved
//! to free loopback ports, so tests run beside `mesh/three-regions.sh`), and
//! the Python zenoh client `zenoh_probe.py` to see what the mesh lets a
//! participant do. What the tests check is what ships.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::{free_port, installed_tool, scratch_dir, Node, SILENT_CLIENTS};

pub const REGIONS: [&str; 3] = ["eu", "us", "ap"];
/// The shipped router addresses, per region, in `mesh/regions`.
const SHIPPED: [&str; 3] = ["127.0.0.11:7447", "127.0.0.12:7447", "127.0.0.13:7447"];

pub fn zenohd() -> Option<PathBuf> {
    installed_tool(
        "bin/zenohd",
        "PRSCD_REQUIRE_MESH_TOOLS",
        "mesh/install-zenohd.sh",
    )
}

pub fn python() -> Option<PathBuf> {
    installed_tool(
        "venv/bin/python",
        "PRSCD_REQUIRE_MESH_TOOLS",
        "mesh/install-python.sh",
    )
}

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// Runs `mesh/certs.sh` with `args` (roles, e.g. `node:eu`).
pub fn certs(args: &[&str]) {
    let out = Command::new("bash")
        .arg(repo("mesh/certs.sh"))
        .args(args)
        .output()
        .expect("mesh/certs.sh");
    assert!(
        out.status.success(),
        "mesh/certs.sh {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A mesh of the shipped TLS configs: the CA and every role's certificate
/// in `certs`, the routers' loopback ports.
pub struct Shipped {
    /// `mesh/regions/tls` or, plaintext, `mesh/regions`.
    base: &'static str,
    pub dir: PathBuf,
    pub certs: PathBuf,
    pub ports: [u16; 3],
}

/// `zenohd -c config`, returned once it accepts TCP on `port`.
pub fn spawn_zenohd(bin: &Path, config: &Path, port: u16, name: &str) -> Child {
    let child = Command::new(bin)
        .arg("-c")
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("zenohd");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "zenohd {name} did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

/// A zenoh client session to a node listening on loopback `port`.
pub async fn zenoh_client(port: u16) -> zenoh::Session {
    let mut config = zenoh::Config::default();
    for (key, value) in [
        ("mode", r#""client""#.to_owned()),
        ("connect/endpoints", format!(r#"["tcp/127.0.0.1:{port}"]"#)),
        ("scouting/multicast/enabled", "false".to_owned()),
    ] {
        config.insert_json5(key, &value).unwrap();
    }
    zenoh::open(config).await.unwrap()
}

/// A relayed Signalling in channel `room` as a node or backend would
/// publish it.
pub fn relayed(t: &str, op: Option<&str>, p: &str, mesh: Option<&str>) -> Vec<u8> {
    let mut pairs = vec![("t", t.into()), ("c", "room".into()), ("p", p.into())];
    if let Some(op) = op {
        pairs.push(("op", op.into()));
    }
    if let Some(mesh) = mesh {
        pairs.push(("mesh", mesh.into()));
    }
    super::msg(pairs)
}

impl Shipped {
    /// Issues node and router certificates for the three regions and
    /// `backend-dev` (app `dev`, as the shipped ACLs name it).
    pub fn new(name: &str) -> Shipped {
        let dir = scratch_dir(name);
        let certs_dir = dir.join("certs");
        let c = certs_dir.to_str().unwrap();
        certs(&[
            c,
            "node:eu",
            "node:us",
            "node:ap",
            "router:eu",
            "router:us",
            "router:ap",
            "backend:dev:dev",
        ]);
        Shipped {
            base: "mesh/regions/tls",
            dir,
            certs: certs_dir,
            ports: [free_port(), free_port(), free_port()],
        }
    }

    /// The plaintext loopback configs (`mesh/regions`): no certificates.
    pub fn plaintext(name: &str) -> Shipped {
        let dir = scratch_dir(name);
        Shipped {
            base: "mesh/regions",
            certs: dir.join("no-certs"),
            dir,
            ports: [free_port(), free_port(), free_port()],
        }
    }

    /// `<base>/<file>` with this mesh's ports and certificates.
    pub fn config(&self, file: &str) -> PathBuf {
        let mut text = std::fs::read_to_string(repo(&format!("{}/{file}", self.base)))
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        for (shipped, port) in SHIPPED.iter().zip(self.ports) {
            text = text.replace(shipped, &format!("127.0.0.1:{port}"));
        }
        text = text.replace("@CERT_DIR@", self.certs.to_str().unwrap());
        let path = self.dir.join(file);
        std::fs::write(&path, text).unwrap();
        path
    }

    /// `mesh/p2p/tls/node.json5` for node `node-<mesh_id>` of this mesh.
    pub fn p2p_config(&self, mesh_id: &str) -> PathBuf {
        let text = std::fs::read_to_string(repo("mesh/p2p/tls/node.json5"))
            .unwrap()
            .replace("@CERT_DIR@", self.certs.to_str().unwrap())
            .replace("@NAME@", &format!("node-{mesh_id}"));
        let path = self.dir.join(format!("p2p-{mesh_id}.json5"));
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Region `r`'s router, listening once this returns.
    pub fn router(&self, zenohd: &Path, r: usize) -> Router {
        let config = self.config(&format!("router-{}.json5", REGIONS[r]));
        let child = spawn_zenohd(zenohd, &config, self.ports[r], REGIONS[r]);
        Router(Some(child))
    }

    /// Region `r`'s node (apps: `pk1` → dev, `pk2` → app2), behind its router.
    pub fn node(&self, r: usize) -> Node {
        self.node_with(r, &[])
    }

    /// As [`Shipped::node`], with `extra` added or overriding.
    pub fn node_with(&self, r: usize, extra: &[(&str, &str)]) -> Node {
        let config = self.config(&format!("node-{}.json5", REGIONS[r]));
        let mut env = vec![
            SILENT_CLIENTS,
            ("MESH_ID", REGIONS[r]),
            ("APPS", "pk1:dev,pk2:app2"),
            ("APP_TOKEN_SECRETS", ""),
            ("ZENOH_CONFIG", config.to_str().unwrap()),
        ];
        env.extend_from_slice(extra);
        Node::start_with(&env)
    }

    /// A zenoh client config for the probe: `endpoint`, and over TLS the
    /// certificate `cert` (in `cert_dir`) and this mesh's CA.
    pub fn client_config(
        &self,
        name: &str,
        endpoint: &str,
        cert: Option<(&Path, &str)>,
    ) -> PathBuf {
        let tls = cert.map_or(String::new(), |(dir, cert)| {
            let (d, ca) = (dir.display(), self.certs.display());
            format!(
                r#"transport: {{ link: {{ tls: {{ root_ca_certificate: "{ca}/ca.pem", connect_certificate: "{d}/{cert}.pem", connect_private_key: "{d}/{cert}.key", enable_mtls: true, verify_name_on_connect: true }} }} }},"#
            )
        });
        let path = self.dir.join(format!("{name}.json5"));
        std::fs::write(
            &path,
            format!(
                r#"{{ mode: "client", connect: {{ endpoints: ["{endpoint}"], timeout_ms: 3000 }}, scouting: {{ multicast: {{ enabled: false }} }}, {tls} }}"#
            ),
        )
        .unwrap();
        path
    }
}

/// A `zenohd`, killed when dropped.
pub struct Router(Option<Child>);

impl Router {
    pub fn kill(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What `zenoh_probe.py` did, one JSON object per event.
pub struct Probe {
    child: Child,
    events: mpsc::Receiver<serde_json::Value>,
    pub seen: Vec<serde_json::Value>,
}

impl Probe {
    /// Starts the probe with `config` and its arguments (see the script).
    pub fn start(python: &Path, config: &Path, args: &[String]) -> Probe {
        let mut child = Command::new(python)
            .arg(repo("tests/common/zenoh_probe.py"))
            .arg(config)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python");
        let (tx, events) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str(&line) {
                    let _ = tx.send(v);
                }
            }
        });
        Probe {
            child,
            events,
            seen: Vec::new(),
        }
    }

    /// Waits for an event named `event`; `None` if the probe ended first.
    pub fn wait(&mut self, event: &str, within: Duration) -> Option<serde_json::Value> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let v = self.events.recv_timeout(left).ok()?;
            self.seen.push(v.clone());
            if v["event"] == event {
                return Some(v);
            }
        }
    }

    /// Every event up to `done` (bounded by `within`).
    pub fn finish(&mut self, within: Duration) {
        let done = self.wait("done", within);
        assert!(done.is_some(), "probe did not finish: {:?}", self.seen);
    }

    /// The events `event` whose `key` is `key`.
    pub fn count(&self, event: &str, key: &str) -> usize {
        self.seen
            .iter()
            .filter(|v| v["event"] == event && v["key"] == key)
            .count()
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
