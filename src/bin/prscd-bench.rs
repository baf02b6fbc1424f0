//! prscd-bench: a load generator for a prscd node (see BENCHMARKS.md).
//!
//! One scenario so far, `fanout`: N subscribers join one channel over TLS
//! WebSocket, one publisher sends M data messages into it, and every
//! subscriber measures the end-to-end latency of each message (the payload
//! carries the send time; publisher and subscribers share one process and one
//! monotonic clock). It reports the connect+join rate, delivered messages per
//! second, the latency distribution, lost messages, and (with
//! `--server-pid`) the node's memory and CPU use, plus the node's `/health`
//! drop counters before and after.
//!
//! Every wait is bounded, and the whole run stops after `--duration-limit`
//! seconds whatever its state: it then reports what it has and exits 2.
//!
//! TLS: the client accepts ANY server certificate ([`AcceptAnyCert`]). That
//! is for benchmarking a dev node on loopback only; never point it at a
//! network you do not control.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use prscd::protocol::{self, Kind, Op};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Notify, Semaphore};
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

const USAGE: &str = "\
prscd-bench: load generator for a prscd node (WebSocket over TLS)

usage: prscd-bench fanout [options]

  --url URL               node endpoint, e.g. wss://127.0.0.1:8443/v1 (required)
  --publickey KEY         app public key (default: dev)
  --channel NAME          channel (default: bench)
  --subscribers N         subscriber connections (default: 100)
  --messages M            data messages the publisher sends (default: 1000)
  --rate R|max            messages/s, or `max`: as fast as the window allows (default: max)
  --window W              with --rate max: message i is sent only once every live
                          subscriber has received message i-W (default: 100)
  --payload BYTES         size of the binary payload `pl` (>= 8; default: 100)
  --connect-concurrency C connections being set up at once (default: 16)
  --threads T             client runtime worker threads (default: 1)
  --step-timeout S        longest wait for one step: connect, join ack,
                          window progress, final deliveries (default: 10)
  --duration-limit S      stop the whole run after S seconds (default: 60)
  --server-pid PID        read the node's VmRSS/VmHWM and CPU time from /proc/PID
  --json PATH             also write the results as JSON to PATH
  --quiet                 no progress lines on stderr

Exit status: 0 complete with no loss; 2 incomplete (limit hit, loss,
disconnects); 1 usage or setup error.

TLS certificates are NOT verified (loopback benchmarking only).
";

/// Latency histogram range: 1 µs to 60 s, 3 significant figures.
const HIST_MAX_US: u64 = 60_000_000;

#[derive(Debug, Clone)]
struct Args {
    url: String,
    publickey: String,
    channel: String,
    subscribers: usize,
    messages: u64,
    rate: Option<f64>,
    window: u64,
    payload: usize,
    connect_concurrency: usize,
    threads: usize,
    step_timeout: Duration,
    duration_limit: Duration,
    server_pid: Option<u32>,
    json: Option<PathBuf>,
    quiet: bool,
}

