//! Who is in a channel, per user rather than per connection, as this node
//! sees the mesh; pure (no I/O, no clock of its own), unit-tested.
//!
//! Why: one user (one `id`) may be in a channel from several tabs, on this
//! node and on others. Browsers know members by `id`, so a `peer_offline`
//! must go out only when that user's last connection in the channel is
//! gone, wherever the connections were, and a page reload (a leave, then a
//! join a moment later) must not look like a leave and a join: a user
//! whose last connection went is *leaving* for a grace period
//! (`PRESENCE_GRACE_MS`) and comes back silently if a connection of theirs
//! joins within it. A node that died takes its connections with it at once
//! (no grace): its users are gone unless they are connected elsewhere.
//!
//! The hub owns one [`Presence`] and tells it about its own connections;
//! the mesh tells the hub about other nodes' connections in the channels
//! this node has members in (the only ones whose members need telling).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// (app, channel).
pub type ChannelKey = (Arc<str>, Arc<str>);

/// Where a connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place<'a> {
    /// On this node.
    Here,
    /// On the node with this MESH_ID.
    Node(&'a str),
}

/// What a connection joining a channel means for its user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// The user's first connection in the channel.
    First,
    /// The user was leaving (within the grace period) and stays after all.
    Back,
    /// The user had other connections in the channel already.
    Another,
}

/// What a connection leaving a channel means for its user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Departure {
    /// The user is gone: tell the members now.
    Offline,
    /// The user's last connection went; unless one comes back, the user is
    /// gone at `due` (see [`Presence::due`]).
    Leaving { due: Instant },
    /// The user has other connections in the channel (or this one was not known).
    Stays,
}

/// Why a connection left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// It closed, or left the channel: the grace period applies.
    Left,
    /// Its node is gone from the mesh: no grace, it cannot reload there.
    NodeGone,
}

/// A user whose grace period ended with no connection back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gone {
    pub app: Arc<str>,
    pub channel: Arc<str>,
    pub user: Arc<str>,
    /// The node of the user's last connection, for the `mesh` of its `peer_offline`.
    pub mesh_id: Arc<str>,
}

/// One user of a channel on this node and the nodes it hears of.
#[derive(Debug, Default)]
struct User {
    here: usize,
    /// MESH_ID → connections there.
    elsewhere: HashMap<Arc<str>, usize>,
    /// All connections gone: when the user is gone, and the last one's node.
    leaving: Option<(Instant, Arc<str>)>,
    /// The last state a connection of the user on this node sent (its `pl`,
    /// pinned), kept for the presence API.
    state: Option<bytes::Bytes>,
}

impl User {
    fn connections(&self) -> usize {
        self.here + self.elsewhere.values().sum::<usize>()
    }
}

/// A user of a channel as this node hosts it, for the presence API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalUser {
    pub id: Arc<str>,
    /// Connections of the user in the channel on this node.
    pub connections: usize,
    /// Its last state's msgpack, if it sent one.
    pub state: Option<bytes::Bytes>,
}

/// Where one user of a channel is connected ([`Presence::users_of`]).
#[derive(Debug, Clone)]
pub struct UserPlaces {
    pub id: Arc<str>,
    pub here: usize,
    pub elsewhere: Vec<(Arc<str>, usize)>,
    /// All its connections went; within the grace period.
    pub leaving: bool,
    /// Its last state sent here, if any.
    pub state: Option<bytes::Bytes>,
}

#[derive(Debug)]
pub struct Presence {
    grace: Duration,
    mesh_id: Arc<str>,
    channels: HashMap<ChannelKey, HashMap<Arc<str>, User>>,
}

impl Presence {
    pub fn new(mesh_id: &str, grace: Duration) -> Presence {
        Presence {
            grace,
            mesh_id: mesh_id.into(),
            channels: HashMap::new(),
        }
    }

    pub fn set_grace(&mut self, grace: Duration) {
        self.grace = grace;
    }

