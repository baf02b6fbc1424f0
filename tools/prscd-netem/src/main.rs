//! prscd-netem: user-space netem for TCP links.
//!
//! A TCP relay that delays the bytes of each direction by a fixed one-way
//! delay, for simulating a WAN between nodes on one machine where the
//! kernel's `tc … netem` is not available (deploy/wan/README.md). Each
//! `--link` is one listener; a connection accepted there is relayed to the
//! link's target, and whatever one side sends reaches the other side `delay`
//! after it was read, in order.
//!
//! How the delay is kept precise: per connection and direction, one thread
//! reads (blocking) and stamps each chunk with its due time (read time +
//! delay), and one thread writes: it sleeps with `std::thread::sleep`
//! (nanosleep; the thread's timer slack is set to 1 ns) until the chunk is
//! due, then writes it. No timer wheel, no coalescing, TCP_NODELAY on both
//! sockets, so the only extra delay is the scheduler's; each write's
//! lateness (start of write − due time) is recorded and reported.
//!
//! Bounded memory: at most `--buffer` bytes wait per direction (a full
//! queue stops reading, which is TCP back-pressure to the sender), at most
//! `--max-conns` connections per link (more are refused), 64 KiB read
//! buffer per direction.
//!
//! What it does not model: loss, jitter, bandwidth. The TCP handshake is
//! not delayed (the relay accepts at once and dials the target at once);
//! data, and the end of the stream, are.
//!
//! Reports: a `netem: report …` line per link and direction (writes, bytes,
//! lateness p50/p99/max in µs, writes later than 1 ms) every
//! `--report-secs` when there was traffic, at once on SIGUSR1, and at exit
//! on SIGTERM/SIGINT.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use hdrhistogram::Histogram;

#[derive(Clone)]
struct LinkSpec {
    name: String,
    listen: SocketAddr,
    target: String,
    forward: Duration,
    reverse: Duration,
}

/// The command line.
#[derive(clap::Parser)]
#[command(
    name = "prscd-netem",
    about = "user-space netem for TCP links (fixed one-way delay per direction)",
    after_help = "Prints `netem: ready links=N` once every listener is bound. SIGUSR1 prints a\n\
                  report at once; SIGTERM/SIGINT print one and exit."
)]
struct Options {
    /// [NAME=]LISTEN,TARGET,DELAY[,REVERSE_DELAY]: listen on LISTEN (ip:port),
    /// relay each connection to TARGET (host:port); bytes LISTEN->TARGET are
    /// delayed by DELAY, bytes TARGET->LISTEN by REVERSE_DELAY (default:
    /// DELAY). Delays: 30ms, 0.5ms, 250us, 1s, or a bare number of ms. NAME
    /// labels the logs. Repeat for several links in one process.
    #[arg(long = "link", value_name = "SPEC", required = true, value_parser = link_arg)]
    links: Vec<LinkSpec>,
    /// most bytes waiting per direction of a connection
    #[arg(long, value_name = "BYTES", default_value_t = 2 << 20, value_parser = positive)]
    buffer: usize,
    /// most connections per link at once; more are refused
    #[arg(long, value_name = "N", default_value_t = 32, value_parser = positive)]
    max_conns: usize,
    /// give up dialling the target after S seconds
    #[arg(long = "connect-timeout", value_name = "S", default_value = "3", value_parser = secs)]
    connect_timeout: Duration,
    /// TCP_USER_TIMEOUT on both sockets: a peer that acks nothing for S
    /// seconds is given up (0 = kernel default)
    #[arg(long = "user-timeout", value_name = "S", default_value = "10", value_parser = secs)]
    user_timeout: Duration,
    /// report lateness every S seconds when there was traffic
    #[arg(long = "report-secs", value_name = "S", default_value = "10", value_parser = secs)]
    report_every: Duration,
}

fn positive(v: &str) -> Result<usize, String> {
    match v.parse() {
        Ok(0) => Err("must be positive".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("{v:?} is not a number")),
    }
}

fn link_arg(s: &str) -> Result<LinkSpec, String> {
    parse_link(s).map_err(|e| format!("{e:#}"))
}