fn parse_args(argv: &[String]) -> anyhow::Result<Args> {
    let mut it = argv.iter();
    match it.next().map(String::as_str) {
        Some("fanout") => {}
        Some("-h" | "--help") | None => {
            print!("{USAGE}");
            std::process::exit(if argv.is_empty() { 1 } else { 0 });
        }
        Some(other) => bail!("unknown scenario {other:?} (only `fanout` exists)"),
    }
    let mut a = Args {
        url: String::new(),
        publickey: "dev".into(),
        channel: "bench".into(),
        subscribers: 100,
        messages: 1000,
        rate: None,
        window: 100,
        payload: 100,
        connect_concurrency: 16,
        threads: 1,
        step_timeout: Duration::from_secs(10),
        duration_limit: Duration::from_secs(60),
        server_pid: None,
        json: None,
        quiet: false,
    };
    while let Some(arg) = it.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n, Some(v.to_owned())),
            _ => (arg.as_str(), None),
        };
        if name == "--quiet" {
            a.quiet = true;
            continue;
        }
        if name == "-h" || name == "--help" {
            print!("{USAGE}");
            std::process::exit(0);
        }
        const WITH_VALUE: [&str; 14] = [
            "--url",
            "--publickey",
            "--channel",
            "--subscribers",
            "--messages",
            "--rate",
            "--window",
            "--payload",
            "--connect-concurrency",
            "--threads",
            "--step-timeout",
            "--duration-limit",
            "--server-pid",
            "--json",
        ];
        if !WITH_VALUE.contains(&name) {
            bail!("unknown option {name}\n\n{USAGE}");
        }
        let value = match inline {
            Some(v) => v,
            None => it
                .next()
                .cloned()
                .with_context(|| format!("{name} needs a value"))?,
        };
        let num = |v: &str| -> anyhow::Result<u64> {
            v.replace('_', "")
                .parse::<u64>()
                .with_context(|| format!("{name}: not a number: {v:?}"))
        };
        let secs = |v: &str| -> anyhow::Result<Duration> {
            let s: f64 = v
                .parse()
                .with_context(|| format!("{name}: not a number of seconds: {v:?}"))?;
            if !(s > 0.0 && s.is_finite()) {
                bail!("{name} must be > 0");
            }
            Ok(Duration::from_secs_f64(s))
        };
        match name {
            "--url" => a.url = value,
            "--publickey" => a.publickey = value,
            "--channel" => a.channel = value,
            "--subscribers" => a.subscribers = num(&value)? as usize,
            "--messages" => a.messages = num(&value)?,
            "--rate" => {
                a.rate = if value == "max" {
                    None
                } else {
                    let r: f64 = value
                        .parse()
                        .with_context(|| format!("--rate: not a number or `max`: {value:?}"))?;
                    if !(r > 0.0 && r.is_finite()) {
                        bail!("--rate must be > 0 or `max`");
                    }
                    Some(r)
                }
            }
            "--window" => a.window = num(&value)?.max(1),
            "--payload" => a.payload = num(&value)? as usize,
            "--connect-concurrency" => a.connect_concurrency = (num(&value)? as usize).max(1),
            "--threads" => a.threads = (num(&value)? as usize).max(1),
            "--step-timeout" => a.step_timeout = secs(&value)?,
            "--duration-limit" => a.duration_limit = secs(&value)?,
            "--server-pid" => a.server_pid = Some(num(&value)? as u32),
            "--json" => a.json = Some(PathBuf::from(value)),
            _ => unreachable!("{name} is in WITH_VALUE"),
        }
    }
    if a.url.is_empty() {
        bail!("--url is required\n\n{USAGE}");
    }
    if a.payload < 8 {
        bail!("--payload must be at least 8 bytes (the send timestamp)");
    }
    if a.subscribers == 0 || a.messages == 0 {
        bail!("--subscribers and --messages must be > 0");
    }
    Ok(a)
}

/// `wss://host:port/path`, split.
#[derive(Debug, Clone)]
struct Endpoint {
    host: String,
    port: u16,
    path: String,
}

fn parse_url(url: &str) -> anyhow::Result<Endpoint> {
    let rest = url
        .strip_prefix("wss://")
        .or_else(|| url.strip_prefix("https://"))
        .context("--url must start with wss:// (or https://)")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/v1"),
    };
    if path.contains('?') {
        bail!("--url must not carry a query: the tool adds publickey and id");
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, p) = v6.split_once(']').context("bad IPv6 host in --url")?;
        (h.to_owned(), p.strip_prefix(':').unwrap_or("443"))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), p),
            None => (authority.to_owned(), "443"),
        }
    };
    let port = port.parse().context("bad port in --url")?;
    Ok(Endpoint {
        host,
        port,
        path: path.to_owned(),
    })
}

/// Accepts every server certificate. FOR LOOPBACK BENCHMARKING ONLY: the
/// dev node's certificate is self-signed, and the benchmark measures the node,
/// not the PKI. Handshake signatures are still checked (so TLS does its real
/// work), only the chain and the name are not.
#[derive(Debug)]
struct AcceptAnyCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

type Ws = WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>;

/// What every task shares.
struct Shared {
    args: Args,
    endpoint: Endpoint,
    server_name: ServerName<'static>,
    tls: TlsConnector,
    /// Zero of the timestamps carried in payloads.
    epoch: Instant,
    stop: CancellationToken,
    /// Per subscriber: data messages received, and whether it is still up.
    received: Vec<AtomicU64>,
    alive: Vec<AtomicBool>,
    /// All bench data messages received by all subscribers.
    delivered: AtomicU64,
    /// ns since `epoch` of the latest delivery.
    last_delivery_ns: AtomicU64,
    /// Woken on every delivery and subscriber exit: the publisher's window.
    progress: Notify,
    /// Messages the publisher has sent, and whether it has stopped sending.
    sent: AtomicU64,
    publishing_done: AtomicBool,
}

impl Shared {
    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    async fn connect(&self, id: &str) -> anyhow::Result<Ws> {
        let tcp = TcpStream::connect((self.endpoint.host.as_str(), self.endpoint.port))
            .await
            .context("tcp connect")?;
        tcp.set_nodelay(true)?;
        let tls = self
            .tls
            .connect(self.server_name.clone(), tcp)
            .await
            .context("tls handshake")?;
        let url = format!(
            "wss://{}:{}{}?publickey={}&id={}",
            self.endpoint.host, self.endpoint.port, self.endpoint.path, self.args.publickey, id
        );
        let (ws, _) = tokio_tungstenite::client_async(url, tls)
            .await
            .context("websocket handshake")?;
        Ok(ws)
    }

