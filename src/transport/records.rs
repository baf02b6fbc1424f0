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
//!
//! Key updates (RFC 8446 §4.6.3, §7.2), as rustls itself would do them: a
//! client's KeyUpdate moves its key on, and one that asks for an answer gets
//! the node's own KeyUpdate before the node's next record (one answer for
//! any number of requests, as §4.6.3 allows); before the node's key
//! reaches the cipher's confidentiality limit (2^24 records for AES-GCM,
//! hours of a busy channel's unbatched messages) the node moves its own key
//! on. The next key comes from the current traffic secret, which rustls'
//! buffered API does not hand over with the keys: [`accept`] keeps the two
//! secrets from rustls' key log while it drives the handshake
//! ([`TrafficSecretLog`]). Without them (never seen) a key update ends the
//! connection with an error, as before, and the client reconnects.

use std::cell::RefCell;
use std::future::Future;
use std::io::{self, Read};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::hkdf;
use rustls::{
    CipherSuite, ConnectionTrafficSecrets, KeyLog, ProtocolVersion, SupportedCipherSuite,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use zeroize::Zeroizing;

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
/// RFC 8446 §4.6.3: a KeyUpdate handshake message (type 24, length 1).
const KEY_UPDATE: [u8; 4] = [24, 0, 0, 1];
const UPDATE_NOT_REQUESTED: u8 = 0;
const UPDATE_REQUESTED: u8 = 1;
const CLIENT_TRAFFIC_SECRET: &str = "CLIENT_TRAFFIC_SECRET_0";
const SERVER_TRAFFIC_SECRET: &str = "SERVER_TRAFFIC_SECRET_0";

/// A server-side TLS connection after its handshake.
// The common variant inline: boxing it would cost every connection an allocation.
#[allow(clippy::large_enum_variant)]
pub enum Stream {
    /// TLS 1.3: records protected here.
    Records(RecordStream),
    /// Anything else (TLS 1.2): rustls' own stream.
    Rustls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

thread_local! {
    /// The secrets of the handshake [`accept`] is polling on this thread.
    static CAPTURE: RefCell<Option<TrafficSecrets>> = const { RefCell::new(None) };
}

/// rustls' key log, set on the node's TLS config: it keeps the TLS 1.3
/// application traffic secrets of the handshake that [`accept`] is driving
/// on this thread (rustls runs the handshake inside that poll) and logs
/// nothing anywhere. Any other handshake's secrets are dropped.
#[derive(Debug)]
pub struct TrafficSecretLog;

impl KeyLog for TrafficSecretLog {
    fn will_log(&self, label: &str) -> bool {
        label == CLIENT_TRAFFIC_SECRET || label == SERVER_TRAFFIC_SECRET
    }

    fn log(&self, label: &str, _client_random: &[u8], secret: &[u8]) {
        let Some(secret) = TrafficSecret::new(secret) else {
            return;
        };
        CAPTURE.with_borrow_mut(|capture| {
            if let Some(secrets) = capture {
                match label {
                    CLIENT_TRAFFIC_SECRET => secrets.client = Some(secret),
                    SERVER_TRAFFIC_SECRET => secrets.server = Some(secret),
                    _ => {}
                }
            }
        });
    }
}

/// The two application traffic secrets of a TLS 1.3 handshake, for
/// [`take_over`]; empty for TLS 1.2.
#[derive(Default)]
pub struct TrafficSecrets {
    client: Option<TrafficSecret>,
    server: Option<TrafficSecret>,
}

/// The TLS handshake, keeping its traffic secrets (see [`TrafficSecretLog`]).
pub async fn accept(
    acceptor: &TlsAcceptor,
    tcp: TcpStream,
) -> io::Result<(TlsStream<TcpStream>, TrafficSecrets)> {
    let mut handshake = acceptor.accept(tcp);
    let mut secrets = TrafficSecrets::default();
    let tls = std::future::poll_fn(|cx| {
        CAPTURE.with_borrow_mut(|capture| *capture = Some(std::mem::take(&mut secrets)));
        let poll = Pin::new(&mut handshake).poll(cx);
        secrets = CAPTURE
            .with_borrow_mut(|capture| capture.take())
            .unwrap_or_default();
        poll
    })
    .await?;
    Ok((tls, secrets))
}

/// Takes a TLS 1.3 connection over from rustls; other versions stay with it.
///
/// Call it when the client is waiting for the server (after the HTTP request
/// of a WebSocket upgrade, before the 101): plaintext rustls has opened but
/// nobody read yet is appended to `leftover`; ciphertext it has read but not
/// opened would be lost, and a WebSocket client sends none until the 101.
/// Needs `enable_secret_extraction` in the server config, and
/// [`TrafficSecretLog`] as its key log to follow key updates.
pub async fn take_over(
    mut tls: TlsStream<TcpStream>,
    secrets: TrafficSecrets,
    leftover: &mut Vec<u8>,
) -> io::Result<Stream> {
    let (_, conn) = tls.get_ref();
    let (limit, suite) = match (conn.protocol_version(), conn.negotiated_cipher_suite()) {
        (Some(ProtocolVersion::TLSv1_3), Some(SupportedCipherSuite::Tls13(suite))) => {
            (suite.common.confidentiality_limit, suite.common.suite)
        }
        _ => return Ok(Stream::Rustls(Box::new(tls))),
    };
    let schedule = KeySchedule::of(suite)?;
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
    let keys = conn.dangerous_extract_secrets().map_err(io::Error::other)?;
    let rx = Direction::new(&schedule, keys.rx, secrets.client)?;
    let tx = Direction::new(&schedule, keys.tx, secrets.server)?;
    Ok(Stream::Records(RecordStream::new(
        tcp, rx, tx, schedule, limit,
    )))
}

/// A TLS 1.3 application traffic secret (RFC 8446 §7.1): 32 or 48 bytes.
struct TrafficSecret {
    bytes: Zeroizing<[u8; 48]>,
    len: u8,
}

impl TrafficSecret {
    fn new(secret: &[u8]) -> Option<TrafficSecret> {
        let mut bytes = Zeroizing::new([0u8; 48]);
        bytes.get_mut(..secret.len())?.copy_from_slice(secret);
        Some(TrafficSecret {
            bytes,
            len: secret.len() as u8,
        })
    }

    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// The cipher suite's AEAD and hash: how keys follow from traffic secrets.
#[derive(Clone, Copy)]
struct KeySchedule {
    aead: &'static aead::Algorithm,
    hkdf: hkdf::Algorithm,
}

/// The output length of one HKDF expansion.
struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

impl KeySchedule {
    fn of(suite: CipherSuite) -> io::Result<KeySchedule> {
        let (aead, hkdf) = match suite {
            CipherSuite::TLS13_AES_128_GCM_SHA256 => (&aead::AES_128_GCM, hkdf::HKDF_SHA256),
            CipherSuite::TLS13_AES_256_GCM_SHA384 => (&aead::AES_256_GCM, hkdf::HKDF_SHA384),
            CipherSuite::TLS13_CHACHA20_POLY1305_SHA256 => {
                (&aead::CHACHA20_POLY1305, hkdf::HKDF_SHA256)
            }
            _ => return Err(io::Error::other("unsupported TLS 1.3 cipher")),
        };
        Ok(KeySchedule { aead, hkdf })
    }

    /// RFC 8446 §7.1 HKDF-Expand-Label with an empty context.
    fn expand_label(&self, secret: &TrafficSecret, label: &[u8], out: &mut [u8]) {
        let prk = hkdf::Prk::new_less_safe(self.hkdf, secret.as_bytes());
        let out_len = (out.len() as u16).to_be_bytes();
        let label_len = [(b"tls13 ".len() + label.len()) as u8];
        let info: [&[u8]; 5] = [&out_len, &label_len, b"tls13 ", label, &[0]];
        prk.expand(&info, Len(out.len()))
            .and_then(|okm| okm.fill(out))
            .expect("HKDF output of a key, an IV or a secret is within bounds");
    }

    /// The key and IV of `secret` (§7.3).
    fn traffic_keys(&self, secret: &TrafficSecret) -> (LessSafeKey, [u8; 12]) {
        let mut key = Zeroizing::new([0u8; 32]);
        let key = &mut key[..self.aead.key_len()];
        self.expand_label(secret, b"key", key);
        let mut iv = [0u8; 12];
        self.expand_label(secret, b"iv", &mut iv);
        let key = UnboundKey::new(self.aead, key).expect("key length of the AEAD");
        (LessSafeKey::new(key), iv)
    }

    /// The next secret after a key update (§7.2).
    fn next(&self, secret: &TrafficSecret) -> TrafficSecret {
        let mut next = TrafficSecret {
            bytes: Zeroizing::new([0u8; 48]),
            len: secret.len,
        };
        let len = usize::from(secret.len);
        self.expand_label(secret, b"traffic upd", &mut next.bytes[..len]);
        next
    }

    /// Whether `secret` is the one behind the handshake's keys (its IV
    /// matches): a secret kept from another handshake is never used.
    fn derives(&self, secret: &TrafficSecret, iv: &[u8; 12]) -> bool {
        let mut derived = [0u8; 12];
        self.expand_label(secret, b"iv", &mut derived);
        derived == *iv
    }
}

/// One direction's key, IV, record sequence number and traffic secret.
struct Direction {
    key: LessSafeKey,
    iv: [u8; 12],
    seq: u64,
    /// To derive the next key; `None` when it was not kept.
    secret: Option<TrafficSecret>,
}

impl Direction {
    /// A direction from the keys rustls handed over, keeping `secret` only
    /// if it is the one behind them.
    fn new(
        schedule: &KeySchedule,
        (seq, keys): (u64, ConnectionTrafficSecrets),
        secret: Option<TrafficSecret>,
    ) -> io::Result<Direction> {
        let (key, iv) = match &keys {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv }
            | ConnectionTrafficSecrets::Aes256Gcm { key, iv }
            | ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => (key, iv),
            _ => return Err(io::Error::other("unsupported TLS 1.3 cipher")),
        };
        let key = UnboundKey::new(schedule.aead, key.as_ref())
            .map_err(|_| io::Error::other("bad TLS traffic key"))?;
        let iv = iv
            .as_ref()
            .try_into()
            .map_err(|_| io::Error::other("bad TLS traffic IV"))?;
        Ok(Direction {
            key: LessSafeKey::new(key),
            iv,
            seq,
            secret: secret.filter(|s| schedule.derives(s, &iv)),
        })
    }

    /// Moves on to the next traffic secret's key; sequence numbers restart.
    fn update(&mut self, schedule: &KeySchedule) -> io::Result<()> {
        let secret = self.secret.as_ref().ok_or_else(no_traffic_secret)?;
        let next = schedule.next(secret);
        (self.key, self.iv) = schedule.traffic_keys(&next);
        self.secret = Some(next);
        self.seq = 0;
        Ok(())
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
    schedule: KeySchedule,
    /// Records `tx` may seal under one key.
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
    /// The client asked for the node's KeyUpdate (§4.6.3): it goes before
    /// the next record the node seals.
    key_update_asked: bool,
    close_sent: bool,
}

fn no_traffic_secret() -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        "TLS key update without the traffic secret",
    )
}

fn invalid(why: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why)
}

