//! The system under test: three regions (eu, us, ap), each a prscd node
//! and, when `zenohd` is installed, a zenohd router (the router mesh of
//! `mesh/regions/`, its configs used as shipped with addresses moved);
//! otherwise nodes meshed peer to peer as `tests/wan.rs` does. Regions
//! reach each other only through `prscd-netem` relays, one process per
//! inter-region link, with the one-way delays of `tests/wan.rs`.
//!
//! As root, each region is a network namespace and the relays live in a
//! fourth, "wan", with forwarding off (the topology of `tests/wan.rs`):
//! region cuts are link and route changes there. Without root everything
//! runs on 127.0.0.1 and a cut freezes the relays (SIGSTOP: silent, both
//! ways); a one-way cut is then impossible and is made both ways (the
//! summary says so).
//!
//! Also the fault primitives; every one is undone by its heal.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _};

use crate::plan::LINKS;
use crate::procs::Proc;
use prscd_testkit::netns;

pub const REGIONS: [&str; 3] = ["eu", "us", "ap"];
/// The routers' addresses in the shipped `mesh/regions` configs.
const SHIPPED: [&str; 3] = ["127.0.0.11:7447", "127.0.0.12:7447", "127.0.0.13:7447"];
const NS_PREFIX: &str = "prscd-chaos-";
const ZENOH_PORT: u16 = 7447;
const CLIENT_PORT: u16 = 8443;

/// One-way delay of link `l` (eu-us 30 ms, eu-ap 140 ms, us-ap 70 ms).
fn delay(l: usize) -> Duration {
    Duration::from_millis([30, 140, 70][l])
}

fn link_of(a: usize, b: usize) -> usize {
    let (a, b) = (a.min(b), a.max(b));
    LINKS.iter().position(|&p| p == (a, b)).expect("a link")
}

fn region_addr(r: usize) -> String {
    format!("10.201.{}.2", r + 1)
}

fn wan_addr(r: usize) -> String {
    format!("10.201.{}.1", r + 1)
}

pub struct Binaries {
    pub prscd: PathBuf,
    pub netem: PathBuf,
    pub zenohd: Option<PathBuf>,
    /// The repository, for `mesh/regions`.
    pub repo: PathBuf,
    /// Run the zenohds as peers and the nodes as their clients.
    pub zenohd_peers: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Netns,
    Loopback,
}

/// Where clients of a region connect, and the node certificate to pin.
#[derive(Debug, Clone)]
pub struct Target {
    pub ns: Option<String>,
    pub addr: SocketAddr,
    pub cert: PathBuf,
}

pub struct Cluster {
    pub mode: Mode,
    pub routers_on: bool,
    zenohd_peers: bool,
    pub nodes: Vec<Proc>,
    pub routers: Vec<Proc>,
    /// One per link (see [`LINKS`]).
    pub relays: Vec<Proc>,
    pub targets: Vec<Target>,
    /// "wan" first, then the regions (netns mode).
    namespaces: Vec<String>,
    /// Loopback mode: ports of zenoh listeners (per region) and relays (per link).
    zports: [u16; 3],
    rports: [u16; 3],
}

