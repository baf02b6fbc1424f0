//! The client side of a WebSocket (RFC 6455) over the bench's TLS stream
//! (or plain TCP, for `ws://` comparisons), framed by hand. Why not
//! tokio-tungstenite: in a fan-out with the client on one thread, the
//! client's thread bounds every server's rate, and tokio-tungstenite's
//! per-frame work (its frame codec, a zeroed read buffer, a waker registered
//! per poll) was a large part of it. Here a frame is a header parsed in
//! place and a `Bytes` split off one read buffer.
//!
//! What a benchmark client needs and no more: the upgrade handshake (with the
//! accept key checked), binary and text messages, fragmented ones
//! reassembled, pings answered, a close ends the stream.

use anyhow::{bail, ensure, Context as _};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::Utf8Bytes;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::either::Either;

/// Largest message accepted from a server.
const MAX_MESSAGE: usize = 16 << 20;
/// Largest upgrade response accepted.
const MAX_RESPONSE_HEAD: usize = 16 << 10;
/// Free room in the read buffer before each socket read.
const READ_ROOM: usize = 4096;

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;
/// A close frame's payload: status 1000, normal closure.
const CLOSE_NORMAL: [u8; 2] = 1000u16.to_be_bytes();

/// A client's socket: TLS, or plain TCP for `ws://`.
pub type Io = Either<TlsStream<TcpStream>, TcpStream>;

pub struct WsClient {
    io: Io,
    /// Read from the socket, not yet parsed into frames.
    rx: BytesMut,
    /// A fragmented message being reassembled: its opcode and data so far.
    fragments: Option<(u8, BytesMut)>,
    tx: Vec<u8>,
    /// Masking keys (xorshift; loopback benchmarking has no proxy to fool).
    mask_state: u32,
}

impl WsClient {
    /// Upgrades `io` to a WebSocket at `path` (with its query) on `host`.
    pub async fn connect(mut io: Io, host: &str, path: &str) -> anyhow::Result<WsClient> {
        let key = tokio_tungstenite::tungstenite::handshake::client::generate_key();
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        io.write_all(request.as_bytes()).await?;
        io.flush().await?;
        let mut rx = BytesMut::with_capacity(READ_ROOM);
        let head_len = loop {
            if let Some(i) = rx.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            ensure!(rx.len() < MAX_RESPONSE_HEAD, "upgrade response too long");
            rx.reserve(READ_ROOM);
            if io.read_buf(&mut rx).await? == 0 {
                bail!("connection closed during the upgrade");
            }
        };
        let head = std::str::from_utf8(&rx[..head_len]).context("upgrade response not UTF-8")?;
        let mut lines = head.split("\r\n");
        let status = lines.next().unwrap_or_default();
        ensure!(
            status.split(' ').nth(1) == Some("101"),
            "upgrade refused: {status}"
        );
        let accept = lines
            .filter_map(|l| l.split_once(':'))
            .find(|(name, _)| name.trim().eq_ignore_ascii_case("sec-websocket-accept"))
            .map(|(_, v)| v.trim());
        ensure!(
            accept == Some(derive_accept_key(key.as_bytes()).as_str()),
            "wrong Sec-WebSocket-Accept in the upgrade response"
        );
        rx.advance(head_len);
        let seed = key
            .bytes()
            .fold(0x9E37_79B9u32, |h, b| h.rotate_left(5) ^ u32::from(b));
        Ok(WsClient {
            io,
            rx,
            fragments: None,
            tx: Vec::new(),
            mask_state: seed | 1,
        })
    }

    /// Writes `messages` in one flush.
    pub async fn send(&mut self, messages: Vec<Message>) -> anyhow::Result<()> {
        for m in messages {
            let (op, data): (u8, Bytes) = match m {
                Message::Binary(b) => (OP_BINARY, b),
                Message::Text(t) => (OP_TEXT, t.into()),
                Message::Ping(p) => (OP_PING, p),
                Message::Pong(p) => (OP_PONG, p),
                Message::Close(_) => (OP_CLOSE, Bytes::from_static(&CLOSE_NORMAL)),
                Message::Frame(_) => bail!("raw frames are not sent"),
            };
            self.encode(op, &data);
        }
        self.flush().await
    }

