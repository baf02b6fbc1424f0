//! prscd-chaos: a seeded chaos run against three meshed prscd nodes.
//!
//! Why: the mesh promises no phantom presence, no duplicates, offline
//! within seconds and state back after a heal; fixed scripts test each once.
//! This drives 30–60 clients that behave like the published client through
//! a seeded sequence of faults (kill -9, SIGSTOP past the zenoh lease,
//! SIGTERM drain, region isolation, one-way and flapping link cuts, zenohd
//! router restarts, client reconnects), and after every heal checks the
//! invariants (`checks`), printing every violation and a summary with the
//! seed to replay. Exit status: 0 no violation, 1 violations, 2 the run
//! could not be set up. `scripts/chaos` builds and runs it.
//!
//! Modules: `cluster` (regions, processes, fault primitives; namespaces
//! from `prscd_testkit::netns`),
//! `procs` (child processes), `plan` (the seeded schedule), `clients`
//! (the simulated browsers), `checks` (the invariants). Frames and the
//! WebSocket client come from the `prscd_bench` library (`wire`, `ws`).

mod checks;
mod clients;
mod cluster;
mod plan;
mod procs;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::sync::{mpsc, oneshot};

use clients::{Cmd, Shared, World};
use cluster::{Binaries, Cluster, Mode, REGIONS};
use plan::{Fault, Kind, Plan};
use prscd_testkit::netns;

/// How long presence and data paths may take to come back after a heal
/// (offline ≤ 3 s, a heal ≈ 2 s, client reconnect ≤ 1.5 s plus its join,
/// all through WAN delays of up to 140 ms and a router mesh that re-routes).
const SETTLE: Duration = Duration::from_secs(20);
/// How often a settle has every client send a message while it waits.
const NUDGE: Duration = Duration::from_millis(500);
/// How long a probe message may take to reach every member.
const DELIVERY: Duration = Duration::from_secs(10);
/// Peak resident memory and open files allowed to a node or router.
const RSS_LIMIT_KIB: u64 = 512 << 10;
const FD_LIMIT: usize = 1024;

struct Settings {
    seed: u64,
    seconds: Duration,
    clients: usize,
    bin_dir: PathBuf,
    zenohd: Option<PathBuf>,
    loopback: bool,
    p2p: bool,
    zenohd_peers: bool,
}

impl Settings {
    /// The command that replays this run.
    fn replay(&self) -> String {
        let mut cmd = format!(
            "scripts/chaos --seed {} --seconds {}",
            self.seed,
            self.seconds.as_secs_f64()
        );
        if self.clients != 45 {
            cmd += &format!(" --clients {}", self.clients);
        }
        for (on, flag) in [
            (self.p2p, " --p2p"),
            (self.zenohd_peers, " --zenohd-peers"),
            (self.loopback, " --loopback"),
        ] {
            if on {
                cmd += flag;
            }
        }
        cmd
    }
}

/// The command line (`scripts/chaos` passes its arguments through).
#[derive(clap::Parser)]
#[command(
    name = "prscd-chaos",
    about = "a seeded chaos run against three meshed prscd nodes (scripts/chaos runs it)",
    after_help = "Exit status: 0 no violation, 1 violations, 2 the run could not be set up."
)]
struct Cli {
    /// the fault schedule's seed; the same seed replays the same faults
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// how long to inject faults, seconds; the run ends with a last check after
    #[arg(long, default_value = "75", value_parser = positive_secs)]
    seconds: Duration,
    /// simulated clients, 30-60
    #[arg(long, default_value_t = 45, value_parser = clap::value_parser!(u16).range(30..=60))]
    clients: u16,
    /// where prscd and prscd-netem are [this binary's directory]
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// the zenohd router [$PRSCD_TOOLS/bin/zenohd, ~/.cache/prscd-tools/bin/zenohd];
    /// without one the nodes mesh peer to peer and routers are not faulted
    #[arg(long)]
    zenohd: Option<PathBuf>,
    /// no network namespaces even as root
    #[arg(long)]
    loopback: bool,
    /// nodes meshed peer to peer even where zenohd is installed
    #[arg(long)]
    p2p: bool,
    /// run each region's zenohd as a peer (the three a full mesh, no
    /// link-state trees) and the nodes as its clients, instead of the
    /// shipped routers and peer nodes: the layout README "Chaos run"
    /// measured against the routers' black holes
    #[arg(long, conflicts_with = "p2p")]
    zenohd_peers: bool,
}

