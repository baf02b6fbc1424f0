//! Zenoh key expressions of the mesh, pure (see `mesh/README.md`).
//!
//! - `prscd/<app>/<channel>`: a channel's traffic, one msgpack Signalling per sample.
//! - `prscd/<app>/@node/<mesh_id>`: a liveliness token, held by node
//!   `mesh_id` while it has members in the app.
//! - `prscd/<app>/<channel>/@member/<mesh_id>`: that node's roster of the
//!   channel, answered to queries.
//! - `prscd/@presence/<mesh_id>/<app>`: that node's users of the app, for
//!   the presence API, answered to queries (`occupancy::NodePresence`, JSON).
//! - `prscd/@disconnect/<app>/<id>`: a put asks every node to close that
//!   user's connections.
//! - `prscd/@live/<mesh_id>`: a liveliness token every node holds while it
//!   runs; the live node with the smallest MESH_ID posts the webhooks.
//! - `prscd/@console/<mesh_id>`: that node's summary for the console,
//!   answered to queries (`console::NodeSummary`, JSON).
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

/// Chunk of the node tokens, after the app (verbatim: `*` and `**` never
/// match it, so `prscd/<app>/**` stays pure traffic).
pub const NODES: &str = "@node";
/// Chunk of a channel's roster queries and replies.
pub const MEMBERS: &str = "@member";

/// Liveliness token of node `mesh_id` while it has members in the app:
/// `prscd/<app>/@node/<mesh_id>`.
pub fn node_token_key(app: &str, mesh_id: &str) -> String {
    format!(
        "{ROOT}/{}/{NODES}/{}",
        encode_chunk(app),
        encode_chunk(mesh_id)
    )
}

/// Matches every node token of an app.
pub fn node_tokens_of_app(app: &str) -> String {
    format!("{ROOT}/{}/{NODES}/*", encode_chunk(app))
}

/// Parses a node token key into (app, mesh_id).
pub fn parse_node_token(key: &str) -> Option<(String, String)> {
    let [app, mesh_id] = captures(key, &[Some(ROOT), None, Some(NODES), None])?;
    Some((app, mesh_id))
}

/// Node `mesh_id`'s roster of a channel (the key of its replies):
/// `prscd/<app>/<channel>/@member/<mesh_id>`.
pub fn members_key(app: &str, channel: &str, mesh_id: &str) -> String {
    format!(
        "{}/{MEMBERS}/{}",
        channel_key(app, channel),
        encode_chunk(mesh_id)
    )
}

/// Every node's membership key of one channel: the roster query of a channel.
pub fn members_of(app: &str, channel: &str) -> String {
    format!("{}/{MEMBERS}/*", channel_key(app, channel))
}

/// One node's membership keys in every channel of an app: its roster
/// queryable, and the query for all its rosters.
pub fn node_members_of_app(app: &str, mesh_id: &str) -> String {
    format!(
        "{ROOT}/{}/*/{MEMBERS}/{}",
        encode_chunk(app),
        encode_chunk(mesh_id)
    )
}

/// Chunk of the presence API's per-node answers, after the root.
pub const PRESENCE: &str = "@presence";
/// Chunk of the presence API's disconnect requests, after the root.
pub const DISCONNECT: &str = "@disconnect";

/// Node `mesh_id`'s answer about `app`: `prscd/@presence/<mesh_id>/<app>`.
pub fn presence_key(mesh_id: &str, app: &str) -> String {
    format!(
        "{ROOT}/{PRESENCE}/{}/{}",
        encode_chunk(mesh_id),
        encode_chunk(app)
    )
}

/// What node `mesh_id` answers: its users of every app.
pub fn presence_of_node(mesh_id: &str) -> String {
    format!("{ROOT}/{PRESENCE}/{}/*", encode_chunk(mesh_id))
}

/// The query for every node's users of `app`.
pub fn presence_of_app(app: &str) -> String {
    format!("{ROOT}/{PRESENCE}/*/{}", encode_chunk(app))
}

