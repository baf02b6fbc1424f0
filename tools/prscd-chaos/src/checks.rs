//! The invariants checked after every heal, on what the clients saw and
//! what the processes did. Each returns what is wrong (empty: holds); the
//! driver polls the convergent ones until they hold or a deadline passes.

use std::collections::BTreeSet;

use crate::clients::World;

/// Member views against the truth: every client connected and joined to
/// each of its channels, and each view of a channel exactly the other
/// clients connected and joined to it (no phantom, no one missing).
pub fn views(w: &World) -> Vec<String> {
    let mut wrong = Vec::new();
    for c in &w.clients {
        if !c.connected {
            wrong.push(format!("{} is not connected", c.id));
            continue;
        }
        for ch in &c.channels {
            if !c.joined.contains(ch) {
                wrong.push(format!("{} has no join ack for {ch}", c.id));
                continue;
            }
            let mut truth = w.truth(ch);
            truth.remove(&c.id);
            let empty = BTreeSet::new();
            let view = c.views.get(ch).unwrap_or(&empty);
            let missing: Vec<&String> = truth.difference(view).collect();
            let phantom: Vec<&String> = view.difference(&truth).collect();
            if !missing.is_empty() || !phantom.is_empty() {
                wrong.push(format!(
                    "{}@{} in {ch}: missing {missing:?}, phantom {phantom:?}",
                    c.id,
                    crate::cluster::REGIONS[c.region]
                ));
            }
        }
    }
    wrong
}

/// Data paths against the mesh: in every channel, for every ordered pair
/// of regions with members in it, some member of the second got a message
/// that a member of the first sent after `marks` (each client's last seq
/// when the heal began). Member views can come back before data does: a
/// restarted router re-learns presence and subscribers separately, so
/// views alone do not say the heal is over; a path that never comes back
/// is a violation when the settle's deadline passes.
pub fn paths(w: &World, marks: &[u64]) -> Vec<String> {
    let regions = crate::cluster::REGIONS;
    let mut wrong = Vec::new();
    let channels: BTreeSet<&String> = w.clients.iter().flat_map(|c| &c.channels).collect();
    for ch in channels {
        let members = |region: usize| {
            w.clients
                .iter()
                .enumerate()
                .filter(move |(_, c)| c.region == region && c.connected && c.joined.contains(ch))
        };
        for from in 0..regions.len() {
            for to in (0..regions.len()).filter(|&to| to != from) {
                if members(from).next().is_none() || members(to).next().is_none() {
                    continue;
                }
                let heard = members(to).any(|(_, receiver)| {
                    members(from).any(|(s, sender)| {
                        receiver
                            .order
                            .get(&(ch.clone(), sender.id.clone()))
                            .is_some_and(|&seq| seq > marks[s])
                    })
                });
                if !heard {
                    wrong.push(format!(
                        "nothing sent since the heal began has gone {}→{} in {ch}",
                        regions[from], regions[to]
                    ));
                }
            }
        }
    }
    wrong
}

/// What a loss round found.
#[derive(Default, Debug)]
pub struct Loss {
    /// Deliveries that must have happened and did not (yet).
    pub missing: Vec<String>,
    /// Deliveries that count: sender and receiver on the connection they
    /// had at the send.
    pub checked: usize,
    /// Deliveries excluded because the sender or receiver reconnected meanwhile.
    pub excluded: usize,
    /// Why, for the first few.
    pub excluded_why: Vec<String>,
}

