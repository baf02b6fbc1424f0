//! WebTransport over HTTP/3 (QUIC, UDP), via `wtransport`.
//!
//! Two ways to carry messages on one session:
//! - datagrams, what the browser client uses: one datagram is one message;
//! - bidirectional streams, for other clients: messages back to back on the
//!   stream (msgpack is self-delimiting). Once a client opens a stream, the
//!   server writes everything for it on the first stream it opened (reliable
//!   and ordered, no size limit but MAX_MESSAGE_SIZE); before that, it sends
//!   datagrams.
//!
//! A datagram cannot be larger than the path allows (`max_datagram_size`,
//! about 1.1-1.4 KB). A relayed message too large for a datagram-only peer is
//! dropped for that peer, counted as `datagram_too_large` and logged; the
//! peer should use WebSocket or a stream for large payloads.
//!
//! wtransport 0.7.2 can answer a CONNECT only with 200, 403, 404 or 429, so
//! the 400 and 401 rows of PROTOCOL.md §1 (an expired token among them) are
//! answered 403 here (the counter and the debug log keep the precise
//! status); WebSocket answers each exactly.
//!
//! Datagrams over the connection's budget are dropped and counted (they
//! have no flow control to slow the sender); a stream over budget is not
//! read until the budget refills, so QUIC's flow control slows it.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::sync::{mpsc, oneshot};
use tokio::time::timeout;
use tracing::{debug, info_span, Instrument};
use wtransport::endpoint::{endpoint_side::Server, IncomingSession};
use wtransport::error::SendDatagramError;
use wtransport::{Connection, Endpoint, RecvStream, SendStream, VarInt};

use super::{Context, HANDSHAKE_TIMEOUT};
use crate::hub::{CloseReason, Peer, PeerCtl};
use crate::outbox::OutboxReceiver;
use crate::protocol::{self, DecodeError};
use crate::stats::{DropReason, Stats, Transport};

/// Complete messages read from streams, waiting for the peer.
const STREAM_INBOX: usize = 64;

/// The QUIC endpoint's settings: the node's keep-alive and idle timeout,
/// and bounds on what one session may make the node hold (streams and
/// flow-control windows; quinn's defaults allow 100 streams of ~1 MiB).
pub fn server_config(
    builder: wtransport::config::ServerConfigBuilder<wtransport::config::states::WantsIdentity>,
    identity: wtransport::Identity,
    config: &crate::config::Config,
) -> anyhow::Result<wtransport::ServerConfig> {
    use wtransport::quinn::VarInt as QVarInt;
    let limits = &config.quic;
    let mut transport = wtransport::config::QuicTransportConfig::default();
    transport
        // The session's own CONNECT request is a bidirectional stream too.
        .max_concurrent_bidi_streams(QVarInt::from_u32(limits.max_streams.saturating_add(1)))
        .stream_receive_window(QVarInt::from_u32(limits.stream_window))
        .receive_window(QVarInt::from_u32(limits.connection_window));
    Ok(builder
        .with_custom_transport(identity, transport)
        .keep_alive_interval(Some(config.keepalive_interval))
        .max_idle_timeout(Some(config.idle_timeout))
        .map_err(|_| anyhow::anyhow!("IDLE_TIMEOUT_MS is out of QUIC's range"))?
        .build())
}

/// Accepts QUIC connections until the process exits.
pub async fn serve(endpoint: Arc<Endpoint<Server>>, ctx: Arc<Context>) {
    loop {
        let incoming = endpoint.accept().await;
        if ctx.hub.is_draining() {
            ctx.hub.stats().reject(503);
            incoming.refuse();
            continue;
        }
        let ctx2 = ctx.clone();
        ctx.tasks.spawn(async move {
            let addr = incoming.remote_address();
            let stats = ctx2.hub.stats().clone();
            if let Err(e) = handle(incoming, ctx2).await {
                debug!(%addr, error = %e, "webtransport session ended during handshake");
                stats
                    .console
                    .error("handshake", None, format!("{addr}: {e:#}"));
            }
        });
    }
}

