//! The server as a library inside the test's actix System, on port 0 in its own temp dir,
//! and what tests read from any server: counts, totals, stats, metrics, tagged events.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Deserialize;
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use viewcounter::Application;
pub use viewcounter::config::{Config, Posts};
use viewcounter::edge::client_ip::TrustedProxies;
use viewcounter::edge::origin::OriginPolicy;
use viewcounter::startup::StartError;
pub use viewcounter::storage::calendar::Clock;

use crate::http::{Counts, Reader, Req, Response, SseClient, SseEvent, join, send};

/// The allow-list every server starts with, unless a test writes its own.
pub const DEFAULT_SLUGS: &[&str] = &["alpha", "beta", "gamma", "2024/05/my_post.html"];
/// No per-IP limit may refuse a stream or skip a view: every join of a load is a counted view.
pub const UNLIMITED: [&str; 6] = [
    "--ip-stream-limit",
    "0",
    "--ip-view-rate",
    "0",
    "--ip-new-post-rate",
    "0",
];
/// The contract: every change reaches every reader within 500 ms.
pub const PROPAGATION: Duration = Duration::from_millis(500);
/// The contract: once clients close their connections, live drops within 2 s.
pub const LIVE_DROP: Duration = Duration::from_secs(2);
/// How long a server gets to stop gracefully (the contract: exit within 10 s).
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// A fresh, valid reader id (16–64 of `[A-Za-z0-9_-]`), unique within the test run.
pub fn token() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("tok-{:08x}-{n:08}", std::process::id())
}

/// A client address for `X-Forwarded-For` (the loopback peer is a trusted proxy by default).
pub fn ip(n: u32) -> String {
    let [a, b, c, d] = (0x0a00_0000 + n).to_be_bytes();
    format!("{a}.{b}.{c}.{d}")
}

pub fn write_slugs(path: &Path, slugs: &[&str]) {
    let mut text = String::from("# allow-list written by the tests\n\n");
    for slug in slugs {
        text.push_str(slug);
        text.push('\n');
    }
    std::fs::write(path, text).expect("write the allow-list");
}

pub(crate) fn db_path(dir: &Path) -> PathBuf {
    dir.join("viewcounter.redb")
}

pub(crate) fn slugs_path(dir: &Path) -> PathBuf {
    dir.join("slugs.txt")
}

// ---------------------------------------------------------------------------------------------
// The server, as a library inside the test's actix System.

pub struct TestApp {
    /// Where it listens (port 0 made real).
    pub addr: SocketAddr,
    /// Its db and allow-list; kept for a restart on the same files.
    pub dir: TempDir,
    /// Stops the server when the test is done with it.
    stop: StopOnDrop,
    /// `run_until`, awaited by [`TestApp::stop`] for its outcome.
    served: Option<JoinHandle<Result<(), StartError>>>,
}

/// Tells the server to stop when the test is done with it, whether or not it awaited the stop.
struct StopOnDrop(Option<oneshot::Sender<()>>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        if let Some(stop) = self.0.take() {
            let _ = stop.send(());
        }
    }
}

/// A server with the defaults, the default allow-list and an empty db.
pub async fn spawn_app() -> TestApp {
    spawn_app_configured(|_| {}).await
}

/// A server built from a [`Config`] with the defaults (no flags, no `VIEWCOUNTER_*`
/// variables read), on port 0, in its own temp dir, changed by `configure`.
pub async fn spawn_app_configured(configure: impl FnOnce(&mut Config)) -> TestApp {
    spawn_app_configured_with_slugs(DEFAULT_SLUGS, configure).await
}

/// Like [`spawn_app_configured`], with its own allow-list.
pub async fn spawn_app_configured_with_slugs(
    slugs: &[&str],
    configure: impl FnOnce(&mut Config),
) -> TestApp {
    let dir = tempfile::tempdir().expect("temp dir");
    write_slugs(&slugs_path(dir.path()), slugs);
    spawn_app_configured_in(dir, configure).await
}

/// A server on the db and allow-list of `dir` (a restart when a server used it before),
/// configured as [`spawn_app_configured`]. A test that sets the time sets `c.clock`.
pub async fn spawn_app_configured_in(dir: TempDir, configure: impl FnOnce(&mut Config)) -> TestApp {
    let mut config = Config::new(db_path(dir.path()), slugs_path(dir.path()));
    config.listen = "127.0.0.1:0".parse().expect("address");
    configure(&mut config);
    serve_in(dir, config).await
}

/// A server whose clock reads `unix` now (and runs on), configured as
/// [`spawn_app_configured`], and that clock (which the test may set again).
pub async fn spawn_app_at(unix: u64, configure: impl FnOnce(&mut Config)) -> (TestApp, Clock) {
    let clock = Clock::default();
    clock.set_unix(unix);
    let given = clock.clone();
    let app = spawn_app_configured(move |c| {
        configure(c);
        c.clock = given;
    })
    .await;
    (app, clock)
}

