//! prscd-bench as a library: the load engine and the client side of every
//! server kind, shared by the `prscd-bench` binary and by `prscd-chaos`
//! (which drives its simulated browsers with `wire` and `ws`).
//!
//! Modules: `net` (connections), `wire` + `socketio` (what each server kind
//! expects on the socket), `ws` (the WebSocket client), `load` (the engine
//! behind every client-load scenario), `presence` (room-join), `death` (the
//! mesh failure scenario), `measure` (histograms, /proc, progress),
//! `ceiling` (the ceiling server).

pub mod ceiling;
pub mod death;
pub mod load;
pub mod measure;
pub mod net;
pub mod presence;
pub mod socketio;
pub mod wire;
pub mod ws;
