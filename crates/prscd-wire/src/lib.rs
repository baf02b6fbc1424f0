//! prscd-wire: the bytes prscd shares with other programs, pure and
//! without I/O, so the node, the tools, the tests and the fuzz targets read
//! and write them with one implementation.
//!
//! - [`protocol`]: the msgpack Signalling message between clients and nodes.
//! - [`percent`]: `%XX` encoding of names in query strings and key expressions.
//! - [`mesh`]: the zenoh key expressions, the publish attachment and the
//!   channel rosters that nodes exchange.

pub mod mesh;
pub mod percent;
pub mod protocol;
