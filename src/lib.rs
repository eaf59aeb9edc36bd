//! viewcounter: a live view counter for blog posts, served by one binary.
//!
//! A reader's page opens a Server-Sent Events stream per post; opening it is the view, and
//! every reader of that post is pushed `{live,total}` as people arrive and leave.
//!
//! The layout, by layer, top to bottom; a module calls only modules below it (CI checks there
//! are no cycles: `.ci/cycles.py src`), and a lower layer that needs something from above
//! defines a port (a trait) that the upper one implements:
//! - [`cli`], [`config`], [`startup`] (and `fuzzing`, the fuzz targets' way in, not an API):
//!   the command line (each flag also read from `VIEWCOUNTER_*`, defaults stated once), the
//!   `export` and `import` commands (from the file, or through the server that holds it or
//!   that `--url` names); the typed settings, built once from the command line
//!   (`TryFrom<ServeArgs>`) or directly ([`config::Config::new`]: the defaults); and
//!   [`Application::build`], which checks a [`config::Config`] once, binds and wires
//!   everything; [`Application::run_until`] serves until told to stop, then drains, ends the
//!   background tasks through the one shutdown signal (`shutdown`) and flushes.
//! - [`http`]: serving. `server`: the worker threads, each accepting on the shared listener;
//!   `direct`: each connection's head is read there, the four stream routes are answered (or
//!   refused) on the socket itself, the rest goes to actix-web; `streams`: the one admission
//!   (a function per kind: reader, shared, watch, the dashboard's) and the one `lifecycle`
//!   (first event, heartbeats, shutdown hint, place in the limits) around each kind's content
//!   (`reader`, `shared`: one stream carrying the readers of many tabs, or posts watched
//!   without counting; `admin`: the dashboard's rows); the handlers, which never call each
//!   other: `api` (the readers' `/api/v1` beacons), `watch` (what a shared stream watches),
//!   `owner` (what the owner and index pages read: history, counts, top, `badge`, metrics,
//!   imports), `dashboard` (the owner's page at `/admin`, its login and the `session`
//!   cookie); the leaves they share: `state`, `admin` (the admin rule), `params` (parameters
//!   and bodies), [`http::sse`] (the wire format), `error` (the one renderer of a refusal, for
//!   actix-web and the direct layer alike); `assets`: the embedded script and page.
//! - [`cluster`] (`--redis`): several nodes on one Redis. It implements the posts' counting
//!   port (`posts::cluster_port`: one Lua script per view, the outbox in the redb file while
//!   Redis does not answer, other nodes' live readers; a single node's implementation is
//!   `posts::local_counting`); its tasks (heartbeat, pub/sub, replay)
//!   reach the posts through the registry; `cluster::store` is the writer's `Store` on Redis
//!   for the owner's reads. Its [`cluster::Settings`] are built by [`config`].
//! - [`posts`]: `registry`: slug → post actor, woken on the first reader, asleep when idle;
//!   [`posts::post`]: one actor per post, coalesced broadcast of a [`posts::update::Update`]
//!   (encoded once, shared by every stream; also told to `changes`, the registry-wide feed
//!   the dashboard follows); its counting rules (live readers, dedupe) are `post_state`,
//!   free of actors so they can be tested; the total is what its counter decided. Posts
//!   call neither HTTP nor the cluster.
//! - [`storage`]: [`storage::writer`]: the debounced writer thread, flushing deltas (totals
//!   and days) to a [`storage::store::Store`] (redb); [`storage::calendar`]: the day a view
//!   is counted on, and the clock; the largest count (`MAX_COUNT`). Beside it, `import`: the
//!   one import, for `cli` and `http` alike: the file parsers (`import::file`), the plan the
//!   writer applies, and the summary.
//! - [`edge`]: input validated once ([`edge::slug`], [`edge::reader_id`]), the request
//!   headers both layers read, and who may count and how much: `slug_list` (which posts
//!   exist), `origin`, [`edge::client_ip`], `limits`.
//! - Leaves: `refusal` (the one refusal type every layer returns), `metrics` (Prometheus
//!   series), `shutdown` (the one signal and the task group it ends), [`memory`] (giving freed
//!   memory back after a wave of readers, which glibc's malloc keeps otherwise; the threads it
//!   empties are handed to it), [`secret`] (the admin token and the `--redis` URL, which never
//!   print their secrets).

#![warn(unreachable_pub)]

pub mod alerts;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod edge;
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub(crate) mod import;
pub mod memory;
pub(crate) mod metrics;
pub mod posts;
pub(crate) mod refusal;
pub mod secret;
pub(crate) mod shutdown;
pub mod startup;
pub mod storage;

pub use startup::Application;
