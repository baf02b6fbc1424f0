//! Exactly once, in order, per publishing node: what the mesh hands over
//! twice, or late, is dropped before it reaches a browser.
//!
//! Through zenohd routers a sample can arrive twice: while the routers
//! recompute their trees after a link goes down or comes back (a flap, a
//! cut, a healed isolation, a router restart), a sample can travel the old
//! route and the new one. Every node stamps its publications with its
//! incarnation (random, per run) and a sequence number that only grows
//! (one counter for all its channels, so a channel left and joined again
//! never restarts it); each receiving node keeps, per channel and per
//! publisher, the newest number it delivered, and drops anything not
//! newer: a copy (seen) or a straggler that a newer one overtook on another
//! route (delivering it would break the sender's order). Samples without a
//! stamp (backends) pass.
//!
//! Bounded: at most [`MAX_PUBLISHERS`] publishers per channel (the one
//! heard least recently goes first); one not heard for [`FORGET_AFTER`]
//! (its node left, restarted as a new incarnation or stopped publishing
//! here) is forgotten. No I/O: the bridge passes the clock in.

use std::collections::HashMap;
use std::time::{Duration, Instant};

pub use prscd_wire::mesh::Stamp;

/// Publishers remembered per channel.
pub const MAX_PUBLISHERS: usize = 64;

/// A publisher not heard for this long is forgotten. Far longer than any
/// route change lasts, so no copy of one of its samples is still on its way.
pub const FORGET_AFTER: Duration = Duration::from_secs(120);

/// How many numbers below the newest are told apart as seen or not (for
/// the log: both are dropped).
const WINDOW: u64 = 64;

/// What to do with a stamped sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Deliver,
    /// A copy of one delivered already.
    Duplicate,
    /// Older than one delivered already, and not seen before (or too old
    /// to tell): it lost the race against a newer one on another route.
    Late,
}

struct Publisher {
    newest: u64,
    /// Bit i: `newest - 1 - i` was delivered.
    below: u64,
    heard: Instant,
}

/// One channel's memory of its publishers, keyed by node and incarnation
/// (the node's `mesh_id` keeps one node from spoiling another's numbers).
#[derive(Default)]
pub struct Dedup {
    publishers: HashMap<(String, u64), Publisher>,
}

impl Dedup {
    /// Decides on a sample of node `mesh_id` with `stamp`, received `now`.
    pub fn check(&mut self, mesh_id: &str, stamp: Stamp, now: Instant) -> Verdict {
        let key = (mesh_id.to_owned(), stamp.incarnation);
        let Some(p) = self.publishers.get_mut(&key) else {
            self.make_room(now);
            self.publishers.insert(
                key,
                Publisher {
                    newest: stamp.seq,
                    below: 0,
                    heard: now,
                },
            );
            return Verdict::Deliver;
        };
        p.heard = now;
        if stamp.seq > p.newest {
            let shift = stamp.seq - p.newest;
            p.below = if shift > WINDOW {
                0
            } else {
                // The old newest becomes bit shift-1.
                (p.below << (shift - 1) << 1) | (1 << (shift - 1))
            };
            p.newest = stamp.seq;
            return Verdict::Deliver;
        }
        if stamp.seq == p.newest {
            return Verdict::Duplicate;
        }
        let back = p.newest - stamp.seq - 1;
        if back < WINDOW && p.below & (1 << back) != 0 {
            Verdict::Duplicate
        } else {
            Verdict::Late
        }
    }

    /// How many publishers are remembered.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.publishers.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.publishers.is_empty()
    }

    /// Forgets the silent ones, then, if still full, the least recently heard.
    fn make_room(&mut self, now: Instant) {
        self.publishers
            .retain(|_, p| now.saturating_duration_since(p.heard) < FORGET_AFTER);
        while self.publishers.len() >= MAX_PUBLISHERS {
            let Some(oldest) = self
                .publishers
                .iter()
                .min_by_key(|(_, p)| p.heard)
                .map(|(k, _)| k.clone())
            else {
                return;
            };
            self.publishers.remove(&oldest);
        }
    }
}

/// Stamps this node's publications: its incarnation and a counter that
/// only grows.
#[derive(Debug)]
pub struct Stamper {
    incarnation: u64,
    next: std::sync::atomic::AtomicU64,
}

impl Stamper {
    pub fn new(incarnation: u64) -> Stamper {
        Stamper {
            incarnation,
            next: std::sync::atomic::AtomicU64::new(1),
        }
    }