/// "No loss where no fault touched the path": a probe is sent only after
/// the previous heal settled (every view true, data flowing every way) and
/// before the next fault, so every member the truth held at the send must
/// receive it, unless its or the sender's connection changed meanwhile
/// (then the path was touched and it is only counted as excluded).
pub fn loss(w: &World) -> Loss {
    let mut out = Loss::default();
    for e in &w.expects {
        let sender = &w.clients[e.sender];
        let sender_same = sender.connected && sender.conn == e.sender_conn;
        for &(r, conn) in &e.receivers {
            let rc = &w.clients[r];
            if !sender_same || !rc.connected || rc.conn != conn {
                out.excluded += 1;
                if out.excluded_why.len() < 3 {
                    out.excluded_why.push(format!(
                        "message {} of {} (connection {} then, {} {} now) to {} (connection {conn} then, {} {} now)",
                        e.seq,
                        sender.id,
                        e.sender_conn,
                        if sender.connected { "connected" } else { "disconnected" },
                        sender.conn,
                        rc.id,
                        if rc.connected { "connected" } else { "disconnected" },
                        rc.conn
                    ));
                }
                continue;
            }
            out.checked += 1;
            let got = rc.seen.get(&sender.id).is_some_and(|s| s.contains(&e.seq));
            if !got {
                out.missing.push(format!(
                    "{}@{} never got message {} of {}@{} in {}",
                    rc.id,
                    crate::cluster::REGIONS[rc.region],
                    e.seq,
                    sender.id,
                    crate::cluster::REGIONS[sender.region],
                    e.channel
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::clients::Expect;

    /// Every client connected, joined, and seeing every other member.
    fn converged() -> World {
        let mut w = World::new(30, 1, Instant::now());
        for c in &mut w.clients {
            c.connected = true;
            c.joined = c.channels.iter().cloned().collect();
        }
        let members: Vec<(String, Vec<String>)> = w
            .clients
            .iter()
            .map(|c| (c.id.clone(), c.channels.clone()))
            .collect();
        for c in &mut w.clients {
            for ch in c.channels.clone() {
                let others: BTreeSet<String> = members
                    .iter()
                    .filter(|(id, chs)| *id != c.id && chs.contains(&ch))
                    .map(|(id, _)| id.clone())
                    .collect();
                c.views.insert(ch, others);
            }
        }
        w
    }

    #[test]
    fn views_find_phantoms_missing_members_and_clients_not_back() {
        let mut w = converged();
        assert!(views(&w).is_empty());
        // c03 left room-0: everyone still listing it holds a phantom.
        w.clients[3].connected = false;
        let wrong = views(&w);
        assert!(wrong.iter().any(|l| l == "c03 is not connected"));
        assert!(wrong.iter().any(|l| l.contains("phantom [\"c03\"]")));
        let mut w = converged();
        w.clients[0].views.get_mut("room-0").unwrap().remove("c06");
        assert_eq!(
            views(&w),
            vec!["c00@eu in room-0: missing [\"c06\"], phantom []".to_owned()]
        );
    }

    #[test]
    fn paths_need_a_message_sent_after_the_mark_each_way() {
        // One channel that every client (c00@eu, c01@us, c02@ap, …) joined.
        let mut w = World::new(30, 1, Instant::now());
        for c in &mut w.clients {
            c.connected = true;
            c.channels = vec!["room-0".into()];
            c.joined = c.channels.iter().cloned().collect();
        }
        let marks: Vec<u64> = vec![5; w.clients.len()];
        // Every region pair: nothing new yet.
        assert_eq!(paths(&w, &marks).len(), 6);
        // c00@eu's message 6 in room-0 heard by c01@us, its message 5 (sent
        // before the heal began) by c02@ap.
        w.clients[1]
            .order
            .insert(("room-0".into(), "c00".into()), 6);
        w.clients[2]
            .order
            .insert(("room-0".into(), "c00".into()), 5);
        let wrong = paths(&w, &marks);
        assert!(!wrong.iter().any(|l| l.contains("eu→us in room-0")));
        assert!(wrong.iter().any(|l| l.contains("eu→ap in room-0")));
        assert!(wrong.iter().any(|l| l.contains("us→eu in room-0")));
        assert_eq!(wrong.len(), 5);
        // A receiver that is gone does not count.
        w.clients[1].connected = false;
        assert!(paths(&w, &marks)
            .iter()
            .any(|l| l.contains("eu→us in room-0")));
    }

    #[test]
    fn loss_counts_only_deliveries_whose_connections_stayed() {
        let mut w = converged();
        w.expects.push(Expect {
            sender: 0,
            sender_conn: 0,
            channel: "room-0".into(),
            seq: 1,
            receivers: vec![(3, 0), (6, 0), (9, 0)],
        });
        w.clients[3].seen.entry("c00".into()).or_default().insert(1);
        w.clients[9].conn = 1; // reconnected meanwhile: excluded
        let loss = loss(&w);
        assert_eq!((loss.checked, loss.excluded), (2, 1));
        assert_eq!(
            loss.missing,
            vec!["c06@eu never got message 1 of c00@eu in room-0".to_owned()]
        );
    }
}
