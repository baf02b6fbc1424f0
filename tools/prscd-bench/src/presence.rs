//! The `room-join` scenario: members that behave like the published client
//! (PROTOCOL.md §3): after its join ack a member sends `peer_online` and
//! its state, answers every `peer_online` with its state, and keeps the
//! states it has seen. One room is filled at a steady join rate, then more
//! members join one at a time, and each of those joins is measured: the
//! deliveries it caused (the node's `messages_out`), and how long until the
//! joiner knew every member's state.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::measure;
use crate::net::{Conn, Dialer, Endpoint, Transport};
use crate::wire::{self, Wire};

pub struct RoomSpec {
    pub wire: Arc<dyn Wire>,
    pub url: Endpoint,
    pub room: String,
    /// Members filling the room before the measured joins.
    pub members: usize,
    /// Joins per second while filling.
    pub join_rate: f64,
    /// Measured joins, one after the other.
    pub joiners: usize,
    pub server_pid: Option<u32>,
    pub step_timeout: Duration,
    pub duration_limit: Duration,
    pub quiet: bool,
}

/// What every member task shares.
struct Shared {
    spec: RoomSpec,
    dialer: Dialer,
    stop: CancellationToken,
    /// Messages the clients received, in all.
    received: AtomicU64,
    /// Members that ended on an error (connection lost, refused).
    failed: AtomicUsize,
    /// Members in the room now: acked and not ended. A measured joiner waits
    /// for this many states, so a member that failed to connect under load
    /// doesn't make every later join incomplete.
    in_room: AtomicUsize,
}

/// A member's view: the ids whose state it has, and when it had them all.
struct View {
    known: HashSet<String>,
    complete_at: Option<Instant>,
}

pub async fn run(spec: RoomSpec) -> anyhow::Result<(serde_json::Value, bool)> {
    measure::raise_nofile(2 * (spec.members + spec.joiners) as u64 + 64);
    let deadline = Instant::now() + spec.duration_limit;
    let sh = Arc::new(Shared {
        dialer: Dialer::new(16, Transport::Ws, false)?,
        spec,
        stop: CancellationToken::new(),
        received: AtomicU64::new(0),
        failed: AtomicUsize::new(0),
        in_room: AtomicUsize::new(0),
    });
    let spec = &sh.spec;
    let pid = spec.server_pid;
    let rss_before = pid.and_then(measure::proc_mem).map(|(rss, _)| rss);
    let cpu_before = pid.and_then(measure::proc_cpu);
    let health_before = health(&sh).await?;

    // Fill: one join every 1/rate s; each member runs until the end.
    let started = Instant::now();
    let mut tasks = Vec::new();
    let gap = Duration::from_secs_f64(1.0 / spec.join_rate.max(0.001));
    for i in 0..spec.members {
        let at = started + gap.mul_f64(i as f64);
        tokio::time::sleep_until(at.into()).await;
        if Instant::now() > deadline {
            bail!("duration limit reached while filling the room");
        }
        tasks.push(tokio::spawn(member(sh.clone(), format!("m{i}"), None)));
    }
    let out_before_quiet = quiet_deliveries(&sh, deadline).await?;
    let filled_secs = started.elapsed().as_secs_f64() - QUIET.as_secs_f64();
    let cpu_filled = pid.and_then(measure::proc_cpu);
    let rss_filled = pid.and_then(measure::proc_mem).map(|(rss, _)| rss);
    if !spec.quiet {
        eprintln!(
            "room-join: {} members in {filled_secs:.1} s, {} deliveries",
            spec.members,
            out_before_quiet - counter(&health_before, "messages_out")
        );
    }

    // Measured joins.
    let mut costs = Vec::new();
    let mut know_all = measure::new_hist();
    let mut incomplete = 0;
    let mut in_room_at_join = Vec::new();
    for j in 0..spec.joiners {
        let before = quiet_deliveries(&sh, deadline).await?;
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let expect = sh.in_room.load(Ordering::Relaxed);
        in_room_at_join.push(expect);
        let joined_at = Instant::now();
        tasks.push(tokio::spawn(member(
            sh.clone(),
            format!("joiner{j}"),
            Some((expect, done_tx)),
        )));
        let limit = spec
            .step_timeout
            .min(deadline.saturating_duration_since(Instant::now()));
        match tokio::time::timeout(limit, done_rx).await {
            Ok(Ok(at)) => {
                let us = at.saturating_duration_since(joined_at).as_micros() as u64;
                let _ = know_all.record(us.max(1));
            }
            _ => incomplete += 1,
        }
        let after = quiet_deliveries(&sh, deadline).await?;
        costs.push(after - before);
    }
    let health_after = health(&sh).await?;
    sh.stop.cancel();
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }

    let n = spec.members as f64;
    costs.sort_unstable();
    let median_cost = costs.get(costs.len() / 2).copied().unwrap_or(0);
    let dropped = |h: &serde_json::Value, r: &str| h["dropped"][r].as_u64().unwrap_or(0);
    let result = serde_json::json!({
        "scenario": "room-join",
        "server": spec.wire.name(),
        "members": spec.members,
        "join_rate": spec.join_rate,
        "fill": {
            "seconds": measure::round(filled_secs, 3),
            "deliveries": out_before_quiet - counter(&health_before, "messages_out"),
            "server_cpu_s": cpu_before.zip(cpu_filled).map(|(a, b)| measure::round(b - a, 3)),
            "rss_kb_per_member": rss_before.zip(rss_filled)
                .map(|(a, b)| measure::round((b as f64 - a as f64) / n, 2)),
        },
        "join": {
            "count": spec.joiners,
            "deliveries": costs,
            "deliveries_median": median_cost,
            "deliveries_per_member": measure::round(median_cost as f64 / n, 2),
            "know_all_us": measure::quantiles(&know_all),
            "incomplete": incomplete,
            "in_room_at_join": in_room_at_join,
        },
        "slow_reader": dropped(&health_after, "slow_reader") - dropped(&health_before, "slow_reader"),
        "client_failures": sh.failed.load(Ordering::Relaxed),
        "client_received": sh.received.load(Ordering::Relaxed),
    });
    let complete = incomplete == 0 && sh.failed.load(Ordering::Relaxed) == 0;
    Ok((result, complete))
}

