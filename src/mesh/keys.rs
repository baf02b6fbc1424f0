//! Zenoh key expressions of the mesh, pure (see `mesh/README.md`).
//!
//! - `prscd/<app>/<channel>`: a channel's traffic, one msgpack Signalling per sample.
//! - `prscd/<app>/<channel>/<mesh_id>/<sid>/<client_id>`: a liveliness token
//!   per channel membership, held by the node the peer is connected to.
//!
//! App and channel are chunks of their own, so a node subscribes to exactly
//! the channels its peers joined and apps never share a key. Each chunk is
//! percent-encoded: `%`, `/`, the wildcard and reserved characters
//! (`* $ ? # @`) and ASCII control characters and space become `%XX`, so any
//! channel name or client id makes a valid, unambiguous chunk.

/// First chunk of every prscd key.
pub const ROOT: &str = "prscd";

fn must_escape(b: u8) -> bool {
    matches!(b, b'%' | b'/' | b'*' | b'$' | b'?' | b'#' | b'@') || b <= b' ' || b == 0x7f
}

/// Percent-encodes one chunk.
pub fn encode_chunk(s: &str) -> String {
    crate::percent::encode(s, must_escape)
}

/// Reverses [`encode_chunk`]; `None` on a broken escape.
pub fn decode_chunk(s: &str) -> Option<String> {
    crate::percent::decode(s)
}

/// `prscd/<app>/<channel>`: where a channel's messages are published.
pub fn channel_key(app: &str, channel: &str) -> String {
    format!("{ROOT}/{}/{}", encode_chunk(app), encode_chunk(channel))
}

/// The liveliness token of one membership.
pub fn member_key(member: &Member) -> String {
    format!(
        "{}/{}/{}/{}",
        channel_key(&member.app, &member.channel),
        encode_chunk(&member.mesh_id),
        member.sid,
        encode_chunk(&member.client_id)
    )
}

/// Matches every membership token of a channel.
pub fn members_of(app: &str, channel: &str) -> String {
    format!("{}/*/*/*", channel_key(app, channel))
}

/// Matches every membership token of an app, in any channel.
pub fn members_of_app(app: &str) -> String {
    format!("{ROOT}/{}/*/*/*/*", encode_chunk(app))
}

/// One peer's membership of one channel on one node.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Member {
    pub app: String,
    pub channel: String,
    pub mesh_id: String,
    pub sid: u64,
    pub client_id: String,
}

/// Parses a membership token key; `None` if it is not one.
pub fn parse_member(key: &str) -> Option<Member> {
    let mut chunks = key.split('/');
    if chunks.next()? != ROOT {
        return None;
    }
    let app = decode_chunk(chunks.next()?)?;
    let channel = decode_chunk(chunks.next()?)?;
    let mesh_id = decode_chunk(chunks.next()?)?;
    let sid = chunks.next()?.parse().ok()?;
    let client_id = decode_chunk(chunks.next()?)?;
    if chunks.next().is_some() {
        return None;
    }
    Some(Member {
        app,
        channel,
        mesh_id,
        sid,
        client_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_name_makes_a_valid_unambiguous_chunk() {
        for name in [
            "room-1",
            "a/b",
            "**",
            "$*",
            "50%",
            "@admin",
            "x y\t",
            "héllo ✓/*",
            "?#",
        ] {
            let chunk = encode_chunk(name);
            assert!(
                !chunk.contains(['/', '*', '$', '?', '#', '@', ' ']),
                "{chunk}"
            );
            assert_eq!(decode_chunk(&chunk).as_deref(), Some(name));
            let key = channel_key("app", name);
            zenoh::key_expr::KeyExpr::try_from(key.as_str())
                .unwrap_or_else(|e| panic!("{key}: {e}"));
        }
        assert_eq!(decode_chunk("%zz"), None);
    }

    #[test]
    fn member_keys_roundtrip_and_match_their_channel() {
        let m = Member {
            app: "acme".into(),
            channel: "room/1".into(),
            mesh_id: "eu-west".into(),
            sid: 42,
            client_id: "alice*".into(),
        };
        let key = member_key(&m);
        assert_eq!(key, "prscd/acme/room%2F1/eu-west/42/alice%2A");
        assert_eq!(parse_member(&key), Some(m));
        let pattern = zenoh::key_expr::KeyExpr::try_from(members_of("acme", "room/1")).unwrap();
        let k = zenoh::key_expr::KeyExpr::try_from(key.as_str()).unwrap();
        assert!(pattern.intersects(&k));
        let other = zenoh::key_expr::KeyExpr::try_from(members_of("acme", "room")).unwrap();
        assert!(!other.intersects(&k));
        let app = zenoh::key_expr::KeyExpr::try_from(members_of_app("acme")).unwrap();
        assert!(app.intersects(&k));
        let message = zenoh::key_expr::KeyExpr::try_from(channel_key("acme", "room/1")).unwrap();
        assert!(
            !app.intersects(&message),
            "the app watch sees tokens, not messages"
        );
        let other_app = zenoh::key_expr::KeyExpr::try_from(members_of_app("acme2")).unwrap();
        assert!(!other_app.intersects(&k));
        assert_eq!(parse_member("prscd/acme/room"), None);
        assert_eq!(parse_member("other/a/b/c/1/d"), None);
        assert_eq!(parse_member("prscd/a/b/c/notanumber/d"), None);
    }
}
