//! What presence tells the owner (`design.md`, "What presence tells the owner"): reading times
//! from the leave beacon or the open time the server saw, and the day's peaks per post and for
//! the site, in `/history` and `/top?by=read`, kept across a restart.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde::Deserialize;

use testkit::*;

/// How long a reading or a peak may take to show in `/history` (it goes through the post's
/// mailbox and the writer's inbox).
const SHOWN: Duration = Duration::from_secs(5);

#[derive(Debug, Deserialize, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
struct Day {
    day: String,
    views: u64,
    reads: u64,
    read_median_s: Option<f64>,
    peak: u64,
    peak_at: Option<String>,
    #[serde(default)]
    read_buckets: Option<Vec<u32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PostHistory {
    slug: String,
    read_bucket_starts_s: Vec<u32>,
    read_cap_s: u64,
    days: Vec<Day>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SiteHistory {
    days: Vec<Day>,
}

/// Today in `/api/v1/history/{slug}?days=1`.
async fn post_today(addr: SocketAddr, slug: &str) -> Day {
    let res = send(addr, Req::get(format!("/api/v1/history/{slug}?days=1"))).await;
    assert_eq!(res.status, 200, "{res:?}");
    let history: PostHistory = res.json_as();
    assert_eq!(history.slug, slug);
    history.days[0].clone()
}

/// Today in `/api/v1/history?days=1`.
async fn site_today(addr: SocketAddr) -> Day {
    let res = send(addr, Req::get("/api/v1/history?days=1")).await;
    assert_eq!(res.status, 200, "{res:?}");
    let history: SiteHistory = res.json_as();
    history.days[0].clone()
}

/// Waits until today's `reads` of `slug` is `n`; its day then.
async fn await_reads(addr: SocketAddr, slug: &str, n: u64) -> Day {
    await_value(&format!("reads of {slug}"), n, SHOWN, || async {
        post_today(addr, slug).await.reads
    })
    .await;
    post_today(addr, slug).await
}

/// `POST /api/v1/leave/{slug}` with `body`, asserting 204.
async fn leave_with(addr: SocketAddr, slug: &str, body: &str) {
    let res = send(addr, Req::post(format!("/api/v1/leave/{slug}"), body)).await;
    assert_eq!(res.status, 204, "{res:?}");
}

#[actix_web::test]
async fn a_leave_is_believed_up_to_the_time_the_server_saw_the_page_open() {
    let app = spawn_app().await;
    let opened = Instant::now();
    let reader = app.join("alpha").await;
    // The page says it was visible for an hour; the server saw it open for a moment.
    leave_with(app.addr, "alpha", &format!("{} 0 3600000", reader.id)).await;
    let seen_open = opened.elapsed().as_secs_f64();
    let day = await_reads(app.addr, "alpha", 1).await;
    let median = day.read_median_s.expect("a median with one read");
    assert!(
        median <= seen_open + 0.05,
        "{median} s read, open {seen_open} s"
    );
    assert_eq!(
        day.read_buckets.as_ref().map(|b| b.iter().sum::<u32>()),
        Some(1)
    );

    // Less than the open time is believed as said.
    let reader = app.join("beta").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    leave_with(app.addr, "beta", &format!("{} 0 100", reader.id)).await;
    let day = await_reads(app.addr, "beta", 1).await;
    assert_eq!(day.read_median_s, Some(0.1));
    drop(reader);
}

#[actix_web::test]
async fn a_stream_that_drops_without_a_leave_counts_the_time_it_was_open() {
    let app = spawn_app().await;
    let opened = Instant::now();
    let reader = app.join("alpha").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    reader.stream.close();
    app.await_counts("alpha", counts(0, 1), LIVE_DROP).await;
    let seen_open = opened.elapsed().as_secs_f64();
    let day = await_reads(app.addr, "alpha", 1).await;
    let median = day.read_median_s.expect("a median with one read");
    assert!(
        (0.3..=seen_open + 0.05).contains(&median),
        "{median} s read, open {seen_open} s"
    );
}

#[actix_web::test]
async fn an_older_leave_without_a_time_and_a_bot_read_nothing() {
    let app = spawn_app().await;
    let reader = app.join("alpha").await;
    leave_with(app.addr, "alpha", &reader.id).await;
    let bot = app
        .join_as(
            "alpha",
            Req::connect("alpha", &token()).header("User-Agent", BOT_UA),
        )
        .await;
    bot.stream.close();
    reader.stream.close();
    // A reading that does count, after them: once it shows, theirs would have.
    let timed = app.join("alpha").await;
    leave_with(app.addr, "alpha", &format!("{} 0 5", timed.id)).await;
    let day = await_reads(app.addr, "alpha", 1).await;
    assert_eq!(day.read_median_s, Some(0.0));
    assert_eq!(day.views, 2, "the bot's view is not counted either");
}

#[actix_web::test]
async fn a_day_has_each_posts_peak_and_the_sites_with_when_and_keeps_them_across_a_restart() {
    let clock = Clock::default();
    clock.set_unix(1_796_637_600); // 2026-12-07T10:00:00Z, 11:00 in Berlin
    let app = spawn_app_configured(|c| {
        c.clock = clock.clone();
        c.timezone = jiff::tz::TimeZone::get("Europe/Berlin").expect("a known time zone");
    })
    .await;
    let nobody = post_today(app.addr, "gamma").await;
    assert_eq!((nobody.peak, nobody.peak_at), (0, None));
    assert_eq!((nobody.reads, nobody.read_median_s), (0, None));

    let a1 = app.join("alpha").await;
    let a2 = app.join("alpha").await;
    let b1 = app.join("beta").await;
    app.await_counts("beta", counts(1, 1), PROPAGATION).await;
    drop((a1, a2, b1));
    app.await_counts("alpha", counts(0, 2), LIVE_DROP).await;
    app.await_counts("beta", counts(0, 1), LIVE_DROP).await;

    let peaks = || async {
        let (a, b, s) = (
            post_today(app.addr, "alpha").await,
            post_today(app.addr, "beta").await,
            site_today(app.addr).await,
        );
        (a.peak, b.peak, s.peak, s.reads)
    };
    // A post tells the writer its readings with its next broadcast, as it does its peak:
    // the dropped streams' readings (every post's) are awaited, not assumed with the peaks.
    await_value(
        "peaks of alpha, beta, the site; the site's readings",
        (2, 1, 3, 3),
        SHOWN,
        peaks,
    )
    .await;
    let site = site_today(app.addr).await;
    let at = site.peak_at.expect("a time with readers");
    assert!(
        at.starts_with("2026-12-07T11:00:") && at.ends_with("+01:00"),
        "{at}"
    );

    let dir = app.stop_and_keep_dir().await;
    let app = spawn_app_configured_in(dir, |c| {
        c.clock = clock.clone();
        c.timezone = jiff::tz::TimeZone::get("Europe/Berlin").expect("a known time zone");
    })
    .await;
    assert_eq!(post_today(app.addr, "alpha").await.peak, 2);
    assert_eq!(site_today(app.addr).await.peak_at, Some(at));
}

#[actix_web::test]
async fn top_by_read_ranks_posts_with_ten_reads_by_their_median() {
    let app = spawn_app().await;
    // alpha: ten short reads; beta: ten of about 300 ms; gamma: nine long ones, too few.
    for (slug, n, open) in [("alpha", 10, 0), ("beta", 10, 300), ("gamma", 9, 600)] {
        let mut readers = Vec::new();
        for _ in 0..n {
            readers.push(app.join(slug).await);
        }
        tokio::time::sleep(Duration::from_millis(open)).await;
        for reader in readers {
            leave_with(app.addr, slug, &format!("{} 0 3600000", reader.id)).await;
        }
        await_reads(app.addr, slug, n).await;
    }
    let res = app.send(Req::get("/api/v1/top?by=read")).await;
    assert_eq!(res.status, 200, "{res:?}");
    let rows = res.json();
    let slugs: Vec<&str> = rows
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| r["slug"].as_str().expect("a slug"))
        .collect();
    assert_eq!(slugs, ["beta", "alpha"]);
    assert!(rows[0]["read_median_s"].as_f64().expect("a median") >= 0.3);
    assert_eq!(rows[0]["reads"], 10);
}

#[actix_web::test]
async fn a_posts_history_names_the_reading_time_buckets_once() {
    let app = spawn_app().await;
    let res = app.send(Req::get("/api/v1/history/alpha?days=2")).await;
    let history: PostHistory = res.json_as();
    assert_eq!(history.read_bucket_starts_s.len(), 16);
    assert_eq!(history.read_bucket_starts_s[0], 0);
    assert_eq!(history.read_cap_s, 1800);
    for day in &history.days {
        assert_eq!(day.read_buckets.as_deref(), Some(&[0; 16][..]));
    }
    let site = app.send(Req::get("/api/v1/history?days=1")).await.json();
    assert!(site["days"][0].get("read_buckets").is_none(), "{site}");
}

fn is_snapshot(ev: &SseEvent) -> bool {
    ev.raw.lines().any(|l| l == "event: snapshot")
}

/// The dashboard's stream opened, with its first snapshot.
async fn admin_stream(app: &TestApp) -> (SseClient, SseEvent) {
    let mut board = app.open(Req::get("/api/v1/admin/stream")).await;
    assert_eq!(board.status, 200);
    loop {
        let ev = board.next_event().await;
        if is_snapshot(&ev) {
            return (board, ev);
        }
    }
}

#[actix_web::test]
async fn the_dashboard_rows_carry_todays_peak_and_median_reading_time() {
    let app = spawn_app().await;
    let reader = app.join("alpha").await;
    let second = app.join("alpha").await;
    leave_with(app.addr, "alpha", &format!("{} 0 5", reader.id)).await;
    await_reads(app.addr, "alpha", 1).await;
    // A new high is told to the writer with the post's next broadcast (within 250 ms).
    await_value("alpha's peak", 2, SHOWN, || async {
        post_today(app.addr, "alpha").await.peak
    })
    .await;

    let (_board, snapshot) = admin_stream(&app).await;
    let json: serde_json::Value =
        serde_json::from_str(snapshot.data.as_deref().expect("data")).expect("JSON");
    let row = |slug: &str| {
        let posts = json["posts"].as_array().expect("posts");
        let row = posts.iter().find(|p| p["slug"] == slug).expect("a row");
        (
            row["live"].as_u64(),
            row["peak"].as_u64(),
            row["read_median_s"].as_f64(),
        )
    };
    assert_eq!(row("alpha"), (Some(1), Some(2), Some(0.0)));
    assert_eq!(row("beta"), (Some(0), Some(0), None), "no reads: null");
    drop(second);
}

/// `slug`'s `read_median_s` in a row event of the admin stream, `None` for another post's row
/// (or a row without a median). Panics on a snapshot: the median must come without one.
fn median_in_row(ev: &SseEvent, slug: &str) -> Option<f64> {
    assert!(!is_snapshot(ev), "a new snapshot, not a row event: {ev:?}");
    let json: serde_json::Value = serde_json::from_str(ev.data.as_deref()?).ok()?;
    (json["slug"] == slug).then(|| json["read_median_s"].as_f64())?
}

#[actix_web::test]
async fn a_reading_moves_the_dashboard_rows_median_at_once_without_a_new_snapshot() {
    let app = spawn_app().await;
    let (mut board, snapshot) = admin_stream(&app).await;
    assert!(
        snapshot.data.as_deref().is_some_and(|d| d.contains(
            r#""slug":"alpha","live":0,"total":0,"today":0,"peak":0,"read_median_s":null"#
        )),
        "{snapshot:?}"
    );

    let reader = app.join("alpha").await;
    // The reading itself: the server believes at most the time it saw the page open.
    tokio::time::sleep(Duration::from_millis(300)).await;
    leave_with(app.addr, "alpha", &format!("{} 0 200", reader.id)).await;
    let deadline = Instant::now() + SHOWN;
    let median = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ev = match board.next_event_within(left).await {
            Ok(Some(ev)) => ev,
            other => panic!("no row with alpha's median: {other:?}"),
        };
        if let Some(median) = median_in_row(&ev, "alpha") {
            break median;
        }
    };
    assert_eq!(median, 0.2);
    drop(reader);
}