fn positive_secs(s: &str) -> Result<Duration, String> {
    let v: f64 = s.parse().map_err(|_| format!("not a number: {s:?}"))?;
    if !(v > 0.0 && v.is_finite()) {
        return Err("must be > 0 seconds".into());
    }
    Ok(Duration::from_secs_f64(v))
}

fn settings(cli: Cli) -> anyhow::Result<Settings> {
    let here = std::env::current_exe()?
        .parent()
        .context("no binary directory")?
        .to_owned();
    let tools = std::env::var("PRSCD_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/prscd-tools")
        });
    let zenohd = match cli.zenohd {
        _ if cli.p2p => None,
        Some(p) => Some(p),
        None => Some(tools.join("bin/zenohd")).filter(|p| p.is_file()),
    };
    Ok(Settings {
        seed: cli.seed,
        seconds: cli.seconds,
        clients: cli.clients.into(),
        bin_dir: cli.bin_dir.unwrap_or(here),
        zenohd,
        loopback: cli.loopback,
        p2p: cli.p2p,
        zenohd_peers: cli.zenohd_peers,
    })
}

fn main() -> ExitCode {
    let cli = match <Cli as clap::Parser>::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    let s = match settings(cli) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("prscd-chaos: {e:#}");
            return ExitCode::from(2);
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let replay = s.replay();
    // The run's future owns every process and namespace: dropping it on a
    // signal kills and removes them.
    let result = rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            r = run(s) => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted (SIGINT)")),
            _ = term.recv() => Err(anyhow::anyhow!("interrupted (SIGTERM)")),
        }
    });
    rt.shutdown_timeout(Duration::from_secs(2));
    match result {
        Ok(0) => ExitCode::SUCCESS,
        Ok(n) => {
            eprintln!("prscd-chaos: {n} violation(s); replay with: {replay}");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("prscd-chaos: {e:#}");
            ExitCode::from(2)
        }
    }
}

#[derive(Default)]
struct Stats {
    faults: BTreeMap<Kind, usize>,
    settles: usize,
    settle_max: Duration,
    /// What the slowest settle came after.
    settle_slowest: String,
    loss_rounds: usize,
    /// Loss rounds not run because the views had not converged (the
    /// paths were not known to be whole).
    loss_rounds_skipped: usize,
    deliveries_checked: usize,
    deliveries_excluded: usize,
    process_checks: usize,
    /// name → (peak RSS KiB, peak fds).
    peaks: BTreeMap<String, (u64, usize)>,
    /// name → panic lines already reported.
    panics: BTreeMap<String, usize>,
}

