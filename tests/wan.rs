//! A WAN on one machine: three regions (eu, us, ap) as Linux network
//! namespaces, each with a real prscd node (zenoh peer mode) and real
//! clients, joined only through a fourth namespace, "wan", where
//! `prscd-netem` relays the inter-region zenoh links with one-way delays
//! (eu–us 30 ms, us–ap 70 ms, eu–ap 140 ms). IP forwarding is off in "wan"
//! and the regions have no route to each other: the delayed relays are the
//! only way between them. Topology and numbers: deploy/wan/README.md.
//!
//! It measures and prints: (a) the one-way latency of data messages for
//! every ordered pair of regions, and its overhead over the configured
//! delay; (b) how fast presence (join → peer_online, leave → peer_offline)
//! crosses regions; (c) how fast the other regions see a region's peers go
//! offline when its links are cut silently; (d) that a client of the cut
//! region that reconnects to another region's node appears once, and that
//! nothing stale is left or comes back when the cut heals.
//!
//! Needs root and iproute2; otherwise skipped with a message, or failed
//! when `PRSCD_REQUIRE_NETNS` is set (as `scripts/test` sets it).

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::netns::{self, Netns};
use common::*;
use rmpv::Value;

const REGIONS: [&str; 3] = ["eu", "us", "ap"];
const EU: usize = 0;
const US: usize = 1;
const AP: usize = 2;
const ROOM: &str = "room";
const NS_PREFIX: &str = "prscd-wan-";
const ZENOH_PORT: u16 = 7447;
/// Data messages per sender in (a), and the gap between them.
const MESSAGES: usize = 100;
const GAP: Duration = Duration::from_millis(5);
/// The documented bound for a cut region's peers to go offline elsewhere.
const OFFLINE_BOUND: Duration = Duration::from_secs(3);

/// One-way delay between two regions, both directions.
fn delay(a: usize, b: usize) -> Duration {
    Duration::from_millis(match (a.min(b), a.max(b)) {
        (EU, US) => 30,
        (US, AP) => 70,
        (EU, AP) => 140,
        _ => 0,
    })
}

/// Region r's end of its link to "wan" is 10.201.(r+1).2, the wan end .1.
fn region_addr(r: usize) -> String {
    format!("10.201.{}.2", r + 1)
}

fn wan_addr(r: usize) -> String {
    format!("10.201.{}.1", r + 1)
}