// ---------------------------------------------------------------------------------------------
// `export --daily` carries reading times and peaks; `import` restores them.

/// A server's numbers and calendar: the clock set to 2026-12-07T10:00:00Z, in Berlin.
fn in_berlin(clock: &Clock) -> impl FnOnce(&mut Config) + '_ {
    move |c| {
        c.clock = clock.clone();
        c.timezone = jiff::tz::TimeZone::get("Europe/Berlin").expect("a known time zone");
    }
}

/// `viewcounter ARGS…` in `dir`, asserting success: its stdout.
async fn cli_ok(dir: &std::path::Path, args: &[&str]) -> String {
    run(dir, args).quiet().await.success()
}

/// Today of alpha and beta in `/history/{slug}`, with their reading-time buckets.
async fn alpha_and_beta(addr: SocketAddr) -> (Day, Day) {
    (
        post_today(addr, "alpha").await,
        post_today(addr, "beta").await,
    )
}

/// A server where alpha had two readers at once and beta one, each read, in Berlin; with
/// alpha's and beta's today, and its URL.
async fn read_and_peaked(clock: &Clock) -> (TestApp, (Day, Day), String) {
    clock.set_unix(1_796_637_600);
    let app = spawn_app_configured(in_berlin(clock)).await;
    let a1 = app.join("alpha").await;
    let a2 = app.join("alpha").await;
    let b1 = app.join("beta").await;
    app.await_counts("beta", counts(1, 1), PROPAGATION).await;
    leave_with(app.addr, "alpha", &format!("{} 0 100", a1.id)).await;
    drop((a1, a2, b1));
    app.await_counts("alpha", counts(0, 2), LIVE_DROP).await;
    app.await_counts("beta", counts(0, 1), LIVE_DROP).await;
    let shown = || async {
        let (a, b) = alpha_and_beta(app.addr).await;
        (a.reads, a.peak, b.reads, b.peak)
    };
    await_value("reads and peaks of alpha, beta", (2, 2, 1, 1), SHOWN, shown).await;
    let today = alpha_and_beta(app.addr).await;
    let url = format!("http://{}", app.addr);
    (app, today, url)
}

