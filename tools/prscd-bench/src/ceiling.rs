//! The ceiling: a room broadcast on prscd's own stack with no presence logic.
//!
//! tokio-rustls + tokio-tungstenite with the WebSocketConfig, TCP_NODELAY,
//! queue bound and write batching of prscd's WebSocket transport, speaking
//! the [`crate::wire::Raw`] protocol: `GET /?room=R&id=I` joins room `R` at
//! the handshake, and every binary frame is relayed unchanged to the room's
//! other members. What prscd adds on top (Signalling decode, presence, auth,
//! mesh) is the gap between its numbers and these.
//!
//! Per connection a reader (the connection's task) and a writer task that
//! drains a bounded queue; a broadcast `try_send`s to every other member, and
//! a full queue drops that member's connection, as prscd does.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

/// prscd's default MAX_MESSAGE_SIZE.
const MAX_MESSAGE_SIZE: usize = 1 << 20;
/// prscd's per-connection outbox bound.
const QUEUE: usize = 1024;
/// Messages written before one flush, as prscd's writer.
const WRITE_BATCH: usize = 64;
/// For the TLS handshake, and again for the WebSocket upgrade.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

pub struct CeilingOpts {
    pub host: String,
    pub port: u16,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

struct Member {
    id: u64,
    tx: mpsc::Sender<Bytes>,
    /// Cancelled to drop the connection (its queue was full).
    drop: CancellationToken,
}

type Rooms = Arc<Mutex<HashMap<String, Vec<Member>>>>;

/// Serves until the process exits; prints `ready: port=N` on stderr once
/// listening.
pub async fn serve(opts: CeilingOpts) -> anyhow::Result<()> {
    let tls = TlsAcceptor::from(server_config(&opts)?);
    let listener = TcpListener::bind((opts.host.as_str(), opts.port))
        .await
        .with_context(|| format!("bind {}:{}", opts.host, opts.port))?;
    eprintln!("ready: port={}", listener.local_addr()?.port());
    let rooms = Rooms::default();
    for id in 1.. {
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            Err(_) => {
                // Out of file descriptors and the like: back off.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        tokio::spawn(connection(tcp, tls.clone(), rooms.clone(), id));
    }
    Ok(())
}

fn server_config(opts: &CeilingOpts) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let read = |p: &PathBuf| std::fs::read(p).with_context(|| format!("read {}", p.display()));
    let chain =
        CertificateDer::pem_slice_iter(&read(&opts.cert_file)?).collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_slice(&read(&opts.key_file)?)
        .with_context(|| format!("no private key in {}", opts.key_file.display()))?;
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

async fn connection(tcp: TcpStream, tls: TlsAcceptor, rooms: Rooms, id: u64) {
    let Ok(Ok(stream)) = tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(tcp)).await else {
        return;
    };
    let mut room = String::new();
    #[allow(clippy::result_large_err)] // tungstenite's callback signature
    let read_room = |req: &Request, resp: Response| {
        room = query_param(req.uri().query().unwrap_or(""), "room").unwrap_or_default();
        Ok(resp)
    };
    let config = websocket_config(MAX_MESSAGE_SIZE);
    let handshake =
        tokio_tungstenite::accept_hdr_async_with_config(stream, read_room, Some(config));
    let Ok(Ok(ws)) = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await else {
        return;
    };

    let (tx, mut rx) = mpsc::channel::<Bytes>(QUEUE);
    let dropped = CancellationToken::new();
    let member = Member {
        id,
        tx,
        drop: dropped.clone(),
    };
    rooms
        .lock()
        .unwrap()
        .entry(room.clone())
        .or_default()
        .push(member);

    let (mut sink, mut stream) = ws.split();
    let mut writer = tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            let mut ok = sink.feed(Message::Binary(first)).await.is_ok();
            for _ in 1..WRITE_BATCH {
                let Ok(next) = rx.try_recv() else { break };
                ok = ok && sink.feed(Message::Binary(next)).await.is_ok();
            }
            if !ok || sink.flush().await.is_err() {
                break;
            }
        }
    });
    let reader = async {
        while let Some(Ok(frame)) = stream.next().await {
            match frame {
                Message::Binary(payload) => broadcast(&rooms, &room, id, payload),
                Message::Close(_) => break,
                _ => {}
            }
        }
    };
    tokio::select! {
        _ = reader => {}
        _ = &mut writer => {}
        _ = dropped.cancelled() => {}
    }
    writer.abort();
    let mut map = rooms.lock().unwrap();
    if let Some(members) = map.get_mut(&room) {
        members.retain(|m| m.id != id);
        if members.is_empty() {
            map.remove(&room);
        }
    }
}

/// Queues `payload` to every member of `room` but `from`; drops members
/// whose queue is full or gone.
fn broadcast(rooms: &Rooms, room: &str, from: u64, payload: Bytes) {
    let mut map = rooms.lock().unwrap();
    let Some(members) = map.get_mut(room) else {
        return;
    };
    members.retain(|m| {
        if m.id == from {
            return true;
        }
        match m.tx.try_send(payload.clone()) {
            Ok(()) => true,
            Err(_) => {
                m.drop.cancel();
                false
            }
        }
    });
}

/// The percent-decoded value of `name` in a query string.
/// The WebSocket limits and buffer sizes prscd's WebSocket transport uses
/// (`transport::ws::websocket_config` in the node), so the ceiling differs
/// from the node in what it does, not in how it buffers.
fn websocket_config(
    max_message_size: usize,
) -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    const READ_BUFFER: usize = 256;
    const WRITE_BUFFER: usize = 16 * 1024;
    tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(Some(max_message_size))
        .max_frame_size(Some(max_message_size))
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(max_message_size.saturating_mul(2).max(2 * WRITE_BUFFER))
}

fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name)
            .then(|| prscd_wire::percent::decode(v))
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::query_param;

    #[test]
    fn room_from_the_query() {
        assert_eq!(
            query_param("room=a%20b&id=1", "room").as_deref(),
            Some("a b")
        );
        assert_eq!(query_param("id=1&room=r", "room").as_deref(), Some("r"));
        assert_eq!(query_param("id=1", "room"), None);
    }
}
