//! The zenoh attachment of a node's publish (`Origin`): what a backend or
//! another node reads to learn a sample's sender, send time and trace, and
//! the stamp by which receiving nodes drop copies (`Stamp`).

/// A node's stamp on a publication.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Stamp {
    /// Random per run of the node: a restart starts a new sequence.
    pub incarnation: u64,
    pub seq: u64,
}

/// The zenoh attachment of a node's publish: where it came from, when, and
/// the W3C trace context of its publish span, and its [`Stamp`]. msgpack map
/// `{"ts": u64 µs since the epoch, "sid": str, "traceparent": str, "inc":
/// u64, "seq": u64}`; every key optional (a stamp needs both `inc` and
/// `seq`), unknown keys ignored (backends may send their own).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origin {
    pub sid: Option<u64>,
    pub sent_us: u64,
    pub traceparent: Option<String>,
    pub stamp: Option<Stamp>,
}

impl Origin {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(96);
        let n = 1
            + u32::from(self.sid.is_some())
            + u32::from(self.traceparent.is_some())
            + 2 * u32::from(self.stamp.is_some());
        rmp::encode::write_map_len(&mut out, n).expect("vec");
        rmp::encode::write_str(&mut out, "ts").expect("vec");
        rmp::encode::write_uint(&mut out, self.sent_us).expect("vec");
        if let Some(sid) = self.sid {
            rmp::encode::write_str(&mut out, "sid").expect("vec");
            rmp::encode::write_str(&mut out, &sid.to_string()).expect("vec");
        }
        if let Some(tp) = &self.traceparent {
            rmp::encode::write_str(&mut out, "traceparent").expect("vec");
            rmp::encode::write_str(&mut out, tp).expect("vec");
        }
        if let Some(stamp) = self.stamp {
            rmp::encode::write_str(&mut out, "inc").expect("vec");
            rmp::encode::write_uint(&mut out, stamp.incarnation).expect("vec");
            rmp::encode::write_str(&mut out, "seq").expect("vec");
            rmp::encode::write_uint(&mut out, stamp.seq).expect("vec");
        }
        out
    }

    /// Whatever can be read; a foreign or broken attachment gives defaults.
    pub fn decode(bytes: &[u8]) -> Origin {
        let mut origin = Origin::default();
        let Ok(rmpv::Value::Map(entries)) = rmpv::decode::read_value(&mut &bytes[..]) else {
            return origin;
        };
        let (mut inc, mut seq) = (None, None);
        for (k, v) in entries {
            match (k.as_str(), v) {
                (Some("inc"), v) => inc = v.as_u64(),
                (Some("seq"), v) => seq = v.as_u64(),
                (Some("sid"), rmpv::Value::String(s)) => {
                    origin.sid = s.as_str().and_then(|s| s.parse().ok())
                }
                (Some("ts"), v) => origin.sent_us = v.as_u64().unwrap_or(0),
                (Some("traceparent"), rmpv::Value::String(s)) => origin.traceparent = s.into_str(),
                _ => {}
            }
        }
        if let (Some(incarnation), Some(seq)) = (inc, seq) {
            origin.stamp = Some(Stamp { incarnation, seq });
        }
        origin
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attachment_roundtrip() {
        let origin = Origin {
            sid: Some(123456),
            sent_us: 1_700_000_000_000_000,
            traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
            stamp: Some(Stamp {
                incarnation: u64::MAX,
                seq: 3,
            }),
        };
        assert_eq!(Origin::decode(&origin.encode()), origin);
        assert_eq!(Origin::decode(b"junk"), Origin::default());
        let bare = Origin {
            sid: None,
            sent_us: 5,
            traceparent: None,
            stamp: None,
        };
        assert_eq!(Origin::decode(&bare.encode()), bare);
        // Half a stamp is none.
        let mut half = Vec::new();
        rmp::encode::write_map_len(&mut half, 1).unwrap();
        rmp::encode::write_str(&mut half, "seq").unwrap();
        rmp::encode::write_uint(&mut half, 9).unwrap();
        assert_eq!(Origin::decode(&half).stamp, None);
    }
}
