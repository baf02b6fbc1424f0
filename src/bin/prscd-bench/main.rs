//! prscd-bench: the load tool of BENCHMARKS.md.
//!
//! Scenarios (each a subcommand): `fanout`, `rooms`, `idle`, `storm`,
//! `cross-node` and `node-death`, against prscd or, for comparison, a Node
//! `ws` broadcast server, a socket.io room server and a minimal
//! tokio-tungstenite broadcast server (`serve-ceiling`, in this binary).
//! Real clients over TLS WebSocket (or WebTransport datagrams for prscd),
//! loopback only, every wait bounded, JSON results out.
//!
//! Modules: `opts` (command line), `net` (connections), `wire` + `socketio`
//! (what each server kind expects on the socket), `load` (the engine behind
//! every client-load scenario), `death` (the mesh failure scenario),
//! `measure` (histograms, /proc, progress), `ceiling` (the ceiling server).

mod ceiling;
mod death;
mod load;
mod measure;
mod net;
mod opts;
mod presence;
mod socketio;
mod wire;
mod ws;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};

use load::{LoadSpec, Publish};
use net::{Endpoint, Transport};
use opts::Opts;
use wire::Wire;

const USAGE: &str = "\
prscd-bench: load tool for prscd and the servers it is compared with

usage: prscd-bench <scenario> [options]

scenarios (defaults in brackets):
  fanout      1 publisher -> N subscribers in one room
              --subscribers N [1000] --messages M [2000] --rate R|max [max]
              --window W [100: at max rate, message i waits for i-W everywhere]
              --settle S [0: pause between the joins and the first message]
  rooms       R rooms of S members, every member publishing at a rate
              --rooms R [1000] --room-size S [10] --rate R [1] --duration S [10]
  idle        N idle connections (joined, in rooms of S); server RSS per connection
              --connections N [10000] --room-size S [10] --settle S [5]
              --source-ips K [16: client addresses 127.0.0.1..K]
  storm       N connect+join as fast as possible (C at a time)
              --connections N [5000] --room-size S [10] --connect-concurrency C [256]
  cross-node  fanout with the publisher on another (meshed) node
              --pub-url URL (required) --settle S [1] and fanout's options;
              --sub-urls URL,URL: subscribers spread over --url and these
  room-join   prscd: one room of N members that behave like the published client
              (answer peer_online with their state); filled at R joins/s, then J
              more joins measured: deliveries per join, time until the joiner
              knows every state, fill time, server CPU and memory per member
              --members N [100] --join-rate R [200] --joiners J [5]
  node-death  N meshed prscd nodes; kill -9 one, time to the last peer_offline, T trials
              --prscd PATH [prscd beside this tool] --nodes N [3] --clients C [5]
              --trials T [20]
  serve-ceiling  the comparison ceiling: a minimal tokio-tungstenite broadcast
              server (TLS) --host H [127.0.0.1] --port P [0] --cert PEM --key PEM

