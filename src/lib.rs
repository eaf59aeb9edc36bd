//! viewcounter: a live view counter for blog posts, served by one binary.
//!
//! A reader's page opens a Server-Sent Events stream per post; opening it is the view, and
//! every reader of that post is pushed `{live,total}` as people arrive and leave.
//!
//! The layout, from the edge inwards:
//! - [`cli`]: the flags of `serve`, `export` and `import` (each also read from `VIEWCOUNTER_*`).
//! - [`startup`]: [`Application::build`] binds and wires everything once;
//!   [`Application::run_until`] serves until told to stop, then drains and flushes.
//! - [`server`]: the worker threads, each accepting on the shared listener; [`direct`]: each
//!   connection's head is read there, the stream routes are admitted and answered (or
//!   refused) on the socket itself, the rest goes to actix-web; [`headers`]: the request headers both layers read; [`scheduling`]:
//!   how the kernel schedules the workers.
//! - [`api`]: the `/api/v1` handlers of readers; [`owner`]: what the owner and index pages
//!   read (history, counts, top, badge via [`badge`], [`metrics`], imports);
//!   [`assets`]: the embedded script and demo page.
//! - [`slug`], [`reader_id`]: input validated once at the edge; [`slug_list`]: which posts
//!   exist; [`origin`], [`client_ip`], [`limits`]: who may count, and how much.
//! - [`registry`]: slug → [`post::Post`] actor, woken on the first reader, asleep when idle.
//! - [`post`]: one actor per post: coalesced broadcast, sleep when idle; its counting rules
//!   (live readers, total, dedupe) are [`post_state`], free of actors so they can be tested.
//! - [`sse`]: the wire format and the body stream each reader holds; [`shared`]: one stream
//!   carrying the readers of many tabs, for browsers limited to six connections per origin.
//! - [`writer`]: the debounced writer thread, flushing deltas (totals and days) to a
//!   [`store::Store`]; [`calendar`]: the day a view is counted on, and the clock.
//! - [`store`]: the `Store` trait and its redb implementation.
//! - [`export`]: `viewcounter export`, from the file or from the running server; [`import`]:
//!   `viewcounter import`, onto the file or through the server, of what [`import_file`] reads.
//! - [`error`]: the one error type of the HTTP layer, answered as JSON; [`memory`]: giving
//!   freed memory back after a wave of readers.

pub mod api;
pub mod assets;
pub mod badge;
pub mod calendar;
pub mod cli;
pub mod client_ip;
pub mod direct;
pub mod error;
pub mod export;
pub mod headers;
pub mod import;
pub mod import_file;
pub mod limits;
pub mod memory;
pub mod metrics;
pub mod origin;
pub mod owner;
pub mod post;
pub mod post_state;
pub mod reader_id;
pub mod registry;
pub mod scheduling;
pub mod server;
pub mod shared;
pub mod shutdown;
pub mod slug;
pub mod slug_list;
pub mod sse;
pub mod startup;
pub mod store;
pub mod writer;

pub use startup::Application;