/// `--flush-after 1h --flush-max-wait 1h`: nothing is written before the stop.
pub fn never_flush(c: &mut Config) {
    c.flush.after = Duration::from_secs(3600);
    c.flush.max_wait = Duration::from_secs(3600);
}

/// What `--allow-origin` (repeated) sets.
pub fn origins(list: &[&str]) -> OriginPolicy {
    let list: Vec<String> = list.iter().map(|&o| o.to_owned()).collect();
    OriginPolicy::new(&list).expect("valid origins")
}

/// What `--trusted-proxy` (repeated) sets.
pub fn trusted_proxies(nets: &[&str]) -> TrustedProxies {
    TrustedProxies::new(nets.iter().map(|n| n.parse().expect("a network")).collect())
}

async fn serve_in(dir: TempDir, config: Config) -> TestApp {
    let app = Application::build(config).await.expect("server builds");
    let addr = app.address();
    let (stop, stop_rx) = oneshot::channel::<()>();
    let served = actix_web::rt::spawn(app.run_until(async {
        let _ = stop_rx.await;
    }));
    TestApp {
        addr,
        dir,
        stop: StopOnDrop(Some(stop)),
        served: Some(served),
    }
}

impl TestApp {
    pub fn db(&self) -> PathBuf {
        db_path(self.dir.path())
    }

    pub fn slugs_file(&self) -> PathBuf {
        slugs_path(self.dir.path())
    }

    /// `http://127.0.0.1:PORT`: what a same-origin page sends as `Origin`.
    pub fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Graceful stop: streams end, pending totals are written; waits for all of it.
    pub async fn stop(&mut self) -> Result<(), String> {
        if let Some(stop) = self.stop.0.take() {
            let _ = stop.send(());
        }
        let Some(served) = self.served.take() else {
            return Ok(());
        };
        match tokio::time::timeout(STOP_TIMEOUT, served).await {
            Err(_) => Err(format!("server did not stop within {STOP_TIMEOUT:?}")),
            Ok(Err(join)) => Err(format!("server task failed: {join}")),
            Ok(Ok(Err(e))) => Err(format!("server stopped with an error: {e}")),
            Ok(Ok(Ok(()))) => Ok(()),
        }
    }

    /// Stops the server and hands back its directory, for a restart on the same db.
    pub async fn stop_and_keep_dir(mut self) -> TempDir {
        self.stop().await.expect("graceful stop");
        self.dir
    }

    pub async fn send(&self, req: Req) -> Response {
        send(self.addr, req).await
    }

    pub async fn open(&self, req: Req) -> SseClient {
        SseClient::open(self.addr, req).await
    }

    /// A browser reader with a fresh view token; asserts the stream and its first event.
    pub async fn join(&self, slug: &str) -> Reader {
        self.join_as(slug, Req::connect(slug, &token())).await
    }

    /// Opens `req` (a connect request), asserts 200 and reads the first event.
    pub async fn join_as(&self, slug: &str, req: Req) -> Reader {
        join(self.addr, slug, req).await
    }

    /// `GET /api/v1/count/{slug}`, asserting 200.
    pub async fn counts(&self, slug: &str) -> Counts {
        counts_of(self.addr, slug).await
    }

    /// `POST /api/v1/leave/{slug}` with `id` as the body.
    pub async fn leave(&self, slug: &str, id: &str) -> Response {
        self.send(Req::post(format!("/api/v1/leave/{slug}"), id))
            .await
    }

    /// `GET /api/v1/totals` from loopback, asserting 200: `(slug, total)` in answer order.
    pub async fn totals(&self) -> Vec<(String, u64)> {
        let res = self.send(Req::get("/api/v1/totals")).await;
        assert_eq!(res.status, 200, "totals: {res:?}");
        parse_rows(&res.text())
    }

    /// `GET /api/v1/stats` from loopback, asserting 200: one field of it.
    pub async fn stat(&self, field: &str) -> u64 {
        let stats = self.stats().await;
        stats[field]
            .as_u64()
            .unwrap_or_else(|| panic!("no {field} in stats {stats}"))
    }

    /// `GET /api/v1/stats` from loopback (no token needed), asserting 200.
    pub async fn stats(&self) -> serde_json::Value {
        stats(self.addr).await
    }

    /// One series of `/metrics` (e.g. `viewcounter_outbox_pending`).
    pub async fn metric(&self, series: &str) -> Option<f64> {
        metric(self.addr, series).await
    }

    /// How many post actors are awake.
    pub async fn posts_awake(&self) -> u64 {
        self.stat("posts_awake").await
    }

    /// Polls `GET /api/v1/stats` until `want` post actors are awake, or the deadline.
    pub async fn await_posts_awake(&self, want: u64, within: Duration) {
        await_value("posts awake", want, within, || self.posts_awake()).await;
    }

    /// Polls `GET /api/v1/count/{slug}` until `want` or the deadline.
    pub async fn await_counts(&self, slug: &str, want: Counts, within: Duration) {
        await_counts(self.addr, slug, want, within).await;
    }
}

