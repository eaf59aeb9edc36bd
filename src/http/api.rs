//! The HTTP handlers of `/api/v1` and the shared state they read.

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use actix_web::http::header::{self, ContentType};
use actix_web::{HttpRequest, HttpResponse, web};
use futures_util::{Stream, StreamExt};
use subtle::ConstantTimeEq;

use crate::cluster::Cluster;
use crate::edge::client_ip::TrustedProxies;
use crate::edge::headers::Headers;
use crate::edge::limits::{
    AuthFailureRate, ClientKey, PER_IP_RETRY_AFTER, StreamLimits, ViewCharge, ViewRate,
};
use crate::edge::origin::{OriginPolicy, is_loopback_host};
use crate::edge::reader_id::{ReaderId, Showing, parse_show};
use crate::edge::slug::Slug;
use crate::edge::slug_list::Admission;
use crate::edge::slug_list::SlugPolicy;
use crate::http::session;
use crate::http::shared::{Handle, JoinError, Member, SharedStream, SharedStreams};
use crate::http::sse::{self, Signals};
use crate::http::watch;
use crate::metrics::Metrics;
use crate::posts::post::{Join, Joined, Leave};
use crate::posts::registry::Registry;
use crate::posts::update::tagged_event;
use crate::refusal::Refusal;
use crate::storage::calendar::Calendar;

/// Largest beacon body accepted; a reader id is at most 64 bytes.
pub(crate) const MAX_BEACON_BYTES: usize = 1024;
/// A beacon or join body must arrive within this long of its head: a client that declares a
/// body and stalls would otherwise hold its connection (and a descriptor) for ever.
pub(crate) const BODY_DEADLINE: Duration = Duration::from_secs(5);

/// Everything the handlers share; built once before the server starts.
pub(crate) struct AppState {
    pub registry: Arc<Registry>,
    /// Cluster mode: the link to the other nodes, for `/stats`, `/metrics` and the dashboard
    /// (the posts reach it through the registry).
    pub cluster: Option<Arc<Cluster>>,
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
    /// IPv6 clients share one budget per prefix of this many bits (`--ipv6-prefix`).
    pub ipv6_prefix: u8,
    /// Streams answered on the socket by [`crate::http::direct`] right now: shows in `/stats` that
    /// streams take the lean path.
    pub direct_streams: AtomicUsize,
    /// The days views are counted on (`--timezone`).
    pub calendar: Calendar,
    pub metrics: Arc<Metrics>,
    /// Failed admin authentications per client: bearer tokens, session cookies and the
    /// login form together ([`crate::edge::limits::AUTH_FAILURES_PER_MINUTE`]).
    pub auth_failures: AuthFailureRate,
}

/// What opening a stream reads from its request (parsed by [`crate::http::direct`]).
pub(crate) struct StreamRequest<'a> {
    pub peer: IpAddr,
    /// The path segment naming the post (or the shared stream), percent-escapes decoded.
    pub name: &'a str,
    pub query: &'a str,
    pub headers: &'a [httparse::Header<'a>],
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
    pub(crate) fn warm_up_this_thread(&self) {
        if let Some(bots) = &self.bots {
            for ua in COMMON_USER_AGENTS {
                std::hint::black_box(bots.is_bot(ua));
            }
        }
    }

    /// Whose budgets the request draws on: the client's address (through trusted proxies),
    /// IPv6 cut to `--ipv6-prefix`.
    pub(crate) fn client_key(
        &self,
        peer: Option<IpAddr>,
        headers: &(impl Headers + ?Sized),
    ) -> ClientKey {
        let peer = peer.unwrap_or(IpAddr::from([0, 0, 0, 0]));
        ClientKey::new(self.proxies.client_ip(peer, headers), self.ipv6_prefix)
    }

    fn is_bot(&self, headers: &(impl Headers + ?Sized)) -> bool {
        let Some(bots) = &self.bots else { return false };
        match headers.text("user-agent") {
            Some(ua) if !ua.trim().is_empty() => bots.is_bot(ua),
            // Every browser sends a User-Agent; a request without one is a script.
            _ => true,
        }
    }

    /// Counts a refusal for `/metrics` (actix-web's answers are counted by a middleware).
    pub(crate) fn count_refusal(&self, e: &Refusal) {
        let reason = crate::metrics::Refusal { reason: e.reason() };
        self.metrics.refusals.get_or_create(&reason).inc();
    }

    pub(crate) fn refuse_when_stopping(&self) -> Result<(), Refusal> {
        if self.signals.shutdown.is_started() {
            Err(Refusal::ShuttingDown)
        } else {
            Ok(())
        }
    }

    /// Counts a reader in: a view unless deduplicated, rate-limited or a bot; live unless a bot.
    /// The answer carries the guard that undoes it.
    async fn join(
        &self,
        headers: &(impl Headers + ?Sized),
        client: ClientKey,
        slug: &Slug,
        admission: Admission,
        showing: &Showing,
    ) -> Result<Joined, Refusal> {
        let is_reader = !self.is_bot(headers);
        let charge = is_reader.then(|| ViewCharge {
            rate: Arc::clone(&self.view_rate),
            client,
        });
        let join = Join {
            id: showing.id.clone(),
            presence: showing.presence(),
            charge,
            is_reader,
        };
        self.registry.join(slug, admission, join).await
    }

    /// Parses the slug and checks that the post may exist: 400 malformed, 404 unknown.
    fn post(&self, raw: &str, client: ClientKey) -> Result<(Slug, Admission), Refusal> {
        let slug = Slug::parse(raw)?;
        let admission = self
            .slugs
            .admission(&slug, client)
            .ok_or(Refusal::UnknownPost)?;
        Ok((slug, admission))
    }

    /// A reader's stream of one post: admitted, counted, and its body ready to send. The
    /// origin is checked by the caller.
    pub(crate) async fn open_reader(
        &self,
        req: StreamRequest<'_>,
    ) -> Result<impl Stream<Item = Result<web::Bytes, Infallible>> + 'static, Refusal> {
        self.origins.check_fetch(req.headers)?;
        let client = self.client_key(Some(req.peer), req.headers);
        let (slug, admission) = self.post(req.name, client)?;
        let showing = showing(req.query, req.headers)?;
        self.refuse_when_stopping()?;
        let permit = self.limits.acquire(client)?;
        let joined = self
            .join(req.headers, client, &slug, admission, &showing)
            .await?;
        let first = sse::first_event(&showing.id, joined.counts);
        Ok(sse::reader_stream(
            first,
            joined.updates,
            self.signals.subscribe(),
            joined.departure,
            permit,
        ))
    }

    /// A shared stream (see [`crate::http::shared`]); readers join it by POST. The origin is
    /// checked by the caller.
    pub(crate) fn open_shared(&self, req: StreamRequest<'_>) -> Result<SharedStream, Refusal> {
        self.origins.check_fetch(req.headers)?;
        let sid = ReaderId::parse(req.name)?;
        self.refuse_when_stopping()?;
        let permit = self
            .limits
            .acquire(self.client_key(Some(req.peer), req.headers))?;
        Ok(self.shared.open(
            sid,
            self.signals.subscribe(),
            permit,
            Arc::clone(&self.limits),
        ))
    }
}