impl Cluster {
    pub fn start(bins: &Binaries, dir: &Path, mode: Mode) -> anyhow::Result<Cluster> {
        let mut c = Cluster {
            mode,
            routers_on: bins.zenohd.is_some(),
            zenohd_peers: bins.zenohd_peers,
            nodes: Vec::new(),
            routers: Vec::new(),
            relays: Vec::new(),
            targets: Vec::new(),
            namespaces: Vec::new(),
            zports: [0; 3],
            rports: [0; 3],
        };
        match mode {
            Mode::Netns => c.make_namespaces()?,
            Mode::Loopback => {
                let mut ports = free_ports(9)?;
                for r in 0..3 {
                    c.zports[r] = ports.pop().unwrap();
                    c.rports[r] = ports.pop().unwrap();
                }
                for _ in 0..3 {
                    c.targets.push(Target {
                        ns: None,
                        addr: SocketAddr::from(([127, 0, 0, 1], ports.pop().unwrap())),
                        cert: PathBuf::new(),
                    });
                }
            }
        }
        // Relays: link (a, b) is dialled by a (a < b), as in tests/wan.rs.
        for (l, &(a, b)) in LINKS.iter().enumerate() {
            let (listen, target) = match mode {
                Mode::Netns => (
                    format!("{}:{}", wan_addr(a), 7450 + b),
                    format!("{}:{ZENOH_PORT}", region_addr(b)),
                ),
                Mode::Loopback => (
                    format!("127.0.0.1:{}", c.rports[l]),
                    format!("127.0.0.1:{}", c.zports[b]),
                ),
            };
            let name = format!("relay-{}-{}", REGIONS[a], REGIONS[b]);
            let spec = format!("{name}={listen},{target},{}us", delay(l).as_micros());
            let prefix = c.prefix_wan();
            let rdir = subdir(dir, &name)?;
            let mut p = Proc::new(
                &name,
                prefix,
                &bins.netem,
                vec!["--report-secs".into(), "0".into(), "--link".into(), spec],
                vec![],
                &rdir,
            );
            p.start()?;
            p.wait_line("netem: ready", Duration::from_secs(10))?;
            c.relays.push(p);
        }
        if let Some(zenohd) = &bins.zenohd {
            for (r, region) in REGIONS.iter().enumerate() {
                let rdir = subdir(dir, &format!("router-{region}"))?;
                let config = c.router_config(&bins.repo, r, &rdir)?;
                let mut p = Proc::new(
                    &format!("router-{region}"),
                    c.prefix_region(r),
                    zenohd,
                    vec!["-c".into(), config.display().to_string()],
                    vec![("RUST_LOG".into(), log_filter("CHAOS_ROUTER_LOG", "warn"))],
                    &rdir,
                );
                p.start()?;
                c.routers.push(p);
            }
        }
        for (r, region) in REGIONS.iter().enumerate() {
            let ndir = subdir(dir, &format!("node-{region}"))?;
            let env = c.node_env(bins, r, &ndir)?;
            let node = Proc::new(
                &format!("node-{region}"),
                c.prefix_region(r),
                &bins.prscd,
                vec![],
                env,
                &ndir,
            );
            c.nodes.push(node);
            c.start_node(r)?;
            c.targets[r].cert = ndir.join("dev-cert").join("cert.pem");
        }
        Ok(c)
    }

    fn make_namespaces(&mut self) -> anyhow::Result<()> {
        netns::remove_stale(NS_PREFIX, true);
        let prefix = format!("{NS_PREFIX}{}-", std::process::id());
        let wan = format!("{prefix}wan");
        netns::create(&wan)?;
        self.namespaces.push(wan.clone());
        // Routing between regions is exactly what "wan" must not do.
        netns::sysctl(&wan, "net/ipv4/ip_forward", "0")?;
        for (r, name) in REGIONS.iter().enumerate() {
            let ns = format!("{prefix}{name}");
            netns::create(&ns)?;
            self.namespaces.push(ns.clone());
            netns::ip(&[
                "link", "add", "name", name, "netns", &wan, "type", "veth", "peer", "name", "wan",
                "netns", &ns,
            ])?;
            netns::ip_in(
                &wan,
                &["addr", "add", &format!("{}/24", wan_addr(r)), "dev", name],
            )?;
            netns::ip_in(&wan, &["link", "set", name, "up"])?;
            netns::ip_in(
                &ns,
                &[
                    "addr",
                    "add",
                    &format!("{}/24", region_addr(r)),
                    "dev",
                    "wan",
                ],
            )?;
            netns::ip_in(&ns, &["link", "set", "wan", "up"])?;
            self.targets.push(Target {
                ns: Some(ns),
                addr: SocketAddr::from(([127, 0, 0, 1], CLIENT_PORT)),
                cert: PathBuf::new(),
            });
        }
        Ok(())
    }

    pub fn namespace_names(&self) -> String {
        self.namespaces.join(", ")
    }

    fn prefix_wan(&self) -> Vec<String> {
        self.namespaces
            .first()
            .map(|ns| netns::exec_prefix(ns))
            .unwrap_or_default()
    }

    fn prefix_region(&self, r: usize) -> Vec<String> {
        self.targets[r]
            .ns
            .as_deref()
            .map(netns::exec_prefix)
            .unwrap_or_default()
    }

