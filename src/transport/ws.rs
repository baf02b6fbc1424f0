//! WebSocket over TLS (TCP): what `@yomo/webtransport-polyfill` speaks.
//!
//! One binary frame is one Signalling message, both ways. A connection is
//! two halves joined in one task: the reader feeds frames to the [`Peer`]
//! and reaps the connection when it goes quiet; the writer drains the peer's
//! outbox, batching what is queued into one flush, and sends a Ping every
//! keep-alive interval carrying the 8-byte big-endian Unix time in ms, so the
//! Pong gives the round-trip time.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use rustls::ServerConfig;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{timeout, Instant};
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tracing::{debug, info_span, Instrument};

use super::http::{self, Request};
use super::tls_stream::{self, TlsStream};
use super::{Admission, Context, HANDSHAKE_TIMEOUT};
use crate::clock::unix_ms;
use crate::hub::{CloseReason, Peer};
use crate::outbox::OutboxReceiver;
use crate::quota::Slot;
use crate::stats::{DropReason, Transport};

/// Accepts TCP connections until the process exits.
pub async fn serve(listener: TcpListener, tls: Arc<ServerConfig>, ctx: Arc<Context>) {
    loop {
        match listener.accept().await {
            Ok((tcp, addr)) => {
                let _ = tcp.set_nodelay(true);
                let (tls, ctx2) = (tls.clone(), ctx.clone());
                ctx.tasks.spawn(async move {
                    if let Err(e) = handle(tcp, addr, tls, ctx2).await {
                        debug!(%addr, error = %e, "tcp connection ended during handshake");
                    }
                });
            }
            Err(e) => {
                // Out of file descriptors and the like: back off, keep serving.
                tracing::warn!(error = %e, "tcp accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn handle(
    tcp: TcpStream,
    addr: SocketAddr,
    tls: Arc<ServerConfig>,
    ctx: Arc<Context>,
) -> anyhow::Result<()> {
    // Boxed: the handshake's state (TLS accept, request parsing) is freed
    // once it is done instead of sizing the connection's task for good.
    let upgraded = Box::pin(upgrade(tcp, addr, tls, &ctx))
        .await
        .inspect_err(|e| {
            let detail = format!("{addr}: {e:#}");
            ctx.hub.stats().console.error("handshake", None, detail);
        })?;
    let Some(((sink, stream), admission, _slot)) = upgraded else {
        return Ok(());
    };
    let _live = ctx.hub.stats().connection(Transport::WebSocket);
    let (peer, outbox) = ctx.hub.connect(
        &admission.app,
        &admission.client_id,
        Transport::WebSocket,
        admission.grant,
    );
    let span = info_span!("connection", transport = "websocket", app = %admission.app.id, peer = %admission.client_id, sid = peer.id(), mesh_id = ctx.hub.mesh_id(), %addr, close_reason = tracing::field::Empty);
    span.in_scope(|| debug!("connected"));
    // The session is boxed: the task holds pointers, not the session's state
    // (idle memory per connection).
    let (stream, sink) = Box::pin(run(sink, stream, peer, outbox, &ctx))
        .instrument(span)
        .await;
    Box::pin(close_notify(sink, stream)).await;
    Ok(())
}

/// close_notify after the WebSocket's Close, so the client sees a clean end
/// of the TLS stream; a client that is gone gets no wait. The caller boxes
/// it: the reunited WebSocket held across this await would otherwise size
/// every connection's task, idle or not.
async fn close_notify(sink: SplitSink<Ws, Message>, stream: SplitStream<Ws>) {
    if let Ok(mut ws) = sink.reunite(stream) {
        let _ = timeout(CLOSE_NOTIFY_GRACE, ws.get_mut().shutdown()).await;
    }
}

/// The WebSocket's two halves; split while the upgrade's state is boxed, so
/// the connection's task never holds the whole WebSocket by value.
type Halves = (SplitSink<Ws, Message>, SplitStream<Ws>);

/// TLS, the HTTP request, admission and the 101: the connection's
/// WebSocket and its counted slot, or `None` when it was answered otherwise
/// (health, refusal).
async fn upgrade(
    tcp: TcpStream,
    addr: SocketAddr,
    tls: Arc<ServerConfig>,
    ctx: &Context,
) -> anyhow::Result<Option<(Halves, Admission, Slot)>> {
    let mut stream = timeout(HANDSHAKE_TIMEOUT, tls_stream::accept(tls, tcp)).await??;
    let (request, leftover) =
        match timeout(HANDSHAKE_TIMEOUT, http::read_request(&mut stream)).await? {
            Ok(read) => read,
            Err(e @ (http::HttpError::Parse(_) | http::HttpError::TooLarge)) => {
                ctx.hub.stats().reject(400);
                answer(
                    &mut stream,
                    400,
                    &ctx.prscd_headers(),
                    "text/plain",
                    &e.to_string(),
                )
                .await?;
                return Ok(None);
            }
            Err(e) => return Err(e.into()),
        };
    let headers = ctx.prscd_headers();

    if http::is_api(&request) {
        let apps = ctx.apps();
        let answer = http::api(&mut stream, &request, leftover, &ctx.api, &apps);
        let (status, body) = timeout(HANDSHAKE_TIMEOUT, answer).await?;
        self::answer(&mut stream, status, &headers, "application/json", &body).await?;
        return Ok(None);
    }
    let metrics = http::Metrics::Bearer(ctx.metrics_token.as_deref());
    if let Some((status, content_type, body)) = http::observability(&request, &ctx.hub, metrics) {
        answer(&mut stream, status, &headers, content_type, &body).await?;
        return Ok(None);
    }
    let refuse = |status: u16, why: &str| {
        ctx.hub.stats().reject(status);
        debug!(%addr, status, why, target = %request.target, "websocket handshake refused");
        let detail = format!("websocket {status} {why} from {addr}");
        ctx.hub.stats().console.error("rejected", None, detail);
    };
    if ctx.hub.is_draining() {
        refuse(503, "draining");
        answer(&mut stream, 503, &headers, "text/plain", "draining\n").await?;
        return Ok(None);
    }
    let admitted = ctx.admit(&request.target, request.header("origin"), addr.ip());
    let (admission, slot) = match admitted {
        Ok(a) => a,
        Err(rejection) => {
            refuse(rejection.status, rejection.why);
            let body = format!("{}\n", rejection.why);
            answer(&mut stream, rejection.status, &headers, "text/plain", &body).await?;
            return Ok(None);
        }
    };
    let Some(accept_key) = websocket_accept_key(&request) else {
        refuse(426, "not a websocket upgrade");
        let mut headers = headers.to_vec();
        headers.push(("Sec-WebSocket-Version", "13".into()));
        answer(
            &mut stream,
            426,
            &headers,
            "text/plain",
            "websocket upgrade required\n",
        )
        .await?;
        return Ok(None);
    };

    let mut head = String::from(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n",
    );
    head.push_str(&format!("Sec-WebSocket-Accept: {accept_key}\r\n"));
    for (name, value) in &headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await?;

    let config = websocket_config(ctx.max_message_size);
    let ws =
        WebSocketStream::from_partially_read(stream, leftover, Role::Server, Some(config)).await;

    Ok(Some((ws.split(), admission, slot)))
}

/// Buffer sizes of every node WebSocket (and of the bench's ceiling server,
/// so the comparison is like for like).
///
/// - Reads: a small buffer. Frames are read out of rustls' plaintext, so a
///   small read costs a copy, not a syscall, and an idle connection holds
///   only this much (a frame larger than it gets a buffer of its own size).
/// - Writes: frames accumulate up to 16 KiB and go out on the writer's flush
///   at the end of each batch, so a burst becomes one syscall and a few TLS
///   records (of at most 4 KiB on the node, `tls_stream::SEAL_PLAINTEXT`)
///   instead of one of each per message.
pub fn websocket_config(max_message_size: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(max_message_size))
        .max_frame_size(Some(max_message_size))
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(max_message_size.saturating_mul(2).max(2 * WRITE_BUFFER))
}

const READ_BUFFER: usize = 256;
/// How long the end of a session waits to send close_notify.
const CLOSE_NOTIFY_GRACE: Duration = Duration::from_millis(500);
const WRITE_BUFFER: usize = 16 * 1024;

/// `Sec-WebSocket-Accept` for a valid upgrade request, else `None`.
fn websocket_accept_key(request: &Request) -> Option<String> {
    let upgrade = request.method == "GET"
        && request.header_has_token("upgrade", "websocket")
        && request.header_has_token("connection", "upgrade")
        && request.header("sec-websocket-version") == Some("13");
    let key = request.header("sec-websocket-key")?;
    upgrade.then(|| derive_accept_key(key.as_bytes()))
}

type Ws = WebSocketStream<TlsStream>;

/// The session: the reader and the writer, joined; it gives the two halves
/// back.
///
/// A plain function returning the join of two `async move` blocks, not an
/// `async fn` that awaits `join!`: the latter holds each half twice (as a
/// local and inside the join), ~500 bytes more per idle connection.
fn run(
    mut sink: SplitSink<Ws, Message>,
    mut stream: SplitStream<Ws>,
    mut peer: Peer,
    mut outbox: OutboxReceiver,
    ctx: &Context,
) -> impl std::future::Future<Output = (SplitStream<Ws>, SplitSink<Ws, Message>)> + '_ {
    let reader_ctl = peer.ctl().clone();
    let writer_ctl = reader_ctl.clone();
    let stats = ctx.hub.stats().clone();

    let reader = async move {
        let ctl = reader_ctl;
        // One cancellation future and one idle timer for the whole session:
        // re-creating them per frame costs a waiter registration and a
        // timer-wheel insertion each time. The timer is pushed back only
        // when it fires early.
        let closing = ctl.closing();
        tokio::pin!(closing);
        let idle = tokio::time::sleep(ctx.idle_timeout);
        tokio::pin!(idle);
        let mut last_frame = Instant::now();
        loop {
            let frame = tokio::select! {
                _ = &mut closing => break,
                _ = &mut idle => {
                    let quiet_until = last_frame + ctx.idle_timeout;
                    if Instant::now() < quiet_until {
                        idle.as_mut().reset(quiet_until);
                        continue;
                    }
                    debug!("no frame or pong within the idle timeout");
                    ctl.close(CloseReason::Idle);
                    break;
                }
                frame = stream.next() => frame,
            };
            last_frame = Instant::now();
            match frame {
                Some(Ok(Message::Binary(bytes))) => {
                    if let Err(reason) = peer.handle(&bytes) {
                        debug!(reason = reason.as_str(), "message dropped");
                    }
                    // Over budget: stop reading until it refills, so TCP
                    // slows the sender; nothing is dropped. Boxed: the
                    // timer would otherwise size every idle session.
                    if let Some(pause) = peer.charge(bytes.len()) {
                        tokio::select! {
                            _ = &mut closing => break,
                            _ = Box::pin(tokio::time::sleep(pause)) => {}
                        }
                        last_frame = Instant::now();
                    }
                }
                Some(Ok(Message::Text(_))) => {
                    stats.count_drop(DropReason::TextFrame);
                    ctl.close(CloseReason::UnsupportedData);
                    break;
                }
                Some(Ok(Message::Pong(payload))) => {
                    if let Ok(sent) = <[u8; 8]>::try_from(payload.as_ref()) {
                        let rtt = unix_ms().saturating_sub(u64::from_be_bytes(sent));
                        debug!(rtt_ms = rtt, "pong");
                    }
                }
                Some(Ok(Message::Ping(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Close(frame))) => {
                    debug!(?frame, "client closed");
                    break;
                }
                Some(Err(WsError::Capacity(CapacityError::MessageTooLong { size, max_size }))) => {
                    debug!(size, max_size, "message over MAX_MESSAGE_SIZE");
                    stats.count_drop(DropReason::Oversize);
                    ctl.close(CloseReason::MessageTooBig);
                    break;
                }
                Some(Err(e)) => {
                    debug!(error = %e, "websocket read error");
                    break;
                }
                None => break,
            }
        }
        // Ends the writer too, whoever ended the connection.
        ctl.close(CloseReason::PeerGone);
        drop(peer); // peer_offline to every channel, now
        stream
    };

    let writer = async move {
        let ctl = writer_ctl;
        let mut ping = tokio::time::interval_at(
            Instant::now() + ctx.keepalive_interval,
            ctx.keepalive_interval,
        );
        // As in the reader: one cancellation future, one batch buffer.
        let closing = ctl.closing();
        tokio::pin!(closing);
        let mut batch = Vec::new();
        loop {
            let sent = tokio::select! {
                biased;
                _ = &mut closing => break,
                open = outbox.recv(&mut batch) => {
                    if !open {
                        break;
                    }
                    tokio::select! {
                        r = feed_all(&mut sink, batch.drain(..)) => r,
                        _ = &mut closing => false,
                    }
                }
                _ = ping.tick() => {
                    outbox.release_idle(&mut batch);
                    let payload = Bytes::copy_from_slice(&unix_ms().to_be_bytes());
                    tokio::select! {
                        r = sink.send(Message::Ping(payload)) => r.is_ok(),
                        _ = &mut closing => false,
                    }
                }
            };
            if !sent {
                ctl.close(CloseReason::PeerGone);
                break;
            }
        }
        // Boxed: the close sequence's timers and frames are needed once, at
        // the end, and would otherwise size every idle session.
        Box::pin(close_by_server(&mut sink, &mut outbox, ctl.reason())).await;
        sink
    };

    futures_util::future::join(reader, writer)
}

/// The server's side of a close: what is still queued when draining, then
/// the Close frame with the reason. Nothing when the client went first.
async fn close_by_server(
    sink: &mut SplitSink<Ws, Message>,
    outbox: &mut OutboxReceiver,
    reason: Option<CloseReason>,
) {
    let Some(reason) = reason.filter(|r| *r != CloseReason::PeerGone) else {
        return;
    };
    if reason == CloseReason::GoingAway {
        // Draining: what was queued (the peer_offline of the others) goes out first.
        let mut rest = Vec::new();
        outbox.try_recv(&mut rest);
        let _ = timeout(Duration::from_secs(1), feed_all(sink, rest)).await;
    }
    let close = Message::Close(Some(CloseFrame {
        code: CloseCode::from(reason.code()),
        reason: reason.as_str().into(),
    }));
    // A slow reader's socket is full: give the close frame little time.
    let grace = if reason == CloseReason::SlowReader {
        100
    } else {
        1000
    };
    let _ = timeout(Duration::from_millis(grace), sink.send(close)).await;
    tracing::Span::current().record("close_reason", reason.as_str());
    debug!(reason = reason.as_str(), "closed by server");
}

async fn feed_all<S>(sink: &mut S, batch: impl IntoIterator<Item = Bytes>) -> bool
where
    S: futures_util::Sink<Message> + Unpin,
{
    for msg in batch {
        if sink.feed(Message::Binary(msg)).await.is_err() {
            return false;
        }
    }
    sink.flush().await.is_ok()
}

/// An HTTP answer that ends the connection: the response, then close_notify,
/// so the client knows the body is complete.
async fn answer(
    stream: &mut TlsStream,
    status: u16,
    headers: &[(&str, String)],
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    http::respond(stream, status, headers, content_type, body).await?;
    stream.shutdown().await
}
