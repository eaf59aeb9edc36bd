//! Serving HTTP: the worker threads, the direct stream layer, and the actix-web handlers.

pub(crate) mod admin_stream;
pub(crate) mod api;
pub(crate) mod assets;
pub(crate) mod badge;
pub(crate) mod dashboard;
pub(crate) mod direct;
pub(crate) mod error;
pub(crate) mod owner;
pub mod scheduling;
pub(crate) mod server;
pub(crate) mod session;
pub(crate) mod shared;
pub mod sse;
pub(crate) mod watch;
