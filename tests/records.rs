//! `transport::records`: TLS 1.3 records sealed and opened by prscd after
//! rustls' handshake, against a real rustls client on loopback TCP.
//!
//! Each test does a real handshake, reads a request through rustls as the
//! WebSocket upgrade does, takes the connection over, then checks one thing
//! the record layer must get right: bulk both ways, records cut into many
//! TCP segments, the client's close_notify, the client's key update (after a
//! full and after a resumed handshake), what it refuses (a tampered record),
//! and TLS 1.2 staying with rustls.

mod common;

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use prscd::transport::records::{self, Stream};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

use common::WAIT;

/// A client's TCP stream that writes at most `max` bytes per call, so TLS
/// records reach the server in pieces, can flip a bit of the next write,
/// and keeps the bytes it reads (the server's records as sent).
struct Dribble {
    tcp: TcpStream,
    max: usize,
    tap: Tap,
}

#[derive(Clone, Default)]
struct Tap {
    corrupt_next: Arc<AtomicBool>,
    received: Arc<std::sync::Mutex<Vec<u8>>>,
}

impl AsyncRead for Dribble {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let start = buf.filled().len();
        let read = Pin::new(&mut self.tcp).poll_read(cx, buf);
        let new = &buf.filled()[start..];
        self.tap.received.lock().unwrap().extend_from_slice(new);
        read
    }
}

