//! What every cluster test needs: its own `redis-server` (or a skip when there is none), nodes
//! started on it as real binaries, their `/api/v1/stats`, and timed waits.
//!
//! Nothing here sleeps to synchronise: waiting is polling a process, a stream or an endpoint
//! until a condition holds, with a deadline, and the time it took is handed back to print.

use std::io::Write;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Once;
use std::time::{Duration, Instant};

use tempfile::TempDir;
use tokio::process::{Child, Command};
use tokio::sync::{Mutex, MutexGuard};

use crate::helpers::*;

/// The one post every cluster test reads.
pub const SLUG: &str = "alpha";
/// Presence: a change on one node reaches readers on every node within 1 s (p99).
pub const PRESENCE: Duration = Duration::from_secs(1);
/// A node killed with -9 leaves everyone's live (and `nodes`) within 5 s.
pub const NODE_EXPIRY: Duration = Duration::from_secs(5);
/// `/api/v1/stats` says `redis: down` within 2 s of Redis failing.
pub const REDIS_DOWN: Duration = Duration::from_secs(2);
/// How long a setup step (a node learning of its peers, Redis coming back) may take before the
/// test fails: generous, since it is not a figure the contract bounds.
pub const SETTLE: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// One test at a time, and skipping when the tools are missing.

/// Cluster tests run one at a time: each starts Redis and up to three nodes, and its timing
/// bounds (1 s) mean something only when the others are not competing for the same cores.
/// (An async mutex: each test has a runtime of its own, and a test that fails releases it.)
pub async fn one_at_a_time() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::const_new(());
    SERIAL.lock().await
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// True when `program` can run. When it cannot: under `CI=true` the test fails; otherwise
/// the skip is reported once, on the terminal (written past the test harness's capture, so a
/// plain `cargo test` shows it), and the test passes.
pub fn have(program: &str, package: &str) -> bool {
    if on_path(program) {
        return true;
    }
    assert!(
        !under_ci(),
        "CI=true and `{program}` is not installed: the cluster tests need it \
         (apt-get install {package})"
    );
    static TOLD: Once = Once::new();
    TOLD.call_once(|| {
        let _ = writeln!(
            std::io::stderr(),
            "\nviewcounter: cluster tests skipped: `{program}` is not installed. To run them: \
             `apt-get install {package}`, then `cargo test --test cluster`.\n"
        );
    });
    false
}

// ---------------------------------------------------------------------------------------------
// Redis.

/// A `redis-server` of the test's own, on a free loopback port, in a temp dir; killed on drop.
/// It keeps an append-only file written on every command (`appendfsync always`), as a
/// production Redis would: a kill -9 and restart loses nothing it acknowledged.
pub struct Redis {
    pub port: u16,
    dir: TempDir,
    child: Option<Child>,
}

impl Redis {
    /// A running Redis, or `None` (the test then passes as skipped) when there is none to run.
    pub async fn start_or_skip() -> Option<Self> {
        if !have("redis-server", "redis-server") {
            return None;
        }
        let mut redis = Self {
            port: closed_port(),
            dir: tempfile::tempdir().expect("temp dir"),
            child: None,
        };
        redis.launch().await;
        Some(redis)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    async fn launch(&mut self) {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port"])
            .arg(self.port.to_string())
            .arg("--dir")
            .arg(self.dir.path())
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ])
            .args(["--logfile", "redis.log"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + SETTLE;
        while self.try_cmd(&["PING"]).await.as_deref() != Some("PONG") {
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer PING within {SETTLE:?}; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }

    /// SIGKILL, and waits until the process is gone.
    pub async fn kill_9(&mut self) {
        let mut child = self.child.take().expect("redis is running");
        child.start_kill().expect("SIGKILL redis");
        child.wait().await.expect("redis exits");
    }

    /// Starts Redis again on the same port and directory (it reloads its append-only file).
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "kill it first");
        self.launch().await;
    }

    fn signal(&self, name: &str) {
        let pid = self.child.as_ref().and_then(Child::id).expect("running");
        let status = std::process::Command::new("kill")
            .arg(format!("-{name}"))
            .arg(pid.to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} redis");
    }

    /// SIGSTOP: connections stay open and nothing is answered, as a stalled Redis.
    pub fn pause(&self) {
        self.signal("STOP");
    }

    pub fn resume(&self) {
        self.signal("CONT");
    }

    /// One command through `redis-cli --raw`; `None` when it fails or takes over 2 s.
    async fn try_cmd(&self, args: &[&str]) -> Option<String> {
        let run = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .arg("--raw")
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(Duration::from_secs(2), run)
            .await
            .ok()?
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        (out.status.success() && !text.starts_with("ERR")).then_some(text)
    }

    /// One command that must succeed: its answer as `redis-cli --raw` prints it.
    pub async fn cmd(&self, args: &[&str]) -> String {
        self.try_cmd(args)
            .await
            .unwrap_or_else(|| panic!("redis-cli {args:?} failed"))
    }

    /// `HGET vc:totals SLUG`: the cluster's total of a post (0 when it has none).
    pub async fn total(&self, slug: &str) -> u64 {
        let text = self.cmd(&["HGET", "vc:totals", slug]).await;
        if text.is_empty() {
            return 0;
        }
        text.parse()
            .unwrap_or_else(|_| panic!("vc:totals {slug} is not a number: {text:?}"))
    }

    /// The post's views summed over every `vc:day:*` hash.
    pub async fn day_views(&self, slug: &str) -> u64 {
        let keys = self.cmd(&["--scan", "--pattern", "vc:day:*"]).await;
        let mut sum = 0;
        for key in keys.lines().filter(|k| !k.is_empty()) {
            let text = self.cmd(&["HGET", key, slug]).await;
            sum += text.parse::<u64>().unwrap_or(0);
        }
        sum
    }
}

