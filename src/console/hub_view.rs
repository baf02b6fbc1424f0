//! The console's reads of the hub's state (a child module of `hub`, so it
//! sees the state without widening the hub's API): per-app counts, an
//! app's channel names, one channel's members. Each read holds the hub's
//! read lock only to copy what it needs out.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;

use super::{Hub, PeerId};
use crate::presence::UserPlaces;
use crate::stats::Transport;

/// One app on this node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppCounts {
    pub app: Arc<str>,
    /// Open connections: [websocket, webtransport].
    pub connections: [usize; 2],
    pub channels: usize,
    /// Channel memberships of this node's connections.
    pub members: usize,
    /// Distinct user ids among this node's connections.
    pub users: usize,
}

/// One of this node's connections in a channel.
#[derive(Debug, Clone)]
pub struct MemberView {
    pub sid: PeerId,
    pub client_id: Arc<str>,
    pub transport: Transport,
    /// Told to close (slow reader, drain, ...), not gone yet.
    pub closing: bool,
}

/// One channel as this node sees it.
#[derive(Debug, Clone, Default)]
pub struct ChannelView {
    pub members: Vec<MemberView>,
    /// Every user this node knows in the channel, here or elsewhere.
    pub users: Vec<UserPlaces>,
    /// Each sender's last state as relayed: (client id, node, message).
    pub states: Vec<(String, String, Bytes)>,
}

impl Hub {
    /// Every app with connections or channels on this node, by app. The
    /// lock is held only to copy out pointers; counting is done after.
    pub fn console_apps(&self) -> Vec<AppCounts> {
        let (peers, channels) = {
            let state = self.read();
            let peers: Vec<(Arc<str>, Transport, Arc<str>)> = state
                .peers
                .values()
                .map(|p| (p.app.clone(), p.transport, p.member.client_id.clone()))
                .collect();
            let channels: Vec<(Arc<str>, usize, usize)> = state
                .apps
                .iter()
                .map(|(app, chs)| {
                    let members = chs.values().map(|c| c.members.len()).sum();
                    (app.clone(), chs.len(), members)
                })
                .collect();
            (peers, channels)
        };
        let mut apps: HashMap<&str, (AppCounts, HashSet<&str>)> = HashMap::new();
        for (app, transport, client_id) in &peers {
            let (counts, users) = apps.entry(&**app).or_default();
            counts.connections[*transport as usize] += 1;
            users.insert(&**client_id);
        }
        for (app, channels, members) in &channels {
            let (counts, _) = apps.entry(&**app).or_default();
            counts.channels = *channels;
            counts.members = *members;
        }
        let mut out: Vec<AppCounts> = apps
            .into_iter()
            .map(|(app, (mut counts, users))| {
                counts.app = app.into();
                counts.users = users.len();
                counts
            })
            .collect();
        out.sort_by(|a, b| a.app.cmp(&b.app));
        out
    }

    /// `app`'s channels on this node with their member counts, unsorted.
    pub fn console_channels(&self, app: &str) -> Vec<(Arc<str>, usize)> {
        let state = self.read();
        state.apps.get(app).map_or_else(Vec::new, |channels| {
            channels
                .iter()
                .map(|(name, ch)| (name.clone(), ch.members.len()))
                .collect()
        })
    }

    /// One channel's members, users and last states; `None` if this node
    /// has no member there and knows no user of it.
    pub fn console_channel(&self, app: &str, channel: &str) -> Option<ChannelView> {
        let state = self.read();
        let users = state.presence.users_of(app, channel);
        let ch = state.apps.get(app).and_then(|a| a.get(channel));
        if ch.is_none() && users.is_empty() {
            return None;
        }
        let mut view = ChannelView {
            users,
            ..ChannelView::default()
        };
        if let Some(ch) = ch {
            view.members = ch
                .members
                .iter()
                .map(|(sid, m)| MemberView {
                    sid: *sid,
                    client_id: m.client_id.clone(),
                    transport: m.transport,
                    closing: m.ctl.is_closing(),
                })
                .collect();
            view.states = ch
                .states
                .iter()
                .map(|(key, msg)| {
                    let (user, node) = key.split_once('\u{0}').unwrap_or((&**key, ""));
                    (user.to_owned(), node.to_owned(), msg.clone())
                })
                .collect();
        }
        view.members
            .sort_by(|a, b| (&a.client_id, a.sid).cmp(&(&b.client_id, b.sid)));
        view.states.sort();
        Some(view)
    }
}
