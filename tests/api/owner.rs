//! The owner's side of the contract (`design.md`, "The owner and the index page"): views per
//! calendar day in `--timezone`, `counts` for index pages, `top`, the badge, `/metrics`, and
//! `viewcounter import` / `export --daily` on the file and through a running server.
//!
//! Days are tested on a clock the test sets (`c.clock` of `spawn_app_configured_in`), so midnight comes when the
//! test says; only the tests of the real binary (kill -9, import through it) use the real time.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use jiff::tz::TimeZone;
use serde::Deserialize;
use tempfile::TempDir;

use testkit::*;

const ADMIN: &str = "owner-tests-admin-token";
const NEVER: &[&str] = &["--flush-after", "1h", "--flush-max-wait", "1h"];
const QUICK_FLUSH: &[&str] = &["--flush-after", "50ms", "--flush-max-wait", "100ms"];
const BERLIN: &[&str] = &["--timezone", "Europe/Berlin"];
/// The db file `spawn_app_configured_in` and `BinServer` use inside their directory.
const DB_FILE: &str = "viewcounter.redb";
/// A post whose readers left sleeps once its dedupe memory (1 s here) expired: well within this.
const ASLEEP: Duration = Duration::from_secs(15);
/// How long a flush may take to show in `/metrics` with `QUICK_FLUSH` (100 ms max wait).
const FLUSHED: Duration = Duration::from_secs(5);
const GOAT_HEADER: &str = "2Path,Title,Event,UserAgent,Browser,System,Session,Bot,Referrer,\
                           Referrer scheme,Screen size,Location,FirstVisit,Date";

// ---------------------------------------------------------------------------------------------
// The clock, directories and requests.

fn unix(rfc3339: &str) -> u64 {
    let at: jiff::Timestamp = rfc3339.parse().expect("an RFC 3339 time");
    u64::try_from(at.as_second()).expect("a time after 1970")
}

/// A server clock that reads `rfc3339` now and runs on from there.
fn clock_at(rfc3339: &str) -> Clock {
    let clock = Clock::default();
    clock.set_unix(unix(rfc3339));
    clock
}

/// A directory as `spawn_app_configured_in` reads it: the allow-list `slugs.txt`, no db yet.
fn app_dir(slugs: &[&str]) -> TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    write_slugs(&dir.path().join("slugs.txt"), slugs);
    dir
}

/// [`BERLIN`] for a library server.
fn berlin(c: &mut Config) {
    c.timezone = TimeZone::get("Europe/Berlin").expect("a known time zone");
}

/// [`QUICK_FLUSH`] for a library server.
fn quick_flush(c: &mut Config) {
    c.flush.after = Duration::from_millis(50);
    c.flush.max_wait = Duration::from_millis(100);
}

/// `--allow-any-slug` with its defaults (`--max-slugs 10000`, `--ip-new-post-rate 10`).
fn any_slug(c: &mut Config) {
    c.posts = Posts::Any {
        max: 10_000,
        new_per_hour: 10,
    };
}

fn bearer(req: Req) -> Req {
    req.header("Authorization", format!("Bearer {ADMIN}"))
}

/// Counts one view (a fresh reader that leaves at once).
async fn view(addr: SocketAddr, slug: &str) {
    drop(join(addr, slug, Req::connect(slug, &token())).await);
}

/// `POST /api/v1/import?{query}` from loopback with `file` as the body, asserting 200.
async fn import_over_http(addr: SocketAddr, query: &str, file: &str) -> serde_json::Value {
    let res = send(addr, Req::import(format!("/api/v1/import?{query}"), file)).await;
    assert_eq!(res.status, 200, "import: {res:?}");
    res.json()
}

// ---------------------------------------------------------------------------------------------
// History and days.

/// The views of a history; its presence fields (and the whole shape) are `presence.rs`'s.
#[derive(Debug, Deserialize)]
struct History {
    slug: String,
    days: Vec<DayViews>,
}

#[derive(Debug, Deserialize)]
struct DayViews {
    day: String,
    views: u64,
}

/// `GET {target}` (a history request) from loopback, asserting 200: `(day, views)` in order.
async fn history_at(addr: SocketAddr, slug: &str, target: &str) -> Vec<(String, u64)> {
    let res = send(addr, Req::get(target)).await;
    assert_eq!(res.status, 200, "{target}: {res:?}");
    let history: History = res.json_as();
    assert_eq!(history.slug, slug);
    history.days.into_iter().map(|d| (d.day, d.views)).collect()
}

/// `GET /api/v1/history/{slug}?days={days}`: `(day, views)`, oldest first.
async fn history(addr: SocketAddr, slug: &str, days: u32) -> Vec<(String, u64)> {
    history_at(addr, slug, &format!("/api/v1/history/{slug}?days={days}")).await
}

/// A post's row of `/api/v1/daily` (the site's rows, `*`, are left out by [`post_rows`]).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
struct Daily {
    slug: String,
    day: String,
    views: u64,
    read_buckets: Vec<u32>,
    read_ms: u64,
    peak: u64,
    peak_at: Option<String>,
}

/// The posts' rows of a `/api/v1/daily` answer or an `export --daily --format json`: the
/// site's peaks (`*`) come from readers, which the tests of views per day leave out.
fn post_rows(json: &str) -> Vec<Daily> {
    let rows: Vec<serde_json::Value> = serde_json::from_str(json).expect("a JSON array");
    rows.into_iter()
        .filter(|row| row["slug"] != "*")
        .map(|row| serde_json::from_value(row).expect("a post's row"))
        .collect()
}

/// `export --daily`'s header, and what ends the line of a day without readers (no reading
/// times, no peak).
const DAILY_HEADER: &str = "slug,day,views,read_buckets,read_ms,peak,peak_at\n";
const NO_READERS: &str = ",0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0,0,0,";

/// `GET /api/v1/daily` from loopback, asserting 200.
async fn daily(addr: SocketAddr) -> Vec<Daily> {
    let res = send(addr, Req::get("/api/v1/daily")).await;
    assert_eq!(res.status, 200, "daily: {res:?}");
    post_rows(&res.text())
}

/// `export --daily`'s rows with their reading times and peaks left out (as [`NO_READERS`]),
/// and the site's peaks (`*`) too: the tests of views per day do not depend on when their
/// readers' streams closed.
fn without_readers(csv: &str) -> String {
    let mut lines = csv.lines();
    let mut out = format!("{}\n", lines.next().unwrap_or_default());
    for line in lines.filter(|line| !line.starts_with("*,")) {
        let views: Vec<&str> = line.splitn(4, ',').take(3).collect();
        out.push_str(&format!("{}{NO_READERS}\n", views.join(",")));
    }
    out
}

/// `(slug, day, views)` of `/daily` rows, without their reading times and peaks.
fn day_views(rows: &[Daily]) -> Vec<(String, String, u64)> {
    let view = |r: &Daily| (r.slug.clone(), r.day.clone(), r.views);
    rows.iter().map(view).collect()
}

fn daily_csv(rows: &[(&str, &str, u64)]) -> String {
    let mut out = String::from(DAILY_HEADER);
    for (slug, day, views) in rows {
        out.push_str(&format!("{slug},{day},{views}{NO_READERS}\n"));
    }
    out
}

fn totals_csv(rows: &[(&str, u64)]) -> String {
    let mut out = String::from("slug,total\n");
    for (slug, total) in rows {
        out.push_str(&format!("{slug},{total}\n"));
    }
    out
}

/// A view at 2026-11-30T22:59:00Z and one at 23:00:01Z (23:59 and 00:00:01 in Berlin),
/// on a server configured by `configure`: the history of the last two days, and the days
/// `export --daily` finds in the file once the server stopped.
async fn two_views_around_berlin_midnight(
    configure: impl FnOnce(&mut Config),
    history_wanted: Vec<(String, u64)>,
    daily_wanted: &[(&str, &str, u64)],
) {
    let clock = Clock::default();
    let app = spawn_app_configured_in(app_dir(DEFAULT_SLUGS), |c| {
        configure(c);
        c.clock = clock.clone();
    })
    .await;
    // Set just before each view, and the clock runs on: the first view is a minute before
    // midnight, as a busy machine may take seconds to count it (at 23:59:59 it once landed on
    // the next day); the second only moves further into its day.
    clock.set_unix(unix("2026-11-30T22:59:00Z"));
    view(app.addr, "alpha").await;
    clock.set_unix(unix("2026-11-30T23:00:01Z"));
    view(app.addr, "alpha").await;

    assert_eq!(history(app.addr, "alpha", 2).await, history_wanted);
    // Written with the day each view was counted on, not the day of the write.
    let dir = app.stop_and_keep_dir().await;
    let db = dir.path().join(DB_FILE);
    assert_eq!(
        without_readers(&export_ok(dir.path(), &db, &["--daily"]).await),
        daily_csv(daily_wanted)
    );
}

#[actix_web::test]
async fn a_view_at_23_59_and_one_at_00_00_01_berlin_time_land_on_two_days() {
    two_views_around_berlin_midnight(
        berlin,
        rows(&[("2026-11-30", 1), ("2026-12-01", 1)]),
        &[("alpha", "2026-11-30", 1), ("alpha", "2026-12-01", 1)],
    )
    .await;
}

