//! The seeded fault schedule: the same seed gives the same faults, with the
//! same parameters, in the same order (SplitMix64: a few lines, no crate,
//! and not cryptography: it only has to be deterministic).
//!
//! Faults come in rounds; each round is every kind once, in a seeded order,
//! so a short run still sees many kinds.

use std::fmt;
use std::time::Duration;

use crate::cluster::REGIONS;

/// SplitMix64 (Steele, Lea, Flood 2014).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x5EED_C4A0_5EED_C4A0)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0; the modulo bias is irrelevant here).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    pub fn ms(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.next_u64() % (hi - lo + 1))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Kill9,
    SigStop,
    SigTerm,
    Isolate,
    OneWay,
    Flap,
    RouterRestart,
    ClientReconnect,
}

pub const KINDS: [Kind; 8] = [
    Kind::Kill9,
    Kind::SigStop,
    Kind::SigTerm,
    Kind::Isolate,
    Kind::OneWay,
    Kind::Flap,
    Kind::RouterRestart,
    Kind::ClientReconnect,
];

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Kill9 => "kill9_restart",
            Kind::SigStop => "sigstop_past_lease",
            Kind::SigTerm => "sigterm_drain_restart",
            Kind::Isolate => "region_isolated",
            Kind::OneWay => "one_way_cut",
            Kind::Flap => "flapping_link",
            Kind::RouterRestart => "router_restart",
            Kind::ClientReconnect => "client_reconnects",
        }
    }
}

/// One fault and its parameters.
#[derive(Debug, Clone)]
pub enum Fault {
    /// `kill -9` the region's node, restart it after `down`.
    Kill9 { region: usize, down: Duration },
    /// SIGSTOP the node for `pause` (past the 2 s zenoh lease), then SIGCONT.
    SigStop { region: usize, pause: Duration },
    /// SIGTERM (drain), wait for the exit, restart after `down`.
    SigTerm { region: usize, down: Duration },
    /// Every WAN link of the region cut, both ways, silently, for `cut`.
    Isolate { region: usize, cut: Duration },
    /// The region's WAN link drops packets one way only (`inbound`: towards
    /// the region) for `cut`.
    OneWay {
        region: usize,
        inbound: bool,
        cut: Duration,
    },
    /// One inter-region link goes down and up: (down, up) durations.
    Flap {
        link: usize,
        toggles: Vec<(Duration, Duration)>,
    },
    /// `kill -9` the region's zenohd router, restart it after `down`.
    RouterRestart { region: usize, down: Duration },
    /// These clients close their connection and reconnect as the client does.
    ClientReconnect { clients: Vec<usize> },
}

impl Fault {
    pub fn kind(&self) -> Kind {
        match self {
            Fault::Kill9 { .. } => Kind::Kill9,
            Fault::SigStop { .. } => Kind::SigStop,
            Fault::SigTerm { .. } => Kind::SigTerm,
            Fault::Isolate { .. } => Kind::Isolate,
            Fault::OneWay { .. } => Kind::OneWay,
            Fault::Flap { .. } => Kind::Flap,
            Fault::RouterRestart { .. } => Kind::RouterRestart,
            Fault::ClientReconnect { .. } => Kind::ClientReconnect,
        }
    }
}

