//! All-time totals on disk: restarts, graceful stops (library and SIGTERM/SIGINT), kill -9,
//! and the max-wait of the debounced writer under a steady stream of readers.

use std::time::{Duration, Instant};

use testkit::*;

const NEVER: &[&str] = &["--flush-after", "1h", "--flush-max-wait", "1h"];

fn csv(pairs: &[(&str, u64)]) -> String {
    let mut out = String::from("slug,total\n");
    for (slug, total) in pairs {
        out.push_str(&format!("{slug},{total}\n"));
    }
    out
}

async fn export_file(dir: &std::path::Path, db: &std::path::Path) -> RunOutput {
    export(dir, &["--db", &db.display().to_string()], &[]).await
}

#[actix_web::test]
async fn views_survive_a_graceful_restart_on_the_same_db() {
    let app = spawn_app().await;
    let mut open = Vec::new();
    for slug in ["alpha", "alpha", "beta", "alpha"] {
        open.push(app.join(slug).await);
    }
    drop(open);
    let dir = app.stop_and_keep_dir().await;

    let app = spawn_app_configured_in(dir, |_| {}).await;

    assert_eq!(app.counts("alpha").await, counts(0, 3));
    assert_eq!(app.counts("beta").await, counts(0, 1));
    let next = app.join("alpha").await;
    assert_eq!(next.first, counts(1, 4));
    assert_eq!(app.totals().await, rows(&[("alpha", 4), ("beta", 1)]));
}

#[actix_web::test]
async fn a_post_nobody_read_for_a_while_wakes_with_its_total() {
    let app = spawn_app_configured(|c| c.flush.dedupe_window = Duration::from_millis(100)).await;
    let a = app.join("alpha").await;
    let b = app.join("alpha").await;
    a.stream.close();
    b.stream.reset();
    app.await_counts("alpha", counts(0, 2), LIVE_DROP).await;

    // An idle post sleeps after its grace (5 s) once its dedupe memory expired.
    app.await_posts_awake(0, Duration::from_secs(10)).await;

    assert_eq!(app.counts("alpha").await, counts(0, 2));
    assert_eq!(app.join("alpha").await.first, counts(1, 3));
}

#[actix_web::test]
async fn a_graceful_stop_ends_each_stream_with_a_retry_hint_and_writes_every_view() {
    let mut app = spawn_app_configured(never_flush).await;
    let mut streams = Vec::new();
    for slug in ["alpha", "alpha", "beta"] {
        streams.push(app.join(slug).await.stream);
    }

    let started = Instant::now();
    let (stopped, endings) = tokio::join!(app.stop(), async {
        let mut endings = Vec::new();
        for mut s in streams {
            endings.push(s.read_to_end(STOP_TIMEOUT).await);
            // The reader goes, as a browser does before it retries.
            s.reset();
        }
        endings
    });

    stopped.expect("graceful stop");
    assert!(started.elapsed() < STOP_TIMEOUT);
    for events in endings {
        let last = events
            .last()
            .unwrap_or_else(|| panic!("no goodbye: {events:?}"));
        assert_eq!(last.comments, ["server restarting"], "{events:?}");
        let retry = last.retry.unwrap_or_else(|| panic!("no retry: {last:?}"));
        assert!((1000..5000).contains(&retry), "retry {retry}");
        assert!(last.data.is_none());
    }

    let dir = app.dir.path().to_owned();
    let out = export_file(&dir, &app.db()).await;
    assert!(out.status.success(), "{}", out.stderr);
    assert_eq!(out.stdout, csv(&[("alpha", 2), ("beta", 1)]));
}

async fn a_stop_signal_writes_every_pending_view_and_exits_0(signal: &str) {
    let mut server = BinServer::start(NEVER).await;
    let mut readers = Vec::new();
    for slug in ["alpha", "beta", "alpha", "2024/05/my_post.html", "alpha"] {
        readers.push(server.join(slug).await);
    }
    let mut open = readers.pop().expect("a reader").stream;
    drop(readers);

    server.signal(signal);

    let events = open.read_to_end(STOP_TIMEOUT).await;
    let last = events
        .last()
        .unwrap_or_else(|| panic!("no goodbye: {events:?}"));
    assert_eq!(last.comments, ["server restarting"], "{events:?}");
    assert!(
        last.retry.is_some_and(|ms| (1000..5000).contains(&ms)),
        "{last:?}"
    );
    // The client keeps its (idle, kept-alive) connection, as a browser's pool does.
    let status = server.wait(STOP_TIMEOUT).await;
    drop(open);
    let log = server.log();
    assert!(status.success(), "exit {status:?}; log:\n{log}");
    assert!(!log.contains("panicked"), "{log}");

    let out = export_file(server.dir.path(), &server.db()).await;
    assert!(out.status.success(), "{}", out.stderr);
    assert_eq!(
        out.stdout,
        csv(&[("2024/05/my_post.html", 1), ("alpha", 3), ("beta", 1)])
    );
}

