//! Big rooms (PROTOCOL.md §3, "Cost"): the published client answers every
//! `peer_online` by re-sending its unchanged state to the whole channel, so
//! a join would cost N² deliveries if the node relayed every answer to all.
//! Members here behave like that client; the node's delivery counter shows
//! what one join costs, on one node and across two.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;

/// What a member knows: every other member's last state, by id.
type Known = Arc<Mutex<HashMap<String, Vec<u8>>>>;

/// A member that behaves like the published client: after its join ack it
/// sends `peer_online` and its state, answers every `peer_online` with its
/// state, and keeps the states it receives.
struct Member {
    id: String,
    known: Known,
    /// Sends a new state (to change it) or `None` (to stop).
    state_tx: tokio::sync::mpsc::UnboundedSender<Option<Vec<u8>>>,
    task: tokio::task::JoinHandle<()>,
}

fn state_of(id: &str, version: u32) -> Vec<u8> {
    msg(vec![("id", id.into()), ("v", version.into())])
}

impl Member {
    async fn join(node: &Node, room: &str, id: &str) -> Member {
        let mut client = node.ws(KEY1, id).await;
        client.join(room).await;
        let mut state = state_of(id, 1);
        client.send(&control("peer_online", room, None)).await;
        client
            .send(&control("peer_state", room, Some(state.clone())))
            .await;
        let known: Known = Arc::default();
        let (state_tx, mut state_rx) = tokio::sync::mpsc::unbounded_channel::<Option<Vec<u8>>>();
        let (room, own, seen) = (room.to_owned(), id.to_owned(), known.clone());
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    next = state_rx.recv() => match next {
                        Some(Some(new)) => {
                            state = new;
                            client.send(&control("peer_state", &room, Some(state.clone()))).await;
                        }
                        _ => break,
                    },
                    raw = client.recv_raw(Duration::from_secs(30)) => {
                        let raw = raw.unwrap_or_else(|| panic!("{own}: connection ended"));
                        let msg = decode(&raw);
                        let from = field(&msg, "p").unwrap_or_default().to_owned();
                        match field(&msg, "op") {
                            Some("peer_online") if from != own => {
                                client.send(&control("peer_state", &room, Some(state.clone()))).await;
                            }
                            Some("peer_state") => {
                                let pl = bin(&msg, "pl").unwrap().to_vec();
                                seen.lock().unwrap().insert(from, pl);
                            }
                            Some("peer_offline") => {
                                seen.lock().unwrap().remove(&from);
                            }
                            _ => {}
                        }
                    }
                }
            }
            client.close().await;
        });
        Member {
            id: id.to_owned(),
            known,
            state_tx,
            task,
        }
    }

    fn knows(&self, id: &str, state: &[u8]) -> bool {
        self.known
            .lock()
            .unwrap()
            .get(id)
            .is_some_and(|s| s == state)
    }

    async fn stop(self) {
        let _ = self.state_tx.send(None);
        let _ = self.task.await;
    }
}

/// Waits until every member knows every other member's state `version`.
async fn converged(members: &[&Member], version: u32) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let missing: Vec<String> = members
            .iter()
            .flat_map(|m| {
                members
                    .iter()
                    .filter(|o| o.id != m.id && !m.knows(&o.id, &state_of(&o.id, version)))
                    .map(move |o| format!("{} lacks {}", m.id, o.id))
            })
            .collect();
        if missing.is_empty() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not converged: {:?}",
            &missing[..missing.len().min(10)]
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Deliveries the nodes made in all (their `messages_out`), once they have
/// been quiet for a moment.
async fn deliveries(nodes: &[&Node]) -> u64 {
    let mut last = None;
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut total = 0;
        for node in nodes {
            total += node.counter(&["messages_out"]).await;
        }
        if last == Some(total) {
            return total;
        }
        last = Some(total);
    }
}

async fn fill<'a>(node_of: impl Fn(usize) -> &'a Node, room: &str, n: usize) -> Vec<Member> {
    let mut members = Vec::new();
    for i in 0..n {
        members.push(Member::join(node_of(i), room, &format!("m{i}")).await);
    }
    members
}

const N: usize = 30;

