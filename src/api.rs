//! The HTTP handlers of `/api/v1` and the shared state they read.

use std::net::IpAddr;
use std::sync::Arc;

use actix_web::http::header::{self, ContentType};
use actix_web::{HttpRequest, HttpResponse, web};
use futures_util::StreamExt;
use subtle::ConstantTimeEq;

use crate::client_ip::TrustedProxies;
use crate::error::ApiError;
use crate::limits::{StreamLimits, ViewCharge, ViewRate};
use crate::origin::OriginPolicy;
use crate::post::{Depart, Join, Leave};
use crate::reader_id::ReaderId;
use crate::registry::Registry;
use crate::slug::Slug;
use crate::slug_list::SlugPolicy;
use crate::sse::{self, Departure, Signals};
use crate::writer::Admission;

/// Largest beacon body accepted; a reader id is at most 64 bytes.
pub const MAX_BEACON_BYTES: usize = 1024;

/// Everything the handlers share; built once before the server starts.
pub struct AppState {
    pub registry: Arc<Registry>,
    pub slugs: SlugPolicy,
    pub origins: OriginPolicy,
    pub proxies: TrustedProxies,
    pub limits: Arc<StreamLimits>,
    pub view_rate: Arc<ViewRate>,
    /// `None` with `--count-bots`.
    pub bots: Option<isbot::Bots>,
    pub admin_token: Option<String>,
    pub signals: Signals,
}

impl AppState {
    fn client_ip(&self, req: &HttpRequest) -> IpAddr {
        let peer = req
            .peer_addr()
            .map_or(IpAddr::from([0, 0, 0, 0]), |a| a.ip());
        self.proxies.client_ip(peer, req.headers())
    }

    fn is_bot(&self, req: &HttpRequest) -> bool {
        let Some(bots) = &self.bots else { return false };
        match req.headers().get(header::USER_AGENT).map(|ua| ua.to_str()) {
            Some(Ok(ua)) if !ua.trim().is_empty() => bots.is_bot(ua),
            // Every browser sends a User-Agent; a request without one is a script.
            _ => true,
        }
    }

    /// Parses the slug and checks that the post may exist: 400 malformed, 404 unknown.
    fn post(&self, req: &HttpRequest) -> Result<(Slug, Admission), ApiError> {
        let raw = req.match_info().get("slug").unwrap_or_default();
        let slug = Slug::parse(raw)?;
        let admission = self.slugs.admission(&slug).ok_or(ApiError::UnknownPost)?;
        Ok((slug, admission))
    }
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/connect/{slug:.*}", web::get().to(connect))
        .route("/leave/{slug:.*}", web::post().to(leave))
        .route("/count/{slug:.*}", web::get().to(count))
        .route("/totals", web::get().to(totals))
        .route("/stats", web::get().to(stats));
}

/// The reader id: `?view=` (the page view's token), else `Last-Event-ID` (a reconnect of a
/// stream whose id the server chose), else a new one.
fn reader_id(req: &HttpRequest) -> Result<ReaderId, ApiError> {
    let view = req
        .query_string()
        .split('&')
        .find_map(|pair| pair.strip_prefix("view="));
    if let Some(view) = view {
        return Ok(ReaderId::parse(view)?);
    }
    let last = req
        .headers()
        .get("last-event-id")
        .and_then(|v| v.to_str().ok());
    Ok(last
        .and_then(|id| ReaderId::parse(id).ok())
        .unwrap_or_else(ReaderId::generate))
}

async fn connect(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    state.origins.check(&req)?;
    let (slug, admission) = state.post(&req)?;
    let reader = reader_id(&req)?;
    if *state.signals.shutdown.borrow() {
        return Err(ApiError::ShuttingDown);
    }
    let ip = state.client_ip(&req);
    let permit = state.limits.acquire(ip)?;
    let is_reader = !state.is_bot(&req);
    let charge = is_reader.then(|| ViewCharge {
        rate: Arc::clone(&state.view_rate),
        ip,
    });
    let key = reader.key();
    let join = Join {
        id: reader.clone(),
        reader: key,
        charge,
        is_reader,
    };
    let (post, joined) = state.registry.join(&slug, admission, join).await?;
    let departure = Departure {
        post,
        depart: Depart {
            reader: key,
            epoch: joined.epoch,
            is_reader,
        },
        permit,
    };
    let first = sse::first_event(&reader, joined.counts);
    let body = sse::reader_stream(first, joined.updates, state.signals.subscribe(), departure);
    Ok(HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, "text/event-stream"))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(body))
}

async fn leave(
    req: HttpRequest,
    mut payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    state.origins.check(&req)?;
    let (slug, _) = state.post(&req)?;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|len| len > MAX_BEACON_BYTES) {
        return Err(ApiError::BodyTooLarge(MAX_BEACON_BYTES));
    }
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|_| ApiError::BadBody)?;
        if body.len() + chunk.len() > MAX_BEACON_BYTES {
            return Err(ApiError::BodyTooLarge(MAX_BEACON_BYTES));
        }
        body.extend_from_slice(&chunk);
    }
    let reader = ReaderId::from_beacon(&body)?;
    state.registry.leave(
        &slug,
        Leave {
            reader: reader.key(),
        },
    );
    Ok(HttpResponse::NoContent().finish())
}

async fn count(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    state.origins.check(&req)?;
    let (slug, _) = state.post(&req)?;
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

async fn totals(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    authorize_admin(&req, &state)?;
    let rows = state
        .registry
        .writer()
        .totals()
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
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
    capacity: usize,
}

async fn stats(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    authorize_admin(&req, &state)?;
    let stats = Stats {
        posts_awake: state.registry.awake(),
        streams: state.limits.open(),
        capacity: state.limits.capacity(),
    };
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(stats))
}

/// With a token configured: `Authorization: Bearer TOKEN`, compared in constant time.
/// Without one: loopback clients only.
fn authorize_admin(req: &HttpRequest, state: &AppState) -> Result<(), ApiError> {
    match &state.admin_token {
        Some(token) => {
            let given = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .unwrap_or_default();
            if bool::from(given.as_bytes().ct_eq(token.as_bytes())) {
                Ok(())
            } else {
                Err(ApiError::Unauthorized)
            }
        }
        None if state.client_ip(req).is_loopback() => Ok(()),
        None => Err(ApiError::Unauthorized),
    }
}

pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok()
        .content_type(ContentType::plaintext())
        .body("ok\n")
}