impl RecordStream {
    fn new(
        tcp: TcpStream,
        rx: Direction,
        tx: Direction,
        schedule: KeySchedule,
        tx_limit: u64,
    ) -> RecordStream {
        RecordStream {
            tcp,
            rx,
            tx,
            schedule,
            tx_limit,
            partial: Vec::new(),
            plain: Vec::new(),
            plain_at: 0,
            out: Vec::new(),
            out_at: 0,
            peer_closed: false,
            key_update_asked: false,
            close_sent: false,
        }
    }

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
                // A KeyUpdate ends its record (§5.1), so it is the whole payload.
                CONTENT_HANDSHAKE => match payload {
                    [message @ .., request]
                        if *message == KEY_UPDATE && *request <= UPDATE_REQUESTED =>
                    {
                        self.rx.update(&self.schedule)?;
                        self.key_update_asked |= *request == UPDATE_REQUESTED;
                    }
                    _ => return Err(invalid("TLS handshake message after the handshake")),
                },
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

    /// Queues a KeyUpdate (not asking for the client's) under the current
    /// key, then moves `tx` on: what is sealed after it uses the new key.
    fn update_tx(&mut self) -> io::Result<()> {
        if self.tx.secret.is_none() {
            return Err(no_traffic_secret());
        }
        let mut message = [0u8; 5];
        message[..4].copy_from_slice(&KEY_UPDATE);
        message[4] = UPDATE_NOT_REQUESTED;
        self.seal_record(CONTENT_HANDSHAKE, &message)?;
        self.tx.update(&self.schedule)
    }

