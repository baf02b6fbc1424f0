//! WebTransport stream framing: a stream is back-to-back msgpack values,
//! cut wherever QUIC delivers them. The first byte picks the chunk size the
//! rest arrives in. Oracle: the messages split off are exactly the input's
//! prefix, each is one value that rmpv reads to its end, and cutting the
//! same bytes differently yields the same messages.
#![no_main]
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use prscd_wire::protocol::{self, DecodeError};

const MAX: usize = 4096;

/// The node's stream reader's splitting, fed `chunk` bytes at a time.
fn split(stream: &[u8], chunk: usize) -> (Vec<Vec<u8>>, bool) {
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut scan = protocol::ValueScan::default();
    for piece in stream.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            match scan.next(&buf) {
                Ok(len) if len <= MAX => {
                    assert_eq!(protocol::value_len(&buf), Ok(len));
                    out.push(buf.split_to(len).to_vec());
                }
                Ok(_) => return (out, false),
                Err(DecodeError::Incomplete) => break,
                Err(_) => return (out, false),
            }
        }
        if buf.len() > MAX {
            return (out, false);
        }
    }
    (out, true)
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, stream)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(first % 64) + 1;
    let (messages, _) = split(stream, chunk);
    let joined: Vec<u8> = messages.concat();
    assert_eq!(&stream[..joined.len()], &joined[..]);
    for m in &messages {
        let mut rest = &m[..];
        if rmpv::decode::read_value(&mut rest).is_ok() {
            assert!(rest.is_empty(), "rmpv read less than value_len");
        }
    }
    let (whole, _) = split(stream, stream.len().max(1));
    assert!(whole.starts_with(&messages) || messages.starts_with(&whole));
});