    /// The zenoh endpoint on which region r's router (or p2p node) listens.
    fn zenoh_listen(&self, r: usize, router: bool) -> String {
        match (self.mode, router) {
            (Mode::Netns, true) => format!("tcp/0.0.0.0:{ZENOH_PORT}"),
            (Mode::Netns, false) => format!("tcp/{}:{ZENOH_PORT}", region_addr(r)),
            (Mode::Loopback, _) => format!("tcp/127.0.0.1:{}", self.zports[r]),
        }
    }

    /// The endpoint region a dials to reach region b (its relay).
    fn dial(&self, a: usize, b: usize) -> String {
        match self.mode {
            Mode::Netns => format!("tcp/{}:{}", wan_addr(a), 7450 + b),
            Mode::Loopback => format!("tcp/127.0.0.1:{}", self.rports[link_of(a, b)]),
        }
    }

    fn router_config(&self, repo: &Path, r: usize, dir: &Path) -> anyhow::Result<PathBuf> {
        let shipped = repo.join(format!("mesh/regions/router-{}.json5", REGIONS[r]));
        let mut text = std::fs::read_to_string(&shipped)
            .with_context(|| format!("read {}", shipped.display()))?;
        for (b, addr) in SHIPPED.iter().enumerate() {
            let to = if b == r {
                self.zenoh_listen(r, true)
            } else {
                self.dial(r, b)
            };
            text = text.replace(&format!("tcp/{addr}"), &to);
        }
        if self.mode == Mode::Netns {
            // The inter-router links arrive over the region's `wan` veth.
            let lo = r#"interfaces: ["lo"]"#;
            if !text.contains(lo) {
                bail!("{}: no {lo} to extend", shipped.display());
            }
            text = text.replace(lo, r#"interfaces: ["lo", "wan"]"#);
        }
        if self.zenohd_peers {
            text = switch_mode(text, "router", "peer")?;
        }
        let path = dir.join("router.json5");
        std::fs::write(&path, text)?;
        Ok(path)
    }

    fn node_env(
        &self,
        bins: &Binaries,
        r: usize,
        dir: &Path,
    ) -> anyhow::Result<Vec<(String, String)>> {
        let addr = self.targets[r].addr;
        let mut env: Vec<(String, String)> = [
            ("MESH_ID", REGIONS[r].to_owned()),
            ("HOST", addr.ip().to_string()),
            ("PORT", addr.port().to_string()),
            ("DEV_CERT_DIR", dir.join("dev-cert").display().to_string()),
            // Leaves are immediate: a departure is one peer_offline, at once.
            ("PRESENCE_GRACE_MS", "0".to_owned()),
            ("DRAIN_GRACE_MS", "300".to_owned()),
            ("DRAIN_TIMEOUT_MS", "3000".to_owned()),
            ("RUST_BACKTRACE", "1".to_owned()),
            ("RUST_LOG", log_filter("CHAOS_NODE_LOG", "")),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        if self.routers_on {
            let shipped = bins
                .repo
                .join(format!("mesh/regions/node-{}.json5", REGIONS[r]));
            let text = std::fs::read_to_string(&shipped)
                .with_context(|| format!("read {}", shipped.display()))?;
            let router = match self.mode {
                Mode::Netns => format!("tcp/127.0.0.1:{ZENOH_PORT}"),
                Mode::Loopback => format!("tcp/127.0.0.1:{}", self.zports[r]),
            };
            let needle = format!("tcp/{}", SHIPPED[r]);
            if !text.contains(&needle) {
                bail!("{}: no {needle}", shipped.display());
            }
            let mut text = text.replace(&needle, &router);
            if self.zenohd_peers {
                text = switch_mode(text, "peer", "client")?;
            }
            let path = dir.join("node.json5");
            std::fs::write(&path, text)?;
            env.push(("ZENOH_CONFIG".into(), path.display().to_string()));
        } else {
            let connect: Vec<String> = (r + 1..3).map(|b| self.dial(r, b)).collect();
            env.push(("ZENOH_LISTEN".into(), self.zenoh_listen(r, false)));
            env.push(("ZENOH_CONNECT".into(), connect.join(",")));
            // Namespaces of this run only: no way in from outside.
            env.push(("MESH_ALLOW_UNAUTHENTICATED".into(), "true".into()));
        }
        Ok(env)
    }

    /// How the regions mesh, for the run's header and summary.
    pub fn layout(&self) -> &'static str {
        match (self.routers_on, self.zenohd_peers) {
            (true, false) => "a zenohd router per region (mesh/regions configs)",
            (true, true) => {
                "a zenohd per region as a peer, the nodes its clients (mesh/regions configs, modes switched)"
            }
            (false, _) => "nodes meshed peer to peer",
        }
    }

    pub fn start_node(&mut self, r: usize) -> anyhow::Result<()> {
        let node = &mut self.nodes[r];
        node.start()?;
        node.wait_line("ready: port=", Duration::from_secs(30))?;
        Ok(())
    }

    /// Region r's WAN link: `up` false cuts it both ways, silently.
    pub fn region_link(&mut self, r: usize, up: bool) -> anyhow::Result<()> {
        match self.mode {
            Mode::Netns => netns::ip_in(
                &self.namespaces[0],
                &["link", "set", REGIONS[r], if up { "up" } else { "down" }],
            ),
            Mode::Loopback => {
                for (l, &(a, b)) in LINKS.iter().enumerate() {
                    if a == r || b == r {
                        self.link(l, up);
                    }
                }
                Ok(())
            }
        }
    }

    /// Region r's WAN link drops packets one way (`inbound`: towards r).
    /// Loopback: both ways (see the module comment). Returns what was done.
    pub fn one_way(&mut self, r: usize, inbound: bool, cut: bool) -> anyhow::Result<&'static str> {
        match self.mode {
            Mode::Netns => {
                let verb = if cut { "add" } else { "del" };
                // A /32 blackhole beats the connected /24 route.
                let (ns, dest) = if inbound {
                    (&self.namespaces[0], region_addr(r))
                } else {
                    (&self.namespaces[1 + r], wan_addr(r))
                };
                netns::ip_in(ns, &["route", verb, "blackhole", &format!("{dest}/32")])?;
                Ok("blackhole route")
            }
            Mode::Loopback => {
                self.region_link(r, !cut)?;
                Ok("loopback: both ways")
            }
        }
    }