    /// Joins the channel and waits for the ack.
    async fn join(&self, ws: &mut Ws, id: &str) -> anyhow::Result<()> {
        ws.send(Message::Binary(join_frame(&self.args.channel, id).into()))
            .await
            .context("send channel_join")?;
        loop {
            match ws.next().await {
                Some(Ok(Message::Binary(b))) => {
                    if let Ok(m) = protocol::decode(&b) {
                        if m.kind == Kind::Control(Op::ChannelJoin)
                            && m.channel == self.args.channel
                        {
                            return Ok(());
                        }
                    }
                }
                Some(Ok(Message::Close(f))) => bail!("closed by the node before the ack: {f:?}"),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e).context("waiting for the join ack"),
                None => bail!("connection ended before the join ack"),
            }
        }
    }

    /// Connect + join, bounded by the step timeout and the stop token.
    async fn connect_and_join(&self, id: &str) -> anyhow::Result<Ws> {
        let work = async {
            let mut ws = self.connect(id).await?;
            self.join(&mut ws, id).await?;
            anyhow::Ok(ws)
        };
        tokio::select! {
            r = tokio::time::timeout(self.args.step_timeout, work) => {
                r.map_err(|_| anyhow::anyhow!("connect+join took over {:?}", self.args.step_timeout))?
            }
            _ = self.stop.cancelled() => bail!("stopped during connect+join"),
        }
    }

    fn min_live_received(&self) -> Option<u64> {
        self.received
            .iter()
            .zip(&self.alive)
            .filter(|(_, alive)| alive.load(Ordering::Acquire))
            .map(|(n, _)| n.load(Ordering::Acquire))
            .min()
    }

    fn live_subscribers(&self) -> usize {
        self.alive
            .iter()
            .filter(|a| a.load(Ordering::Acquire))
            .count()
    }
}

/// msgpack `{t:"control", op:"channel_join", c, pl:<bin: msgpack {id}>}`.
fn join_frame(channel: &str, id: &str) -> Vec<u8> {
    let mut state = Vec::new();
    rmp::encode::write_map_len(&mut state, 1).unwrap();
    rmp::encode::write_str(&mut state, "id").unwrap();
    rmp::encode::write_str(&mut state, id).unwrap();
    let mut out = Vec::new();
    rmp::encode::write_map_len(&mut out, 4).unwrap();
    for (k, v) in [("t", "control"), ("op", "channel_join"), ("c", channel)] {
        rmp::encode::write_str(&mut out, k).unwrap();
        rmp::encode::write_str(&mut out, v).unwrap();
    }
    rmp::encode::write_str(&mut out, "pl").unwrap();
    rmp::encode::write_bin(&mut out, &state).unwrap();
    out
}

/// msgpack `{t:"data", c, pl:<bin of `payload` bytes>}` with the payload
/// zeroed, and the offset of the payload in the frame. The payload is: send
/// time (u64 BE, ns since the shared epoch), then the sequence number (u64
/// BE) if there is room, then zeros.
fn data_template(channel: &str, payload: usize) -> (Vec<u8>, usize) {
    let mut out = Vec::new();
    rmp::encode::write_map_len(&mut out, 3).unwrap();
    for (k, v) in [("t", "data"), ("c", channel)] {
        rmp::encode::write_str(&mut out, k).unwrap();
        rmp::encode::write_str(&mut out, v).unwrap();
    }
    rmp::encode::write_str(&mut out, "pl").unwrap();
    rmp::encode::write_bin(&mut out, &vec![0u8; payload]).unwrap();
    let offset = out.len() - payload;
    (out, offset)
}

/// The (timestamp, sequence) of a relayed bench data message.
fn read_data(frame: &[u8]) -> Option<(u64, Option<u64>)> {
    let msg = protocol::decode_relayed(frame).ok()?;
    if msg.kind != Kind::Data {
        return None;
    }
    let mut raw = msg.payload?;
    let len = rmp::decode::read_bin_len(&mut raw).ok()? as usize;
    let body = raw.get(..len)?;
    let ts = u64::from_be_bytes(body.get(..8)?.try_into().ok()?);
    let seq = body
        .get(8..16)
        .map(|s| u64::from_be_bytes(s.try_into().unwrap()));
    Some((ts, seq))
}

fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIST_MAX_US, 3).expect("histogram bounds")
}

