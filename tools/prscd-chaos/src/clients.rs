//! Clients that behave like the published `@yomo/presence` client over its
//! WebSocket fallback (PROTOCOL.md §3): join each channel; on the ack send
//! `peer_online` and the state; answer every `peer_online` with the state;
//! keep a member list from `peer_online` / `peer_state` / `peer_offline`
//! (ignoring presence about themselves); after a close, wait and connect
//! again and rejoin every channel. The published client waits 10 s before
//! reconnecting; these wait 0.5–1.5 s so that a short run holds more faults.
//!
//! They also send sequence-numbered data messages (`{event: "chaos", data:
//! "{\"n\":SEQ}"}`, one counter per client across its connections) and,
//! now and then, a new state. Everything they see is recorded in the
//! [`World`], and what must never happen (a duplicate, a message out of
//! order, a second `peer_offline` without a return, an echo) is a
//! violation at once.
//!
//! Frames are built by the load tool's `wire` module and read by the
//! node's own codec (`prscd_wire::protocol`); TLS pins the node's dev
//! certificate (the one it wrote into its `DEV_CERT_DIR`).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use prscd_wire::protocol::{self, Kind, Op};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;

use crate::cluster::Target;
use crate::plan::Rng;
use prscd_bench::wire;
use prscd_bench::ws::WsClient;

pub const CHANNELS: usize = 3;

/// What a client is told to do.
pub enum Cmd {
    /// Close the connection and reconnect as after any close.
    Reconnect,
    /// Send one data message to each joined channel now, recording who must
    /// receive it; answer once sent.
    Probe(oneshot::Sender<()>),
    /// Send one data message to each joined channel now, expected nowhere:
    /// traffic for a settle to see the data paths by.
    Nudge,
}

/// A probe message and who must receive it.
pub struct Expect {
    pub sender: usize,
    /// The sender's connection when it sent it.
    pub sender_conn: u64,
    pub channel: String,
    pub seq: u64,
    /// (receiver, its connection at the send).
    pub receivers: Vec<(usize, u64)>,
}

#[derive(Default)]
pub struct Counters {
    pub connections: u64,
    pub connect_failures: u64,
    pub data_sent: u64,
    pub data_received: u64,
    pub presence_received: u64,
    pub states_sent: u64,
    /// Connections the node or the network ended (not the client).
    pub lost_connections: u64,
}

pub struct ClientState {
    pub id: String,
    pub region: usize,
    pub channels: Vec<String>,
    /// Connections opened so far (the current one's number).
    pub conn: u64,
    pub connected: bool,
    /// Channels whose join the current connection has had acknowledged.
    pub joined: BTreeSet<String>,
    /// Member list per channel on the current connection.
    pub views: BTreeMap<String, BTreeSet<String>>,
    /// (channel, peer) → the last presence message about it was peer_offline.
    offline: HashMap<(String, String), bool>,
    /// (channel, sender) → last seq on the current connection.
    pub order: HashMap<(String, String), u64>,
    /// sender → every seq received from it, over all connections.
    pub seen: HashMap<String, HashSet<u64>>,
    pub next_seq: u64,
    state_n: u64,
}

pub struct World {
    pub clients: Vec<ClientState>,
    pub counters: Counters,
    pub violations: Vec<String>,
    /// Connections lost outside a fault.
    pub notes: Vec<String>,
    pub expects: Vec<Expect>,
    /// What is going on, for violation messages.
    pub context: String,
    pub t0: Instant,
}

impl World {
    /// `t0`: the run's start, for the times in violations.
    pub fn new(n: usize, seed: u64, t0: Instant) -> World {
        let mut rng = Rng::new(seed ^ 0xC11E_7500);
        let clients = (0..n)
            .map(|i| {
                let mut channels = vec![format!("room-{}", i % CHANNELS)];
                if rng.below(3) == 0 {
                    channels.push(format!(
                        "room-{}",
                        (i + 1 + rng.below(CHANNELS - 1)) % CHANNELS
                    ));
                }
                ClientState {
                    id: format!("c{i:02}"),
                    region: i % 3,
                    channels,
                    conn: 0,
                    connected: false,
                    joined: BTreeSet::new(),
                    views: BTreeMap::new(),
                    offline: HashMap::new(),
                    order: HashMap::new(),
                    seen: HashMap::new(),
                    next_seq: 0,
                    state_n: 0,
                }
            })
            .collect();
        World {
            clients,
            counters: Counters::default(),
            violations: Vec::new(),
            notes: Vec::new(),
            expects: Vec::new(),
            context: "start".into(),
            t0,
        }
    }

