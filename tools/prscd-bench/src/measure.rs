//! What the bench reads off a run: latency histograms, a server's memory
//! and CPU from `/proc`, its own CPU, the machine's CPU time stolen by the
//! hypervisor, and the progress line on stderr.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::json;

/// Latency histogram range: 1 µs to 60 s, 3 significant figures.
const HIST_MAX_US: u64 = 60_000_000;

pub fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIST_MAX_US, 3).expect("histogram bounds")
}

pub fn quantiles(h: &Histogram<u64>) -> serde_json::Value {
    if h.is_empty() {
        return json!(null);
    }
    json!({
        "count": h.len(),
        "min": h.min(),
        "mean": round(h.mean(), 1),
        "p50": h.value_at_quantile(0.50),
        "p90": h.value_at_quantile(0.90),
        "p99": h.value_at_quantile(0.99),
        "p999": h.value_at_quantile(0.999),
        "max": h.max(),
    })
}

pub fn round(x: f64, digits: i32) -> f64 {
    let m = 10f64.powi(digits);
    (x * m).round() / m
}

pub fn per_s(count: f64, secs: f64) -> f64 {
    if secs > 0.0 {
        round(count / secs, 1)
    } else {
        0.0
    }
}

/// `/proc/<pid>/status` VmRSS and VmHWM, in kB.
pub fn proc_mem(pid: u32) -> Option<(u64, u64)> {
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
pub fn proc_cpu(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_comm = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = after_comm.split_whitespace().collect();
    // Fields 14 and 15 of stat; after the comm, index 11 and 12.
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / clock_ticks_per_s())
}

/// The unit of `/proc`'s CPU times (`USER_HZ`).
fn clock_ticks_per_s() -> f64 {
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 {
        hz as f64
    } else {
        100.0
    }
}

/// The machine's CPU time so far, all CPUs, from the first line of
/// `/proc/stat`. On a VM, `steal` is time a vCPU had work but the host ran
/// something else: it shows up as latency no process on the guest caused.
#[derive(Debug, Clone, Copy)]
pub struct MachineCpu {
    busy: u64,
    idle: u64,
    steal: u64,
}

impl MachineCpu {
    pub fn now() -> Option<MachineCpu> {
        let s = std::fs::read_to_string("/proc/stat").ok()?;
        let ticks: Vec<u64> = s
            .lines()
            .next()?
            .strip_prefix("cpu ")?
            .split_whitespace()
            .map(|f| f.parse().ok())
            .collect::<Option<_>>()?;
        // user nice system idle iowait irq softirq steal [guest guest_nice]
        let t = |i: usize| ticks.get(i).copied().unwrap_or(0);
        Some(MachineCpu {
            busy: t(0) + t(1) + t(2) + t(5) + t(6),
            idle: t(3) + t(4),
            steal: t(7),
        })
    }

    /// CPU seconds between `self` and `later`, and the share of the time
    /// the guest wanted a CPU that the host took (steal ÷ (busy + steal)).
    pub fn until(&self, later: &MachineCpu) -> serde_json::Value {
        let hz = clock_ticks_per_s();
        let secs = |a: u64, b: u64| b.saturating_sub(a) as f64 / hz;
        let (busy, idle, steal) = (
            secs(self.busy, later.busy),
            secs(self.idle, later.idle),
            secs(self.steal, later.steal),
        );
        json!({
            "busy_s": round(busy, 2),
            "idle_s": round(idle, 2),
            "steal_s": round(steal, 2),
            "steal_share": if busy + steal > 0.0 { round(steal / (busy + steal), 3) } else { 0.0 },
        })
    }
}

/// CPU seconds used by this process so far.
pub fn self_cpu() -> f64 {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return 0.0;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Raises this process's open-file limit to `want` (root may raise the hard
/// limit too, up to `fs.nr_open`). Returns the soft limit now in force.
pub fn raise_nofile(want: u64) -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(lim.rlim_max);
    if lim.rlim_cur < want {
        let target = want.min(nr_open);
        let raised = libc::rlimit {
            rlim_cur: target,
            rlim_max: lim.rlim_max.max(target),
        };
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            // Not root: the soft limit can still go up to the hard one.
            let soft = libc::rlimit {
                rlim_cur: want.min(lim.rlim_max),
                rlim_max: lim.rlim_max,
            };
            unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &soft) };
        }
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    }
    lim.rlim_cur
}

/// Counters the progress line shows.
#[derive(Default)]
pub struct Counters {
    pub connected: AtomicU64,
    pub failed: AtomicU64,
    pub sent: AtomicU64,
    pub delivered: AtomicU64,
}

/// Prints a progress line to stderr every half second until dropped: in
/// place on a terminal, one line per 2 s otherwise (logs stay readable).
pub struct Progress {
    stop: tokio_util::sync::CancellationToken,
}

impl Progress {
    pub fn start(label: String, target_conns: u64, c: Arc<Counters>, quiet: bool) -> Progress {
        let stop = tokio_util::sync::CancellationToken::new();
        if !quiet {
            let token = stop.clone();
            let tty = std::io::stderr().is_terminal();
            let every = if tty { 500 } else { 2000 };
            tokio::spawn(async move {
                let start = Instant::now();
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(every)) => {}
                        _ = token.cancelled() => break,
                    }
                    let conns = c.connected.load(Ordering::Relaxed);
                    let width = 24usize;
                    let filled = (conns.min(target_conns) * width as u64)
                        .checked_div(target_conns)
                        .map_or(width, |f| f as usize);
                    let line = format!(
                        "[{}{}] {label} {:>6.1}s conns {conns}/{target_conns} failed {} sent {} delivered {}",
                        "#".repeat(filled),
                        ".".repeat(width - filled),
                        start.elapsed().as_secs_f64(),
                        c.failed.load(Ordering::Relaxed),
                        c.sent.load(Ordering::Relaxed),
                        c.delivered.load(Ordering::Relaxed),
                    );
                    if tty {
                        eprint!("\r{line}\x1b[K");
                    } else {
                        eprintln!("{line}");
                    }
                }
                if tty {
                    eprintln!();
                }
            });
        }
        Progress { stop }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
