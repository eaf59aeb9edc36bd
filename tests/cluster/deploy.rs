//! The recipe `deploy/cluster/haproxy.cfg`, run as it is with only its ports swapped for the
//! test's own: three nodes behind HAProxy, events passed through at once, and a node killed
//! behind it: its readers' streams are cut, they reconnect through HAProxy to a live node, and
//! they are not counted again. And who the client is through it, with the recipe as it is
//! (`X-Forwarded-For`) and with its documented RFC 7239 `Forwarded` alternative: a client
//! naming another address in either header keeps its own per-client budget.

use std::net::{IpAddr, SocketAddr};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

use crate::support::*;
use testkit::*;

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

fn recipe() -> String {
    std::fs::read_to_string(RECIPE).expect("read the recipe")
}

/// `text` with its addresses swapped for `front` and `nodes`, each found exactly once.
fn templated(mut text: String, front: SocketAddr, nodes: &[SocketAddr]) -> String {
    let ours = std::iter::once(front).chain(nodes.iter().copied());
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
        let addrs: Vec<SocketAddr> = nodes.iter().map(Node::addr).collect();
        Self::start_with(recipe(), &addrs).await
    }

    /// HAProxy on the recipe `text`, its server lines on `nodes` (three of them).
    async fn start_with(text: String, nodes: &[SocketAddr]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let addr: SocketAddr = format!("127.0.0.1:{}", closed_port())
            .parse()
            .expect("addr");
        let config = dir.path().join("haproxy.cfg");
        std::fs::write(&config, templated(text, addr, nodes)).expect("write haproxy.cfg");
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
    let Some(redis) = Redis::start().await else {
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

// ---------------------------------------------------------------------------------------------
// Who the client is, through the recipe.

/// The recipe's two lines that set X-Forwarded-For.
const XFF_LINES: &str = "    http-request del-header x-forwarded-for\n    option forwardfor\n";
/// Its RFC 7239 alternative, commented out: the `del-header` line, then `option forwarded`
/// (HAProxy 2.8+), then the line that takes its place on HAProxy 2.6 and 2.7.
const RFC7239_LINES: [&str; 3] = [
    "    #   http-request del-header forwarded\n",
    "    #   option forwarded\n",
    "    #   http-request set-header forwarded for=%[src]\n",
];

/// `(major, minor)` of the installed HAProxy.
fn haproxy_version() -> (u32, u32) {
    let out = std::process::Command::new("haproxy")
        .arg("-v")
        .output()
        .expect("run haproxy -v");
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text
        .split_whitespace()
        .skip_while(|w| *w != "version")
        .nth(1)
        .unwrap_or_else(|| panic!("no version in {text:?}"));
    let mut parts = version
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

/// The recipe with its `Forwarded` alternative in place of the X-Forwarded-For lines, as its
/// comment says: `option forwarded` where this HAProxy has it, its stand-in on 2.6 and 2.7.
/// Also which of the two it is.
fn rfc7239_recipe() -> (String, &'static str) {
    let text = recipe();
    assert_eq!(
        text.matches(XFF_LINES).count(),
        1,
        "{RECIPE}: {XFF_LINES:?}"
    );
    for line in RFC7239_LINES {
        assert_eq!(text.matches(line).count(), 1, "{RECIPE} documents {line:?}");
    }
    let uncommented = |line: &str| line.replacen("#   ", "", 1);
    let (second, which) = if haproxy_version() >= (2, 8) {
        (RFC7239_LINES[1], "option forwarded")
    } else {
        (RFC7239_LINES[2], "http-request set-header forwarded")
    };
    let lines = uncommented(RFC7239_LINES[0]) + &uncommented(second);
    (text.replacen(XFF_LINES, &lines, 1), which)
}

/// One cluster node reading `header`, one reader per client (`--ip-stream-limit 1`), behind
/// HAProxy on `text` with all three server lines on it, so every stream meets its budget.
async fn limited_node_behind(redis: &Redis, text: String, header: &str) -> (BinServer, Balancer) {
    let flags = ["--ip-stream-limit", "1", "--client-ip-header", header];
    let node = redis.node("node1").start(&flags).await;
    let balancer = Balancer::start_with(text, &[node.addr; 3]).await;
    (node, balancer)
}

/// From 127.0.0.1 through `front`: a reader naming 203.0.113.1 in its own `forged` header is
/// admitted; readers naming other addresses in it, or in `other` (the header the proxy does not
/// set), meet the same budget of one (`429`); a client from 127.0.0.2 is admitted, so the node
/// sees each client's address, not the balancer's.
async fn forged_addresses_share_one_budget(front: SocketAddr, forged: &str, other: &str) {
    let from = |name: &str, value: &str| Req::connect(SLUG, &token()).header(name, value);
    let first = join(front, SLUG, from(forged, "203.0.113.1")).await;
    assert_eq!(first.first.live, 1);
    for (name, value) in [
        (forged, "203.0.113.2"),
        (forged, "203.0.113.1, 203.0.113.2"),
        (other, "203.0.113.3"),
        (other, "for=203.0.113.3"),
    ] {
        let refused = SseClient::open(front, from(name, value)).await;
        assert_eq!(
            refused.status, 429,
            "a client from 127.0.0.1 naming {name}: {value} got a budget of its own: {:?}",
            refused.headers
        );
    }
    let elsewhere: IpAddr = "127.0.0.2".parse().expect("address");
    let mut other_client =
        SseClient::open_from(elsewhere, front, Req::connect(SLUG, &token())).await;
    assert_eq!(
        other_client.status, 200,
        "a client from {elsewhere} was refused: the node sees the balancer for everyone: {:?}",
        other_client.headers
    );
    let numbers = other_client.next_event().await.counts();
    assert_eq!(numbers.map(|c| c.live), Some(2), "{numbers:?}");
}

#[actix_web::test]
async fn through_the_haproxy_recipe_a_forged_forwarding_header_does_not_change_a_clients_budget() {
    let _serial = one_at_a_time().await;
    if !have("haproxy", "haproxy") {
        return;
    }
    let Some(redis) = Redis::start().await else {
        return;
    };
    let (_node, balancer) = limited_node_behind(&redis, recipe(), "x-forwarded-for").await;
    forged_addresses_share_one_budget(balancer.addr, "X-Forwarded-For", "Forwarded").await;
}

#[actix_web::test]
async fn through_the_haproxy_recipe_with_forwarded_a_clients_own_x_forwarded_for_means_nothing() {
    let _serial = one_at_a_time().await;
    if !have("haproxy", "haproxy") {
        return;
    }
    let Some(redis) = Redis::start().await else {
        return;
    };
    let (text, which) = rfc7239_recipe();
    let (_node, balancer) = limited_node_behind(&redis, text, "forwarded").await;
    forged_addresses_share_one_budget(balancer.addr, "Forwarded", "X-Forwarded-For").await;
    eprintln!("cluster figure: the recipe's Forwarded alternative ran with `{which}`");
}
