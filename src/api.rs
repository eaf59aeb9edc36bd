//! The HTTP handlers of `/api/v1` and the shared state they read.

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;

use actix::Addr;
use actix_web::http::header::{self, ContentType, HeaderMap};
use actix_web::{HttpRequest, HttpResponse, web};
use futures_util::{Stream, StreamExt};
use subtle::ConstantTimeEq;

use crate::client_ip::TrustedProxies;
use crate::error::ApiError;
use crate::headers::Headers;
use crate::limits::{PER_IP_RETRY_AFTER, StreamLimits, ViewCharge, ViewRate};
use crate::origin::OriginPolicy;
use crate::post::{Depart, Join, Joined, Leave, Post};
use crate::reader_id::ReaderId;
use crate::registry::Registry;
use crate::shared::{Handle, JoinError, Member, SharedStream, SharedStreams};
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
    pub shared: Arc<SharedStreams>,
}

/// What opening a stream reads from its request, whichever layer parsed the head.
pub struct StreamRequest<'a, H: ?Sized> {
    pub peer: Option<IpAddr>,
    /// The path segment naming the post (or the shared stream), as sent.
    pub name: &'a str,
    pub query: &'a str,
    pub headers: &'a H,
}

/// User-Agents of the common browsers and one crawler: what the bot matcher sees most.
const COMMON_USER_AGENTS: [&str; 4] = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
];

impl AppState {
    /// Fills the calling thread's caches of the bot matcher (a lazily built automaton per
    /// thread, ~130 KB) before the first reader, who would otherwise wait for it; a worker's
    /// memory at rest then already holds them.
    pub fn warm_up_this_thread(&self) {
        if let Some(bots) = &self.bots {
            for ua in COMMON_USER_AGENTS {
                std::hint::black_box(bots.is_bot(ua));
            }
        }
    }

    fn client_ip(&self, peer: Option<IpAddr>, headers: &(impl Headers + ?Sized)) -> IpAddr {
        let peer = peer.unwrap_or(IpAddr::from([0, 0, 0, 0]));
        self.proxies.client_ip(peer, headers)
    }

    fn is_bot(&self, headers: &(impl Headers + ?Sized)) -> bool {
        let Some(bots) = &self.bots else { return false };
        match headers.text("user-agent") {
            Some(ua) if !ua.trim().is_empty() => bots.is_bot(ua),
            // Every browser sends a User-Agent; a request without one is a script.
            _ => true,
        }
    }

    fn refuse_when_stopping(&self) -> Result<(), ApiError> {
        if *self.signals.shutdown.borrow() {
            Err(ApiError::ShuttingDown)
        } else {
            Ok(())
        }
    }

    /// Counts a reader in: a view unless deduplicated, rate-limited or a bot; live unless a bot.
    /// Returns what its departure must quote.
    async fn join(
        &self,
        headers: &(impl Headers + ?Sized),
        ip: IpAddr,
        slug: &Slug,
        admission: Admission,
        reader: &ReaderId,
    ) -> Result<(Addr<Post>, Joined, Depart), ApiError> {
        let is_reader = !self.is_bot(headers);
        let charge = is_reader.then(|| ViewCharge {
            rate: Arc::clone(&self.view_rate),
            ip,
        });
        let key = reader.key();
        let join = Join {
            id: reader.clone(),
            reader: key,
            charge,
            is_reader,
        };
        let (post, joined) = self.registry.join(slug, admission, join).await?;
        let depart = Depart {
            reader: key,
            epoch: joined.epoch,
            is_reader,
        };
        Ok((post, joined, depart))
    }

    /// Parses the slug and checks that the post may exist: 400 malformed, 404 unknown.
    fn post(&self, raw: &str) -> Result<(Slug, Admission), ApiError> {
        let slug = Slug::parse(raw)?;
        let admission = self.slugs.admission(&slug).ok_or(ApiError::UnknownPost)?;
        Ok((slug, admission))
    }

    /// A reader's stream of one post: admitted, counted, and its body ready to send. The
    /// origin is checked by the caller.
    pub async fn open_reader<H: Headers + ?Sized>(
        &self,
        req: StreamRequest<'_, H>,
    ) -> Result<impl Stream<Item = Result<web::Bytes, Infallible>> + 'static, ApiError> {
        let (slug, admission) = self.post(req.name)?;
        let reader = reader_id(req.query, req.headers)?;
        self.refuse_when_stopping()?;
        let ip = self.client_ip(req.peer, req.headers);
        let permit = self.limits.acquire(ip)?;
        let (post, joined, depart) = self
            .join(req.headers, ip, &slug, admission, &reader)
            .await?;
        let departure = Departure {
            post,
            depart,
            permit: Some(permit),
        };
        let first = sse::first_event(&reader, joined.counts);
        Ok(sse::reader_stream(
            first,
            joined.updates,
            self.signals.subscribe(),
            departure,
        ))
    }

    /// A shared stream (see [`crate::shared`]); readers join it by POST. The origin is
    /// checked by the caller.
    pub fn open_shared<H: Headers + ?Sized>(
        &self,
        req: StreamRequest<'_, H>,
    ) -> Result<SharedStream, ApiError> {
        let sid = ReaderId::parse(req.name)?;
        self.refuse_when_stopping()?;
        let permit = self.limits.acquire(self.client_ip(req.peer, req.headers))?;
        Ok(self.shared.open(sid, self.signals.subscribe(), permit))
    }
}