/// Seconds, 0 to a day.
fn secs(v: &str) -> Result<Duration, String> {
    let s: f64 = v.parse().map_err(|_| format!("{v:?} is not a number"))?;
    if !(0.0..=86_400.0).contains(&s) {
        return Err(format!("{v:?} out of range"));
    }
    Ok(Duration::from_secs_f64(s))
}

fn parse_delay(s: &str) -> anyhow::Result<Duration> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => s.split_at(i),
        None => (s, "ms"),
    };
    let v: f64 = num.trim().parse().with_context(|| format!("delay {s:?}"))?;
    let secs = match unit {
        "s" => v,
        "ms" => v / 1e3,
        "us" | "µs" => v / 1e6,
        "ns" => v / 1e9,
        _ => bail!("delay {s:?}: unit must be s, ms, us or ns"),
    };
    if !(0.0..=3600.0).contains(&secs) {
        bail!("delay {s:?} out of range (0 to 1 hour)");
    }
    Ok(Duration::from_secs_f64(secs))
}

fn parse_link(spec: &str) -> anyhow::Result<LinkSpec> {
    let (name, rest) = match spec.split_once('=') {
        Some((name, rest)) if !name.contains(',') => (Some(name.to_owned()), rest),
        _ => (None, spec),
    };
    let parts: Vec<&str> = rest.split(',').collect();
    if !(3..=4).contains(&parts.len()) {
        bail!("--link {spec:?}: want [NAME=]LISTEN,TARGET,DELAY[,REVERSE_DELAY]");
    }
    let listen: SocketAddr = parts[0]
        .trim()
        .parse()
        .with_context(|| format!("--link {spec:?}: listen address"))?;
    let target = parts[1].trim().to_owned();
    let forward = parse_delay(parts[2])?;
    let reverse = match parts.get(3) {
        Some(d) => parse_delay(d)?,
        None => forward,
    };
    Ok(LinkSpec {
        name: name.unwrap_or_else(|| format!("{listen}->{target}")),
        listen,
        target,
        forward,
        reverse,
    })
}

/// What one direction of one link has written, over its whole life.
struct DirStats {
    /// Lateness of each write in µs.
    lateness: Histogram<u64>,
    bytes: u64,
    late_1ms: u64,
}

struct Link {
    spec: LinkSpec,
    conns: AtomicUsize,
    next_conn: AtomicU64,
    /// [forward, reverse].
    stats: [Mutex<DirStats>; 2],
}

impl Link {
    fn dir_name(&self, d: usize) -> &'static str {
        ["fwd", "rev"][d]
    }
}

/// Chunks read but not yet written, oldest first.
struct Queue {
    state: Mutex<QueueState>,
    changed: Condvar,
}

struct QueueState {
    chunks: VecDeque<(Instant, Vec<u8>)>,
    bytes: usize,
    /// The source ended (cleanly or not) at this due time.
    end: Option<(Instant, bool)>,
    /// The writer stopped: drop everything, stop reading.
    writer_gone: bool,
}

static REPORT_NOW: AtomicBool = AtomicBool::new(false);
static EXIT_NOW: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(signal: libc::c_int) {
    if signal == libc::SIGUSR1 {
        REPORT_NOW.store(true, Ordering::SeqCst);
    } else {
        EXIT_NOW.store(true, Ordering::SeqCst);
    }
}

fn main() {
    let opts = <Options as clap::Parser>::parse();
    if opts.connect_timeout.is_zero() {
        eprintln!("prscd-netem: --connect-timeout must be positive");
        std::process::exit(2);
    }
    if let Err(e) = run(opts) {
        eprintln!("prscd-netem: {e:#}");
        std::process::exit(1);
    }
}

