//! What nodes exchange over zenoh besides Signalling messages: where
//! (`keys`), who sent a publish (`Origin`) and who is in a channel
//! (`membership`).

pub mod keys;
pub mod membership;
mod origin;

pub use origin::{Origin, Stamp};