/// The relay in "wan" that region `from` dials to reach region `to`.
fn relay_port(to: usize) -> u16 {
    7450 + to as u16
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// This build's `prscd-netem`, or `PRSCD_WAN_NETEM` (e.g. a release build).
fn netem_binary() -> String {
    std::env::var("PRSCD_WAN_NETEM")
        .unwrap_or_else(|_| tool_binary("prscd-netem").display().to_string())
}

/// The prefix that runs a node in `ns`: this build's `prscd`, or the binary
/// `PRSCD_WAN_PRSCD` names (e.g. a release build, for release numbers):
/// `sh -c 'exec BIN' sh <this build's prscd>` runs BIN in the same process.
fn node_wrapper(ns: &Netns) -> Vec<String> {
    let mut wrapper = ns.exec_prefix();
    if let Ok(bin) = std::env::var("PRSCD_WAN_PRSCD") {
        assert!(!bin.contains('\''), "PRSCD_WAN_PRSCD: no quotes, please");
        wrapper.extend([
            "sh".to_owned(),
            "-c".to_owned(),
            format!("exec '{bin}'"),
            "sh".to_owned(),
        ]);
    }
    wrapper
}

/// `prscd-netem` in the wan namespace, its stderr kept.
struct Netem {
    child: Child,
    logs: Arc<Mutex<Vec<String>>>,
}

impl Netem {
    fn start(wan: &Netns, links: &[String]) -> Netem {
        let prefix = wan.exec_prefix();
        let mut cmd = Command::new(&prefix[0]);
        cmd.args(&prefix[1..])
            .arg(netem_binary())
            .args(["--report-secs", "0"]);
        for link in links {
            cmd.args(["--link", link]);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn prscd-netem");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = logs.clone();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if std::env::var_os("PRSCD_TEST_ECHO").is_some() {
                    eprintln!("[netem] {line}");
                }
                sink.lock().unwrap().push(line);
            }
        });
        let mut netem = Netem { child, logs };
        let deadline = Instant::now() + Duration::from_secs(10);
        while netem.count("netem: ready") == 0 {
            let exited = netem.child.try_wait().unwrap();
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "prscd-netem not ready ({exited:?}):\n{}",
                netem.logs.lock().unwrap().join("\n")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        netem
    }

    fn count(&self, needle: &str) -> usize {
        self.logs
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    fn wait_lines(&self, needle: &str, n: usize, within: Duration) -> Vec<String> {
        let deadline = Instant::now() + within;
        loop {
            let lines: Vec<String> = self
                .logs
                .lock()
                .unwrap()
                .iter()
                .filter(|l| l.contains(needle))
                .cloned()
                .collect();
            if lines.len() >= n {
                return lines;
            }
            assert!(
                Instant::now() < deadline,
                "prscd-netem: fewer than {n} lines with {needle:?} within {within:?}:\n{}",
                self.logs.lock().unwrap().join("\n")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Asks for a report (SIGUSR1) and returns its lines.
    fn report(&self, links: usize) -> Vec<String> {
        let before = self.count("netem: report");
        // SAFETY: kill(2) of our own child (ip netns exec execs in place).
        assert_eq!(
            unsafe { libc::kill(self.child.id() as i32, libc::SIGUSR1) },
            0
        );
        let lines = self.wait_lines("netem: report", before + 2 * links, WAIT);
        lines[before..before + 2 * links].to_vec()
    }
}

impl Drop for Netem {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The simulated WAN. Fields drop in order: processes, then namespaces.
struct Wan {
    nodes: Vec<Node>,
    netem: Netem,
    regions: Vec<Netns>,
    wan: Netns,
}

impl Wan {
    /// `None`: namespaces are unusable here (and not required).
    fn build() -> Option<Wan> {
        netns::usable("PRSCD_REQUIRE_NETNS")?;
        netns::remove_stale(NS_PREFIX);
        let prefix = format!("{NS_PREFIX}{}-", std::process::id());
        // Left over by an earlier run that had the same pid: ours to remove.
        for name in netns::list() {
            if name.starts_with(&prefix) {
                drop(Netns::adopt(name));
            }
        }
        let wan_name = format!("{prefix}wan");
        if let Err(e) = netns::ip_try(&["netns", "add", &wan_name]) {
            assert!(
                std::env::var_os("PRSCD_REQUIRE_NETNS").is_none(),
                "PRSCD_REQUIRE_NETNS is set but a namespace cannot be made: {e}"
            );
            eprintln!("SKIPPED: cannot create a network namespace: {e}");
            return None;
        }
        let wan = Netns::adopt(wan_name);
        wan.ip(&["link", "set", "lo", "up"]);
        // Routing between regions is exactly what "wan" must not do.
        wan.sysctl("net/ipv4/ip_forward", "0");
        wan.sysctl("net/ipv6/conf/all/forwarding", "0");
        let mut regions = Vec::new();
        for (r, name) in REGIONS.iter().enumerate() {
            let ns = Netns::create(&format!("{prefix}{name}"));
            // veth: `<region>` in wan <-> `wan` in the region.
            netns::ip(&[
                "link", "add", "name", name, "netns", &wan.name, "type", "veth", "peer", "name",
                "wan", "netns", &ns.name,
            ]);
            wan.ip(&["addr", "add", &format!("{}/24", wan_addr(r)), "dev", name]);
            wan.ip(&["link", "set", name, "up"]);
            ns.ip(&[
                "addr",
                "add",
                &format!("{}/24", region_addr(r)),
                "dev",
                "wan",
            ]);
            ns.ip(&["link", "set", "wan", "up"]);
            regions.push(ns);
        }

        // One relay per pair, dialled by the first region of the pair (each
        // zenoh link has one dialling side: eu dials us and ap, us dials ap).
        let mut links = Vec::new();
        for (a, from) in REGIONS.iter().enumerate() {
            for (b, to) in REGIONS.iter().enumerate().skip(a + 1) {
                links.push(format!(
                    "{from}-{to}={}:{},{}:{ZENOH_PORT},{}us",
                    wan_addr(a),
                    relay_port(b),
                    region_addr(b),
                    delay(a, b).as_micros()
                ));
            }
        }
        let netem = Netem::start(&wan, &links);

        let mut nodes = Vec::new();
        for r in (0..3).rev() {
            let listen = format!("tcp/{}:{ZENOH_PORT}", region_addr(r));
            let connect: Vec<String> = (r + 1..3)
                .map(|b| format!("tcp/{}:{}", wan_addr(r), relay_port(b)))
                .collect();
            let connect = connect.join(",");
            nodes.push(Node::start_in(
                &node_wrapper(&regions[r]),
                &[
                    SILENT_CLIENTS,
                    ("MESH_ID", REGIONS[r]),
                    ("ZENOH_LISTEN", &listen),
                    ("ZENOH_CONNECT", &connect),
                    // Namespaces of this test only, no way in from outside;
                    // the delays measured are those of plaintext zenoh.
                    ("MESH_ALLOW_UNAUTHENTICATED", "true"),
                ],
            ));
        }
        nodes.reverse();
        Some(Wan {
            nodes,
            netem,
            regions,
            wan,
        })
    }

    fn port(&self, r: usize) -> u16 {
        self.nodes[r].port
    }

    async fn health(&self, r: usize) -> serde_json::Value {
        self.regions[r].health(self.port(r)).await
    }

    /// Waits until region r's node's `/health` mesh section satisfies `ok`.
    async fn wait_mesh(
        &self,
        r: usize,
        within: Duration,
        what: &str,
        ok: impl Fn(&serde_json::Value) -> bool,
    ) {
        let deadline = Instant::now() + within;
        loop {
            let health = self.health(r).await;
            if ok(&health["mesh"]) {
                return;
            }
            if Instant::now() > deadline {
                self.dump_logs();
                panic!(
                    "{}: {what} not reached within {within:?}: {}",
                    REGIONS[r], health["mesh"]
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The end of every process's log, for a failure's diagnosis.
    fn dump_logs(&self) {
        let tail = |lines: Vec<String>| {
            let from = lines.len().saturating_sub(60);
            lines[from..].join("\n")
        };
        eprintln!(
            "--- prscd-netem log:\n{}",
            tail(self.netem.logs.lock().unwrap().clone())
        );
        for (r, node) in self.nodes.iter().enumerate() {
            eprintln!("--- node {} log:\n{}", REGIONS[r], tail(node.logs()));
        }
    }

    async fn wait_remote_members(&self, r: usize, n: u64, within: Duration) {
        self.wait_mesh(r, within, &format!("remote_members == {n}"), |m| {
            m["remote_members"] == n
        })
        .await;
    }

    async fn client(&self, r: usize, id: &str) -> Client {
        self.regions[r].ws(self.port(r), KEY1, id).await
    }
}

/// Test clients by index, lent to concurrent tasks and given back.
struct Crowd {
    clients: Vec<Option<Client>>,
    region: Vec<usize>,
}

impl Crowd {
    fn take(&mut self, i: usize) -> Client {
        self.clients[i].take().expect("client lent out")
    }

    fn put(&mut self, i: usize, c: Client) {
        self.clients[i] = Some(c);
    }

    fn get(&mut self, i: usize) -> &mut Client {
        self.clients[i].as_mut().expect("client lent out")
    }

    fn id(&self, i: usize) -> String {
        self.clients[i]
            .as_ref()
            .expect("client lent out")
            .id
            .clone()
    }
}

/// What a client waits for: a message with this op (or `data`), about `p`,
/// entered on node `mesh`.
#[derive(Clone, Debug, PartialEq)]
struct Expect {
    op: &'static str,
    p: String,
    mesh: &'static str,
}

fn expect(op: &'static str, p: &str, mesh: &'static str) -> Expect {
    Expect {
        op,
        p: p.to_owned(),
        mesh,
    }
}

fn matches(v: &Value, e: &Expect) -> bool {
    let op = if field(v, "t") == Some("data") {
        Some("data")
    } else {
        field(v, "op")
    };
    op == Some(e.op) && field(v, "p") == Some(e.p.as_str()) && field(v, "mesh") == Some(e.mesh)
}

/// Every listed client waits, all at once, until it has seen each of its
/// expected messages; returns, per client, when (since `epoch`) each one
/// arrived and every other message it read meanwhile.
async fn watch(
    crowd: &mut Crowd,
    waits: Vec<(usize, Vec<Expect>)>,
    epoch: Instant,
    within: Duration,
) -> HashMap<usize, (Vec<Duration>, Vec<Value>)> {
    let mut tasks = Vec::new();
    for (i, expected) in waits {
        let mut client = crowd.take(i);
        tasks.push(tokio::spawn(async move {
            let deadline = Instant::now() + within;
            let mut seen: Vec<Option<Duration>> = vec![None; expected.len()];
            let mut others = Vec::new();
            while seen.iter().any(Option::is_none) {
                let left = deadline.saturating_duration_since(Instant::now());
                let Some(raw) = client.recv_raw(left).await else {
                    let missing: Vec<_> = expected
                        .iter()
                        .zip(&seen)
                        .filter(|(_, s)| s.is_none())
                        .map(|(e, _)| e)
                        .collect();
                    panic!(
                        "{}: within {within:?}, missing {missing:?}; got meanwhile {others:?}",
                        client.id
                    );
                };
                let at = epoch.elapsed();
                let v = decode(&raw);
                match expected
                    .iter()
                    .zip(&seen)
                    .position(|(e, s)| s.is_none() && matches(&v, e))
                {
                    Some(k) => seen[k] = Some(at),
                    None => others.push(v),
                }
            }
            (
                i,
                client,
                seen.into_iter().map(Option::unwrap).collect(),
                others,
            )
        }));
    }
    let mut out = HashMap::new();
    for t in tasks {
        let (i, client, seen, others) = t.await.expect("watch task");
        crowd.put(i, client);
        out.insert(i, (seen, others));
    }
    out
}

/// Reads on every listed client for `quiet`; panics if a message `bad`
/// arrives. Returns what they read.
async fn quiet_except(
    crowd: &mut Crowd,
    who: &[usize],
    quiet: Duration,
    bad: fn(&Value) -> bool,
) -> Vec<Value> {
    let mut tasks = Vec::new();
    for &i in who {
        let mut client = crowd.take(i);
        tasks.push(tokio::spawn(async move {
            let deadline = Instant::now() + quiet;
            let mut got = Vec::new();
            while let Some(raw) = client
                .recv_raw(deadline.saturating_duration_since(Instant::now()))
                .await
            {
                let v = decode(&raw);
                assert!(!bad(&v), "{}: unexpected {v}", client.id);
                got.push(v);
            }
            (i, client, got)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        let (i, client, got) = t.await.expect("quiet task");
        crowd.put(i, client);
        all.extend(got);
    }
    all
}

/// A data message carrying its sequence number and send time.
fn stamped(seq: u32, sent: Duration) -> Vec<u8> {
    let mut pl = seq.to_be_bytes().to_vec();
    pl.extend_from_slice(&(sent.as_nanos() as u64).to_be_bytes());
    msg(vec![
        ("t", Value::from("data")),
        ("c", Value::from(ROOM)),
        ("pl", Value::Binary(pl)),
    ])
}

/// Receives `n` stamped messages from `from`, in order, once each; returns
/// their one-way latencies.
async fn receive_stamped(
    mut client: Client,
    from: String,
    n: usize,
    epoch: Instant,
    within: Duration,
) -> (Client, Vec<Duration>) {
    let deadline = Instant::now() + within;
    let mut latencies = Vec::with_capacity(n);
    while latencies.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(raw) = client.recv_raw(left).await else {
            panic!(
                "{}: {} of {n} messages from {from} within {within:?}",
                client.id,
                latencies.len()
            );
        };
        let at = epoch.elapsed();
        let v = decode(&raw);
        if field(&v, "t") != Some("data") || field(&v, "p") != Some(from.as_str()) {
            continue;
        }
        let pl = bin(&v, "pl").expect("pl");
        let seq = u32::from_be_bytes(pl[..4].try_into().unwrap());
        let sent = Duration::from_nanos(u64::from_be_bytes(pl[4..12].try_into().unwrap()));
        assert_eq!(
            seq as usize,
            latencies.len(),
            "{}: order from {from}",
            client.id
        );
        latencies.push(at - sent);
    }
    (client, latencies)
}

struct Dist(Vec<Duration>);

impl Dist {
    fn new(mut v: Vec<Duration>) -> Dist {
        v.sort();
        Dist(v)
    }

    fn q(&self, q: f64) -> Duration {
        let n = self.0.len();
        self.0[((q * n as f64).ceil() as usize).clamp(1, n) - 1]
    }

    fn min(&self) -> Duration {
        self.0[0]
    }

    fn max(&self) -> Duration {
        *self.0.last().unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_regions_over_a_delayed_wan() {
    let started = Instant::now();
    let Some(wan) = Wan::build() else { return };
    let epoch = Instant::now();
    eprintln!(
        "wan: namespaces {}{{wan,eu,us,ap}}, one-way delays eu-us {} ms, us-ap {} ms, eu-ap {} ms",
        wan.wan.name.trim_end_matches("wan"),
        delay(EU, US).as_millis(),
        delay(US, AP).as_millis(),
        delay(EU, AP).as_millis()
    );
    eprintln!(
        "wan: prscd {}, prscd-netem {}",
        std::env::var("PRSCD_WAN_PRSCD").unwrap_or_else(|_| binary().to_owned()),
        netem_binary()
    );

    // Isolation: a region reaches another only through the relays in "wan".
    for (from, to) in [(EU, US), (US, AP), (AP, EU)] {
        let direct = format!("{}:{ZENOH_PORT}", region_addr(to)).parse().unwrap();
        let r = wan.regions[from].connect_std(direct, Duration::from_secs(1));
        assert!(
            r.is_err(),
            "{} reached {}'s node directly",
            REGIONS[from],
            REGIONS[to]
        );
    }

    for r in 0..3 {
        wan.wait_mesh(r, Duration::from_secs(15), "2 zenoh peers", |m| {
            m["peers"] == 2 && m["state"] == "connected"
        })
        .await;
    }
    eprintln!(
        "wan: nodes up and meshed {} ms after start (full mesh of 3 peers over the relays)",
        started.elapsed().as_millis()
    );

    // alice@eu, bob@us, carol@ap, dave@ap, all in one channel.
    let names = ["alice", "bob", "carol", "dave"];
    let home = vec![EU, US, AP, AP];
    let mut crowd = Crowd {
        clients: Vec::new(),
        region: home.clone(),
    };
    for (i, name) in names.iter().enumerate() {
        let mut c = wan.client(home[i], name).await;
        let ack = c.join(ROOM).await;
        assert_eq!(field(&ack, "mesh"), Some(REGIONS[home[i]]));
        crowd.clients.push(Some(c));
    }
    for (r, n) in [(EU, 3), (US, 3), (AP, 2)] {
        wan.wait_remote_members(r, n, WAIT).await;
    }

    // (a) One-way latency of data messages, per ordered pair of regions.
    let mut by_pair: HashMap<(usize, usize), Vec<Duration>> = HashMap::new();
    for sender in 0..3 {
        let from = crowd.id(sender);
        let mut tasks = Vec::new();
        for receiver in (0..names.len()).filter(|&i| i != sender) {
            let client = crowd.take(receiver);
            let from = from.clone();
            tasks.push(tokio::spawn(async move {
                let (client, lat) =
                    receive_stamped(client, from, MESSAGES, epoch, Duration::from_secs(10)).await;
                (receiver, client, lat)
            }));
        }
        tokio::time::sleep(Duration::from_millis(50)).await; // receivers waiting
        for seq in 0..MESSAGES {
            let frame = stamped(seq as u32, epoch.elapsed());
            crowd.get(sender).send(&frame).await;
            tokio::time::sleep(GAP).await;
        }
        for t in tasks {
            let (receiver, client, lat) = t.await.expect("receiver");
            crowd.put(receiver, client);
            by_pair
                .entry((crowd.region[sender], crowd.region[receiver]))
                .or_default()
                .extend(lat);
        }
    }
    eprintln!(
        "(a) one-way latency of data messages ({MESSAGES} per sender, one every {} ms; \
         client WS -> node -> zenoh -> prscd-netem -> node -> client WS):",
        GAP.as_millis()
    );
    let mut pairs: Vec<_> = by_pair.into_iter().collect();
    pairs.sort_by_key(|((a, b), _)| (delay(*a, *b), *a, *b));
    for ((a, b), lat) in pairs {
        let d = Dist::new(lat);
        let configured = delay(a, b);
        let over = |x: Duration| ms(x) - ms(configured);
        eprintln!(
            "    {}->{} delay {:>3} ms  n={:<3} min {:7.2}  p50 {:7.2}  p99 {:7.2}  max {:7.2} ms  | overhead min {:5.2}  p50 {:5.2}  p99 {:5.2}  max {:5.2} ms",
            REGIONS[a],
            REGIONS[b],
            configured.as_millis(),
            d.0.len(),
            ms(d.min()),
            ms(d.q(0.5)),
            ms(d.q(0.99)),
            ms(d.max()),
            over(d.min()),
            over(d.q(0.5)),
            over(d.q(0.99)),
            over(d.max()),
        );
        assert!(
            d.min() >= configured,
            "{}->{}: {:?} is under the configured delay {configured:?}",
            REGIONS[a],
            REGIONS[b],
            d.min()
        );
        assert!(
            d.max() < configured + Duration::from_millis(200),
            "{}->{}: {:?}",
            REGIONS[a],
            REGIONS[b],
            d.max()
        );
    }
    for line in wan.netem.report(3) {
        eprintln!("    {line}");
    }

    // (b) Presence across regions: a newcomer joins in each region and
    // announces itself (as the browser client does after the join ack);
    // then it leaves. Watchers: alice, bob, carol (one per region).
    let watchers = [0usize, 1, 2];
    eprintln!("(b) presence convergence, from the newcomer's join / close (ms):");
    for (r, region) in REGIONS.iter().enumerate() {
        let id = format!("new-{region}");
        let mut newcomer = wan.client(r, &id).await;
        let t0 = epoch.elapsed();
        newcomer.join(ROOM).await;
        newcomer.send(&control("peer_online", ROOM, None)).await;
        let waits = watchers
            .iter()
            .map(|&w| (w, vec![expect("peer_online", &id, region)]))
            .collect();
        let online = watch(&mut crowd, waits, epoch, WAIT).await;
        let t1 = epoch.elapsed();
        newcomer.close().await;
        let waits = watchers
            .iter()
            .map(|&w| (w, vec![expect("peer_offline", &id, region)]))
            .collect();
        let offline = watch(&mut crowd, waits, epoch, WAIT).await;
        let mut line = format!("    {id}:");
        for &w in &watchers {
            let wr = crowd.region[w];
            let on = online[&w].0[0] - t0;
            let off = offline[&w].0[0] - t1;
            line += &format!(
                "  {} (delay {:>3}) online {:6.1} offline {:6.1}",
                REGIONS[wr],
                delay(r, wr).as_millis(),
                ms(on),
                ms(off)
            );
            assert!(on >= delay(r, wr) && off >= delay(r, wr));
        }
        eprintln!("{line}");
    }
    // dave read the newcomers' traffic too; nothing else is pending.
    quiet_except(&mut crowd, &[0, 1, 2, 3], Duration::from_millis(300), |v| {
        !field(v, "p").is_some_and(|p| p.starts_with("new-"))
    })
    .await;

    // (c) ap's link to the WAN goes down silently (no FIN, no RST).
    let cut = epoch.elapsed();
    wan.wan.ip(&["link", "set", REGIONS[AP], "down"]);
    let gone_ap = vec![
        expect("peer_offline", "carol", "ap"),
        expect("peer_offline", "dave", "ap"),
    ];
    let waits = vec![
        (0, gone_ap.clone()),
        (1, gone_ap),
        (
            2,
            vec![
                expect("peer_offline", "alice", "eu"),
                expect("peer_offline", "bob", "us"),
            ],
        ),
        (
            3,
            vec![
                expect("peer_offline", "alice", "eu"),
                expect("peer_offline", "bob", "us"),
            ],
        ),
    ];
    let seen = watch(&mut crowd, waits, epoch, OFFLINE_BOUND * 2).await;
    eprintln!("(c) ap cut off (ip link set ap down in the wan namespace): peer_offline after");
    for i in 0..4 {
        let (times, others) = &seen[&i];
        let last = times.iter().max().unwrap().saturating_sub(cut);
        eprintln!(
            "    {}@{}: {} ms (both peers of the other side{})",
            names[i],
            REGIONS[crowd.region[i]],
            last.as_millis(),
            if others.is_empty() {
                ""
            } else {
                ", plus other messages"
            }
        );
        assert!(others.is_empty(), "{}: unexpected {others:?}", names[i]);
        assert!(last < OFFLINE_BOUND, "{}: {last:?}", names[i]);
    }
    // Nothing of ap stays a member in eu or us, and ap has forgotten them.
    wan.wait_remote_members(EU, 1, WAIT).await;
    wan.wait_remote_members(US, 1, WAIT).await;
    wan.wait_remote_members(AP, 0, WAIT).await;
    for r in [EU, US, AP] {
        wan.wait_mesh(r, WAIT, "the right neighbours", |m| {
            m["peers"] == if r == AP { 0 } else { 1 }
        })
        .await;
    }

    // (d) carol's browser gives up on ap and reconnects through eu.
    let carol_old = crowd.take(2);
    carol_old.close().await;
    let moved = epoch.elapsed();
    let mut carol = wan.client(EU, "carol").await;
    carol.join(ROOM).await;
    carol.send(&control("peer_online", ROOM, None)).await;
    crowd.put(2, carol);
    let waits = vec![
        (0, vec![expect("peer_online", "carol", "eu")]),
        (1, vec![expect("peer_online", "carol", "eu")]),
        (3, vec![expect("peer_offline", "carol", "ap")]),
    ];
    let seen = watch(&mut crowd, waits, epoch, WAIT).await;
    eprintln!(
        "(d) carol reconnects to eu: peer_online (mesh eu) at alice@eu {:.1} ms, bob@us {:.1} ms after her old connection closed",
        ms(seen[&0].0[0] - moved),
        ms(seen[&1].0[0] - moved)
    );
    for (i, (_, others)) in &seen {
        assert!(others.is_empty(), "{}: unexpected {others:?}", names[*i]);
    }
    crowd.region[2] = EU;
    wan.wait_remote_members(EU, 1, WAIT).await; // bob
    wan.wait_remote_members(US, 2, WAIT).await; // alice, carol@eu

    // The cut heals: zenoh redials through the relays; ap's remaining member
    // dave comes back once, eu's and us's members come back to dave once,
    // and carol's old identity never reappears.
    let healed = epoch.elapsed();
    wan.wan.ip(&["link", "set", REGIONS[AP], "up"]);
    let waits = vec![
        (0, vec![expect("peer_online", "dave", "ap")]),
        (1, vec![expect("peer_online", "dave", "ap")]),
        (2, vec![expect("peer_online", "dave", "ap")]),
        (
            3,
            vec![
                expect("peer_online", "alice", "eu"),
                expect("peer_online", "bob", "us"),
            ],
        ),
    ];
    let seen = watch(&mut crowd, waits, epoch, Duration::from_secs(15)).await;
    eprintln!(
        "    heal (ip link set ap up): dave@ap back at alice@eu after {} ms, at bob@us after {} ms; alice and bob back at dave@ap after {} ms",
        (seen[&0].0[0] - healed).as_millis(),
        (seen[&1].0[0] - healed).as_millis(),
        (*seen[&3].0.iter().max().unwrap() - healed).as_millis()
    );
    for (i, (_, others)) in &seen {
        assert!(others.is_empty(), "{}: unexpected {others:?}", names[*i]);
    }
    let late = quiet_except(
        &mut crowd,
        &[0, 1, 2, 3],
        Duration::from_millis(1500),
        |v| {
            // Any second appearance, of carol's old identity or of anyone.
            matches!(field(v, "op"), Some("peer_online") | Some("peer_offline"))
        },
    )
    .await;
    assert!(late.is_empty(), "{late:?}");
    // Exactly the live memberships, everywhere: eu knows bob, dave; us knows
    // alice, carol@eu, dave; ap knows alice, bob, carol@eu.
    wan.wait_remote_members(EU, 2, WAIT).await;
    wan.wait_remote_members(US, 3, WAIT).await;
    wan.wait_remote_members(AP, 3, WAIT).await;
    for r in 0..3 {
        assert_eq!(wan.health(r).await["mesh"]["peers"], 2);
    }
    eprintln!(
        "    no phantom: carol@ap never reappeared, no duplicate presence within 1.5 s after the heal; remote members eu 2, us 3, ap 3"
    );
    // And data flows between every region again.
    crowd.get(3).send(&data(ROOM, "back", "{}")).await;
    let waits = vec![
        (0, vec![expect("data", "dave", "ap")]),
        (1, vec![expect("data", "dave", "ap")]),
        (2, vec![expect("data", "dave", "ap")]),
    ];
    watch(&mut crowd, waits, epoch, WAIT).await;

    drop(crowd);
    let names: Vec<String> = wan.regions.iter().map(|n| n.name.clone()).collect();
    drop(wan);
    let left: Vec<String> = netns::list()
        .into_iter()
        .filter(|n| names.contains(n))
        .collect();
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
    eprintln!("wan: done in {:.1} s", started.elapsed().as_secs_f64());
}