fn run(opts: Options) -> anyhow::Result<()> {
    let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    for signal in [libc::SIGUSR1, libc::SIGTERM, libc::SIGINT] {
        // SAFETY: the handler only stores to atomics (async-signal-safe).
        unsafe { libc::signal(signal, handler) };
    }
    let conf = Arc::new(ConnConf {
        buffer: opts.buffer,
        connect_timeout: opts.connect_timeout,
        user_timeout: opts.user_timeout,
    });
    let mut links = Vec::new();
    for spec in opts.links {
        let listener = TcpListener::bind(spec.listen)
            .with_context(|| format!("{}: listen on {}", spec.name, spec.listen))?;
        eprintln!(
            "netem: link {} listen {} -> target {} delay fwd {:?} rev {:?}",
            spec.name, spec.listen, spec.target, spec.forward, spec.reverse
        );
        let new_stats = || {
            Mutex::new(DirStats {
                lateness: Histogram::new(3).expect("histogram"),
                bytes: 0,
                late_1ms: 0,
            })
        };
        let link = Arc::new(Link {
            spec,
            conns: AtomicUsize::new(0),
            next_conn: AtomicU64::new(1),
            stats: [new_stats(), new_stats()],
        });
        links.push(link.clone());
        let conf = conf.clone();
        let max_conns = opts.max_conns;
        std::thread::Builder::new()
            .name(format!("accept {}", link.spec.name))
            .spawn(move || accept_loop(listener, link, conf, max_conns))?;
    }
    eprintln!("netem: ready links={}", links.len());

    // Reports, and the exit on SIGTERM/SIGINT.
    let mut last_report = Instant::now();
    let mut written_at_last: Vec<u64> = vec![0; links.len() * 2];
    loop {
        std::thread::sleep(Duration::from_millis(50));
        let exit = EXIT_NOW.load(Ordering::SeqCst);
        let asked = REPORT_NOW.swap(false, Ordering::SeqCst);
        let periodic = !opts.report_every.is_zero() && last_report.elapsed() >= opts.report_every;
        if !(exit || asked || periodic) {
            continue;
        }
        last_report = Instant::now();
        for (i, link) in links.iter().enumerate() {
            for d in 0..2 {
                let st = link.stats[d].lock().unwrap();
                let writes = st.lateness.len();
                if !asked && !exit && writes == written_at_last[i * 2 + d] {
                    continue; // nothing new: stay quiet
                }
                written_at_last[i * 2 + d] = writes;
                eprintln!(
                    "netem: report link={} dir={} delay_us={} writes={} bytes={} lateness_us p50={} p99={} max={} late_over_1ms={}",
                    link.spec.name,
                    link.dir_name(d),
                    [link.spec.forward, link.spec.reverse][d].as_micros(),
                    writes,
                    st.bytes,
                    st.lateness.value_at_quantile(0.5),
                    st.lateness.value_at_quantile(0.99),
                    st.lateness.max(),
                    st.late_1ms,
                );
            }
        }
        if exit {
            eprintln!("netem: exiting on signal");
            std::process::exit(0);
        }
    }
}

struct ConnConf {
    buffer: usize,
    connect_timeout: Duration,
    user_timeout: Duration,
}

fn accept_loop(listener: TcpListener, link: Arc<Link>, conf: Arc<ConnConf>, max_conns: usize) {
    loop {
        let (inbound, from) = match listener.accept() {
            Ok(x) => x,
            Err(e) => {
                eprintln!("netem: {}: accept: {e}", link.spec.name);
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        if link.conns.load(Ordering::SeqCst) >= max_conns {
            eprintln!(
                "netem: {}: refusing {from}: {max_conns} connections already",
                link.spec.name
            );
            continue; // dropped: closed
        }
        link.conns.fetch_add(1, Ordering::SeqCst);
        let guard = ConnGuard(link.clone());
        let id = link.next_conn.fetch_add(1, Ordering::Relaxed);
        let conf = conf.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("conn {}#{id}", link.spec.name))
            .stack_size(256 << 10)
            .spawn(move || connection(inbound, from, id, guard, conf));
        if let Err(e) = spawned {
            eprintln!("netem: {}: cannot start a thread: {e}", link.spec.name);
        }
    }
}

/// Counts a connection as open until its last thread ends.
struct ConnGuard(Arc<Link>);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.conns.fetch_sub(1, Ordering::SeqCst);
    }
}

fn dial(target: &str, timeout: Duration) -> std::io::Result<TcpStream> {
    let mut last = std::io::Error::other("target resolves to no address");
    for addr in target.to_socket_addrs()? {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(s) => return Ok(s),
            Err(e) => last = e,
        }
    }
    Err(last)
}

fn tune(sock: &TcpStream, user_timeout: Duration) {
    let _ = sock.set_nodelay(true);
    if !user_timeout.is_zero() {
        let ms = user_timeout.as_millis().min(u32::MAX as u128) as libc::c_uint;
        // SAFETY: a valid socket fd and a pointer to a c_uint of the given size.
        unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_USER_TIMEOUT,
                &ms as *const libc::c_uint as *const libc::c_void,
                std::mem::size_of::<libc::c_uint>() as libc::socklen_t,
            );
        }
    }
}

