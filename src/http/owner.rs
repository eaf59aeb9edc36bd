//! What the owner and index pages read: views per day, the numbers of many posts at once, top
//! posts, a badge, Prometheus metrics, and imports. Nothing here counts a view or wakes a post.

use std::collections::HashMap;
use std::time::Duration;

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};

use crate::cluster::record::{RebuildError, Retired, Taken};
use crate::edge::origin::same_origin_only;
use crate::edge::slug::Slug;
use crate::edge::slug_list::SlugPolicy;
use crate::http::admin::{authorize_admin, authorize_admin_read};
use crate::http::badge::{self, Label};
use crate::http::params::{number_param, param, query, read_body, slugs_param};
use crate::http::state::AppState;
use crate::import::file::{self, ImportFormat, ParseOptions};
use crate::import::{self, IMPORT_HEADER, MAX_IMPORT_BYTES, Summary};
use crate::posts::post::Counts;
use crate::refusal::Refusal;
use crate::storage::calendar::{Calendar, Day};
use crate::storage::presence::{DayPresence, Peak, READ_BUCKET_STARTS_S, READ_CAP};
use crate::storage::writer::ImportMode;

/// Rows one `top` answer may hold.
pub(crate) const MAX_TOP: usize = 100;
const DEFAULT_TOP: usize = 10;
/// Days one `history` answer may cover: a year, leap day included.
pub(crate) const MAX_HISTORY_DAYS: u32 = 366;
const DEFAULT_HISTORY_DAYS: u32 = 30;
/// An import body must arrive within this long (10 MiB at about 1.4 Mbit/s).
const IMPORT_DEADLINE: Duration = Duration::from_secs(60);

pub(crate) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/history", web::get().to(history_all))
        .route("/history/{slug:.*}", web::get().to(history))
        .route("/counts", web::get().to(counts))
        .route("/top", web::get().to(top))
        .route("/daily", web::get().to(daily))
        .route("/import", web::post().to(import))
        .route("/retire", web::post().to(retire))
        .route("/import/sessions", web::post().to(begin_import))
        .route("/import/sessions/{id}", web::post().to(import_piece))
        .route("/import/sessions/{id}", web::delete().to(abort_import))
        .route(
            "/import/sessions/{id}/commit",
            web::post().to(commit_import),
        );
}

fn no_store(res: &mut actix_web::HttpResponseBuilder) -> &mut actix_web::HttpResponseBuilder {
    res.insert_header((header::CACHE_CONTROL, "no-store"))
}

#[derive(serde::Serialize)]
struct DayRow {
    day: String,
    views: u64,
    /// Page showings with a reading time.
    reads: u64,
    read_median_s: Option<f64>,
    /// The most readers at once, and when (RFC 3339 in `--timezone`); `null` without readers.
    peak: u64,
    peak_at: Option<String>,
    /// One post's history only: how many readings fell into each bucket of
    /// [`History::read_bucket_starts_s`].
    #[serde(skip_serializing_if = "Option::is_none")]
    read_buckets: Option<Vec<u32>>,
}

#[derive(serde::Serialize)]
struct History {
    slug: String,
    /// Where each reading-time bucket starts (seconds): the first at 0, the last ending at
    /// `read_cap_s`.
    read_bucket_starts_s: Vec<u32>,
    read_cap_s: u64,
    days: Vec<DayRow>,
}

