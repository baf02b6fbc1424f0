//! The zenoh attachment of a node's publish (`Origin`): what a backend or
//! another node reads to learn a sample's sender, send time and trace.

/// The zenoh attachment of a node's publish: where it came from, when, and
/// the W3C trace context of its publish span. msgpack map
/// `{"ts": u64 µs since the epoch, "sid": str, "traceparent": str}`; every
/// key optional, unknown keys ignored (backends may send their own).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origin {
    pub sid: Option<u64>,
    pub sent_us: u64,
    pub traceparent: Option<String>,
}

impl Origin {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(96);
        let n = 1 + u32::from(self.sid.is_some()) + u32::from(self.traceparent.is_some());
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
        out
    }

    /// Whatever can be read; a foreign or broken attachment gives defaults.
    pub fn decode(bytes: &[u8]) -> Origin {
        let mut origin = Origin::default();
        let Ok(rmpv::Value::Map(entries)) = rmpv::decode::read_value(&mut &bytes[..]) else {
            return origin;
        };
        for (k, v) in entries {
            match (k.as_str(), v) {
                (Some("sid"), rmpv::Value::String(s)) => {
                    origin.sid = s.as_str().and_then(|s| s.parse().ok())
                }
                (Some("ts"), v) => origin.sent_us = v.as_u64().unwrap_or(0),
                (Some("traceparent"), rmpv::Value::String(s)) => origin.traceparent = s.into_str(),
                _ => {}
            }
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
        };
        assert_eq!(Origin::decode(&origin.encode()), origin);
        assert_eq!(Origin::decode(b"junk"), Origin::default());
        let bare = Origin {
            sid: None,
            sent_us: 5,
            traceparent: None,
        };
        assert_eq!(Origin::decode(&bare.encode()), bare);
    }
}