    /// Link l up or down (its relay frozen: silent, both ways).
    pub fn link(&mut self, l: usize, up: bool) {
        if up {
            self.relays[l].cont();
        } else {
            self.relays[l].stop();
        }
    }

    /// Every managed process: (role, region or link name, proc).
    pub fn procs_mut(&mut self) -> impl Iterator<Item = &mut Proc> {
        self.nodes
            .iter_mut()
            .chain(self.routers.iter_mut())
            .chain(self.relays.iter_mut())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.nodes.clear();
        self.routers.clear();
        self.relays.clear();
        for ns in self.namespaces.drain(..).rev() {
            netns::remove(&ns);
        }
    }
}

/// `RUST_LOG` of a process: `var` if set (to dig into a failing seed),
/// else `default` (empty: the node's own default).
fn log_filter(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.to_owned())
}

/// A shipped config's `mode: "from"` made `mode: "to"`.
fn switch_mode(text: String, from: &str, to: &str) -> anyhow::Result<String> {
    let needle = format!("mode: \"{from}\"");
    if !text.contains(&needle) {
        bail!("no {needle} in a shipped config");
    }
    Ok(text.replace(&needle, &format!("mode: \"{to}\"")))
}

fn subdir(dir: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let d = dir.join(name);
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

/// `n` TCP (and UDP) ports free on 127.0.0.1 now, below the ephemeral
/// range (a port bind(0) handed out could be taken by an outgoing
/// connection before the process that gets it binds it).
fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let seed = std::process::id().wrapping_mul(2_654_435_761);
    let mut ports = Vec::new();
    for i in 0..2000u32 {
        let port = 20_000 + (seed.wrapping_add(i.wrapping_mul(7_919)) % 12_000) as u16;
        if ports.contains(&port) {
            continue;
        }
        let tcp = std::net::TcpListener::bind(("127.0.0.1", port));
        let udp = std::net::UdpSocket::bind(("127.0.0.1", port));
        if tcp.is_ok() && udp.is_ok() {
            ports.push(port);
            if ports.len() == n {
                return Ok(ports);
            }
        }
    }
    bail!("fewer than {n} free ports in 20000..32000")
}
