//! Idle presence costs nothing per post (design.md "Beyond one machine": a node's heartbeat is
//! constant-size whatever it serves): three nodes holding one reader on each of a few posts,
//! then on each of many, cost Redis the same bytes and commands per second while nothing
//! changes. Measured with `INFO stats` deltas (`total_net_input_bytes`,
//! `total_net_output_bytes`, `total_commands_processed`).

use std::time::{Duration, Instant};

use crate::support::*;
use testkit::*;

/// Posts read (one reader each) in the small and the large cluster.
const FEW: usize = 6;
const MANY: usize = 600;
/// How long the idle cost is measured: several heartbeats of every node.
const WINDOW: Duration = Duration::from_secs(4);

/// Redis's traffic counters at one moment.
#[derive(Debug, Clone, Copy)]
struct Counters {
    bytes: u64,
    commands: u64,
    at: Instant,
}

async fn counters(redis: &Redis) -> Counters {
    let info: String = redis.query(redis::cmd("INFO").arg("stats")).await;
    let field = |name: &str| -> u64 {
        info_field(&info, name)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in INFO stats: {info}"))
    };
    Counters {
        bytes: field("total_net_input_bytes") + field("total_net_output_bytes"),
        commands: field("total_commands_processed"),
        at: Instant::now(),
    }
}

/// Bytes (in + out) and commands per second Redis handles while the cluster idles.
#[derive(Debug, Clone, Copy)]
struct Rate {
    bytes: f64,
    commands: f64,
}

async fn idle_rate(redis: &Redis) -> Rate {
    let before = counters(redis).await;
    // A rate needs a window of time: nothing is awaited here, the cluster is only left idle.
    tokio::time::sleep(WINDOW).await;
    let after = counters(redis).await;
    let secs = (after.at - before.at).as_secs_f64();
    Rate {
        bytes: (after.bytes - before.bytes) as f64 / secs,
        commands: (after.commands - before.commands) as f64 / secs,
    }
}

/// One reader on each of posts `p{from}`…`p{to - 1}`, post `i` on node `i mod 3`; returns once
/// every node counts the last one's reader (so every announcement is out).
async fn read_posts(nodes: &[Node], readers: &mut Vec<Reader>, from: usize, to: usize) {
    for i in from..to {
        readers.push(nodes[i % nodes.len()].server.join(&format!("p{i}")).await);
    }
    let last = format!("p{}", to - 1);
    for node in nodes {
        await_value(
            "the last post's reader, on every node",
            1,
            SETTLE,
            || async { node.server.counts(&last).await.live },
        )
        .await;
    }
}

/// The joins raised each post's peak and the site's: the nodes' writers hand them to Redis
/// with their next flush (`--flush-after`, 100 ms here), each node's at its own pace. The idle
/// window starts once Redis holds the peak of every one of the `readers` posts and the site's
/// peak of `readers`, so it measures idling, not the joins' writes.
async fn peaks_written(nodes: &[Node], redis: &Redis, readers: usize) {
    use viewcounter::cluster::keys::Group;
    let res = nodes[0]
        .server
        .send(Req::get("/api/v1/history?days=1"))
        .await;
    let day: u32 = res.json()["days"][0]["day"]
        .as_str()
        .unwrap_or_default()
        .replace('-', "")
        .parse()
        .expect("a day");
    let written = || async {
        let keys: Vec<String> = redis
            .query(redis::cmd("KEYS").arg(format!("vc:*:peaks:{day}")))
            .await;
        let mut posts = 0;
        for key in keys {
            posts += redis.query::<usize>(redis::cmd("HLEN").arg(&key)).await;
        }
        let site: Option<String> = redis
            .query(redis::cmd("HGET").arg(Group::SITE.site_peaks()).arg(day))
            .await;
        (posts, site)
    };
    let reached = |(posts, site): &(usize, Option<String>)| {
        *posts == readers
            && site
                .as_deref()
                .is_some_and(|p| p.starts_with(&format!("{readers} ")))
    };
    time_until(
        "every post's peak and the site's in Redis",
        SETTLE,
        written,
        reached,
    )
    .await;
}

#[actix_web::test]
async fn an_idle_cluster_costs_redis_as_much_with_600_posts_read_as_with_6() {
    let _serial = one_at_a_time().await;
    let Some(redis) = Redis::start().await else {
        return;
    };
    let flags = [
        "--allow-any-slug",
        "--flush-after",
        "100ms",
        "--flush-max-wait",
        "100ms",
    ];
    let nodes = Node::start_many(&redis, &["a", "b", "c"], &flags).await;
    let mut readers = Vec::new();
    read_posts(&nodes, &mut readers, 0, FEW).await;
    peaks_written(&nodes, &redis, FEW).await;
    let few = idle_rate(&redis).await;
    read_posts(&nodes, &mut readers, FEW, MANY).await;
    peaks_written(&nodes, &redis, MANY).await;
    let many = idle_rate(&redis).await;
    eprintln!(
        "cluster figure: idle Redis, 3 nodes: {FEW} posts read: {:.0} B/s, {:.1} commands/s; \
         {MANY} posts read: {:.0} B/s, {:.1} commands/s",
        few.bytes, few.commands, many.bytes, many.commands
    );
    // Slack for a heartbeat more or less in a window, and the timestamps' digits.
    assert!(
        many.bytes <= few.bytes * 1.25 + 500.0,
        "idle Redis traffic grew with the posts read: {few:?} with {FEW} posts, {many:?} with {MANY}"
    );
    assert!(
        many.commands <= few.commands * 1.25 + 5.0,
        "idle Redis commands grew with the posts read: {few:?} with {FEW} posts, {many:?} with {MANY}"
    );
    assert_eq!(readers.len(), MANY, "every reader still open");
}