/// Parses a [`presence_key`] into (mesh_id, app).
pub fn parse_presence_key(key: &str) -> Option<(String, String)> {
    let [mesh_id, app] = captures(key, &[Some(ROOT), Some(PRESENCE), None, None])?;
    Some((mesh_id, app))
}

/// Chunk of the nodes' liveness tokens, after the root.
pub const LIVE: &str = "@live";

/// Node `mesh_id`'s liveness token: `prscd/@live/<mesh_id>`.
pub fn live_key(mesh_id: &str) -> String {
    format!("{ROOT}/{LIVE}/{}", encode_chunk(mesh_id))
}

/// Every node's liveness token.
pub fn live_nodes() -> String {
    format!("{ROOT}/{LIVE}/*")
}

/// Parses a [`live_key`] into its MESH_ID.
pub fn parse_live_key(key: &str) -> Option<String> {
    let [mesh_id] = captures(key, &[Some(ROOT), Some(LIVE), None])?;
    Some(mesh_id)
}

/// Chunk of the nodes' console summaries, after the root.
pub const CONSOLE: &str = "@console";

/// Node `mesh_id`'s console summary: `prscd/@console/<mesh_id>`.
pub fn console_key(mesh_id: &str) -> String {
    format!("{ROOT}/{CONSOLE}/{}", encode_chunk(mesh_id))
}

/// The query for every node's console summary.
pub fn console_nodes() -> String {
    format!("{ROOT}/{CONSOLE}/*")
}

/// Parses a [`console_key`] into its MESH_ID.
pub fn parse_console_key(key: &str) -> Option<String> {
    let [mesh_id] = captures(key, &[Some(ROOT), Some(CONSOLE), None])?;
    Some(mesh_id)
}

/// Asks every node to close user `id` of `app`: `prscd/@disconnect/<app>/<id>`.
pub fn disconnect_key(app: &str, id: &str) -> String {
    format!(
        "{ROOT}/{DISCONNECT}/{}/{}",
        encode_chunk(app),
        encode_chunk(id)
    )
}

/// Every disconnect request.
pub fn disconnects() -> String {
    format!("{ROOT}/{DISCONNECT}/*/*")
}

/// Parses a [`disconnect_key`] into (app, id).
pub fn parse_disconnect_key(key: &str) -> Option<(String, String)> {
    let [app, id] = captures(key, &[Some(ROOT), Some(DISCONNECT), None, None])?;
    Some((app, id))
}

/// A node's place in a channel, as named by a membership key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NodeChannel {
    pub app: String,
    pub channel: String,
    pub mesh_id: String,
}

/// Parses `prscd/<app>/<channel>/@member/<mesh_id>`; `None` if the key is
/// not one (or has a wildcard).
pub fn parse_members_key(key: &str) -> Option<NodeChannel> {
    let [app, channel, mesh_id] = captures(key, &[Some(ROOT), None, None, Some(MEMBERS), None])?;
    Some(NodeChannel {
        app,
        channel,
        mesh_id,
    })
}

/// Matches `key` chunk by chunk against `shape`: a `Some` chunk must be
/// exactly that, a `None` one is captured (decoded, and no wildcard).
fn captures<const N: usize>(key: &str, shape: &[Option<&str>]) -> Option<[String; N]> {
    let mut chunks = key.split('/');
    let mut captured = Vec::with_capacity(N);
    for part in shape {
        let chunk = chunks.next()?;
        match part {
            Some(literal) if chunk != *literal => return None,
            Some(_) => {}
            None => captured.push(concrete(chunk)?),
        }
    }
    if chunks.next().is_some() {
        return None;
    }
    captured.try_into().ok()
}

/// The channel a key names in its third chunk, if that chunk is no wildcard.
pub fn concrete_channel(key: &str) -> Option<String> {
    concrete(key.split('/').nth(2)?)
}