    /// Seals `data` as records of `content_type` onto `out`, after the
    /// KeyUpdate the client asked for, and moving the key on before it
    /// reaches its confidentiality limit.
    fn seal(&mut self, content_type: u8, data: &[u8]) -> io::Result<()> {
        // Asked for by the client: one answer for however many requests.
        if std::mem::take(&mut self.key_update_asked) {
            self.update_tx()?;
        }
        let records = data.len().div_ceil(SEAL_PLAINTEXT);
        self.out.reserve(data.len() + records * (HEADER + 1 + TAG));
        for chunk in data.chunks(SEAL_PLAINTEXT) {
            // One record of the old key is left for the KeyUpdate itself.
            if self.tx.seq.saturating_add(1) >= self.tx_limit {
                self.update_tx()?;
            }
            self.seal_record(content_type, chunk)?;
        }
        Ok(())
    }

    /// Seals one record of at most `SEAL_PLAINTEXT` bytes onto `out`.
    fn seal_record(&mut self, content_type: u8, chunk: &[u8]) -> io::Result<()> {
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
            .seal_in_place_separate_tag(nonce, Aad::from(header), &mut self.out[start + HEADER..])
            .map_err(|_| io::Error::other("TLS record sealing failed"))?;
        self.out.extend_from_slice(tag.as_ref());
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::AsyncReadExt;

    fn direction(schedule: &KeySchedule, secret: &[u8]) -> Direction {
        let secret = TrafficSecret::new(secret).expect("secret of 32 bytes");
        let (key, iv) = schedule.traffic_keys(&secret);
        Direction {
            key,
            iv,
            seq: 0,
            secret: Some(secret),
        }
    }

    /// Two ends of one loopback connection: `a`'s keys are `b`'s.
    async fn pair(a_limit: u64) -> (RecordStream, RecordStream) {
        let schedule = KeySchedule::of(CipherSuite::TLS13_AES_128_GCM_SHA256).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a_tcp = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (b_tcp, _) = listener.accept().await.unwrap();
        let end = |tcp, rx: &[u8], tx: &[u8], tx_limit| {
            let (rx, tx) = (direction(&schedule, rx), direction(&schedule, tx));
            RecordStream::new(tcp, rx, tx, schedule, tx_limit)
        };
        let (one, two) = ([1u8; 32], [2u8; 32]);
        (
            end(a_tcp, &one, &two, a_limit),
            end(b_tcp, &two, &one, u64::MAX),
        )
    }

    #[tokio::test]
    async fn the_key_moves_on_before_its_confidentiality_limit() {
        let (mut a, mut b) = pair(4).await;
        let first_key_secret = a.tx.secret.as_ref().unwrap().as_bytes().to_vec();
        // Ten records (one per flush), at most three of them under one key
        // plus its KeyUpdate.
        for i in 0..10u8 {
            a.write_all(&[i; 100]).await.unwrap();
            a.flush().await.unwrap();
            assert!(a.tx.seq < 4, "record {i}: seq {}", a.tx.seq);
        }
        let mut got = vec![0u8; 1000];
        tokio::time::timeout(Duration::from_secs(5), b.read_exact(&mut got))
            .await
            .unwrap()
            .unwrap();
        let sent: Vec<u8> = (0..10u8).flat_map(|i| [i; 100]).collect();
        assert_eq!(got, sent, "b read every record, across the key updates");
        // b followed each update without answering it (none was asked for).
        let secret = b.rx.secret.as_ref().unwrap().as_bytes().to_vec();
        assert_eq!(secret, a.tx.secret.as_ref().unwrap().as_bytes());
        assert_ne!(secret, first_key_secret);
        assert_eq!(b.tx.seq, 0, "b sent nothing");
    }

    #[tokio::test]
    async fn without_its_secret_the_limit_ends_the_connection() {
        let (mut a, _b) = pair(4).await;
        a.tx.secret = None;
        let mut written = 0;
        let end = loop {
            let result = a.write_all(&[0; 10]).await.and(a.flush().await);
            if result.is_err() || written > 10 {
                break result;
            }
            written += 1;
        };
        assert!(end.is_err(), "the fourth record is refused");
        assert_eq!(written, 3);
    }

    /// RFC 8448 §3 (simple 1-RTT handshake): the server's application
    /// traffic secret and the key and IV derived from it.
    #[test]
    fn traffic_keys_follow_rfc_8448() {
        let hex = |s: &str| -> Vec<u8> {
            (0..s.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
                .collect()
        };
        let schedule = KeySchedule::of(CipherSuite::TLS13_AES_128_GCM_SHA256).unwrap();
        let secret = TrafficSecret::new(&hex(
            "a11af9f05531f856ad47116b45a950328204b4f44bfb6b3a4b4f1f3fcb631643",
        ))
        .unwrap();
        let mut key = [0u8; 16];
        schedule.expand_label(&secret, b"key", &mut key);
        assert_eq!(key.to_vec(), hex("9f02283b6c9c07efc26bb9f2ac92e356"));
        let (_, iv) = schedule.traffic_keys(&secret);
        assert_eq!(iv.to_vec(), hex("cf782b88dd83549aadf1e984"));
    }
}