#[derive(Default)]
struct SubOutcome {
    joined_at_ns: Option<u64>,
    hist: Option<Histogram<u64>>,
    received: u64,
    out_of_order: u64,
    other_frames: u64,
    /// Why it ended before being told to stop (connect failure, close, error).
    failure: Option<String>,
}

async fn subscriber(sh: Arc<Shared>, index: usize, permits: Arc<Semaphore>) -> SubOutcome {
    let mut out = SubOutcome::default();
    let id = format!("sub-{index}");
    let ws = {
        let Ok(_permit) = permits.acquire().await else {
            out.failure = Some("setup aborted".into());
            return out;
        };
        match sh.connect_and_join(&id).await {
            Ok(ws) => ws,
            Err(e) => {
                out.failure = Some(format!("{e:#}"));
                return out;
            }
        }
    };
    out.joined_at_ns = Some(sh.now_ns());
    sh.alive[index].store(true, Ordering::Release);
    let mut ws = ws;
    let mut hist = new_hist();
    let mut last_seq: Option<u64> = None;
    loop {
        let frame = tokio::select! {
            biased;
            _ = sh.stop.cancelled() => break,
            f = ws.next() => f,
        };
        match frame {
            Some(Ok(Message::Binary(b))) => match read_data(&b) {
                Some((ts, seq)) => {
                    let now = sh.now_ns();
                    hist.saturating_record((now.saturating_sub(ts) / 1_000).max(1));
                    out.received += 1;
                    if let (Some(seq), Some(last)) = (seq, last_seq) {
                        if seq <= last {
                            out.out_of_order += 1;
                        }
                    }
                    last_seq = seq.or(last_seq);
                    sh.received[index].store(out.received, Ordering::Release);
                    sh.delivered.fetch_add(1, Ordering::AcqRel);
                    sh.last_delivery_ns.fetch_max(now, Ordering::AcqRel);
                    sh.progress.notify_one();
                }
                None => out.other_frames += 1,
            },
            Some(Ok(Message::Close(f))) => {
                out.failure = Some(format!("closed by the node: {f:?}"));
                break;
            }
            Some(Ok(_)) => {} // pings are answered by tungstenite
            Some(Err(e)) => {
                out.failure = Some(format!("read error: {e}"));
                break;
            }
            None => {
                out.failure = Some("connection ended".into());
                break;
            }
        }
    }
    sh.alive[index].store(false, Ordering::Release);
    sh.progress.notify_one();
    out.hist = Some(hist);
    // Leave politely; do not wait long for it.
    let _ = tokio::time::timeout(Duration::from_millis(500), ws.close(None)).await;
    out
}

#[derive(Default)]
struct PubOutcome {
    sent: u64,
    first_send_ns: Option<u64>,
    last_send_ns: Option<u64>,
    /// Fixed rate: how late sends were against their schedule.
    max_lag_us: u64,
    sum_lag_us: u64,
    /// Max rate: time spent waiting for the window.
    window_wait_us: u64,
    failure: Option<String>,
}