    /// The next message; `Ok(None)` when the server closed the stream.
    /// Cancel safe: what was read stays in the buffer.
    pub async fn recv(&mut self) -> anyhow::Result<Option<Message>> {
        loop {
            while let Some((op, data)) = self.next_frame()? {
                if let Some(m) = self.message(op, data).await? {
                    return Ok(Some(m));
                }
            }
            self.rx.reserve(READ_ROOM);
            if self.io.read_buf(&mut self.rx).await? == 0 {
                return Ok(None);
            }
        }
    }

    /// Sends a close (1000) and flushes; does not wait for the answer.
    pub async fn close(mut self) {
        self.encode(OP_CLOSE, &CLOSE_NORMAL);
        if self.flush().await.is_ok() {
            let _ = self.io.shutdown().await;
        }
    }

    /// A complete frame's opcode and (unmasked) payload, if buffered.
    fn next_frame(&mut self) -> anyhow::Result<Option<(u8, Bytes)>> {
        let Some(h) = parse_header(&self.rx)? else {
            return Ok(None);
        };
        let whole = h.len + h.payload_len;
        if self.rx.len() < whole {
            self.rx.reserve(whole - self.rx.len());
            return Ok(None);
        }
        self.rx.advance(h.len);
        let mut data = self.rx.split_to(h.payload_len);
        if let Some(mask) = h.mask {
            apply_mask(&mut data, mask);
        }
        Ok(Some((h.first, data.freeze())))
    }

    /// A whole message out of one frame, answering pings on the way.
    async fn message(&mut self, first: u8, data: Bytes) -> anyhow::Result<Option<Message>> {
        let (fin, op) = (first & 0x80 != 0, first & 0x0F);
        match op {
            OP_PING => {
                self.encode(OP_PONG, &data);
                self.flush().await?;
                Ok(None)
            }
            OP_PONG => Ok(None),
            OP_CLOSE => {
                let code = (data.len() >= 2).then(|| u16::from_be_bytes([data[0], data[1]]));
                bail!("closed by the server: code {code:?}")
            }
            OP_TEXT | OP_BINARY if fin => Ok(Some(to_message(op, data)?)),
            OP_TEXT | OP_BINARY => {
                ensure!(
                    self.fragments.is_none(),
                    "new message inside a fragmented one"
                );
                self.fragments = Some((op, BytesMut::from(data)));
                Ok(None)
            }
            OP_CONTINUATION => {
                let Some((_, so_far)) = self.fragments.as_mut() else {
                    bail!("continuation frame without a message");
                };
                ensure!(so_far.len() + data.len() <= MAX_MESSAGE, "message too long");
                so_far.extend_from_slice(&data);
                if !fin {
                    return Ok(None);
                }
                let (op, whole) = self.fragments.take().expect("checked above");
                Ok(Some(to_message(op, whole.freeze())?))
            }
            other => bail!("unknown opcode {other:#x}"),
        }
    }

    fn encode(&mut self, op: u8, data: &[u8]) {
        self.tx.push(0x80 | op);
        match data.len() {
            n @ 0..=125 => self.tx.push(0x80 | n as u8),
            n @ 126..=0xFFFF => {
                self.tx.push(0x80 | 126);
                self.tx.put_u16(n as u16);
            }
            n => {
                self.tx.push(0x80 | 127);
                self.tx.put_u64(n as u64);
            }
        }
        let mask = self.next_mask();
        self.tx.extend_from_slice(&mask);
        let start = self.tx.len();
        self.tx.extend_from_slice(data);
        apply_mask(&mut self.tx[start..], mask);
    }

