//! The load engine behind `fanout`, `rooms`, `idle`, `storm` and
//! `cross-node`: N clients in R rooms, connected and joined C at a time,
//! then (optionally) publishers sending timestamped payloads, every client
//! timing what it receives. Publisher and clients share one process and one
//! monotonic clock, so latency is end to end.
//!
//! Payload layout: send time (u64 BE, ns since the run's epoch), sequence
//! number (u64 BE), publisher index (u32 BE), zeros up to `--payload`.
//!
//! Every wait is bounded by the step timeout, and the whole run by the
//! duration limit: past it everything stops and partial numbers are
//! reported (`complete: false`).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::bail;
use futures_util::FutureExt;
use hdrhistogram::Histogram;
use serde_json::json;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::measure::{self, Counters, Progress};
use crate::net::{Conn, Dialer, Endpoint, Transport};
use crate::wire::{Incoming, Wire, WireState};

pub const PAYLOAD_HEADER: usize = 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Publish {
    /// Nobody publishes (idle, storm).
    Nobody,
    /// One extra publisher connection per room sends `messages` messages.
    Dedicated,
    /// Every member publishes at `rate` for `duration`.
    Members,
}

pub struct LoadSpec {
    pub scenario: String,
    pub wire: Arc<dyn Wire>,
    pub transport: Transport,
    pub url: Endpoint,
    /// Publishers connect here instead (cross-node: another mesh node).
    pub pub_url: Option<Endpoint>,
    /// Members are spread round robin over `url` and these (cross-node:
    /// subscribers on several nodes); `/health` is asked of `url` only.
    pub more_urls: Vec<Endpoint>,
    pub room_prefix: String,
    pub rooms: usize,
    pub members: usize,
    pub publish: Publish,
    pub messages: u64,
    pub duration: Duration,
    /// Per publisher; `None`: as fast as the window allows (Dedicated).
    pub rate: Option<f64>,
    pub window: u64,
    pub payload: usize,
    pub connect_concurrency: usize,
    pub source_ips: u8,
    /// Resume TLS sessions instead of a full handshake per connection.
    pub tls_resume: bool,
    /// After setup (and before publishing): wait this long, e.g. for the
    /// mesh to learn the subscriptions, or to let idle memory settle.
    pub settle: Duration,
    pub step_timeout: Duration,
    pub duration_limit: Duration,
    pub server_pid: Option<u32>,
    pub quiet: bool,
}

impl LoadSpec {
    fn clients(&self) -> usize {
        self.rooms * self.members
    }

    /// With [`Publish::Members`]: how many messages each member sends.
    fn messages_per_member(&self) -> u64 {
        (self.rate.unwrap_or(1.0) * self.duration.as_secs_f64()).round() as u64
    }

    fn room(&self, r: usize) -> String {
        if self.rooms == 1 {
            self.room_prefix.clone()
        } else {
            format!("{}-{r}", self.room_prefix)
        }
    }
}

struct Shared {
    spec: LoadSpec,
    dialer: Dialer,
    epoch: Instant,
    stop: CancellationToken,
    /// Publishing may start.
    go: CancellationToken,
    counters: Arc<Counters>,
    received: Vec<AtomicU64>,
    alive: Vec<AtomicBool>,
    last_delivery_ns: AtomicU64,
    /// Woken on deliveries and exits: the max-rate publisher's window (one
    /// waiter; several rooms at max rate also poll every 2 ms).
    progress: Notify,
    publishing_left: AtomicU64,
    /// Dedicated publishers joined (or failed).
    publishers_ready: AtomicU64,
}

impl Shared {
    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// The fewest messages a live member of `room` has received, and who
    /// that is.
    fn min_live_received(&self, room: usize) -> Option<(u64, usize)> {
        let m = self.spec.members;
        (room * m..(room + 1) * m)
            .filter(|&i| self.alive[i].load(Ordering::Acquire))
            .map(|i| (self.received[i].load(Ordering::Acquire), i))
            .min()
    }

    /// Whether member `i` is live and has fewer than `need` messages.
    fn lags(&self, i: usize, need: u64) -> bool {
        self.alive[i].load(Ordering::Acquire) && self.received[i].load(Ordering::Acquire) < need
    }

