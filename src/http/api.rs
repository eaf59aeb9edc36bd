//! The readers' handlers of `/api/v1` served by actix-web (beacons, counts, joining shared
//! streams) and the owner's totals and stats. The streams themselves are
//! [`crate::http::streams`]'s.

use std::sync::atomic::Ordering;
use std::time::Duration;

use actix_web::http::header::{self, ContentType};
use actix_web::{HttpRequest, HttpResponse, web};

use crate::edge::limits::{ClientKey, PER_IP_RETRY_AFTER};
use crate::edge::reader_id::Showing;
use crate::edge::slug::Slug;
use crate::edge::slug_list::Admission;
use crate::http::admin::authorize_admin_read;
use crate::http::params::{read_leave, read_showing, request_client, shared_handle};
use crate::http::state::AppState;
use crate::http::streams::shared::{JoinError, Member};
use crate::posts::post::Leave;
use crate::refusal::Refusal;

pub(crate) fn routes(cfg: &mut web::ServiceConfig) {
    // The stream routes (`GET /connect/{slug}`, `GET /shared/{sid}`, `GET /watch`,
    // `GET /admin/stream`) are served by `crate::http::direct`, before actix-web.
    cfg.route("/leave/{slug:.*}", web::post().to(leave))
        .route("/count/{slug:.*}", web::get().to(count))
        .route("/shared/{sid}/join/{slug:.*}", web::post().to(shared_join))
        .route(
            "/shared/{sid}/leave/{slug:.*}",
            web::post().to(shared_leave),
        )
        .route("/totals", web::get().to(totals))
        .route("/stats", web::get().to(stats));
}

/// What a POST naming a reader says, checked.
struct Beacon {
    slug: Slug,
    admission: Admission,
    showing: Showing,
    client: ClientKey,
    /// A leave's reading time (`ID SHOW MS`); a join has none.
    visible: Option<Duration>,
}

/// Which body a POST naming a reader has.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Body {
    /// `ID` or `ID SHOW`.
    Join,
    /// Also `ID SHOW MS`.
    Leave,
}

/// The common start of every POST that names a reader: origin, post, then the body.
async fn beacon(
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
    body: Body,
) -> Result<Beacon, Refusal> {
    state.origins.check(req.headers())?;
    let client = request_client(req, state);
    let (slug, admission) = state.post(req.match_info().get("slug").unwrap_or_default(), client)?;
    let (showing, visible) = match body {
        Body::Join => (read_showing(req, payload).await?, None),
        Body::Leave => read_leave(req, payload).await?,
    };
    Ok(Beacon {
        slug,
        admission,
        showing,
        client,
        visible,
    })
}

/// A leave: the post hears it (the reader stops counting as live, its reading time is told).
async fn leave_beacon(
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
) -> Result<Beacon, Refusal> {
    let beacon = beacon(req, payload, state, Body::Leave).await?;
    state.registry.leave(
        &beacon.slug,
        Leave {
            presence: beacon.showing.presence(),
            visible: beacon.visible,
        },
    );
    Ok(beacon)
}

