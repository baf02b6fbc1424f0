//! `transport::tls_stream`: the node's TLS on rustls' unbuffered API.
//!
//! First against [`tls_stream::accept`] on loopback with rustls' client,
//! each test checking one thing the adapter must get right: bulk both ways
//! in records cut into many TCP segments (TLS 1.3 and 1.2), close_notify
//! against a TCP end or reset without it, a tampered record, the client's key
//! updates after a full and a resumed handshake. Then through the node:
//! oversized and malformed records, KeyUpdate and empty-record floods, a
//! stalled handshake, and a client that is not rustls (OpenSSL's s_client
//! for key updates, which Python's ssl cannot ask for; Python's ssl for
//! close_notify over TLS 1.3 and 1.2).

mod common;

use std::io;
use std::pin::Pin;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use prscd::fuzzing::transport::tls_stream::{self, TlsStream};
use prscd::fuzzing::transport::HANDSHAKE_TIMEOUT;
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

async fn connect(
    versions: &[&'static rustls::SupportedProtocolVersion],
    max_write: usize,
) -> (Client, TlsStream, Tap) {
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
        let server = prscd::fuzzing::tls::Certificate::load(&pki.chain_pem, &pki.key_pem)
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

/// A handshake; the server reads `hello`, the client's first bytes, and
/// says `go`.
async fn connect_with(configs: &Configs, max_write: usize) -> (Client, TlsStream, Tap) {
    let server_config = configs.server.clone();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut stream = tls_stream::accept(server_config, tcp).await.unwrap();
        assert_eq!(read_n(&mut stream, 5).await, b"hello");
        stream.write_all(b"go").await.unwrap();
        stream.flush().await.unwrap();
        stream
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
    client.write_all(b"hello").await.unwrap();
    client.flush().await.unwrap();
    let stream = timeout(WAIT, server).await.unwrap().unwrap();
    assert_eq!(read_n(&mut client, 2).await, b"go");
    // From here on the tap holds only records the server sent.
    tap.received.lock().unwrap().clear();
    (client, stream, tap)
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

/// Reads what `stream` receives until end of stream or an error.
async fn read_to_end(stream: &mut (impl AsyncRead + Unpin)) -> (Vec<u8>, io::Result<()>) {
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

/// (content type, ciphertext length) of the whole records in `wire`.
fn records(wire: &[u8]) -> Vec<(u8, usize)> {
    let mut at = 0;
    let mut found = Vec::new();
    while at + 5 <= wire.len() {
        let len = usize::from(u16::from_be_bytes([wire[at + 3], wire[at + 4]]));
        found.push((wire[at], len));
        at += 5 + len;
    }
    assert_eq!(at, wire.len(), "whole records");
    found
}

async fn bulk_both_ways(version: &'static rustls::SupportedProtocolVersion) {
    let (mut client, mut server, tap) = connect(&[version], 7).await;
    assert_eq!(server.protocol_version(), Some(version.version));

    // Up: writes of many sizes (some over 16 KiB), each reaching the server
    // 7 bytes per TCP write.
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
    assert_eq!(server.buffer_capacity(), 0, "no buffer kept while idle");

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
    assert_eq!(server.buffer_capacity(), 0, "no buffer kept while idle");
    // Records of at most 4 KiB of plaintext (+ nonce, content type, tag),
    // so a client can open the first frames of a burst before the rest.
    let wire = std::mem::take(&mut *tap.received.lock().unwrap());
    let found = records(&wire);
    for (typ, len) in &found {
        assert_eq!(*typ, 23, "application data");
        assert!(*len <= 4096 + 29, "record of {len} bytes");
    }
    assert!(found.len() >= down.len() / 4096, "{} records", found.len());

    // The server's close_notify reaches the client as end of stream.
    server.shutdown().await.unwrap();
    let mut rest = Vec::new();
    let n = timeout(WAIT, client.read_to_end(&mut rest)).await.unwrap();
    assert_eq!(n.unwrap(), 0);
}

#[tokio::test]
async fn bulk_both_ways_in_records_cut_into_small_segments_tls13() {
    bulk_both_ways(&rustls::version::TLS13).await;
}

#[tokio::test]
async fn bulk_both_ways_in_records_cut_into_small_segments_tls12() {
    bulk_both_ways(&rustls::version::TLS12).await;
}

#[tokio::test]
async fn close_notify_is_end_of_stream_a_bare_tcp_end_or_reset_is_not() {
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        // close_notify, then FIN: a clean end.
        let (mut client, mut server, _) = connect(&[version], usize::MAX).await;
        client.write_all(b"last words").await.unwrap();
        client.shutdown().await.unwrap();
        let (got, end) = read_to_end(&mut server).await;
        assert_eq!(got, b"last words");
        end.expect("a clean end of stream");

        // FIN without close_notify: the data, then an error (a truncation
        // attack looks like this).
        let (mut client, mut server, _) = connect(&[version], usize::MAX).await;
        client.write_all(b"cut here").await.unwrap();
        client.flush().await.unwrap();
        client.get_mut().0.tcp.shutdown().await.unwrap();
        let (got, end) = read_to_end(&mut server).await;
        assert_eq!(got, b"cut here");
        let e = end.expect_err("no close_notify");
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{e}");

        // A reset: an error.
        let (client, mut server, _) = connect(&[version], usize::MAX).await;
        let (dribble, _) = client.into_inner();
        dribble.tcp.set_zero_linger().unwrap();
        drop(dribble);
        let (got, end) = read_to_end(&mut server).await;
        assert!(got.is_empty());
        let e = end.expect_err("a reset");
        assert_eq!(e.kind(), io::ErrorKind::ConnectionReset, "{e}");
    }
}

#[tokio::test]
async fn a_tampered_record_is_refused_with_an_alert() {
    let (mut client, mut server, tap) = connect(&[&rustls::version::TLS13], usize::MAX).await;
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
    let (_, end) = read_to_end(&mut client).await;
    let e = end.expect_err("the client hears why");
    assert!(e.to_string().contains("BadRecordMac"), "{e}");
}

/// The server writes 14 bytes, the client reads them; the records on the wire.
async fn reply(server: &mut TlsStream, client: &mut Client, tap: &Tap) -> Vec<(u8, usize)> {
    server.write_all(b"reply, 14 long").await.unwrap();
    server.flush().await.unwrap();
    assert_eq!(read_n(client, 14).await, b"reply, 14 long");
    records(&std::mem::take(&mut *tap.received.lock().unwrap()))
}

#[tokio::test]
async fn a_client_key_update_is_followed_and_answered() {
    let (client, server, tap) = connect(&[&rustls::version::TLS13], usize::MAX).await;
    key_updates_both_ways(client, server, tap).await;
}

#[tokio::test]
async fn a_key_update_after_a_resumed_handshake_is_followed_too() {
    let configs = Configs::new(&[&rustls::version::TLS13]);
    let (first, ..) = connect_with(&configs, usize::MAX).await;
    drop(first);
    let (client, server, tap) = connect_with(&configs, usize::MAX).await;
    assert_eq!(
        client.get_ref().1.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed),
        "the second handshake resumed the first's session"
    );
    assert_eq!(
        server.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed)
    );
    key_updates_both_ways(client, server, tap).await;
}

/// Two rounds of client key updates, each answered by the server's.
async fn key_updates_both_ways(mut client: Client, mut server: TlsStream, tap: Tap) {
    // rustls asks for the server's update in return (update_requested); the
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
        // The server's KeyUpdate (4 + 1 bytes, content type, tag) went out
        // before the reply, which the client opened with the next key.
        assert_eq!(
            reply(&mut server, &mut client, &tap).await,
            [(23, 5 + 1 + 16), (23, 14 + 1 + 16)],
            "round {round}"
        );
    }
    // With no update asked for, none comes back.
    assert_eq!(
        reply(&mut server, &mut client, &tap).await,
        [(23, 14 + 1 + 16)]
    );
}

