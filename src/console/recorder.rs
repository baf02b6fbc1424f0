//! What the console needs recorded as it happens, kept cheap for the
//! message path: per-app traffic counters (relaxed atomics, one `Arc` per
//! connection), a bounded ring of recent errors, the mesh hop times per
//! sending node, and message samples of the channels an inspector watches.
//!
//! Nothing here is read for control. The taps cost one atomic load per
//! relayed message while no inspector watches, and rings are bounded, so
//! a flood of errors or messages costs bounded memory.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Serialize;

use crate::clock::unix_ms;
use crate::stats::DropReason;

/// Recent errors kept for the console.
pub const ERRORS_KEPT: usize = 256;
/// Messages kept per watched channel.
pub const SAMPLES_KEPT: usize = 64;
/// Channels that may be watched at once (each costs one ring).
pub const MAX_TAPS: usize = 64;
/// How long a watch lasts unless renewed (the page renews it every second).
pub const TAP_LIFE: Duration = Duration::from_secs(15);
/// Hop times kept per sending node, for its percentiles.
pub const HOPS_KEPT: usize = 512;
/// Sending nodes whose hop times are kept.
const MAX_HOP_NODES: usize = 256;
/// Apps with traffic counters (the configured ones; a bound all the same).
const MAX_APPS: usize = 10_000;

/// Everything the console records; lives in [`crate::stats::Stats`].
#[derive(Default)]
pub struct Recorder {
    apps: RwLock<HashMap<Arc<str>, Arc<AppTraffic>>>,
    errors: Mutex<VecDeque<ErrorEvent>>,
    hops: Mutex<HashMap<String, VecDeque<u32>>>,
    pub taps: Taps,
    started: std::sync::OnceLock<Instant>,
}

/// One app's traffic on this node.
#[derive(Default)]
pub struct AppTraffic {
    pub messages_in: AtomicU64,
    pub bytes_in: AtomicU64,
    /// Copies queued for members (local fan-out of local and mesh messages).
    pub messages_out: AtomicU64,
    drops: [AtomicU64; DropReason::ALL.len()],
}

impl AppTraffic {
    pub fn count_in(&self, bytes: usize) {
        self.messages_in.fetch_add(1, Relaxed);
        self.bytes_in.fetch_add(bytes as u64, Relaxed);
    }

    pub fn count_out(&self, copies: usize) {
        if copies > 0 {
            self.messages_out.fetch_add(copies as u64, Relaxed);
        }
    }

    pub fn count_drop(&self, reason: DropReason) {
        self.drops[reason as usize].fetch_add(1, Relaxed);
    }

    pub fn drops(&self, reason: DropReason) -> u64 {
        self.drops[reason as usize].load(Relaxed)
    }
}

/// One recent error, as the console lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ErrorEvent {
    pub time_ms: u64,
    /// `handshake`, `rejected`, `mesh_refused`, `slow_reader`, ...
    pub kind: &'static str,
    /// The app it concerns, when known: only then may an app's key see it.
    pub app: Option<String>,
    pub detail: String,
    /// Times it happened in a row (repeats within a second are folded).
    pub count: u32,
}

impl Recorder {
    /// Starts the uptime clock (idempotent).
    pub fn start(&self) {
        let _ = self.started.set(Instant::now());
    }

    pub fn uptime(&self) -> Duration {
        self.started.get().map_or(Duration::ZERO, Instant::elapsed)
    }

    /// The counters of `app`, made on first use.
    pub fn app(&self, app: &str) -> Arc<AppTraffic> {
        if let Some(t) = self.apps.read().unwrap_or_else(|e| e.into_inner()).get(app) {
            return t.clone();
        }
        let mut apps = self.apps.write().unwrap_or_else(|e| e.into_inner());
        if apps.len() >= MAX_APPS && !apps.contains_key(app) {
            // Counted nowhere rather than growing without bound.
            return Arc::default();
        }
        apps.entry(app.into()).or_default().clone()
    }