common options:
  --url URL               wss://127.0.0.1:PORT/v1 (required for client scenarios;
                          ws:// for a comparison server without TLS)
  --server KIND           prscd | node-ws | uws | socketio | ceiling [prscd]
  --publickey KEY         prscd app key [dev]
  --token-secret S        prscd: connect with an HS256 token per client (app
                          --token-app, default the --publickey value) instead
                          of the plain key
  --transport T           ws | datagram (WebTransport, prscd only) [ws]
  --channel NAME          room name (prefix) [bench]
  --payload BYTES         payload size, >= 20 [100]
  --frames F              node-ws, uws and ceiling: payload (the bare payload) | prscd
                          (the bytes a prscd node delivers: {t,c,p,pl,mesh}) [payload]
  --mesh-id M             the mesh value of --frames prscd [bench: the suite's nodes]
  --connect-concurrency C connections set up at once [32; idle 128; storm 256]
  --source-ips K          spread client addresses over 127.0.0.1..K [1; idle 16]
  --threads T             client runtime threads [1]
  --step-timeout S        longest wait for one step [10]
  --duration-limit S      stop everything after S seconds [120]
  --server-pid PID        read the server's RSS and CPU from /proc/PID
  --json PATH             write the result as JSON
  --tls-resume            resume TLS sessions from earlier connections (a
                          reconnect storm); without it every connection is a
                          full handshake, as from a new browser
  --quiet                 no progress on stderr

Exit status: 0 complete; 2 incomplete (limit hit, loss, failures); 1 usage error.
TLS certificates are NOT verified (loopback benchmarking only).
";

fn main() {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let Some(scenario) = argv.first().cloned() else {
        eprint!("{USAGE}");
        std::process::exit(1);
    };
    if scenario == "-h" || scenario == "--help" {
        print!("{USAGE}");
        return;
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let opts = match Opts::parse(&argv[1..], &["quiet", "tls-resume"]) {
        Ok(o) => o,
        Err(e) => usage_error(e),
    };
    let threads = match opts.num::<usize>("threads", 1) {
        Ok(t) => t.max(1),
        Err(e) => usage_error(e),
    };
    let json_path = opts.opt("json").map(PathBuf::from);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(if scenario == "serve-ceiling" {
            2
        } else {
            threads
        })
        .enable_all()
        .build()
        .expect("tokio runtime");
    let outcome = runtime.block_on(async {
        let job = prepare(&scenario, &opts)?;
        opts.finish()?;
        anyhow::Ok(job.run().await)
    });
    runtime.shutdown_timeout(Duration::from_secs(1));
    match outcome {
        Err(e) => usage_error(e),
        Ok(Err(e)) => {
            eprintln!("prscd-bench: {e:#}");
            std::process::exit(2);
        }
        Ok(Ok(None)) => {}
        Ok(Ok(Some((result, complete)))) => {
            if result["scenario"] == "node-death" {
                println!("{}", serde_json::to_string_pretty(&result).expect("json"));
            } else {
                print!("{}", load::summary(&result));
            }
            if let Some(path) = json_path {
                let text = serde_json::to_string_pretty(&result).expect("json") + "\n";
                if let Err(e) = std::fs::write(&path, text) {
                    eprintln!("prscd-bench: writing {}: {e}", path.display());
                    std::process::exit(1);
                }
            }
            std::process::exit(if complete { 0 } else { 2 });
        }
    }
}

fn usage_error(e: anyhow::Error) -> ! {
    eprintln!("prscd-bench: {e:#}\n(see prscd-bench --help)");
    std::process::exit(1);
}

/// A scenario with its options read.
enum Job {
    Load(Box<LoadSpec>),
    Room(Box<presence::RoomSpec>),
    Death(death::DeathSpec),
    Ceiling(ceiling::CeilingOpts),
}

type Outcome = anyhow::Result<Option<(serde_json::Value, bool)>>;

impl Job {
    async fn run(self) -> Outcome {
        match self {
            Job::Load(spec) => load::run(*spec).await.map(Some),
            Job::Room(spec) => presence::run(*spec).await.map(Some),
            Job::Death(spec) => death::run(spec).await.map(Some),
            Job::Ceiling(o) => ceiling::serve(o).await.map(|()| None),
        }
    }
}

fn prepare(scenario: &str, o: &Opts) -> anyhow::Result<Job> {
    let step_timeout = o.secs("step-timeout", 10.0)?;
    let duration_limit = o.secs("duration-limit", 120.0)?;
    let quiet = o.flag("quiet");
    match scenario {
        "serve-ceiling" => {
            return Ok(Job::Ceiling(ceiling::CeilingOpts {
                host: o.string("host", "127.0.0.1"),
                port: o.num("port", 0)?,
                cert_file: o.opt("cert").context("--cert is required")?.into(),
                key_file: o.opt("key").context("--key is required")?.into(),
            }))
        }
        "node-death" => {
            let prscd = match o.opt("prscd") {
                Some(p) => PathBuf::from(p),
                None => std::env::current_exe()?.with_file_name("prscd"),
            };
            return Ok(Job::Death(death::DeathSpec {
                prscd,
                nodes: o.num("nodes", 3)?,
                clients_per_node: o.num("clients", 5)?,
                trials: o.num("trials", 20)?,
                step_timeout,
                duration_limit,
                quiet,
            }));
        }
        "fanout" | "cross-node" | "rooms" | "idle" | "storm" | "room-join" => {}
        other => bail!("unknown scenario {other:?}"),
    }
    let url = Endpoint::parse(&o.opt("url").context("--url is required")?)?;
    let publickey = o.string("publickey", "dev");
    let token = o.opt("token-secret").map(|secret| wire::TokenKey {
        app: o.string("token-app", &publickey),
        secret,
    });
    let wire: Arc<dyn Wire> = match o.string("server", "prscd").as_str() {
        "prscd" => Arc::new(wire::Prscd {
            base_path: url.path.clone(),
            publickey,
            token,
        }),
        kind @ ("node-ws" | "uws" | "ceiling") => {
            let signalling = match o.string("frames", "payload").as_str() {
                "payload" => None,
                "prscd" => Some(o.string("mesh-id", "bench")),
                other => bail!("--frames: {other:?} is not payload or prscd"),
            };
            let label = match kind {
                "node-ws" => "node-ws",
                "uws" => "uws",
                _ => "ceiling",
            };
            Arc::new(wire::Raw { label, signalling })
        }
        "socketio" => Arc::new(socketio::SocketIo),
        other => bail!("--server: unknown kind {other:?}"),
    };
    if scenario == "room-join" {
        if wire.name() != "prscd" {
            bail!("room-join needs --server prscd");
        }
        return Ok(Job::Room(Box::new(presence::RoomSpec {
            wire,
            url,
            room: o.string("channel", "bench"),
            members: o.num::<usize>("members", 100)?.max(1),
            join_rate: o.num("join-rate", 200.0)?,
            joiners: o.num::<usize>("joiners", 5)?.max(1),
            server_pid: o.opt("server-pid").map(|p| p.parse()).transpose()?,
            step_timeout,
            duration_limit,
            quiet,
        })));
    }
    let transport = match o.string("transport", "ws").as_str() {
        "ws" => Transport::Ws,
        "datagram" if wire.name() == "prscd" => Transport::Datagram,
        "datagram" => bail!("--transport datagram needs --server prscd"),
        other => bail!("--transport: {other:?} is not ws or datagram"),
    };
    let payload: usize = o.num("payload", 100)?;
    if payload < load::PAYLOAD_HEADER {
        bail!("--payload must be at least {} bytes", load::PAYLOAD_HEADER);
    }
    let (default_cc, default_ips) = match scenario {
        "idle" => (128, 16),
        "storm" => (256, 16),
        _ => (32, 1),
    };
    let mut spec = LoadSpec {
        scenario: scenario.to_owned(),
        wire,
        transport,
        url,
        pub_url: None,
        more_urls: o
            .opt("sub-urls")
            .map(|list| list.split(',').map(Endpoint::parse).collect())
            .transpose()?
            .unwrap_or_default(),
        room_prefix: o.string("channel", "bench"),
        rooms: 1,
        members: 1,
        publish: Publish::Nobody,
        messages: 0,
        duration: Duration::ZERO,
        rate: None,
        window: 100,
        payload,
        connect_concurrency: o.num::<usize>("connect-concurrency", default_cc)?.max(1),
        source_ips: o.num("source-ips", default_ips)?,
        tls_resume: o.flag("tls-resume"),
        settle: Duration::ZERO,
        step_timeout,
        duration_limit,
        server_pid: o.opt("server-pid").map(|p| p.parse()).transpose()?,
        quiet,
    };
    match scenario {
        "fanout" | "cross-node" => {
            spec.members = o.num("subscribers", 1000)?;
            spec.publish = Publish::Dedicated;
            spec.messages = o.num("messages", 2000)?;
            spec.rate = o.rate("rate", None)?;
            spec.window = o.num::<u64>("window", 100)?.max(1);
            let settle = if scenario == "cross-node" {
                spec.pub_url = Some(Endpoint::parse(
                    &o.opt("pub-url").context("--pub-url is required")?,
                )?);
                1.0
            } else {
                0.0
            };
            spec.settle = o.pause("settle", settle)?;
        }
        "rooms" => {
            spec.rooms = o.num("rooms", 1000)?;
            spec.members = o.num("room-size", 10)?;
            spec.publish = Publish::Members;
            spec.rate = Some(
                o.rate("rate", Some(1.0))?
                    .context("--rate max is for fanout")?,
            );
            spec.duration = o.secs("duration", 10.0)?;
        }
        _ => {
            let n: usize = o.num(
                "connections",
                if scenario == "idle" { 10_000 } else { 5_000 },
            )?;
            let size: usize = o.num::<usize>("room-size", 10)?.max(1);
            spec.rooms = n.div_ceil(size);
            spec.members = size.min(n);
            if scenario == "idle" {
                spec.settle = o.pause("settle", 5.0)?;
            }
        }
    }
    if spec.rooms == 0 || spec.members == 0 {
        bail!("nothing to do: zero rooms or members");
    }
    Ok(Job::Load(Box::new(spec)))
}