    /// Connects as `id` and joins `room`, bounded by the step timeout.
    async fn connect_and_join(
        &self,
        id: &str,
        room: &str,
        ep: &Endpoint,
    ) -> anyhow::Result<(Conn, WireState)> {
        let wire = self.spec.wire.as_ref();
        let work = async {
            let mut conn = match self.spec.transport {
                Transport::Ws => self.dialer.ws(ep, wire, id, room).await?,
                Transport::Datagram => {
                    let query = wire.ws_path(id, room);
                    let query = query.split_once('?').map_or("", |(_, q)| q).to_owned();
                    self.dialer.wt(ep, &query).await?
                }
            };
            let mut state = WireState {
                room: room.to_owned(),
                ..WireState::default()
            };
            let join = wire.join(room, id);
            if join.is_empty() {
                return Ok((conn, state));
            }
            conn.send(join).await?;
            let mut reply = Vec::new();
            loop {
                let Some(frame) = conn.recv().await? else {
                    bail!("connection ended before the join ack");
                };
                let what = wire.incoming(&mut state, frame, &mut reply);
                if !reply.is_empty() {
                    conn.send(std::mem::take(&mut reply)).await?;
                }
                if what == Incoming::Joined {
                    return Ok((conn, state));
                }
            }
        };
        tokio::select! {
            r = tokio::time::timeout(self.spec.step_timeout, work) => {
                r.map_err(|_| anyhow::anyhow!("connect+join took over {:?}", self.spec.step_timeout))?
            }
            _ = self.stop.cancelled() => bail!("stopped during connect+join"),
        }
    }

    fn payload(&self, seq: u64, publisher: u32) -> Vec<u8> {
        let mut p = vec![0u8; self.spec.payload];
        p[0..8].copy_from_slice(&self.now_ns().to_be_bytes());
        p[8..16].copy_from_slice(&seq.to_be_bytes());
        p[16..20].copy_from_slice(&publisher.to_be_bytes());
        p
    }
}

/// What one client saw.
struct Outcome {
    joined: bool,
    /// Only where messages flow: a histogram is ~200 KB zeroed, which per
    /// idle or storm connection was a fifth of the tool's CPU. Allocated up
    /// front, not at the first delivery, where it would stall the measurement.
    hist: Option<Histogram<u64>>,
    received: u64,
    sent: u64,
    out_of_order: u64,
    failure: Option<String>,
    first_send_ns: Option<u64>,
    last_send_ns: Option<u64>,
    max_lag_us: u64,
}

impl Outcome {
    fn new(spec: &LoadSpec) -> Outcome {
        Outcome {
            joined: false,
            hist: (spec.publish != Publish::Nobody).then(measure::new_hist),
            received: 0,
            sent: 0,
            out_of_order: 0,
            failure: None,
            first_send_ns: None,
            last_send_ns: None,
            max_lag_us: 0,
        }
    }
}

