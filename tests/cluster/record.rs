//! Redis loses its data (FLUSHALL, a kill -9 with Debian's snapshots-only persistence): every
//! node keeps in its `--db` file what it counted (its record), notices the loss and rebuilds its
//! part of Redis's sums, exactly and once, within 5 s of Redis answering again; a node that was
//! down adds its part when it is back.
//!
//! What the clients saw counted is the [`Load`]'s answers (or each join of a fresh reader with
//! every limit off); "exact" is every node's `/api/v1/totals` and the views of its
//! `/api/v1/history` at that number, and Redis's too.

use std::time::{Duration, Instant};

use crate::support::*;
use testkit::*;

/// The contract: exact within 5 s of Redis answering again.
const REBUILT: Duration = Duration::from_secs(5);

/// [`nodes_exact`], and Redis holds `total` too: the time since `since`.
async fn exact(
    nodes: &[Node],
    redis: &Redis,
    total: u64,
    since: Instant,
    within: Duration,
) -> Duration {
    let left = || (since + within).saturating_duration_since(Instant::now());
    nodes_exact(nodes, &[(SLUG, total)], since, within).await;
    time_until("vc:totals", left(), || redis.total(SLUG), |t| *t == total).await;
    time_until(
        "vc:day:*",
        left(),
        || redis.day_views(SLUG),
        |v| *v == total,
    )
    .await;
    since.elapsed()
}

/// `n` joins of fresh readers on `node`, one after the other.
async fn views(node: &Node, n: usize) {
    for _ in 0..n {
        node.join().await.stream.reset();
    }
}

#[actix_web::test]
async fn a_flushall_under_100_joins_a_second_leaves_every_node_with_exact_totals_and_days_within_5_s()
 {
    let _serial = one_at_a_time().await;
    let Some(redis) = Redis::start().await else {
        return;
    };
    let nodes = Node::start_many(&redis, &["a", "b", "c"], &[]).await;
    let mut load = Load::new();
    let mut flushed = None;
    for n in 0..400 {
        load.tick().await;
        if n == 300 {
            let () = redis.query(&redis::cmd("FLUSHALL")).await;
            flushed = Some(Instant::now());
        }
        load.join(&nodes, n);
    }
    let counted = load.finish().await;
    let flushed = flushed.expect("flushed during the load");
    let total = counted.len() as u64;
    let took = exact(&nodes, &redis, total, flushed, REBUILT).await;
    figure(
        "FLUSHALL under 100 joins/s to every node's totals and days exact",
        took,
    );
    for node in &nodes {
        assert!(
            node.stat("rebuilds").await >= 2,
            "node {}: a rebuild after the start's",
            node.name
        );
    }
}

#[actix_web::test]
async fn redis_killed_with_debians_default_persistence_and_restarted_leaves_exact_totals_and_days()
{
    let _serial = one_at_a_time().await;
    let Some(mut redis) = Redis::start_debian_default().await else {
        return;
    };
    let nodes = Node::start_many(&redis, &["a", "b"], &[]).await;
    let mut load = Load::new();
    for n in 0..100 {
        load.tick().await;
        load.join(&nodes, n);
    }
    let total = load.finish().await.len() as u64;
    exact(&nodes, &redis, total, Instant::now(), SETTLE).await;

    redis.kill_9();
    redis.restart().await;
    let back = Instant::now();
    let took = exact(&nodes, &redis, total, back, REBUILT).await;
    figure(
        "Redis (Debian's persistence) kill -9 and restart to exact totals and days",
        took,
    );
}

#[actix_web::test]
async fn redis_and_a_node_killed_at_once_leave_exact_totals_and_days_once_the_node_is_back() {
    let _serial = one_at_a_time().await;
    let Some(mut redis) = Redis::start_debian_default().await else {
        return;
    };
    let mut nodes = Node::start_many(&redis, &["a", "b"], &[]).await;
    let mut load = Load::new();
    for n in 0..100 {
        load.tick().await;
        load.join(&nodes, n);
    }
    let counted = load.finish().await;
    let total = counted.len() as u64;
    let on_a = counted.iter().filter(|a| a.node == 0).count() as u64;
    exact(&nodes, &redis, total, Instant::now(), SETTLE).await;
    // Killed once its record is on disk: what its writer flushed is what it adds back.
    time_until(
        "node b's record written",
        SETTLE,
        || nodes[1].stat("record_unwritten"),
        |n| *n == 0,
    )
    .await;

    let mut b = nodes.pop().expect("node b");
    b.server.kill_9().await;
    redis.kill_9();
    redis.restart().await;
    // Node a rebuilds its part alone: its views, none of b's.
    let what = "node a's part alone";
    time_until(what, REBUILT, || redis.total(SLUG), |t| *t == on_a).await;

    let b = b.back(&redis, &[]).await;
    nodes.push(b);
    let took = exact(&nodes, &redis, total, Instant::now(), REBUILT).await;
    figure(
        "node killed with Redis, back: to exact totals and days",
        took,
    );
}

