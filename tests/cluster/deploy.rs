//! The recipe `deploy/cluster/haproxy.cfg`, run as it is with only its ports swapped for the
//! test's own: three nodes behind HAProxy, events passed through at once, and a node killed
//! behind it: its readers' streams are cut, they reconnect through HAProxy to a live node, and
//! they are not counted again.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

use crate::helpers::*;
use crate::support::*;

const RECIPE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/cluster/haproxy.cfg");
/// The addresses the recipe is written for: its frontend, then its nodes.
const FRONTEND: &str = "127.0.0.1:8080";
const NODES: [&str; 3] = ["127.0.0.1:8081", "127.0.0.1:8082", "127.0.0.1:8083"];
/// Readers opened through the balancer.
const READERS: u64 = 6;

/// HAProxy in the foreground on the recipe, killed on drop.
struct Balancer {
    addr: SocketAddr,
    _dir: tempfile::TempDir,
    _child: Child,
}

/// The recipe with its addresses swapped for `front` and `nodes`, each found exactly once.
fn templated(front: SocketAddr, nodes: &[Node]) -> String {
    let mut text = std::fs::read_to_string(RECIPE).expect("read the recipe");
    let ours = std::iter::once(front).chain(nodes.iter().map(Node::addr));
    for (theirs, ours) in std::iter::once(FRONTEND).chain(NODES).zip(ours) {
        let line_end = |s: &str| format!("{s}\n");
        assert_eq!(
            text.matches(&line_end(theirs)).count(),
            1,
            "{RECIPE} names {theirs} once"
        );
        text = text.replace(&line_end(theirs), &line_end(&ours.to_string()));
    }
    text
}

impl Balancer {
    async fn start(nodes: &[Node]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let addr: SocketAddr = format!("127.0.0.1:{}", closed_port())
            .parse()
            .expect("addr");
        let config = dir.path().join("haproxy.cfg");
        std::fs::write(&config, templated(addr, nodes)).expect("write haproxy.cfg");
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(dir.path().join("haproxy.log")).expect("log"),
            ))
            .kill_on_drop(true)
            .spawn()
            .expect("spawn haproxy");
        let up = || async move { try_send(addr, Req::get("/healthz")).await };
        time_until("haproxy answering /healthz", SETTLE, up, |ok| *ok).await;
        Self {
            addr,
            _dir: dir,
            _child: child,
        }
    }
}

/// True when `req` is answered `200` (a refused connection is false, not a failure).
async fn try_send(addr: SocketAddr, req: Req) -> bool {
    match SseClient::try_open(addr, req).await {
        Ok(res) => res.status == 200,
        Err(_) => false,
    }
}

/// How a reader's stream fared after the kill: cut, or reached `want` after a while.
async fn cut_or_sees(reader: &mut Reader, want: Counts, since: Instant) -> Option<Duration> {
    let until = since + SETTLE;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        match reader.stream.next_event_within(left).await {
            Ok(Some(ev)) if ev.counts() == Some(want) => return Some(since.elapsed()),
            Ok(Some(_)) => {}
            Ok(None) => return None,
            Err(e) if e.starts_with("no event within") => {
                panic!("a stream neither cut nor at {want:?} within {SETTLE:?}")
            }
            // Closed mid-body: HAProxy aborts the answer of a node that died.
            Err(_) => return None,
        }
    }
}

#[actix_web::test]
async fn a_node_killed_behind_the_haproxy_recipe_loses_no_reader_and_counts_none_again() {
    let _serial = one_at_a_time().await;
    if !have("haproxy", "haproxy") {
        return;
    }
    let Some(redis) = Redis::start_or_skip().await else {
        return;
    };
    let mut nodes = Node::start_many(&redis, &["node1", "node2", "node3"], &[]).await;
    let balancer = Balancer::start(&nodes).await;
    let front = balancer.addr;

    let mut readers = Vec::new();
    for _ in 0..READERS {
        readers.push(join(front, SLUG, Req::connect(SLUG, &token())).await);
    }
    all_see(
        &mut readers,
        counts(READERS, READERS),
        Instant::now(),
        SETTLE,
    )
    .await;
    // Events pass the balancer at once: one more join reaches every reader within 1 s.
    let joined = Instant::now();
    readers.push(join(front, SLUG, Req::connect(SLUG, &token())).await);
    let all = READERS + 1;
    let took = all_see(&mut readers, counts(all, all), joined, SETTLE).await;
    figure("a join through haproxy seen by every reader", took);
    assert!(
        took <= PRESENCE,
        "through haproxy a join took {took:?} to reach every reader"
    );

    let mut on_node = Vec::new();
    for node in &nodes {
        on_node.push(node.stats().await["streams"].as_u64().expect("streams"));
    }
    assert!(
        on_node.iter().all(|&n| n > 0),
        "leastconn spreads the readers: {on_node:?}"
    );
    let mut victim = nodes.remove(1);
    let cut = on_node[1];
    let killed = Instant::now();
    victim.server.kill_9().await;
    let want = counts(all - cut, all);
    let fared =
        futures_util::future::join_all(readers.iter_mut().map(|r| cut_or_sees(r, want, killed)))
            .await;
    let lost = fared.iter().filter(|f| f.is_none()).count() as u64;
    assert_eq!(lost, cut, "exactly the killed node's streams are cut");
    let slowest = fared.iter().flatten().max().copied().unwrap_or_default();
    figure(
        "kill -9 of a node behind haproxy to live falling on the others",
        slowest,
    );
    assert!(slowest <= NODE_EXPIRY, "live fell after {slowest:?}");

    // The cut readers reconnect at once, as an EventSource does: through the balancer, which
    // must send them to a live node without an error, and not counted again.
    let mut kept = Vec::new();
    for (reader, fate) in readers.into_iter().zip(&fared) {
        if fate.is_some() {
            kept.push(reader);
            continue;
        }
        let mut again = SseClient::open(front, reconnect(&reader.id)).await;
        assert_eq!(
            again.status, 200,
            "reconnect through haproxy: {:?}",
            again.headers
        );
        let first = again.next_event().await;
        assert_eq!(
            first.counts().map(|c| c.total),
            Some(all),
            "counted again: {first:?}"
        );
        kept.push(Reader {
            id: reader.id,
            first: first.counts().expect("numbers"),
            stream: again,
        });
    }
    all_see(&mut kept, counts(all, all), Instant::now(), SETTLE).await;
    cluster_agrees(&nodes, &redis, counts(all, all), SETTLE).await;
}
