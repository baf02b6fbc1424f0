//! Restarts without a gap (`REUSE_PORT`): a new node binds the port beside
//! the running one, the old one drains on SIGTERM, and a population of
//! WebSocket clients reconnects to the new one with no connection refused
//! or reset, each back in its channel; WebTransport sessions stay with the
//! old node until it drains them. The PID file names the newest node.
//!
//! The figures (reconnect times, attempts) are printed, not asserted.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite;

/// Clients held open through the restart, in rooms of `CLIENTS / CHANNELS`.
const CLIENTS: usize = 100;
const CHANNELS: usize = 10;
/// Clients connecting and leaving in a loop through the restart.
const CHURNERS: usize = 8;
/// Bound on any client's connection attempts.
const MAX_ATTEMPTS: u32 = 500;

/// Every connection attempt's outcome, by kind.
#[derive(Default)]
struct Tally {
    on_old: AtomicU64,
    on_new: AtomicU64,
    /// ECONNREFUSED on connect.
    refused: AtomicU64,
    /// Reset (or cut) during connect, TLS or the upgrade.
    reset: AtomicU64,
    /// Answers other than 101 (a draining node's 503), by status.
    http_refused: Mutex<Vec<u16>>,
    other: Mutex<Vec<String>>,
}

enum Fail {
    Io(std::io::Error),
    Status(u16),
    Other(String),
}

/// TCP, TLS and the upgrade: the WebSocket and the MESH_ID of the node
/// that took it.
async fn upgrade(addr: SocketAddr, url: String) -> Result<(Ws, String), Fail> {
    use tungstenite::client::IntoClientRequest as _;
    let tcp = TcpStream::connect(addr).await.map_err(Fail::Io)?;
    let tls = try_tls_wrap(tcp).await.map_err(Fail::Io)?;
    let request = url.into_client_request().unwrap();
    match tokio_tungstenite::client_async(request, tls).await {
        Ok((ws, response)) => {
            let mesh = response
                .headers()
                .get("x-prscd-meshid")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            Ok((ws, mesh))
        }
        Err(tungstenite::Error::Http(response)) => Err(Fail::Status(response.status().as_u16())),
        Err(tungstenite::Error::Io(e)) => Err(Fail::Io(e)),
        Err(e) => Err(Fail::Other(e.to_string())),
    }
}

/// One WebSocket connection attempt, counted: the client and the MESH_ID
/// of the node that took it, or `None`.
async fn attempt(addr: SocketAddr, id: &str, tally: &Tally) -> Option<(Client, String)> {
    let url = format!(
        "wss://127.0.0.1:{}/v1?publickey={KEY1}&id={id}",
        addr.port()
    );
    let connect = upgrade(addr, url);
    // A bound, not a measure: a reconnect wave's TLS handshakes queue up.
    let fail = match tokio::time::timeout(Duration::from_secs(30), connect).await {
        Ok(Ok((ws, mesh))) => {
            match mesh.as_str() {
                "old" => tally.on_old.fetch_add(1, Relaxed),
                _ => tally.on_new.fetch_add(1, Relaxed),
            };
            return Some((Client::ws(id, ws), mesh));
        }
        Ok(Err(fail)) => fail,
        Err(_) => Fail::Other("no answer within 30 s".into()),
    };
    use std::io::ErrorKind as K;
    match fail {
        Fail::Io(e) if e.kind() == K::ConnectionRefused => tally.refused.fetch_add(1, Relaxed),
        Fail::Io(e)
            if matches!(
                e.kind(),
                K::ConnectionReset | K::ConnectionAborted | K::UnexpectedEof | K::BrokenPipe
            ) =>
        {
            tally.reset.fetch_add(1, Relaxed)
        }
        Fail::Status(status) => {
            tally.http_refused.lock().unwrap().push(status);
            0
        }
        Fail::Io(e) => {
            tally.other.lock().unwrap().push(e.to_string());
            0
        }
        Fail::Other(e) => {
            tally.other.lock().unwrap().push(e);
            0
        }
    };
    None
}

/// A client back after the restart.
struct Back {
    client: Client,
    channel: String,
    mesh: String,
    /// From the old node's close to the join acknowledged by the new one.
    reconnect: Duration,
    attempts: u32,
}