/// `export --daily` of `app` as CSV and JSON from the running server (`url`, unwritten
/// readings included then) and, once it stopped, from its file, which must say the same; both
/// also written to `days.csv` and `days.json` in the kept dir.
async fn exported_daily(app: TestApp, url: &str) -> (tempfile::TempDir, String, String) {
    let here = app.dir.path().to_owned();
    let served_csv = cli_ok(&here, &["export", "--daily", "--url", url]).await;
    let json_args = ["export", "--daily", "--url", url, "--format", "json"];
    let served_json = cli_ok(&here, &json_args).await;
    let db = app.db().display().to_string();
    let dir = app.stop_and_keep_dir().await;
    let csv = cli_ok(dir.path(), &["export", "--daily", "--db", &db]).await;
    let json_args = ["export", "--daily", "--db", &db, "--format", "json"];
    let json = cli_ok(dir.path(), &json_args).await;
    assert_eq!((&csv, &json), (&served_csv, &served_json));
    std::fs::write(dir.path().join("days.csv"), &csv).expect("write days.csv");
    std::fs::write(dir.path().join("days.json"), &json).expect("write days.json");
    (dir, csv, json)
}

/// A fresh db file (of a server that ran and stopped) into which `file` in `dir` was
/// imported offline, then served: the server, and what `import` said.
async fn imported_into_a_fresh_file(
    dir: &std::path::Path,
    clock: &Clock,
    file: &str,
) -> (TestApp, String) {
    let fresh = spawn_app_configured(in_berlin(clock)).await;
    let fresh_db = fresh.db().display().to_string();
    let fresh = fresh.stop_and_keep_dir().await;
    let said = cli_ok(dir, &["import", "--db", &fresh_db, file]).await;
    (spawn_app_configured_in(fresh, in_berlin(clock)).await, said)
}

