//! A connection's inbound budget: messages and bytes per second, with
//! bursts of two seconds' worth.
//!
//! Reliable transports never drop what is over budget: they [`charge`] each
//! message and, when the budget is in debt, stop reading for the time it
//! takes to refill, so TCP's and QUIC's flow control slow the sender down.
//! Datagrams have no flow control to lean on: [`try_charge`] refuses them
//! instead, and the caller counts the drop.
//!
//! [`charge`]: Budget::charge
//! [`try_charge`]: Budget::try_charge

use std::time::{Duration, Instant};

/// Burst size, in seconds of the rate.
const BURST_SECS: f64 = 2.0;

#[derive(Debug)]
pub struct Budget {
    msg_rate: f32,
    byte_rate: f32,
    msgs: f32,
    bytes: f32,
    last: Instant,
}

impl Budget {
    /// `msg_rate` messages and `byte_rate` bytes per second; 0 = unlimited.
    pub fn new(msg_rate: u32, byte_rate: u32, now: Instant) -> Budget {
        Budget {
            msg_rate: msg_rate as f32,
            byte_rate: byte_rate as f32,
            msgs: msg_rate as f32 * BURST_SECS as f32,
            bytes: byte_rate as f32 * BURST_SECS as f32,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let secs = now.saturating_duration_since(self.last).as_secs_f32();
        self.last = now;
        let cap = BURST_SECS as f32;
        self.msgs = (self.msgs + secs * self.msg_rate).min(self.msg_rate * cap);
        self.bytes = (self.bytes + secs * self.byte_rate).min(self.byte_rate * cap);
    }

    /// Takes one message of `len` bytes, going into debt if need be (so a
    /// message larger than the burst still passes, and is paid for after).
    /// Returns how long the caller must stop reading, if at all.
    pub fn charge(&mut self, len: usize, now: Instant) -> Option<Duration> {
        self.refill(now);
        let mut wait: f32 = 0.0;
        if self.msg_rate > 0.0 {
            self.msgs -= 1.0;
            wait = wait.max(-self.msgs / self.msg_rate);
        }
        if self.byte_rate > 0.0 {
            self.bytes -= len as f32;
            wait = wait.max(-self.bytes / self.byte_rate);
        }
        (wait > 0.0).then(|| Duration::from_secs_f32(wait))
    }

    /// Takes one message of `len` bytes if the budget has it, else nothing.
    pub fn try_charge(&mut self, len: usize, now: Instant) -> bool {
        self.refill(now);
        let msgs_ok = self.msg_rate == 0.0 || self.msgs >= 1.0;
        let bytes_ok = self.byte_rate == 0.0 || self.bytes >= len as f32;
        if !(msgs_ok && bytes_ok) {
            return false;
        }
        if self.msg_rate > 0.0 {
            self.msgs -= 1.0;
        }
        if self.byte_rate > 0.0 {
            self.bytes -= len as f32;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_waits_proportional_to_debt() {
        let t0 = Instant::now();
        let mut b = Budget::new(10, 0, t0);
        for _ in 0..20 {
            assert_eq!(b.charge(100, t0), None);
        }
        let wait = b.charge(100, t0).unwrap();
        assert!((wait.as_secs_f32() - 0.1).abs() < 0.01, "{wait:?}");
        // After the wait the next one is free again... once refilled.
        let t1 = t0 + wait;
        assert!(b.charge(1, t1).is_some());
        assert_eq!(b.charge(1, t1 + Duration::from_secs(1)), None);
    }

    #[test]
    fn bytes_count_and_large_messages_pass_in_debt() {
        let t0 = Instant::now();
        let mut b = Budget::new(0, 1000, t0);
        assert_eq!(b.charge(2000, t0), None);
        let wait = b.charge(3000, t0).unwrap();
        assert!((wait.as_secs_f32() - 3.0).abs() < 0.01, "{wait:?}");
    }

    #[test]
    fn datagrams_are_refused_not_indebted() {
        let t0 = Instant::now();
        let mut b = Budget::new(2, 0, t0);
        assert!(b.try_charge(10, t0));
        assert!(b.try_charge(10, t0));
        assert!(b.try_charge(10, t0));
        assert!(b.try_charge(10, t0));
        assert!(!b.try_charge(10, t0));
        assert!(b.try_charge(10, t0 + Duration::from_millis(600)));
        let mut unlimited = Budget::new(0, 0, t0);
        for _ in 0..10_000 {
            assert!(unlimited.try_charge(1 << 20, t0));
            assert_eq!(unlimited.charge(1 << 20, t0), None);
        }
    }
}