#[actix_web::test]
async fn the_same_two_views_in_utc_land_on_one_day() {
    two_views_around_berlin_midnight(
        |_| {},
        rows(&[("2026-11-29", 0), ("2026-11-30", 2)]),
        &[("alpha", "2026-11-30", 2)],
    )
    .await;
}

#[actix_web::test]
async fn history_lists_every_day_of_its_window_oldest_first_ending_today() {
    let app = spawn_app_configured_in(app_dir(DEFAULT_SLUGS), |c| {
        c.clock = clock_at("2024-03-01T12:00:00Z");
    })
    .await;
    view(app.addr, "alpha").await;

    assert_eq!(
        history(app.addr, "alpha", 3).await,
        rows(&[("2024-02-28", 0), ("2024-02-29", 0), ("2024-03-01", 1)])
    );
    // A listed post nobody read has a history of zeros; a nested slug is one post.
    assert_eq!(
        history(app.addr, "beta", 2).await,
        rows(&[("2024-02-29", 0), ("2024-03-01", 0)])
    );
    view(app.addr, "2024/05/my_post.html").await;
    assert_eq!(
        history(app.addr, "2024/05/my_post.html", 1).await,
        rows(&[("2024-03-01", 1)])
    );
    // Without ?days: 30 days.
    let month = history_at(app.addr, "alpha", "/api/v1/history/alpha").await;
    assert_eq!(month.len(), 30, "{month:?}");
    assert_eq!(month[0].0, "2024-02-01");
    assert_eq!(month[29], ("2024-03-01".to_owned(), 1));
    // At most a year, leap day included, every day once and in order.
    let year = history(app.addr, "alpha", 366).await;
    assert_eq!(year.len(), 366);
    assert_eq!(year[0].0, "2023-03-02");
    for pair in year.windows(2) {
        let day: jiff::civil::Date = pair[0].0.parse().expect("YYYY-MM-DD");
        assert_eq!(day.tomorrow().unwrap().to_string(), pair[1].0, "{pair:?}");
    }
    assert_eq!(year.iter().map(|(_, views)| views).sum::<u64>(), 1);
}

#[actix_web::test]
async fn history_refuses_days_out_of_range_and_posts_it_does_not_know() {
    let app = spawn_app().await;

    for days in ["0", "367", "-1", "1.5", "ten", ""] {
        let res = app
            .send(Req::get(format!("/api/v1/history/alpha?days={days}")))
            .await;
        let message = res.assert_json_error(400);
        assert!(message.contains("days"), "days={days}: {message}");
    }
    app.send(Req::get("/api/v1/history/not-listed"))
        .await
        .assert_json_error(404);
    app.send(Req::get("/api/v1/history/bad!slug"))
        .await
        .assert_json_error(400);
}

#[actix_web::test]
async fn history_answers_only_the_owner() {
    let open = spawn_app().await;
    let proxied = Req::get("/api/v1/history/alpha").client_ip("203.0.113.9");
    open.send(proxied.clone()).await.assert_json_error(401);

    let locked = spawn_app_configured(|c| c.admin_token = Some(ADMIN.into())).await;
    locked
        .send(Req::get("/api/v1/history/alpha"))
        .await
        .assert_json_error(401);
    let wrong = Req::get("/api/v1/history/alpha").header("Authorization", "Bearer nope");
    locked.send(wrong).await.assert_json_error(401);
    let res = locked.send(bearer(proxied)).await;
    assert_eq!(res.status, 200, "{res:?}");
}

#[actix_web::test]
async fn history_survives_a_graceful_restart_on_the_same_db() {
    let clock = clock_at("2026-03-28T12:00:00Z");
    let app = spawn_app_configured_in(app_dir(DEFAULT_SLUGS), |c| {
        berlin(c);
        c.clock = clock.clone();
    })
    .await;
    for slug in ["alpha", "beta", "alpha"] {
        view(app.addr, slug).await;
    }
    clock.set_unix(unix("2026-03-29T12:00:00Z"));
    view(app.addr, "alpha").await;
    let dir = app.stop_and_keep_dir().await;

    let app = spawn_app_configured_in(dir, |c| {
        berlin(c);
        c.clock = clock.clone();
    })
    .await;

    assert_eq!(
        history(app.addr, "alpha", 3).await,
        rows(&[("2026-03-27", 0), ("2026-03-28", 2), ("2026-03-29", 1)])
    );
    assert_eq!(
        history(app.addr, "beta", 3).await,
        rows(&[("2026-03-27", 0), ("2026-03-28", 1), ("2026-03-29", 0)])
    );
    // And the day goes on from what was stored.
    view(app.addr, "alpha").await;
    assert_eq!(
        history(app.addr, "alpha", 1).await,
        rows(&[("2026-03-29", 2)])
    );
}

/// Counts one view of `slug` and waits for the flush that writes it. Nothing else may be
/// pending (each call waits for its own write): then no flush is under way when the view
/// arrives, and the next one to finish carries it.
async fn count_one_view_and_await_its_write(addr: SocketAddr, slug: &str) {
    let flushes = counter(&scrape(addr).await, "viewcounter_flushes_total");
    view(addr, slug).await;
    await_counter_above(addr, "viewcounter_flushes_total", flushes, FLUSHED).await;
}

#[actix_web::test]
async fn history_survives_a_kill_9_after_the_flush_the_max_wait_forces() {
    let mut server = BinServer::start(QUICK_FLUSH).await;
    for slug in ["alpha", "beta", "alpha", "alpha"] {
        count_one_view_and_await_its_write(server.addr, slug).await;
    }
    let before = daily(server.addr).await;
    let views_of = |slug: &str| -> u64 {
        before
            .iter()
            .filter(|row| row.slug == slug)
            .map(|row| row.views)
            .sum()
    };
    assert_eq!((views_of("alpha"), views_of("beta")), (3, 1), "{before:?}");

    server.kill_9().await;

    let db = server.db();
    let on_file = export_ok(server.dir.path(), &db, &["--daily"]).await;
    let mut want = String::from(DAILY_HEADER);
    for row in &before {
        want.push_str(&format!(
            "{},{},{}{NO_READERS}\n",
            row.slug, row.day, row.views
        ));
    }
    assert_eq!(without_readers(&on_file), want);
    // In the same transactions as the totals.
    assert_eq!(
        export_ok(server.dir.path(), &db, &[]).await,
        totals_csv(&[("alpha", 3), ("beta", 1)])
    );
    let server = BinServer::start_in(server.into_dir(), &[]).await;
    assert_eq!(day_views(&daily(server.addr).await), day_views(&before));
    // Two days, in case the test ran over midnight.
    let alpha = history(server.addr, "alpha", 2).await;
    assert_eq!(alpha.iter().map(|(_, v)| v).sum::<u64>(), 3, "{alpha:?}");
}

// ---------------------------------------------------------------------------------------------
// counts: many posts at once, for index pages.

#[derive(Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
struct PostCounts {
    slug: String,
    live: u64,
    total: u64,
}

fn post_counts(slug: &str, live: u64, total: u64) -> PostCounts {
    PostCounts {
        slug: slug.to_owned(),
        live,
        total,
    }
}

fn counts_target(slugs: &[&str]) -> String {
    let query: Vec<String> = slugs.iter().map(|s| format!("slug={s}")).collect();
    format!("/api/v1/counts?{}", query.join("&"))
}

/// `GET /api/v1/counts?slug=…` without any admin right, asserting 200 and its caching.
async fn counts_of_many(addr: SocketAddr, slugs: &[&str]) -> Vec<PostCounts> {
    let res = send(
        addr,
        Req::get(counts_target(slugs)).client_ip("203.0.113.5"),
    )
    .await;
    assert_eq!(res.status, 200, "{res:?}");
    assert_eq!(res.header("cache-control"), Some("max-age=1"), "{res:?}");
    res.json_as()
}

fn posts(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("post-{i:03}")).collect()
}

#[actix_web::test]
async fn counts_of_a_hundred_posts_wake_none_count_nothing_and_keep_the_request_order() {
    let slugs = posts(100);
    let slugs: Vec<&str> = slugs.iter().map(String::as_str).collect();
    let app = spawn_app_configured_with_slugs(&slugs, |c| {
        c.flush.dedupe_window = Duration::from_secs(1);
    })
    .await;
    for slug in ["post-003", "post-042", "post-003"] {
        app.join(slug).await.stream.close();
    }
    app.await_posts_awake(0, ASLEEP).await;
    let _reading = app.join("post-007").await;
    let counted = counter(&scrape(app.addr).await, "viewcounter_views_counted_total");
    assert_eq!(app.posts_awake().await, 1);

    let asked: Vec<&str> = slugs.iter().rev().copied().collect();
    let answer = counts_of_many(app.addr, &asked).await;

    let want: Vec<PostCounts> = asked
        .iter()
        .map(|&slug| match slug {
            "post-003" => post_counts(slug, 0, 2),
            "post-042" => post_counts(slug, 0, 1),
            "post-007" => post_counts(slug, 1, 1),
            _ => post_counts(slug, 0, 0),
        })
        .collect();
    assert_eq!(answer, want);
    assert_eq!(app.posts_awake().await, 1, "counts woke posts");
    assert_eq!(
        counter(&scrape(app.addr).await, "viewcounter_views_counted_total"),
        counted,
        "counts counted views"
    );
}