    async fn flush(&mut self) -> anyhow::Result<()> {
        let written = self.io.write_all(&self.tx).await;
        self.tx.clear();
        written?;
        self.io.flush().await?;
        Ok(())
    }

    fn next_mask(&mut self) -> [u8; 4] {
        let mut x = self.mask_state;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.mask_state = x;
        x.to_be_bytes()
    }
}

/// A frame's header, as read off the buffer.
#[derive(Debug, PartialEq, Eq)]
struct Header {
    /// FIN, RSV and opcode.
    first: u8,
    /// Bytes before the payload.
    len: usize,
    payload_len: usize,
    mask: Option<[u8; 4]>,
}

/// The header of the frame at the start of `buf`, if it is complete.
fn parse_header(buf: &[u8]) -> anyhow::Result<Option<Header>> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let (first, second) = (buf[0], buf[1]);
    ensure!(
        first & 0x70 == 0,
        "reserved bits set (no extension was agreed)"
    );
    let masked = second & 0x80 != 0;
    let (len, mut header) = match second & 0x7F {
        126 if buf.len() < 4 => return Ok(None),
        126 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
        127 if buf.len() < 10 => return Ok(None),
        127 => {
            let n = u64::from_be_bytes(buf[2..10].try_into().expect("8 bytes"));
            (usize::try_from(n).unwrap_or(usize::MAX), 10)
        }
        n => (n as usize, 2),
    };
    ensure!(len <= MAX_MESSAGE, "frame of {len} bytes is too long");
    let mask = if masked {
        if buf.len() < header + 4 {
            return Ok(None);
        }
        header += 4;
        Some(buf[header - 4..header].try_into().expect("4 bytes"))
    } else {
        None
    };
    Ok(Some(Header {
        first,
        len: header,
        payload_len: len,
        mask,
    }))
}

fn apply_mask(data: &mut [u8], mask: [u8; 4]) {
    for (i, b) in data.iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

fn to_message(op: u8, data: Bytes) -> anyhow::Result<Message> {
    Ok(if op == OP_TEXT {
        Message::Text(Utf8Bytes::try_from(data).context("text message not UTF-8")?)
    } else {
        Message::Binary(data)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(first: u8, len: usize, payload_len: usize, mask: Option<[u8; 4]>) -> Option<Header> {
        Some(Header {
            first,
            len,
            payload_len,
            mask,
        })
    }

    #[test]
    fn headers_of_each_length_form() {
        assert_eq!(parse_header(&[0x82]).unwrap(), None);
        assert_eq!(
            parse_header(&[0x82, 5, 0, 0]).unwrap(),
            header(0x82, 2, 5, None)
        );
        assert_eq!(parse_header(&[0x82, 126, 1]).unwrap(), None);
        assert_eq!(
            parse_header(&[0x81, 126, 1, 0]).unwrap(),
            header(0x81, 4, 256, None)
        );
        let mut long = vec![0x02, 127];
        long.extend_from_slice(&70_000u64.to_be_bytes());
        assert_eq!(parse_header(&long).unwrap(), header(0x02, 10, 70_000, None));
        assert_eq!(
            parse_header(&[0x89, 0x80 | 1, 1, 2, 3, 4]).unwrap(),
            header(0x89, 6, 1, Some([1, 2, 3, 4]))
        );
        assert!(
            parse_header(&[0xC2, 1]).is_err(),
            "RSV1 without an extension"
        );
        let mut huge = vec![0x82, 127];
        huge.extend_from_slice(&u64::MAX.to_be_bytes());
        assert!(parse_header(&huge).is_err());
    }

    #[test]
    fn masking_twice_gives_the_data_back() {
        let mut data = b"hello, websocket".to_vec();
        apply_mask(&mut data, [0xA1, 0xB2, 0xC3, 0xD4]);
        assert_ne!(&data, b"hello, websocket");
        apply_mask(&mut data, [0xA1, 0xB2, 0xC3, 0xD4]);
        assert_eq!(&data, b"hello, websocket");
    }
}
