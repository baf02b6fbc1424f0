//! What a membership costs zenoh on one node, by how many channels the node
//! serves: the measurement behind the mesh's membership design (mesh/README.md,
//! BENCHMARKS-HISTORY.md, fixes 8 and 16).
//!
//! One zenoh session (peer mode, no neighbours), a message subscriber per
//! channel as the mesh declares them, then the watch of the chosen layout,
//! then `TOKENS` memberships spread over the channels; prints the mean time
//! to add and to remove one.
//!
//!   cargo run --release --example zenoh-tokens -- CHANNELS [per-channel|per-app|none|samples] [TOKENS] [EVICT_KIB]
//!
//! A liveliness token per membership (`prscd/app/<channel>/<mesh_id>/<sid>/<client_id>`,
//! the mesh before fix 16) watched by `per-channel`: a liveliness subscriber
//! per channel (before fix 8); `per-app`: one for the app (fix 8); `none`: no
//! watch at all. `samples`: the mesh now (fix 16), a token per app, and one
//! `channel_join` or `peer_offline` published on the channel's key per
//! membership.
//!
//! `EVICT_KIB` (default 0): before each channel's link, write that much of a
//! buffer, untimed, so the link walks zenoh's tables from colder caches, as
//! in a node whose handshakes run between two links (32768 evicts this VM's
//! L3; BENCHMARKS-HISTORY.md, fix 19).

use std::time::{Duration, Instant};

use prscd_wire::mesh::keys;
use prscd_wire::protocol::{encode_control, Op};

fn channel(c: usize) -> String {
    format!("room-{c}")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let usage =
        "usage: zenoh-tokens CHANNELS [per-channel|per-app|none|samples] [TOKENS] [EVICT_KIB]";
    let channels: usize = args.next().ok_or_else(|| anyhow::anyhow!(usage))?.parse()?;
    let layout = args.next().unwrap_or_else(|| "per-app".into());
    let tokens: usize = args.next().map_or(Ok(10_000), |t| t.parse())?;
    let mut evict = vec![0u8; args.next().map_or(Ok(0), |k| k.parse::<usize>())? * 1024];
    anyhow::ensure!(channels > 0 && tokens > 0, "{usage}");

    let mut config = zenoh::Config::default();
    for (key, value) in [
        ("mode", r#""peer""#),
        ("listen/endpoints", "[]"),
        ("scouting/multicast/enabled", "false"),
    ] {
        config
            .insert_json5(key, value)
            .map_err(anyhow::Error::msg)?;
    }
    let session = zenoh::open(config).await.map_err(anyhow::Error::msg)?;
    let mut subscribers = Vec::new();
    let mut watches = Vec::new();
    let mut link = Duration::ZERO;
    for c in 0..channels {
        for (i, line) in evict.chunks_mut(64).enumerate() {
            line[0] = line[0].wrapping_add(i as u8);
        }
        std::hint::black_box(&evict);
        let started = Instant::now();
        subscribers.push(
            session
                .declare_subscriber(keys::channel_key("app", &channel(c)))
                .callback(|_| {})
                .await
                .map_err(anyhow::Error::msg)?,
        );
        if layout == "per-channel" {
            watches.push(
                session
                    .liveliness()
                    .declare_subscriber(format!("{}/*/*/*", keys::channel_key("app", &channel(c))))
                    .history(true)
                    .callback(|_| {})
                    .await
                    .map_err(anyhow::Error::msg)?,
            );
        }
        link += started.elapsed();
    }
    let started = Instant::now();
    match layout.as_str() {
        "per-app" => watches.push(
            session
                .liveliness()
                .declare_subscriber("prscd/app/*/*/*/*")
                .callback(|_| {})
                .await
                .map_err(anyhow::Error::msg)?,
        ),
        "samples" => return samples(session, channels, tokens, link).await,
        "per-channel" | "none" => {}
        other => anyhow::bail!("unknown layout {other:?}; {usage}"),
    }

    let link = link + started.elapsed();
    let started = Instant::now();
    let mut declared = Vec::with_capacity(tokens);
    for i in 0..tokens {
        let key = format!(
            "{}/bench/{}/client-{i}",
            keys::channel_key("app", &channel(i % channels)),
            1_000_000 + i
        );
        let token = session.liveliness().declare_token(key);
        declared.push(token.await.map_err(anyhow::Error::msg)?);
    }
    let declare = started.elapsed();
    let started = Instant::now();
    for token in declared {
        token.undeclare().await.map_err(anyhow::Error::msg)?;
    }
    let undeclare = started.elapsed();
    report(channels, &layout, tokens, link, declare, undeclare);
    drop((watches, subscribers));
    session.close().await.map_err(anyhow::Error::msg)?;
    Ok(())
}

fn report(
    channels: usize,
    layout: &str,
    tokens: usize,
    link: Duration,
    add: Duration,
    remove: Duration,
) {
    let per = |d: Duration| d.as_secs_f64() * 1e6 / tokens as f64;
    println!(
        "channels {channels:>6}  watch {layout:<11}  memberships {tokens:>6}  link {:>7.1} µs/channel  add {:>8.1} µs  remove {:>8.1} µs",
        link.as_secs_f64() * 1e6 / channels as f64,
        per(add),
        per(remove)
    );
}

/// The mesh's layout: per channel, a subscriber (declared by the caller);
/// per app, the node's token, a liveliness subscriber for node tokens and
/// the roster queryable; then a `channel_join` per join and a `peer_offline`
/// per leave on the channel's key. `link`: the caller's time declaring the
/// channels' subscribers, to which the per-app declarations are added.
async fn samples(
    session: zenoh::Session,
    channels: usize,
    joins: usize,
    link: Duration,
) -> anyhow::Result<()> {
    let e = anyhow::Error::msg;
    let started = Instant::now();
    let token = session
        .liveliness()
        .declare_token(keys::node_token_key("app", "bench"))
        .await
        .map_err(e)?;
    let node_tokens = session
        .liveliness()
        .declare_subscriber(keys::node_tokens_of_app("app"))
        .callback(|_| {})
        .await
        .map_err(e)?;
    let roster = session
        .declare_queryable(keys::node_members_of_app("app", "bench"))
        .callback(|_| {})
        .await
        .map_err(e)?;
    let link = link + started.elapsed();
    let put = |i: usize, op: Op| {
        let channel = channel(i % channels);
        let msg = encode_control(op, &channel, &format!("client-{i}"), "bench");
        session
            .put(keys::channel_key("app", &channel), msg)
            .allowed_destination(zenoh::sample::Locality::Remote)
    };
    let started = Instant::now();
    for i in 0..joins {
        put(i, Op::ChannelJoin).await.map_err(e)?;
    }
    let add = started.elapsed();
    let started = Instant::now();
    for i in 0..joins {
        put(i, Op::PeerOffline).await.map_err(e)?;
    }
    report(channels, "samples", joins, link, add, started.elapsed());
    drop((token, node_tokens, roster));
    session.close().await.map_err(e)?;
    Ok(())
}