async fn publisher(sh: Arc<Shared>) -> PubOutcome {
    let mut out = PubOutcome::default();
    let ws = match sh.connect_and_join("pub").await {
        Ok(ws) => ws,
        Err(e) => {
            out.failure = Some(format!("publisher: {e:#}"));
            return out;
        }
    };
    let (mut sink, mut stream) = ws.split();
    // Drain what the node sends the publisher (pings; nothing else expected).
    let stop = sh.stop.clone();
    let reader = tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return None,
                f = stream.next() => match f {
                    Some(Ok(Message::Close(f))) => return Some(format!("publisher closed by the node: {f:?}")),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Some(format!("publisher read error: {e}")),
                    None => return Some("publisher connection ended".into()),
                },
            }
        }
    });

    let args = &sh.args;
    let (template, offset) = data_template(&args.channel, args.payload);
    let start = Instant::now();
    let result: anyhow::Result<()> = async {
        for i in 0..args.messages {
            match args.rate {
                Some(rate) => {
                    let due = start + Duration::from_secs_f64(i as f64 / rate);
                    tokio::select! {
                        _ = tokio::time::sleep_until(due.into()) => {}
                        _ = sh.stop.cancelled() => bail!("stopped"),
                    }
                    let lag = Instant::now().saturating_duration_since(due).as_micros() as u64;
                    out.max_lag_us = out.max_lag_us.max(lag);
                    out.sum_lag_us += lag;
                }
                None if i >= args.window => {
                    let need = i - args.window;
                    let waited = Instant::now();
                    let mut last_progress = (sh.delivered.load(Ordering::Acquire), Instant::now());
                    loop {
                        match sh.min_live_received() {
                            None => bail!("no subscriber left"),
                            Some(min) if min >= need => break,
                            Some(_) => {}
                        }
                        let d = sh.delivered.load(Ordering::Acquire);
                        if d != last_progress.0 {
                            last_progress = (d, Instant::now());
                        } else if last_progress.1.elapsed() > args.step_timeout {
                            bail!(
                                "window: no delivery for {:?} (message {i}, waiting for {need})",
                                args.step_timeout
                            );
                        }
                        tokio::select! {
                            _ = sh.progress.notified() => {}
                            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                            _ = sh.stop.cancelled() => bail!("stopped"),
                        }
                    }
                    out.window_wait_us += waited.elapsed().as_micros() as u64;
                }
                None => {}
            }
            let mut frame = template.clone();
            let now = sh.now_ns();
            frame[offset..offset + 8].copy_from_slice(&now.to_be_bytes());
            if args.payload >= 16 {
                frame[offset + 8..offset + 16].copy_from_slice(&i.to_be_bytes());
            }
            let send = sink.send(Message::Binary(Bytes::from(frame)));
            tokio::select! {
                r = tokio::time::timeout(args.step_timeout, send) => match r {
                    Ok(r) => r.context("publisher send")?,
                    Err(_) => bail!("publisher send blocked for {:?}", args.step_timeout),
                },
                _ = sh.stop.cancelled() => bail!("stopped"),
            }
            out.first_send_ns.get_or_insert(now);
            out.last_send_ns = Some(now);
            out.sent += 1;
            sh.sent.store(out.sent, Ordering::Release);
        }
        Ok(())
    }
    .await;
    if let Err(e) = result {
        if !sh.stop.is_cancelled() {
            out.failure = Some(format!("{e:#}"));
        }
    }
    sh.publishing_done.store(true, Ordering::Release);
    // Keep the connection open until the run ends (closing it would send
    // peer_offline to every subscriber mid-measurement).
    sh.stop.cancelled().await;
    reader.abort();
    let _ = tokio::time::timeout(Duration::from_millis(500), sink.close()).await;
    out
}

