//! The command line: one subcommand per scenario, each with exactly the
//! options it reads, so a typo or an option of another scenario is an error
//! rather than a silently default benchmark.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "prscd-bench",
    about = "load tool for prscd and the servers it is compared with",
    after_help = "Exit status: 0 complete; 2 incomplete (limit hit, loss, failures); 1 usage error.\n\
                  TLS certificates are NOT verified (loopback benchmarking only)."
)]
pub struct Cli {
    #[command(subcommand)]
    pub scenario: Scenario,
}

#[derive(Subcommand)]
pub enum Scenario {
    /// 1 publisher -> N subscribers in one room
    Fanout {
        #[command(flatten)]
        fanout: FanoutArgs,
        #[command(flatten)]
        load: LoadArgs,
    },
    /// R rooms of S members, every member publishing at a rate
    Rooms {
        #[arg(long, default_value = "1000", value_parser = num::<usize>)]
        rooms: usize,
        #[arg(long, default_value = "10", value_parser = num::<usize>)]
        room_size: usize,
        /// messages/s per member
        #[arg(long, default_value = "1", value_parser = rate)]
        rate: Rate,
        /// seconds of publishing (after a 1 s pause when --sub-urls spreads
        /// the members over several nodes)
        #[arg(long, default_value = "10", value_parser = secs)]
        duration: Duration,
        #[command(flatten)]
        load: LoadArgs,
    },
    /// N idle connections (joined, in rooms of S); server RSS per connection
    Idle {
        #[arg(long, default_value = "10000", value_parser = num::<usize>)]
        connections: usize,
        #[arg(long, default_value = "10", value_parser = num::<usize>)]
        room_size: usize,
        /// seconds to wait once every connection joined
        #[arg(long, default_value = "5", value_parser = pause)]
        settle: Duration,
        #[command(flatten)]
        load: LoadArgs,
    },
    /// N connect+join as fast as possible (--connect-concurrency at a time)
    Storm {
        #[arg(long, default_value = "5000", value_parser = num::<usize>)]
        connections: usize,
        #[arg(long, default_value = "10", value_parser = num::<usize>)]
        room_size: usize,
        #[command(flatten)]
        load: LoadArgs,
    },
    /// fanout with the publisher on another (meshed) node; subscribers on
    /// --url and --sub-urls
    CrossNode {
        /// where the publisher connects
        #[arg(long)]
        pub_url: String,
        #[command(flatten)]
        fanout: FanoutArgs,
        #[command(flatten)]
        load: LoadArgs,
    },
    /// prscd: one room of N members that behave like the published client
    /// (answer peer_online with their state); filled at R joins/s, then J more
    /// joins measured: deliveries per join, time until the joiner knows every
    /// state, fill time, server CPU and memory per member
    RoomJoin {
        #[arg(long, default_value = "100", value_parser = num::<usize>)]
        members: usize,
        #[arg(long, default_value = "200", value_parser = num::<f64>)]
        join_rate: f64,
        #[arg(long, default_value = "5", value_parser = num::<usize>)]
        joiners: usize,
        #[command(flatten)]
        client: ClientArgs,
        #[command(flatten)]
        common: Common,
    },
    /// N meshed prscd nodes; kill -9 one, time to the last peer_offline, T trials
    NodeDeath {
        /// the prscd binary [prscd beside this tool]
        #[arg(long)]
        prscd: Option<PathBuf>,
        #[arg(long, default_value = "3", value_parser = num::<usize>)]
        nodes: usize,
        /// clients per node
        #[arg(long, default_value = "5", value_parser = num::<usize>)]
        clients: usize,
        #[arg(long, default_value = "20", value_parser = num::<usize>)]
        trials: usize,
        #[command(flatten)]
        common: Common,
    },
    /// the comparison ceiling: a minimal tokio-tungstenite broadcast server (TLS)
    ServeCeiling {
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        #[arg(long, default_value = "0", value_parser = num::<u16>)]
        port: u16,
        #[arg(long)]
        cert: PathBuf,
        #[arg(long)]
        key: PathBuf,
        #[command(flatten)]
        common: Common,
    },
}

impl Scenario {
    pub fn name(&self) -> &'static str {
        match self {
            Scenario::Fanout { .. } => "fanout",
            Scenario::Rooms { .. } => "rooms",
            Scenario::Idle { .. } => "idle",
            Scenario::Storm { .. } => "storm",
            Scenario::CrossNode { .. } => "cross-node",
            Scenario::RoomJoin { .. } => "room-join",
            Scenario::NodeDeath { .. } => "node-death",
            Scenario::ServeCeiling { .. } => "serve-ceiling",
        }
    }

    pub fn common(&self) -> &Common {
        match self {
            Scenario::Fanout { load, .. }
            | Scenario::Rooms { load, .. }
            | Scenario::Idle { load, .. }
            | Scenario::Storm { load, .. }
            | Scenario::CrossNode { load, .. } => &load.common,
            Scenario::RoomJoin { common, .. }
            | Scenario::NodeDeath { common, .. }
            | Scenario::ServeCeiling { common, .. } => common,
        }
    }
}

/// Options of every scenario.
#[derive(Args, Clone)]
pub struct Common {
    /// client runtime threads
    #[arg(long, default_value = "1", value_parser = num::<usize>)]
    pub threads: usize,
    /// longest wait for one step, seconds
    #[arg(long, default_value = "10", value_parser = secs)]
    pub step_timeout: Duration,
    /// stop everything after this many seconds
    #[arg(long, default_value = "120", value_parser = secs)]
    pub duration_limit: Duration,
    /// write the result as JSON
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// no progress on stderr
    #[arg(long)]
    pub quiet: bool,
}