    pub fn next(&self) -> Stamp {
        Stamp {
            incarnation: self.incarnation,
            seq: self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(incarnation: u64, seq: u64) -> Stamp {
        Stamp { incarnation, seq }
    }

    #[test]
    fn in_order_once_each() {
        let (mut d, now) = (Dedup::default(), Instant::now());
        for seq in 1..=200 {
            assert_eq!(d.check("eu", stamp(7, seq), now), Verdict::Deliver);
        }
        assert_eq!(d.check("eu", stamp(7, 200), now), Verdict::Duplicate);
        assert_eq!(d.check("eu", stamp(7, 150), now), Verdict::Duplicate);
        assert_eq!(d.check("eu", stamp(7, 137), now), Verdict::Duplicate);
        // Beyond the window: cannot tell, still dropped.
        assert_eq!(d.check("eu", stamp(7, 3), now), Verdict::Late);
    }

    #[test]
    fn gaps_are_other_channels_and_a_straggler_is_late() {
        let (mut d, now) = (Dedup::default(), Instant::now());
        // One counter for all of a node's channels: this one sees gaps.
        for seq in [4, 9, 10, 30, 31] {
            assert_eq!(d.check("eu", stamp(1, seq), now), Verdict::Deliver);
        }
        for seq in [4, 9, 10, 30, 31] {
            assert_eq!(
                d.check("eu", stamp(1, seq), now),
                Verdict::Duplicate,
                "{seq}"
            );
        }
        // 20 never came; arriving after 31 it would be out of order.
        assert_eq!(d.check("eu", stamp(1, 20), now), Verdict::Late);
        // A jump past the window forgets the bits, not the newest.
        assert_eq!(d.check("eu", stamp(1, 1000), now), Verdict::Deliver);
        assert_eq!(d.check("eu", stamp(1, 31), now), Verdict::Late);
        assert_eq!(d.check("eu", stamp(1, 1001), now), Verdict::Deliver);
        assert_eq!(d.check("eu", stamp(1, 1000), now), Verdict::Duplicate);
        // The whole window in one step, and one past it.
        assert_eq!(d.check("eu", stamp(1, 1001 + 64), now), Verdict::Deliver);
        assert_eq!(d.check("eu", stamp(1, 1001), now), Verdict::Duplicate);
        assert_eq!(
            d.check("eu", stamp(1, 1001 + 64 + 65), now),
            Verdict::Deliver
        );
        assert_eq!(d.check("eu", stamp(1, 1001 + 64), now), Verdict::Late);
    }

    #[test]
    fn publishers_are_apart() {
        let (mut d, now) = (Dedup::default(), Instant::now());
        assert_eq!(d.check("eu", stamp(1, 5), now), Verdict::Deliver);
        // Same numbers from another node, or from eu restarted (a new
        // incarnation starting again at 1), are new.
        assert_eq!(d.check("us", stamp(1, 5), now), Verdict::Deliver);
        assert_eq!(d.check("eu", stamp(2, 1), now), Verdict::Deliver);
        assert_eq!(d.check("eu", stamp(1, 5), now), Verdict::Duplicate);
        assert_eq!(d.len(), 3);
    }

    #[test]
    fn memory_is_bounded_and_the_silent_are_forgotten() {
        let (mut d, t0) = (Dedup::default(), Instant::now());
        for inc in 0..(MAX_PUBLISHERS as u64 + 10) {
            let now = t0 + Duration::from_millis(inc);
            assert_eq!(d.check("eu", stamp(inc, 1), now), Verdict::Deliver);
            assert!(d.len() <= MAX_PUBLISHERS);
        }
        assert_eq!(d.len(), MAX_PUBLISHERS);
        // The least recently heard went first: incarnation 0 is new again.
        let later = t0 + Duration::from_secs(1);
        assert_eq!(d.check("eu", stamp(0, 1), later), Verdict::Deliver);
        // The last one heard is still known.
        let last = MAX_PUBLISHERS as u64 + 9;
        assert_eq!(d.check("eu", stamp(last, 1), later), Verdict::Duplicate);
        // Silent for FORGET_AFTER: forgotten when the next one arrives.
        let much_later = later + FORGET_AFTER;
        assert_eq!(d.check("us", stamp(1, 1), much_later), Verdict::Deliver);
        assert_eq!(d.len(), 1);
        assert!(!d.is_empty());
    }

    #[test]
    fn the_stamper_counts_up_from_one() {
        let s = Stamper::new(42);
        assert_eq!(s.next(), stamp(42, 1));
        assert_eq!(s.next(), stamp(42, 2));
    }
}