    /// Every app's counters, sorted by app.
    pub fn apps(&self) -> Vec<(Arc<str>, Arc<AppTraffic>)> {
        let apps = self.apps.read().unwrap_or_else(|e| e.into_inner());
        let mut all: Vec<_> = apps.iter().map(|(a, t)| (a.clone(), t.clone())).collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Records an error; a repeat of the last one within a second is folded.
    pub fn error(&self, kind: &'static str, app: Option<&str>, detail: impl Into<String>) {
        let mut detail = detail.into();
        truncate(&mut detail, 300);
        let now = unix_ms();
        let mut errors = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(last) = errors.back_mut() {
            if last.kind == kind
                && last.app.as_deref() == app
                && last.detail == detail
                && now.saturating_sub(last.time_ms) < 1_000
            {
                last.count = last.count.saturating_add(1);
                return;
            }
        }
        if errors.len() == ERRORS_KEPT {
            errors.pop_front();
        }
        errors.push_back(ErrorEvent {
            time_ms: now,
            kind,
            app: app.map(str::to_owned),
            detail,
            count: 1,
        });
    }

    /// The recent errors, newest first, those `visible` lets through.
    pub fn errors(&self, visible: impl Fn(&ErrorEvent) -> bool) -> Vec<ErrorEvent> {
        let errors = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        errors
            .iter()
            .rev()
            .filter(|e| visible(e))
            .cloned()
            .collect()
    }

    /// A mesh message from node `from` took `micros` (its clock to ours).
    pub fn observe_hop(&self, from: &str, micros: u64) {
        let mut hops = self.hops.lock().unwrap_or_else(|e| e.into_inner());
        if !hops.contains_key(from) {
            if hops.len() >= MAX_HOP_NODES {
                return;
            }
            hops.insert(from.to_owned(), VecDeque::with_capacity(HOPS_KEPT));
        }
        let ring = hops.get_mut(from).expect("inserted");
        if ring.len() == HOPS_KEPT {
            ring.pop_front();
        }
        ring.push_back(micros.min(u32::MAX as u64) as u32);
    }

    /// Per sending node: (p50, p99, samples) of the kept hop times, in µs.
    pub fn hop_percentiles(&self) -> Vec<(String, u32, u32, usize)> {
        let hops = self.hops.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<_> = hops
            .iter()
            .filter(|(_, r)| !r.is_empty())
            .map(|(node, ring)| {
                let mut v: Vec<u32> = ring.iter().copied().collect();
                v.sort_unstable();
                (
                    node.clone(),
                    percentile(&v, 50),
                    percentile(&v, 99),
                    v.len(),
                )
            })
            .collect();
        out.sort();
        out
    }
}

/// The `p`th percentile (nearest rank) of sorted `v`.
pub fn percentile(v: &[u32], p: usize) -> u32 {
    if v.is_empty() {
        return 0;
    }
    let rank = (p * v.len()).div_ceil(100).max(1);
    v[rank.min(v.len()) - 1]
}

/// Message samples of watched channels.
#[derive(Default)]
pub struct Taps {
    /// Channels watched now: the message path's only cost while it is 0.
    watching: AtomicUsize,
    taps: Mutex<HashMap<(String, String), Tap>>,
}

struct Tap {
    until: Instant,
    payloads: bool,
    ring: VecDeque<Sample>,
}

/// One message seen in a watched channel.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub time_ms: u64,
    pub from: String,
    /// The sender's node (`None`: a backend).
    pub mesh: Option<String>,
    pub op: &'static str,
    pub bytes: usize,
    /// The message as relayed, kept only when payloads were asked for.
    #[serde(skip)]
    pub raw: Option<Bytes>,
}

/// Why a watch was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("too many channels are watched at once")]
pub struct TooManyTaps;

impl Taps {
    /// Watches `app/channel` for [`TAP_LIFE`] from now (renewing a watch).
    pub fn watch(&self, app: &str, channel: &str, payloads: bool) -> Result<(), TooManyTaps> {
        let now = Instant::now();
        let mut taps = self.taps.lock().unwrap_or_else(|e| e.into_inner());
        taps.retain(|_, t| t.until > now);
        let key = (app.to_owned(), channel.to_owned());
        let full = taps.len() >= MAX_TAPS;
        match taps.get_mut(&key) {
            Some(tap) => {
                tap.until = now + TAP_LIFE;
                tap.payloads |= payloads;
            }
            None if full => return Err(TooManyTaps),
            None => {
                taps.insert(
                    key,
                    Tap {
                        until: now + TAP_LIFE,
                        payloads,
                        ring: VecDeque::new(),
                    },
                );
            }
        }
        self.watching.store(taps.len(), Relaxed);
        Ok(())
    }