    /// A connection of `user` at `place` joined `app/channel`.
    pub fn arrive(&mut self, app: &str, channel: &str, user: &str, place: Place<'_>) -> Arrival {
        let key: ChannelKey = (app.into(), channel.into());
        let u = self
            .channels
            .entry(key)
            .or_default()
            .entry(user.into())
            .or_default();
        let before = u.connections();
        match place {
            Place::Here => u.here += 1,
            Place::Node(mesh) => *u.elsewhere.entry(mesh.into()).or_default() += 1,
        }
        match (before, u.leaving.take()) {
            (0, Some(_)) => Arrival::Back,
            (0, None) => Arrival::First,
            _ => Arrival::Another,
        }
    }

    /// A connection of `user` at `place` left `app/channel` at `now`.
    pub fn depart(
        &mut self,
        app: &str,
        channel: &str,
        user: &str,
        place: Place<'_>,
        why: Why,
        now: Instant,
    ) -> Departure {
        let Some(users) = self
            .channels
            .get_mut(&(app.into(), channel.into()) as &ChannelKey)
        else {
            return Departure::Stays;
        };
        let Some(u) = users.get_mut(user) else {
            return Departure::Stays;
        };
        let mesh: Arc<str> = match place {
            Place::Here if u.here > 0 => {
                u.here -= 1;
                self.mesh_id.clone()
            }
            Place::Node(mesh) => match u.elsewhere.get_mut(mesh) {
                Some(n) => {
                    *n -= 1;
                    if *n == 0 {
                        u.elsewhere.remove(mesh);
                    }
                    mesh.into()
                }
                None => return Departure::Stays,
            },
            Place::Here => return Departure::Stays,
        };
        if u.connections() > 0 {
            return Departure::Stays;
        }
        if why == Why::NodeGone || self.grace.is_zero() {
            self.remove(app, channel, user);
            return Departure::Offline;
        }
        let due = now + self.grace;
        u.leaving = Some((due, mesh));
        Departure::Leaving { due }
    }

    /// Forgets every connection of other nodes in `app/channel` (this node
    /// stopped following the channel: it has no member there to tell).
    /// Users left without a connection are dropped silently.
    pub fn forget_elsewhere(&mut self, app: &str, channel: &str) {
        let key: ChannelKey = (app.into(), channel.into());
        let Some(users) = self.channels.get_mut(&key) else {
            return;
        };
        users.retain(|_, u| {
            u.elsewhere.clear();
            u.here > 0 || u.leaving.is_some()
        });
        if users.is_empty() {
            self.channels.remove(&key);
        }
    }

    /// Whether `user` is in `app/channel` (connected, or within its grace).
    pub fn is_present(&self, app: &str, channel: &str, user: &str) -> bool {
        self.channels
            .get(&(app.into(), channel.into()) as &ChannelKey)
            .is_some_and(|users| users.contains_key(user))
    }

