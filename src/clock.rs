//! Wall-clock time as the wire and the APIs carry it: milliseconds or
//! microseconds since the Unix epoch. One place, so every stamp (webhook
//! bodies, mesh attachments, pings, the console) reads the same clock the
//! same way; a clock before 1970 reads as 0.

use std::time::{SystemTime, UNIX_EPOCH};

pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}
