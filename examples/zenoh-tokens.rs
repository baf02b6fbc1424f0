//! What a membership costs zenoh on one node, by how many channels the node
//! serves: the measurement behind the mesh's one-watch-per-app design
//! (mesh/README.md, BENCHMARKS.md "Mesh: the cost of a join").
//!
//! One zenoh session (peer mode, no neighbours), a message subscriber per
//! channel as the mesh declares them, then the liveliness watch of the
//! chosen layout, then `--tokens` membership tokens spread over the
//! channels; prints the mean time to declare and to undeclare one.
//!
//!   cargo run --release --example zenoh-tokens -- CHANNELS [per-channel|per-app|none] [TOKENS]
//!
//! `per-channel`: a liveliness subscriber per channel (the mesh before);
//! `per-app`: one for the app (the mesh now); `none`: no watch at all.

use std::time::Instant;

use prscd::mesh::keys::{self, Member};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: zenoh-tokens CHANNELS [per-channel|per-app|none] [TOKENS]";
    let channels: usize = args.next().ok_or_else(|| anyhow::anyhow!(usage))?.parse()?;
    let layout = args.next().unwrap_or_else(|| "per-app".into());
    let tokens: usize = args.next().map_or(Ok(10_000), |t| t.parse())?;
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
    let channel = |c: usize| format!("room-{c}");
    let mut subscribers = Vec::new();
    let mut watches = Vec::new();
    let started = Instant::now();
    for c in 0..channels {
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
                    .declare_subscriber(keys::members_of("app", &channel(c)))
                    .history(true)
                    .callback(|_| {})
                    .await
                    .map_err(anyhow::Error::msg)?,
            );
        }
    }
    match layout.as_str() {
        "per-app" => watches.push(
            session
                .liveliness()
                .declare_subscriber(keys::members_of_app("app"))
                .callback(|_| {})
                .await
                .map_err(anyhow::Error::msg)?,
        ),
        "per-channel" | "none" => {}
        other => anyhow::bail!("unknown layout {other:?}; {usage}"),
    }

    let link = started.elapsed();
    let started = Instant::now();
    let mut declared = Vec::with_capacity(tokens);
    for i in 0..tokens {
        let key = keys::member_key(&Member {
            app: "app".into(),
            channel: channel(i % channels),
            mesh_id: "bench".into(),
            sid: 1_000_000 + i as u64,
            client_id: format!("client-{i}"),
        });
        let token = session.liveliness().declare_token(key);
        declared.push(token.await.map_err(anyhow::Error::msg)?);
    }
    let declare = started.elapsed();
    let started = Instant::now();
    for token in declared {
        token.undeclare().await.map_err(anyhow::Error::msg)?;
    }
    let undeclare = started.elapsed();
    let per = |d: std::time::Duration| d.as_secs_f64() * 1e6 / tokens as f64;
    println!(
        "channels {channels:>6}  watch {layout:<11}  tokens {tokens:>6}  link {:>7.1} µs/channel  declare {:>8.1} µs/token  undeclare {:>8.1} µs/token",
        link.as_secs_f64() * 1e6 / channels as f64,
        per(declare),
        per(undeclare)
    );
    drop((watches, subscribers));
    session.close().await.map_err(anyhow::Error::msg)?;
    Ok(())
}