pub(crate) fn routes(cfg: &mut web::ServiceConfig) {
    // The stream routes (`GET /connect/{slug}`, `GET /shared/{sid}`, `GET /watch`) are served by
    // `crate::http::direct`, before actix-web.
    cfg.route("/leave/{slug:.*}", web::post().to(leave))
        .route("/count/{slug:.*}", web::get().to(count))
        .route("/shared/{sid}/join/{slug:.*}", web::post().to(shared_join))
        .route(
            "/shared/{sid}/leave/{slug:.*}",
            web::post().to(shared_leave),
        )
        .route("/shared/{sid}/watch", web::post().to(watch::shared_watch))
        .route("/totals", web::get().to(totals))
        .route("/stats", web::get().to(stats));
}

/// The reader id: `?view=` (the page view's token), else `Last-Event-ID` (a reconnect of a
/// stream whose id the server chose), else a new one; and `?show=`, the page showing (0).
fn showing(query: &str, headers: &(impl Headers + ?Sized)) -> Result<Showing, Refusal> {
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

/// A beacon body: a reader id and page show, at most `MAX_BEACON_BYTES` (413 beyond, 400 if
/// malformed), within `BODY_DEADLINE` (408, and the connection closes).
async fn read_showing(req: &HttpRequest, payload: web::Payload) -> Result<Showing, Refusal> {
    let body = read_beacon(req, payload, MAX_BEACON_BYTES).await?;
    Ok(Showing::from_beacon(&body)?)
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

/// What a POST naming a reader says, checked.
struct Beacon {
    slug: Slug,
    admission: Admission,
    showing: Showing,
    client: ClientKey,
}

/// The common start of every POST that names a reader: origin, post, then the body.
async fn beacon(
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
) -> Result<Beacon, Refusal> {
    state.origins.check(req.headers())?;
    let client = request_client(req, state);
    let (slug, admission) = state.post(req.match_info().get("slug").unwrap_or_default(), client)?;
    let showing = read_showing(req, payload).await?;
    Ok(Beacon {
        slug,
        admission,
        showing,
        client,
    })
}

pub(crate) fn request_client(req: &HttpRequest, state: &AppState) -> ClientKey {
    state.client_key(req.peer_addr().map(|a| a.ip()), req.headers())
}

async fn leave(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Refusal> {
    let Beacon { slug, showing, .. } = beacon(&req, payload, &state).await?;
    state.registry.leave(
        &slug,
        Leave {
            presence: showing.presence(),
        },
    );
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
    } = beacon(&req, payload, &state).await?;
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
        first: tagged_event(&slug, joined.counts),
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
    let Beacon { slug, showing, .. } = beacon(&req, payload, &state).await?;
    if let Ok(shared) = shared_handle(&req, &state) {
        shared.leave(slug, showing.presence());
    }
    Ok(HttpResponse::NoContent().finish())
}

pub(crate) fn shared_handle(req: &HttpRequest, state: &AppState) -> Result<Handle, Refusal> {
    let sid = ReaderId::parse(req.match_info().get("sid").unwrap_or_default())?;
    state
        .shared
        .handle(sid.as_str())
        .ok_or(Refusal::NoSharedStream)
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
}

async fn stats(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, Refusal> {
    authorize_admin_read(&req, &state)?;
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
    };
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(stats))
}

/// The admin rule for changes (`POST /import`): with a token configured,
/// `Authorization: Bearer TOKEN`; without one, the owner at the machine itself
/// ([`is_loopback_owner`]). See [`authenticate`].
pub(crate) fn authorize_admin(req: &HttpRequest, state: &AppState) -> Result<(), Refusal> {
    authenticate(req, state, Session::Refused)
}

/// The admin rule for reads (`GET`): [`authorize_admin`], or the session cookie the
/// dashboard's login sets. Never for changes (`POST /import`): a browser sends cookies with
/// requests that other pages make it send, and `SameSite=Strict` stops only cross-site ones,
/// not a page on a sibling subdomain; a bearer header no page can add without the token.
pub(crate) fn authorize_admin_read(req: &HttpRequest, state: &AppState) -> Result<(), Refusal> {
    authenticate(req, state, Session::Accepted)
}

/// Whether a route takes the dashboard's session cookie.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Session {
    Accepted,
    Refused,
}