/// `/proc/<pid>/status` VmRSS and VmHWM, in kB.
fn proc_mem(pid: u32) -> Option<(u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        s.lines()
            .find(|l| l.starts_with(name))?
            .split_whitespace()
            .nth(1)?
            .parse::<u64>()
            .ok()
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// User + system CPU seconds of a process, from `/proc/<pid>/stat`.
fn proc_cpu(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_comm = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = after_comm.split_whitespace().collect();
    // Fields 14 and 15 of stat; after the comm, index 11 and 12.
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Some(ticks as f64 / if hz > 0 { hz as f64 } else { 100.0 })
}

/// CPU seconds used by this process so far.
fn self_cpu() -> f64 {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return 0.0;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// `GET /health` from the node, as JSON (bounded by `within`).
async fn health(sh: &Shared, within: Duration) -> anyhow::Result<serde_json::Value> {
    let work = async {
        let tcp = TcpStream::connect((sh.endpoint.host.as_str(), sh.endpoint.port)).await?;
        let mut tls = sh.tls.connect(sh.server_name.clone(), tcp).await?;
        let req = format!(
            "GET /health HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            sh.endpoint.host
        );
        tls.write_all(req.as_bytes()).await?;
        let mut raw = Vec::new();
        // The node closes without close_notify at times: keep what was read.
        let _ = tls.read_to_end(&mut raw).await;
        let text = String::from_utf8_lossy(&raw);
        let (_, body) = text.split_once("\r\n\r\n").context("no HTTP response")?;
        anyhow::Ok(serde_json::from_str(body.trim())?)
    };
    tokio::time::timeout(within, work)
        .await
        .context("/health timed out")?
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

fn quantiles(h: &Histogram<u64>) -> serde_json::Value {
    if h.is_empty() {
        return json!(null);
    }
    json!({
        "count": h.len(),
        "min": h.min(),
        "mean": (h.mean() * 10.0).round() / 10.0,
        "p50": h.value_at_quantile(0.50),
        "p90": h.value_at_quantile(0.90),
        "p99": h.value_at_quantile(0.99),
        "p999": h.value_at_quantile(0.999),
        "max": h.max(),
    })
}

fn round(x: f64, digits: i32) -> f64 {
    let m = 10f64.powi(digits);
    (x * m).round() / m
}

async fn fanout(args: Args) -> anyhow::Result<(serde_json::Value, bool)> {
    let endpoint = parse_url(&args.url)?;
    let server_name = ServerName::try_from(endpoint.host.clone()).context("bad host in --url")?;
    let provider = CryptoProvider::get_default()
        .cloned()
        .context("no rustls crypto provider")?;
    let config = rustls::ClientConfig::builder()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider)))
        .with_no_client_auth();
    let n = args.subscribers;
    let sh = Arc::new(Shared {
        endpoint,
        server_name,
        tls: TlsConnector::from(Arc::new(config)),
        epoch: Instant::now(),
        stop: CancellationToken::new(),
        received: (0..n).map(|_| AtomicU64::new(0)).collect(),
        alive: (0..n).map(|_| AtomicBool::new(false)).collect(),
        delivered: AtomicU64::new(0),
        last_delivery_ns: AtomicU64::new(0),
        progress: Notify::new(),
        sent: AtomicU64::new(0),
        publishing_done: AtomicBool::new(false),
        args: args.clone(),
    });
    let say = |msg: String| {
        if !args.quiet {
            eprintln!("prscd-bench: {msg}");
        }
    };

    // The whole run is bounded: past the limit, everything stops.
    let limit_hit = Arc::new(AtomicBool::new(false));
    {
        let (stop, hit, limit) = (sh.stop.clone(), limit_hit.clone(), args.duration_limit);
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

    let health_before = health(&sh, args.step_timeout).await;
    if let Err(e) = &health_before {
        say(format!("warning: /health before the run: {e:#}"));
    }
    let pid = args.server_pid;
    let mem_before = pid.and_then(proc_mem);
    let cpu_before = pid.and_then(proc_cpu);
    let self_cpu_before = self_cpu();

    // 1. Subscribers: connect and join, C at a time.
    say(format!(
        "connecting {n} subscribers to {} ({} at a time)",
        args.url, args.connect_concurrency
    ));
    let permits = Arc::new(Semaphore::new(args.connect_concurrency));
    let setup_start_ns = sh.now_ns();
    let subs: Vec<_> = (0..n)
        .map(|i| tokio::spawn(subscriber(sh.clone(), i, permits.clone())))
        .collect();
    // Wait until all are up, or some failed and the rest are up.
    let mut setup_failed = false;
    loop {
        let up = sh.live_subscribers();
        let finished_early = subs.iter().filter(|h| h.is_finished()).count();
        if up + finished_early >= n {
            setup_failed = finished_early > 0;
            break;
        }
        if sh.stop.is_cancelled() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let setup_end_ns = sh.now_ns();
    let joined = sh.live_subscribers();
    let setup_secs = (setup_end_ns - setup_start_ns) as f64 / 1e9;
    say(format!(
        "{joined}/{n} subscribers joined in {setup_secs:.3} s ({:.0} conn/s)",
        joined as f64 / setup_secs
    ));
    let mem_setup = pid.and_then(proc_mem);

    // 2. Publisher, and the wait for the deliveries.
    let mut stopped_by: Option<String> = None;
    if setup_failed {
        stopped_by = Some("some subscribers failed to connect or join".into());
    }
    let publisher = (joined > 0 && !sh.stop.is_cancelled()).then(|| {
        say(format!(
            "publishing {} messages of {} bytes at {}",
            args.messages,
            args.payload,
            args.rate.map_or_else(
                || format!("max rate (window {})", args.window),
                |r| format!("{r} msg/s")
            )
        ));
        tokio::spawn(publisher(sh.clone()))
    });
    if let Some(publisher) = &publisher {
        // Done when every live subscriber has everything the publisher sent,
        // or nothing moved for a step timeout after the publisher finished.
        let mut last = (u64::MAX, Instant::now());
        loop {
            if sh.stop.is_cancelled() {
                break;
            }
            let d = sh.delivered.load(Ordering::Acquire);
            if sh.publishing_done.load(Ordering::Acquire) || publisher.is_finished() {
                let sent = sh.sent.load(Ordering::Acquire);
                let all_in = sh.min_live_received().is_none_or(|min| min >= sent);
                if all_in {
                    break;
                }
                if d != last.0 {
                    last = (d, Instant::now());
                } else if last.1.elapsed() > args.step_timeout {
                    stopped_by.get_or_insert(format!(
                        "no delivery for {:?} after the last send",
                        args.step_timeout
                    ));
                    break;
                }
            }
            // Polling: `progress` is the publisher's (one waiter), and the
            // end time is the last delivery's own timestamp anyway.
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(5)) => {}
                _ = sh.stop.cancelled() => {}
            }
        }
    }
    let mem_end = pid.and_then(proc_mem);
    let cpu_end = pid.and_then(proc_cpu);
    let self_cpu_end = self_cpu();
    if limit_hit.load(Ordering::Acquire) {
        stopped_by = Some(format!(
            "duration limit ({:?}) reached",
            args.duration_limit
        ));
    }
    sh.stop.cancel();

    // 3. Collect, each bounded.
    let collect = Duration::from_secs(5);
    let pub_out = match publisher {
        Some(h) => match tokio::time::timeout(collect, h).await {
            Ok(Ok(o)) => o,
            _ => PubOutcome {
                failure: Some("publisher task did not finish".into()),
                ..PubOutcome::default()
            },
        },
        None => PubOutcome::default(),
    };
    let mut hist = new_hist();
    let (mut delivered, mut out_of_order, mut other_frames) = (0u64, 0u64, 0u64);
    let mut failures: Vec<String> = Vec::new();
    let mut disconnected = 0usize;
    let mut short = 0usize;
    let mut last_joined_ns = setup_start_ns;
    for h in subs {
        match tokio::time::timeout(collect, h).await {
            Ok(Ok(o)) => {
                if let Some(sub) = &o.hist {
                    hist.add(sub).expect("same bounds");
                }
                if let Some(t) = o.joined_at_ns {
                    last_joined_ns = last_joined_ns.max(t);
                    if o.failure.is_some() {
                        disconnected += 1;
                    }
                }
                if o.joined_at_ns.is_some() && o.received < pub_out.sent {
                    short += 1;
                }
                delivered += o.received;
                out_of_order += o.out_of_order;
                other_frames += o.other_frames;
                if let Some(f) = o.failure {
                    failures.push(f);
                }
            }
            _ => failures.push("subscriber task did not finish".into()),
        }
    }
    if let Some(f) = &pub_out.failure {
        failures.insert(0, f.clone());
        stopped_by.get_or_insert_with(|| f.clone());
    }
    // Let the node count the closes, then read its counters.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let health_after = health(&sh, args.step_timeout).await;

    // 4. Numbers.
    let expected = n as u64 * args.messages;
    let lost = expected.saturating_sub(delivered);
    let lost_of_sent = (joined as u64 * pub_out.sent).saturating_sub(delivered);
    let last_delivery_ns = sh.last_delivery_ns.load(Ordering::Acquire);
    let delivery_secs = match pub_out.first_send_ns {
        Some(first) if last_delivery_ns > first => (last_delivery_ns - first) as f64 / 1e9,
        _ => 0.0,
    };
    let send_secs = match (pub_out.first_send_ns, pub_out.last_send_ns) {
        (Some(a), Some(b)) if b > a => (b - a) as f64 / 1e9,
        _ => 0.0,
    };
    let per_s = |count: f64, secs: f64| {
        if secs > 0.0 {
            round(count / secs, 1)
        } else {
            0.0
        }
    };
    let complete =
        stopped_by.is_none() && lost == 0 && disconnected == 0 && pub_out.sent == args.messages;
    let server = pid.map(|pid| {
        let kb = |m: Option<(u64, u64)>| m.map(|(rss, _)| rss);
        let cpu = match (cpu_before, cpu_end) {
            (Some(a), Some(b)) => Some(round(b - a, 3)),
            _ => None,
        };
        json!({
            "pid": pid,
            "rss_kb": {
                "before": kb(mem_before),
                "after_setup": kb(mem_setup),
                "end": kb(mem_end),
            },
            "hwm_kb": mem_end.map(|(_, hwm)| hwm),
            "cpu_s": cpu,
            "cpu_us_per_delivery": cpu.filter(|_| delivered > 0).map(|c| round(c * 1e6 / delivered as f64, 2)),
        })
    });
    let health_json = match (&health_before, &health_after) {
        (Ok(b), Ok(a)) => json!({
            "dropped_delta": dropped_delta(b, a),
            "after": a,
        }),
        (_, Err(e)) | (Err(e), _) => json!({ "error": format!("{e:#}") }),
    };
    failures.sort();
    let mut failure_kinds: Vec<(String, usize)> = Vec::new();
    for f in failures {
        match failure_kinds.last_mut() {
            Some((last, count)) if *last == f => *count += 1,
            _ => failure_kinds.push((f, 1)),
        }
    }
    let result = json!({
        "tool": "prscd-bench",
        "scenario": "fanout",
        "complete": complete,
        "stopped_by": stopped_by,
        "params": {
            "url": args.url,
            "publickey": args.publickey,
            "channel": args.channel,
            "subscribers": n,
            "messages": args.messages,
            "rate": args.rate.map_or(json!("max"), |r| json!(r)),
            "window": args.rate.is_none().then_some(args.window),
            "payload_bytes": args.payload,
            "connect_concurrency": args.connect_concurrency,
            "client_threads": args.threads,
            "duration_limit_s": args.duration_limit.as_secs_f64(),
        },
        "setup": {
            "joined": joined,
            "seconds": round(setup_secs, 4),
            "conn_per_s": per_s(joined as f64, setup_secs),
        },
        "publish": {
            "sent": pub_out.sent,
            "seconds": round(send_secs, 4),
            "msgs_per_s": per_s(pub_out.sent as f64, send_secs),
            "max_send_lag_us": args.rate.map(|_| pub_out.max_lag_us),
            "mean_send_lag_us": args.rate.filter(|_| pub_out.sent > 0).map(|_| pub_out.sum_lag_us / pub_out.sent),
            "window_wait_s": args.rate.is_none().then(|| round(pub_out.window_wait_us as f64 / 1e6, 3)),
        },
        "delivery": {
            "expected": expected,
            "delivered": delivered,
            "lost": lost,
            "lost_of_sent": lost_of_sent,
            "out_of_order": out_of_order,
            "other_frames": other_frames,
            "seconds": round(delivery_secs, 4),
            "msgs_per_s": per_s(delivered as f64, delivery_secs),
            "subscribers_short": short,
            "subscribers_disconnected": disconnected,
        },
        "latency_us": quantiles(&hist),
        "server": server,
        "health": health_json,
        "client": { "cpu_s": round(self_cpu_end - self_cpu_before, 3) },
        "failures": failure_kinds.iter().map(|(f, c)| json!({"count": c, "what": f})).collect::<Vec<_>>(),
    });
    Ok((result, complete))
}

