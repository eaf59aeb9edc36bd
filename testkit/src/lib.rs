//! What viewcounter's integration tests share (`tests/api`, `tests/cluster`): the server on
//! port 0 in its own temp dir, as the library inside the test's actix System or as the real
//! binary; a small HTTP/1.1 and SSE client over raw sockets; a `redis-server` of the test's
//! own and the one way to put cluster nodes on it; the readers of counts, stats and metrics.
//!
//! Nothing here sleeps to synchronise: every read has a deadline, and waiting for a state is
//! reading events (or polling an endpoint) until it shows up or the deadline passes.
//!
//! Everything is re-exported at the root: a test file says `use testkit::*;`.

mod app;
mod bin;
mod http;
mod node;
mod receiver;
mod redis;

pub use crate::app::*;
pub use crate::bin::*;
pub use crate::http::*;
pub use crate::node::*;
pub use crate::receiver::*;
pub use crate::redis::*;