async fn handle(incoming: IncomingSession, ctx: Arc<Context>) -> anyhow::Result<()> {
    let request = timeout(HANDSHAKE_TIMEOUT, incoming).await??;
    let addr = request.remote_address();
    let (admission, _slot) = match ctx.admit(request.path(), request.origin(), addr.ip()) {
        Ok(a) => a,
        Err(rejection) => {
            ctx.hub.stats().reject(rejection.status);
            debug!(%addr, status = rejection.status, why = rejection.why, path = request.path(), "webtransport CONNECT refused");
            let detail = format!(
                "webtransport {} {} from {addr}",
                rejection.status, rejection.why
            );
            ctx.hub.stats().console.error("rejected", None, detail);
            match rejection.status {
                404 => request.not_found().await,
                429 => request.too_many_requests().await,
                _ => request.forbidden().await,
            }
            return Ok(());
        }
    };
    let headers = ctx
        .prscd_headers()
        .map(|(name, value)| (name.to_ascii_lowercase(), value));
    let connection = request.accept_with_headers(headers).await?;

    let _live = ctx.hub.stats().connection(Transport::WebTransport);
    let (peer, outbox) = ctx.hub.connect(
        &admission.app,
        &admission.client_id,
        Transport::WebTransport,
        admission.grant,
    );
    let span = info_span!("connection", transport = "webtransport", app = %admission.app.id, peer = %admission.client_id, sid = peer.id(), mesh_id = ctx.hub.mesh_id(), %addr, close_reason = tracing::field::Empty);
    async move {
        debug!(max_datagram = ?connection.max_datagram_size(), "connected");
        run(connection, peer, outbox, &ctx).await;
        Ok(())
    }
    .instrument(span)
    .await
}

async fn run(conn: Connection, mut peer: Peer, mut outbox: OutboxReceiver, ctx: &Context) {
    let ctl = peer.ctl().clone();
    let stats = ctx.hub.stats().clone();
    let (stream_tx, stream_rx) = mpsc::channel::<Bytes>(STREAM_INBOX);
    let (reply_tx, reply_rx) = oneshot::channel::<SendStream>();

    let reader = async {
        let mut stream_rx = stream_rx;
        let mut reply_tx = Some(reply_tx);
        // Streams are not read while the budget is in debt.
        let resume = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(resume);
        let mut paused = false;
        loop {
            tokio::select! {
                _ = ctl.closing() => break,
                _ = &mut resume, if paused => paused = false,
                datagram = conn.receive_datagram() => match datagram {
                    Ok(d) => {
                        let payload = d.payload();
                        if !peer.try_charge(payload.len()) {
                            debug!("datagram over budget: dropped");
                        } else if let Err(reason) = peer.handle(&payload) {
                            debug!(reason = reason.as_str(), "datagram dropped");
                        }
                    }
                    Err(e) => {
                        debug!(error = %e, "session ended");
                        break;
                    }
                },
                stream = conn.accept_bi() => match stream {
                    Ok((send, recv)) => {
                        if let Some(tx) = reply_tx.take() {
                            let _ = tx.send(send);
                        }
                        tokio::spawn(read_stream(recv, stream_tx.clone(), ctx.max_message_size, ctl.clone(), stats.clone()));
                    }
                    Err(e) => {
                        debug!(error = %e, "session ended");
                        break;
                    }
                },
                Some(frame) = stream_rx.recv(), if !paused => {
                    if let Err(reason) = peer.handle(&frame) {
                        debug!(reason = reason.as_str(), "stream message dropped");
                    }
                    if let Some(pause) = peer.charge(frame.len()) {
                        resume.as_mut().reset(tokio::time::Instant::now() + pause);
                        paused = true;
                    }
                }
            }
        }
        ctl.close(CloseReason::PeerGone);
        drop(peer);
    };

    let writer = async {
        let mut reply_rx = reply_rx;
        let mut reply: Option<SendStream> = None;
        let mut batch = Vec::new();
        // The outbox keeps its buffers while busy; this gives them back.
        let mut release = tokio::time::interval_at(
            tokio::time::Instant::now() + ctx.keepalive_interval,
            ctx.keepalive_interval,
        );
        loop {
            let ok = tokio::select! {
                biased;
                _ = ctl.closing() => break,
                send = &mut reply_rx, if reply.is_none() => {
                    reply = send.ok();
                    true
                }
                _ = release.tick() => {
                    outbox.release_idle(&mut batch);
                    true
                }
                open = outbox.recv(&mut batch) => {
                    let mut ok = open;
                    for msg in batch.drain(..) {
                        if !deliver(&conn, reply.as_mut(), msg, &ctl, &stats).await {
                            ok = false;
                            break;
                        }
                    }
                    ok
                }
            };
            if !ok {
                ctl.close(CloseReason::PeerGone);
                break;
            }
        }
        let Some(reason) = ctl.reason().filter(|r| *r != CloseReason::PeerGone) else {
            return;
        };
        if reason == CloseReason::GoingAway {
            let flush = async {
                batch.clear();
                outbox.try_recv(&mut batch);
                for msg in batch.drain(..) {
                    if !deliver(&conn, reply.as_mut(), msg, &ctl, &stats).await {
                        break;
                    }
                }
                if let Some(stream) = reply.as_mut() {
                    let _ = stream.finish().await;
                }
                wait_datagrams_sent(&conn).await;
            };
            let _ = timeout(Duration::from_secs(1), flush).await;
        }
        conn.close(
            VarInt::from_u32(u32::from(reason.code())),
            reason.as_str().as_bytes(),
        );
        debug!(reason = reason.as_str(), "closed by server");
    };

    tokio::join!(reader, writer);
}