fn connection(
    inbound: TcpStream,
    from: SocketAddr,
    id: u64,
    guard: ConnGuard,
    conf: Arc<ConnConf>,
) {
    let link = guard.0.clone();
    let name = &link.spec.name;
    let outbound = match dial(&link.spec.target, conf.connect_timeout) {
        Ok(s) => s,
        Err(e) => {
            eprintln!(
                "netem: {name}#{id}: {from}: cannot reach {}: {e}",
                link.spec.target
            );
            return; // inbound dropped: closed
        }
    };
    tune(&inbound, conf.user_timeout);
    tune(&outbound, conf.user_timeout);
    eprintln!(
        "netem: {name}#{id}: open {from} -> {}",
        outbound
            .peer_addr()
            .map(|a| a.to_string())
            .unwrap_or_default()
    );
    let clone = |s: &TcpStream| s.try_clone().expect("socket clone");
    let guard = Arc::new(guard);
    let started = Instant::now();
    let mut threads = Vec::new();
    for (d, src, dst) in [
        (0, clone(&inbound), clone(&outbound)),
        (1, clone(&outbound), clone(&inbound)),
    ] {
        let link = link.clone();
        let guard = guard.clone();
        let buffer = conf.buffer;
        let spawned = std::thread::Builder::new()
            .name(format!("{name}#{id} {}", link.dir_name(d)))
            .stack_size(256 << 10)
            .spawn(move || {
                let n = direction(src, dst, &link, d, buffer);
                drop(guard);
                n
            });
        match spawned {
            Ok(t) => threads.push(t),
            Err(e) => {
                eprintln!("netem: {name}#{id}: cannot start a thread: {e}");
                let _ = inbound.shutdown(Shutdown::Both);
                let _ = outbound.shutdown(Shutdown::Both);
            }
        }
    }
    let bytes: Vec<u64> = threads.into_iter().map(|t| t.join().unwrap_or(0)).collect();
    eprintln!(
        "netem: {name}#{id}: closed after {:.1} s, bytes {:?} (fwd, rev)",
        started.elapsed().as_secs_f64(),
        bytes
    );
}

/// Relays `src` → `dst` with the link's delay for direction `d`; returns
/// the bytes written. Reads here, writes on a second thread.
fn direction(src: TcpStream, dst: TcpStream, link: &Arc<Link>, d: usize, buffer: usize) -> u64 {
    let delay = [link.spec.forward, link.spec.reverse][d];
    let queue = Arc::new(Queue {
        state: Mutex::new(QueueState {
            chunks: VecDeque::new(),
            bytes: 0,
            end: None,
            writer_gone: false,
        }),
        changed: Condvar::new(),
    });
    let writer = {
        let queue = queue.clone();
        let link = link.clone();
        let src = src.try_clone().expect("socket clone");
        std::thread::Builder::new()
            .name(format!("{} {} write", link.spec.name, link.dir_name(d)))
            .stack_size(256 << 10)
            .spawn(move || write_loop(&queue, dst, src, &link, d))
    };
    let writer = match writer {
        Ok(w) => w,
        Err(e) => {
            eprintln!("netem: {}: cannot start a thread: {e}", link.spec.name);
            let _ = src.shutdown(Shutdown::Both);
            return 0;
        }
    };
    let mut src = src;
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let (n, clean) = match src.read(&mut buf) {
            Ok(0) => (0, true),
            Ok(n) => (n, true),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => (0, false),
        };
        let due = Instant::now() + delay;
        let mut st = queue.state.lock().unwrap();
        if n == 0 {
            st.end = Some((due, clean));
            queue.changed.notify_all();
            break;
        }
        while !st.writer_gone && st.bytes > 0 && st.bytes + n > buffer {
            st = queue.changed.wait(st).unwrap();
        }
        if st.writer_gone {
            break;
        }
        st.bytes += n;
        st.chunks.push_back((due, buf[..n].to_vec()));
        queue.changed.notify_all();
    }
    writer.join().unwrap_or(0)
}