/// A fresh server into which `file` in `dir` was imported (`import --url`): it, and its URL.
async fn imported_into_a_running_server(
    dir: &std::path::Path,
    clock: &Clock,
    file: &str,
) -> (TestApp, String) {
    let app = spawn_app_configured(in_berlin(clock)).await;
    let url = format!("http://{}", app.addr);
    cli_ok(dir, &["import", "--url", &url, file]).await;
    (app, url)
}

#[actix_web::test]
async fn export_daily_carries_reading_times_and_peaks_that_import_restores_offline_and_through_a_server()
 {
    let clock = Clock::default();
    let (app, before, url) = read_and_peaked(&clock).await;
    assert!(before.0.read_median_s.is_some() && before.0.peak_at.is_some());
    let (dir, csv, _) = exported_daily(app, &url).await;
    assert!(
        csv.starts_with("slug,day,views,read_buckets,read_ms,peak,peak_at\n*,2026-12-07,,,,3,"),
        "{csv}"
    );
    assert!(csv.contains("\nalpha,2026-12-07,2,2 "), "{csv}");
    assert!(csv.contains(",2,2026-12-07T10:00:"), "{csv}");

    // Offline, into a fresh file.
    let (fresh, said) = imported_into_a_fresh_file(dir.path(), &clock, "days.csv").await;
    assert!(
        said.contains(", 2 days' reading times or peaks changed"),
        "{said}"
    );
    assert_eq!(
        alpha_and_beta(fresh.addr).await,
        before,
        "offline, from CSV"
    );

    // Through a running server, in the pieces of an import session.
    let (other, _) = imported_into_a_running_server(dir.path(), &clock, "days.json").await;
    assert_eq!(
        alpha_and_beta(other.addr).await,
        before,
        "through a server, from JSON"
    );
}

