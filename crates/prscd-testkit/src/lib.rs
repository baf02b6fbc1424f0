//! prscd-testkit: what the integration tests (`tests/common`) and the
//! tools (`prscd-chaos`) both need to stage a mesh on one machine, written
//! once.
//!
//! - [`netns`]: Linux network namespaces: create, remove with what runs
//!   inside, clean up after a crashed run, connect from inside one.
//! - [`ready`]: start a process and wait for its `ready: port=N` line.

pub mod netns;
pub mod ready;