#[actix_web::test]
async fn counts_omit_unknown_posts_and_answer_a_repeated_one_once() {
    let app = spawn_app().await;
    let _reading = app.join("beta").await;

    let answer = counts_of_many(app.addr, &["gamma", "not-listed", "beta", "gamma"]).await;

    assert_eq!(
        answer,
        [post_counts("gamma", 0, 0), post_counts("beta", 1, 1)]
    );
    assert!(counts_of_many(app.addr, &["not-listed"]).await.is_empty());
}

#[actix_web::test]
async fn counts_refuse_no_slug_more_than_a_hundred_or_a_malformed_one() {
    let app = spawn_app().await;
    let many = posts(101);
    let many: Vec<&str> = many.iter().map(String::as_str).collect();

    // A hundred is the limit, known or not.
    assert!(counts_of_many(app.addr, &many[..100]).await.is_empty());
    app.send(Req::get(counts_target(&many)))
        .await
        .assert_json_error(400);
    for target in [
        "/api/v1/counts",
        "/api/v1/counts?slug=",
        "/api/v1/counts?slug=alpha&slug=bad%20slug",
        "/api/v1/counts?slug=alpha/../beta",
    ] {
        app.send(Req::get(target)).await.assert_json_error(400);
    }
}

#[actix_web::test]
async fn counts_with_any_slug_know_only_posts_that_have_views() {
    let app = spawn_app_configured(any_slug).await;
    let _reading = app.join("read-once").await;

    let answer = counts_of_many(app.addr, &["never-read", "read-once"]).await;

    assert_eq!(answer, [post_counts("read-once", 1, 1)]);
}

// ---------------------------------------------------------------------------------------------
// top.

#[derive(Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
struct Top {
    slug: String,
    live: u64,
    total: u64,
    today: u64,
}

fn top(slug: &str, live: u64, total: u64, today: u64) -> Top {
    Top {
        slug: slug.to_owned(),
        live,
        total,
        today,
    }
}

async fn top_of(addr: SocketAddr, query: &str) -> Vec<Top> {
    let res = send(addr, Req::get(format!("/api/v1/top{query}"))).await;
    assert_eq!(res.status, 200, "top{query}: {res:?}");
    res.json_as()
}

/// A server at noon with a tie in every ranking:
///
/// | post | live | total | today |
/// |---|---|---|---|
/// | alpha | 0 | 5 (4 imported) | 1 |
/// | beta | 2 | 5 (3 imported) | 2 |
/// | gamma | 2 | 2 | 2 |
/// | 2024/05/my_post.html | 1 | 1 | 1 |
async fn ranked_app(configure: impl FnOnce(&mut Config)) -> (TestApp, Vec<Reader>) {
    let clock = clock_at("2026-06-15T12:00:00Z");
    let app = spawn_app_configured_in(app_dir(DEFAULT_SLUGS), |c| {
        configure(c);
        c.clock = clock;
    })
    .await;
    let import = Req::import("/api/v1/import", "slug,total\nalpha,4\nbeta,3\n");
    let res = app.send(bearer(import)).await;
    assert_eq!(res.status, 200, "{res:?}");
    app.join("alpha").await.stream.close();
    let mut open = Vec::new();
    for slug in ["beta", "beta", "gamma", "gamma", "2024/05/my_post.html"] {
        open.push(app.join(slug).await);
    }
    app.await_counts("alpha", counts(0, 5), LIVE_DROP).await;
    (app, open)
}

#[actix_web::test]
async fn top_ranks_best_first_and_breaks_ties_by_slug() {
    let (app, _open) = ranked_app(|_| {}).await;
    let nested = "2024/05/my_post.html";

    let by_total = [
        top("alpha", 0, 5, 1),
        top("beta", 2, 5, 2),
        top("gamma", 2, 2, 2),
        top(nested, 1, 1, 1),
    ];
    assert_eq!(top_of(app.addr, "?by=total").await, by_total);
    assert_eq!(
        top_of(app.addr, "").await,
        by_total,
        "by=total is the default"
    );
    assert_eq!(
        top_of(app.addr, "?by=today").await,
        [
            top("beta", 2, 5, 2),
            top("gamma", 2, 2, 2),
            top(nested, 1, 1, 1),
            top("alpha", 0, 5, 1),
        ]
    );
    // Only posts someone reads now.
    assert_eq!(
        top_of(app.addr, "?by=live").await,
        [
            top("beta", 2, 5, 2),
            top("gamma", 2, 2, 2),
            top(nested, 1, 1, 1)
        ]
    );
}

#[actix_web::test]
async fn top_lists_only_posts_on_the_allow_list() {
    let (app, _open) = ranked_app(|_| {}).await;
    // Views of posts that are not (or no longer) on the list, brought in by imports.
    import_over_http(app.addr, "", "slug,total\nunlisted,1000\n").await;
    import_over_http(
        app.addr,
        "",
        "slug,day,views\nunlisted-today,2026-06-15,1000\n",
    )
    .await;

    for by in ["total", "today", "live"] {
        let slugs: Vec<String> = top_of(app.addr, &format!("?by={by}"))
            .await
            .into_iter()
            .map(|row| row.slug)
            .collect();
        assert!(
            slugs
                .iter()
                .all(|slug| DEFAULT_SLUGS.contains(&slug.as_str())),
            "by={by}: {slugs:?}"
        );
    }
    assert_eq!(top_of(app.addr, "?limit=1").await, [top("alpha", 0, 5, 1)]);
}

#[actix_web::test]
async fn top_keeps_the_best_up_to_its_limit_and_refuses_bad_parameters() {
    let (app, _open) = ranked_app(|_| {}).await;

    assert_eq!(
        top_of(app.addr, "?by=total&limit=2").await,
        [top("alpha", 0, 5, 1), top("beta", 2, 5, 2)]
    );
    assert_eq!(
        top_of(app.addr, "?limit=1&by=live").await,
        [top("beta", 2, 5, 2)]
    );
    assert_eq!(top_of(app.addr, "?limit=100").await.len(), 4);
    for query in [
        "?by=views",
        "?by=",
        "?limit=0",
        "?limit=101",
        "?limit=-1",
        "?limit=ten",
    ] {
        app.send(Req::get(format!("/api/v1/top{query}")))
            .await
            .assert_json_error(400);
    }
}

#[actix_web::test]
async fn top_is_public_with_an_allow_list_and_for_the_owner_only_with_any_slug() {
    let (listed, _open) = ranked_app(|c| c.admin_token = Some(ADMIN.into())).await;
    let res = listed
        .send(Req::get("/api/v1/top?limit=1").client_ip("203.0.113.7"))
        .await;
    assert_eq!(res.status, 200, "public with an allow-list: {res:?}");

    let any = spawn_app_configured(|c| {
        any_slug(c);
        c.admin_token = Some(ADMIN.into());
    })
    .await;
    let _reading = any.join("user-made").await;
    any.send(Req::get("/api/v1/top"))
        .await
        .assert_json_error(401);
    let wrong = Req::get("/api/v1/top").header("Authorization", "Bearer nope");
    any.send(wrong).await.assert_json_error(401);
    let res = any.send(bearer(Req::get("/api/v1/top"))).await;
    assert_eq!(res.status, 200, "{res:?}");
    let rows: Vec<Top> = res.json_as();
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0].slug.as_str(), rows[0].total), ("user-made", 1));
}

// ---------------------------------------------------------------------------------------------
// The badge.

/// The texts of a badge as an XML parser reads them; panics unless it is an SVG document.
fn badge_texts(svg: &str) -> Vec<String> {
    let doc = roxmltree::Document::parse(svg).unwrap_or_else(|e| panic!("{e}: {svg}"));
    let root = doc.root_element();
    assert_eq!(root.tag_name().name(), "svg", "{svg}");
    assert_eq!(
        root.tag_name().namespace(),
        Some("http://www.w3.org/2000/svg")
    );
    root.descendants()
        .filter(|n| n.tag_name().name() == "text")
        .map(|n| n.text().unwrap_or_default().to_owned())
        .collect()
}

async fn badge(addr: SocketAddr, target: &str) -> Response {
    let res = send(addr, Req::get(target)).await;
    assert_eq!(res.status, 200, "{target}: {res:?}");
    assert!(
        res.header("content-type")
            .is_some_and(|ct| ct.starts_with("image/svg+xml")),
        "{res:?}"
    );
    assert_eq!(res.header("cache-control"), Some("max-age=60"), "{res:?}");
    res
}

#[actix_web::test]
async fn a_badge_shows_the_grouped_total_beside_its_label_and_counts_nothing() {
    let app = spawn_app().await;
    import_over_http(app.addr, "", "slug,total\nalpha,1234\n").await;

    let texts = badge_texts(&badge(app.addr, "/badge/alpha.svg").await.text());
    assert!(texts.iter().any(|t| t == "views"), "{texts:?}");
    assert!(texts.iter().any(|t| t == "1,234"), "{texts:?}");
    let again = badge_texts(&badge(app.addr, "/badge/alpha.svg").await.text());
    assert!(again.iter().any(|t| t == "1,234"), "{again:?}");

    assert_eq!(app.posts_awake().await, 0, "a badge wakes no post");
    let metrics = scrape(app.addr).await;
    assert_eq!(counter(&metrics, "viewcounter_views_counted_total"), 0);
    assert_eq!(app.counts("alpha").await, counts(0, 1234));
    // A listed post nobody read: 0; a nested slug is one post.
    let zero = badge_texts(&badge(app.addr, "/badge/beta.svg").await.text());
    assert!(zero.iter().any(|t| t == "0"), "{zero:?}");
    let nested = badge(app.addr, "/badge/2024/05/my_post.html.svg").await;
    assert!(badge_texts(&nested.text()).iter().any(|t| t == "0"));
}

