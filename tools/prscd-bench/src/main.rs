//! prscd-bench: the load tool of BENCHMARKS.md.
//!
//! Scenarios (each a subcommand): `fanout`, `rooms`, `idle`, `storm`,
//! `cross-node`, `room-join` and `node-death`, against prscd or, for
//! comparison, a Node `ws` broadcast server, a socket.io room server and a
//! minimal tokio-tungstenite broadcast server (`serve-ceiling`, in this
//! binary). Real clients over TLS WebSocket (or WebTransport datagrams for
//! prscd), loopback only, every wait bounded, JSON results out.
//!
//! This file reads the command line (`cli`) and runs the scenario; the
//! engine is the `prscd_bench` library.

mod cli;

use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use clap::Parser as _;

use cli::{Cli, ClientArgs, FanoutArgs, LoadArgs, Scenario};
use prscd_bench::load::{self, LoadSpec, Publish};
use prscd_bench::net::{Endpoint, Transport};
use prscd_bench::wire::{self, Wire};
use prscd_bench::{ceiling, death, presence, socketio};

/// The pause between the joins and the first message when members are on
/// several nodes: a join is acknowledged by its own node before the others
/// have learnt the new subscription, and what they publish until then
/// does not reach it.
const MESH_SETTLE: Duration = Duration::from_secs(1);