/// Options of every scenario that connects clients to a server.
#[derive(Args)]
pub struct ClientArgs {
    /// wss://127.0.0.1:PORT/v1 (ws:// for a comparison server without TLS)
    #[arg(long)]
    pub url: String,
    /// prscd | node-ws | uws | socketio | ceiling
    #[arg(long, default_value = "prscd")]
    pub server: String,
    /// prscd app key
    #[arg(long, default_value = "dev")]
    pub publickey: String,
    /// prscd: connect with an HS256 token per client (app --token-app) instead
    /// of the plain key
    #[arg(long)]
    pub token_secret: Option<String>,
    /// the token's app [the --publickey value]
    #[arg(long)]
    pub token_app: Option<String>,
    /// node-ws, uws and ceiling: payload (the bare payload) | prscd (the bytes
    /// a prscd node delivers: {t,c,p,pl,mesh})
    #[arg(long, default_value = "payload")]
    pub frames: String,
    /// the mesh value of --frames prscd [the suite's nodes]
    #[arg(long, default_value = "bench")]
    pub mesh_id: String,
    /// room name (prefix)
    #[arg(long, default_value = "bench")]
    pub channel: String,
    /// read the server's RSS and CPU from /proc/PID
    #[arg(long)]
    pub server_pid: Option<u32>,
}

/// Options of the client-load scenarios (all but room-join).
#[derive(Args)]
pub struct LoadArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(flatten)]
    pub common: Common,
    /// ws | datagram (WebTransport, prscd only)
    #[arg(long, default_value = "ws")]
    pub transport: String,
    /// payload size, >= 20
    #[arg(long, default_value = "100", value_parser = num::<usize>)]
    pub payload: usize,
    /// connections set up at once [32; idle 128; storm 256]
    #[arg(long, value_parser = num::<usize>)]
    pub connect_concurrency: Option<usize>,
    /// spread client addresses over 127.0.0.1..K [1; idle and storm 16]
    #[arg(long, value_parser = num::<u8>)]
    pub source_ips: Option<u8>,
    /// resume TLS sessions from earlier connections (a reconnect storm);
    /// without it every connection is a full handshake, as from a new browser
    #[arg(long)]
    pub tls_resume: bool,
    /// more subscriber URLs, comma-separated: members spread over --url and these
    #[arg(long)]
    pub sub_urls: Option<String>,
}

/// Options of fanout and cross-node.
#[derive(Args)]
pub struct FanoutArgs {
    #[arg(long, default_value = "1000", value_parser = num::<usize>)]
    pub subscribers: usize,
    #[arg(long, default_value = "2000", value_parser = num::<u64>)]
    pub messages: u64,
    /// messages/s, or max
    #[arg(long, default_value = "max", value_parser = rate)]
    pub rate: Rate,
    /// at max rate, message i waits for i-W everywhere
    #[arg(long, default_value = "100", value_parser = num::<u64>)]
    pub window: u64,
    /// pause in seconds between the joins and the first message [fanout 0;
    /// cross-node 1]
    #[arg(long, value_parser = pause)]
    pub settle: Option<Duration>,
}

/// A rate in messages/s; `None` for `max`.
#[derive(Clone, Copy)]
pub struct Rate(pub Option<f64>);

/// A number; `_` may group digits (`1_000`).
fn num<T: FromStr>(s: &str) -> Result<T, String> {
    s.replace('_', "")
        .parse()
        .map_err(|_| format!("not a valid number: {s:?}"))
}

/// Seconds, > 0.
fn secs(s: &str) -> Result<Duration, String> {
    let v: f64 = num(s)?;
    if !(v > 0.0 && v.is_finite()) {
        return Err("must be > 0 seconds".into());
    }
    Ok(Duration::from_secs_f64(v))
}

/// Seconds, 0 allowed.
fn pause(s: &str) -> Result<Duration, String> {
    let v: f64 = num(s)?;
    if !(v >= 0.0 && v.is_finite()) {
        return Err("must be >= 0 seconds".into());
    }
    Ok(Duration::from_secs_f64(v))
}

fn rate(s: &str) -> Result<Rate, String> {
    if s == "max" {
        return Ok(Rate(None));
    }
    let r: f64 = s
        .parse()
        .map_err(|_| format!("not a number or `max`: {s:?}"))?;
    if !(r > 0.0 && r.is_finite()) {
        return Err("must be > 0 or `max`".into());
    }
    Ok(Rate(Some(r)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    fn parse(s: &str) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("prscd-bench").chain(s.split_whitespace()))
    }

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn values_flags_defaults_and_unknowns() {
        let cli = parse("fanout --url wss://x/v1 --subscribers 1_000 --rate=max --quiet").unwrap();
        let Scenario::Fanout { fanout, load } = cli.scenario else {
            panic!("fanout")
        };
        assert_eq!(fanout.subscribers, 1000);
        assert!(fanout.rate.0.is_none() && fanout.settle.is_none());
        assert_eq!(fanout.messages, 2000);
        assert!(load.common.quiet && !load.tls_resume);
        assert_eq!(load.client.publickey, "dev");
        assert_eq!(load.common.step_timeout, Duration::from_secs(10));
        // Another scenario's option, a typo, a missing value: usage errors.
        assert!(parse("fanout --url u --rooms 3").is_err());
        assert!(parse("fanout --url u --typo 3").is_err());
        assert!(parse("fanout --url u --subscribers").is_err());
        assert!(parse("fanout --url u --step-timeout 0").is_err());
        assert!(parse("fanout").is_err());
        assert!(parse("stray").is_err());
        let cli = parse("rooms --url u --rate 2.5").unwrap();
        assert!(matches!(cli.scenario, Scenario::Rooms { rate: Rate(Some(r)), .. } if r == 2.5));
    }
}