/// A room member: connects, joins, then receives (and with
/// [`Publish::Members`] publishes) until the run stops.
async fn member(sh: Arc<Shared>, index: usize, permits: Arc<Semaphore>) -> Outcome {
    let mut out = Outcome::new(&sh.spec);
    let spec = &sh.spec;
    let room = spec.room(index / spec.members);
    let id = format!("c{index}");
    let (mut conn, mut state) = {
        let Ok(_permit) = permits.acquire().await else {
            out.failure = Some("setup aborted".into());
            return out;
        };
        match sh
            .connect_and_join(&id, &room, spec.member_url(index))
            .await
        {
            Ok(c) => c,
            Err(e) => {
                sh.counters.failed.fetch_add(1, Ordering::Relaxed);
                out.failure = Some(format!("{e:#}"));
                return out;
            }
        }
    };
    out.joined = true;
    sh.alive[index].store(true, Ordering::Release);
    sh.counters.connected.fetch_add(1, Ordering::Relaxed);
    let publishes = spec.publish == Publish::Members;
    let windowed = spec.publish == Publish::Dedicated && spec.rate.is_none();
    let rate = spec.rate.unwrap_or(1.0);
    let total = if publishes {
        spec.messages_per_member()
    } else {
        0
    };
    let mut reply = Vec::new();
    // (publisher, last sequence number): a handful per client, so a Vec.
    let mut last_seq: Vec<(u32, u64)> = Vec::new();
    let mut next_due: Option<Instant> = None;
    let mut publish_start = None;
    // Pinned once: a fresh cancellation future per frame costs a lock.
    let stopped = sh.stop.cancelled();
    tokio::pin!(stopped);
    let go = sh.go.cancelled();
    tokio::pin!(go);
    loop {
        let due = async {
            match next_due {
                Some(t) => tokio::time::sleep_until(t.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            _ = &mut stopped => break,
            _ = &mut go, if publishes && publish_start.is_none() => {
                let start = Instant::now();
                publish_start = Some(start);
                // Spread the members' sends over one period.
                let phase = (index as f64 / spec.clients() as f64) / rate;
                next_due = (total > 0).then(|| start + Duration::from_secs_f64(phase));
            }
            _ = due => {
                let due_at = next_due.expect("armed");
                out.max_lag_us = out.max_lag_us.max(due_at.elapsed().as_micros() as u64);
                let payload = sh.payload(out.sent, index as u32);
                let now = sh.now_ns();
                if let Err(e) = conn.send(spec.wire.publish(&room, &id, &payload)).await {
                    out.failure = Some(format!("send: {e:#}"));
                    break;
                }
                out.first_send_ns.get_or_insert(now);
                out.last_send_ns = Some(now);
                out.sent += 1;
                sh.counters.sent.fetch_add(1, Ordering::Relaxed);
                next_due = (out.sent < total).then(|| {
                    publish_start.expect("started")
                        + Duration::from_secs_f64(
                            (index as f64 / spec.clients() as f64 + out.sent as f64) / rate,
                        )
                });
                if next_due.is_none() {
                    sh.publishing_left.fetch_sub(1, Ordering::AcqRel);
                }
            }
            frame = conn.recv() => {
                // This frame, then every one already read (one socket read
                // holds dozens under load) without a turn through the select.
                // The clock is read once per CLOCK_EVERY frames (a later
                // frame may come from a later socket read: its latency reads
                // at most that many frames' handling short), and the shared
                // counters are updated once.
                let mut now = sh.now_ns();
                let received_before = out.received;
                let mut next = Some(frame);
                while let Some(frame) = next.take() {
                    if (out.received - received_before) % CLOCK_EVERY == CLOCK_EVERY - 1 {
                        now = sh.now_ns();
                    }
                    let frame = match frame {
                        Ok(Some(f)) => f,
                        Ok(None) => {
                            out.failure = Some("connection ended".into());
                            break;
                        }
                        Err(e) => {
                            out.failure = Some(format!("{e:#}"));
                            break;
                        }
                    };
                    if let Incoming::Data(body) = spec.wire.incoming(&mut state, frame, &mut reply) {
                        if body.len() >= PAYLOAD_HEADER {
                            record_delivery(now, &body, &mut out, &mut last_seq);
                        }
                    }
                    if !reply.is_empty() {
                        if let Err(e) = conn.send(std::mem::take(&mut reply)).await {
                            out.failure = Some(format!("reply: {e:#}"));
                            break;
                        }
                    }
                    next = conn.recv().now_or_never();
                }
                let delivered = out.received - received_before;
                if delivered > 0 {
                    publish_deliveries(&sh, index, delivered, now, out.received);
                    if windowed {
                        sh.progress.notify_one();
                    }
                }
                if out.failure.is_some() {
                    break;
                }
            }
        }
    }
    if publishes && next_due.is_some() {
        sh.publishing_left.fetch_sub(1, Ordering::AcqRel);
    }
    sh.alive[index].store(false, Ordering::Release);
    sh.progress.notify_one();
    // Small runs leave politely; big ones just drop (a close handshake per
    // connection would dominate the teardown).
    if spec.clients() <= 5_000 {
        let _ = tokio::time::timeout(Duration::from_millis(500), conn.close()).await;
    }
    out
}

/// Frames handled between two clock reads in a member's batch.
const CLOCK_EVERY: u64 = 16;

/// Counts one delivered payload, read at `now`: latency
/// from the send time it carries, order per publisher. What other tasks read
/// is published once per batch of frames ([`publish_deliveries`]).
fn record_delivery(now: u64, body: &[u8], out: &mut Outcome, last_seq: &mut Vec<(u32, u64)>) {
    let ts = u64::from_be_bytes(body[0..8].try_into().unwrap());
    let seq = u64::from_be_bytes(body[8..16].try_into().unwrap());
    let from = u32::from_be_bytes(body[16..20].try_into().unwrap());
    if let Some(hist) = out.hist.as_mut() {
        hist.saturating_record((now.saturating_sub(ts) / 1_000).max(1));
    }
    out.received += 1;
    match last_seq.iter_mut().find(|(p, _)| *p == from) {
        Some((_, last)) => {
            if seq <= *last {
                out.out_of_order += 1;
            }
            *last = seq;
        }
        None => last_seq.push((from, seq)),
    }
}

/// Makes `count` deliveries of client `index`, the last read at `now`,
/// visible to the progress bar, the window publisher and the end of the run:
/// once per batch, as these counters are shared by every client task.
fn publish_deliveries(sh: &Shared, index: usize, count: u64, now: u64, received: u64) {
    sh.received[index].store(received, Ordering::Release);
    sh.counters.delivered.fetch_add(count, Ordering::Relaxed);
    sh.last_delivery_ns.fetch_max(now, Ordering::AcqRel);
}

/// One room's dedicated publisher: `messages` messages at `rate`, or as fast
/// as the window allows (message i waits until every live member of the room
/// has received message i − window).
async fn publisher(sh: Arc<Shared>, room_index: usize) -> Outcome {
    let mut out = Outcome::new(&sh.spec);
    let spec = &sh.spec;
    let room = spec.room(room_index);
    let pub_index = (spec.clients() + room_index) as u32;
    let ep = spec.pub_url.as_ref().unwrap_or(&spec.url);
    let id = format!("pub{room_index}");
    let (mut conn, mut state) = match sh.connect_and_join(&id, &room, ep).await {
        Ok(c) => c,
        Err(e) => {
            out.failure = Some(format!("publisher: {e:#}"));
            sh.publishing_left.fetch_sub(1, Ordering::AcqRel);
            sh.publishers_ready.fetch_add(1, Ordering::AcqRel);
            return out;
        }
    };
    out.joined = true;
    sh.publishers_ready.fetch_add(1, Ordering::AcqRel);
    tokio::select! {
        _ = sh.go.cancelled() => {}
        _ = sh.stop.cancelled() => {}
    }
    let mut reply = Vec::new();
    let start = Instant::now();
    // The room's minimum at the last scan and the member that had it.
    let (mut known_min, mut laggard, mut last_scan) = (0u64, None, Instant::now());
    let result: anyhow::Result<()> = async {
        for i in 0..spec.messages {
            let due = spec
                .rate
                .map(|rate| start + Duration::from_secs_f64(i as f64 / rate));
            // Wait for the schedule or the window, reading what the server
            // sends meanwhile (pings must be answered).
            let mut waited_since = Instant::now();
            let mut last_delivered = sh.counters.delivered.load(Ordering::Acquire);
            loop {
                let ready = match due {
                    Some(t) => Instant::now() >= t,
                    None => {
                        i < spec.window || {
                            // `known_min` is a lower bound (counts only grow).
                            // While the last scan's laggard still lags, the
                            // room is not there: scan the room (1,000 members)
                            // only once it caught up, or every 5 ms.
                            let need = i - spec.window;
                            if known_min < need
                                && (laggard.is_none_or(|l| !sh.lags(l, need))
                                    || last_scan.elapsed() > Duration::from_millis(5))
                            {
                                last_scan = Instant::now();
                                (known_min, laggard) = match sh.min_live_received(room_index) {
                                    None => bail!("no member left in {room}"),
                                    Some((min, who)) => (min, Some(who)),
                                };
                            }
                            known_min >= need
                        }
                    }
                };
                if ready {
                    break;
                }
                let d = sh.counters.delivered.load(Ordering::Acquire);
                if d != last_delivered {
                    (last_delivered, waited_since) = (d, Instant::now());
                } else if due.is_none() && waited_since.elapsed() > spec.step_timeout {
                    bail!(
                        "window: no delivery for {:?} (message {i})",
                        spec.step_timeout
                    );
                }
                let sleep = match due {
                    Some(t) => tokio::time::sleep_until(t.into()),
                    None => tokio::time::sleep(Duration::from_millis(2)),
                };
                tokio::select! {
                    _ = sleep => {}
                    _ = sh.progress.notified(), if due.is_none() => {}
                    f = conn.recv() => {
                        let Some(f) = f? else { bail!("publisher connection ended") };
                        spec.wire.incoming(&mut state, f, &mut reply);
                        if !reply.is_empty() {
                            conn.send(std::mem::take(&mut reply)).await?;
                        }
                    }
                    _ = sh.stop.cancelled() => bail!("stopped"),
                }
            }
            if let Some(t) = due {
                out.max_lag_us = out.max_lag_us.max(t.elapsed().as_micros() as u64);
            }
            let payload = sh.payload(i, pub_index);
            let now = sh.now_ns();
            let send = conn.send(spec.wire.publish(&room, &id, &payload));
            match tokio::time::timeout(spec.step_timeout, send).await {
                Ok(r) => r?,
                Err(_) => bail!("publisher send blocked for {:?}", spec.step_timeout),
            }
            out.first_send_ns.get_or_insert(now);
            out.last_send_ns = Some(now);
            out.sent += 1;
            sh.counters.sent.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }
    .await;
    if let Err(e) = result {
        if !sh.stop.is_cancelled() {
            out.failure = Some(format!("{e:#}"));
        }
    }
    sh.publishing_left.fetch_sub(1, Ordering::AcqRel);
    // Stay joined until the run ends: leaving would send presence changes
    // to every member mid-measurement. Keep answering pings.
    loop {
        tokio::select! {
            _ = sh.stop.cancelled() => break,
            f = conn.recv() => match f {
                Ok(Some(f)) => {
                    spec.wire.incoming(&mut state, f, &mut reply);
                    if !reply.is_empty() && conn.send(std::mem::take(&mut reply)).await.is_err() {
                        break;
                    }
                }
                _ => break,
            },
        }
    }
    let _ = tokio::time::timeout(Duration::from_millis(500), conn.close()).await;
    out
}

/// Runs the load; returns the JSON result and whether it was complete.
pub async fn run(spec: LoadSpec) -> anyhow::Result<(serde_json::Value, bool)> {
    let n = spec.clients();
    let nofile = measure::raise_nofile(n as u64 + 1024);
    if nofile < n as u64 + 64 {
        bail!("open-file limit {nofile} is below {n} connections: raise `ulimit -n` (root can)");
    }
    let publishers = match spec.publish {
        Publish::Dedicated => spec.rooms as u64,
        Publish::Members => n as u64,
        Publish::Nobody => 0,
    };
    let sh = Arc::new(Shared {
        dialer: Dialer::new(spec.source_ips, spec.transport, spec.tls_resume)?,
        epoch: Instant::now(),
        stop: CancellationToken::new(),
        go: CancellationToken::new(),
        counters: Arc::new(Counters::default()),
        received: (0..n).map(|_| AtomicU64::new(0)).collect(),
        alive: (0..n).map(|_| AtomicBool::new(false)).collect(),
        last_delivery_ns: AtomicU64::new(0),
        progress: Notify::new(),
        publishing_left: AtomicU64::new(publishers),
        publishers_ready: AtomicU64::new(0),
        spec,
    });
    let spec = &sh.spec;
    let say = |msg: String| {
        if !spec.quiet {
            eprintln!("prscd-bench: {msg}");
        }
    };
    let limit_hit = Arc::new(AtomicBool::new(false));
    {
        let (stop, hit, limit) = (sh.stop.clone(), limit_hit.clone(), spec.duration_limit);
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(limit) => {
                    hit.store(true, Ordering::Release);
                    stop.cancel();
                }
                _ = stop.cancelled() => {}
            }
        });
    }
    let is_prscd = spec.wire.name() == "prscd";
    let health_before = if is_prscd {
        health(&sh).await.ok()
    } else {
        None
    };
    let pid = spec.server_pid;
    let mem_before = pid.and_then(measure::proc_mem);
    let cpu_before = pid.and_then(measure::proc_cpu);
    let self_cpu_before = measure::self_cpu();
    let machine_before = measure::MachineCpu::now();

    // RSS against connections, sampled while connections come up.
    let rss_series = Arc::new(Mutex::new(Vec::<(u64, u64)>::new()));
    if let Some(pid) = pid {
        let (series, c, stop) = (rss_series.clone(), sh.counters.clone(), sh.stop.clone());
        tokio::spawn(async move {
            loop {
                if let Some((rss, _)) = measure::proc_mem(pid) {
                    series
                        .lock()
                        .unwrap()
                        .push((c.connected.load(Ordering::Relaxed), rss));
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                    _ = stop.cancelled() => break,
                }
            }
        });
    }

    // 1. Connect and join.
    say(format!(
        "{}: {n} clients in {} room(s) of {} on {} via {:?} ({} at a time)",
        spec.scenario,
        spec.rooms,
        spec.members,
        spec.wire.name(),
        spec.transport,
        spec.connect_concurrency
    ));
    let progress = Progress::start(
        spec.scenario.clone(),
        n as u64,
        sh.counters.clone(),
        spec.quiet,
    );
    let permits = Arc::new(Semaphore::new(spec.connect_concurrency));
    let setup_start_ns = sh.now_ns();
    let members: Vec<_> = (0..n)
        .map(|i| tokio::spawn(member(sh.clone(), i, permits.clone())))
        .collect();
    let mut stopped_by: Option<String> = None;
    loop {
        let c = &sh.counters;
        let done = c.connected.load(Ordering::Relaxed) + c.failed.load(Ordering::Relaxed);
        if done >= n as u64 || sh.stop.is_cancelled() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let setup_end_ns = sh.now_ns();
    let joined = sh.counters.connected.load(Ordering::Relaxed);
    let failed = sh.counters.failed.load(Ordering::Relaxed);
    if failed > 0 {
        stopped_by = Some(format!("{failed} clients failed to connect or join"));
    }
    let setup_secs = (setup_end_ns - setup_start_ns) as f64 / 1e9;
    say(format!(
        "{joined}/{n} joined in {setup_secs:.3} s ({:.0}/s)",
        joined as f64 / setup_secs
    ));
    let mem_setup = pid.and_then(measure::proc_mem);

    // 2. Publishers (dedicated ones connect now), settle, go.
    let pubs: Vec<_> = if spec.publish == Publish::Dedicated && !sh.stop.is_cancelled() {
        (0..spec.rooms)
            .map(|r| tokio::spawn(publisher(sh.clone(), r)))
            .collect()
    } else {
        Vec::new()
    };
    if !pubs.is_empty() {
        // Until every publisher has joined (or failed), bounded.
        let deadline = Instant::now() + spec.step_timeout;
        while sh.publishers_ready.load(Ordering::Acquire) < spec.rooms as u64
            && Instant::now() < deadline
            && !sh.stop.is_cancelled()
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    tokio::select! {
        _ = tokio::time::sleep(spec.settle) => {}
        _ = sh.stop.cancelled() => {}
    }
    let mem_settled = pid.and_then(measure::proc_mem);
    // CPU from here on is the traffic's, not the handshakes' and joins'.
    let cpu_go = pid.and_then(measure::proc_cpu);
    let self_cpu_go = measure::self_cpu();
    let machine_go = measure::MachineCpu::now();
    sh.go.cancel();

    // 3. Wait for the end: publishers done and every live client has all
    //    it should get, or no delivery for a step timeout.
    if publishers > 0 {
        let mut last = (u64::MAX, Instant::now());
        loop {
            if sh.stop.is_cancelled() {
                break;
            }
            let d = sh.counters.delivered.load(Ordering::Acquire);
            if sh.publishing_left.load(Ordering::Acquire) == 0 {
                let sent = sh.counters.sent.load(Ordering::Acquire);
                let want = expected_deliveries(spec, sent);
                if d >= want {
                    break;
                }
                if d != last.0 {
                    last = (d, Instant::now());
                } else if last.1.elapsed() > spec.step_timeout {
                    stopped_by.get_or_insert(format!(
                        "no delivery for {:?} after the last send",
                        spec.step_timeout
                    ));
                    break;
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(5)) => {}
                _ = sh.stop.cancelled() => {}
            }
        }
    }
    let mem_end = pid.and_then(measure::proc_mem);
    let cpu_end = pid.and_then(measure::proc_cpu);
    let self_cpu_end = measure::self_cpu();
    let machine_end = measure::MachineCpu::now();
    if limit_hit.load(Ordering::Acquire) {
        stopped_by = Some(format!(
            "duration limit ({:?}) reached",
            spec.duration_limit
        ));
    }
    sh.stop.cancel();
    drop(progress);

    // 4. Collect, each bounded.
    let collect = Duration::from_secs(10);
    let mut hist = measure::new_hist();
    let (mut delivered, mut out_of_order, mut sent, mut max_lag_us) = (0u64, 0u64, 0u64, 0u64);
    let (mut first_send, mut last_send) = (u64::MAX, 0u64);
    let mut failures: Vec<String> = Vec::new();
    let mut disconnected = 0u64;
    for h in pubs.into_iter().chain(members) {
        match tokio::time::timeout(collect, h).await {
            Ok(Ok(o)) => {
                if let Some(h) = &o.hist {
                    hist.add(h).expect("same bounds");
                }
                delivered += o.received;
                out_of_order += o.out_of_order;
                sent += o.sent;
                max_lag_us = max_lag_us.max(o.max_lag_us);
                first_send = first_send.min(o.first_send_ns.unwrap_or(u64::MAX));
                last_send = last_send.max(o.last_send_ns.unwrap_or(0));
                if o.joined && o.failure.is_some() {
                    disconnected += 1;
                }
                if let Some(f) = o.failure {
                    failures.push(f);
                }
            }
            _ => failures.push("client task did not finish".into()),
        }
    }
    let health_after = if is_prscd {
        tokio::time::sleep(Duration::from_millis(300)).await;
        health(&sh).await.ok()
    } else {
        None
    };

    // 5. Numbers.
    let expected = expected_deliveries(spec, sent);
    let lost = expected.saturating_sub(delivered);
    let last_delivery_ns = sh.last_delivery_ns.load(Ordering::Acquire);
    let delivery_secs = if first_send != u64::MAX && last_delivery_ns > first_send {
        (last_delivery_ns - first_send) as f64 / 1e9
    } else {
        0.0
    };
    let send_secs = if last_send > first_send && first_send != u64::MAX {
        (last_send - first_send) as f64 / 1e9
    } else {
        0.0
    };
    let want_sent = match spec.publish {
        Publish::Dedicated => spec.messages * spec.rooms as u64,
        Publish::Members => n as u64 * spec.messages_per_member(),
        Publish::Nobody => 0,
    };
    let complete = stopped_by.is_none() && lost == 0 && disconnected == 0 && sent == want_sent;
    let kb = |m: Option<(u64, u64)>| m.map(|(rss, _)| rss);
    let server = pid.map(|pid| {
        let cpu_between = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) => Some(measure::round(b - a, 3)),
            _ => None,
        };
        let cpu = cpu_between(cpu_before, cpu_end);
        let cpu_traffic = cpu_between(cpu_go, cpu_end);
        let per_delivery = |c: Option<f64>| {
            c.filter(|_| delivered > 0)
                .map(|c| measure::round(c * 1e6 / delivered as f64, 2))
        };
        let per_conn = match (kb(mem_before), kb(mem_settled)) {
            (Some(a), Some(b)) if joined > 0 => {
                Some(measure::round((b as f64 - a as f64) / joined as f64, 2))
            }
            _ => None,
        };
        json!({
            "pid": pid,
            "rss_kb": {
                "before": kb(mem_before),
                "after_setup": kb(mem_setup),
                "settled": kb(mem_settled),
                "end": kb(mem_end),
            },
            "rss_kb_per_conn": per_conn,
            "hwm_kb": mem_end.map(|(_, hwm)| hwm),
            "cpu_s": cpu,
            "cpu_us_per_delivery": per_delivery(cpu),
            // From the go signal (after setup and settle) to the end.
            "traffic_cpu_s": cpu_traffic,
            "traffic_cpu_us_per_delivery": per_delivery(cpu_traffic),
            // Before the go signal: handshakes, joins and the settle.
            "setup_cpu_us_per_conn": cpu_between(cpu_before, cpu_go)
                .filter(|_| joined > 0)
                .map(|c| measure::round(c * 1e6 / joined as f64, 1)),
            "rss_series": *rss_series.lock().unwrap(),
        })
    });
    failures.sort();
    let mut failure_kinds: Vec<(String, usize)> = Vec::new();
    for f in failures {
        match failure_kinds.last_mut() {
            Some((last, count)) if *last == f => *count += 1,
            _ => failure_kinds.push((f, 1)),
        }
    }
    let dropped = match (&health_before, &health_after) {
        (Some(b), Some(a)) => Some(dropped_delta(b, a)),
        _ => None,
    };
    let result = json!({
        "tool": "prscd-bench",
        "scenario": spec.scenario,
        "server": spec.wire.name(),
        "transport": format!("{:?}", spec.transport).to_lowercase(),
        "complete": complete,
        "stopped_by": stopped_by,
        "params": {
            "url": format!("wss://{}:{}{}", spec.url.host, spec.url.port, spec.url.path),
            "pub_url": spec.pub_url.as_ref().map(|e| format!("wss://{}:{}{}", e.host, e.port, e.path)),
            "more_urls": spec.more_urls.iter().map(|e| format!("wss://{}:{}{}", e.host, e.port, e.path)).collect::<Vec<_>>(),
            "rooms": spec.rooms,
            "members": spec.members,
            "clients": n,
            "publish": format!("{:?}", spec.publish).to_lowercase(),
            "messages": spec.messages,
            "duration_s": spec.duration.as_secs_f64(),
            "rate": spec.rate.map_or(json!("max"), |r| json!(r)),
            "window": spec.window,
            "payload_bytes": spec.payload,
            "connect_concurrency": spec.connect_concurrency,
            "source_ips": spec.source_ips,
            "tls_resume": spec.tls_resume,
            "settle_s": spec.settle.as_secs_f64(),
        },
        "setup": {
            "joined": joined,
            "failed": failed,
            "seconds": measure::round(setup_secs, 4),
            "conn_per_s": measure::per_s(joined as f64, setup_secs),
            "tls_resumed": sh.dialer.resumed.load(Ordering::Relaxed),
        },
        "publish": {
            "sent": sent,
            "seconds": measure::round(send_secs, 4),
            "msgs_per_s": measure::per_s(sent as f64, send_secs),
            "max_send_lag_us": max_lag_us,
        },
        "delivery": {
            "expected": expected,
            "delivered": delivered,
            "lost": lost,
            "out_of_order": out_of_order,
            "seconds": measure::round(delivery_secs, 4),
            "msgs_per_s": measure::per_s(delivered as f64, delivery_secs),
            "disconnected": disconnected,
        },
        "latency_us": measure::quantiles(&hist),
        "server_process": server,
        "node_dropped": dropped,
        "client": {
            "cpu_s": measure::round(self_cpu_end - self_cpu_before, 3),
            "traffic_cpu_s": measure::round(self_cpu_end - self_cpu_go, 3),
            "nofile": nofile,
        },
        // The whole machine (all CPUs) during setup and during the traffic:
        // how much of it the host took.
        "machine": {
            "setup": machine_before.zip(machine_go).map(|(a, b)| a.until(&b)),
            "traffic": machine_go.zip(machine_end).map(|(a, b)| a.until(&b)),
        },
        "failures": failure_kinds.iter().take(20).map(|(f, c)| json!({"count": c, "what": f})).collect::<Vec<_>>(),
    });
    Ok((result, complete))
}