fn main() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version are not errors; the rest are usage errors (1).
            let _ = e.print();
            std::process::exit(if e.use_stderr() { 1 } else { 0 });
        }
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let common = cli.scenario.common().clone();
    let serve_ceiling = matches!(cli.scenario, Scenario::ServeCeiling { .. });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(if serve_ceiling {
            2
        } else {
            common.threads.max(1)
        })
        .enable_all()
        .build()
        .expect("tokio runtime");
    let outcome = runtime.block_on(async {
        let job = prepare(cli.scenario)?;
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
            if let Some(path) = common.json {
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

fn prepare(scenario: Scenario) -> anyhow::Result<Job> {
    let name = scenario.name();
    match scenario {
        Scenario::ServeCeiling {
            host,
            port,
            cert,
            key,
            ..
        } => Ok(Job::Ceiling(ceiling::CeilingOpts {
            host,
            port,
            cert_file: cert,
            key_file: key,
        })),
        Scenario::NodeDeath {
            prscd,
            nodes,
            clients,
            trials,
            common,
        } => {
            let prscd = match prscd {
                Some(p) => p,
                None => std::env::current_exe()?.with_file_name("prscd"),
            };
            Ok(Job::Death(death::DeathSpec {
                prscd,
                nodes,
                clients_per_node: clients,
                trials,
                step_timeout: common.step_timeout,
                duration_limit: common.duration_limit,
                quiet: common.quiet,
            }))
        }
        Scenario::RoomJoin {
            client,
            members,
            join_rate,
            joiners,
            common,
        } => {
            let (url, wire) = client_wire(&client)?;
            if wire.name() != "prscd" {
                bail!("room-join needs --server prscd");
            }
            Ok(Job::Room(Box::new(presence::RoomSpec {
                wire,
                url,
                room: client.channel,
                members: members.max(1),
                join_rate,
                joiners: joiners.max(1),
                server_pid: client.server_pid,
                step_timeout: common.step_timeout,
                duration_limit: common.duration_limit,
                quiet: common.quiet,
            })))
        }
        Scenario::Fanout { fanout, load, .. } => {
            let mut spec = load_spec(name, &load, 32, 1)?;
            fanout_into(&mut spec, &fanout, Duration::ZERO);
            finish(spec)
        }
        Scenario::CrossNode {
            pub_url,
            fanout,
            load,
        } => {
            let mut spec = load_spec(name, &load, 32, 1)?;
            fanout_into(&mut spec, &fanout, MESH_SETTLE);
            spec.pub_url = Some(Endpoint::parse(&pub_url)?);
            finish(spec)
        }
        Scenario::Rooms {
            rooms,
            room_size,
            rate,
            duration,
            load,
        } => {
            let mut spec = load_spec(name, &load, 32, 1)?;
            spec.rooms = rooms;
            spec.members = room_size;
            spec.publish = Publish::Members;
            spec.rate = Some(
                rate.0
                    .ok_or_else(|| anyhow::anyhow!("--rate max is for fanout"))?,
            );
            spec.duration = duration;
            if !spec.more_urls.is_empty() {
                spec.settle = MESH_SETTLE;
            }
            finish(spec)
        }
        Scenario::Idle {
            connections,
            room_size,
            settle,
            load,
        } => {
            let mut spec = load_spec(name, &load, 128, 16)?;
            members_into(&mut spec, connections, room_size);
            spec.settle = settle;
            finish(spec)
        }
        Scenario::Storm {
            connections,
            room_size,
            load,
        } => {
            let mut spec = load_spec(name, &load, 256, 16)?;
            members_into(&mut spec, connections, room_size);
            finish(spec)
        }
    }
}

/// The endpoint and the server kind's wire of a client scenario.
fn client_wire(c: &ClientArgs) -> anyhow::Result<(Endpoint, Arc<dyn Wire>)> {
    let url = Endpoint::parse(&c.url)?;
    let publickey = c.publickey.clone();
    let token = c.token_secret.clone().map(|secret| wire::TokenKey {
        app: c.token_app.clone().unwrap_or_else(|| publickey.clone()),
        secret,
    });
    let wire: Arc<dyn Wire> = match c.server.as_str() {
        "prscd" => Arc::new(wire::Prscd {
            base_path: url.path.clone(),
            publickey,
            token,
        }),
        kind @ ("node-ws" | "uws" | "ceiling") => {
            let signalling = match c.frames.as_str() {
                "payload" => None,
                "prscd" => Some(c.mesh_id.clone()),
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
    Ok((url, wire))
}

/// A load scenario's spec from the options every load scenario takes;
/// `default_cc` and `default_ips` are the scenario's defaults of
/// --connect-concurrency and --source-ips.
fn load_spec(
    scenario: &str,
    o: &LoadArgs,
    default_cc: usize,
    default_ips: u8,
) -> anyhow::Result<LoadSpec> {
    let (url, wire) = client_wire(&o.client)?;
    let transport = match o.transport.as_str() {
        "ws" => Transport::Ws,
        "datagram" if wire.name() == "prscd" => Transport::Datagram,
        "datagram" => bail!("--transport datagram needs --server prscd"),
        other => bail!("--transport: {other:?} is not ws or datagram"),
    };
    if o.payload < load::PAYLOAD_HEADER {
        bail!("--payload must be at least {} bytes", load::PAYLOAD_HEADER);
    }
    Ok(LoadSpec {
        scenario: scenario.to_owned(),
        wire,
        transport,
        url,
        pub_url: None,
        more_urls: o
            .sub_urls
            .as_deref()
            .map(|list| list.split(',').map(Endpoint::parse).collect())
            .transpose()?
            .unwrap_or_default(),
        room_prefix: o.client.channel.clone(),
        rooms: 1,
        members: 1,
        publish: Publish::Nobody,
        messages: 0,
        duration: Duration::ZERO,
        rate: None,
        window: 100,
        payload: o.payload,
        connect_concurrency: o.connect_concurrency.unwrap_or(default_cc).max(1),
        source_ips: o.source_ips.unwrap_or(default_ips),
        tls_resume: o.tls_resume,
        settle: Duration::ZERO,
        step_timeout: o.common.step_timeout,
        duration_limit: o.common.duration_limit,
        server_pid: o.client.server_pid,
        quiet: o.common.quiet,
    })
}

fn fanout_into(spec: &mut LoadSpec, f: &FanoutArgs, default_settle: Duration) {
    spec.members = f.subscribers;
    spec.publish = Publish::Dedicated;
    spec.messages = f.messages;
    spec.rate = f.rate.0;
    spec.window = f.window.max(1);
    spec.settle = f.settle.unwrap_or(default_settle);
}

fn members_into(spec: &mut LoadSpec, connections: usize, room_size: usize) {
    let size = room_size.max(1);
    spec.rooms = connections.div_ceil(size);
    spec.members = size.min(connections);
}

fn finish(spec: LoadSpec) -> anyhow::Result<Job> {
    if spec.rooms == 0 || spec.members == 0 {
        bail!("nothing to do: zero rooms or members");
    }
    Ok(Job::Load(Box::new(spec)))
}
