//! Serving HTTP: the worker threads, the direct layer that answers every event stream on the
//! socket, and the actix-web handlers for everything else.
//!
//! Leaves that handlers and streams use (and that use no handler): `state` (the shared
//! state), `admin` (the admin rule), `params` (query parameters and bodies), `session`,
//! `sse` (the wire format), `error` (how a refusal is answered, by either layer). Handler
//! modules never import each other.

pub(crate) mod admin;
pub(crate) mod api;
pub(crate) mod assets;
pub(crate) mod badge;
pub(crate) mod dashboard;
pub(crate) mod direct;
pub(crate) mod error;
pub(crate) mod owner;
pub(crate) mod params;
pub(crate) mod pulse;
pub mod scheduling;
pub(crate) mod server;
pub(crate) mod session;
pub mod sse;
pub(crate) mod state;
pub(crate) mod streams;
pub(crate) mod watch;