impl LoadSpec {
    /// Where member `index` connects.
    fn member_url(&self, index: usize) -> &Endpoint {
        match index % (1 + self.more_urls.len()) {
            0 => &self.url,
            i => &self.more_urls[i - 1],
        }
    }
}

/// Deliveries owed for `sent` messages, assuming every client joined.
fn expected_deliveries(spec: &LoadSpec, sent: u64) -> u64 {
    match spec.publish {
        Publish::Dedicated => sent * spec.members as u64,
        Publish::Members => sent * (spec.members as u64).saturating_sub(1),
        Publish::Nobody => 0,
    }
}

async fn health(sh: &Shared) -> anyhow::Result<serde_json::Value> {
    let body = tokio::time::timeout(sh.spec.step_timeout, sh.dialer.get(&sh.spec.url, "/health"))
        .await??;
    Ok(serde_json::from_str(body.trim())?)
}

/// Counters under `dropped` that grew between two `/health` answers.
fn dropped_delta(before: &serde_json::Value, after: &serde_json::Value) -> serde_json::Value {
    let mut delta = serde_json::Map::new();
    if let Some(map) = after["dropped"].as_object() {
        for (reason, v) in map {
            let a = v.as_u64().unwrap_or(0);
            let b = before["dropped"][reason].as_u64().unwrap_or(0);
            if a > b {
                delta.insert(reason.clone(), json!(a - b));
            }
        }
    }
    serde_json::Value::Object(delta)
}