#[actix_web::test]
async fn a_badge_label_is_shown_as_text_never_as_markup() {
    let app = spawn_app().await;
    import_over_http(app.addr, "", "slug,total\nalpha,7\n").await;

    let svg = badge(app.addr, "/badge/alpha.svg?label=%3Cb%3E%26")
        .await
        .text();
    let texts = badge_texts(&svg);
    assert!(texts.iter().any(|t| t == "<b>&"), "{texts:?}");
    let doc = roxmltree::Document::parse(&svg).expect("well-formed");
    assert!(
        !doc.descendants().any(|n| n.tag_name().name() == "b"),
        "the label became an element: {svg}"
    );
    // 32 characters is the longest label.
    let longest = "x".repeat(32);
    let svg = badge(app.addr, &format!("/badge/alpha.svg?label={longest}")).await;
    assert!(badge_texts(&svg.text()).contains(&longest));
}

#[actix_web::test]
async fn a_badge_of_an_unknown_post_is_a_404_and_a_bad_label_a_400() {
    let app = spawn_app().await;

    app.send(Req::get("/badge/not-listed.svg"))
        .await
        .assert_json_error(404);
    // Any slug: a post is known once it has views.
    let any = spawn_app_configured(any_slug).await;
    any.send(Req::get("/badge/never-read.svg"))
        .await
        .assert_json_error(404);
    view(any.addr, "read-once").await;
    let read = badge(any.addr, "/badge/read-once.svg").await;
    assert!(badge_texts(&read.text()).iter().any(|t| t == "1"));
    let too_long = format!("/badge/alpha.svg?label={}", "x".repeat(33));
    for target in [
        "/badge/alpha.svg?label=",
        too_long.as_str(),
        "/badge/alpha.svg?label=a%07b",
        "/badge/alpha.svg?label=a%0Ab",
    ] {
        let message = app.send(Req::get(target)).await.assert_json_error(400);
        assert!(message.contains("label"), "{target}: {message}");
    }
}

// ---------------------------------------------------------------------------------------------
// Metrics.

/// `GET /metrics` from loopback: every sample's value by series (`name` or `name{labels}`).
/// Every line must be a comment or a sample, and the last one `# EOF`.
async fn scrape(addr: SocketAddr) -> BTreeMap<String, String> {
    let res = send(addr, Req::get("/metrics")).await;
    assert_eq!(res.status, 200, "metrics: {res:?}");
    parse_metrics(&res.text())
}

fn parse_metrics(text: &str) -> BTreeMap<String, String> {
    assert_eq!(
        text.lines().last(),
        Some("# EOF"),
        "ends with # EOF:\n{text}"
    );
    let mut samples = BTreeMap::new();
    for line in text.lines().filter(|line| !line.starts_with('#')) {
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("not `name{{labels}} value`: {line:?}"));
        let name = match series.split_once('{') {
            Some((name, labels)) => {
                assert!(
                    labels.ends_with('}') && labels.len() > 1,
                    "labels: {line:?}"
                );
                name
            }
            None => series,
        };
        let valid_name = name.chars().enumerate().all(|(i, c)| {
            c == '_' || c == ':' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit())
        });
        assert!(!name.is_empty() && valid_name, "metric name: {line:?}");
        assert!(value.parse::<f64>().is_ok(), "value: {line:?}");
        let first = samples.insert(series.to_owned(), value.to_owned());
        assert!(first.is_none(), "series given twice: {line:?}");
    }
    samples
}

/// A counter's or gauge's whole-number value; panics when the series is missing.
fn counter(samples: &BTreeMap<String, String>, series: &str) -> u64 {
    let value = samples
        .get(series)
        .unwrap_or_else(|| panic!("no {series} in {samples:#?}"));
    value
        .parse()
        .unwrap_or_else(|_| panic!("{series} is {value}, not a count"))
}

fn refusals(samples: &BTreeMap<String, String>, reason: &str) -> u64 {
    let series = format!("viewcounter_refusals_total{{reason=\"{reason}\"}}");
    samples
        .get(&series)
        .map_or(0, |_| counter(samples, &series))
}

/// Polls `/metrics` until `series` is above `floor`; fails after `within`.
async fn await_counter_above(addr: SocketAddr, series: &str, floor: u64, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let seen = counter(&scrape(addr).await, series);
        if seen > floor {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{series} still {seen} after {within:?}, want above {floor}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[actix_web::test]
async fn metrics_are_samples_by_name_ending_with_eof_and_none_names_a_post() {
    let app = spawn_app().await;
    let _reading = app.join("alpha").await;
    app.send(Req::connect("not-listed", &token()))
        .await
        .assert_json_error(404);

    let res = app.send(Req::get("/metrics")).await;
    assert_eq!(res.status, 200, "{res:?}");
    let samples = parse_metrics(&res.text());

    for series in [
        "viewcounter_streams_open",
        "viewcounter_readers_live",
        "viewcounter_posts_awake",
        "viewcounter_views_counted_total",
        "viewcounter_views_deduplicated_total",
        "viewcounter_views_rate_limited_total",
        "viewcounter_views_from_bots_total",
        "viewcounter_flushes_total",
        "viewcounter_flush_errors_total",
        "viewcounter_flush_seconds_count",
        "viewcounter_flush_seconds_bucket{le=\"+Inf\"}",
    ] {
        counter(&samples, series);
    }
    assert!(samples.contains_key("viewcounter_flush_seconds_sum"));
    assert_eq!(counter(&samples, "viewcounter_streams_open"), 1);
    assert_eq!(counter(&samples, "viewcounter_readers_live"), 1);
    assert_eq!(counter(&samples, "viewcounter_posts_awake"), 1);
    assert!(
        !res.text().contains("alpha"),
        "a series per post: {}",
        res.text()
    );
}

#[actix_web::test]
async fn metrics_count_views_repeats_rate_limits_bots_and_refusals_by_reason() {
    let app = spawn_app_configured(|c| c.limits.ip_views_per_minute = 1).await;
    let samples = scrape(app.addr).await;
    for series in [
        "viewcounter_views_counted_total",
        "viewcounter_views_deduplicated_total",
        "viewcounter_views_rate_limited_total",
        "viewcounter_views_from_bots_total",
    ] {
        assert_eq!(counter(&samples, series), 0, "{series}");
    }

    let first = app.join("alpha").await;
    assert_eq!(
        counter(&scrape(app.addr).await, "viewcounter_views_counted_total"),
        1
    );
    let _over_rate = app.join("alpha").await;
    let tab = app.join("beta").await;
    let _again = app
        .join_as(
            "beta",
            Req::connect("beta", &tab.id).header("Last-Event-ID", tab.id.clone()),
        )
        .await;
    let bot = Req::connect("gamma", &token()).header("User-Agent", BOT_UA);
    let _bot = app.join_as("gamma", bot).await;
    app.send(Req::connect("not-listed", &token()))
        .await
        .assert_json_error(404);
    app.send(Req::connect("bad!slug", &token()))
        .await
        .assert_json_error(400);
    app.send(Req::connect("alpha", &token()).origin("https://elsewhere.example"))
        .await
        .assert_json_error(403);

    let samples = scrape(app.addr).await;
    assert_eq!(counter(&samples, "viewcounter_views_counted_total"), 2);
    assert_eq!(counter(&samples, "viewcounter_views_rate_limited_total"), 1);
    assert_eq!(counter(&samples, "viewcounter_views_deduplicated_total"), 1);
    assert_eq!(counter(&samples, "viewcounter_views_from_bots_total"), 1);
    assert_eq!(refusals(&samples, "unknown_post"), 1);
    assert_eq!(refusals(&samples, "bad_slug"), 1);
    assert_eq!(refusals(&samples, "origin"), 1);
    assert_eq!(counter(&samples, "viewcounter_streams_open"), 5);
    // Every open reader stream is live: two on alpha, two on beta (the first still open as
    // its reconnect arrives); the bot's is not.
    assert_eq!(counter(&samples, "viewcounter_readers_live"), 4);
    drop(first);
}

#[actix_web::test]
async fn metrics_count_a_stream_over_the_per_address_limit_by_its_reason() {
    let app = spawn_app_configured(|c| c.limits.ip_streams = 1).await;
    let _first = app.join("alpha").await;
    assert_eq!(refusals(&scrape(app.addr).await, "ip_stream_limit"), 0);

    app.send(Req::connect("beta", &token()))
        .await
        .assert_json_error(429);

    let samples = scrape(app.addr).await;
    assert_eq!(refusals(&samples, "ip_stream_limit"), 1);
    assert_eq!(counter(&samples, "viewcounter_views_counted_total"), 1);
}

#[actix_web::test]
async fn metrics_count_flushes_and_how_long_they_took() {
    let app = spawn_app_configured(quick_flush).await;
    let before = scrape(app.addr).await;
    assert_eq!(counter(&before, "viewcounter_flushes_total"), 0);
    assert_eq!(counter(&before, "viewcounter_flush_seconds_count"), 0);

    view(app.addr, "alpha").await;
    await_counter_above(app.addr, "viewcounter_flushes_total", 0, FLUSHED).await;

    let after = scrape(app.addr).await;
    assert_eq!(counter(&after, "viewcounter_flushes_total"), 1);
    assert_eq!(counter(&after, "viewcounter_flush_errors_total"), 0);
    assert_eq!(counter(&after, "viewcounter_flush_seconds_count"), 1);
    assert_eq!(
        counter(&after, "viewcounter_flush_seconds_bucket{le=\"+Inf\"}"),
        1
    );
    // Buckets are cumulative.
    let mut buckets: Vec<(f64, u64)> = after
        .keys()
        .filter_map(|series| {
            let le = series
                .strip_prefix("viewcounter_flush_seconds_bucket{le=\"")?
                .strip_suffix("\"}")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, counter(&after, series)))
        })
        .collect();
    assert!(buckets.len() > 2, "{after:#?}");
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "{buckets:?}");
}

