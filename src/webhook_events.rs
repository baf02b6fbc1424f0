//! What a webhook tells, decided from state every node converges on; pure,
//! unit-tested (the delivery is `webhooks`).
//!
//! Why from state: each node knows its own users exactly (`occupancy`), and
//! every node polls every other for them. The events of an app are the
//! differences between two consecutive mesh-wide views ([`View::update`]):
//! a user appearing in a channel is `member_added`, disappearing (after its
//! grace period, or with its dead node) `member_removed`; a channel's first
//! user `channel_occupied`, its last one leaving `channel_vacated`. Two tabs
//! or two nodes of one user are one user, so one event. Every node computes
//! the same events; only the leader ([`leader`]: the live node with the
//! smallest MESH_ID) posts them, so each is posted once. A node that stops
//! answering keeps its last part of the view until its liveness token goes
//! (so a slow answer is no leave), and then its users leave.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::occupancy::NodePresence;

/// One event of the webhook body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Event {
    pub name: &'static str,
    pub app: String,
    pub channel: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
}

/// The webhook body: `{"time_ms", "events": [...]}`.
#[derive(Debug, Serialize)]
pub struct Body<'a> {
    pub time_ms: u64,
    pub events: &'a [Event],
}

/// `X-Prscd-Signature`: `sha256=<hex HMAC-SHA256 of the body, keyed with the app's API key>`.
pub fn signature(key: &str, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key.as_bytes());
    let tag = ring::hmac::sign(&key, body);
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

/// The node that posts: the smallest MESH_ID among the live ones.
pub fn leader<'a>(me: &'a str, live: impl IntoIterator<Item = &'a str>) -> &'a str {
    live.into_iter().fold(me, |min, m| min.min(m))
}

/// One app's mesh-wide view, as this node last saw it.
#[derive(Debug, Default)]
pub struct View {
    app: String,
    /// MESH_ID → that node's last answer.
    parts: BTreeMap<String, NodePresence>,
    /// channel → users, as of the last update.
    members: BTreeMap<String, BTreeSet<String>>,
    /// Whether `members` was ever computed (the first view is no change).
    primed: bool,
}

impl View {
    pub fn new(app: &str) -> View {
        View {
            app: app.to_owned(),
            ..View::default()
        }
    }

    /// Takes this round's answers (a live node that did not answer keeps
    /// its last part) and the live nodes (a node not among them is gone
    /// with its users), and returns what changed since the last round.
    /// The first round only learns: it has nothing to compare with.
    pub fn update(&mut self, answers: Vec<NodePresence>, live: &BTreeSet<String>) -> Vec<Event> {
        self.parts.retain(|mesh_id, _| live.contains(mesh_id));
        for answer in answers {
            if live.contains(&answer.mesh_id) {
                self.parts.insert(answer.mesh_id.clone(), answer);
            }
        }
        let mut now: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for part in self.parts.values() {
            for ch in &part.channels {
                let users = now.entry(ch.name.clone()).or_default();
                users.extend(ch.users.iter().map(|u| u.id.clone()));
            }
        }
        now.retain(|_, users| !users.is_empty());
        let before = std::mem::replace(&mut self.members, now);
        if !std::mem::replace(&mut self.primed, true) {
            return Vec::new();
        }
        diff(&self.app, &before, &self.members)
    }
}

