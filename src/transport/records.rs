//! TLS 1.3 records after the handshake, sealed and opened with the keys
//! rustls hands over.
//!
//! Why: rustls' buffered connection keeps about 6 KiB per connection for as
//! long as it lives (a 4 KiB read buffer it never shrinks below that, the
//! handshake deframer, the connection state), most of what an idle WebSocket
//! costs the node. Once the handshake and the HTTP upgrade are done, a TLS 1.3
//! connection needs only its two keys and sequence numbers (RFC 8446 §5). This
//! module protects records with them: it reads through a buffer on the stack
//! and holds heap only while a record is partly read, plaintext is waiting
//! for the reader, or sealed bytes wait for the socket. The same idea as kTLS,
//! which this machine's kernel does not have.
//!
//! What stays with rustls: the handshake, TLS 1.2 connections (they keep the
//! rustls stream, [`Stream::Rustls`]), and everything before the 101.
//! What it does not do: follow a KeyUpdate (rustls' buffered API hands over
//! keys, not the traffic secrets to derive the next ones), so a client's
//! KeyUpdate ends its connection with an error, as does sending more records
//! than the cipher's confidentiality limit allows under one key (2^24 for
//! AES-GCM: batches of frames per record make that days of a busy channel).
//! The client reconnects either way.

use std::io::{self, Read};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use rustls::{ConnectionTrafficSecrets, ProtocolVersion, SupportedCipherSuite};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

const HEADER: usize = 5;
const TAG: usize = 16;
const MAX_PLAINTEXT: usize = 1 << 14;
/// Plaintext per sealed record. A client opens a record only once all of it
/// has arrived, and rustls' client reads 4 KiB per call: with 16 KiB records
/// a burst's first frames waited for the whole record, and a 1,000-subscriber
/// fan-out delivered ~7 % less (BENCHMARKS.md, fix 13). 4 KiB costs 22 bytes
/// of header and tag per record.
const SEAL_PLAINTEXT: usize = 4096;
/// RFC 8446 §5.2: plaintext, content type, padding and tag.
const MAX_CIPHERTEXT: usize = MAX_PLAINTEXT + 256;
/// One socket read: room for a kept partial record and a whole new one.
const READ_CHUNK: usize = 2 * (HEADER + MAX_CIPHERTEXT);
/// Sealed bytes a writer may leave queued before it must wait for the socket.
const MAX_PENDING_OUT: usize = 256 * 1024;

const CONTENT_ALERT: u8 = 21;
const CONTENT_HANDSHAKE: u8 = 22;
const CONTENT_APPLICATION_DATA: u8 = 23;
const ALERT_CLOSE_NOTIFY: u8 = 0;
const ALERT_USER_CANCELED: u8 = 90;

/// A server-side TLS connection after its handshake.
// The common variant inline: boxing it would cost every connection an allocation.
#[allow(clippy::large_enum_variant)]
pub enum Stream {
    /// TLS 1.3: records protected here.
    Records(RecordStream),
    /// Anything else (TLS 1.2): rustls' own stream.
    Rustls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// Takes a TLS 1.3 connection over from rustls; other versions stay with it.
///
/// Call it when the client is waiting for the server (after the HTTP request
/// of a WebSocket upgrade, before the 101): plaintext rustls has opened but
/// nobody read yet is appended to `leftover`; ciphertext it has read but not
/// opened would be lost, and a WebSocket client sends none until the 101.
/// Needs `enable_secret_extraction` in the server config.
pub async fn take_over(
    mut tls: tokio_rustls::server::TlsStream<TcpStream>,
    leftover: &mut Vec<u8>,
) -> io::Result<Stream> {
    let (_, conn) = tls.get_ref();
    let limit = match (conn.protocol_version(), conn.negotiated_cipher_suite()) {
        (Some(ProtocolVersion::TLSv1_3), Some(SupportedCipherSuite::Tls13(suite))) => {
            suite.common.confidentiality_limit
        }
        _ => return Ok(Stream::Rustls(Box::new(tls))),
    };
    // Session tickets and anything else rustls queued go out first.
    tls.flush().await?;
    let (tcp, mut conn) = tls.into_inner();
    let mut chunk = [0u8; 1024];
    loop {
        match conn.reader().read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => leftover.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    let secrets = conn.dangerous_extract_secrets().map_err(io::Error::other)?;
    Ok(Stream::Records(RecordStream {
        tcp,
        rx: Direction::new(secrets.rx.0, secrets.rx.1)?,
        tx: Direction::new(secrets.tx.0, secrets.tx.1)?,
        tx_limit: limit,
        partial: Vec::new(),
        plain: Vec::new(),
        plain_at: 0,
        out: Vec::new(),
        out_at: 0,
        peer_closed: false,
        close_sent: false,
    }))
}

/// One direction's key, IV and record sequence number.
struct Direction {
    key: LessSafeKey,
    iv: [u8; 12],
    seq: u64,
}

impl Direction {
    fn new(seq: u64, secrets: ConnectionTrafficSecrets) -> io::Result<Direction> {
        let (algorithm, key, iv) = match &secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (&aead::AES_128_GCM, key, iv),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (&aead::AES_256_GCM, key, iv),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
                (&aead::CHACHA20_POLY1305, key, iv)
            }
            _ => return Err(io::Error::other("unsupported TLS 1.3 cipher")),
        };
        let key = UnboundKey::new(algorithm, key.as_ref())
            .map_err(|_| io::Error::other("bad TLS traffic key"))?;
        let iv = iv
            .as_ref()
            .try_into()
            .map_err(|_| io::Error::other("bad TLS traffic IV"))?;
        Ok(Direction {
            key: LessSafeKey::new(key),
            iv,
            seq,
        })
    }