#[actix_web::test]
async fn sigterm_writes_every_pending_view_and_exits_0() {
    a_stop_signal_writes_every_pending_view_and_exits_0("TERM").await;
}

#[actix_web::test]
async fn sigint_writes_every_pending_view_and_exits_0() {
    a_stop_signal_writes_every_pending_view_and_exits_0("INT").await;
}

#[actix_web::test]
async fn after_kill_9_views_older_than_the_max_wait_are_in_the_file_and_it_opens() {
    let max_wait = Duration::from_secs(1);
    let mut server = BinServer::start(&["--flush-after", "200ms", "--flush-max-wait", "1s"]).await;
    let mut open = Vec::new();
    for slug in ["alpha", "beta", "alpha", "alpha"] {
        open.push(server.join(slug).await);
    }
    let last_view = Instant::now();

    // Time passing is what is under test: the views become older than the max wait.
    tokio::time::sleep(max_wait + Duration::from_millis(500)).await;
    assert!(last_view.elapsed() > max_wait);
    server.kill_9().await;
    drop(open);

    let out = export_file(server.dir.path(), &server.db()).await;
    assert!(
        out.status.success(),
        "export after kill -9 failed: {}",
        out.stderr
    );
    assert_eq!(out.stdout, csv(&[("alpha", 3), ("beta", 1)]));

    // And a server starts on that file and goes on counting.
    let server = BinServer::start_in(server.into_dir(), &[]).await;
    assert_eq!(server.counts("alpha").await, counts(0, 3));
    assert_eq!(server.join("alpha").await.first, counts(1, 4));
}

#[actix_web::test]
async fn a_steady_stream_of_joins_cannot_postpone_the_write_past_the_max_wait() {
    let mut server = BinServer::start(&[
        "--flush-after",
        "1s",
        "--flush-max-wait",
        "2s",
        "--ip-view-rate",
        "0",
        "--ip-stream-limit",
        "0",
    ])
    .await;

    // A new reader every 100 ms for 3 s: never 1 s of quiet, so only the max wait writes.
    let mut joins: Vec<Instant> = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tick.tick().await;
        let r = server.join("alpha").await;
        assert_eq!(r.first.total, joins.len() as u64 + 1);
        r.stream.reset();
        joins.push(Instant::now());
        if joins[0].elapsed() >= Duration::from_secs(3) {
            break;
        }
    }
    server.kill_9().await;

    let longest_gap = joins
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    assert!(
        longest_gap < Duration::from_millis(900),
        "premise: the joins were steady, longest gap {longest_gap:?}"
    );
    // Every view of the first second is older than the max wait at the kill, whatever the
    // writer's jitter: it must be in the file.
    let first_second = joins
        .iter()
        .filter(|&&t| t - joins[0] <= Duration::from_secs(1))
        .count() as u64;
    let out = export_file(server.dir.path(), &server.db()).await;
    assert!(out.status.success(), "{}", out.stderr);
    let stored: Vec<(String, u64)> = out
        .stdout
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(','))
        .map(|(s, t)| (s.to_owned(), t.parse().unwrap()))
        .collect();
    let alpha = stored
        .iter()
        .find(|(s, _)| s == "alpha")
        .map_or(0, |(_, t)| *t);
    assert!(
        alpha >= first_second && alpha <= joins.len() as u64,
        "file holds {alpha} of {} views ({first_second} in the first second); log:\n{}",
        joins.len(),
        server.log()
    );
}

#[actix_web::test]
async fn an_open_tab_reconnecting_after_a_restart_is_not_counted_twice() {
    let app = spawn_app().await;
    let tab = app.join("alpha").await;
    let other = app.join("beta").await;
    assert_eq!(app.counts("alpha").await, counts(1, 1));
    let dir = app.stop_and_keep_dir().await;
    drop((tab.stream, other.stream));

    let app = spawn_app_configured_in(dir, |_| {}).await;
    // The browser comes back with the same page-view id, as ?view= and as Last-Event-ID.
    let again = app
        .join_as(
            "alpha",
            Req::connect("alpha", &tab.id).header("Last-Event-ID", tab.id.clone()),
        )
        .await;
    assert_eq!(again.first, counts(1, 1));
    let fresh = app.join("alpha").await;
    assert_eq!(fresh.first, counts(2, 2), "a new page view still counts");
}

