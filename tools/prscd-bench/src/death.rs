//! `node-death`: how fast a mesh notices a dead node. Starts N prscd nodes
//! meshed over zenoh on loopback, puts clients on every node in one
//! channel, then per trial: kill -9 the last node and time until every
//! client on the other nodes has received `peer_offline` for each of the dead
//! node's clients; restart it, wait until everyone sees its clients again,
//! repeat. Reports min/median/max over the trials.

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::bail;
use prscd_testkit::ready::{ExitedBeforeReady, ReadyProcess};
use prscd_wire::protocol::{self, Kind, Op};
use serde_json::json;

use crate::measure;
use crate::net::{Conn, Dialer, Endpoint, Transport};
use crate::wire::Prscd;

pub struct DeathSpec {
    pub prscd: PathBuf,
    pub nodes: usize,
    pub clients_per_node: usize,
    pub trials: usize,
    pub step_timeout: Duration,
    pub duration_limit: Duration,
    pub quiet: bool,
}

/// A prscd node started by the bench: spawned with `env`, waited for.
fn start_node(
    binary: &PathBuf,
    env: &[(String, String)],
    within: Duration,
) -> anyhow::Result<ReadyProcess> {
    let mut cmd = Command::new(binary);
    cmd.envs(env.iter().map(|(k, v)| (k, v)))
        .env("HOST", "127.0.0.1");
    ReadyProcess::start(cmd, within)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Presence events one client saw, with the time (since `epoch`).
#[derive(Default)]
struct Seen {
    online: HashSet<String>,
    offline_at: Vec<(String, Instant)>,
}

const CHANNEL: &str = "death";

pub async fn run(spec: DeathSpec) -> anyhow::Result<(serde_json::Value, bool)> {
    if spec.nodes < 2 {
        bail!("--nodes must be at least 2");
    }
    let started = Instant::now();
    let dir = std::env::temp_dir().join(format!("prscd-bench-death-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut zenoh_ports: Vec<u16> = Vec::new();
    let env_of = |zenoh_ports: &[u16], i: usize| -> Vec<(String, String)> {
        let connect: Vec<String> = zenoh_ports[..i]
            .iter()
            .map(|p| format!("tcp/127.0.0.1:{p}"))
            .collect();
        vec![
            ("PORT".into(), "0".into()),
            ("MESH_ID".into(), format!("n{i}")),
            ("DEV_CERT_DIR".into(), dir.display().to_string()),
            (
                "ZENOH_LISTEN".into(),
                format!("tcp/127.0.0.1:{}", zenoh_ports[i]),
            ),
            ("ZENOH_CONNECT".into(), connect.join(",")),
            ("PID_FILE".into(), String::new()),
            ("RUST_LOG".into(), "warn,prscd::server=info".into()),
        ]
    };
    // Node i listens on a port picked free just before it starts, which
    // another process can take in between (the node then exits at once):
    // then it starts again on a new port. Node i connects only to the nodes
    // before it, so no node knows its port yet (the victim, restarted each
    // trial, is the last one).
    let start = |zenoh_ports: &mut Vec<u16>, i: usize| -> anyhow::Result<ReadyProcess> {
        let mut attempt = 0;
        loop {
            zenoh_ports.truncate(i);
            zenoh_ports.push(free_port());
            match start_node(&spec.prscd, &env_of(zenoh_ports, i), spec.step_timeout) {
                Err(e) if attempt < 3 && e.is::<ExitedBeforeReady>() => {
                    attempt += 1;
                    if !spec.quiet {
                        eprintln!("prscd-bench: node {i}: {e:#}; again on a new port");
                    }
                }
                other => return other,
            }
        }
    };
    let mut nodes = Vec::new();
    for i in 0..spec.nodes {
        nodes.push(start(&mut zenoh_ports, i)?);
    }
    let dialer = Arc::new(Dialer::new(1, Transport::Ws, false)?);
    let wire = Prscd {
        base_path: "/v1".into(),
        publickey: "dev".into(),
        token: None,
    };
    let wire = Arc::new(wire);
    let victim = spec.nodes - 1;
    let survivors_clients = victim * spec.clients_per_node;

    // Clients on the surviving nodes stay for the whole run.
    let mut watchers = Vec::new();
    for (n, node) in nodes.iter().enumerate().take(victim) {
        for c in 0..spec.clients_per_node {
            let id = format!("n{n}c{c}");
            let ep = endpoint(node.port);
            let conn = join(&dialer, &wire, &ep, &id).await?;
            let seen = Arc::new(Mutex::new(Seen::default()));
            tokio::spawn(watch(conn, seen.clone()));
            watchers.push(seen);
        }
    }
    let mut durations_ms = Vec::new();
    let mut converge_ms = Vec::new();
    let mut stopped_by = None;
    for trial in 0..spec.trials {
        if started.elapsed() > spec.duration_limit {
            stopped_by = Some(format!(
                "duration limit ({:?}) reached",
                spec.duration_limit
            ));
            break;
        }
        if trial > 0 {
            nodes[victim] = start(&mut zenoh_ports, victim)?;
        }
        let ids: Vec<String> = (0..spec.clients_per_node)
            .map(|c| format!("t{trial}n{victim}c{c}"))
            .collect();
        let ep = endpoint(nodes[victim].port);
        let t_join = Instant::now();
        for id in &ids {
            let conn = join(&dialer, &wire, &ep, id).await?;
            // Kept open by the task until the node dies under it.
            tokio::spawn(watch(conn, Arc::new(Mutex::new(Seen::default()))));
        }
        // Everyone on the survivors sees the victim's clients.
        let deadline = Instant::now() + spec.step_timeout;
        loop {
            let all = watchers.iter().all(|w| {
                let w = w.lock().unwrap();
                ids.iter().all(|id| w.online.contains(id))
            });
            if all {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "trial {trial}: the victim's clients were not seen online within {:?}",
                    spec.step_timeout
                );
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        converge_ms.push(t_join.elapsed().as_secs_f64() * 1e3);
        let killed_at = Instant::now();
        nodes[victim].kill9();
        let deadline = killed_at + spec.step_timeout;
        let last = loop {
            let mut last = Some(killed_at);
            for w in &watchers {
                let w = w.lock().unwrap();
                for id in &ids {
                    match w.offline_at.iter().find(|(p, _)| p == id) {
                        Some((_, t)) => last = last.map(|l| l.max(*t)),
                        None => last = None,
                    }
                }
            }
            if let Some(t) = last {
                break t;
            }
            if Instant::now() > deadline {
                bail!(
                    "trial {trial}: peer_offline not seen everywhere within {:?}",
                    spec.step_timeout
                );
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        let ms = last.duration_since(killed_at).as_secs_f64() * 1e3;
        if !spec.quiet {
            eprintln!(
                "prscd-bench: node-death trial {}/{}: last peer_offline after {ms:.1} ms ({survivors_clients} clients × {} peers)",
                trial + 1,
                spec.trials,
                ids.len()
            );
        }
        durations_ms.push(ms);
    }
    let _ = std::fs::remove_dir_all(&dir);
    let stats = |v: &[f64]| {
        let mut s = v.to_vec();
        s.sort_by(f64::total_cmp);
        if s.is_empty() {
            return json!(null);
        }
        json!({
            "trials": s.len(),
            "min": measure::round(s[0], 1),
            "median": measure::round(s[s.len() / 2], 1),
            "max": measure::round(s[s.len() - 1], 1),
            "all": s.iter().map(|x| measure::round(*x, 1)).collect::<Vec<_>>(),
        })
    };
    let complete = stopped_by.is_none() && durations_ms.len() == spec.trials;
    Ok((
        json!({
            "tool": "prscd-bench",
            "scenario": "node-death",
            "server": "prscd",
            "complete": complete,
            "stopped_by": stopped_by,
            "params": {
                "nodes": spec.nodes,
                "clients_per_node": spec.clients_per_node,
                "trials": spec.trials,
                "mesh": "zenoh peer-to-peer over TCP on loopback, node defaults (lease 2 s)",
            },
            "kill_to_last_peer_offline_ms": stats(&durations_ms),
            "join_to_seen_everywhere_ms": stats(&converge_ms),
        }),
        complete,
    ))
}

fn endpoint(port: u16) -> Endpoint {
    Endpoint {
        host: "127.0.0.1".into(),
        port,
        path: "/v1".into(),
        tls: true,
    }
}

async fn join(dialer: &Dialer, wire: &Arc<Prscd>, ep: &Endpoint, id: &str) -> anyhow::Result<Conn> {
    use crate::wire::Wire;
    let mut conn = dialer.ws(ep, wire.as_ref(), id, CHANNEL).await?;
    conn.send(wire.join(CHANNEL, id)).await?;
    Ok(conn)
}

/// Reads presence until the connection ends.
async fn watch(mut conn: Conn, seen: Arc<Mutex<Seen>>) {
    while let Ok(Some(frame)) = conn.recv().await {
        let data = frame.into_data();
        let Ok(m) = protocol::decode_relayed(&data) else {
            continue;
        };
        let mut s = seen.lock().unwrap();
        match m.kind {
            Kind::Control(Op::PeerOnline) => {
                s.online.insert(m.peer.to_owned());
            }
            Kind::Control(Op::PeerOffline) => {
                let peer = m.peer.to_owned();
                s.online.remove(&peer);
                s.offline_at.push((peer, Instant::now()));
            }
            _ => {}
        }
    }
}