fn summary(r: &serde_json::Value) -> String {
    let p = &r["params"];
    let l = &r["latency_us"];
    let d = &r["delivery"];
    let mut s = format!(
        "fanout: {} subscribers, {} messages of {} B at rate {}{}\n",
        p["subscribers"],
        p["messages"],
        p["payload_bytes"],
        p["rate"],
        p["window"]
            .as_u64()
            .map_or(String::new(), |w| format!(" (window {w})"))
    );
    s += &format!(
        "  setup      {} joined in {} s = {} conn/s\n",
        r["setup"]["joined"], r["setup"]["seconds"], r["setup"]["conn_per_s"]
    );
    s += &format!(
        "  publish    {} sent in {} s = {} msg/s\n",
        r["publish"]["sent"], r["publish"]["seconds"], r["publish"]["msgs_per_s"]
    );
    s += &format!(
        "  delivered  {}/{} in {} s = {} msg/s; lost {} (of sent: {}), out of order {}, disconnected {}\n",
        d["delivered"],
        d["expected"],
        d["seconds"],
        d["msgs_per_s"],
        d["lost"],
        d["lost_of_sent"],
        d["out_of_order"],
        d["subscribers_disconnected"]
    );
    if l.is_null() {
        s += "  latency    (no deliveries)\n";
    } else {
        s += &format!(
            "  latency µs p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  (mean {})\n",
            l["p50"], l["p90"], l["p99"], l["p999"], l["max"], l["mean"]
        );
    }
    if let Some(sv) = r["server"].as_object() {
        s += &format!(
            "  server     pid {}: VmRSS {} kB before, {} kB after setup, {} kB at end; VmHWM {} kB; CPU {} s ({} µs/delivery)\n",
            sv["pid"],
            sv["rss_kb"]["before"],
            sv["rss_kb"]["after_setup"],
            sv["rss_kb"]["end"],
            sv["hwm_kb"],
            sv["cpu_s"],
            sv["cpu_us_per_delivery"]
        );
    }
    s += &format!("  client     CPU {} s\n", r["client"]["cpu_s"]);
    match r["health"]["dropped_delta"].as_object() {
        Some(m) if m.is_empty() => s += "  node drops none during the run\n",
        Some(m) => s += &format!("  node drops {}\n", serde_json::Value::Object(m.clone())),
        None => s += &format!("  node drops unknown: {}\n", r["health"]["error"]),
    }
    if let Some(f) = r["failures"].as_array().filter(|f| !f.is_empty()) {
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
                    .unwrap_or("messages lost or subscribers disconnected")
            )
        }
    );
    s
}

fn main() {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let args = match parse_args(&argv) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("prscd-bench: {e:#}");
            std::process::exit(1);
        }
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let json_path = args.json.clone();
    let outcome = runtime.block_on(fanout(args));
    // Tasks still blocked (e.g. on a close) must not hold the exit.
    runtime.shutdown_timeout(Duration::from_secs(1));
    match outcome {
        Ok((result, complete)) => {
            print!("{}", summary(&result));
            if let Some(path) = json_path {
                let text = serde_json::to_string_pretty(&result).expect("json") + "\n";
                if let Err(e) = std::fs::write(&path, text) {
                    eprintln!("prscd-bench: writing {}: {e}", path.display());
                    std::process::exit(1);
                }
            }
            std::process::exit(if complete { 0 } else { 2 });
        }
        Err(e) => {
            eprintln!("prscd-bench: {e:#}");
            std::process::exit(1);
        }
    }
}