#[actix_web::test]
async fn a_reader_counted_before_a_kill_9_and_written_is_still_deduplicated_after_it() {
    let max_wait = Duration::from_millis(300);
    let mut server =
        BinServer::start(&["--flush-after", "100ms", "--flush-max-wait", "300ms"]).await;
    let tab = server.join("alpha").await;
    // Time passing is what is under test: the view (and its reader id) must be written.
    tokio::time::sleep(max_wait + Duration::from_millis(500)).await;
    server.kill_9().await;
    drop(tab.stream);

    let server = BinServer::start_in(server.into_dir(), &[]).await;
    let again = join(server.addr, "alpha", Req::connect("alpha", &tab.id)).await;
    assert_eq!(again.first, counts(1, 1));
}

/// 2026-12-07 12:00 UTC: the restarts below move the server's clock on from there.
const COUNTED_AT: u64 = 1_796_644_800;
const WINDOW: u64 = 30 * 60;

/// A server on `dir` (a restart) whose clock reads what `clock` reads.
async fn restart_at(dir: tempfile::TempDir, clock: &Clock) -> TestApp {
    let clock = clock.clone();
    spawn_app_configured_in(dir, move |c| c.clock = clock).await
}

#[actix_web::test]
async fn a_reader_counted_before_a_restart_is_not_counted_again_within_the_window_and_is_after_it()
{
    let (app, clock) = spawn_app_at(COUNTED_AT, |_| {}).await;
    let tab = app.join("alpha").await;
    assert_eq!(tab.first, counts(1, 1));
    let dir = app.stop_and_keep_dir().await;
    drop(tab.stream);

    clock.set_unix(COUNTED_AT + WINDOW - 2);
    let app = restart_at(dir, &clock).await;
    let within = app.join_as("alpha", Req::connect("alpha", &tab.id)).await;
    assert_eq!(within.first, counts(1, 1), "within the window: remembered");
    let dir = app.stop_and_keep_dir().await;
    drop(within.stream);

    clock.set_unix(COUNTED_AT + WINDOW + 1);
    let app = restart_at(dir, &clock).await;
    let after = app.join_as("alpha", Req::connect("alpha", &tab.id)).await;
    assert_eq!(after.first, counts(1, 2), "past the window: a view again");
}

#[actix_web::test]
async fn the_file_keeps_a_counted_reader_id_in_a_few_tens_of_bytes() {
    const VIEWS: u64 = 3000;
    // One client opens them all: no per-address limit (0 = none).
    let app = spawn_app_configured(|c| {
        c.limits.ip_streams = 0;
        c.limits.ip_views_per_minute = 0;
    })
    .await;
    let empty = std::fs::metadata(app.db()).unwrap().len();
    for batch in 0..VIEWS / 100 {
        let joins = (0..100).map(|_| app.join("alpha"));
        let readers = futures_util::future::join_all(joins).await;
        assert!(readers.iter().all(|r| r.first.live >= 1), "batch {batch}");
    }
    let db = app.db();
    let dir = app.stop_and_keep_dir().await;
    let grown = std::fs::metadata(&db).unwrap().len() - empty;
    // Every id counted is within the window (30 min): all of them are kept.
    assert!(
        grown <= VIEWS * 48,
        "{grown} bytes more for {VIEWS} views: {} B each",
        grown / VIEWS
    );
    let app = spawn_app_configured_in(dir, |_| {}).await;
    assert_eq!(app.counts("alpha").await, counts(0, VIEWS));
}

#[actix_web::test]
async fn a_reader_counted_by_the_third_release_is_still_remembered_once_its_file_is_migrated() {
    // schema-v3.redb: "alpha" has 2 views, "reader-one-000000" counted at 1_800_000_000.
    let (app, clock) = spawn_app_at(1_800_000_000 + 600, |_| {}).await;
    let db = app.db();
    let dir = app.stop_and_keep_dir().await;
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/schema-v3.redb");
    std::fs::copy(fixture, &db).unwrap();

    let app = restart_at(dir, &clock).await;
    let again = app
        .join_as("alpha", Req::connect("alpha", "reader-one-000000"))
        .await;
    assert_eq!(again.first, counts(1, 2), "remembered across the migration");
    let fresh = app.join("alpha").await;
    assert_eq!(fresh.first, counts(2, 3));
}