    /// Whether any channel is watched (one relaxed load).
    pub fn any(&self) -> bool {
        self.watching.load(Relaxed) > 0
    }

    /// A message relayed in `app/channel`; kept if the channel is watched.
    pub fn observe(&self, app: &str, channel: &str, sample: impl FnOnce(bool) -> Sample) {
        if !self.any() {
            return;
        }
        let mut taps = self.taps.lock().unwrap_or_else(|e| e.into_inner());
        // Looked up without allocating: the map is small.
        let Some(tap) = taps
            .iter_mut()
            .find(|((a, c), _)| a == app && c == channel)
            .map(|(_, t)| t)
        else {
            return;
        };
        if tap.until <= Instant::now() {
            return;
        }
        if tap.ring.len() == SAMPLES_KEPT {
            tap.ring.pop_front();
        }
        let sample = sample(tap.payloads);
        tap.ring.push_back(sample);
    }

    /// The samples of `app/channel`, newest first.
    pub fn samples(&self, app: &str, channel: &str) -> Vec<Sample> {
        let taps = self.taps.lock().unwrap_or_else(|e| e.into_inner());
        taps.get(&(app.to_owned(), channel.to_owned()))
            .map(|t| t.ring.iter().rev().cloned().collect())
            .unwrap_or_default()
    }
}

fn truncate(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_bounded_and_repeats_folded() {
        let r = Recorder::default();
        for _ in 0..5 {
            r.error("rejected", None, "403 unknown public key");
        }
        let e = r.errors(|_| true);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].count, 5);
        for i in 0..(ERRORS_KEPT + 10) {
            r.error("rejected", Some("a"), format!("{i}"));
        }
        let e = r.errors(|_| true);
        assert_eq!(e.len(), ERRORS_KEPT);
        assert_eq!(e[0].detail, format!("{}", ERRORS_KEPT + 9), "newest first");
        let only_b = r.errors(|e| e.app.as_deref() == Some("b"));
        assert!(only_b.is_empty());
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&v, 50), 50);
        assert_eq!(percentile(&v, 99), 99);
        assert_eq!(percentile(&[7], 99), 7);
        assert_eq!(percentile(&[], 50), 0);
        let r = Recorder::default();
        for us in 1..=1000 {
            r.observe_hop("eu", us);
        }
        let p = r.hop_percentiles();
        assert_eq!(p.len(), 1);
        let (node, p50, p99, n) = &p[0];
        assert_eq!((node.as_str(), *n), ("eu", HOPS_KEPT));
        assert!(*p50 > 489 && *p99 > *p50, "{p50} {p99}");
    }

    #[test]
    fn taps_keep_only_watched_channels_and_are_bounded() {
        let t = Taps::default();
        let sample = |op| {
            move |payloads: bool| Sample {
                time_ms: 0,
                from: "alice".into(),
                mesh: None,
                op,
                bytes: 3,
                raw: payloads.then(|| Bytes::from_static(b"abc")),
            }
        };
        t.observe("a", "room", sample("data"));
        assert!(!t.any());
        t.watch("a", "room", false).unwrap();
        for _ in 0..(SAMPLES_KEPT + 5) {
            t.observe("a", "room", sample("data"));
            t.observe("a", "other", sample("data"));
        }
        let s = t.samples("a", "room");
        assert_eq!(s.len(), SAMPLES_KEPT);
        assert!(s[0].raw.is_none(), "no payload unless asked");
        assert!(t.samples("a", "other").is_empty());
        t.watch("a", "room", true).unwrap();
        t.observe("a", "room", sample("data"));
        assert!(t.samples("a", "room")[0].raw.is_some());
        for i in 1..MAX_TAPS {
            t.watch("a", &format!("c{i}"), false).unwrap();
        }
        assert_eq!(t.watch("a", "one-too-many", false), Err(TooManyTaps));
    }
}