/// Link index → its two regions (eu-us, eu-ap, us-ap).
pub const LINKS: [(usize, usize); 3] = [(0, 1), (0, 2), (1, 2)];

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = |d: &Duration| d.as_millis();
        match self {
            Fault::Kill9 { region, down } => {
                write!(
                    f,
                    "kill -9 node {}, restart after {} ms",
                    REGIONS[*region],
                    ms(down)
                )
            }
            Fault::SigStop { region, pause } => write!(
                f,
                "SIGSTOP node {} for {} ms, then SIGCONT",
                REGIONS[*region],
                ms(pause)
            ),
            Fault::SigTerm { region, down } => write!(
                f,
                "SIGTERM (drain) node {}, restart {} ms after its exit",
                REGIONS[*region],
                ms(down)
            ),
            Fault::Isolate { region, cut } => write!(
                f,
                "isolate region {} (all its WAN links, both ways) for {} ms",
                REGIONS[*region],
                ms(cut)
            ),
            Fault::OneWay {
                region,
                inbound,
                cut,
            } => write!(
                f,
                "one-way cut of region {}'s WAN link ({}) for {} ms",
                REGIONS[*region],
                if *inbound { "towards it" } else { "from it" },
                ms(cut)
            ),
            Fault::Flap { link, toggles } => {
                let (a, b) = LINKS[*link];
                write!(f, "flap link {}-{}:", REGIONS[a], REGIONS[b])?;
                for (down, up) in toggles {
                    write!(f, " down {} up {}", ms(down), ms(up))?;
                }
                write!(f, " ms")
            }
            Fault::RouterRestart { region, down } => write!(
                f,
                "kill -9 zenohd router {}, restart after {} ms",
                REGIONS[*region],
                ms(down)
            ),
            Fault::ClientReconnect { clients } => {
                write!(
                    f,
                    "{} clients close and reconnect: {clients:?}",
                    clients.len()
                )
            }
        }
    }
}

/// The endless seeded sequence of faults.
pub struct Plan {
    rng: Rng,
    kinds: Vec<Kind>,
    round: Vec<Kind>,
    clients: usize,
}

impl Plan {
    /// `routers`: the topology has zenohd routers (else no router faults).
    pub fn new(seed: u64, routers: bool, clients: usize) -> Plan {
        let kinds = KINDS
            .iter()
            .copied()
            .filter(|k| routers || *k != Kind::RouterRestart)
            .collect();
        Plan {
            rng: Rng::new(seed),
            kinds,
            round: Vec::new(),
            clients,
        }
    }

    pub fn next_fault(&mut self) -> Fault {
        if self.round.is_empty() {
            self.round = self.kinds.clone();
            // Fisher-Yates; popped from the end.
            for i in (1..self.round.len()).rev() {
                let j = self.rng.below(i + 1);
                self.round.swap(i, j);
            }
        }
        let kind = self.round.pop().expect("a round has kinds");
        let r = &mut self.rng;
        let region = r.below(3);
        match kind {
            Kind::Kill9 => Fault::Kill9 {
                region,
                down: r.ms(300, 2500),
            },
            Kind::SigStop => Fault::SigStop {
                region,
                pause: r.ms(3000, 4500),
            },
            Kind::SigTerm => Fault::SigTerm {
                region,
                down: r.ms(300, 2000),
            },
            Kind::Isolate => Fault::Isolate {
                region,
                cut: r.ms(2500, 5000),
            },
            Kind::OneWay => Fault::OneWay {
                region,
                inbound: r.below(2) == 0,
                cut: r.ms(2500, 5000),
            },
            Kind::Flap => {
                let n = 2 + r.below(4);
                Fault::Flap {
                    link: r.below(3),
                    toggles: (0..n).map(|_| (r.ms(200, 2500), r.ms(200, 1500))).collect(),
                }
            }
            Kind::RouterRestart => Fault::RouterRestart {
                region,
                down: r.ms(300, 2500),
            },
            Kind::ClientReconnect => {
                let k = 3 + r.below(8);
                let mut chosen: Vec<usize> = Vec::new();
                while chosen.len() < k.min(self.clients) {
                    let c = r.below(self.clients);
                    if !chosen.contains(&c) {
                        chosen.push(c);
                    }
                }
                chosen.sort_unstable();
                Fault::ClientReconnect { clients: chosen }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_faults_and_rounds_cover_every_kind() {
        let faults = |seed| {
            let mut p = Plan::new(seed, true, 45);
            (0..16)
                .map(|_| p.next_fault().to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(faults(7), faults(7));
        assert_ne!(faults(7), faults(8));
        let mut p = Plan::new(1, true, 45);
        let mut kinds: Vec<Kind> = (0..KINDS.len()).map(|_| p.next_fault().kind()).collect();
        kinds.sort();
        assert_eq!(kinds, KINDS.to_vec());
        let mut p = Plan::new(1, false, 45);
        assert!((0..21).all(|_| p.next_fault().kind() != Kind::RouterRestart));
    }
}