#[actix_web::test]
async fn metrics_answer_only_the_owner() {
    let open = spawn_app().await;
    let res = open.send(Req::get("/metrics")).await;
    assert_eq!(res.status, 200, "direct loopback: {res:?}");
    open.send(Req::get("/metrics").client_ip("127.0.0.1"))
        .await
        .assert_json_error(401);
    open.send(Req::get("/metrics").client_ip("203.0.113.8"))
        .await
        .assert_json_error(401);

    let locked = spawn_app_configured(|c| c.admin_token = Some(ADMIN.into())).await;
    locked
        .send(Req::get("/metrics"))
        .await
        .assert_json_error(401);
    let res = locked
        .send(bearer(Req::get("/metrics").client_ip("203.0.113.8")))
        .await;
    assert_eq!(res.status, 200, "{res:?}");
    parse_metrics(&res.text());
}

// ---------------------------------------------------------------------------------------------
// `viewcounter import` and `export` as processes.

/// Writes `text` to a new file in `dir`.
fn write_file(dir: &Path, text: &str) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let path = dir.join(format!(
        "import-{}.txt",
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&path, text).expect("write the import file");
    path
}

/// `viewcounter import --db DB ARGS… FILE`, the file holding `text`.
async fn import(dir: &Path, db: &Path, text: &str, args: &[&str]) -> RunOutput {
    let file = write_file(dir, text).display().to_string();
    let db = db.display().to_string();
    let mut argv = vec!["import", "--db", db.as_str()];
    argv.extend_from_slice(args);
    argv.push(file.as_str());
    run(dir, &argv).quiet().await
}

/// The summary line of an import written to the file `db`.
fn into_file(db: &Path, line: &str) -> String {
    format!("import into the file {}: {line}\n", db.display())
}

/// The summary line of an import sent to the server at `url` (`--url`).
fn into_server(url: &str, line: &str) -> String {
    format!("import into the server at {url}: {line}\n")
}

/// Like [`import`], asserting success: what it printed.
async fn import_ok(dir: &Path, db: &Path, text: &str, args: &[&str]) -> String {
    let out = import(dir, db, text, args).await;
    assert!(out.status.success(), "import failed: {}", out.stderr);
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    out.stdout
}

/// `viewcounter export --db DB ARGS…`, asserting success: what it printed.
async fn export_ok(dir: &Path, db: &Path, args: &[&str]) -> String {
    let db = db.display().to_string();
    let mut argv = vec!["--db", db.as_str()];
    argv.extend_from_slice(args);
    let out = export(dir, &argv, &[]).await;
    assert!(out.status.success(), "export failed: {}", out.stderr);
    out.stdout
}

/// A GoatCounter export row with the fields we read; the rest as GoatCounter fills them.
fn goat(path: &str, event: bool, bot: u32, date: &str) -> String {
    format!(r#"{path},A title,{event},,Firefox 120,Linux,7,{bot},,,"1920,1080,1",DE,true,{date}"#)
}

#[actix_web::test]
async fn importing_a_totals_csv_into_a_file_gives_each_post_its_total() {
    let dir = app_dir(DEFAULT_SLUGS);
    let db = dir.path().join(DB_FILE);

    let out = import_ok(dir.path(), &db, "slug,total\nalpha,10\nbeta,3\n", &[]).await;

    assert_eq!(
        out,
        into_file(
            &db,
            "2 posts changed (+13 views), 0 unchanged, 0 rows skipped, 0 views added to days"
        )
    );
    assert_eq!(
        export_ok(dir.path(), &db, &[]).await,
        totals_csv(&[("alpha", 10), ("beta", 3)])
    );
    assert_eq!(
        export_ok(dir.path(), &db, &["--daily"]).await,
        daily_csv(&[])
    );
    // A server starts on the file with those totals.
    let app = spawn_app_configured_in(dir, |_| {}).await;
    assert_eq!(app.counts("alpha").await, counts(0, 10));
    assert_eq!(app.join("alpha").await.first, counts(1, 11));
}

#[actix_web::test]
async fn set_never_lowers_a_total_and_add_adds_to_it() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join(DB_FILE);
    import_ok(dir.path(), &db, "slug,total\nalpha,10\nbeta,3\n", &[]).await;

    let set = import_ok(
        dir.path(),
        &db,
        "slug,total\nalpha,7\nbeta,5\ngamma,1\n",
        &["--mode", "set"],
    )
    .await;
    assert_eq!(
        set,
        into_file(
            &db,
            "2 posts changed (+3 views), 1 unchanged, 0 rows skipped, 0 views added to days"
        )
    );
    assert_eq!(
        export_ok(dir.path(), &db, &[]).await,
        totals_csv(&[("alpha", 10), ("beta", 5), ("gamma", 1)])
    );

    let add = import_ok(
        dir.path(),
        &db,
        "slug,total\nalpha,2\nbeta,0\n",
        &["--mode", "add"],
    )
    .await;
    assert_eq!(
        add,
        into_file(
            &db,
            "1 posts changed (+2 views), 1 unchanged, 0 rows skipped, 0 views added to days"
        )
    );
    assert_eq!(
        export_ok(dir.path(), &db, &[]).await,
        totals_csv(&[("alpha", 12), ("beta", 5), ("gamma", 1)])
    );
}

#[actix_web::test]
async fn set_never_lowers_a_day_either() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join(DB_FILE);
    import_ok(
        dir.path(),
        &db,
        &daily_csv(&[("alpha", "2026-11-30", 4)]),
        &[],
    )
    .await;

    let out = import_ok(
        dir.path(),
        &db,
        &daily_csv(&[("alpha", "2026-11-30", 1), ("alpha", "2026-12-01", 2)]),
        &["--mode", "set"],
    )
    .await;

    // The file's total (3) is below the 4 counted: the total stays, the new day is added.
    assert_eq!(
        out,
        into_file(
            &db,
            "0 posts changed (+0 views), 1 unchanged, 0 rows skipped, 2 views added to days"
        )
    );
    assert_eq!(
        export_ok(dir.path(), &db, &["--daily"]).await,
        daily_csv(&[("alpha", "2026-11-30", 4), ("alpha", "2026-12-01", 2)])
    );
}

#[actix_web::test]
async fn importing_the_json_of_export_from_standard_input() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join(DB_FILE);
    let db_arg = db.display().to_string();
    let json = r#"[{"slug":"alpha","total":3},{"slug":"2024/05/my_post.html","total":9}]"#;

    let out = run(dir.path(), &["import", "--db", &db_arg, "-"])
        .stdin(json)
        .quiet()
        .await;

    assert!(out.status.success(), "{}", out.stderr);
    assert_eq!(
        out.stdout,
        into_file(
            &db,
            "2 posts changed (+12 views), 0 unchanged, 0 rows skipped, 0 views added to days"
        )
    );
    assert_eq!(
        export_ok(dir.path(), &db, &[]).await,
        totals_csv(&[("2024/05/my_post.html", 9), ("alpha", 3)])
    );
}

#[actix_web::test]
async fn importing_a_daily_csv_fills_the_days_and_the_totals() {
    let dir = app_dir(DEFAULT_SLUGS);
    let db = dir.path().join(DB_FILE);
    let file = daily_csv(&[
        ("alpha", "2026-11-30", 2),
        ("alpha", "2026-12-01", 3),
        ("beta", "2026-12-01", 1),
    ]);

    let out = import_ok(dir.path(), &db, &file, &[]).await;

    assert_eq!(
        out,
        into_file(
            &db,
            "2 posts changed (+6 views), 0 unchanged, 0 rows skipped, 6 views added to days"
        )
    );
    assert_eq!(export_ok(dir.path(), &db, &["--daily"]).await, file);
    assert_eq!(
        export_ok(dir.path(), &db, &[]).await,
        totals_csv(&[("alpha", 5), ("beta", 1)])
    );
    // A server on the file shows them as history.
    let app = spawn_app_configured_in(dir, |c| c.clock = clock_at("2026-12-01T08:00:00Z")).await;
    assert_eq!(
        history(app.addr, "alpha", 2).await,
        rows(&[("2026-11-30", 2), ("2026-12-01", 3)])
    );
}

