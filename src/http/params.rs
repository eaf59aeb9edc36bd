//! What a request carries besides its route, read the same way by every handler and stream:
//! who sent it ([`Caller`]), its query parameters, the reader it names, and bodies read within
//! their size and time limits.

use std::collections::HashSet;
use std::net::IpAddr;
use std::time::Duration;

use actix_web::http::header::{self, HeaderMap};
use actix_web::{HttpRequest, web};
use futures_util::StreamExt;

use crate::edge::headers::Headers;
use crate::edge::limits::ClientKey;
use crate::edge::reader_id::{ReaderId, Showing, parse_show};
use crate::edge::slug::{Slug, SlugError};
use crate::http::state::AppState;
use crate::http::streams::shared::Handle;
use crate::refusal::Refusal;

/// Largest beacon body accepted; a reader id is at most 64 bytes.
pub(crate) const MAX_BEACON_BYTES: usize = 1024;
/// A beacon or join body must arrive within this long of its head: a client that declares a
/// body and stalls would otherwise hold its connection (and a descriptor) for ever.
pub(crate) const BODY_DEADLINE: Duration = Duration::from_secs(5);
/// Posts one `counts` or `watch` request may name.
pub(crate) const MAX_SLUGS_PER_REQUEST: usize = 100;

/// A request as the rules read it, whichever layer parsed its head: actix-web's
/// [`HttpRequest`], or a stream request read by [`crate::http::direct`].
pub(crate) trait Caller {
    /// The request's headers.
    type Headers: Headers + ?Sized;

    /// The connection's peer, if known.
    fn peer(&self) -> Option<IpAddr>;

    /// The request's headers, as the rules read them whichever layer parsed them.
    fn headers(&self) -> &Self::Headers;
}

impl Caller for HttpRequest {
    type Headers = HeaderMap;

    fn peer(&self) -> Option<IpAddr> {
        self.peer_addr().map(|a| a.ip())
    }

    fn headers(&self) -> &HeaderMap {
        HttpRequest::headers(self)
    }
}

/// Whose budgets the request draws on ([`AppState::client_key`]).
pub(crate) fn request_client(req: &impl Caller, state: &AppState) -> ClientKey {
    state.client_key(req.peer(), req.headers())
}

/// The `name=value` pairs of a query string, decoded.
pub(crate) fn pairs(query: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect()
}

/// The request's query, as [`pairs`].
pub(crate) fn query(req: &HttpRequest) -> Vec<(String, String)> {
    pairs(req.query_string())
}

pub(crate) fn param<'q>(pairs: &'q [(String, String)], name: &str) -> Option<&'q str> {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// `name` as a number in `range`, `default` when absent; 400 otherwise.
pub(crate) fn number_param(
    pairs: &[(String, String)],
    name: &str,
    range: std::ops::RangeInclusive<u32>,
    default: u32,
) -> Result<u32, Refusal> {
    let Some(raw) = param(pairs, name) else {
        return Ok(default);
    };
    raw.parse()
        .ok()
        .filter(|n| range.contains(n))
        .ok_or_else(|| {
            Refusal::BadRequest(format!(
                "{name} must be a whole number from {} to {}",
                range.start(),
                range.end()
            ))
        })
}

/// The slugs of a `slug=A&slug=B` query: 1 to 100, each well-formed, repeats dropped.
pub(crate) fn slugs_param(pairs: &[(String, String)]) -> Result<Vec<Slug>, Refusal> {
    slugs_param_by(pairs, Slug::parse)
}

/// The posts a watch asks for, as [`slugs_param`], `*` (the whole site) included.
pub(crate) fn watched_param(pairs: &[(String, String)]) -> Result<Vec<Slug>, Refusal> {
    slugs_param_by(pairs, Slug::parse_watched)
}

fn slugs_param_by(
    pairs: &[(String, String)],
    parse: fn(&str) -> Result<Slug, SlugError>,
) -> Result<Vec<Slug>, Refusal> {
    let mut seen = HashSet::new();
    let mut slugs = Vec::new();
    for (_, raw) in pairs.iter().filter(|(k, _)| k == "slug") {
        let slug = parse(raw)?;
        if seen.insert(slug.clone()) {
            slugs.push(slug);
        }
    }
    if slugs.is_empty() || slugs.len() > MAX_SLUGS_PER_REQUEST {
        return Err(Refusal::BadRequest(format!(
            "give 1 to {MAX_SLUGS_PER_REQUEST} slugs as slug=…&slug=…"
        )));
    }
    Ok(slugs)
}

/// The reader id: `?view=` (the page view's token), else `Last-Event-ID` (a reconnect of a
/// stream whose id the server chose), else a new one; and `?show=`, the page showing (0).
pub(crate) fn showing(query: &str, headers: &(impl Headers + ?Sized)) -> Result<Showing, Refusal> {
    let param = |name| query.split('&').find_map(|pair| pair.strip_prefix(name));
    let show = param("show=").map(parse_show).transpose()?.unwrap_or(0);
    let id = match param("view=") {
        Some(view) => ReaderId::parse(view)?,
        None => headers
            .text("last-event-id")
            .and_then(|id| ReaderId::parse(id).ok())
            .unwrap_or_else(ReaderId::generate),
    };
    Ok(Showing { id, show })
}

/// The open shared stream the path's `{sid}` names: 400 malformed, 404 not open here.
pub(crate) fn shared_handle(req: &HttpRequest, state: &AppState) -> Result<Handle, Refusal> {
    let sid = ReaderId::parse(req.match_info().get("sid").unwrap_or_default())?;
    state
        .shared
        .handle(sid.as_str())
        .ok_or(Refusal::NoSharedStream)
}

/// A beacon body: a reader id and page show, at most `MAX_BEACON_BYTES` (413 beyond, 400 if
/// malformed), within `BODY_DEADLINE` (408, and the connection closes).
pub(crate) async fn read_showing(
    req: &HttpRequest,
    payload: web::Payload,
) -> Result<Showing, Refusal> {
    let body = read_beacon(req, payload, MAX_BEACON_BYTES).await?;
    Ok(Showing::from_beacon(&body)?)
}

/// A leave's body: a reader id, page show and optionally the visible milliseconds (see
/// [`Showing::from_leave`]), read like [`read_showing`].
pub(crate) async fn read_leave(
    req: &HttpRequest,
    payload: web::Payload,
) -> Result<(Showing, Option<Duration>), Refusal> {
    let body = read_beacon(req, payload, MAX_BEACON_BYTES).await?;
    let (showing, visible) = Showing::from_leave(&body)?;
    Ok((
        showing,
        visible.map(|ms| Duration::from_millis(u64::from(ms))),
    ))
}

/// A beacon's body: at most `limit` bytes, refused (413) as soon as it is declared longer,
/// within `BODY_DEADLINE` (408, and the connection closes).
pub(crate) async fn read_beacon(
    req: &HttpRequest,
    payload: web::Payload,
    limit: usize,
) -> Result<web::BytesMut, Refusal> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(Refusal::BodyTooLarge(limit));
    }
    tokio::time::timeout(BODY_DEADLINE, read_body(payload, limit))
        .await
        .map_err(|_| Refusal::BodyTimeout(BODY_DEADLINE))?
}

/// A request body of at most `limit` bytes (413 beyond).
pub(crate) async fn read_body(
    mut payload: web::Payload,
    limit: usize,
) -> Result<web::BytesMut, Refusal> {
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|_| Refusal::BadBody)?;
        if body.len() + chunk.len() > limit {
            return Err(Refusal::BodyTooLarge(limit));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