/// The events that turn `before` into `after`, per channel in name order:
/// occupied, added, removed, vacated.
fn diff(
    app: &str,
    before: &BTreeMap<String, BTreeSet<String>>,
    after: &BTreeMap<String, BTreeSet<String>>,
) -> Vec<Event> {
    let empty = BTreeSet::new();
    let channels: BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    let mut events = Vec::new();
    let event = |name, channel: &str, user: Option<&String>| Event {
        name,
        app: app.to_owned(),
        channel: channel.to_owned(),
        user_id: user.cloned(),
    };
    for channel in channels {
        let was = before.get(channel).unwrap_or(&empty);
        let is = after.get(channel).unwrap_or(&empty);
        if was.is_empty() && !is.is_empty() {
            events.push(event("channel_occupied", channel, None));
        }
        for user in is.difference(was) {
            events.push(event("member_added", channel, Some(user)));
        }
        for user in was.difference(is) {
            events.push(event("member_removed", channel, Some(user)));
        }
        if !was.is_empty() && is.is_empty() {
            events.push(event("channel_vacated", channel, None));
        }
    }
    events
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::occupancy::{ChannelUsers, User};

    fn node(mesh_id: &str, channels: &[(&str, &[&str])]) -> NodePresence {
        NodePresence {
            mesh_id: mesh_id.into(),
            channels: channels
                .iter()
                .map(|(name, users)| ChannelUsers {
                    name: (*name).into(),
                    users: users
                        .iter()
                        .map(|id| User {
                            id: (*id).into(),
                            connections: 1,
                            state: serde_json::Value::Null,
                        })
                        .collect(),
                })
                .collect(),
        }
    }

    fn live(nodes: &[&str]) -> BTreeSet<String> {
        nodes.iter().map(|n| n.to_string()).collect()
    }

    fn names(events: &[Event]) -> Vec<String> {
        events
            .iter()
            .map(|e| {
                format!(
                    "{} {} {}",
                    e.name,
                    e.channel,
                    e.user_id.as_deref().unwrap_or("-")
                )
            })
            .collect()
    }

    #[test]
    fn one_user_on_two_nodes_is_added_and_removed_once() {
        let mut v = View::new("app");
        let all = live(&["eu", "us"]);
        assert!(v
            .update(vec![node("eu", &[]), node("us", &[])], &all)
            .is_empty());
        let e = v.update(
            vec![
                node("eu", &[("r", &["alice"])]),
                node("us", &[("r", &["alice"])]),
            ],
            &all,
        );
        assert_eq!(names(&e), ["channel_occupied r -", "member_added r alice"]);
        // One of her nodes lets go: she is still there.
        let e = v.update(
            vec![node("eu", &[]), node("us", &[("r", &["alice"])])],
            &all,
        );
        assert!(e.is_empty());
        let e = v.update(vec![node("eu", &[]), node("us", &[])], &all);
        assert_eq!(names(&e), ["member_removed r alice", "channel_vacated r -"]);
    }

    #[test]
    fn a_silent_live_node_keeps_its_users_and_a_dead_one_loses_them() {
        let mut v = View::new("app");
        let all = live(&["eu", "us"]);
        v.update(
            vec![
                node("eu", &[("r", &["bob"])]),
                node("us", &[("r", &["carol"])]),
            ],
            &all,
        );
        // us did not answer this round, but its token lives.
        assert!(v
            .update(vec![node("eu", &[("r", &["bob"])])], &all)
            .is_empty());
        // Its token went: carol leaves, the channel stays occupied by bob.
        let e = v.update(vec![node("eu", &[("r", &["bob"])])], &live(&["eu"]));
        assert_eq!(names(&e), ["member_removed r carol"]);
        // An answer from a node without a live token counts for nothing.
        let e = v.update(vec![node("xx", &[("r", &["eve"])])], &live(&["eu"]));
        assert!(e.is_empty(), "{e:?}");
    }

    #[test]
    fn the_first_round_only_learns() {
        let mut v = View::new("app");
        assert!(v
            .update(vec![node("eu", &[("r", &["a"])])], &live(&["eu"]))
            .is_empty());
    }

    #[test]
    fn the_leader_is_the_smallest_live_mesh_id() {
        assert_eq!(leader("us", ["eu", "ap"]), "ap");
        assert_eq!(leader("ap", ["eu"]), "ap");
        assert_eq!(leader("eu", []), "eu");
    }

    #[test]
    fn the_body_and_its_signature() {
        let events = [Event {
            name: "channel_vacated",
            app: "a".into(),
            channel: "r".into(),
            user_id: None,
        }];
        let body = serde_json::to_string(&Body {
            time_ms: 5,
            events: &events,
        })
        .unwrap();
        assert_eq!(
            body,
            r#"{"time_ms":5,"events":[{"name":"channel_vacated","app":"a","channel":"r"}]}"#
        );
        // RFC 4231, test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