// Through the node.

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

/// rustls allows 32 KeyUpdates between two data records: 32 keep the
/// WebSocket, 33 end it, promptly, instead of being spun on.
#[tokio::test]
async fn a_key_update_flood_is_closed_not_spun_on() {
    let node = common::Node::start();
    let mut bob = node.ws(common::KEY1, "bob").await;
    bob.join("room").await;
    for (updates, kept) in [(32, true), (33, false)] {
        let mut alice = node.ws(common::KEY1, "alice").await;
        alice.join("room").await;
        for _ in 0..updates {
            alice.refresh_tls_keys();
        }
        alice.send(&common::data("room", "after", "{}")).await;
        if kept {
            let got = bob.recv_op("data").await;
            assert_eq!(common::field(&got, "p"), Some("alice"));
        } else {
            assert_eq!(alice.next_within(WAIT).await, common::Next::Closed);
        }
    }
}

/// Raw bytes on a node's TLS connection after the handshake; what the
/// rustls client then reads.
async fn after_handshake(node: &common::Node, raw: &[u8]) -> io::Result<Vec<u8>> {
    let mut tls = common::tls_connect(node.addr()).await;
    tls.get_mut().0.write_all(raw).await.unwrap();
    let (got, end) = read_to_end(&mut tls).await;
    end.map(|()| got)
}

#[tokio::test]
async fn oversized_malformed_and_empty_records_are_refused_with_an_alert() {
    let node = common::Node::start();
    // A length over any TLS version's ciphertext limit (2^14 + 2048) is
    // refused from the header, before the bytes are waited for.
    let oversized = [23, 3, 3, 0x48, 0x01];
    let unknown_type = [99, 3, 3, 0, 20];
    let bad_version = [23, 9, 9, 0, 20];
    // Empty records: a node rustls has keys for never opens one (no tag),
    // and this client cannot make any others without sealing them itself.
    let empties: Vec<u8> = [23u8, 3, 3, 0, 0].repeat(100);
    let cases: [(&str, &[u8], &str); 4] = [
        ("oversized", &oversized, "DecodeError"),
        ("unknown content type", &unknown_type, "DecodeError"),
        ("bad version", &bad_version, "DecodeError"),
        ("empty records", &empties, "BadRecordMac"),
    ];
    for (what, raw, alert) in cases {
        let e = after_handshake(&node, raw).await.expect_err(what);
        assert!(e.to_string().contains(alert), "{what}: {e}");
    }
    // The node is fine.
    assert_eq!(node.health().await.0, 200);
}