pub async fn counts_of(addr: SocketAddr, slug: &str) -> Counts {
    let res = send(addr, Req::get(format!("/api/v1/count/{slug}"))).await;
    assert_eq!(res.status, 200, "count {slug}: {res:?}");
    res.json_as()
}

pub async fn await_counts(addr: SocketAddr, slug: &str, want: Counts, within: Duration) {
    let what = format!("count of {slug}");
    await_value(&what, want, within, || counts_of(addr, slug)).await;
}

/// Polls `read` until it gives `want`; fails naming `what` after `within`. Waiting for a
/// state with a deadline, never sleeping in place of it.
pub async fn await_value<T, F, Fut>(what: &str, want: T, within: Duration, read: F)
where
    T: PartialEq + std::fmt::Debug,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let what = format!("{what} (want {want:?})");
    time_until(&what, within, read, |seen| *seen == want).await;
}

/// Polls `read` every 10 ms until `holds` (true at once counts too): the time it took, or a
/// failure naming `what` and the last value after `within`.
pub async fn time_until<T, F, Fut>(
    what: &str,
    within: Duration,
    mut read: F,
    holds: impl Fn(&T) -> bool,
) -> Duration
where
    T: std::fmt::Debug,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let started = Instant::now();
    loop {
        let seen = read().await;
        if holds(&seen) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "{what}: still {seen:?} after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `GET /api/v1/stats` (from loopback, so no token is needed), asserting 200.
pub async fn stats(addr: SocketAddr) -> serde_json::Value {
    let res = send(addr, Req::get("/api/v1/stats")).await;
    assert_eq!(res.status, 200, "stats: {res:?}");
    res.json()
}

/// One series without labels of `GET /metrics` (e.g. `viewcounter_outbox_pending`).
pub async fn metric(addr: SocketAddr, series: &str) -> Option<f64> {
    let res = send(addr, Req::get("/metrics")).await;
    assert_eq!(res.status, 200, "metrics: {res:?}");
    res.text()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
}

/// `[{"slug":…,"total":…},…]`, exactly those fields, in the order given.
pub fn parse_rows(json: &str) -> Vec<(String, u64)> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Row {
        slug: String,
        total: u64,
    }
    let rows: Vec<Row> =
        serde_json::from_str(json).unwrap_or_else(|e| panic!("not a totals array ({e}): {json}"));
    rows.into_iter().map(|r| (r.slug, r.total)).collect()
}

pub fn rows(pairs: &[(&str, u64)]) -> Vec<(String, u64)> {
    pairs.iter().map(|&(s, t)| (s.to_owned(), t)).collect()
}

// ---------------------------------------------------------------------------------------------
// Shared streams and watches: events tagged with their slug.

/// `{"slug":…,"live":…,"total":…}` of a shared stream's event.
#[derive(Debug, PartialEq, Eq, serde::Deserialize)]
pub struct Tagged {
    pub slug: String,
    pub live: u64,
    pub total: u64,
}

pub fn tagged(ev: &SseEvent) -> Tagged {
    let data = ev
        .data
        .as_deref()
        .unwrap_or_else(|| panic!("no data in {ev:?}"));
    serde_json::from_str(data).unwrap_or_else(|e| panic!("not a tagged event ({e}): {data:?}"))
}

pub fn t(slug: &str, live: u64, total: u64) -> Tagged {
    Tagged {
        slug: slug.to_owned(),
        live,
        total,
    }
}

/// Opens a shared stream and reads past its `retry:` preamble.
pub async fn open_shared(app: &TestApp, sid: &str) -> SseClient {
    open_tagged(app, Req::get(format!("/api/v1/shared/{sid}"))).await
}

/// Opens a stream of tagged events (shared or watch) and reads past its `retry:` preamble.
pub async fn open_tagged(app: &TestApp, req: Req) -> SseClient {
    let mut stream = app.open(req).await;
    assert_eq!(stream.status, 200, "{:?}", stream.headers);
    assert_eq!(stream.header("content-type"), Some("text/event-stream"));
    let preamble = stream.next_event().await;
    assert!(
        preamble.retry.is_some() && preamble.data.is_none(),
        "{preamble:?}"
    );
    stream
}

/// Reads events until `want` arrives.
pub async fn await_tagged(stream: &mut SseClient, want: Tagged) {
    loop {
        let ev = stream.next_event().await;
        if ev.data.is_some() && tagged(&ev) == want {
            return;
        }
    }
}

/// The next `n` tagged events (heartbeats skipped), sorted by slug: events of several posts
/// sent at once come in no particular order.
pub async fn next_tagged(stream: &mut SseClient, n: usize) -> Vec<Tagged> {
    let mut events = Vec::new();
    while events.len() < n {
        let ev = stream.next_event().await;
        if ev.data.is_some() {
            events.push(tagged(&ev));
        }
    }
    events.sort_by(|a, b| a.slug.cmp(&b.slug));
    events
}