/// How long the node's delivery counter must stand still to call it done.
const QUIET: Duration = Duration::from_millis(500);

/// The node's `messages_out` once it stopped moving for [`QUIET`].
async fn quiet_deliveries(sh: &Shared, deadline: Instant) -> anyhow::Result<u64> {
    let mut last = None;
    loop {
        if Instant::now() > deadline {
            bail!("duration limit reached waiting for the room to settle");
        }
        let now = counter(&health(sh).await?, "messages_out");
        if last == Some(now) {
            return Ok(now);
        }
        last = Some(now);
        tokio::time::sleep(QUIET).await;
    }
}

fn counter(health: &serde_json::Value, name: &str) -> u64 {
    health[name].as_u64().unwrap_or(0)
}

async fn health(sh: &Shared) -> anyhow::Result<serde_json::Value> {
    let body = sh.dialer.get(&sh.spec.url, "/health").await?;
    serde_json::from_str(&body).context("/health is not JSON")
}

/// One member, until the run stops. `watch`: the number of other members
/// whose state it must know, and where to say when it does.
async fn member(
    sh: Arc<Shared>,
    id: String,
    watch: Option<(usize, tokio::sync::oneshot::Sender<Instant>)>,
) {
    let mut in_room = false;
    let result = member_inner(&sh, &id, watch, &mut in_room).await;
    if in_room {
        sh.in_room.fetch_sub(1, Ordering::Relaxed);
    }
    if let Err(e) = result {
        if !sh.stop.is_cancelled() {
            sh.failed.fetch_add(1, Ordering::Relaxed);
            if !sh.spec.quiet {
                eprintln!("room-join: {id}: {e:#}");
            }
        }
    }
}

async fn member_inner(
    sh: &Shared,
    id: &str,
    mut watch: Option<(usize, tokio::sync::oneshot::Sender<Instant>)>,
    in_room: &mut bool,
) -> anyhow::Result<()> {
    let spec = &sh.spec;
    let room = spec.room.as_str();
    let mut conn: Conn = sh
        .dialer
        .ws(&spec.url, spec.wire.as_ref(), id, room)
        .await?;
    conn.send(spec.wire.join(room, id)).await?;
    let state = wire::state_frame(room, id);
    let mut view = View {
        known: HashSet::new(),
        complete_at: None,
    };
    let mut acked = false;
    loop {
        let frame = tokio::select! {
            _ = sh.stop.cancelled() => break,
            frame = conn.recv() => frame?,
        };
        let Some(Message::Binary(frame)) = frame else {
            if frame.is_none() {
                bail!("connection ended");
            }
            continue;
        };
        sh.received.fetch_add(1, Ordering::Relaxed);
        let Some((op, from)) = wire::control_of(&frame) else {
            continue;
        };
        match op.as_str() {
            "channel_join" if !acked => {
                acked = true;
                // A joiner counts itself only after its measurement began.
                *in_room = true;
                sh.in_room.fetch_add(1, Ordering::Relaxed);
                conn.send(vec![
                    Message::Binary(wire::control_frame("peer_online", room, None).into()),
                    Message::Binary(state.clone().into()),
                ])
                .await?;
            }
            "peer_online" if from != id => {
                conn.send(vec![Message::Binary(state.clone().into())])
                    .await?;
            }
            "peer_state" if from != id => {
                view.known.insert(from);
            }
            "peer_offline" => {
                view.known.remove(&from);
            }
            _ => {}
        }
        if let Some((expect, _)) = &watch {
            if view.complete_at.is_none() && view.known.len() >= *expect {
                let at = Instant::now();
                view.complete_at = Some(at);
                if let Some((_, tx)) = watch.take() {
                    let _ = tx.send(at);
                }
            }
        }
    }
    conn.close().await;
    Ok(())
}
