//! The mesh's membership payloads, pure msgpack (see `mesh/README.md`).
//!
//! Why rosters: a node says who joins and leaves a channel in the channel's
//! own traffic (`channel_join` and `peer_offline`, the sid in the
//! attachment), which reaches only the nodes already subscribed. A node that
//! links a channel, or sees another node come back after a partition, asks
//! for the current members instead: a query on
//! `prscd/<app>/<channel>/@member/<mesh_id>`, answered by each node with
//!
//!   `{"members": [{"sid": "<sid>", "p": "<client_id>"}, …]}`
//!
//! `sid` is a decimal string, as in the publish attachment; unknown keys are
//! ignored.

use rmpv::Value;

/// One peer's membership of a channel on the node that names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    pub sid: u64,
    pub client_id: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MembershipError {
    #[error("not a msgpack map")]
    NotAMap,
    #[error("missing or invalid `{0}`")]
    Field(&'static str),
}

pub fn encode_roster<'a>(members: impl ExactSizeIterator<Item = (u64, &'a str)>) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + members.len() * 40);
    rmp::encode::write_map_len(&mut out, 1).expect("vec");
    rmp::encode::write_str(&mut out, "members").expect("vec");
    rmp::encode::write_array_len(&mut out, members.len() as u32).expect("vec");
    for (sid, client_id) in members {
        rmp::encode::write_map_len(&mut out, 2).expect("vec");
        rmp::encode::write_str(&mut out, "sid").expect("vec");
        rmp::encode::write_str(&mut out, &sid.to_string()).expect("vec");
        rmp::encode::write_str(&mut out, "p").expect("vec");
        rmp::encode::write_str(&mut out, client_id).expect("vec");
    }
    out
}

pub fn decode_roster(bytes: &[u8]) -> Result<Vec<Membership>, MembershipError> {
    let entries = map(bytes)?;
    let Some(Value::Array(members)) = lookup(&entries, "members") else {
        return Err(MembershipError::Field("members"));
    };
    members
        .iter()
        .map(|m| match m {
            Value::Map(entries) => member(entries),
            _ => Err(MembershipError::Field("members")),
        })
        .collect()
}

fn map(bytes: &[u8]) -> Result<Vec<(Value, Value)>, MembershipError> {
    match rmpv::decode::read_value(&mut &bytes[..]) {
        Ok(Value::Map(entries)) => Ok(entries),
        _ => Err(MembershipError::NotAMap),
    }
}

fn lookup<'a>(entries: &'a [(Value, Value)], key: &str) -> Option<&'a Value> {
    entries
        .iter()
        .find(|(k, _)| k.as_str() == Some(key))
        .map(|(_, v)| v)
}

fn member(entries: &[(Value, Value)]) -> Result<Membership, MembershipError> {
    let sid = lookup(entries, "sid")
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
        .ok_or(MembershipError::Field("sid"))?;
    let client_id = lookup(entries, "p")
        .and_then(Value::as_str)
        .filter(|p| !p.is_empty())
        .ok_or(MembershipError::Field("p"))?;
    Ok(Membership {
        sid,
        client_id: client_id.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rosters_roundtrip_empty_or_not() {
        let members = [(1u64, "a"), (2, "b")];
        let roster = decode_roster(&encode_roster(members.iter().copied())).unwrap();
        assert_eq!(roster.len(), 2);
        assert_eq!(roster[1].sid, 2);
        assert_eq!(roster[1].client_id, "b");
        assert_eq!(decode_roster(&encode_roster([].into_iter())).unwrap(), []);
    }

    #[test]
    fn broken_payloads_are_errors() {
        let value = |v: Value| {
            let mut out = Vec::new();
            rmpv::encode::write_value(&mut out, &v).unwrap();
            out
        };
        assert_eq!(decode_roster(b"junk"), Err(MembershipError::NotAMap));
        let roster = |sid: &str, p: &str| {
            value(Value::Map(vec![(
                "members".into(),
                Value::Array(vec![Value::Map(vec![
                    ("sid".into(), sid.into()),
                    ("p".into(), p.into()),
                ])]),
            )]))
        };
        assert_eq!(decode_roster(&roster("7", "a")).unwrap()[0].sid, 7);
        assert_eq!(
            decode_roster(&roster("x", "a")),
            Err(MembershipError::Field("sid"))
        );
        assert_eq!(
            decode_roster(&roster("1", "")),
            Err(MembershipError::Field("p"))
        );
        assert_eq!(
            decode_roster(&value(Value::Map(vec![("members".into(), 3.into())]))),
            Err(MembershipError::Field("members"))
        );
        assert_eq!(
            decode_roster(&value(Value::Map(vec![(
                "members".into(),
                Value::Array(vec![1.into()])
            )]))),
            Err(MembershipError::Field("members"))
        );
    }
}