/// Sends one message on the reply stream, or as a datagram. Returns false
/// when the session is gone.
async fn deliver(
    conn: &Connection,
    reply: Option<&mut SendStream>,
    msg: Bytes,
    ctl: &PeerCtl,
    stats: &Stats,
) -> bool {
    if let Some(stream) = reply {
        return tokio::select! {
            r = stream.write_all(&msg) => r.is_ok(),
            _ = ctl.closing() => false,
        };
    }
    // QUIC drops the oldest queued datagram when its buffer is full: wait for
    // room instead, so a slow reader backs up into its outbox and is
    // disconnected there, never losing messages silently.
    while conn.quic_connection().datagram_send_buffer_space() < msg.len() + 16 {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(2)) => {}
            _ = ctl.closing() => return false,
        }
    }
    match conn.send_datagram(&msg) {
        Ok(()) => true,
        Err(SendDatagramError::TooLarge | SendDatagramError::UnsupportedByPeer) => {
            stats.count_drop(DropReason::DatagramTooLarge);
            tracing::warn!(len = msg.len(), max = ?conn.max_datagram_size(), "message too large for a datagram and the peer has no stream: dropped for this peer");
            true
        }
        Err(SendDatagramError::NotConnected) => false,
    }
}

/// After a drain: closes what is left and lets the CONNECTION_CLOSE frames
/// leave before the process exits, so clients learn at once, not by timeout.
pub async fn shut_down(endpoint: &Endpoint<Server>, within: Duration) {
    endpoint.close(
        VarInt::from_u32(u32::from(CloseReason::GoingAway.code())),
        b"server shutting down",
    );
    let _ = timeout(within, endpoint.wait_idle()).await;
}

/// Lets queued datagrams leave before the session is closed.
async fn wait_datagrams_sent(conn: &Connection) {
    let quic = conn.quic_connection();
    let empty = quic.datagram_send_buffer_space();
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(5)).await;
        if quic.datagram_send_buffer_space() >= empty {
            break;
        }
    }
}

/// Splits one stream into messages (back-to-back msgpack values).
async fn read_stream(
    mut recv: RecvStream,
    frames: mpsc::Sender<Bytes>,
    max: usize,
    ctl: Arc<PeerCtl>,
    stats: Arc<Stats>,
) {
    let mut buf = BytesMut::with_capacity(4096);
    let mut chunk = vec![0u8; 16 * 1024];
    let mut scan = protocol::ValueScan::default();
    loop {
        loop {
            match scan.next(&buf) {
                Ok(len) if len <= max => {
                    if frames.send(buf.split_to(len).freeze()).await.is_err() {
                        return;
                    }
                }
                Ok(_) => break, // complete but oversize: caught below
                Err(DecodeError::Incomplete) => break,
                Err(e) => {
                    // The message boundaries are lost: stop reading this stream.
                    debug!(error = %e, "stream is not msgpack: stopped");
                    stats.count_drop(DropReason::Malformed);
                    recv.stop(VarInt::from_u32(1003));
                    return;
                }
            }
        }
        if buf.len() > max {
            debug!(
                buffered = buf.len(),
                max, "stream message over MAX_MESSAGE_SIZE"
            );
            stats.count_drop(DropReason::Oversize);
            ctl.close(CloseReason::MessageTooBig);
            return;
        }
        tokio::select! {
            read = recv.read(&mut chunk) => match read {
                Ok(Some(n)) => buf.extend_from_slice(&chunk[..n]),
                Ok(None) | Err(_) => return,
            },
            _ = ctl.closing() => return,
        }
    }
}
