//! TLS over TCP for the WebSocket port, on rustls' unbuffered API.
//!
//! Why: rustls' buffered connection keeps its buffers for as long as a
//! connection lives, most of what an idle WebSocket would cost the node.
//! `UnbufferedServerConnection` leaves every buffer to the caller while
//! rustls keeps all of TLS: the handshake (1.3 and 1.2), record protection,
//! key updates and their limits, alerts, close_notify. Here the buffers
//! exist only while bytes are in flight: a connection waits for the socket
//! without one, so an idle connection holds none.
//!
//! One [`TlsStream`] carries the whole connection: the handshake
//! ([`accept`]), the HTTP request head, then the WebSocket after the 101.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, UnbufferedStatus};
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// The largest TLS record on the wire (TLS 1.2 allows 2^14 + 2048 bytes of
/// ciphertext): one read can take a whole one.
const READ_CHUNK: usize = 5 + (1 << 14) + 2048;
/// Plaintext per record the node sends. A client opens a record only once
/// all of it has arrived, so smaller records make a burst's first frames
/// readable before the rest of it, at a record's few bytes of overhead.
pub const SEAL_PLAINTEXT: usize = 4096;
/// Room for one record's header, nonce, tag and content type.
const RECORD_OVERHEAD: usize = 64;
/// Encrypted bytes a writer may leave queued before it waits for the socket.
const MAX_PENDING_OUT: usize = 256 * 1024;
/// Output buffer first offered to rustls for a handshake record.
const ENCODE_GUESS: usize = 4096;
/// A runtime thread's sealing buffer is dropped after a write that grew it
/// past this, so one large message does not pin its size for good.
const SEALING_KEEP: usize = 64 * 1024;

thread_local! {
    /// Where a write's records are sealed: the socket takes them from here,
    /// and only what it does not take is copied to the connection's own
    /// buffer, so a write that goes out at once allocates nothing.
    static SEALING: RefCell<Outgoing> = RefCell::new(Outgoing::default());
}