impl AsyncWrite for Dribble {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let n = data.len().min(self.max);
        if self.tap.corrupt_next.swap(false, Ordering::SeqCst) {
            let mut bad = data[..n].to_vec();
            *bad.last_mut().unwrap() ^= 1;
            return Pin::new(&mut self.tcp).poll_write(cx, &bad);
        }
        Pin::new(&mut self.tcp).poll_write(cx, &data[..n])
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

type Client = tokio_rustls::client::TlsStream<Dribble>;

/// A handshake; the server reads `hello` through rustls, takes the
/// connection over (with whatever else rustls had opened) and says `go`.
async fn connect(
    versions: &[&'static rustls::SupportedProtocolVersion],
    max_write: usize,
) -> (Client, Stream, Vec<u8>, Tap) {
    connect_with(&Configs::new(versions), max_write).await
}

/// A node's and a client's TLS configs; connections that share them can
/// resume a session.
struct Configs {
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
}

impl Configs {
    fn new(versions: &[&'static rustls::SupportedProtocolVersion]) -> Configs {
        let pki = common::pki();
        let server = prscd::tls::Certificate::load(&pki.chain_pem, &pki.key_pem)
            .unwrap()
            .server_config()
            .unwrap();
        let client = rustls::ClientConfig::builder_with_protocol_versions(versions)
            .with_root_certificates(common::test_roots())
            .with_no_client_auth();
        Configs {
            server,
            client: Arc::new(client),
        }
    }
}

async fn connect_with(configs: &Configs, max_write: usize) -> (Client, Stream, Vec<u8>, Tap) {
    let server_config = configs.server.clone();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(server_config);
        let (mut tls, secrets) = records::accept(&acceptor, tcp).await.unwrap();
        let mut hello = [0u8; 5];
        tls.read_exact(&mut hello).await.unwrap();
        assert_eq!(&hello, b"hello");
        let mut leftover = Vec::new();
        let mut stream = records::take_over(tls, secrets, &mut leftover)
            .await
            .unwrap();
        stream.write_all(b"go").await.unwrap();
        stream.flush().await.unwrap();
        (stream, leftover)
    });
    let tap = Tap::default();
    let dribble = Dribble {
        tcp: TcpStream::connect(addr).await.unwrap(),
        max: max_write,
        tap: tap.clone(),
    };
    let mut client = tokio_rustls::TlsConnector::from(configs.client.clone())
        .connect(ServerName::try_from("127.0.0.1").unwrap(), dribble)
        .await
        .unwrap();
    // Sent with the request, as a pipelining client would: rustls has
    // opened it before the take-over, so it must come back as leftover.
    client.write_all(b"hello+extra").await.unwrap();
    client.flush().await.unwrap();
    let (stream, leftover) = timeout(WAIT, server).await.unwrap().unwrap();
    assert_eq!(read_n(&mut client, 2).await, b"go");
    // From here on the tap holds only records the node sealed.
    tap.received.lock().unwrap().clear();
    (client, stream, leftover, tap)
}

/// Exactly `n` bytes from `stream`, within `WAIT`.
async fn read_n(stream: &mut (impl AsyncRead + Unpin), n: usize) -> Vec<u8> {
    let mut got = vec![0u8; n];
    timeout(WAIT, stream.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    got
}

/// Pseudo-random bytes, the same every run.
fn pattern(len: usize) -> Vec<u8> {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Reads what the server receives until end of stream or an error.
async fn read_to_end(stream: &mut Stream) -> (Vec<u8>, io::Result<()>) {
    let mut got = Vec::new();
    let mut buf = [0u8; 700];
    loop {
        match timeout(WAIT, stream.read(&mut buf)).await.expect("read") {
            Ok(0) => return (got, Ok(())),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => return (got, Err(e)),
        }
    }
}

#[tokio::test]
async fn bulk_both_ways_in_records_cut_into_small_segments() {
    let (mut client, mut server, leftover, tap) = connect(&[&rustls::version::TLS13], 7).await;
    assert!(
        matches!(server, Stream::Records(_)),
        "TLS 1.3 is taken over"
    );
    assert_eq!(leftover, b"+extra");

    // Up: writes of many sizes (one record each, some over 16 KiB), each
    // reaching the server 7 bytes per TCP write.
    let up = pattern(150_000);
    let sizes = [1, 2, 100, 16_384, 16_385, 40_000];
    let writer = async {
        let mut at = 0;
        for size in sizes.iter().cycle() {
            if at == up.len() {
                break;
            }
            let end = (at + size).min(up.len());
            client.write_all(&up[at..end]).await.unwrap();
            client.flush().await.unwrap();
            at = end;
        }
        client
    };
    let reader = async {
        let mut got = Vec::new();
        let mut buf = vec![0u8; 3000];
        while got.len() < up.len() {
            let n = timeout(WAIT, server.read(&mut buf)).await.unwrap().unwrap();
            assert_ne!(n, 0, "early end of stream");
            got.extend_from_slice(&buf[..n]);
        }
        (got, server)
    };
    let (mut client, (got, mut server)) = tokio::join!(writer, reader);
    assert!(got == up, "the server read what the client wrote");

    // Down: one large write and many small ones, read back by rustls.
    let down = pattern(300_000);
    let writer = async {
        server.write_all(&down[..200_000]).await.unwrap();
        for piece in down[200_000..].chunks(999) {
            server.write_all(piece).await.unwrap();
        }
        server.flush().await.unwrap();
        server
    };
    let reader = read_n(&mut client, down.len());
    let (mut server, got) = tokio::join!(writer, reader);
    assert!(got == down, "the client read what the server wrote");
    // Records of at most 4 KiB of plaintext (+ content type and tag), so a
    // client can open the first frames of a burst before the rest arrives.
    let wire = std::mem::take(&mut *tap.received.lock().unwrap());
    let (mut at, mut records) = (0, 0);
    while at < wire.len() {
        assert_eq!(wire[at], 23, "application data record at {at}");
        let len = usize::from(u16::from_be_bytes([wire[at + 3], wire[at + 4]]));
        assert!(len <= 4096 + 1 + 16, "record of {len} bytes");
        at += 5 + len;
        records += 1;
    }
    assert_eq!(at, wire.len(), "whole records");
    assert!(records >= down.len() / 4096, "{records} records");

    // The server's close_notify reaches the client as end of stream.
    server.shutdown().await.unwrap();
    let mut rest = Vec::new();
    let n = timeout(WAIT, client.read_to_end(&mut rest)).await.unwrap();
    assert_eq!(n.unwrap(), 0);
}

#[tokio::test]
async fn close_notify_from_the_client_is_end_of_stream() {
    let (mut client, mut server, _, _) = connect(&[&rustls::version::TLS13], usize::MAX).await;
    client.write_all(b"last words").await.unwrap();
    client.shutdown().await.unwrap();
    let (got, end) = read_to_end(&mut server).await;
    assert_eq!(got, b"last words");
    end.expect("a clean end of stream");
}

#[tokio::test]
async fn a_tampered_record_is_an_error_not_data() {
    let (mut client, mut server, _, tap) = connect(&[&rustls::version::TLS13], usize::MAX).await;
    let corrupt = tap.corrupt_next;
    client.write_all(b"fine").await.unwrap();
    client.flush().await.unwrap();
    corrupt.store(true, Ordering::SeqCst);
    client.write_all(b"tampered").await.unwrap();
    client.flush().await.unwrap();
    let (got, end) = read_to_end(&mut server).await;
    assert_eq!(got, b"fine", "nothing of the bad record is read");
    let e = end.expect_err("the bad record is refused");
    assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
}

/// The ciphertext lengths of the whole records in `wire`.
fn record_lengths(wire: &[u8]) -> Vec<usize> {
    let mut at = 0;
    let mut lengths = Vec::new();
    while at + 5 <= wire.len() {
        assert_eq!(wire[at], 23, "every record looks like application data");
        let len = usize::from(u16::from_be_bytes([wire[at + 3], wire[at + 4]]));
        at += 5 + len;
        lengths.push(len);
    }
    lengths
}

/// The node writes 14 bytes, the client reads them; the records on the wire.
async fn reply(server: &mut Stream, client: &mut Client, tap: &Tap) -> Vec<u8> {
    server.write_all(b"reply, 14 long").await.unwrap();
    server.flush().await.unwrap();
    assert_eq!(read_n(client, 14).await, b"reply, 14 long");
    std::mem::take(&mut *tap.received.lock().unwrap())
}

#[tokio::test]
async fn a_client_key_update_is_followed_and_answered() {
    let (client, server, _, tap) = connect(&[&rustls::version::TLS13], usize::MAX).await;
    key_updates_both_ways(client, server, tap).await;
}

#[tokio::test]
async fn a_key_update_after_a_resumed_handshake_is_followed_too() {
    let configs = Configs::new(&[&rustls::version::TLS13]);
    let (first, ..) = connect_with(&configs, usize::MAX).await;
    drop(first);
    let (client, server, _, tap) = connect_with(&configs, usize::MAX).await;
    assert_eq!(
        client.get_ref().1.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed),
        "the second handshake resumed the first's session"
    );
    key_updates_both_ways(client, server, tap).await;
}

/// Two rounds of client key updates, each answered by the node's.
async fn key_updates_both_ways(mut client: Client, mut server: Stream, tap: Tap) {
    // Twice, so both sides go through more than one generation of keys.
    // rustls asks for the node's update in return (update_requested); the
    // second time it asks twice, and one answer does for both.
    for round in 0..2 {
        client.write_all(b"before").await.unwrap();
        for _ in 0..=round {
            client.get_mut().1.refresh_traffic_keys().unwrap();
        }
        client.write_all(b"after").await.unwrap();
        client.flush().await.unwrap();
        assert_eq!(
            read_n(&mut server, 11).await,
            b"beforeafter",
            "round {round}"
        );

        tap.received.lock().unwrap().clear();
        let wire = reply(&mut server, &mut client, &tap).await;
        // The node's KeyUpdate (5 bytes, content type, tag) went out before
        // the reply, which the client opened with the next key.
        assert_eq!(record_lengths(&wire), [5 + 1 + 16, 14 + 1 + 16]);
    }
    // And with no update asked for, none comes back.
    let wire = reply(&mut server, &mut client, &tap).await;
    assert_eq!(record_lengths(&wire), [14 + 1 + 16]);
}

/// Through the node: a client that moves its keys on (as rustls does near
/// its confidentiality limit) keeps its connection and its channel.
#[tokio::test]
async fn a_member_refreshing_its_keys_keeps_its_channel() {
    let node = common::Node::start();
    let mut alice = node.ws(common::KEY1, "alice").await;
    let mut bob = node.ws(common::KEY1, "bob").await;
    alice.join("room").await;
    bob.join("room").await;
    for round in 0..3 {
        alice.refresh_tls_keys();
        let event = format!("up-{round}");
        alice.send(&common::data("room", &event, "{}")).await;
        let got = bob.recv_op("data").await;
        assert_eq!(common::field(&got, "p"), Some("alice"), "round {round}");
        // bob's message reaches alice under the node's next key.
        bob.send(&common::data("room", "down", "{}")).await;
        let got = alice.recv_op("data").await;
        assert_eq!(common::field(&got, "p"), Some("bob"), "round {round}");
    }
}

#[tokio::test]
async fn tls12_stays_with_rustls() {
    let (mut client, mut server, leftover, _) = connect(&[&rustls::version::TLS12], 7).await;
    assert!(
        matches!(server, Stream::Rustls(_)),
        "TLS 1.2 is not taken over"
    );
    assert!(leftover.is_empty(), "rustls keeps its plaintext");
    let data = pattern(50_000);
    client.write_all(&data).await.unwrap();
    client.shutdown().await.unwrap();
    let (got, end) = read_to_end(&mut server).await;
    end.unwrap();
    assert!(got == [b"+extra".as_slice(), &data].concat());
}
