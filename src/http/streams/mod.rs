//! Event streams: one front door and one life for every kind.
//!
//! Every stream request comes in through [`crate::http::direct`], which reads its head and
//! calls [`open`]: the one admission, a function per kind below (origin and fetch rules, the
//! admin rule, limits and permit, counting) after the rules all kinds share (nothing starts
//! once the server is stopping). Each kind supplies only its first event and its content;
//! [`lifecycle::live`] makes the body (first event, heartbeats, shutdown hint, the place in
//! the limits), and the direct layer writes the one response head all streams share.
//!
//! The kinds: a reader's stream of one post ([`reader`]), a shared stream carrying many tabs'
//! readers and a watch stream carrying posts followed without counting ([`shared`]), and the
//! owner's dashboard ([`admin`]).

pub(crate) mod admin;
pub(crate) mod lifecycle;
pub(crate) mod reader;
pub(crate) mod shared;

use std::net::IpAddr;
use std::sync::Arc;

use crate::edge::reader_id::ReaderId;
use crate::http::admin::authorize_admin_read;
use crate::http::params::{self, Caller, request_client};
use crate::http::sse;
use crate::http::state::AppState;
use crate::http::streams::lifecycle::{Body, live};
use crate::http::streams::shared::SharedStream;
use crate::refusal::Refusal;

/// The kinds of stream, by the route that opens them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `GET /api/v1/connect/{slug}`
    Reader,
    /// `GET /api/v1/shared/{sid}`
    Shared,
    /// `GET /api/v1/watch?slug=…`
    Watch,
    /// `GET /api/v1/admin/stream`
    Admin,
}

impl Kind {
    /// Whether the stream takes a place in `--max-streams` and its client's budget (and so
    /// shows in `/stats`); the dashboard's does not.
    pub(crate) fn holds_a_place(self) -> bool {
        self != Self::Admin
    }
}

/// What opening a stream reads from its request (parsed by [`crate::http::direct`]).
pub(crate) struct StreamRequest<'a> {
    /// The connection's peer.
    pub peer: IpAddr,
    /// The path segment naming the post (or the shared stream), percent-escapes decoded;
    /// empty for the kinds whose path names nothing.
    pub name: &'a str,
    /// What follows the `?`, as sent.
    pub query: &'a str,
    /// The request's headers, as sent: the origin, fetch and admin rules read them.
    pub headers: &'a [httparse::Header<'a>],
}

impl<'a> Caller for StreamRequest<'a> {
    type Headers = [httparse::Header<'a>];

    fn peer(&self) -> Option<IpAddr> {
        Some(self.peer)
    }

    fn headers(&self) -> &Self::Headers {
        self.headers
    }
}

/// Admits a stream of `kind` and makes its body, or says why not.
pub(crate) async fn open(
    state: &Arc<AppState>,
    kind: Kind,
    req: StreamRequest<'_>,
) -> Result<Body, Refusal> {
    // Once the server is stopping no stream starts, whatever it asks: checked here once for
    // every kind, before anything is counted or held.
    if state.signals.shutdown.is_started() {
        return Err(Refusal::ShuttingDown);
    }
    match kind {
        Kind::Reader => reader(state, req).await,
        Kind::Shared => shared(state, req),
        Kind::Watch => watch(state, req).await,
        Kind::Admin => admin_stream(state, req).await,
    }
}

/// The rules of the streams a blog's pages open: an allowed `Origin`, and a `fetch` or
/// `EventSource` request rather than a navigation, frame or image.
fn from_a_page(state: &AppState, req: &StreamRequest<'_>) -> Result<(), Refusal> {
    state.origins.check(req.headers)?;
    state.origins.check_fetch(req.headers)
}

/// A reader's stream of one post: admitted, counted (the view), its body ready to send.
async fn reader(state: &AppState, req: StreamRequest<'_>) -> Result<Body, Refusal> {
    from_a_page(state, &req)?;
    let client = request_client(&req, state);
    let (slug, admission) = state.post(req.name, client)?;
    let showing = params::showing(req.query, req.headers)?;
    let permit = state.limits.acquire(client)?;
    let joined = state
        .join(req.headers, client, &slug, admission, &showing)
        .await?;
    let first = sse::first_event(&showing.id, joined.counts);
    let updates = reader::Updates::new(joined.updates, joined.departure);
    Ok(live(first, updates, state.signals.subscribe(), permit))
}

/// A shared stream (see [`shared`]); readers join it by POST.
fn shared(state: &AppState, req: StreamRequest<'_>) -> Result<Body, Refusal> {
    from_a_page(state, &req)?;
    let sid = ReaderId::parse(req.name)?;
    let permit = state.limits.acquire(request_client(&req, state))?;
    let content = state.shared.open(sid, Arc::clone(&state.limits));
    Ok(live(
        sse::shared_start(),
        content,
        state.signals.subscribe(),
        permit,
    ))
}

/// A watch stream: its posts followed (see [`crate::http::watch`]), nothing counted.
async fn watch(state: &AppState, req: StreamRequest<'_>) -> Result<Body, Refusal> {
    from_a_page(state, &req)?;
    let slugs = params::watched_param(&params::pairs(req.query))?;
    let client = request_client(&req, state);
    let permit = state.limits.acquire(client)?;
    let watched = state.follow(slugs, client).await?;
    Ok(live(
        sse::shared_start(),
        SharedStream::watching(watched),
        state.signals.subscribe(),
        permit,
    ))
}

/// The owner's dashboard (see [`admin`]): by the admin rule for reads, the session cookie
/// included; it holds no place in the limits.
async fn admin_stream(state: &Arc<AppState>, req: StreamRequest<'_>) -> Result<Body, Refusal> {
    authorize_admin_read(&req, state)?;
    let (first, rows) = admin::board(state).await?;
    Ok(live(first, rows, state.signals.subscribe(), ()))
}