#[derive(Debug, thiserror::Error)]
pub enum TlsStreamError {
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    #[error("TLS encryption: {0}")]
    Encrypt(#[from] EncryptError),
    #[error("TLS handshake record: {0}")]
    Encode(#[from] EncodeError),
    #[error("TCP closed without close_notify")]
    Truncated,
    #[error("TCP closed during the TLS handshake")]
    HandshakeEof,
    #[error("TLS connection already closed")]
    Closed,
    #[error("TLS connection failed earlier")]
    Failed,
    #[error("client sent early data, which the node does not accept")]
    EarlyData,
    #[error("unexpected TLS connection state {0}")]
    UnexpectedState(String),
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl From<TlsStreamError> for io::Error {
    fn from(e: TlsStreamError) -> io::Error {
        if let TlsStreamError::Io(e) = e {
            return e;
        }
        let kind = match &e {
            TlsStreamError::Tls(rustls::Error::AlertReceived(_)) => {
                io::ErrorKind::ConnectionAborted
            }
            TlsStreamError::Tls(_) | TlsStreamError::EarlyData => io::ErrorKind::InvalidData,
            TlsStreamError::Truncated | TlsStreamError::HandshakeEof => {
                io::ErrorKind::UnexpectedEof
            }
            TlsStreamError::Closed | TlsStreamError::Failed => io::ErrorKind::BrokenPipe,
            TlsStreamError::Encrypt(_)
            | TlsStreamError::Encode(_)
            | TlsStreamError::UnexpectedState(_)
            | TlsStreamError::Io(_) => io::ErrorKind::Other,
        };
        io::Error::new(kind, e)
    }
}

/// A server-side TLS connection over TCP.
pub struct TlsStream {
    tcp: TcpStream,
    conn: UnbufferedServerConnection,
    /// Received bytes rustls has not discarded yet: a record that is not
    /// complete, or handshake fragments it is joining.
    incoming: Vec<u8>,
    /// Plaintext the reader has not taken yet, from `plain_at`.
    plain: Vec<u8>,
    plain_at: usize,
    /// Encrypted bytes the socket has not taken yet.
    out: Outgoing,
    /// The client's close_notify came: reads see end of stream.
    peer_closed: bool,
    close_sent: bool,
    /// A fatal error ended the connection (its alert already queued).
    failed: bool,
}

/// What [`TlsStream::drive`] does once rustls lets it write.
enum Goal<'a> {
    /// Only process what was received and queue what rustls has to send.
    Settle,
    Encrypt(&'a [u8]),
    CloseNotify,
}

/// Where [`TlsStream::drive`] stopped.
#[derive(Debug, PartialEq, Eq)]
enum Rest {
    /// Application data may be written (the goal was met).
    Traffic,
    /// The handshake needs more from the client.
    Blocked,
    /// close_notify both ways.
    Closed,
}

/// The TLS handshake on `tcp`, TLS 1.3 or 1.2, as `config` allows.
pub async fn accept(
    config: Arc<ServerConfig>,
    tcp: TcpStream,
) -> Result<TlsStream, TlsStreamError> {
    let conn = UnbufferedServerConnection::new(config)?;
    let mut stream = TlsStream {
        tcp,
        conn,
        incoming: Vec::new(),
        plain: Vec::new(),
        plain_at: 0,
        out: Outgoing::default(),
        peer_closed: false,
        close_sent: false,
        failed: false,
    };
    std::future::poll_fn(|cx| stream.poll_handshake(cx)).await?;
    Ok(stream)
}

/// What a rustls error says about the output buffer it was given.
enum Grow {
    To(usize),
    Fail(TlsStreamError),
}

impl From<EncryptError> for Grow {
    fn from(e: EncryptError) -> Grow {
        match e {
            EncryptError::InsufficientSize(s) => Grow::To(s.required_size),
            e => Grow::Fail(e.into()),
        }
    }
}

impl From<EncodeError> for Grow {
    fn from(e: EncodeError) -> Grow {
        match e {
            EncodeError::InsufficientSize(s) => Grow::To(s.required_size),
            e => Grow::Fail(e.into()),
        }
    }
}

/// The buffer size for `received`, which starts with a record that is not
/// complete: the whole record when its header is there, else a largest one.
fn record_room(received: &[u8]) -> usize {
    let whole = match received {
        [_, _, _, hi, lo, ..] => 5 + usize::from(u16::from_be_bytes([*hi, *lo])),
        _ => READ_CHUNK,
    };
    // rustls refuses a longer record from its header; past a handshake
    // message it is joining, the front is no header: read a chunk on.
    if whole > received.len() {
        whole
    } else {
        received.len() + READ_CHUNK
    }
}

/// Records to send: `buf[sent..filled]`. `buf` stays initialized to its
/// length, so room that was zeroed once is not zeroed again per record.
#[derive(Default)]
struct Outgoing {
    buf: Vec<u8>,
    filled: usize,
    sent: usize,
}

impl Outgoing {
    fn pending(&self) -> &[u8] {
        &self.buf[self.sent..self.filled]
    }

    fn is_empty(&self) -> bool {
        self.sent == self.filled
    }

    fn extend(&mut self, bytes: &[u8]) {
        self.buf.truncate(self.filled);
        self.buf.extend_from_slice(bytes);
        self.filled = self.buf.len();
    }

    /// Lets `write` fill room after the filled part, offering `guess` bytes
    /// first and then what rustls says it needs.
    fn append<E: Into<Grow>>(
        &mut self,
        guess: usize,
        mut write: impl FnMut(&mut [u8]) -> Result<usize, E>,
    ) -> Result<(), TlsStreamError> {
        let start = self.filled;
        let mut room = guess;
        for _ in 0..2 {
            if self.buf.len() < start + room {
                self.buf.resize(start + room, 0);
            }
            match write(&mut self.buf[start..]).map_err(Into::into) {
                Ok(n) => {
                    self.filled = start + n;
                    return Ok(());
                }
                Err(Grow::To(needed)) => room = needed,
                Err(Grow::Fail(e)) => return Err(e),
            }
        }
        Err(TlsStreamError::UnexpectedState(
            "rustls asked for more room twice".into(),
        ))
    }
}

impl TlsStream {
    /// [`Self::drive_to`] with the connection's own output buffer.
    fn drive(&mut self, goal: Goal<'_>) -> Result<Rest, TlsStreamError> {
        let mut out = std::mem::take(&mut self.out);
        let result = self.drive_to(goal, &mut out);
        self.out = out;
        result
    }

    /// [`Self::drive_on`] over `incoming`, keeping what rustls did not
    /// consume and freeing the buffer once it holds nothing.
    fn drive_to(&mut self, goal: Goal<'_>, out: &mut Outgoing) -> Result<Rest, TlsStreamError> {
        let mut incoming = std::mem::take(&mut self.incoming);
        let (result, used) = self.drive_on(&mut incoming, goal, out);
        incoming.drain(..used);
        if !incoming.is_empty() {
            self.incoming = incoming;
        }
        result
    }

    /// Runs rustls over `received` until it waits for the client or lets
    /// the node write; then does `goal`. Plaintext goes to `plain`, records
    /// rustls emits to `out`, in order. Also returns how many bytes at the
    /// front of `received` rustls is done with.
    fn drive_on(
        &mut self,
        received: &mut [u8],
        goal: Goal<'_>,
        out: &mut Outgoing,
    ) -> (Result<Rest, TlsStreamError>, usize) {
        let mut used = 0;
        loop {
            let UnbufferedStatus { mut discard, state } =
                self.conn.process_tls_records(&mut received[used..]);
            let state = match state {
                Ok(state) => state,
                Err(e) => return (Err(e.into()), used + discard),
            };
            let rest = match state {
                ConnectionState::ReadTraffic(mut traffic) => {
                    while let Some(record) = traffic.next_record() {
                        match record {
                            Ok(record) => {
                                discard += record.discard;
                                self.plain.extend_from_slice(record.payload);
                            }
                            Err(e) => return (Err(e.into()), used + discard),
                        }
                    }
                    Ok(None)
                }
                ConnectionState::EncodeTlsData(mut encode) => out
                    .append(ENCODE_GUESS, |buf| encode.encode(buf))
                    .map(|()| None),
                // Encoded records are in `out`, which goes out before
                // anything queued after them.
                ConnectionState::TransmitTlsData(transmit) => {
                    transmit.done();
                    Ok(None)
                }
                ConnectionState::PeerClosed => {
                    self.peer_closed = true;
                    Ok(None)
                }
                ConnectionState::Closed => {
                    self.peer_closed = true;
                    Ok(Some(Rest::Closed))
                }
                ConnectionState::BlockedHandshake => Ok(Some(Rest::Blocked)),
                ConnectionState::WriteTraffic(mut traffic) => match goal {
                    Goal::Settle => Ok(Some(Rest::Traffic)),
                    Goal::Encrypt(data) => data
                        .chunks(SEAL_PLAINTEXT)
                        .try_for_each(|chunk| {
                            out.append(chunk.len() + RECORD_OVERHEAD, |buf| {
                                traffic.encrypt(chunk, buf)
                            })
                        })
                        .map(|()| Some(Rest::Traffic)),
                    Goal::CloseNotify => out
                        .append(RECORD_OVERHEAD, |buf| traffic.queue_close_notify(buf))
                        .map(|()| Some(Rest::Traffic)),
                },
                ConnectionState::ReadEarlyData(_) => Err(TlsStreamError::EarlyData),
                other => Err(TlsStreamError::UnexpectedState(format!("{other:?}"))),
            };
            used += discard;
            match rest {
                Ok(None) => {}
                Ok(Some(rest)) => return (Ok(rest), used),
                Err(e) => return (Err(e), used),
            }
        }
    }

    /// Marks the connection failed and sends the alert rustls queued for
    /// `e`, if the socket takes it now.
    fn fail(&mut self, e: TlsStreamError) -> io::Error {
        if !self.failed {
            self.failed = true;
            // Once only: rustls hands out what it queued before it reads on,
            // and reading on after a fatal error could raise a second one.
            let status = self.conn.process_tls_records(&mut self.incoming);
            if let Ok(ConnectionState::EncodeTlsData(mut encode)) = status.state {
                let _ = self.out.append(ENCODE_GUESS, |buf| encode.encode(buf));
            }
            let _ = self.try_send();
            self.incoming = Vec::new();
            self.plain = Vec::new();
            self.plain_at = 0;
        }
        e.into()
    }

    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), TlsStreamError>> {
        loop {
            let rest = match self.drive(Goal::Settle) {
                Ok(rest) => rest,
                Err(e) => return Poll::Ready(Err(self.fail(e).into())),
            };
            ready!(self.poll_send(cx))?;
            if !self.conn.is_handshaking() {
                return Poll::Ready(Ok(()));
            }
            if rest == Rest::Closed {
                return Poll::Ready(Err(TlsStreamError::HandshakeEof));
            }
            match ready!(self.poll_receive(cx)) {
                Ok(0) => return Poll::Ready(Err(TlsStreamError::HandshakeEof)),
                Ok(_) => {}
                Err(e) => return Poll::Ready(Err(self.fail(e).into())),
            }
        }
    }

    /// Reads what the socket has and runs rustls over all it holds; 0 at end of
    /// stream. It waits for the socket without a buffer and reads onto the
    /// stack: heap holds only a record that arrived in part, sized for it,
    /// and later pieces are read in after it rather than copied again.
    fn poll_receive(&mut self, cx: &mut Context<'_>) -> Poll<Result<usize, TlsStreamError>> {
        loop {
            ready!(self.tcp.poll_read_ready(cx))?;
            let read = if self.incoming.is_empty() {
                let mut chunk = [0u8; READ_CHUNK];
                match self.tcp.try_read(&mut chunk) {
                    Ok(n) if n > 0 => {
                        let mut out = std::mem::take(&mut self.out);
                        let (result, used) = self.drive_on(&mut chunk[..n], Goal::Settle, &mut out);
                        self.out = out;
                        let kept = &chunk[used..n];
                        if !kept.is_empty() {
                            let mut incoming = Vec::with_capacity(record_room(kept));
                            incoming.extend_from_slice(kept);
                            self.incoming = incoming;
                        }
                        result?;
                        Ok(n)
                    }
                    read => read,
                }
            } else {
                let room = record_room(&self.incoming) - self.incoming.len();
                self.incoming.reserve_exact(room);
                match self.tcp.try_read_buf(&mut self.incoming) {
                    Ok(n) if n > 0 => {
                        self.drive(Goal::Settle)?;
                        Ok(n)
                    }
                    read => read,
                }
            };
            match read {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                read => return Poll::Ready(Ok(read?)),
            }
        }
    }

    /// Writes `out` until the socket is full; frees it once all went.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(poll_send_from(&mut self.tcp, cx, &mut self.out))?;
        self.out = Outgoing::default();
        Poll::Ready(Ok(()))
    }

    /// [`Self::poll_send`] for the reader: what the socket takes now,
    /// without waiting (the writer's flush sends the rest).
    fn try_send(&mut self) -> io::Result<()> {
        while !self.out.is_empty() {
            match self.tcp.try_write(self.out.pending()) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.out.sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        self.out = Outgoing::default();
        Ok(())
    }

    /// Seals `data` in this thread's sealing buffer and sends what the
    /// socket takes now; the rest, or all of it when earlier records are
    /// still queued, goes to `out` for the flush.
    fn encrypt_and_send(&mut self, cx: &mut Context<'_>, data: &[u8]) -> io::Result<()> {
        let mut sealing = SEALING.with(|s| std::mem::take(&mut *s.borrow_mut()));
        sealing.filled = 0;
        sealing.sent = 0;
        let result = self.drive_to(Goal::Encrypt(data), &mut sealing);
        // Records sealed before an error go out before its alert.
        let sent = if self.out.is_empty() {
            poll_send_from(&mut self.tcp, cx, &mut sealing)
        } else {
            Poll::Pending
        };
        self.out.extend(sealing.pending());
        if sealing.buf.len() <= SEALING_KEEP {
            SEALING.with(|s| *s.borrow_mut() = sealing);
        }
        match result {
            Ok(Rest::Traffic) => {}
            Ok(_) => return Err(TlsStreamError::Closed.into()),
            Err(e) => return Err(self.fail(e)),
        }
        match sent {
            Poll::Ready(Err(e)) => Err(e),
            _ => Ok(()),
        }
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

    /// The negotiated TLS version (for tests/tls_stream.rs).
    #[cfg(feature = "fuzzing")]
    pub fn protocol_version(&self) -> Option<rustls::ProtocolVersion> {
        self.conn.protocol_version()
    }

    /// Bytes of buffer the connection holds: none while it is idle (for
    /// tests/tls_stream.rs).
    #[cfg(feature = "fuzzing")]
    pub fn buffer_capacity(&self) -> usize {
        self.incoming.capacity() + self.plain.capacity() + self.out.buf.capacity()
    }

    /// Whether the handshake was full or resumed (for tests/tls_stream.rs).
    #[cfg(feature = "fuzzing")]
    pub fn handshake_kind(&self) -> Option<rustls::HandshakeKind> {
        self.conn.handshake_kind()
    }
}

impl AsyncRead for TlsStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.plain_at < this.plain.len() {
                this.take_plain(buf);
                return Poll::Ready(Ok(()));
            }
            if this.failed {
                return Poll::Ready(Err(TlsStreamError::Failed.into()));
            }
            if this.peer_closed || buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            // rustls runs only over what arrives: a reader polled with
            // nothing new (its task woken for the writer) costs no call.
            match ready!(this.poll_receive(cx)) {
                Ok(0) => return Poll::Ready(Err(this.fail(TlsStreamError::Truncated))),
                Ok(_) => {}
                Err(e) => return Poll::Ready(Err(this.fail(e))),
            }
            // A KeyUpdate's answer or an alert rustls queued while reading.
            this.try_send()?;
        }
    }
}

impl AsyncWrite for TlsStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.failed {
            return Poll::Ready(Err(TlsStreamError::Failed.into()));
        }
        if this.close_sent {
            return Poll::Ready(Err(TlsStreamError::Closed.into()));
        }
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if this.out.pending().len() >= MAX_PENDING_OUT {
            ready!(this.poll_send(cx))?;
        }
        // What the socket takes now goes now; the rest at the flush.
        this.encrypt_and_send(cx, data)?;
        if let Poll::Ready(Err(e)) = this.poll_send(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.close_sent && !this.failed {
            this.close_sent = true;
            if let Err(e) = this.drive(Goal::CloseNotify) {
                return Poll::Ready(Err(this.fail(e)));
            }
        }
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.tcp).poll_shutdown(cx)
    }
}

/// Writes `out`'s pending bytes until the socket is full.
fn poll_send_from(
    tcp: &mut TcpStream,
    cx: &mut Context<'_>,
    out: &mut Outgoing,
) -> Poll<io::Result<()>> {
    while !out.is_empty() {
        let n = ready!(Pin::new(&mut *tcp).poll_write(cx, out.pending()))?;
        if n == 0 {
            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
        }
        out.sent += n;
    }
    Poll::Ready(Ok(()))
}