#[tokio::test]
async fn one_join_costs_about_3n_deliveries_on_one_node() {
    let node = &Node::start_with(&[("PEER_MSG_RATE", "0")]);
    let members = fill(|_| node, "big", N).await;
    let all: Vec<&Member> = members.iter().collect();
    converged(&all, 1).await;

    let before = deliveries(&[node]).await;
    let joiner = Member::join(node, "big", "joiner").await;
    let mut all = all;
    all.push(&joiner);
    converged(&all, 1).await;
    let cost = deliveries(&[node]).await - before;
    // The ack, peer_online and the joiner's state to N, and N states to the
    // joiner: 3N + 1. Relaying every answer to everyone would be ~N².
    assert!(
        cost <= 4 * N as u64,
        "one join cost {cost} deliveries for N = {N}"
    );
    assert!(
        cost >= 3 * N as u64,
        "{cost}: the joiner must get every state"
    );

    // A changed state still reaches everyone.
    members[0].state_tx.send(Some(state_of("m0", 2))).unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    while !all
        .iter()
        .filter(|m| m.id != "m0")
        .all(|m| m.knows("m0", &state_of("m0", 2)))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the changed state did not reach all"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for m in members {
        m.stop().await;
    }
    joiner.stop().await;
}

#[tokio::test]
async fn two_joiners_at_once_and_a_leave_across_two_nodes() {
    let nodes = mesh_of(&["eu", "us"], &[("PEER_MSG_RATE", "0")]);
    let (eu, us) = (&nodes[0], &nodes[1]);
    for node in [eu, us] {
        node.wait_mesh_state("connected").await;
    }
    let mut members = fill(|i| if i % 2 == 0 { eu } else { us }, "big", N).await;
    let all: Vec<&Member> = members.iter().collect();
    converged(&all, 1).await;

    let before = deliveries(&[eu, us]).await;
    let (j1, j2) = tokio::join!(
        Member::join(eu, "big", "joiner-eu"),
        Member::join(us, "big", "joiner-us")
    );
    let mut all = all;
    all.push(&j1);
    all.push(&j2);
    converged(&all, 1).await;
    let cost = deliveries(&[eu, us]).await - before;
    assert!(
        cost <= 2 * 4 * (N as u64 + 1),
        "two joins cost {cost} deliveries for N = {N}"
    );

    drop(all);

    // Someone leaves and comes back: everyone learns its state again.
    members.remove(0).stop().await;
    let back = Member::join(eu, "big", "m0").await;
    let everyone: Vec<&Member> = members.iter().chain([&j1, &j2, &back]).collect();
    converged(&everyone, 1).await;
    drop(everyone);
    for m in members.into_iter().chain([j1, j2, back]) {
        m.stop().await;
    }
}

/// The node answers a joiner itself, right after its ack, with every
/// member's last state, as one reply: a room far past `PEER_QUEUE` messages
/// is joined with no one dropped as a slow reader, the joiner knows every
/// state before any member answered it, and the members' answers, being
/// unchanged, are then delivered to no one.
#[tokio::test]
async fn a_joiner_gets_every_state_from_the_node_past_the_queue_bound() {
    let node = &Node::start_with(&[("PEER_MSG_RATE", "0"), ("PEER_QUEUE", "8")]);
    let members = fill(|_| node, "big", N).await;
    let all: Vec<&Member> = members.iter().collect();
    converged(&all, 1).await;

    // A joiner that has not announced itself: no member has answered it.
    let mut joiner = node.ws(KEY1, "joiner").await;
    joiner.join("big").await;
    let mut states = HashMap::new();
    for _ in 0..N {
        let v = joiner.recv().await;
        assert_eq!(field(&v, "op"), Some("peer_state"), "{v}");
        let from = field(&v, "p").unwrap().to_owned();
        states.insert(from.clone(), bin(&v, "pl").unwrap().to_vec());
    }
    for m in &members {
        assert_eq!(states.get(&m.id), Some(&state_of(&m.id, 1)), "{}", m.id);
    }

    // Its peer_online reaches the N members; their N answers reach no one.
    let before = deliveries(&[node]).await;
    let heard = node.counter(&["messages_in"]).await;
    joiner.send(&control("peer_online", "big", None)).await;
    // The answers are in (the joiner's peer_online and N states).
    node.wait_counter(&["messages_in"], heard + 1 + N as u64)
        .await;
    let cost = deliveries(&[node]).await - before;
    assert_eq!(
        cost, N as u64,
        "peer_online to each member, and nothing more"
    );
    assert_eq!(node.counter(&["dropped", "slow_reader"]).await, 0);
    drop(all);
    for m in members {
        m.stop().await;
    }
}