    /// A connection the node or the network ended. Outside a fault that is
    /// worth a note (not a violation: the process may have been frozen).
    pub fn lost_connection(&mut self, i: usize, why: &str) {
        self.counters.lost_connections += 1;
        if !self.context.starts_with("fault") {
            let line = format!(
                "note t={:.1}s during {}: {}'s connection ended ({why})",
                self.t0.elapsed().as_secs_f64(),
                self.context,
                self.clients[i].id
            );
            eprintln!("{line}");
            self.notes.push(line);
        }
    }

    pub fn violation(&mut self, what: String) {
        let line = format!(
            "VIOLATION t={:.1}s during {}: {what}",
            self.t0.elapsed().as_secs_f64(),
            self.context
        );
        eprintln!("{line}");
        self.violations.push(line);
    }

    /// Clients connected and joined to `channel` now.
    pub fn truth(&self, channel: &str) -> BTreeSet<String> {
        self.clients
            .iter()
            .filter(|c| c.connected && c.joined.contains(channel))
            .map(|c| c.id.clone())
            .collect()
    }
}

pub type Shared = Arc<Mutex<World>>;

/// The state a client sends: `{id, name, n}` (n counts its state changes).
fn state_payload(id: &str, n: u64) -> Vec<u8> {
    let mut s = Vec::new();
    rmp::encode::write_map_len(&mut s, 3).unwrap();
    for (k, v) in [("id", id), ("name", id)] {
        rmp::encode::write_str(&mut s, k).unwrap();
        rmp::encode::write_str(&mut s, v).unwrap();
    }
    rmp::encode::write_str(&mut s, "n").unwrap();
    rmp::encode::write_uint(&mut s, n).unwrap();
    s
}

fn state_frame(channel: &str, id: &str, n: u64) -> Message {
    let pl = state_payload(id, n);
    Message::Binary(wire::control_frame("peer_state", channel, Some(&pl[..])).into())
}

/// A data message as the client's `broadcast("chaos", {n})` sends it.
fn data_frame(channel: &str, seq: u64) -> Message {
    let json = format!("{{\"n\":{seq}}}");
    let mut inner = Vec::new();
    rmp::encode::write_map_len(&mut inner, 2).unwrap();
    rmp::encode::write_str(&mut inner, "event").unwrap();
    rmp::encode::write_str(&mut inner, "chaos").unwrap();
    rmp::encode::write_str(&mut inner, "data").unwrap();
    rmp::encode::write_str(&mut inner, &json).unwrap();
    Message::Binary(wire::data_frame(channel, &inner).into())
}

/// The seq of a data message's payload (`pl` as relayed: a msgpack bin).
fn seq_of(payload: Option<&[u8]>) -> Option<u64> {
    let mut raw = payload?;
    let len = rmp::decode::read_bin_len(&mut raw).ok()? as usize;
    let inner = rmpv::decode::read_value(&mut raw.get(..len)?).ok()?;
    let data = inner
        .as_map()?
        .iter()
        .find(|(k, _)| k.as_str() == Some("data"))?
        .1
        .as_str()?;
    serde_json::from_str::<serde_json::Value>(data).ok()?["n"].as_u64()
}

/// Accepts exactly the node's certificate (pinned), with real signature checks.
#[derive(Debug)]
struct Pinned {
    cert: CertificateDer<'static>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.cert.as_ref() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "not the node's dev certificate".into(),
            ))
        }
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
            &self.provider.signature_verification_algorithms,
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
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// TCP (from the region's namespace), TLS pinned to the node's dev
/// certificate, WebSocket upgrade at `/v1?publickey=dev&id=ID`.
async fn connect(target: &Target, id: &str) -> anyhow::Result<WsClient> {
    let cert = CertificateDer::from_pem_file(&target.cert)
        .with_context(|| format!("dev certificate {}", target.cert.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Pinned { cert, provider }))
        .with_no_client_auth();
    let tcp =
        crate::netns::connect(target.ns.as_deref(), target.addr, Duration::from_secs(3)).await?;
    let name = ServerName::try_from(target.addr.ip().to_string())?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .context("tls handshake")?;
    let host = target.addr.to_string();
    WsClient::connect(
        tokio_util::either::Either::Left(tls),
        &host,
        &format!("/v1?publickey=dev&id={id}"),
    )
    .await
}