async fn run(s: Settings) -> anyhow::Result<usize> {
    let started = Instant::now();
    let mode = match (s.loopback, netns::unusable()) {
        (true, _) => Mode::Loopback,
        (false, Some(why)) => {
            println!("chaos: network namespaces unavailable ({why}): loopback processes on 127.0.0.1 instead; a one-way cut becomes a cut both ways");
            Mode::Loopback
        }
        (false, None) => Mode::Netns,
    };
    let bins = Binaries {
        prscd: s.bin_dir.join("prscd"),
        netem: s.bin_dir.join("prscd-netem"),
        zenohd: s.zenohd.clone(),
        // The tool lives in tools/prscd-chaos; the shipped configs at the top.
        repo: Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."),
        zenohd_peers: s.zenohd_peers,
    };
    for b in [&bins.prscd, &bins.netem] {
        anyhow::ensure!(b.is_file(), "{} missing (cargo build first)", b.display());
    }
    if bins.zenohd.is_none() && !s.p2p {
        println!("chaos: zenohd not installed (mesh/install-zenohd.sh): nodes mesh peer to peer, no router faults");
    }
    let dir = std::env::temp_dir().join(format!("prscd-chaos-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let mut cluster = Cluster::start(&bins, &dir, mode)?;
    println!(
        "chaos: seed {}, {} s of faults, {} clients; {}; {}; WAN one-way delays eu-us 30 ms, us-ap 70 ms, eu-ap 140 ms (prscd-netem); logs in {}",
        s.seed,
        s.seconds.as_secs_f64(),
        s.clients,
        match mode {
            Mode::Netns => format!("regions in network namespaces {}", cluster.namespace_names()),
            Mode::Loopback => "regions as loopback processes".into(),
        },
        cluster.layout(),
        dir.display()
    );

    let world: Shared = Arc::new(Mutex::new(World::new(s.clients, s.seed, started)));
    let mut cmds = Vec::new();
    let mut tasks = Vec::new();
    for i in 0..s.clients {
        let (tx, rx) = mpsc::channel(16);
        let region = world.lock().unwrap().clients[i].region;
        let target = cluster.targets[region].clone();
        tasks.push(tokio::spawn(clients::run(
            i,
            world.clone(),
            target,
            rx,
            s.seed,
        )));
        cmds.push(tx);
    }

    let mut stats = Stats::default();
    set_context(&world, "initial convergence");
    let mut settled = settle(&world, &cmds, &mut stats, Duration::from_secs(30)).await;
    check_processes(&mut cluster, &world, &mut stats);

    let mut plan = Plan::new(s.seed, cluster.routers_on, s.clients);
    let end = started + s.seconds;
    let mut n = 0;
    while Instant::now() < end {
        if settled {
            set_context(&world, &format!("loss round before fault #{}", n + 1));
            loss_round(&world, &cmds, &mut stats).await;
        } else {
            stats.loss_rounds_skipped += 1;
        }
        let fault = plan.next_fault();
        n += 1;
        println!(
            "[{:6.1}s] fault #{n} {}: {fault}",
            started.elapsed().as_secs_f64(),
            fault.kind().name()
        );
        set_context(&world, &format!("fault #{n} ({fault})"));
        inject(&mut cluster, &fault, &cmds, &world).await?;
        *stats.faults.entry(fault.kind()).or_default() += 1;
        set_context(&world, &format!("settle after fault #{n} ({fault})"));
        settled = settle(&world, &cmds, &mut stats, SETTLE).await;
        check_processes(&mut cluster, &world, &mut stats);
    }
    if settled {
        set_context(&world, "final loss round");
        loss_round(&world, &cmds, &mut stats).await;
    } else {
        stats.loss_rounds_skipped += 1;
    }
    check_processes(&mut cluster, &world, &mut stats);

    drop(cmds);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    let w = world.lock().unwrap();
    summary(&s, &cluster, &stats, &w, started.elapsed());
    let violations = w.violations.len();
    drop(w);
    drop(cluster);
    if violations == 0 {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        println!("logs kept in {}", dir.display());
    }
    Ok(violations)
}

fn set_context(world: &Shared, what: &str) {
    world.lock().unwrap().context = what.to_owned();
}

/// Polls the member views and the data paths ([`checks::paths`]) until
/// both hold; the deadline passing is a violation with what was still
/// wrong. True when they converged.
async fn settle(
    world: &Shared,
    cmds: &[mpsc::Sender<Cmd>],
    stats: &mut Stats,
    within: Duration,
) -> bool {
    let t = Instant::now();
    stats.settles += 1;
    let marks: Vec<u64> = world
        .lock()
        .unwrap()
        .clients
        .iter()
        .map(|c| c.next_seq)
        .collect();
    let mut next_nudge = Duration::ZERO;
    let converged = loop {
        let wrong = {
            let w = world.lock().unwrap();
            let mut wrong = checks::views(&w);
            wrong.extend(checks::paths(&w, &marks));
            wrong
        };
        if wrong.is_empty() {
            break true;
        }
        if t.elapsed() > within {
            let mut w = world.lock().unwrap();
            let shown: Vec<String> = wrong.iter().take(12).cloned().collect();
            w.violation(format!(
                "member views or data paths not back within {within:?} ({} wrong): {}",
                wrong.len(),
                shown.join("; ")
            ));
            break false;
        }
        // The clients' own traffic is sparse where a channel has one member
        // in a region; a round of messages every half second shows each
        // path within a round trip of its return.
        if t.elapsed() >= next_nudge {
            next_nudge += NUDGE;
            for tx in cmds {
                let _ = tx.try_send(Cmd::Nudge);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    if t.elapsed() > stats.settle_max {
        stats.settle_max = t.elapsed();
        stats.settle_slowest = world.lock().unwrap().context.clone();
    }
    converged
}

/// Every client sends one probe per channel; each must reach every member
/// (see [`checks::loss`]).
async fn loss_round(world: &Shared, cmds: &[mpsc::Sender<Cmd>], stats: &mut Stats) {
    world.lock().unwrap().expects.clear();
    let mut acks = Vec::new();
    for tx in cmds {
        let (done, ack) = oneshot::channel();
        if tx.send(Cmd::Probe(done)).await.is_ok() {
            acks.push(ack);
        }
    }
    for ack in acks {
        let _ = tokio::time::timeout(Duration::from_secs(5), ack).await;
    }
    stats.loss_rounds += 1;
    let t = Instant::now();
    loop {
        let loss = checks::loss(&world.lock().unwrap());
        let done = loss.missing.is_empty();
        if done || t.elapsed() > DELIVERY {
            stats.deliveries_checked += loss.checked;
            stats.deliveries_excluded += loss.excluded;
            if !loss.excluded_why.is_empty() {
                let mut w = world.lock().unwrap();
                let line = format!(
                    "note t={:.1}s during {}: {} deliveries excluded, e.g. {}",
                    w.t0.elapsed().as_secs_f64(),
                    w.context,
                    loss.excluded,
                    loss.excluded_why.join("; ")
                );
                eprintln!("{line}");
                w.notes.push(line);
            }
            if !done {
                let shown: Vec<String> = loss.missing.iter().take(12).cloned().collect();
                world.lock().unwrap().violation(format!(
                    "loss where no fault touched the path: {} of {} deliveries missing after {DELIVERY:?}: {}",
                    loss.missing.len(),
                    loss.checked,
                    shown.join("; ")
                ));
            }
            world.lock().unwrap().expects.clear();
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn inject(
    cluster: &mut Cluster,
    fault: &Fault,
    cmds: &[mpsc::Sender<Cmd>],
    world: &Shared,
) -> anyhow::Result<()> {
    let sleep = tokio::time::sleep;
    match fault {
        Fault::Kill9 { region, down } => {
            cluster.nodes[*region].kill9();
            sleep(*down).await;
            cluster.start_node(*region)?;
        }
        Fault::SigStop { region, pause } => {
            cluster.nodes[*region].stop();
            sleep(*pause).await;
            cluster.nodes[*region].cont();
        }
        Fault::SigTerm { region, down } => {
            if !cluster.nodes[*region].terminate(Duration::from_secs(10)) {
                world.lock().unwrap().violation(format!(
                    "node {} did not exit within 10 s of SIGTERM (drain); killed",
                    REGIONS[*region]
                ));
            }
            sleep(*down).await;
            cluster.start_node(*region)?;
        }
        Fault::Isolate { region, cut } => {
            cluster.region_link(*region, false)?;
            sleep(*cut).await;
            cluster.region_link(*region, true)?;
        }
        Fault::OneWay {
            region,
            inbound,
            cut,
        } => {
            let how = cluster.one_way(*region, *inbound, true)?;
            if cluster.mode == Mode::Loopback {
                println!("          ({how})");
            }
            sleep(*cut).await;
            cluster.one_way(*region, *inbound, false)?;
        }
        Fault::Flap { link, toggles } => {
            for (down, up) in toggles {
                cluster.link(*link, false);
                sleep(*down).await;
                cluster.link(*link, true);
                sleep(*up).await;
            }
        }
        Fault::RouterRestart { region, down } => {
            cluster.routers[*region].kill9();
            sleep(*down).await;
            cluster.routers[*region].start()?;
        }
        Fault::ClientReconnect { clients } => {
            for &c in clients {
                let _ = cmds[c].send(Cmd::Reconnect).await;
            }
        }
    }
    Ok(())
}

/// Every process still running (or restarted, as a violation, when it
/// exited by itself), within its memory and file bounds, no panic logged.
fn check_processes(cluster: &mut Cluster, world: &Shared, stats: &mut Stats) {
    stats.process_checks += 1;
    let mut found = Vec::new();
    let mut restart = Vec::new();
    for (k, p) in cluster.procs_mut().enumerate() {
        if let Some(status) = p.exited() {
            let log = std::fs::read_to_string(&p.log).unwrap_or_default();
            found.push(format!(
                "{} exited by itself ({status}); log {} ends:\n{}",
                p.name,
                p.log.display(),
                procs::tail(&log, 20)
            ));
            restart.push(k);
        }
        if let Some((rss, fds)) = p.pid().and_then(procs::resources) {
            let peak = stats.peaks.entry(p.name.clone()).or_default();
            peak.0 = peak.0.max(rss);
            peak.1 = peak.1.max(fds);
            if rss > RSS_LIMIT_KIB || fds > FD_LIMIT {
                found.push(format!(
                    "{}: RSS {} MiB, {fds} open files (bounds {} MiB, {FD_LIMIT})",
                    p.name,
                    rss >> 10,
                    RSS_LIMIT_KIB >> 10
                ));
            }
        }
        let panics = p.grep("panicked");
        let reported = stats.panics.entry(p.name.clone()).or_default();
        for line in panics.iter().skip(*reported) {
            found.push(format!("{} panicked: {line}", p.name));
        }
        *reported = panics.len();
    }
    for k in restart {
        let nodes = cluster.nodes.len();
        let r = if k < nodes {
            cluster.start_node(k)
        } else {
            cluster.procs_mut().nth(k).map_or(Ok(()), |p| p.start())
        };
        if let Err(e) = r {
            found.push(format!("restart failed: {e:#}"));
        }
    }
    let mut w = world.lock().unwrap();
    for f in found {
        w.violation(f);
    }
}

fn summary(s: &Settings, cluster: &Cluster, stats: &Stats, w: &World, ran: Duration) {
    let c = &w.counters;
    let total: usize = stats.faults.values().sum();
    println!("chaos summary");
    println!(
        "  seed {}: ran {:.1} s ({} s of faults requested), {}, {}",
        s.seed,
        ran.as_secs_f64(),
        s.seconds.as_secs_f64(),
        match cluster.mode {
            Mode::Netns => "3 regions in network namespaces, WAN through prscd-netem",
            Mode::Loopback =>
                "3 regions as loopback processes (no namespaces), WAN through prscd-netem",
        },
        cluster.layout()
    );
    println!(
        "  clients {} in {} channels: {} connections ({} failed attempts while nodes were down), data sent {}, received {}, states sent {}, presence messages received {}",
        w.clients.len(),
        clients::CHANNELS,
        c.connections,
        c.connect_failures,
        c.data_sent,
        c.data_received,
        c.states_sent,
        c.presence_received
    );
    println!("  faults injected: {total}");
    for k in plan::KINDS {
        if cluster.routers_on || k != Kind::RouterRestart {
            println!(
                "    {:<24} {}",
                k.name(),
                stats.faults.get(&k).copied().unwrap_or(0)
            );
        }
    }
    println!(
        "  checks run: {} settles of member views and data paths (slowest {:.1} s, {}), {} loss rounds ({} skipped after a failed settle; {} deliveries checked, {} excluded as touched by a reconnect), {} process checks (exits, RSS, fds, panics); duplicates, order and peer_offline counted on every message",
        stats.settles,
        stats.settle_max.as_secs_f64(),
        stats.settle_slowest,
        stats.loss_rounds,
        stats.loss_rounds_skipped,
        stats.deliveries_checked,
        stats.deliveries_excluded,
        stats.process_checks
    );
    let peaks: Vec<String> = stats
        .peaks
        .iter()
        .filter(|(name, _)| !name.starts_with("relay"))
        .map(|(name, (rss, fds))| format!("{name} {} MiB/{fds} fds", rss >> 10))
        .collect();
    println!("  peaks: {}", peaks.join(", "));
    println!(
        "  connections ended by the node or network: {}; notes (connections lost outside a fault, excluded deliveries): {}",
        c.lost_connections,
        w.notes.len()
    );
    for n in w.notes.iter().take(10) {
        println!("    {n}");
    }
    println!("  violations: {}", w.violations.len());
    for v in w.violations.iter().take(20) {
        println!("    {v}");
    }
    println!("  replay: {}", s.replay());
}