/// `GET /history/{slug}?days=N`: views per day, oldest first, days without views included.
async fn history(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, Refusal> {
    authorize_admin_read(&req, &state)?;
    let slug = Slug::parse(req.match_info().get("slug").unwrap_or_default())?;
    if !state.is_listed(&slug) {
        return Err(Refusal::UnknownPost);
    }
    let days = history_days(&req, &state)?;
    let views = state
        .registry
        .writer()
        .history(slug.clone(), days.clone())
        .await
        .map_err(Refusal::from)?;
    let mut starts = vec![0];
    starts.extend(READ_BUCKET_STARTS_S);
    Ok(no_store(&mut HttpResponse::Ok()).json(History {
        slug: slug.as_str().to_owned(),
        read_bucket_starts_s: starts,
        read_cap_s: READ_CAP.as_secs(),
        days: day_rows(&state.calendar, &days, views, true),
    }))
}

#[derive(serde::Serialize)]
struct HistoryAll {
    days: Vec<DayRow>,
}

/// `GET /history?days=N`: every post's views together, per day, as `history/{slug}` has them.
async fn history_all(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Refusal> {
    authorize_admin_read(&req, &state)?;
    let days = history_days(&req, &state)?;
    let views = state
        .registry
        .writer()
        .history_all(days.clone())
        .await
        .map_err(Refusal::from)?;
    Ok(no_store(&mut HttpResponse::Ok()).json(HistoryAll {
        days: day_rows(&state.calendar, &days, views, false),
    }))
}

/// The days `?days=N` asks for (default 30, at most 366), ending today, oldest first.
fn history_days(req: &HttpRequest, state: &AppState) -> Result<Vec<Day>, Refusal> {
    let n = number_param(
        &query(req),
        "days",
        1..=MAX_HISTORY_DAYS,
        DEFAULT_HISTORY_DAYS,
    )?;
    let today = state.calendar.today();
    Ok(Day::range(today.back(n - 1), today).collect())
}

/// `buckets`: with each day's reading-time histogram.
fn day_rows(
    calendar: &Calendar,
    days: &[Day],
    rows: Vec<(u64, DayPresence)>,
    buckets: bool,
) -> Vec<DayRow> {
    days.iter()
        .zip(rows)
        .map(|(day, (views, presence))| DayRow {
            day: day.to_string(),
            views,
            reads: presence.reads.count(),
            read_median_s: presence.reads.median_s(),
            peak: presence.peak.live,
            peak_at: peak_at(calendar, &presence),
            read_buckets: buckets.then(|| presence.reads.buckets.to_vec()),
        })
        .collect()
}

/// When the day's peak was reached, `None` for a day without readers.
pub(crate) fn peak_at(calendar: &Calendar, presence: &DayPresence) -> Option<String> {
    (presence.peak.live > 0).then(|| calendar.rfc3339(presence.peak.at))
}

#[derive(serde::Serialize)]
struct SlugCounts {
    slug: String,
    live: u64,
    total: u64,
}

/// `GET /counts?slug=A&slug=B…`: the numbers of many posts for an index page; counts nothing,
/// wakes nothing, omits posts it does not know.
async fn counts(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, Refusal> {
    state.origins.check(req.headers())?;
    let slugs = slugs_param(&query(&req))?;
    let known: Vec<Slug> = slugs.into_iter().filter(|s| state.is_listed(s)).collect();
    let counts = state.registry.counts_of(&known).await?;
    let listed = matches!(state.slugs, SlugPolicy::Listed(_));
    let rows: Vec<SlugCounts> = known
        .iter()
        .zip(counts)
        .filter_map(|(slug, counts)| {
            // A listed post nobody read yet is known, at zero.
            let counts = counts.or(listed.then_some(Counts::default()))?;
            Some(SlugCounts {
                slug: slug.as_str().to_owned(),
                live: counts.live,
                total: counts.total,
            })
        })
        .collect();
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "max-age=1"))
        .json(rows))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TopBy {
    Live,
    Total,
    Today,
    Read,
}

/// `top?by=read`: the days a post's reading times are taken over, and the reads it needs.
const READ_DAYS: u32 = 30;
const READ_MIN: u64 = 10;

#[derive(serde::Serialize)]
struct TopRow {
    slug: String,
    live: u64,
    total: u64,
    today: u64,
    /// `by=read`: the median reading time and the reads over the last 30 days.
    #[serde(skip_serializing_if = "Option::is_none")]
    read_median_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reads: Option<u64>,
}

/// `GET /top?by=live|total|today&limit=N`: best first, ties by slug. Public with an
/// allow-list; with `--allow-any-slug` the slugs are user input, so admin only.
async fn top(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, Refusal> {
    if matches!(state.slugs, SlugPolicy::Any(_)) {
        authorize_admin_read(&req, &state)?;
    } else {
        state.origins.check(req.headers())?;
    }
    let pairs = query(&req);
    let by = match param(&pairs, "by").unwrap_or("total") {
        "live" => TopBy::Live,
        "total" => TopBy::Total,
        "today" => TopBy::Today,
        "read" => TopBy::Read,
        other => {
            return Err(Refusal::BadRequest(format!(
                "by must be live, total, today or read, not {other:?}"
            )));
        }
    };
    let limit = number_param(&pairs, "limit", 1..=MAX_TOP as u32, DEFAULT_TOP as u32)? as usize;
    let rows = top_rows(&state, by, limit).await?;
    Ok(no_store(&mut HttpResponse::Ok()).json(rows))
}

async fn top_rows(state: &AppState, by: TopBy, limit: usize) -> Result<Vec<TopRow>, Refusal> {
    let writer = state.registry.writer();
    let today: HashMap<String, u64> = writer
        .day_views(state.calendar.today())
        .await
        .map_err(Refusal::from)?
        .into_iter()
        .collect();
    // by=read: (median in tenths of a second, reads) per post with enough reads.
    let mut reading: HashMap<String, (f64, u64)> = HashMap::new();
    if by == TopBy::Read {
        let today = state.calendar.today();
        let days = Day::range(today.back(READ_DAYS - 1), today).collect();
        for (slug, presence) in writer.presence_over(days).await.map_err(Refusal::from)? {
            let reads = presence.reads.count();
            if let Some(median) = presence.reads.median_s().filter(|_| reads >= READ_MIN) {
                reading.insert(slug, (median, reads));
            }
        }
    }
    // Candidates by the ranking number, best first, ties by slug.
    let mut ranked: Vec<(String, u64)> = match by {
        TopBy::Live => state
            .registry
            .live_counts()
            .await
            .into_iter()
            .map(|(slug, live)| (slug.as_str().to_owned(), live))
            .collect(),
        TopBy::Total => writer.totals().await.map_err(Refusal::from)?,
        TopBy::Today => today.iter().map(|(s, v)| (s.clone(), *v)).collect(),
        // Medians have one decimal: in tenths they rank as whole numbers.
        TopBy::Read => reading
            .iter()
            .map(|(s, (median, _))| (s.clone(), (median * 10.0).round() as u64))
            .collect(),
    };
    ranked.retain(|(slug, _)| Slug::parse(slug).is_ok_and(|s| state.is_listed(&s)));
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    ranked.truncate(limit);
    let slugs: Vec<Slug> = ranked
        .iter()
        .filter_map(|(s, _)| Slug::parse(s).ok())
        .collect();
    let counts = state.registry.counts_of(&slugs).await?;
    Ok(slugs
        .iter()
        .zip(counts)
        .map(|(slug, counts)| {
            let counts = counts.unwrap_or_default();
            let read = reading.get(slug.as_str());
            TopRow {
                slug: slug.as_str().to_owned(),
                live: counts.live,
                total: counts.total,
                today: today.get(slug.as_str()).copied().unwrap_or(0),
                read_median_s: read.map(|r| r.0),
                reads: read.map(|r| r.1),
            }
        })
        .collect())
}

/// `GET /daily`: the site's peak per day, and every post's views, reading times and peak per
/// day (what `export --daily` prints).
async fn daily(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, Refusal> {
    authorize_admin_read(&req, &state)?;
    let writer = state.registry.writer();
    let days = writer.all_days().await.map_err(Refusal::from)?;
    let presence = writer.all_presence().await.map_err(Refusal::from)?;
    let site = writer.all_site_peaks().await.map_err(Refusal::from)?;
    let rows = crate::import::day_rows(days, presence, site);
    Ok(no_store(&mut HttpResponse::Ok()).json(rows))
}

/// `GET /badge/{slug}.svg[?label=…]`: the post's total as a flat SVG badge; counts nothing.
pub(crate) async fn badge(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Refusal> {
    let file = req.match_info().get("file").unwrap_or_default();
    let slug = Slug::parse(file.strip_suffix(".svg").ok_or(Refusal::UnknownPost)?)?;
    let pairs = query(&req);
    let label = match param(&pairs, "label") {
        Some(raw) => Label::parse(raw).map_err(|e| Refusal::BadRequest(format!("label: {e}")))?,
        None => Label::default(),
    };
    if !state.is_listed(&slug) {
        return Err(Refusal::UnknownPost);
    }
    let counts = state
        .registry
        .counts_of(std::slice::from_ref(&slug))
        .await?;
    let listed = matches!(state.slugs, SlugPolicy::Listed(_));
    let total = match counts.first().copied().flatten() {
        Some(counts) => counts.total,
        None if listed => 0,
        None => return Err(Refusal::UnknownPost),
    };
    Ok(HttpResponse::Ok()
        .content_type("image/svg+xml")
        .insert_header((header::CACHE_CONTROL, "max-age=60"))
        .body(badge::render(&label, total)))
}

/// `GET /metrics`: Prometheus text format; admin rule of `/totals`.
pub(crate) async fn metrics(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Refusal> {
    authorize_admin_read(&req, &state)?;
    let m = &state.metrics;
    m.streams_open.set(state.limits.open() as i64);
    m.posts_awake.set(state.registry.awake() as i64);
    if let Some(cluster) = &state.cluster {
        m.redis_up.set(i64::from(cluster.is_up()));
        m.cluster_nodes.set(cluster.nodes() as i64);
        m.outbox_pending.set(cluster.outbox_len() as i64);
    }
    Ok(no_store(&mut HttpResponse::Ok())
        .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
        .body(m.encode()))
}

/// How `POST /import` is asked to import, in its query.
fn import_options(
    pairs: &[(String, String)],
) -> Result<(ImportMode, bool, Option<ImportFormat>, Option<String>), Refusal> {
    let mode = match param(pairs, "mode").unwrap_or("set") {
        "set" => ImportMode::Set,
        "add" => ImportMode::Add,
        other => {
            return Err(Refusal::BadRequest(format!(
                "mode must be set or add, not {other:?}"
            )));
        }
    };
    let dry_run = matches!(param(pairs, "dry_run"), Some("1" | "true"));
    let format = match param(pairs, "format") {
        None => None,
        Some("csv") => Some(ImportFormat::Csv),
        Some("json") => Some(ImportFormat::Json),
        Some("goatcounter") => Some(ImportFormat::Goatcounter),
        Some(other) => {
            return Err(Refusal::BadRequest(format!(
                "format must be csv, json or goatcounter, not {other:?}"
            )));
        }
    };
    Ok((
        mode,
        dry_run,
        format,
        param(pairs, "path_prefix").map(str::to_owned),
    ))
}

/// What every import request must be: the admin's, with [`IMPORT_HEADER`], and never from
/// another site's page.
fn authorize_import(req: &HttpRequest, state: &AppState) -> Result<(), Refusal> {
    same_origin_only(req.headers())?;
    let ours = req
        .headers()
        .get(IMPORT_HEADER)
        .is_some_and(|v| v.as_bytes().trim_ascii() == b"1");
    if !ours {
        return Err(Refusal::CrossSite(
            "an import needs the header X-Viewcounter-Import: 1 (viewcounter import sends it)",
        ));
    }
    authorize_admin(req, state)
}

/// An import body, at most [`MAX_IMPORT_BYTES`] within [`IMPORT_DEADLINE`], as text.
async fn import_body(payload: web::Payload) -> Result<String, Refusal> {
    let body = tokio::time::timeout(IMPORT_DEADLINE, read_body(payload, MAX_IMPORT_BYTES))
        .await
        .map_err(|_| Refusal::BodyTimeout(IMPORT_DEADLINE))??;
    String::from_utf8(body.to_vec())
        .map_err(|_| Refusal::BadRequest("the import file is not UTF-8".into()))
}

/// `POST /import?mode=set|add&dry_run=1&format=…&path_prefix=…` (admin), body: the file;
/// with [`IMPORT_HEADER`], never from another site's page.
async fn import(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Refusal> {
    authorize_import(&req, &state)?;
    let (mode, dry_run, format, prefix) = import_options(&query(&req))?;
    let text = import_body(payload).await?;
    let options = ParseOptions {
        format,
        path_prefix: prefix.as_deref(),
        timezone: state.calendar.time_zone(),
    };
    let parsed = file::parse(&text, &options).map_err(|e| Refusal::BadRequest(e.to_string()))?;
    apply_import(&state, parsed, mode, dry_run).await
}

/// What `viewcounter retire` sends: a stopped node's record id and what it holds.
#[derive(Debug, serde::Deserialize, serde::Serialize)]
pub(crate) struct RetiredRecord {
    pub record: String,
    /// (slug, total)
    pub totals: Vec<(String, u64)>,
    /// (slug, day as `YYYYMMDD`, views)
    pub days: Vec<(String, u32, u64)>,
    /// (slug, day as `YYYYMMDD`, reading times and peak as the file keeps them:
    /// [`DayPresence::encode`]); none from a `retire` of an older version.
    #[serde(default)]
    pub presence: Vec<(String, u32, Vec<u8>)>,
    /// (day as `YYYYMMDD`, the site's most readers at once, unix seconds first reached)
    #[serde(default)]
    pub site: Vec<(u32, u64, u64)>,
}

/// `POST /retire` (admin, as an import), body: a [`RetiredRecord`] as JSON. Cluster mode only:
/// the record becomes part of this node's, and its part of Redis's sums part of this node's.
async fn retire(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Refusal> {
    authorize_import(&req, &state)?;
    let Some(cluster) = &state.cluster else {
        return Err(Refusal::BadRequest(
            "this server is not a cluster node (--redis): a retired record goes to a node of the cluster".into(),
        ));
    };
    let body = import_body(payload).await?;
    let retired: RetiredRecord = serde_json::from_str(&body)
        .map_err(|e| Refusal::BadRequest(format!("not a retired record: {e}")))?;
    let slug = |s: &str| Slug::parse(s).map_err(|e| Refusal::BadRequest(format!("{s}: {e}")));
    let totals = retired
        .totals
        .iter()
        .map(|(s, n)| Ok((slug(s)?, *n)))
        .collect::<Result<Vec<_>, Refusal>>()?;
    let days = retired
        .days
        .iter()
        .map(|(s, day, n)| Ok((slug(s)?, *day, *n)))
        .collect::<Result<Vec<_>, Refusal>>()?;
    let presence = retired
        .presence
        .iter()
        .map(|(s, day, bytes)| {
            let presence = DayPresence::decode(bytes)
                .ok_or_else(|| Refusal::BadRequest(format!("{s} {day}: not a day's presence")))?;
            Ok((slug(s)?, *day, presence))
        })
        .collect::<Result<Vec<_>, Refusal>>()?;
    let site = retired
        .site
        .iter()
        .map(|&(day, live, at)| (day, Peak { live, at }));
    let taken = Retired {
        totals,
        days,
        presence,
        site: site.collect(),
    };
    let taken = cluster
        .take_retired(&state.registry, &retired.record, taken)
        .await
        .map_err(|e| match e {
            RebuildError::NotARecord(_) => Refusal::BadRequest(e.to_string()),
            other => {
                tracing::warn!(error = %other, "cannot take a retired record");
                Refusal::StorageUnavailable
            }
        })?;
    // Totals moved without a view counted: dashboards start again from a snapshot.
    state.registry.changes().resync();
    // Taken before: the retire is run again (its answer was lost); it marks its file now.
    let (views, before) = match taken {
        Taken::Now(rebuilt) => (Some(rebuilt.views), false),
        Taken::Before => (None, true),
    };
    Ok(no_store(&mut HttpResponse::Ok()).json(serde_json::json!({
        "record": retired.record,
        "views": views,
        "taken_before": before,
    })))
}

/// Applies an import in one go (the writer's one transaction, or the cluster's one Redis
/// script) and answers its [`Summary`].
async fn apply_import(
    state: &AppState,
    parsed: file::Parsed,
    mode: ImportMode,
    dry_run: bool,
) -> Result<HttpResponse, Refusal> {
    let skipped = parsed.skipped;
    let plan = import::plan(parsed, mode, dry_run);
    let report = state
        .registry
        .writer()
        .import(plan)
        .await
        .map_err(Refusal::from)?;
    if report.written {
        // Totals moved without a view counted: dashboards start again from a snapshot.
        state.registry.changes().resync();
        for (slug, before, after) in &report.changed {
            if let Ok(slug) = Slug::parse(slug) {
                state.registry.imported(&slug, after - before);
            }
        }
    }
    Ok(no_store(&mut HttpResponse::Ok()).json(Summary { report, skipped }))
}

/// What opening an import session answers.
#[derive(serde::Serialize, serde::Deserialize)]
pub(crate) struct ImportSession {
    pub id: String,
    /// The server's `--timezone`: the calendar a GoatCounter file's views go on days in.
    pub timezone: String,
    /// The largest piece taken.
    pub piece_bytes: usize,
}

/// `POST /import/sessions?mode=set|add&dry_run=1` (as an import): opens the one import
/// session; its pieces follow, each `slug,day,views` or `slug,total` CSV.
async fn begin_import(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Refusal> {
    authorize_import(&req, &state)?;
    let (mode, dry_run, _, _) = import_options(&query(&req))?;
    let id = state.imports.begin(mode, dry_run)?;
    let timezone = state.calendar.time_zone().iana_name().unwrap_or("UTC");
    Ok(no_store(&mut HttpResponse::Created()).json(ImportSession {
        id,
        timezone: timezone.to_owned(),
        piece_bytes: MAX_IMPORT_BYTES,
    }))
}

fn session_id(req: &HttpRequest) -> &str {
    req.match_info().get("id").unwrap_or_default()
}

/// `POST /import/sessions/{id}`, body: a piece; staged, or refused with the whole session.
async fn import_piece(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Refusal> {
    authorize_import(&req, &state)?;
    let id = session_id(&req);
    let staged = match import_body(payload).await {
        Ok(text) => {
            // A piece of up to 10 MiB is read and checked off the request's thread.
            let imports = state.imports.clone();
            let zone = state.calendar.time_zone().clone();
            let id = id.to_owned();
            web::block(move || {
                let options = ParseOptions {
                    format: Some(ImportFormat::Csv),
                    path_prefix: None,
                    timezone: &zone,
                };
                match file::parse(&text, &options) {
                    Ok(piece) => imports.add(&id, piece),
                    Err(e) => {
                        imports.abort(&id);
                        Err(Refusal::BadRequest(format!(
                            "piece refused, nothing of this import was applied: {e}"
                        )))
                    }
                }
            })
            .await
            .map_err(|e| Refusal::Internal(e.to_string()))?
        }
        Err(refusal) => {
            state.imports.abort(id);
            Err(refusal)
        }
    }?;
    Ok(no_store(&mut HttpResponse::Ok()).json(serde_json::json!({ "pieces": staged })))
}

/// `POST /import/sessions/{id}/commit`: applies every staged piece at once.
async fn commit_import(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Refusal> {
    authorize_import(&req, &state)?;
    let staged = state.imports.take(session_id(&req))?;
    apply_import(&state, staged.parsed, staged.mode, staged.dry_run).await
}

/// `DELETE /import/sessions/{id}`: drops the session, nothing applied.
async fn abort_import(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Refusal> {
    authorize_import(&req, &state)?;
    if state.imports.abort(session_id(&req)) {
        Ok(HttpResponse::NoContent().finish())
    } else {
        Err(Refusal::NoImportSession)
    }
}

/// Counts every refusal by reason for `/metrics`, whichever handler refused.
pub(crate) fn count_refusal(state: &AppState, res: &actix_web::dev::ServiceResponse) {
    if let Some(e) = res.response().error().and_then(|e| e.as_error::<Refusal>()) {
        state.count_refusal(e);
    }
}