    /// RFC 8446 §5.3: the IV XOR the sequence number, then the number moves on.
    fn next_nonce(&mut self) -> io::Result<Nonce> {
        let mut nonce = self.iv;
        for (b, s) in nonce[4..].iter_mut().zip(self.seq.to_be_bytes()) {
            *b ^= s;
        }
        self.seq = self
            .seq
            .checked_add(1)
            .ok_or_else(|| io::Error::other("TLS sequence number exhausted"))?;
        Ok(Nonce::assume_unique_for_key(nonce))
    }
}

/// TLS 1.3 application traffic over a TCP stream.
pub struct RecordStream {
    tcp: TcpStream,
    rx: Direction,
    tx: Direction,
    /// Records `tx` may seal under its key.
    tx_limit: u64,
    /// The start of a record not yet complete.
    partial: Vec<u8>,
    /// Opened plaintext the reader has not taken yet, from `plain_at`.
    plain: Vec<u8>,
    plain_at: usize,
    /// Sealed records the socket has not taken yet, from `out_at`.
    out: Vec<u8>,
    out_at: usize,
    /// The client sent close_notify: reads see end of stream.
    peer_closed: bool,
    close_sent: bool,
}

fn invalid(why: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why)
}

impl RecordStream {
    /// Opens every whole record in `data` (in place), hands application
    /// data to `buf` and keeps what does not fit. Returns the bytes used.
    fn open_records(&mut self, data: &mut [u8], buf: &mut ReadBuf<'_>) -> io::Result<usize> {
        let mut at = 0;
        while !self.peer_closed && data.len() - at >= HEADER {
            let header: [u8; HEADER] = data[at..at + HEADER].try_into().expect("header length");
            if header[0] != CONTENT_APPLICATION_DATA {
                return Err(invalid("unencrypted TLS record after the handshake"));
            }
            let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
            if !(TAG + 1..=MAX_CIPHERTEXT).contains(&len) {
                return Err(invalid("TLS record length out of range"));
            }
            if data.len() - at - HEADER < len {
                break;
            }
            let body = &mut data[at + HEADER..at + HEADER + len];
            at += HEADER + len;
            let nonce = self.rx.next_nonce()?;
            let inner = self
                .rx
                .key
                .open_in_place(nonce, Aad::from(header), body)
                .map_err(|_| invalid("TLS record failed authentication"))?;
            // The content type is the last byte that is not padding.
            let end = inner
                .iter()
                .rposition(|&b| b != 0)
                .ok_or_else(|| invalid("TLS record without a content type"))?;
            if end > MAX_PLAINTEXT {
                return Err(invalid("TLS record over 16 KiB of plaintext"));
            }
            let payload = &inner[..end];
            match inner[end] {
                CONTENT_APPLICATION_DATA => self.deliver(payload, buf),
                CONTENT_ALERT => match payload {
                    [_, ALERT_CLOSE_NOTIFY] => self.peer_closed = true,
                    [_, ALERT_USER_CANCELED] => {}
                    _ => {
                        return Err(io::Error::new(
                            io::ErrorKind::ConnectionAborted,
                            "TLS alert from the client",
                        ))
                    }
                },
                CONTENT_HANDSHAKE => {
                    return Err(io::Error::new(
                        io::ErrorKind::Unsupported,
                        "TLS handshake message (key update) after the upgrade",
                    ))
                }
                _ => return Err(invalid("unknown TLS content type")),
            }
        }
        Ok(if self.peer_closed { data.len() } else { at })
    }