#[actix_web::test]
async fn a_restarted_node_adds_its_record_once_at_start_and_once_after_redis_lost_its_data() {
    let _serial = one_at_a_time().await;
    let Some(redis) = Redis::start().await else {
        return;
    };
    let node = Node::start(&redis, "a", &[]).await;
    views(&node, 20).await;
    exact(
        std::slice::from_ref(&node),
        &redis,
        20,
        Instant::now(),
        SETTLE,
    )
    .await;

    node.server.signal("TERM");
    let mut node = node;
    node.server.wait(SETTLE).await;
    // Its start adds its record before it listens: nothing to wait for.
    let node = node.back(&redis, &[]).await;
    assert_eq!(
        node.totals().await,
        rows(&[(SLUG, 20)]),
        "added twice at start"
    );

    let () = redis.query(&redis::cmd("FLUSHALL")).await;
    let nodes = [node];
    let took = exact(&nodes, &redis, 20, Instant::now(), REBUILT).await;
    figure("FLUSHALL to a restarted node's totals exact", took);
}

#[actix_web::test]
async fn a_node_killed_before_it_wrote_its_record_takes_back_what_redis_counted_for_it() {
    let _serial = one_at_a_time().await;
    let Some(redis) = Redis::start().await else {
        return;
    };
    // Nothing is written before the kill.
    let slow = ["--flush-after", "10m", "--flush-max-wait", "10m"];
    let mut node = Node::start(&redis, "a", &slow).await;
    views(&node, 12).await;
    time_until("vc:totals", SETTLE, || redis.total(SLUG), |t| *t == 12).await;
    node.server.kill_9().await;

    // Its start adds its record before it listens: nothing to wait for.
    let node = node.back(&redis, &[]).await;
    let () = redis.query(&redis::cmd("FLUSHALL")).await;
    let nodes = [node];
    exact(&nodes, &redis, 12, Instant::now(), REBUILT).await;
}

#[actix_web::test]
async fn a_retired_nodes_views_live_on_in_a_running_nodes_record_and_its_file_is_refused() {
    let _serial = one_at_a_time().await;
    let Some(redis) = Redis::start().await else {
        return;
    };
    let mut nodes = Node::start_many(&redis, &["a", "b"], &[]).await;
    views(&nodes[0], 5).await;
    views(&nodes[1], 7).await;
    exact(&nodes, &redis, 12, Instant::now(), SETTLE).await;

    let mut b = nodes.pop().expect("node b");
    b.server.signal("TERM");
    b.server.wait(SETTLE).await;
    let (db, slugs) = (b.server.db(), b.server.slugs_file());
    let (db, slugs) = (db.to_str().expect("utf-8"), slugs.to_str().expect("utf-8"));
    let dir = b.server.into_dir();
    let a = format!("http://{}", nodes[0].addr());
    let retire = ["retire", "--db", db, "--url", &a];
    let said = run(dir.path(), &retire).quiet().await.success();
    assert!(said.contains("7 views"), "{said}");
    assert_eq!(redis.total(SLUG).await, 12, "the sums stay");

    // Redis loses its data: node a alone brings back node b's views too.
    let () = redis.query(&redis::cmd("FLUSHALL")).await;
    exact(&nodes, &redis, 12, Instant::now(), REBUILT).await;

    // Node b's file can be neither served nor retired again.
    let url = redis.url();
    let serve = [
        "serve",
        "--db",
        db,
        "--slugs",
        slugs,
        "--listen",
        "127.0.0.1:0",
    ];
    let serve = [&serve[..], &["--redis", &url]].concat();
    for args in [&serve[..], &retire[..]] {
        let out = run(dir.path(), args).quiet().within(SETTLE).await;
        let out = out.unwrap_or_else(|e| panic!("{args:?}: {e}"));
        assert!(!out.status.success(), "{args:?} took a retired file");
        assert!(out.stderr.contains("retired"), "{args:?}: {}", out.stderr);
    }
}

#[actix_web::test]
async fn a_single_servers_file_started_as_a_node_brings_its_totals_and_days_into_the_cluster() {
    let _serial = one_at_a_time().await;
    let Some(redis) = Redis::start().await else {
        return;
    };
    // A single server (no --redis) counts 5 views into its file and stops.
    let mut single = BinServer::start(&UNLIMITED).await;
    for _ in 0..5 {
        single.join(SLUG).await.stream.reset();
    }
    single.signal("TERM");
    single.wait(SETTLE).await;

    let node = Node {
        name: "a".into(),
        server: redis
            .node("a")
            .start_in(single.into_dir(), &UNLIMITED)
            .await,
    };
    let nodes = [node];
    exact(&nodes, &redis, 5, Instant::now(), SETTLE).await;
    let () = redis.query(&redis::cmd("FLUSHALL")).await;
    exact(&nodes, &redis, 5, Instant::now(), REBUILT).await;
}