/// A client that opens TCP and stalls inside the handshake is dropped
/// after `HANDSHAKE_TIMEOUT`.
#[tokio::test]
async fn a_stalled_handshake_times_out() {
    let node = common::Node::start();
    let mut tcp = TcpStream::connect(node.addr()).await.unwrap();
    // The first bytes of a ClientHello record, then nothing.
    tcp.write_all(&[22, 3, 1, 0, 200, 1, 0]).await.unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 64];
    let read = timeout(HANDSHAKE_TIMEOUT + WAIT, tcp.read(&mut buf)).await;
    let elapsed = started.elapsed();
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "closed by the node: {read:?}"
    );
    assert!(
        elapsed >= HANDSHAKE_TIMEOUT - Duration::from_secs(1),
        "not before the timeout: {elapsed:?}"
    );
}

/// OpenSSL's s_client against the node: it moves its keys on (`k`) and
/// asks for the node's (`K`), then reads `/health` under the new keys.
#[tokio::test]
async fn openssl_key_updates_both_ways_through_the_node() {
    let node = common::Node::start();
    let pki = common::pki();
    // s_client reports its key updates on stderr: both go to one pipe.
    let command = format!(
        "exec openssl s_client -tls1_3 -crlf -connect {} -CAfile {} 2>&1",
        node.addr(),
        pki.chain_pem.display()
    );
    let mut child = tokio::process::Command::new("sh")
        .args(["-c", &command])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("openssl on PATH");
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut seen = Vec::new();
    wait_for(&mut stdout, &mut seen, "Verify return code: 0 (ok)").await;
    // One command a line, each read on its own by s_client.
    for command in ["k\n", "K\n"] {
        stdin.write_all(command.as_bytes()).await.unwrap();
        stdin.flush().await.unwrap();
        wait_for(&mut stdout, &mut seen, "KEYUPDATE").await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stdin
        .write_all(b"GET /health HTTP/1.1\nHost: 127.0.0.1\nConnection: close\n\n")
        .await
        .unwrap();
    stdin.flush().await.unwrap();
    wait_for(&mut stdout, &mut seen, "\"status\":\"healthy\"").await;
    let text = String::from_utf8_lossy(&seen).to_string();
    assert_eq!(text.matches("KEYUPDATE").count(), 2, "{text}");
    assert!(text.contains("HTTP/1.1 200 OK"), "{text}");
    drop(stdin);
    let _ = timeout(WAIT, child.wait()).await;
}

/// Reads `stdout` onto `seen` until it holds `needle`, within `WAIT`.
async fn wait_for(stdout: &mut (impl AsyncRead + Unpin), seen: &mut Vec<u8>, needle: &str) {
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + WAIT;
    while !String::from_utf8_lossy(seen).contains(needle) {
        let left = deadline.saturating_duration_since(Instant::now());
        let text = String::from_utf8_lossy(seen).to_string();
        let n = timeout(left, stdout.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("no {needle:?} in {text}"))
            .unwrap();
        assert_ne!(n, 0, "s_client ended: {text}");
        seen.extend_from_slice(&buf[..n]);
    }
}

/// Python's ssl (OpenSSL) against the node over TLS 1.3 and 1.2: `/health`
/// ends with the node's close_notify (Python raises `SSLEOFError` on a bare
/// TCP end), and a reset mid-request leaves the node serving.
#[tokio::test]
async fn python_ssl_sees_close_notify_over_tls13_and_tls12() {
    let node = common::Node::start();
    let pki = common::pki();
    let script = r#"
import socket, ssl, sys, struct
port, cafile = int(sys.argv[1]), sys.argv[2]
for version in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2):
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.minimum_version = ctx.maximum_version = version
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            assert tls.version() == {ssl.TLSVersion.TLSv1_3: "TLSv1.3", ssl.TLSVersion.TLSv1_2: "TLSv1.2"}[version], tls.version()
            tls.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = b""
            while True:
                chunk = tls.recv(4096)  # SSLEOFError without close_notify
                if not chunk:
                    break
                data += chunk
            assert data.startswith(b"HTTP/1.1 200 OK"), data
            print(tls.version(), "clean end")
    # A reset in the middle of a request.
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        tls = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
        tls.sendall(b"GET /health HTTP/1.1\r\n")
        tls.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        tls.close()
"#;
    let out = timeout(
        WAIT * 2,
        tokio::process::Command::new("python3")
            .arg("-c")
            .arg(script)
            .arg(node.port.to_string())
            .arg(&pki.chain_pem)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("python finished")
    .expect("python3 on PATH");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        ["TLSv1.3 clean end", "TLSv1.2 clean end"]
    );
    assert_eq!(node.health().await.0, 200);
}