#[actix_web::test]
async fn export_daily_carries_the_sites_peaks_that_import_restores_offline_and_through_a_server() {
    let clock = Clock::default();
    let (app, _, url) = read_and_peaked(&clock).await;
    // Alpha's two readers and beta's one were there at once: the site's peak is 3, which is
    // no post's.
    let site = site_today(app.addr).await;
    assert_eq!(site.peak, 3, "{site:?}");
    let (dir, csv, json) = exported_daily(app, &url).await;
    // The site's row comes first (`*` sorts before any slug) and leaves its sums empty.
    let line = csv.lines().nth(1).unwrap_or_default();
    assert!(
        line.starts_with("*,2026-12-07,,,,3,2026-12-07T10:00:"),
        "{csv}"
    );
    assert!(
        json.starts_with(
            r#"[{"slug":"*","day":"2026-12-07","peak":3,"peak_at":"2026-12-07T10:00:"#
        ),
        "{json}"
    );

    // Offline, into a fresh file.
    let (fresh, said) = imported_into_a_fresh_file(dir.path(), &clock, "days.csv").await;
    assert!(said.ends_with(", 1 days' site peaks changed\n"), "{said}");
    assert_eq!(site_today(fresh.addr).await, site, "offline, from CSV");

    // Through a running server, in the pieces of an import session.
    let (other, url) = imported_into_a_running_server(dir.path(), &clock, "days.json").await;
    assert_eq!(
        site_today(other.addr).await,
        site,
        "through a server, from JSON"
    );

    // A peak takes the higher, in either mode: the same file again changes nothing (`add`
    // adds its posts' views and readings, not the site's peak), a lower peak is kept out, a
    // higher one is taken with its time.
    let peak = |day: Day| (day.peak, day.peak_at);
    for mode in ["set", "add"] {
        let said = cli_ok(
            dir.path(),
            &["import", "--url", &url, "--mode", mode, "days.csv"],
        )
        .await;
        assert!(!said.contains("site peaks"), "{mode}: {said}");
    }
    let header = "slug,day,views,read_buckets,read_ms,peak,peak_at\n";
    let lower = format!("{header}*,2026-12-07,,,,2,2026-12-07T09:00:00Z\n");
    std::fs::write(dir.path().join("lower.csv"), lower).expect("write lower.csv");
    cli_ok(dir.path(), &["import", "--url", &url, "lower.csv"]).await;
    assert_eq!(
        peak(site_today(other.addr).await),
        peak(site.clone()),
        "a lower peak changes nothing"
    );
    let views = site_today(other.addr).await.views;
    let higher = format!("{header}*,2026-12-07,,,,9,2026-12-07T12:30:00Z\n");
    std::fs::write(dir.path().join("higher.csv"), higher).expect("write higher.csv");
    cli_ok(dir.path(), &["import", "--url", &url, "higher.csv"]).await;
    let raised = site_today(other.addr).await;
    assert_eq!(
        (raised.peak, raised.peak_at.as_deref(), raised.views),
        (9, Some("2026-12-07T13:30:00+01:00"), views),
        "the higher peak, in --timezone; views untouched"
    );
}