// ---------------------------------------------------------------------------------------------
// Nodes.

/// `viewcounter serve --redis URL --node-id NAME` as its own process, in its own directory
/// (its own `--db`, which holds its outbox), every per-client limit off.
pub struct Node {
    pub name: String,
    pub server: BinServer,
}

impl Node {
    pub async fn start(redis: &Redis, name: &str, extra: &[&str]) -> Self {
        let url = redis.url();
        let mut flags = vec!["--redis", &url, "--node-id", name];
        flags.extend(UNLIMITED);
        flags.extend(extra);
        Self {
            name: name.to_owned(),
            server: BinServer::start(&flags).await,
        }
    }

    /// Nodes named `a`, `b`, `c`, … with the same flags.
    pub async fn start_many(redis: &Redis, names: &[&str], extra: &[&str]) -> Vec<Self> {
        let mut nodes = Vec::new();
        for name in names {
            nodes.push(Self::start(redis, name, extra).await);
        }
        nodes
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr
    }

    /// A browser reader with a fresh reader id.
    pub async fn join(&self) -> Reader {
        self.server.join(SLUG).await
    }

    pub async fn counts(&self) -> Counts {
        self.server.counts(SLUG).await
    }

    /// `GET /api/v1/stats` (from loopback, so no token is needed).
    pub async fn stats(&self) -> serde_json::Value {
        stats_of(self.addr()).await
    }

    /// `"redis"` of the stats: `"ok"` or `"down"`.
    pub async fn redis_state(&self) -> String {
        let stats = self.stats().await;
        stats["redis"]
            .as_str()
            .unwrap_or_else(|| panic!("{}: no \"redis\" in stats {stats}", self.name))
            .to_owned()
    }

    /// `"nodes"` of the stats: live nodes seen, this one included.
    pub async fn nodes_seen(&self) -> u64 {
        let stats = self.stats().await;
        stats["nodes"]
            .as_u64()
            .unwrap_or_else(|| panic!("{}: no \"nodes\" in stats {stats}", self.name))
    }

    /// One series of `/metrics` (e.g. `viewcounter_outbox_pending`).
    pub async fn metric(&self, series: &str) -> Option<f64> {
        let res = self.server.send(Req::get("/metrics")).await;
        assert_eq!(res.status, 200, "{}: metrics {res:?}", self.name);
        metric_value(&res.text(), series)
    }

    /// `/api/v1/totals` of this node: `(slug, total)` rows.
    pub async fn totals(&self) -> Vec<(String, u64)> {
        let res = self.server.send(Req::get("/api/v1/totals")).await;
        assert_eq!(res.status, 200, "{}: totals {res:?}", self.name);
        parse_rows(&res.text())
    }
}

pub async fn stats_of(addr: SocketAddr) -> serde_json::Value {
    let res = send(addr, Req::get("/api/v1/stats")).await;
    assert_eq!(res.status, 200, "stats: {res:?}");
    res.json()
}

/// The value of a series without labels in Prometheus text.
fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// A reconnect as an EventSource makes it: the same URL (`?view=ID`) and `Last-Event-ID: ID`.
pub fn reconnect(id: &str) -> Req {
    Req::connect(SLUG, id).header("Last-Event-ID", id)
}

// ---------------------------------------------------------------------------------------------
// Timed waits.

/// Polls `read` every 10 ms until `holds` (true at once counts too); the time it took, or a
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

/// Reads `reader`'s stream until it carries `want`: the time since `since`. Fails at
/// `since + within`, listing what the stream carried.
pub async fn seen_at(
    reader: &mut Reader,
    want: Counts,
    since: Instant,
    within: Duration,
) -> Duration {
    let left = (since + within).saturating_duration_since(Instant::now());
    reader.stream.await_counts(want, left).await;
    since.elapsed()
}

/// Every reader's stream carries `want`: the longest wait since `since`.
pub async fn all_see(
    readers: &mut [Reader],
    want: Counts,
    since: Instant,
    within: Duration,
) -> Duration {
    let waits =
        futures_util::future::join_all(readers.iter_mut().map(|r| seen_at(r, want, since, within)))
            .await;
    waits.into_iter().max().unwrap_or_default()
}

/// Every node answers `want` for the post, and Redis holds `want.total`.
pub async fn cluster_agrees(
    nodes: &[Node],
    redis: &Redis,
    want: Counts,
    within: Duration,
) -> Duration {
    let started = Instant::now();
    for node in nodes {
        let what = format!("count on node {}", node.name);
        time_until(&what, within, || node.counts(), |c| *c == want).await;
    }
    let left = within.saturating_sub(started.elapsed());
    time_until(
        "vc:totals in redis",
        left,
        || redis.total(SLUG),
        |t| *t == want.total,
    )
    .await;
    started.elapsed()
}

/// Prints a measured figure, tagged for the issue note (`-- --nocapture` shows them; a failing
/// test shows its own).
pub fn figure(what: &str, took: Duration) {
    eprintln!("cluster figure: {what}: {} ms", took.as_millis());
}

/// Prints `p50 / p99 / max` of a set of measured durations.
pub fn figures(what: &str, waits: Vec<Duration>) {
    eprintln!("cluster figure: {what}: {}", spread(waits));
}

fn spread(mut waits: Vec<Duration>) -> String {
    waits.sort();
    let at = |q: f64| waits[((waits.len() - 1) as f64 * q).round() as usize];
    format!(
        "p50 {} ms, p99 {} ms, max {} ms over {}",
        at(0.5).as_millis(),
        at(0.99).as_millis(),
        at(1.0).as_millis(),
        waits.len()
    )
}
