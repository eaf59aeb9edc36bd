//! What the cluster tests say beyond the shared test kit (its `Redis`, its node builder, its
//! client): the contract's bounds, nodes as real binaries named after their place in a test,
//! and timed waits whose figures are printed.
//!
//! Nothing here sleeps to synchronise: waiting is polling a process, a stream or an endpoint
//! until a condition holds, with a deadline, and the time it took is handed back to print.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use tokio::sync::{Mutex, MutexGuard};

use testkit::*;

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
// One test at a time.

/// Cluster tests run one at a time: each starts Redis and up to three nodes, and its timing
/// bounds (1 s) mean something only when the others are not competing for the same cores.
/// (An async mutex: each test has a runtime of its own, and a test that fails releases it.)
pub async fn one_at_a_time() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::const_new(());
    SERIAL.lock().await
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
        Self::start_on(redis.node(name), name, extra).await
    }

    /// The node `on` names `name` (on a [`Redis`] or a member of a [`RedisCluster`]).
    pub async fn start_on(on: NodeOn<'_>, name: &str, extra: &[&str]) -> Self {
        let mut flags = UNLIMITED.to_vec();
        flags.extend(extra);
        Self {
            name: name.to_owned(),
            server: on.start(&flags).await,
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
        stats(self.addr()).await
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
        metric(self.addr(), series).await
    }

    /// `/api/v1/totals` of this node: `(slug, total)` rows.
    pub async fn totals(&self) -> Vec<(String, u64)> {
        let res = self.server.send(Req::get("/api/v1/totals")).await;
        assert_eq!(res.status, 200, "{}: totals {res:?}", self.name);
        parse_rows(&res.text())
    }
}

impl Node {
    /// The same node (its name, its `--db`) started again once its process has exited.
    pub async fn back(self, redis: &Redis, extra: &[&str]) -> Self {
        let mut flags = UNLIMITED.to_vec();
        flags.extend(extra);
        let dir = self.server.into_dir();
        Self {
            server: redis.node(&self.name).start_in(dir, &flags).await,
            name: self.name,
        }
    }

    /// A number of `/api/v1/stats` (cluster mode: `"rebuilds"`, `"record_unwritten"`, …).
    pub async fn stat(&self, name: &str) -> u64 {
        let stats = self.stats().await;
        stats[name]
            .as_u64()
            .unwrap_or_else(|| panic!("{}: no \"{name}\" in stats {stats}", self.name))
    }

    /// `/api/v1/totals`, or `None` while the node cannot read them (Redis down: `503`).
    pub async fn totals_if_any(&self) -> Option<Vec<(String, u64)>> {
        let res = self.server.send(Req::get("/api/v1/totals")).await;
        (res.status == 200).then(|| parse_rows(&res.text()))
    }

    /// The post's views on each day of `/api/v1/history/{SLUG}?days=2`, added up; `None` while
    /// the node cannot read them.
    pub async fn history_views(&self) -> Option<u64> {
        let path = format!("/api/v1/history/{SLUG}?days=2");
        let res = self.server.send(Req::get(&path)).await;
        if res.status != 200 {
            return None;
        }
        let history: serde_json::Value = serde_json::from_str(&res.text()).expect("json history");
        let days = history["days"].as_array().expect("days");
        Some(
            days.iter()
                .map(|d| d["views"].as_u64().expect("views"))
                .sum(),
        )
    }
}

/// Every node's `/api/v1/totals` is `totals` and the history of [`SLUG`] holds its total's
/// views, by `since + within`: the time since `since`.
pub async fn nodes_exact(
    nodes: &[Node],
    totals: &[(&str, u64)],
    since: Instant,
    within: Duration,
) -> Duration {
    let left = || (since + within).saturating_duration_since(Instant::now());
    let total = totals.iter().find(|(slug, _)| *slug == SLUG).map(|t| t.1);
    for node in nodes {
        let what = format!("totals of node {}", node.name);
        let mut want = rows(totals);
        want.sort();
        let sorted = || async {
            let mut totals = node.totals_if_any().await?;
            totals.sort();
            Some(totals)
        };
        time_until(&what, left(), sorted, |t| t.as_ref() == Some(&want)).await;
        let what = format!("history of node {}", node.name);
        time_until(&what, left(), || node.history_views(), |v| *v == total).await;
    }
    since.elapsed()
}

// ---------------------------------------------------------------------------------------------
// Load.

/// A join must be answered within this even while Redis is gone, stalled or being rebuilt:
/// the 250 ms call timeout and a busy machine's margin.
pub const JOIN_ANSWER: Duration = Duration::from_secs(2);

/// What one join of a [`Load`] saw.
#[derive(Debug)]
pub struct Answer {
    pub id: String,
    pub node: usize,
    pub took: Duration,
}

type Answers = Rc<RefCell<Vec<Result<Answer, String>>>>;

/// 100 joins a second, each with a reader id never seen before from a browser, on the nodes in
/// turn. Every limit is off, so by the counting rules each join answered `200` with a first
/// event carrying its reader id is one counted view: the views the clients saw counted are
/// the answers [`Load::finish`] hands back.
pub struct Load {
    tick: tokio::time::Interval,
    answers: Answers,
    tasks: Vec<actix_web::rt::task::JoinHandle<()>>,
}

impl Load {
    pub fn new() -> Self {
        Self {
            tick: tokio::time::interval(Duration::from_millis(10)),
            answers: Answers::default(),
            tasks: Vec::new(),
        }
    }

    /// Waits for the next join's turn.
    pub async fn tick(&mut self) {
        self.tick.tick().await;
    }

    /// Sends the `n`th join, to node `n` modulo their number.
    pub fn join(&mut self, nodes: &[Node], n: usize) {
        let node = n % nodes.len();
        let answers = Rc::clone(&self.answers);
        self.tasks.push(actix_web::rt::spawn(join_once(
            nodes[node].addr(),
            node,
            answers,
        )));
    }

    /// Every join answered (the test fails on one that was not): the views counted.
    pub async fn finish(self) -> Vec<Answer> {
        for task in self.tasks {
            task.await.expect("join task");
        }
        let answers = std::mem::take(&mut *self.answers.borrow_mut());
        let failed: Vec<&String> = answers.iter().filter_map(|a| a.as_ref().err()).collect();
        assert!(
            failed.is_empty(),
            "{} joins failed: {failed:?}",
            failed.len()
        );
        answers.into_iter().filter_map(Result::ok).collect()
    }
}

async fn join_once(addr: SocketAddr, node: usize, answers: Answers) {
    let id = token();
    let started = Instant::now();
    let joined = tokio::time::timeout(JOIN_ANSWER, try_join(addr, SLUG, Req::connect(SLUG, &id)));
    let answer = match joined.await {
        Err(_) => Err(format!(
            "node {node}: no first event within {JOIN_ANSWER:?}"
        )),
        Ok(Err(e)) => Err(format!("node {node}: {e}")),
        Ok(Ok(reader)) if reader.id != id => Err(format!("node {node}: id {}", reader.id)),
        Ok(Ok(reader)) => {
            reader.stream.reset();
            Ok(Answer {
                id,
                node,
                took: started.elapsed(),
            })
        }
    };
    answers.borrow_mut().push(answer);
}

/// A reconnect as an EventSource makes it: the same URL (`?view=ID`) and `Last-Event-ID: ID`.
pub fn reconnect(id: &str) -> Req {
    Req::connect(SLUG, id).header("Last-Event-ID", id)
}

// ---------------------------------------------------------------------------------------------
// Timed waits.

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