    /// Every user of `app/channel` this node knows, for the console: (id,
    /// connections here, connections per other node, leaving), by id.
    pub fn users_of(&self, app: &str, channel: &str) -> Vec<UserPlaces> {
        let Some(users) = self
            .channels
            .get(&(app.into(), channel.into()) as &ChannelKey)
        else {
            return Vec::new();
        };
        let mut out: Vec<UserPlaces> = users
            .iter()
            .map(|(id, u)| UserPlaces {
                id: id.clone(),
                here: u.here,
                elsewhere: u.elsewhere.iter().map(|(m, n)| (m.clone(), *n)).collect(),
                leaving: u.leaving.is_some(),
                state: u.state.clone(),
            })
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// Users whose grace period is over at `now`: they are gone.
    pub fn due(&mut self, now: Instant) -> Vec<Gone> {
        let mut gone = Vec::new();
        self.channels.retain(|(app, channel), users| {
            users.retain(|user, u| match &u.leaving {
                Some((due, mesh)) if *due <= now => {
                    gone.push(Gone {
                        app: app.clone(),
                        channel: channel.clone(),
                        user: user.clone(),
                        mesh_id: mesh.clone(),
                    });
                    false
                }
                _ => true,
            });
            !users.is_empty()
        });
        gone
    }

    /// When the next grace period ends.
    pub fn next_due(&self) -> Option<Instant> {
        self.channels
            .values()
            .flat_map(HashMap::values)
            .filter_map(|u| u.leaving.as_ref().map(|(due, _)| *due))
            .min()
    }

    /// Keeps `state` (a pinned state's msgpack) as `user`'s last in `app/channel`.
    pub fn set_state(&mut self, app: &str, channel: &str, user: &str, state: bytes::Bytes) {
        if let Some(u) = self
            .channels
            .get_mut(&(app.into(), channel.into()) as &ChannelKey)
            .and_then(|users| users.get_mut(user))
        {
            u.state = Some(state);
        }
    }

    /// This node's own users of each of `app`'s channels (connected here
    /// now; a user within its grace period counts with no connection only
    /// if its last one was here), sorted by channel and id.
    pub fn hosted(&self, app: &str) -> Vec<(Arc<str>, Vec<LocalUser>)> {
        let mut channels: Vec<_> = self
            .channels
            .iter()
            .filter(|((a, _), _)| &**a == app)
            .map(|((_, channel), users)| {
                let mut users: Vec<LocalUser> = users
                    .iter()
                    .filter(|(_, u)| {
                        u.here > 0
                            || u.leaving
                                .as_ref()
                                .is_some_and(|(_, mesh)| *mesh == self.mesh_id)
                    })
                    .map(|(id, u)| LocalUser {
                        id: id.clone(),
                        connections: u.here,
                        state: u.state.clone(),
                    })
                    .collect();
                users.sort_by(|a, b| a.id.cmp(&b.id));
                (channel.clone(), users)
            })
            .filter(|(_, users)| !users.is_empty())
            .collect();
        channels.sort_by(|a, b| a.0.cmp(&b.0));
        channels
    }

    fn remove(&mut self, app: &str, channel: &str, user: &str) {
        let key: ChannelKey = (app.into(), channel.into());
        if let Some(users) = self.channels.get_mut(&key) {
            users.remove(user);
            if users.is_empty() {
                self.channels.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_millis(1500);

    fn presence() -> Presence {
        Presence::new("a", GRACE)
    }

    #[test]
    fn two_tabs_on_one_node_leave_once() {
        let mut p = presence();
        let t0 = Instant::now();
        assert_eq!(p.arrive("app", "r", "alice", Place::Here), Arrival::First);
        assert_eq!(p.arrive("app", "r", "alice", Place::Here), Arrival::Another);
        let d = p.depart("app", "r", "alice", Place::Here, Why::Left, t0);
        assert_eq!(d, Departure::Stays);
        let d = p.depart("app", "r", "alice", Place::Here, Why::Left, t0);
        assert_eq!(d, Departure::Leaving { due: t0 + GRACE });
        assert!(p.due(t0 + GRACE - Duration::from_millis(1)).is_empty());
        assert_eq!(p.next_due(), Some(t0 + GRACE));
        let gone = p.due(t0 + GRACE);
        assert_eq!(gone.len(), 1);
        assert_eq!((&*gone[0].user, &*gone[0].mesh_id), ("alice", "a"));
        assert!(!p.is_present("app", "r", "alice"));
        assert_eq!(p.next_due(), None);
    }

    #[test]
    fn tabs_on_two_nodes_count_together() {
        let mut p = presence();
        let t0 = Instant::now();
        assert_eq!(p.arrive("app", "r", "alice", Place::Here), Arrival::First);
        assert_eq!(
            p.arrive("app", "r", "alice", Place::Node("b")),
            Arrival::Another
        );
        let here = p.depart("app", "r", "alice", Place::Here, Why::Left, t0);
        assert_eq!(here, Departure::Stays);
        // The last connection was on b: its peer_offline names b.
        let there = p.depart("app", "r", "alice", Place::Node("b"), Why::Left, t0);
        assert_eq!(there, Departure::Leaving { due: t0 + GRACE });
        assert_eq!(&*p.due(t0 + GRACE)[0].mesh_id, "b");
    }

    #[test]
    fn a_reload_within_the_grace_is_no_leave() {
        let mut p = presence();
        let t0 = Instant::now();
        p.arrive("app", "r", "alice", Place::Here);
        p.set_state("app", "r", "alice", bytes::Bytes::from_static(b"\x80"));
        p.depart("app", "r", "alice", Place::Here, Why::Left, t0);
        // The reload may land on another node.
        assert_eq!(
            p.arrive("app", "r", "alice", Place::Node("b")),
            Arrival::Back
        );
        assert!(p.due(t0 + GRACE * 2).is_empty());
        assert!(p.is_present("app", "r", "alice"));
        assert_eq!(p.next_due(), None);
    }

    #[test]
    fn a_dead_nodes_users_leave_at_once_unless_connected_elsewhere() {
        let mut p = presence();
        let t0 = Instant::now();
        p.arrive("app", "r", "alice", Place::Node("b"));
        p.arrive("app", "r", "bob", Place::Node("b"));
        p.arrive("app", "r", "bob", Place::Here);
        let d = p.depart("app", "r", "alice", Place::Node("b"), Why::NodeGone, t0);
        assert_eq!(d, Departure::Offline);
        let d = p.depart("app", "r", "bob", Place::Node("b"), Why::NodeGone, t0);
        assert_eq!(d, Departure::Stays);
        assert!(!p.is_present("app", "r", "alice"));
        assert!(p.is_present("app", "r", "bob"));
    }

    #[test]
    fn without_grace_the_last_leave_is_offline_at_once() {
        let mut p = Presence::new("a", Duration::ZERO);
        p.arrive("app", "r", "alice", Place::Here);
        let d = p.depart("app", "r", "alice", Place::Here, Why::Left, Instant::now());
        assert_eq!(d, Departure::Offline);
        assert_eq!(p.next_due(), None);
    }

    #[test]
    fn unknown_connections_change_nothing() {
        let mut p = presence();
        let now = Instant::now();
        let d = p.depart("app", "r", "x", Place::Here, Why::Left, now);
        assert_eq!(d, Departure::Stays);
        p.arrive("app", "r", "alice", Place::Here);
        let d = p.depart("app", "r", "alice", Place::Node("zz"), Why::Left, now);
        assert_eq!(d, Departure::Stays);
        // A second leave of the same connection is not a leave of another one.
        p.depart("app", "r", "alice", Place::Here, Why::Left, now);
        let d = p.depart("app", "r", "alice", Place::Here, Why::Left, now);
        assert_eq!(d, Departure::Stays);
        assert!(p.is_present("app", "r", "alice"), "still within its grace");
    }

    #[test]
    fn forgetting_other_nodes_keeps_this_nodes_users() {
        let mut p = presence();
        let now = Instant::now();
        p.arrive("app", "r", "alice", Place::Here);
        p.arrive("app", "r", "bob", Place::Node("b"));
        p.arrive("app", "r", "carol", Place::Node("b"));
        p.arrive("app", "r", "carol", Place::Here);
        p.depart("app", "r", "carol", Place::Here, Why::Left, now);
        p.forget_elsewhere("app", "r");
        assert!(p.is_present("app", "r", "alice"));
        assert!(!p.is_present("app", "r", "bob"));
        // carol's last connection here went while she was still on b.
        assert!(!p.is_present("app", "r", "carol"));
        p.arrive("app", "r", "dan", Place::Here);
        p.depart("app", "r", "dan", Place::Here, Why::Left, now);
        p.forget_elsewhere("app", "r");
        assert!(p.is_present("app", "r", "dan"), "dan is leaving from here");
        let hosted = p.hosted("app");
        let ids: Vec<_> = hosted[0].1.iter().map(|u| &*u.id).collect();
        assert_eq!(ids, ["alice", "dan"]);
    }

    #[test]
    fn hosted_lists_this_nodes_users_with_their_state() {
        let mut p = presence();
        p.arrive("app", "r2", "bob", Place::Here);
        p.arrive("app", "r1", "alice", Place::Here);
        p.arrive("app", "r1", "alice", Place::Here);
        p.arrive("app", "r1", "zed", Place::Node("b"));
        p.arrive("other", "r1", "eve", Place::Here);
        p.set_state("app", "r1", "alice", bytes::Bytes::from_static(b"\x81"));
        let hosted = p.hosted("app");
        assert_eq!(hosted.len(), 2);
        assert_eq!(&*hosted[0].0, "r1");
        assert_eq!(
            hosted[0].1,
            [LocalUser {
                id: "alice".into(),
                connections: 2,
                state: Some(bytes::Bytes::from_static(b"\x81")),
            }]
        );
        assert_eq!(&*hosted[1].1[0].id, "bob");
    }
}