/// With a token configured: the bearer token (or, for reads, a valid session cookie), compared
/// in constant time. Credentials that are presented take a try from the client's share of
/// [`AppState::auth_failures`] before they are compared, given back when they are right: so
/// once a client has used its share, every attempt of it is `429`, the right one included,
/// and concurrent guesses cannot slip past. A request without credentials takes nothing.
///
/// Without a token: [`is_loopback_owner`]; there is nothing to guess.
fn authenticate(req: &HttpRequest, state: &AppState, rule: Session) -> Result<(), Refusal> {
    let Some(token) = &state.admin_token else {
        return if is_loopback_owner(req) {
            Ok(())
        } else {
            Err(Refusal::Unauthorized)
        };
    };
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let cookie = match rule {
        Session::Accepted => session::from_headers(req.headers()),
        Session::Refused => None,
    };
    if bearer.is_none() && cookie.is_none() {
        return Err(Refusal::Unauthorized);
    }
    let client = request_client(req, state);
    take_auth_try(state, client)
        .map_err(|retry_after| Refusal::TooManyAuthFailures { retry_after })?;
    let right = bearer.is_some_and(|given| bool::from(given.as_bytes().ct_eq(token.as_bytes())))
        || cookie.is_some_and(|value| {
            session::is_valid(token, value, state.calendar.clock().now_unix())
        });
    if right {
        state.auth_failures.give_back(client);
        Ok(())
    } else {
        Err(Refusal::Unauthorized)
    }
}

/// Takes one try of `client`'s failed-authentication share, to be given back if the
/// credentials turn out right; when it is used up, how long to wait, in whole seconds rounded
/// up (a client that waits what it is told gets its try).
pub(crate) fn take_auth_try(state: &AppState, client: ClientKey) -> Result<(), Duration> {
    state.auth_failures.try_take(client).map_err(|wait| {
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        Duration::from_secs(secs.max(1))
    })
}

/// Whether the request carries a valid session cookie (only with a token configured). Takes
/// nothing from the client's share: for what a page shows, after the rule was applied.
pub(crate) fn has_session(req: &HttpRequest, state: &AppState) -> bool {
    let Some(token) = &state.admin_token else {
        return false;
    };
    session::from_headers(req.headers())
        .is_some_and(|value| session::is_valid(token, value, state.calendar.clock().now_unix()))
}

/// Without a token, the owner is whoever is at the machine itself: a direct loopback
/// connection ([`is_direct_loopback`]) to a loopback name (`Host`: `localhost`, `127.0.0.0/8`,
/// `[::1]`). A page on a rebinding name (`rebind.attacker.example` resolving to 127.0.0.1)
/// reaches the loopback socket from the owner's browser, but names itself in `Host`.
pub(crate) fn is_loopback_owner(req: &HttpRequest) -> bool {
    is_direct_loopback(req)
        && req
            .headers()
            .get(header::HOST)
            .is_some_and(|host| is_loopback_host(host.as_bytes()))
}

/// A loopback peer with no forwarding headers. A request with them came through a proxy (or
/// claims to), whatever addresses they name: a proxy that passes a client's own
/// `X-Forwarded-For: 127.0.0.1` along must not make it the owner.
fn is_direct_loopback(req: &HttpRequest) -> bool {
    let loopback = req
        .peer_addr()
        .is_some_and(|peer| peer.ip().to_canonical().is_loopback());
    let forwarded = [
        header::FORWARDED,
        header::HeaderName::from_static("x-forwarded-for"),
    ]
    .iter()
    .any(|name| req.headers().contains_key(name));
    loopback && !forwarded
}

pub(crate) async fn healthz() -> HttpResponse {
    HttpResponse::Ok()
        .content_type(ContentType::plaintext())
        .body("ok\n")
}