fn sleep_until(due: Instant) {
    loop {
        let now = Instant::now();
        if now >= due {
            return;
        }
        std::thread::sleep(due - now);
    }
}

fn write_loop(queue: &Queue, mut dst: TcpStream, src: TcpStream, link: &Link, d: usize) -> u64 {
    // Wake-ups as close to the deadline as the kernel can (default slack: 50 µs).
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0) };
    let mut written = 0u64;
    loop {
        let next = {
            let mut st = queue.state.lock().unwrap();
            loop {
                if let Some((due, data)) = st.chunks.pop_front() {
                    st.bytes -= data.len();
                    queue.changed.notify_all();
                    break Ok((due, data));
                }
                if let Some(end) = st.end {
                    break Err(end);
                }
                st = queue.changed.wait(st).unwrap();
            }
        };
        match next {
            Ok((due, data)) => {
                sleep_until(due);
                let late = Instant::now().saturating_duration_since(due);
                if dst.write_all(&data).is_err() {
                    // The far side is gone: stop both ways.
                    let mut st = queue.state.lock().unwrap();
                    st.writer_gone = true;
                    st.chunks.clear();
                    st.bytes = 0;
                    queue.changed.notify_all();
                    drop(st);
                    let _ = dst.shutdown(Shutdown::Both);
                    let _ = src.shutdown(Shutdown::Both);
                    return written;
                }
                written += data.len() as u64;
                let mut stats = link.stats[d].lock().unwrap();
                let us = late.as_micros().min(u64::MAX as u128) as u64;
                stats.lateness.saturating_record(us);
                stats.bytes += data.len() as u64;
                if late > Duration::from_millis(1) {
                    stats.late_1ms += 1;
                }
            }
            Err((due, clean)) => {
                sleep_until(due);
                if clean {
                    // Half-close, as the source did.
                    let _ = dst.shutdown(Shutdown::Write);
                } else {
                    let _ = dst.shutdown(Shutdown::Both);
                    let _ = src.shutdown(Shutdown::Both);
                }
                return written;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_and_links_parse() {
        assert_eq!(parse_delay("30ms").unwrap(), Duration::from_millis(30));
        assert_eq!(parse_delay("30").unwrap(), Duration::from_millis(30));
        assert_eq!(parse_delay("0.5ms").unwrap(), Duration::from_micros(500));
        assert_eq!(parse_delay("250us").unwrap(), Duration::from_micros(250));
        assert_eq!(parse_delay("30000us").unwrap(), Duration::from_millis(30));
        assert!(parse_delay("2h").is_err() && parse_delay("3601s").is_err());
        assert_eq!(parse_delay("1s").unwrap(), Duration::from_secs(1));
        assert!(parse_delay("-1ms").is_err());
        assert!(parse_delay("3min").is_err());
        let l = parse_link("eu-us=10.0.0.1:7442,10.0.0.2:7447,30ms").unwrap();
        assert_eq!(l.name, "eu-us");
        assert_eq!(l.listen, "10.0.0.1:7442".parse().unwrap());
        assert_eq!(l.target, "10.0.0.2:7447");
        assert_eq!(
            (l.forward, l.reverse),
            (Duration::from_millis(30), Duration::from_millis(30))
        );
        let l = parse_link("127.0.0.1:1,localhost:2,1ms,2ms").unwrap();
        assert_eq!(l.name, "127.0.0.1:1->localhost:2");
        assert_eq!(l.reverse, Duration::from_millis(2));
        assert!(parse_link("127.0.0.1:1,localhost:2").is_err());
        assert!(parse_link("x:1,localhost:2,1ms").is_err());
    }

    #[test]
    fn the_command_line_is_consistent() {
        use clap::{CommandFactory as _, Parser as _};
        Options::command().debug_assert();
        let o = Options::try_parse_from(["prscd-netem", "--link", "127.0.0.1:1,h:2,1ms"]).unwrap();
        assert_eq!((o.buffer, o.max_conns), (2 << 20, 32));
        assert_eq!(o.user_timeout, Duration::from_secs(10));
        assert!(Options::try_parse_from(["prscd-netem"]).is_err());
        assert!(Options::try_parse_from(["prscd-netem", "--link", "x", "--buffer", "0"]).is_err());
    }
}