/// Runs client `i` until `cmds` closes.
pub async fn run(
    i: usize,
    world: Shared,
    target: Target,
    mut cmds: mpsc::Receiver<Cmd>,
    seed: u64,
) {
    let mut rng = Rng::new(seed ^ (i as u64).wrapping_mul(0x9E37_79B9));
    let (id, channels) = {
        let w = world.lock().unwrap();
        (w.clients[i].id.clone(), w.clients[i].channels.clone())
    };
    let period = rng.ms(1000, 2000);
    loop {
        let ws = tokio::time::timeout(Duration::from_secs(5), connect(&target, &id)).await;
        let mut ws = match ws {
            Ok(Ok(ws)) => ws,
            _ => {
                world.lock().unwrap().counters.connect_failures += 1;
                if !pause(&mut cmds, rng.ms(500, 1500)).await {
                    return;
                }
                continue;
            }
        };
        {
            let mut w = world.lock().unwrap();
            w.counters.connections += 1;
            let c = &mut w.clients[i];
            c.conn += 1;
            c.connected = true;
            c.joined.clear();
            c.views.clear();
            c.offline.clear();
            c.order.clear();
        }
        let joins = channels
            .iter()
            .map(|ch| Message::Binary(wire::join_frame(ch, &id).into()))
            .collect();
        let mut alive = ws.send(joins).await.is_ok();
        // Why the connection ended, when the client did not end it.
        let mut lost = (!alive).then(|| "send failed".to_owned());
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        let mut turn = 0usize;
        let mut stop = false;
        while alive {
            let mut out = Vec::new();
            tokio::select! {
                m = ws.recv() => match m {
                    Ok(Some(Message::Binary(b))) => out = handle(i, &world, &b),
                    Ok(Some(_)) => {}
                    Ok(None) => {
                        alive = false;
                        lost = Some("closed".into());
                    }
                    Err(e) => {
                        alive = false;
                        lost = Some(format!("{e:#}"));
                    }
                },
                _ = tick.tick() => {
                    turn += 1;
                    let mut w = world.lock().unwrap();
                    let c = &mut w.clients[i];
                    let ch = c.channels[turn % c.channels.len()].clone();
                    if c.joined.contains(&ch) {
                        if turn % 5 == 0 {
                            c.state_n += 1;
                            out.push(state_frame(&ch, &id, c.state_n));
                            w.counters.states_sent += 1;
                        } else {
                            c.next_seq += 1;
                            out.push(data_frame(&ch, c.next_seq));
                            w.counters.data_sent += 1;
                        }
                    }
                },
                cmd = cmds.recv() => match cmd {
                    Some(Cmd::Reconnect) => {
                        mark_gone(i, &world);
                        ws.close().await;
                        break;
                    }
                    Some(Cmd::Nudge) => out = probe(i, &world, false),
                    Some(Cmd::Probe(done)) => {
                        out = probe(i, &world, true);
                        let sent = ws.send(out).await;
                        alive = sent.is_ok();
                        if !alive {
                            lost = Some("send failed".into());
                        }
                        let _ = done.send(());
                        continue;
                    }
                    None => {
                        stop = true;
                        mark_gone(i, &world);
                        ws.close().await;
                        break;
                    }
                },
            }
            if alive && !out.is_empty() {
                alive = ws.send(out).await.is_ok();
                if !alive {
                    lost = Some("send failed".into());
                }
            }
        }
        mark_gone(i, &world);
        if let Some(why) = lost {
            world.lock().unwrap().lost_connection(i, &why);
        }
        if stop || !pause(&mut cmds, rng.ms(500, 1500)).await {
            return;
        }
    }
}

fn mark_gone(i: usize, world: &Shared) {
    let mut w = world.lock().unwrap();
    let c = &mut w.clients[i];
    c.connected = false;
    c.joined.clear();
    c.views.clear();
}

/// Waits `d` (answering probes with nothing: not connected); false when
/// the client is to stop.
async fn pause(cmds: &mut mpsc::Receiver<Cmd>, d: Duration) -> bool {
    let until = tokio::time::Instant::now() + d;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(until) => return true,
            cmd = cmds.recv() => match cmd {
                None => return false,
                Some(Cmd::Probe(done)) => { let _ = done.send(()); }
                Some(Cmd::Reconnect | Cmd::Nudge) => {}
            },
        }
    }
}