async fn leave(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Refusal> {
    leave_beacon(&req, payload, &state).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// `POST /shared/{sid}/join/{slug}`: attaches a reader to a shared stream; this is its view.
async fn shared_join(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Refusal> {
    state.origins.check_fetch(req.headers())?;
    let Beacon {
        slug,
        admission,
        showing,
        client,
        ..
    } = beacon(&req, payload, &state, Body::Join).await?;
    let shared = shared_handle(&req, &state)?;
    // Held from here on: dropped with this request if it ends before the member is attached.
    let seat = match shared.reserve(&slug, showing.presence(), client) {
        Ok(seat) => seat,
        Err(JoinError::Already) => return Ok(HttpResponse::NoContent().finish()),
        Err(JoinError::OverBudget(e)) => return Err(e),
        Err(JoinError::Full | JoinError::Closed) => {
            return Err(Refusal::TooManyStreams {
                retry_after: PER_IP_RETRY_AFTER,
            });
        }
    };
    let joined = state
        .join(req.headers(), client, &slug, admission, &showing)
        .await?;
    let member = Member {
        first: crate::posts::update::tagged_event(&slug, joined.counts),
        seat,
        updates: joined.updates,
        departure: joined.departure,
    };
    // If the stream closed meanwhile, the member is dropped and departs at once.
    shared.join(member).map_err(|_| Refusal::NoSharedStream)?;
    Ok(HttpResponse::NoContent().finish())
}

/// `POST /shared/{sid}/leave/{slug}`: detaches a reader; unknown readers are fine.
async fn shared_leave(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Refusal> {
    // The post hears the beacon first (the reading time), then the member is detached.
    let Beacon { slug, showing, .. } = leave_beacon(&req, payload, &state).await?;
    if let Ok(shared) = shared_handle(&req, &state) {
        shared.leave(slug, showing.presence());
    }
    Ok(HttpResponse::NoContent().finish())
}

async fn count(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, Refusal> {
    state.origins.check(req.headers())?;
    let client = request_client(&req, &state);
    let (slug, _) = state.post(req.match_info().get("slug").unwrap_or_default(), client)?;
    let counts = state.registry.counts(&slug).await?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(counts))
}

#[derive(serde::Serialize)]
struct TotalRow {
    slug: String,
    total: u64,
}

async fn totals(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, Refusal> {
    authorize_admin_read(&req, &state)?;
    let rows = state
        .registry
        .writer()
        .totals()
        .await
        .map_err(Refusal::from)?;
    let rows: Vec<TotalRow> = rows
        .into_iter()
        .map(|(slug, total)| TotalRow { slug, total })
        .collect();
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(rows))
}

/// What an operator (or a test) needs to see that memory follows the readers.
#[derive(serde::Serialize)]
struct Stats {
    posts_awake: usize,
    streams: usize,
    /// Of `streams`, those answered on the socket by the direct layer.
    direct_streams: usize,
    capacity: usize,
    /// Times freed memory was given back to the system after posts went to sleep.
    memory_reclaims: u64,
    /// Cluster mode: live nodes seen, this one included.
    #[serde(skip_serializing_if = "Option::is_none")]
    nodes: Option<usize>,
    /// Cluster mode: `ok` while Redis answers, `down` from its first failed call.
    #[serde(skip_serializing_if = "Option::is_none")]
    redis: Option<&'static str>,
    /// Cluster mode, once Redis has answered: its version (a Valkey names itself).
    #[serde(skip_serializing_if = "Option::is_none")]
    redis_version: Option<String>,
    /// `standalone`, `cluster` or `sentinel`.
    #[serde(skip_serializing_if = "Option::is_none")]
    redis_mode: Option<String>,
    /// `aof`, `rdb` (snapshots only), `none`, or `unknown` (CONFIG refused to us).
    #[serde(skip_serializing_if = "Option::is_none")]
    redis_persistence: Option<&'static str>,
    /// Cluster mode: times this node rebuilt its part of Redis's sums from its record (the
    /// first, at start, adds it).
    #[serde(skip_serializing_if = "Option::is_none")]
    rebuilds: Option<u64>,
    /// Cluster mode: views counted here that the `--db` file does not hold yet.
    #[serde(skip_serializing_if = "Option::is_none")]
    record_unwritten: Option<u64>,
    /// Cluster mode: the other nodes counting with another `--dedupe-window` than this one,
    /// node → its window in seconds (empty when every node agrees).
    #[serde(skip_serializing_if = "Option::is_none")]
    dedupe_window_conflicts: Option<std::collections::BTreeMap<String, f64>>,
}

async fn stats(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, Refusal> {
    authorize_admin_read(&req, &state)?;
    let server = state.cluster.as_ref().and_then(|c| c.server());
    let record_unwritten = match &state.cluster {
        Some(cluster) => cluster.unwritten().await,
        None => None,
    };
    let stats = Stats {
        posts_awake: state.registry.awake(),
        streams: state.limits.open(),
        direct_streams: state.direct_streams.load(Ordering::Relaxed),
        capacity: state.limits.capacity(),
        memory_reclaims: state.registry.memory_reclaims(),
        nodes: state.cluster.as_ref().map(|c| c.nodes()),
        redis: state
            .cluster
            .as_ref()
            .map(|c| if c.is_up() { "ok" } else { "down" }),
        redis_persistence: server.as_ref().map(|s| s.persistence.as_str()),
        redis_version: server.as_ref().map(|s| s.version.clone()),
        redis_mode: server.map(|s| s.mode),
        rebuilds: state.cluster.as_ref().map(|c| c.rebuilds()),
        record_unwritten,
        dedupe_window_conflicts: state.cluster.as_ref().map(|c| {
            (c.window_conflicts().into_iter())
                .map(|(node, ms)| (node, ms as f64 / 1000.0))
                .collect()
        }),
    };
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(stats))
}

pub(crate) async fn healthz() -> HttpResponse {
    HttpResponse::Ok()
        .content_type(ContentType::plaintext())
        .body("ok\n")
}