fn concrete(chunk: &str) -> Option<String> {
    if chunk.contains(['*', '$']) {
        return None;
    }
    decode_chunk(chunk)
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
    fn node_and_member_keys_parse_back_and_match_their_patterns() {
        let ke = |s: &str| zenoh::key_expr::KeyExpr::try_from(s.to_owned()).unwrap();
        let token = node_token_key("acme", "eu west");
        assert_eq!(token, "prscd/acme/@node/eu%20west");
        assert_eq!(
            parse_node_token(&token),
            Some(("acme".into(), "eu west".into()))
        );
        assert_eq!(parse_node_token(&node_tokens_of_app("acme")), None);
        assert_eq!(parse_node_token("prscd/acme/room"), None);
        assert!(ke(&node_tokens_of_app("acme")).intersects(&ke(&token)));
        assert!(!ke(&node_tokens_of_app("acme2")).intersects(&ke(&token)));

        let members = members_key("acme", "room/1", "eu west");
        assert_eq!(members, "prscd/acme/room%2F1/@member/eu%20west");
        assert_eq!(
            parse_members_key(&members),
            Some(NodeChannel {
                app: "acme".into(),
                channel: "room/1".into(),
                mesh_id: "eu west".into(),
            })
        );
        assert_eq!(parse_members_key(&members_of("acme", "r")), None);
        assert_eq!(parse_members_key("prscd/acme/room"), None);
        assert_eq!(parse_members_key("prscd/a/b/@member/c/d"), None);
        assert_eq!(
            concrete_channel(&members_of("acme", "room/1")).as_deref(),
            Some("room/1")
        );
        assert_eq!(concrete_channel(&node_members_of_app("acme", "eu")), None);
        for pattern in [
            members_of("acme", "room/1"),
            node_members_of_app("acme", "eu west"),
        ] {
            assert!(ke(&pattern).intersects(&ke(&members)), "{pattern}");
        }
        assert!(!ke(&members_of("acme", "room")).intersects(&ke(&members)));
        assert!(!ke(&node_members_of_app("acme", "us")).intersects(&ke(&members)));
        assert!(!ke(&node_members_of_app("acme", "eu west")).intersects(&ke(&token)));
        // The presence API's keys parse back and match their patterns.
        let presence = presence_key("eu west", "acme");
        assert_eq!(
            parse_presence_key(&presence),
            Some(("eu west".into(), "acme".into()))
        );
        assert!(ke(&presence_of_app("acme")).intersects(&ke(&presence)));
        assert!(ke(&presence_of_node("eu west")).intersects(&ke(&presence)));
        assert!(!ke(&presence_of_app("acme2")).intersects(&ke(&presence)));
        let kick = disconnect_key("acme", "al/ice");
        assert_eq!(
            parse_disconnect_key(&kick),
            Some(("acme".into(), "al/ice".into()))
        );
        assert!(ke(&disconnects()).intersects(&ke(&kick)));
        assert!(
            !ke("prscd/**").intersects(&ke(&kick)),
            "not a backend's traffic"
        );
        assert!(!ke("prscd/**").intersects(&ke(&presence)));
        let live = live_key("eu west");
        assert_eq!(parse_live_key(&live).as_deref(), Some("eu west"));
        assert!(ke(&live_nodes()).intersects(&ke(&live)));
        assert!(!ke("prscd/**").intersects(&ke(&live)));
        let console = console_key("eu west");
        assert_eq!(parse_console_key(&console).as_deref(), Some("eu west"));
        assert!(ke(&console_nodes()).intersects(&ke(&console)));
        assert!(!ke("prscd/**").intersects(&ke(&console)));
        assert!(
            !ke("prscd/*/*").intersects(&ke(&console)),
            "no app's channel"
        );
        // A backend's `prscd/<app>/**` gets the traffic, never these keys.
        let traffic = ke("prscd/acme/**");
        assert!(traffic.intersects(&ke(&channel_key("acme", "room/1"))));
        assert!(!traffic.intersects(&ke(&members)));
        assert!(!traffic.intersects(&ke(&token)));
    }
}
