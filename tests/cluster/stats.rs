//! `/api/v1/stats` in cluster mode: `"nodes"` counts the live nodes (this one included) and a
//! dead node leaves it with its presence; `"redis"` says whether Redis answers. Without
//! `--redis` the stats are what they always were.

use std::time::Instant;

use crate::support::*;
use testkit::*;

#[actix_web::test]
async fn stats_count_the_live_nodes_and_drop_a_killed_one_within_five_seconds_and_a_stopped_one_within_one()
 {
    let _serial = one_at_a_time().await;
    let Some(redis) = Redis::start().await else {
        return;
    };
    let mut nodes = Node::start_many(&redis, &["a", "b", "c"], &[]).await;
    for node in &nodes {
        let what = format!("nodes seen by {}", node.name);
        time_until(&what, SETTLE, || node.nodes_seen(), |n| *n == 3).await;
        // Awaited, not read once: a Redis call that outlasts --redis-timeout on a busy machine
        // (a compile next door) marks Redis down until the next one answers, as it should.
        let what = format!("redis ok on {}", node.name);
        time_until(&what, SETTLE, || node.redis_state(), |s| s == "ok").await;
    }

    let mut c = nodes.pop().expect("node c");
    let killed = Instant::now();
    c.server.kill_9().await;
    for node in &nodes {
        let what = format!("nodes seen by {} after kill -9 of c", node.name);
        time_until(&what, SETTLE, || node.nodes_seen(), |n| *n == 2).await;
    }
    let took = killed.elapsed();
    figure(
        "kill -9 of a node to `nodes` dropping it on the others",
        took,
    );
    assert!(
        took <= NODE_EXPIRY,
        "a killed node left `nodes` after {took:?}"
    );

    let mut b = nodes.pop().expect("node b");
    let stopped = Instant::now();
    b.server.signal("TERM");
    let a = &nodes[0];
    time_until(
        "nodes seen by a after SIGTERM of b",
        SETTLE,
        || a.nodes_seen(),
        |n| *n == 1,
    )
    .await;
    let took = stopped.elapsed();
    figure(
        "SIGTERM of a node to `nodes` dropping it on the others",
        took,
    );
    assert!(
        took <= PRESENCE,
        "a stopped node left `nodes` after {took:?}"
    );
    b.server.wait(STOP_TIMEOUT).await;
}

#[actix_web::test]
async fn a_node_without_redis_reports_neither_nodes_nor_redis_in_its_stats() {
    let server = BinServer::start(&[]).await;
    let stats = stats(server.addr).await;
    assert!(stats.get("nodes").is_none(), "{stats}");
    assert!(stats.get("redis").is_none(), "{stats}");
    assert!(stats.get("streams").is_some(), "{stats}");
}

/// Every node must count with the same `--dedupe-window` (the shared records are one window
/// long): a node started with another is named by the others' stats, and they by its, within
/// a heartbeat or two; nodes that agree name nobody.
#[actix_web::test]
async fn stats_name_the_nodes_that_count_with_another_dedupe_window() {
    let _serial = one_at_a_time().await;
    let Some(redis) = Redis::start().await else {
        return;
    };
    let nodes = Node::start_many(&redis, &["a", "b"], &["--dedupe-window", "30m"]).await;
    let c = Node::start(&redis, "c", &["--dedupe-window", "10m"]).await;
    let conflicts = async |node: &Node| node.stats().await["dedupe_window_conflicts"].clone();
    for node in &nodes {
        let what = format!("{} names c", node.name);
        time_until(
            &what,
            SETTLE,
            || conflicts(node),
            |got| {
                got.as_object()
                    .is_some_and(|o| o.len() == 1 && o.values().all(|w| w == 600.0))
            },
        )
        .await;
    }
    time_until(
        "c names a and b",
        SETTLE,
        || conflicts(&c),
        |got| {
            got.as_object()
                .is_some_and(|o| o.len() == 2 && o.values().all(|w| w == 1800.0))
        },
    )
    .await;
}