/// Connects to the old node and joins its room, says so, waits for the
/// drain to close it, then reconnects until a node takes it and rejoins.
async fn hold_through_restart(
    addr: SocketAddr,
    i: usize,
    tally: Arc<Tally>,
    joined: tokio::sync::mpsc::Sender<()>,
    first: Arc<tokio::sync::Semaphore>,
) -> Back {
    let id = format!("user-{i}");
    let channel = format!("room-{}", i % CHANNELS);
    let permit = first.acquire().await.unwrap();
    let (mut client, mesh) = attempt(addr, &id, &tally)
        .await
        .unwrap_or_else(|| panic!("{id}: the first connection failed"));
    drop(permit);
    assert_eq!(mesh, "old");
    client.join(&channel).await;
    joined.send(()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while client.next_within(Duration::from_secs(1)).await != Next::Closed {
        assert!(Instant::now() < deadline, "{id}: never closed by the drain");
    }
    let closed = Instant::now();
    for attempts in 1..=MAX_ATTEMPTS {
        if let Some((mut client, mesh)) = attempt(addr, &id, &tally).await {
            client.join(&channel).await;
            return Back {
                client,
                channel,
                mesh,
                reconnect: closed.elapsed(),
                attempts,
            };
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{id}: not back after {MAX_ATTEMPTS} attempts");
}

/// Connects and leaves in a loop until `stop` (bounded).
async fn churn(addr: SocketAddr, j: usize, tally: Arc<Tally>, stop: Arc<AtomicBool>) {
    let id = format!("churn-{j}");
    for _ in 0..MAX_ATTEMPTS * 10 {
        if stop.load(Relaxed) {
            return;
        }
        if let Some((client, _)) = attempt(addr, &id, &tally).await {
            client.close().await;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn pid_in(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// The settings of both nodes, which differ by MESH_ID (so that a client
/// sees which one took it) and by METRICS_PORT (to ask each one apart).
fn restart_env(port: u16, mesh_id: &str, pid_file: &Path) -> Vec<(String, String)> {
    vec![
        ("PORT".into(), port.to_string()),
        ("METRICS_PORT".into(), free_port().to_string()),
        ("REUSE_PORT".into(), "true".into()),
        ("MESH_ID".into(), mesh_id.into()),
        ("DRAIN_GRACE_MS".into(), "500".into()),
        ("PID_FILE".into(), pid_file.display().to_string()),
    ]
}

/// Starts a node without holding up the runtime's other tasks.
fn start(env: &[(String, String)]) -> Node {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    tokio::task::block_in_place(|| Node::start_with(&env))
}

/// `/health` from the node's own METRICS_PORT (the client port reaches
/// whichever node the kernel picks).
async fn own_health(node: &Node) -> serde_json::Value {
    let line = node.wait_log("metrics: http://").await;
    let addr = line.split("metrics: http://").nth(1).unwrap();
    let addr = addr.split('/').next().unwrap();
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let (status, _, body) = http_request(&mut tcp, "GET", "/health", &[], None).await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// Waits (bounded) for the node's `/health` to count `peers`.
async fn wait_peers(node: &Node, peers: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let health = own_health(node).await;
        if health["peers"] == peers {
            return;
        }
        assert!(Instant::now() < deadline, "wanted {peers} peers: {health}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_clients_reconnect_through_a_restart_without_refusal() {
    let port = free_port();
    let dir = scratch_dir("restart");
    let pid_file = dir.join("prscd.pid");
    let mut old = start(&restart_env(port, "old", &pid_file));
    assert_eq!(old.port, port);
    assert_eq!(pid_in(&pid_file), Some(old.pid()));
    let addr = old.addr();
    let tally = Arc::new(Tally::default());

    let (joined_tx, mut joined) = tokio::sync::mpsc::channel(CLIENTS);
    // The first connections a few at a time; the reconnects all at once.
    let first = Arc::new(tokio::sync::Semaphore::new(16));
    let holders: Vec<_> = (0..CLIENTS)
        .map(|i| {
            tokio::spawn(hold_through_restart(
                addr,
                i,
                tally.clone(),
                joined_tx.clone(),
                first.clone(),
            ))
        })
        .collect();
    for _ in 0..CLIENTS {
        tokio::time::timeout(Duration::from_secs(60), joined.recv())
            .await
            .expect("every client joins the old node")
            .unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let churners: Vec<_> = (0..CHURNERS)
        .map(|j| tokio::spawn(churn(addr, j, tally.clone(), stop.clone())))
        .collect();

    let new = start(&restart_env(port, "new", &pid_file));
    assert_eq!(new.port, port);
    assert_eq!(
        pid_in(&pid_file),
        Some(new.pid()),
        "the PID file names the newest node"
    );
    // New connections go to the new node while the old one still serves.
    let deadline = Instant::now() + Duration::from_secs(30);
    while tally.on_new.load(Relaxed) < 20 {
        assert!(
            Instant::now() < deadline,
            "no connection reached the new node"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let on_old_before_term = tally.on_old.load(Relaxed);

    let term = Instant::now();
    old.signal(libc::SIGTERM);
    let status = tokio::task::block_in_place(|| old.wait_exit(Duration::from_secs(60)))
        .expect("the old node exits after draining");
    let old_gone = term.elapsed();
    assert!(status.success(), "{status:?}");
    assert_eq!(
        pid_in(&pid_file),
        Some(new.pid()),
        "the old node leaves the new one's PID file"
    );

    let mut back = Vec::new();
    for holder in holders {
        back.push(
            tokio::time::timeout(Duration::from_secs(120), holder)
                .await
                .expect("every client is back")
                .unwrap(),
        );
    }
    stop.store(true, Relaxed);
    for churner in churners {
        churner.await.unwrap();
    }

    let refused = tally.refused.load(Relaxed);
    let reset = tally.reset.load(Relaxed);
    let http_refused = tally.http_refused.lock().unwrap().clone();
    let mut reconnects: Vec<Duration> = back.iter().map(|b| b.reconnect).collect();
    reconnects.sort_unstable();
    eprintln!(
        "restart: {CLIENTS} clients + {CHURNERS} churners; reconnect p50 {:?} p90 {:?} max {:?}; \
         attempts max {}; connections refused {refused}, reset {reset}, answered non-101 \
         {}; connects to old {} ({on_old_before_term} before SIGTERM), to new {}; \
         old node gone {old_gone:?} after SIGTERM",
        percentile(&reconnects, 0.5),
        percentile(&reconnects, 0.9),
        reconnects[reconnects.len() - 1],
        back.iter().map(|b| b.attempts).max().unwrap(),
        http_refused.len(),
        tally.on_old.load(Relaxed),
        tally.on_new.load(Relaxed),
    );
    assert_eq!(refused, 0, "ECONNREFUSED during the restart");
    assert_eq!(reset, 0, "connections reset during the restart");
    assert!(
        http_refused.is_empty(),
        "handshakes refused during the restart: {http_refused:?}"
    );
    assert!(tally.other.lock().unwrap().is_empty(), "{:?}", tally.other);
    assert!(back.iter().all(|b| b.mesh == "new"));

    // Every client is in its room on the new node: a message from one
    // member reaches all the others.
    wait_peers(&new, CLIENTS as u64).await;
    for room in 0..CHANNELS {
        let channel = format!("room-{room}");
        let mut members: Vec<&mut Back> =
            back.iter_mut().filter(|b| b.channel == channel).collect();
        let (first, rest) = members.split_first_mut().unwrap();
        first.client.send(&data(&channel, "roll", "{}")).await;
        let sender = first.client.id.clone();
        for member in rest {
            let got = member.client.recv_op("data").await;
            assert_eq!(field(&got, "p"), Some(sender.as_str()));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webtransport_sessions_stay_with_the_old_node_until_it_drains() {
    let port = free_port();
    let dir = scratch_dir("restart-wt");
    let pid_file = dir.join("prscd.pid");
    let mut old = start(&restart_env(port, "old", &pid_file));
    let mut sessions = Vec::new();
    for i in 0..16 {
        let mut client = old.wt(KEY1, &format!("wt-{i}"), true).await;
        client.join("before").await;
        sessions.push(client);
    }
    let new = start(&restart_env(port, "new", &pid_file));
    // Left to the kernel's hash, about half of these sessions' datagrams
    // would now reach the new node, which knows none of them.
    for (i, client) in sessions.iter_mut().enumerate() {
        client.join(&format!("after-{i}")).await;
    }
    // A new session still goes to the old node while it runs.
    let late = old.wt(KEY1, "late", true).await;
    let webtransport = |health: serde_json::Value| health["connections"]["webtransport"].clone();
    assert_eq!(webtransport(own_health(&old).await), 17);
    assert_eq!(webtransport(own_health(&new).await), 0);

    old.signal(libc::SIGTERM);
    for client in sessions.iter_mut() {
        assert_eq!(client.closed_with().await, Some(1001), "{}", client.id);
    }
    drop(late);
    assert!(tokio::task::block_in_place(|| old.wait_exit(Duration::from_secs(60))).is_some());
    // The new node serves WebTransport once the old one is gone.
    let started = Instant::now();
    let mut client = new.wt(KEY1, "wt-0", true).await;
    client.join("before").await;
    eprintln!(
        "restart (webtransport): 16 sessions kept by the old node until its drain; \
         first session on the new node {:?} after the old one exited",
        started.elapsed()
    );
    assert_eq!(webtransport(own_health(&new).await), 1);
}

/// Takes the steering program off the socket group of 127.0.0.1:`port`
/// (joining the group for a moment to do so): the kernel's hash alone.
fn unsteer(port: u16, kind: socket2::Type) {
    use std::os::fd::AsRawFd as _;
    let socket = socket2::Socket::new(socket2::Domain::IPV4, kind, None).unwrap();
    socket.set_reuse_address(true).unwrap();
    socket.set_reuse_port(true).unwrap();
    socket
        .bind(&SocketAddr::from(([127, 0, 0, 1], port)).into())
        .unwrap();
    if kind == socket2::Type::STREAM {
        // A TCP socket joins the group when it listens.
        socket.listen(1).unwrap();
    }
    let unused: libc::c_int = 0;
    // SAFETY: a valid socket and an int-sized option value for the call.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_DETACH_REUSEPORT_BPF,
            std::ptr::from_ref(&unused).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
}

/// Why new connections go to the newest listener: left to the kernel's
/// hash, the draining node gets its share of them and refuses them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_steering_the_draining_node_refuses_new_connections() {
    let port = free_port();
    let dir = scratch_dir("restart-tcp-hash");
    let pid_file = dir.join("prscd.pid");
    let mut old = start(&restart_env(port, "old", &pid_file));
    let addr = old.addr();
    // One member, so that the drain waits DRAIN_GRACE_MS before closing.
    let _member = old.ws(KEY1, "member").await;
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let churners: Vec<_> = (0..CHURNERS)
        .map(|j| tokio::spawn(churn(addr, j, tally.clone(), stop.clone())))
        .collect();
    let _new = start(&restart_env(port, "new", &pid_file));
    unsteer(port, socket2::Type::STREAM);
    old.signal(libc::SIGTERM);
    tokio::task::block_in_place(|| old.wait_exit(Duration::from_secs(60)))
        .expect("the old node exits after draining");
    stop.store(true, Relaxed);
    for churner in churners {
        churner.await.unwrap();
    }
    let refused = tally.http_refused.lock().unwrap().len() as u64;
    let reset = tally.reset.load(Relaxed);
    eprintln!(
        "restart (websocket, kernel hash alone): {CHURNERS} churners; answered 503 by the \
         draining node {refused}, reset {reset}, ECONNREFUSED {}; connects to old {}, to new {}",
        tally.refused.load(Relaxed),
        tally.on_old.load(Relaxed),
        tally.on_new.load(Relaxed),
    );
    assert!(
        refused + reset > 0,
        "no connection reached the draining node"
    );
}

/// Why the datagrams stay with the oldest socket: left to the kernel's
/// hash, live sessions reach the new node, which knows none of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_steering_the_hash_cuts_live_webtransport_sessions() {
    let port = free_port();
    let dir = scratch_dir("restart-hash");
    let pid_file = dir.join("prscd.pid");
    let old = start(&restart_env(port, "old", &pid_file));
    let mut sessions = Vec::new();
    for i in 0..16 {
        let mut client = old.wt(KEY1, &format!("wt-{i}"), true).await;
        client.join("before").await;
        sessions.push(client);
    }
    let _new = start(&restart_env(port, "new", &pid_file));
    unsteer(port, socket2::Type::DGRAM);
    // Each session sends a join; one that the hash now sends to the new
    // node gets no answer (or a reset).
    let probes: Vec<_> = sessions
        .into_iter()
        .enumerate()
        .map(|(i, mut client)| {
            tokio::spawn(async move {
                let closed =
                    tokio::time::timeout(Duration::from_millis(10), client.wt_conn().closed());
                if closed.await.is_ok() {
                    return false;
                }
                client
                    .send(&join(&format!("after-{i}"), &client.id.clone()))
                    .await;
                loop {
                    match client.next_within(WAIT).await {
                        Next::Msg(raw) if field(&decode(&raw), "op") == Some("channel_join") => {
                            return true
                        }
                        Next::Msg(_) => {}
                        Next::Quiet | Next::Closed => return false,
                    }
                }
            })
        })
        .collect();
    let mut cut = 0;
    for probe in probes {
        if !probe.await.unwrap() {
            cut += 1;
        }
    }
    eprintln!(
        "restart (webtransport, kernel hash alone): {cut} of 16 live sessions cut \
         when the new node bound the port"
    );
    assert!(
        cut > 0,
        "all 16 sessions hashed to the old node: odds 1 in 65,536"
    );
}