/// One data message per joined channel; with `expect`, each expected at
/// every other member the truth holds now.
fn probe(i: usize, world: &Shared, expect: bool) -> Vec<Message> {
    let mut w = world.lock().unwrap();
    let mut out = Vec::new();
    let channels: Vec<String> = w.clients[i].joined.iter().cloned().collect();
    for ch in channels {
        let receivers: Vec<(usize, u64)> = w
            .clients
            .iter()
            .enumerate()
            .filter(|(j, c)| *j != i && c.connected && c.joined.contains(&ch))
            .map(|(j, c)| (j, c.conn))
            .collect();
        let c = &mut w.clients[i];
        c.next_seq += 1;
        let seq = c.next_seq;
        let sender_conn = c.conn;
        out.push(data_frame(&ch, seq));
        w.counters.data_sent += 1;
        if !expect {
            continue;
        }
        w.expects.push(Expect {
            sender: i,
            sender_conn,
            channel: ch,
            seq,
            receivers,
        });
    }
    out
}

/// Reads one frame from the node; returns what the client answers.
fn handle(i: usize, world: &Shared, frame: &Bytes) -> Vec<Message> {
    let mut w = world.lock().unwrap();
    let msg = match protocol::decode_relayed(frame) {
        Ok(m) => m,
        Err(_) => {
            // The join ack carries no `p`.
            if let Ok(m) = protocol::decode(frame) {
                if m.kind == Kind::Control(Op::ChannelJoin) {
                    let c = &mut w.clients[i];
                    let ch = m.channel.to_owned();
                    if !c.channels.contains(&ch) {
                        let id = c.id.clone();
                        w.violation(format!("{id}: join ack for {ch}, which it never joined"));
                        return Vec::new();
                    }
                    c.joined.insert(ch.clone());
                    c.views.entry(ch.clone()).or_default();
                    return vec![
                        Message::Binary(wire::control_frame("peer_online", &ch, None).into()),
                        state_frame(&ch, &c.id.clone(), c.state_n),
                    ];
                }
            }
            let id = w.clients[i].id.clone();
            w.violation(format!(
                "{id}: undecodable frame {:02x?}",
                &frame[..frame.len().min(64)]
            ));
            return Vec::new();
        }
    };
    let ch = msg.channel.to_owned();
    let p = msg.peer.to_owned();
    let c = &mut w.clients[i];
    let me = c.id.clone();
    match msg.kind {
        Kind::Data => {
            w.counters.data_received += 1;
            let Some(seq) = seq_of(msg.payload) else {
                w.violation(format!("{me}: data from {p} in {ch} without a seq"));
                return Vec::new();
            };
            if p == me {
                w.violation(format!("{me}: its own message {seq} in {ch} echoed back"));
                return Vec::new();
            }
            let c = &mut w.clients[i];
            let fresh = c.seen.entry(p.clone()).or_default().insert(seq);
            let last = c.order.insert((ch.clone(), p.clone()), seq);
            if !fresh {
                w.violation(format!("{me}: duplicate message {seq} from {p} in {ch}"));
            } else if let Some(last) = last.filter(|&l| l >= seq) {
                w.violation(format!(
                    "{me}: message {seq} from {p} in {ch} after {last} (out of order)"
                ));
            }
            Vec::new()
        }
        Kind::Control(op) => {
            w.counters.presence_received += 1;
            let c = &mut w.clients[i];
            if p == me {
                // The client drops presence about itself.
                return Vec::new();
            }
            match op {
                Op::PeerOnline | Op::PeerState => {
                    c.views.entry(ch.clone()).or_default().insert(p.clone());
                    c.offline.insert((ch.clone(), p), false);
                    if op == Op::PeerOnline && c.joined.contains(&ch) {
                        return vec![state_frame(&ch, &me, c.state_n)];
                    }
                    Vec::new()
                }
                Op::PeerOffline => {
                    if let Some(v) = c.views.get_mut(&ch) {
                        v.remove(&p);
                    }
                    let again = c.offline.insert((ch.clone(), p.clone()), true) == Some(true);
                    if again {
                        w.violation(format!(
                            "{me}: a second peer_offline of {p} in {ch} with no peer_online or peer_state between (mesh {})",
                            msg.mesh.unwrap_or("-")
                        ));
                    }
                    Vec::new()
                }
                Op::ChannelJoin => Vec::new(),
            }
        }
    }
}