    fn deliver(&mut self, payload: &[u8], buf: &mut ReadBuf<'_>) {
        let direct = if self.plain.is_empty() {
            payload.len().min(buf.remaining())
        } else {
            0
        };
        buf.put_slice(&payload[..direct]);
        self.plain.extend_from_slice(&payload[direct..]);
    }

    /// Hands waiting plaintext to `buf`; frees it once all is taken.
    fn take_plain(&mut self, buf: &mut ReadBuf<'_>) {
        let n = (self.plain.len() - self.plain_at).min(buf.remaining());
        buf.put_slice(&self.plain[self.plain_at..self.plain_at + n]);
        self.plain_at += n;
        if self.plain_at == self.plain.len() {
            self.plain = Vec::new();
            self.plain_at = 0;
        }
    }

    /// Seals `data` as records of `content_type` onto `out`.
    fn seal(&mut self, content_type: u8, data: &[u8]) -> io::Result<()> {
        let records = data.len().div_ceil(SEAL_PLAINTEXT);
        self.out.reserve(data.len() + records * (HEADER + 1 + TAG));
        for chunk in data.chunks(SEAL_PLAINTEXT) {
            if self.tx.seq >= self.tx_limit {
                return Err(io::Error::other(
                    "TLS confidentiality limit of this key reached",
                ));
            }
            let len = chunk.len() + 1 + TAG;
            let header = [CONTENT_APPLICATION_DATA, 3, 3, (len >> 8) as u8, len as u8];
            let start = self.out.len();
            self.out.extend_from_slice(&header);
            self.out.extend_from_slice(chunk);
            self.out.push(content_type);
            let nonce = self.tx.next_nonce()?;
            let tag = self
                .tx
                .key
                .seal_in_place_separate_tag(
                    nonce,
                    Aad::from(header),
                    &mut self.out[start + HEADER..],
                )
                .map_err(|_| io::Error::other("TLS record sealing failed"))?;
            self.out.extend_from_slice(tag.as_ref());
        }
        Ok(())
    }

    /// Writes sealed records until the socket is full; frees the buffer once
    /// all went out.
    fn write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.out_at < self.out.len() {
            let n = ready!(Pin::new(&mut self.tcp).poll_write(cx, &self.out[self.out_at..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.out_at += n;
        }
        self.out = Vec::new();
        self.out_at = 0;
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for RecordStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let start = buf.filled().len();
        loop {
            if this.plain_at < this.plain.len() {
                this.take_plain(buf);
                return Poll::Ready(Ok(()));
            }
            if this.peer_closed || buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            // On the stack, uninitialised: an idle connection keeps none of it.
            let mut chunk = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
            let mut read = ReadBuf::uninit(&mut chunk);
            read.put_slice(&this.partial);
            let kept = this.partial.len();
            ready!(Pin::new(&mut this.tcp).poll_read(cx, &mut read))?;
            let filled = read.filled_mut();
            if filled.len() == kept {
                if kept > 0 {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "connection closed inside a TLS record",
                    )));
                }
                this.peer_closed = true;
                return Poll::Ready(Ok(()));
            }
            let used = this.open_records(filled, buf)?;
            // Empty (no allocation) unless a record is cut.
            this.partial = filled[used..].to_vec();
            // Plaintext is kept back only once `buf` is full, so this covers it.
            if buf.filled().len() > start || this.peer_closed {
                return Poll::Ready(Ok(()));
            }
        }
    }
}

impl AsyncWrite for RecordStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.out.len() - this.out_at >= MAX_PENDING_OUT {
            ready!(this.write_out(cx))?;
        }
        this.seal(CONTENT_APPLICATION_DATA, data)?;
        // What the socket takes now goes now; the rest at the flush.
        if let Poll::Ready(Err(e)) = this.write_out(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.write_out(cx))?;
        Pin::new(&mut this.tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.close_sent {
            this.close_sent = true;
            this.seal(CONTENT_ALERT, &[1, ALERT_CLOSE_NOTIFY])?;
        }
        ready!(this.write_out(cx))?;
        Pin::new(&mut this.tcp).poll_shutdown(cx)
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Records(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Rustls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Records(s) => Pin::new(s).poll_write(cx, data),
            Stream::Rustls(s) => Pin::new(s.as_mut()).poll_write(cx, data),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Records(s) => Pin::new(s).poll_flush(cx),
            Stream::Rustls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Records(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Rustls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