#[actix_web::test]
async fn a_bad_site_peak_refuses_the_import_naming_its_line_and_writes_nothing() {
    let app = spawn_app().await;
    let dir = app.dir.path();
    let url = format!("http://{}", app.addr);
    let good = "*,2026-12-06,,,,1,2026-12-06T10:00:00Z\n";
    let bad = [
        (
            "*,2026-12-07,5,,,3,2026-12-07T10:00:00Z\n",
            "leave views empty",
        ),
        (
            "*,2026-12-07,,,100,3,2026-12-07T10:00:00Z\n",
            "leave read_ms empty",
        ),
        ("*,2026-12-07,,,,3,\n", "peak 3 without a peak_at"),
        ("*,2026-12-07,,,,x,2026-12-07T10:00:00Z\n", "peak \"x\""),
        ("*,2026-12-32,,,,3,2026-12-07T10:00:00Z\n", "\"2026-12-32\""),
        (
            "*,2026-12-06,,,,2,2026-12-06T11:00:00Z\n",
            "already given at line 2",
        ),
    ];
    each_refused_on_line_3(dir, &url, good, &bad).await;
    // An older file's header has no site row: `*` is no post.
    std::fs::write(dir.join("old.csv"), "slug,day,views\n*,2026-12-07,5\n").expect("write");
    let out = run(dir, &["import", "--url", &url, "old.csv"])
        .quiet()
        .await;
    assert!(
        out.stderr.contains("line 2: bad slug \"*\""),
        "{}",
        out.stderr
    );
    // The server's own import names the element.
    let json =
        r#"[{"slug":"*","day":"2026-12-07","views":1,"peak":1,"peak_at":"2026-12-07T10:00:00Z"}]"#;
    let res = send(
        app.addr,
        Req::post("/api/v1/import", json).header("X-Viewcounter-Import", "1"),
    )
    .await;
    let message = res.assert_json_error(400);
    assert!(message.contains("element 1: the site's row"), "{message}");
    let history = site_today(app.addr).await;
    assert_eq!((history.peak, history.views), (0, 0), "nothing written");
}

#[actix_web::test]
async fn importing_the_export_again_adds_reading_times_with_add_and_changes_nothing_with_set() {
    let (app, before, url) = read_and_peaked(&Clock::default()).await;
    let csv = cli_ok(app.dir.path(), &["export", "--daily", "--url", &url]).await;
    std::fs::write(app.dir.path().join("days.csv"), &csv).expect("write days.csv");

    let set = cli_ok(app.dir.path(), &["import", "--url", &url, "days.csv"]).await;
    assert_eq!(alpha_and_beta(app.addr).await, before, "{set}");

    cli_ok(
        app.dir.path(),
        &["import", "--url", &url, "--mode", "add", "days.csv"],
    )
    .await;
    let (alpha, beta) = alpha_and_beta(app.addr).await;
    assert_eq!((alpha.reads, beta.reads), (4, 2), "reading times added");
    assert_eq!(
        (alpha.peak, alpha.peak_at),
        (2, before.0.peak_at),
        "a peak is the higher"
    );
}