#[actix_web::test]
async fn importing_goatcounter_skips_bots_events_and_paths_outside_the_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join(DB_FILE);
    let rows = [
        goat("/blog/alpha", false, 0, "2026-11-30T10:00:00Z"),
        // 00:30 in Berlin: the next day there.
        goat("/blog/alpha/", false, 0, "2026-11-30T23:30:00Z"),
        goat("/blog/beta?utm_source=x", false, 0, "2026-12-01T08:00:00Z"),
        goat("/blog/alpha", false, 3, "2026-12-01T09:00:00Z"),
        goat("clicked-subscribe", true, 0, "2026-12-01T09:00:01Z"),
        goat("/about", false, 0, "2026-12-01T09:00:02Z"),
        goat("/blog/", false, 0, "2026-12-01T09:00:03Z"),
    ];
    let file = format!("{GOAT_HEADER}\n{}\n", rows.join("\n"));

    let out = import_ok(
        dir.path(),
        &db,
        &file,
        &["--path-prefix", "/blog/", "--timezone", "Europe/Berlin"],
    )
    .await;

    assert_eq!(
        out,
        into_file(
            &db,
            "2 posts changed (+3 views), 0 unchanged, 4 rows skipped, 3 views added to days"
        )
    );
    assert_eq!(
        export_ok(dir.path(), &db, &["--daily"]).await,
        daily_csv(&[
            ("alpha", "2026-11-30", 1),
            ("alpha", "2026-12-01", 1),
            ("beta", "2026-12-01", 1),
        ])
    );
    assert_eq!(
        export_ok(dir.path(), &db, &[]).await,
        totals_csv(&[("alpha", 2), ("beta", 1)])
    );
}

#[actix_web::test]
async fn a_dry_run_prints_each_change_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join(DB_FILE);
    import_ok(dir.path(), &db, "slug,total\nalpha,10\n", &[]).await;

    let out = import_ok(
        dir.path(),
        &db,
        "slug,total\nalpha,12\nbeta,3\ngamma,0\n",
        &["--dry-run"],
    )
    .await;

    assert_eq!(
        out,
        format!(
            "alpha: 10 -> 12\nbeta: 0 -> 3\n\
             import into the file {} (dry run, nothing written): 2 posts would change \
             (+5 views), 1 unchanged, 0 rows skipped, 0 views added to days\n",
            db.display()
        )
    );
    assert_eq!(
        export_ok(dir.path(), &db, &[]).await,
        totals_csv(&[("alpha", 10)])
    );
    let days = daily_csv(&[("alpha", "2026-12-01", 4)]);
    import_ok(dir.path(), &db, &days, &["--dry-run", "--mode", "add"]).await;
    assert_eq!(
        export_ok(dir.path(), &db, &["--daily"]).await,
        daily_csv(&[])
    );
    assert_eq!(
        export_ok(dir.path(), &db, &[]).await,
        totals_csv(&[("alpha", 10)])
    );
}

#[actix_web::test]
async fn a_file_with_malformed_rows_fails_naming_each_line_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join(DB_FILE);
    import_ok(dir.path(), &db, "slug,total\nalpha,10\n", &[]).await;

    let out = import(
        dir.path(),
        &db,
        "slug,total\nbeta,5\nbad slug,2\ngamma,x\nalpha,20\n",
        &[],
    )
    .await;

    assert_clean_failure(&out);
    assert!(out.stdout.is_empty(), "{}", out.stdout);
    for line in ["line 3", "line 4"] {
        assert!(out.stderr.contains(line), "names {line}: {}", out.stderr);
    }
    assert!(!out.stderr.contains("line 2"), "{}", out.stderr);
    assert!(!out.stderr.contains("line 5"), "{}", out.stderr);
    // Not even the good rows.
    assert_eq!(
        export_ok(dir.path(), &db, &[]).await,
        totals_csv(&[("alpha", 10)])
    );

    // A format given that the file is not: refused the same way.
    let out = import(
        dir.path(),
        &db,
        "slug,total\nbeta,5\n",
        &["--format", "json"],
    )
    .await;
    assert_clean_failure(&out);
    assert_eq!(
        export_ok(dir.path(), &db, &[]).await,
        totals_csv(&[("alpha", 10)])
    );
    // And a refused file creates no database where there was none.
    let missing = dir.path().join("missing").join(DB_FILE);
    let out = import(dir.path(), &missing, "slug,total\nbad slug,1\n", &[]).await;
    assert_clean_failure(&out);
    assert!(!missing.exists(), "created {}", missing.display());
}

#[actix_web::test]
async fn a_dry_run_on_a_missing_file_creates_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("typo").join(DB_FILE);

    let out = import_ok(
        dir.path(),
        &missing,
        "slug,total\nalpha,3\n",
        &["--dry-run"],
    )
    .await;

    assert!(
        out.ends_with(
            "1 posts would change (+3 views), 0 unchanged, 0 rows skipped, 0 views added to days\n"
        ),
        "{out}"
    );
    assert!(
        !dir.path().join("typo").exists(),
        "a dry run created {}",
        missing.display()
    );
}

#[actix_web::test]
async fn an_import_on_the_file_keeps_the_reader_ids_a_restart_deduplicates_with() {
    // The tab was counted a minute ago, well within the 30 min dedupe window.
    let clock = Clock::default();
    clock.set_unix(clock.now_unix() - 60);
    let app = spawn_app_configured_in(app_dir(DEFAULT_SLUGS), |c| c.clock = clock).await;
    let tab = app.join("alpha").await;
    let dir = app.stop_and_keep_dir().await;
    drop(tab.stream);
    let db = dir.path().join(DB_FILE);
    let reconnect = || Req::connect("alpha", &tab.id).header("Last-Event-ID", tab.id.clone());
    // Premise: across a plain restart, the reconnect is not counted.
    let app = spawn_app_configured_in(dir, |_| {}).await;
    assert_eq!(app.join_as("alpha", reconnect()).await.first, counts(1, 1));
    let dir = app.stop_and_keep_dir().await;

    import_ok(dir.path(), &db, "slug,total\nbeta,5\n", &[]).await;

    let app = spawn_app_configured_in(dir, |_| {}).await;
    assert_eq!(app.counts("beta").await, counts(0, 5));
    assert_eq!(
        app.join_as("alpha", reconnect()).await.first,
        counts(1, 1),
        "the tab's reconnect was counted again"
    );
}