/// A one-screen summary of a result.
pub fn summary(r: &serde_json::Value) -> String {
    let p = &r["params"];
    let l = &r["latency_us"];
    let d = &r["delivery"];
    let mut s = format!(
        "{} on {} ({}): {} clients in {} room(s), publish {}, rate {}, payload {} B\n",
        r["scenario"].as_str().unwrap_or(""),
        r["server"].as_str().unwrap_or(""),
        r["transport"].as_str().unwrap_or(""),
        p["clients"],
        p["rooms"],
        p["publish"].as_str().unwrap_or(""),
        p["rate"],
        p["payload_bytes"],
    );
    s += &format!(
        "  setup      {} joined ({} failed) in {} s = {} conn/s\n",
        r["setup"]["joined"], r["setup"]["failed"], r["setup"]["seconds"], r["setup"]["conn_per_s"]
    );
    if p["tls_resume"] == true {
        s += &format!(
            "  tls        {} handshakes resumed\n",
            r["setup"]["tls_resumed"]
        );
    }
    if r["publish"]["sent"].as_u64().unwrap_or(0) > 0 {
        s += &format!(
            "  publish    {} sent in {} s = {} msg/s (max send lag {} µs)\n",
            r["publish"]["sent"],
            r["publish"]["seconds"],
            r["publish"]["msgs_per_s"],
            r["publish"]["max_send_lag_us"]
        );
        s += &format!(
            "  delivered  {}/{} in {} s = {} msg/s; lost {}, out of order {}, disconnected {}\n",
            d["delivered"],
            d["expected"],
            d["seconds"],
            d["msgs_per_s"],
            d["lost"],
            d["out_of_order"],
            d["disconnected"]
        );
        if !l.is_null() {
            s += &format!(
                "  latency µs p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  (mean {})\n",
                l["p50"], l["p90"], l["p99"], l["p999"], l["max"], l["mean"]
            );
        }
    }
    if let Some(sv) = r["server_process"].as_object() {
        s += &format!(
            "  server     VmRSS {} kB before, {} kB settled, {} kB at end ({} kB/conn)\n",
            sv["rss_kb"]["before"],
            sv["rss_kb"]["settled"],
            sv["rss_kb"]["end"],
            sv["rss_kb_per_conn"],
        );
        s += &format!(
            "  server     CPU {} s: setup {} µs/conn; traffic {} s ({} µs/delivery)\n",
            sv["cpu_s"],
            sv["setup_cpu_us_per_conn"],
            sv["traffic_cpu_s"],
            sv["traffic_cpu_us_per_delivery"]
        );
    }
    s += &format!(
        "  client     CPU {} s (traffic {} s)\n",
        r["client"]["cpu_s"], r["client"]["traffic_cpu_s"]
    );
    if let Some(m) = r["node_dropped"].as_object() {
        if !m.is_empty() {
            s += &format!("  node drops {}\n", serde_json::Value::Object(m.clone()));
        }
    }
    if let Some(f) = r["failures"].as_array() {
        for x in f.iter().take(5) {
            s += &format!(
                "  failure    {}× {}\n",
                x["count"],
                x["what"].as_str().unwrap_or("")
            );
        }
    }
    s += &format!(
        "  result     {}\n",
        if r["complete"] == true {
            "complete".to_owned()
        } else {
            format!(
                "INCOMPLETE: {}",
                r["stopped_by"]
                    .as_str()
                    .unwrap_or("messages lost or clients disconnected")
            )
        }
    );
    s
}