#[actix_web::test]
async fn a_file_without_reading_times_imports_as_before_and_leaves_them_as_they_were() {
    let (app, before, url) = read_and_peaked(&Clock::default()).await;
    std::fs::write(
        app.dir.path().join("old.csv"),
        "slug,day,views\nalpha,2026-12-07,5\n",
    )
    .expect("write old.csv");

    cli_ok(app.dir.path(), &["import", "--url", &url, "old.csv"]).await;

    let (alpha, beta) = alpha_and_beta(app.addr).await;
    assert_eq!(alpha.views, 5);
    assert_eq!(
        (alpha.reads, alpha.read_buckets, alpha.peak, alpha.peak_at),
        (
            before.0.reads,
            before.0.read_buckets,
            before.0.peak,
            before.0.peak_at
        )
    );
    assert_eq!(beta, before.1);
}

/// Each of the `bad` rows after `export --daily`'s header and the `good` row refuses the
/// import through the server at `url`, naming line 3 and saying the reason given with it.
async fn each_refused_on_line_3(
    dir: &std::path::Path,
    url: &str,
    good: &str,
    bad: &[(impl std::fmt::Display, &str)],
) {
    for (row, reason) in bad {
        let file = format!("slug,day,views,read_buckets,read_ms,peak,peak_at\n{good}{row}");
        std::fs::write(dir.join("bad.csv"), &file).expect("write bad.csv");
        let out = run(dir, &["import", "--url", url, "bad.csv"]).quiet().await;
        assert!(!out.status.success(), "{file}");
        assert!(out.stderr.contains("line 3: "), "{file}: {}", out.stderr);
        assert!(out.stderr.contains(reason), "{file}: {}", out.stderr);
    }
}

#[actix_web::test]
async fn a_bad_reading_time_or_peak_refuses_the_import_naming_its_line_and_writes_nothing() {
    let app = spawn_app().await;
    let dir = app.dir.path();
    let url = format!("http://{}", app.addr);
    let zeros = "0 0 0 0 0 0 0 0 0 0 0 0 0 0 0";
    let good = format!("alpha,2026-12-07,1,{zeros} 1,500,1,2026-12-07T10:00:00Z\n");
    let bad = [
        (
            format!("beta,2026-12-07,1,{zeros},500,1,2026-12-07T10:00:00Z\n"),
            "expected 16",
        ),
        (
            format!("beta,2026-12-07,1,{zeros} x,500,1,2026-12-07T10:00:00Z\n"),
            "\"x\"",
        ),
        (
            format!("beta,2026-12-07,1,{zeros} 1,500,1,\n"),
            "without a peak_at",
        ),
        (
            format!("beta,2026-12-07,1,{zeros} 1,500,1,yesterday\n"),
            "\"yesterday\"",
        ),
        (
            format!("beta,2026-12-07,1,{zeros} 0,500,0,\n"),
            "read_ms 500",
        ),
        (
            format!("beta,2026-12-07,1,{zeros} 1,500,1\n"),
            "expected 7 fields",
        ),
    ];
    each_refused_on_line_3(dir, &url, &good, &bad).await;
    // The server's own import names the element.
    let json = r#"[{"slug":"alpha","day":"2026-12-07","views":1,"read_buckets":[1],"read_ms":0,"peak":0,"peak_at":null}]"#;
    let res = send(
        app.addr,
        Req::post("/api/v1/import", json).header("X-Viewcounter-Import", "1"),
    )
    .await;
    let message = res.assert_json_error(400);
    assert!(
        message.contains("element 1: read_buckets has 1 counts"),
        "{message}"
    );
    assert_eq!(app.totals().await, rows(&[]), "nothing written");
}