#[actix_web::test]
async fn what_export_prints_imports_into_a_fresh_file_as_the_same_totals_and_days() {
    // A post imported without days (gamma), and views on several posts and days.
    let dir = app_dir(DEFAULT_SLUGS);
    let db = dir.path().join(DB_FILE);
    import_ok(dir.path(), &db, "slug,total\ngamma,100\n", &[]).await;
    let clock = clock_at("2026-11-30T12:00:00Z");
    let app = spawn_app_configured_in(dir, |c| c.clock = clock.clone()).await;
    for slug in ["alpha", "beta", "alpha"] {
        view(app.addr, slug).await;
    }
    clock.set_unix(unix("2026-12-01T12:00:00Z"));
    for slug in ["alpha", "2024/05/my_post.html"] {
        view(app.addr, slug).await;
    }
    let dir = app.stop_and_keep_dir().await;
    let here = dir.path();

    let totals = export_ok(here, &db, &[]).await;
    let days = export_ok(here, &db, &["--daily"]).await;
    let totals_json = export_ok(here, &db, &["--format", "json"]).await;
    let days_json = export_ok(here, &db, &["--daily", "--format", "json"]).await;
    assert_eq!(
        totals,
        totals_csv(&[
            ("2024/05/my_post.html", 1),
            ("alpha", 3),
            ("beta", 1),
            ("gamma", 100),
        ])
    );
    assert_eq!(
        without_readers(&days),
        daily_csv(&[
            ("2024/05/my_post.html", "2026-12-01", 1),
            ("alpha", "2026-11-30", 2),
            ("alpha", "2026-12-01", 1),
            ("beta", "2026-11-30", 1),
        ])
    );

    // CSV, days first; JSON, totals first.
    let csv_db = here.join("from-csv.redb");
    import_ok(here, &csv_db, &days, &[]).await;
    import_ok(here, &csv_db, &totals, &[]).await;
    let json_db = here.join("from-json.redb");
    import_ok(here, &json_db, &totals_json, &[]).await;
    import_ok(here, &json_db, &days_json, &[]).await;

    for copy in [&csv_db, &json_db] {
        assert_eq!(export_ok(here, copy, &[]).await, totals, "{copy:?}");
        assert_eq!(export_ok(here, copy, &["--daily"]).await, days, "{copy:?}");
        assert_eq!(
            export_ok(here, copy, &["--daily", "--format", "json"]).await,
            days_json,
            "{copy:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Import through a running server.

#[actix_web::test]
async fn import_through_a_running_server_moves_its_totals_and_an_open_readers_numbers() {
    let mut server = BinServer::start(NEVER).await;
    let mut reader = server.join("alpha").await;
    assert_eq!(reader.first, counts(1, 1));
    let url = format!("http://{}", server.addr);
    let db = server.db();

    let out = import_ok(
        server.dir.path(),
        &db,
        "slug,total\nalpha,50\nbeta,7\n",
        &["--url", &url],
    )
    .await;

    assert_eq!(
        out,
        into_server(
            &url,
            "2 posts changed (+56 views), 0 unchanged, 0 rows skipped, 0 views added to days"
        )
    );
    reader.stream.await_counts(counts(1, 50), PROPAGATION).await;
    assert_eq!(server.counts("alpha").await, counts(1, 50));
    assert_eq!(server.counts("beta").await, counts(0, 7));
    // Counting goes on from there.
    assert_eq!(server.join("beta").await.first, counts(1, 8));
    // A dry run through the server changes nothing.
    let dry = import_ok(
        server.dir.path(),
        &db,
        "slug,total\nalpha,60\n",
        &["--url", &url, "--dry-run"],
    )
    .await;
    assert!(dry.starts_with("alpha: 50 -> 60\n"), "{dry}");
    assert_eq!(server.counts("alpha").await, counts(1, 50));

    // And the server writes it all on its way out.
    drop(reader);
    server.signal("TERM");
    assert!(
        server.wait(STOP_TIMEOUT).await.success(),
        "{}",
        server.log()
    );
    assert_eq!(
        export_ok(server.dir.path(), &db, &[]).await,
        totals_csv(&[("alpha", 50), ("beta", 8)])
    );
}

#[actix_web::test]
async fn import_of_a_file_held_by_a_server_that_does_not_answer_fails_and_writes_nothing() {
    let app = spawn_app_configured(never_flush).await;
    let _reading = app.join("alpha").await;
    // No --url: the server holding the file is looked for at the --listen address.
    let listen = format!("127.0.0.1:{}", closed_port());
    let url = format!("http://{listen}");

    let out = import(
        app.dir.path(),
        &app.db(),
        "slug,total\nalpha,50\n",
        &["--listen", &listen],
    )
    .await;

    assert_clean_failure(&out);
    assert!(
        out.stderr.contains("running server") && out.stderr.contains(&url),
        "says the file is held and the server did not answer: {}",
        out.stderr
    );
    assert_eq!(app.counts("alpha").await, counts(1, 1));
}

#[actix_web::test]
async fn goatcounter_through_the_server_keeps_its_prefix_and_format() {
    let server = BinServer::start(&[NEVER, BERLIN].concat()).await;
    let url = format!("http://{}", server.addr);
    let rows = [
        goat("/blog/alpha", false, 0, "2026-11-30T23:30:00Z"),
        goat("/blog/alpha", false, 1, "2026-11-30T23:31:00Z"),
        goat("/alpha", false, 0, "2026-11-30T23:32:00Z"),
    ];
    let file = format!("{GOAT_HEADER}\n{}\n", rows.join("\n"));

    let out = import_ok(
        server.dir.path(),
        &server.db(),
        &file,
        &[
            "--url",
            &url,
            "--format",
            "goatcounter",
            "--path-prefix",
            "/blog",
            "--timezone",
            "Europe/Berlin",
        ],
    )
    .await;

    assert_eq!(
        out,
        into_server(
            &url,
            "1 posts changed (+1 views), 0 unchanged, 2 rows skipped, 1 views added to days"
        )
    );
    let want = Daily {
        slug: "alpha".into(),
        day: "2026-12-01".into(),
        views: 1,
        read_buckets: vec![0; 16],
        read_ms: 0,
        peak: 0,
        peak_at: None,
    };
    assert_eq!(daily(server.addr).await, [want]);
}

#[actix_web::test]
async fn import_through_a_server_with_a_token_needs_that_token() {
    let server = BinServer::start(&[NEVER, &["--admin-token", ADMIN]].concat()).await;
    let url = format!("http://{}", server.addr);
    let db = server.db();
    let file = "slug,total\nalpha,5\n";

    let without = import(server.dir.path(), &db, file, &["--url", &url]).await;
    assert_clean_failure(&without);
    assert!(without.stderr.contains("401"), "{}", without.stderr);
    assert_eq!(server.counts("alpha").await, counts(0, 0));

    let with = import_ok(
        server.dir.path(),
        &db,
        file,
        &["--url", &url, "--admin-token", ADMIN],
    )
    .await;
    assert!(
        with.starts_with(&format!(
            "import into the server at {url}: 1 posts changed (+5 views)"
        )),
        "{with}"
    );
    assert_eq!(server.counts("alpha").await, counts(0, 5));
}

#[actix_web::test]
async fn the_import_endpoint_reports_what_changed_and_refuses_a_bad_file_listing_each_line() {
    let app = spawn_app_configured(never_flush).await;
    let _reading = app.join("alpha").await;

    let dry = import_over_http(app.addr, "mode=add&dry_run=1", "slug,total\nalpha,5\n").await;
    assert_eq!(
        dry,
        serde_json::json!({
            "changed": [["alpha", 1, 6]], "unchanged": 0, "day_views": 0, "day_presence": 0,
            "site_peaks": 0, "written": false, "skipped": 0
        })
    );
    assert_eq!(app.counts("alpha").await, counts(1, 1));

    let report = import_over_http(
        app.addr,
        "mode=add",
        "slug,day,views\nalpha,2026-12-01,5\nbeta,2026-12-01,0\n",
    )
    .await;
    assert_eq!(
        report,
        serde_json::json!({
            "changed": [["alpha", 1, 6]], "unchanged": 1, "day_views": 5, "day_presence": 0,
            "site_peaks": 0, "written": true, "skipped": 0
        })
    );
    assert_eq!(app.counts("alpha").await, counts(1, 6));

    let bad = Req::import(
        "/api/v1/import",
        "slug,total\nbeta,1\nbad slug,2\ngamma,-3\n",
    );
    let message = app.send(bad).await.assert_json_error(400);
    assert!(
        message.contains("line 3") && message.contains("line 4"),
        "{message}"
    );
    assert_eq!(app.counts("beta").await, counts(0, 0));
    app.send(Req::import("/api/v1/import?mode=replace", "slug,total\n"))
        .await
        .assert_json_error(400);
    app.send(Req::import("/api/v1/import", "slug,total\nbeta,1\n").client_ip("203.0.113.4"))
        .await
        .assert_json_error(401);
    assert_eq!(app.counts("beta").await, counts(0, 0));
}

// ---------------------------------------------------------------------------------------------
// export --daily.

#[actix_web::test]
async fn export_daily_gives_the_same_rows_from_the_running_server_and_from_the_file() {
    let clock = clock_at("2026-11-30T12:00:00Z");
    let app = spawn_app_configured_in(app_dir(DEFAULT_SLUGS), |c| {
        never_flush(c);
        c.clock = clock.clone();
    })
    .await;
    for slug in ["beta", "alpha", "alpha"] {
        view(app.addr, slug).await;
    }
    clock.set_unix(unix("2026-12-01T12:00:00Z"));
    view(app.addr, "alpha").await;
    let db = app.db();
    let url = format!("http://{}", app.addr);
    let want = daily_csv(&[
        ("alpha", "2026-11-30", 2),
        ("alpha", "2026-12-01", 1),
        ("beta", "2026-11-30", 1),
    ]);

    // Nothing is written yet: the server answers, unwritten views included.
    let served = export_ok(app.dir.path(), &db, &["--daily", "--url", &url]).await;
    let served_json = export_ok(
        app.dir.path(),
        &db,
        &["--daily", "--url", &url, "--format", "json"],
    )
    .await;
    assert_eq!(without_readers(&served), want);
    let rows = post_rows(&served_json);
    assert_eq!(day_views(&rows), day_views(&daily(app.addr).await));
    assert_eq!(rows.len(), 3);
    app.send(Req::get("/api/v1/daily").client_ip("203.0.113.3"))
        .await
        .assert_json_error(401);

    let dir = app.stop_and_keep_dir().await;
    assert_eq!(
        without_readers(&export_ok(dir.path(), &db, &["--daily"]).await),
        want
    );
    // Views only: a stream's reading may land after the server answered.
    let on_file = export_ok(dir.path(), &db, &["--daily", "--format", "json"]).await;
    let on_file = post_rows(&on_file);
    assert_eq!(day_views(&on_file), day_views(&rows));
}

// ---------------------------------------------------------------------------------------------
// Imports larger than one request.

/// One request's largest body (`MAX_IMPORT_BYTES`): the files below are larger.
const ONE_REQUEST: usize = 10 * 1024 * 1024;

/// A GoatCounter export of `rows` pageviews of about 1 KB each (their paths carry a long
/// query, which counts for nothing) spread over 20 posts and up to 84 days, one in ten a bot's;
/// then `last` as its last line. With the views each post gets, and how many post-days.
fn big_goatcounter(rows: usize, last: &str) -> (String, BTreeMap<String, u64>, usize) {
    let mut text = format!("{GOAT_HEADER}\n");
    let mut totals = BTreeMap::new();
    let mut days = std::collections::BTreeSet::new();
    let query = "x".repeat(900);
    for i in 0..rows {
        let post = format!("post-{}", i % 20);
        let bot = u32::from(i / 20 % 10 == 9);
        let date = format!("2021-0{}-{:02}T12:00:00Z", 1 + i % 3, 1 + i % 28);
        text.push_str(&goat(&format!("/{post}?ref={query}"), false, bot, &date));
        text.push('\n');
        if bot == 0 {
            days.insert((post.clone(), date[..10].to_owned()));
            *totals.entry(post).or_default() += 1;
        }
    }
    text.push_str(last);
    (text, totals, days.len())
}

/// Posts `post-0` … `post-19`, as [`big_goatcounter`] names them.
fn twenty_posts() -> Vec<String> {
    (0..20).map(|i| format!("post-{i}")).collect()
}

/// `slug,total` of `totals`, in slug order (as export prints it).
fn totals_of(totals: &BTreeMap<String, u64>) -> String {
    let rows: Vec<(&str, u64)> = totals.iter().map(|(s, &n)| (s.as_str(), n)).collect();
    totals_csv(&rows)
}

#[actix_web::test]
async fn a_goatcounter_file_larger_than_one_request_imports_offline_with_no_progress_off_a_terminal()
 {
    let dir = app_dir(DEFAULT_SLUGS);
    let db = dir.path().join(DB_FILE);
    let (file, totals, _) = big_goatcounter(12_000, "");
    assert!(
        file.len() > ONE_REQUEST + ONE_REQUEST / 10,
        "{}",
        file.len()
    );

    let out = import(dir.path(), &db, &file, &[]).await;

    assert!(out.status.success(), "{}", out.stderr);
    // Standard error is a pipe here: no progress line, nothing at all.
    assert_eq!(out.stderr, "", "quiet when not a terminal");
    assert_eq!(
        out.stdout,
        into_file(
            &db,
            "20 posts changed (+10800 views), 0 unchanged, 1200 rows skipped, 10800 views added to days"
        )
    );
    assert_eq!(export_ok(dir.path(), &db, &[]).await, totals_of(&totals));
}

#[actix_web::test]
async fn a_goatcounter_file_larger_than_one_request_imports_through_a_running_server() {
    let posts = twenty_posts();
    let listed: Vec<&str> = posts.iter().map(String::as_str).collect();
    let app = spawn_app_configured_with_slugs(&listed, never_flush).await;
    let url = format!("http://{}", app.addr);
    let (file, totals, days) = big_goatcounter(12_000, "");
    assert!(
        file.len() > ONE_REQUEST + ONE_REQUEST / 10,
        "{}",
        file.len()
    );

    let out = import_ok(app.dir.path(), &app.db(), &file, &["--url", &url]).await;

    assert_eq!(
        out,
        into_server(
            &url,
            "20 posts changed (+10800 views), 0 unchanged, 1200 rows skipped, 10800 views added to days"
        )
    );
    for post in &posts {
        assert_eq!(app.counts(post).await, counts(0, totals[post]), "{post}");
    }
    assert_eq!(daily(app.addr).await.len(), days);
}

#[actix_web::test]
async fn a_bad_row_at_the_end_of_a_big_file_is_named_and_nothing_is_applied_offline_or_through_a_server()
 {
    let last = goat("/post-1", false, 0, "yesterday");
    let (file, _, _) = big_goatcounter(12_000, &last);
    assert!(
        file.len() > ONE_REQUEST + ONE_REQUEST / 10,
        "{}",
        file.len()
    );
    let bad = "line 12002: Date \"yesterday\" is not a time";

    // Offline: the file keeps what it had.
    let dir = app_dir(DEFAULT_SLUGS);
    let db = dir.path().join(DB_FILE);
    import_ok(dir.path(), &db, "slug,total\nalpha,5\n", &[]).await;
    let out = import(dir.path(), &db, &file, &[]).await;
    assert_clean_failure(&out);
    assert!(out.stderr.contains(bad), "{}", out.stderr);
    assert_eq!(
        export_ok(dir.path(), &db, &[]).await,
        totals_csv(&[("alpha", 5)])
    );

    // Through a server: its numbers stay.
    let posts = twenty_posts();
    let listed: Vec<&str> = posts.iter().map(String::as_str).collect();
    let app = spawn_app_configured_with_slugs(&listed, never_flush).await;
    let url = format!("http://{}", app.addr);
    let out = import(app.dir.path(), &app.db(), &file, &["--url", &url]).await;
    assert_clean_failure(&out);
    assert!(out.stderr.contains(bad), "{}", out.stderr);
    assert_eq!(app.counts("post-1").await, counts(0, 0));
    assert!(daily(app.addr).await.is_empty());
    // And the session it opened is gone: another import goes ahead at once.
    let res = app.send(Req::import("/api/v1/import/sessions", "")).await;
    assert_eq!(res.status, 201, "{res:?}");
}

/// Opens an import session on `app` (asserting 201): its id.
async fn open_session(app: &TestApp, query: &str) -> String {
    let res = app
        .send(Req::import(format!("/api/v1/import/sessions?{query}"), ""))
        .await;
    assert_eq!(res.status, 201, "{res:?}");
    let answer = res.json();
    assert_eq!(answer["piece_bytes"], ONE_REQUEST, "{answer}");
    answer["id"].as_str().expect("an id").to_owned()
}

async fn send_piece(app: &TestApp, id: &str, piece: &str) -> Response {
    app.send(Req::import(format!("/api/v1/import/sessions/{id}"), piece))
        .await
}

async fn commit(app: &TestApp, id: &str) -> Response {
    app.send(Req::import(
        format!("/api/v1/import/sessions/{id}/commit"),
        "",
    ))
    .await
}

#[actix_web::test]
async fn a_piece_refused_mid_way_ends_its_session_and_nothing_of_it_is_applied() {
    let app = spawn_app_configured(never_flush).await;

    // A bad row in the second piece.
    let id = open_session(&app, "mode=add").await;
    let res = send_piece(&app, &id, "slug,day,views\nalpha,2026-12-01,3\n").await;
    assert_eq!(res.status, 200, "{res:?}");
    let res = send_piece(
        &app,
        &id,
        "slug,day,views\nbeta,2026-12-01,3\nbeta,today,1\n",
    )
    .await;
    let message = res.assert_json_error(400);
    assert!(message.contains("line 3: day \"today\""), "{message}");
    assert!(
        message.contains("nothing of this import was applied"),
        "{message}"
    );
    let message = commit(&app, &id).await.assert_json_error(404);
    assert!(message.contains("no such import session"), "{message}");

    // A row an earlier piece already gave: refused as a contradiction, not added up.
    let id = open_session(&app, "mode=add").await;
    assert_eq!(
        send_piece(&app, &id, "slug,day,views\nalpha,2026-12-01,3\n")
            .await
            .status,
        200
    );
    let res = send_piece(&app, &id, "slug,day,views\nalpha,2026-12-01,4\n").await;
    let message = res.assert_json_error(400);
    assert!(message.contains("piece 2 refused"), "{message}");
    assert!(message.contains("earlier piece"), "{message}");
    commit(&app, &id).await.assert_json_error(404);

    assert_eq!(app.counts("alpha").await, counts(0, 0));
    assert_eq!(app.counts("beta").await, counts(0, 0));
    assert!(daily(app.addr).await.is_empty());

    // Good pieces are applied at the commit, all together.
    let id = open_session(&app, "mode=add").await;
    for piece in [
        "alpha,2026-12-01,3\n",
        "alpha,2026-12-02,4\nbeta,2026-12-02,1\n",
    ] {
        let res = send_piece(&app, &id, &format!("slug,day,views\n{piece}")).await;
        assert_eq!(res.status, 200, "{res:?}");
    }
    assert_eq!(
        app.counts("alpha").await,
        counts(0, 0),
        "nothing before the commit"
    );
    let res = commit(&app, &id).await;
    assert_eq!(res.status, 200, "{res:?}");
    assert_eq!(res.json()["day_views"], 8, "{res:?}");
    assert_eq!(app.counts("alpha").await, counts(0, 7));
    assert_eq!(app.counts("beta").await, counts(0, 1));
}

#[actix_web::test]
async fn an_abandoned_import_session_blocks_another_until_it_goes_idle_and_is_never_applied() {
    let app = spawn_app_configured(|c| {
        never_flush(c);
        c.import_idle = Duration::from_millis(300);
    })
    .await;
    let id = open_session(&app, "mode=set").await;
    let res = send_piece(&app, &id, "slug,total\nalpha,50\n").await;
    assert_eq!(res.status, 200, "{res:?}");

    // One session at a time: the next is told to wait, and how long.
    let res = app.send(Req::import("/api/v1/import/sessions", "")).await;
    res.assert_json_error(409);
    assert!(res.header("retry-after").is_some(), "{res:?}");

    // The abandoned one is dropped once idle, and the next opens.
    await_value(
        "a new session opens",
        201,
        Duration::from_secs(10),
        || async {
            app.send(Req::import("/api/v1/import/sessions", ""))
                .await
                .status
        },
    )
    .await;
    commit(&app, &id).await.assert_json_error(404);
    assert_eq!(app.counts("alpha").await, counts(0, 0));
}

#[actix_web::test]
async fn the_import_session_endpoints_keep_the_import_rules() {
    let app = spawn_app_configured(|c| {
        never_flush(c);
        c.admin_token = Some(ADMIN.into());
    })
    .await;
    let targets = [
        "/api/v1/import/sessions",
        "/api/v1/import/sessions/any",
        "/api/v1/import/sessions/any/commit",
    ];
    for target in targets {
        let no_header = bearer(Req::post(target, ""));
        let message = app.send(no_header).await.assert_json_error(403);
        assert!(
            message.contains("X-Viewcounter-Import"),
            "{target}: {message}"
        );
        let cross_site = bearer(Req::import(target, "")).header("Sec-Fetch-Site", "cross-site");
        app.send(cross_site).await.assert_json_error(403);
        app.send(Req::import(target, ""))
            .await
            .assert_json_error(401);
    }
}