/// The parts of an actix-web request a stream reads.
fn stream_request<'a>(req: &'a HttpRequest, name: &'a str) -> StreamRequest<'a, HeaderMap> {
    StreamRequest {
        peer: req.peer_addr().map(|a| a.ip()),
        name,
        query: req.query_string(),
        headers: req.headers(),
    }
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/connect/{slug:.*}", web::get().to(connect))
        .route("/leave/{slug:.*}", web::post().to(leave))
        .route("/count/{slug:.*}", web::get().to(count))
        .route("/shared/{sid}", web::get().to(shared_open))
        .route("/shared/{sid}/join/{slug:.*}", web::post().to(shared_join))
        .route(
            "/shared/{sid}/leave/{slug:.*}",
            web::post().to(shared_leave),
        )
        .route("/totals", web::get().to(totals))
        .route("/stats", web::get().to(stats));
}

/// The reader id: `?view=` (the page view's token), else `Last-Event-ID` (a reconnect of a
/// stream whose id the server chose), else a new one.
fn reader_id(query: &str, headers: &(impl Headers + ?Sized)) -> Result<ReaderId, ApiError> {
    let view = query.split('&').find_map(|pair| pair.strip_prefix("view="));
    if let Some(view) = view {
        return Ok(ReaderId::parse(view)?);
    }
    let last = headers.text("last-event-id");
    Ok(last
        .and_then(|id| ReaderId::parse(id).ok())
        .unwrap_or_else(ReaderId::generate))
}

async fn connect(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    state.origins.check(&req)?;
    let name = req.match_info().get("slug").unwrap_or_default();
    let body = state.open_reader(stream_request(&req, name)).await?;
    Ok(event_stream(body))
}

/// The response head every event stream shares: no caching, no proxy buffering.
fn event_stream(
    body: impl futures_util::Stream<Item = Result<web::Bytes, std::convert::Infallible>> + 'static,
) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, "text/event-stream"))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(body)
}

/// A beacon body: a reader id, at most `MAX_BEACON_BYTES` (413 beyond, 400 if malformed).
async fn read_reader_id(
    req: &HttpRequest,
    mut payload: web::Payload,
) -> Result<ReaderId, ApiError> {
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
    Ok(ReaderId::from_beacon(&body)?)
}

/// The common start of every POST that names a reader: origin, post, then the body.
async fn beacon(
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
) -> Result<(Slug, Admission, ReaderId), ApiError> {
    state.origins.check(req)?;
    let (slug, admission) = state.post(req.match_info().get("slug").unwrap_or_default())?;
    let reader = read_reader_id(req, payload).await?;
    Ok((slug, admission, reader))
}

async fn leave(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (slug, _, reader) = beacon(&req, payload, &state).await?;
    state.registry.leave(
        &slug,
        Leave {
            reader: reader.key(),
        },
    );
    Ok(HttpResponse::NoContent().finish())
}

/// `GET /shared/{sid}`: one stream for the readers of many tabs (see [`crate::shared`]).
async fn shared_open(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    state.origins.check(&req)?;
    let name = req.match_info().get("sid").unwrap_or_default();
    Ok(event_stream(state.open_shared(stream_request(&req, name))?))
}

/// `POST /shared/{sid}/join/{slug}`: attaches a reader to a shared stream; this is its view.
async fn shared_join(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (slug, admission, reader) = beacon(&req, payload, &state).await?;
    let shared = shared_handle(&req, &state)?;
    let key = reader.key();
    match shared.reserve(&slug, key) {
        Ok(()) => {}
        Err(JoinError::Already) => return Ok(HttpResponse::NoContent().finish()),
        Err(_) => {
            return Err(ApiError::TooManyStreams {
                retry_after: PER_IP_RETRY_AFTER,
            });
        }
    }
    let ip = state.client_ip(req.peer_addr().map(|a| a.ip()), req.headers());
    let (post, joined, depart) = match state
        .join(req.headers(), ip, &slug, admission, &reader)
        .await
    {
        Ok(joined) => joined,
        Err(e) => {
            shared.unreserve(&slug, key);
            return Err(e);
        }
    };
    let member = Member {
        first: sse::tagged_event(&slug, joined.counts),
        slug,
        reader: key,
        updates: joined.updates,
        departure: Departure {
            post,
            depart,
            permit: None,
        },
    };
    // If the stream closed meanwhile, the member is dropped and departs at once.
    shared.join(member).map_err(|_| ApiError::NoSharedStream)?;
    Ok(HttpResponse::NoContent().finish())
}

/// `POST /shared/{sid}/leave/{slug}`: detaches a reader; unknown readers are fine.
async fn shared_leave(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (slug, _, reader) = beacon(&req, payload, &state).await?;
    if let Ok(shared) = shared_handle(&req, &state) {
        shared.leave(slug, reader.key());
    }
    Ok(HttpResponse::NoContent().finish())
}

fn shared_handle(req: &HttpRequest, state: &AppState) -> Result<Handle, ApiError> {
    let sid = ReaderId::parse(req.match_info().get("sid").unwrap_or_default())?;
    state
        .shared
        .handle(sid.as_str())
        .ok_or(ApiError::NoSharedStream)
}

async fn count(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    state.origins.check(&req)?;
    let (slug, _) = state.post(req.match_info().get("slug").unwrap_or_default())?;
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
        .map_err(ApiError::storage)?;
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
    /// Times freed memory was given back to the system after posts went to sleep.
    memory_reclaims: u64,
}

async fn stats(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    authorize_admin(&req, &state)?;
    let stats = Stats {
        posts_awake: state.registry.awake(),
        streams: state.limits.open(),
        capacity: state.limits.capacity(),
        memory_reclaims: state.registry.memory_reclaims(),
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
        None if state
            .client_ip(req.peer_addr().map(|a| a.ip()), req.headers())
            .is_loopback() =>
        {
            Ok(())
        }
        None => Err(ApiError::Unauthorized),
    }
}

pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok()
        .content_type(ContentType::plaintext())
        .body("ok\n")
}
