//! Reading times and peaks in cluster mode (README "Reading time and peaks"): readers on any
//! node leave reading times that every node's `/api/v1/history` shows summed, with the post's
//! peak of readers at once across the cluster and the site's; Redis losing its data brings
//! them back exactly from the nodes' records, within the same 5 s as views; `export --redis
//! --daily` carries them and an import through a node of another cluster restores them.

use std::time::{Duration, Instant};

use crate::support::*;
use testkit::*;

/// The contract: exact within 5 s of Redis answering again, as views.
const REBUILT: Duration = Duration::from_secs(5);

/// A reading reaches Redis once its node's writer hands it to the record (`--flush-after`
/// of quiet): 1 s here rather than the default 5 s, so the other node shows it sooner.
const FLUSH: [&str; 2] = ["--flush-after", "1s"];

/// Today of [`SLUG`] in `/api/v1/history/{SLUG}?days=1` (views, reads, buckets, median, peak
/// and when), and of the site in `/api/v1/history?days=1` (its reads and peak): what the
/// tests compare between nodes and before and after a loss.
async fn today(node: &Node) -> Option<serde_json::Value> {
    let mut both = Vec::new();
    for path in [
        format!("/api/v1/history/{SLUG}?days=1"),
        "/api/v1/history?days=1".into(),
    ] {
        let res = node.server.send(Req::get(&path)).await;
        if res.status != 200 {
            return None;
        }
        both.push(res.json()["days"][0].clone());
    }
    Some(serde_json::json!({ "post": both[0], "site": both[1] }))
}

/// `POST /api/v1/leave/{SLUG}` on `node` for `reader`, said visible for `ms`.
async fn leave(node: &Node, reader: &Reader, ms: u64) {
    let body = format!("{} 0 {ms}", reader.id);
    let res = node
        .server
        .send(Req::post(format!("/api/v1/leave/{SLUG}"), body))
        .await;
    assert_eq!(res.status, 204, "{}: leave {res:?}", node.name);
}

/// One reader on each node at once, then both gone with a reading time: today as every node
/// shows it once both readings are in (two reads, a peak of two, the site's too).
async fn read_on_both(nodes: &[Node]) -> serde_json::Value {
    let on_a = nodes[0].join().await;
    let mut on_b = nodes[1].join().await;
    // Both nodes show both readers: each post's peak is the cluster's, 2.
    on_b.stream.await_counts(counts(2, 2), SETTLE).await;
    let mut on_a = on_a;
    on_a.stream.await_counts(counts(2, 2), SETTLE).await;
    leave(&nodes[0], &on_a, 100).await;
    leave(&nodes[1], &on_b, 100).await;
    drop((on_a, on_b));
    // Both nodes saw the peak of 2, each at its own time: Redis keeps the earlier, so the
    // nodes agree once both records reached it.
    let both = || async { (today(&nodes[0]).await, today(&nodes[1]).await) };
    let read = |(a, b): &(Option<serde_json::Value>, Option<serde_json::Value>)| {
        a == b
            && a.as_ref().is_some_and(|t| {
                t["post"]["reads"] == 2
                    && t["post"]["peak"] == 2
                    && t["site"]["reads"] == 2
                    && t["site"]["peak"] == 2
            })
    };
    let shown = time_until(
        "two reads and peaks of 2, alike on both nodes",
        SETTLE,
        both,
        read,
    )
    .await;
    figure("readings on two nodes to both nodes' history", shown);
    today(&nodes[0]).await.expect("history")
}

/// Every node shows `shown` within [`REBUILT`] of now (Redis lost its data just before:
/// `after`): the time it took.
async fn all_show(nodes: &[Node], shown: &serde_json::Value, after: &str) -> Duration {
    let since = Instant::now();
    for node in nodes {
        let what = format!("node {}'s day after {after}", node.name);
        let left = REBUILT.saturating_sub(since.elapsed());
        time_until(&what, left, || today(node), |t| t.as_ref() == Some(shown)).await;
    }
    since.elapsed()
}

#[actix_web::test]
async fn readers_on_two_nodes_leave_reading_times_and_a_peak_every_node_shows_and_a_flushall_brings_back()
 {
    let _serial = one_at_a_time().await;
    let Some(redis) = Redis::start().await else {
        return;
    };
    let nodes = Node::start_many(&redis, &["a", "b"], &FLUSH).await;
    let shown = read_on_both(&nodes).await;
    assert_eq!(shown["post"]["views"], 2, "{shown}");
    let buckets = shown["post"]["read_buckets"].as_array().expect("buckets");
    let in_buckets: u64 = buckets.iter().filter_map(serde_json::Value::as_u64).sum();
    assert_eq!(in_buckets, 2, "{shown}");

    let () = redis.query(&redis::cmd("FLUSHALL")).await;
    let took = all_show(&nodes, &shown, "FLUSHALL").await;
    figure(
        "FLUSHALL to every node's reading times and peaks exact",
        took,
    );
}

#[actix_web::test]
async fn redis_killed_without_persistence_and_restarted_brings_back_reading_times_and_peaks_exactly()
 {
    let _serial = one_at_a_time().await;
    let Some(mut redis) = Redis::start_debian_default().await else {
        return;
    };
    let nodes = Node::start_many(&redis, &["a", "b"], &FLUSH).await;
    let shown = read_on_both(&nodes).await;

    redis.kill_9();
    redis.restart().await;
    let took = all_show(&nodes, &shown, "Redis came back").await;
    figure(
        "Redis kill -9 and restart to reading times and peaks exact",
        took,
    );
}

#[actix_web::test]
async fn export_redis_daily_carries_reading_times_and_peaks_that_an_import_through_another_clusters_node_restores()
 {
    let _serial = one_at_a_time().await;
    let Some(redis) = Redis::start().await else {
        return;
    };
    let nodes = Node::start_many(&redis, &["a", "b"], &FLUSH).await;
    let shown = read_on_both(&nodes).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let url = redis.url();
    let export = ["export", "--redis", &url, "--daily"];
    let csv = run(dir.path(), &export).quiet().await.success();
    let day = shown["post"]["day"].as_str().expect("a day");
    let site = format!("\n*,{day},,,,2,");
    assert!(csv.contains(&site), "the site's peak: {csv}");
    let post = format!("\n{SLUG},{day},2,");
    assert!(csv.contains(&post), "{csv}");
    std::fs::write(dir.path().join("days.csv"), &csv).expect("write days.csv");

    // Another cluster: a Redis and a node of its own, into which the file is imported.
    let Some(other) = Redis::start().await else {
        return;
    };
    let c = Node::start(&other, "c", &FLUSH).await;
    let to_c = format!("http://{}", c.addr());
    let import = ["import", "--url", &to_c, "days.csv"];
    run(dir.path(), &import).quiet().await.success();
    let what = "node c's day after the import";
    time_until(what, SETTLE, || today(&c), |t| t.as_ref() == Some(&shown)).await;
    // Node c's record holds the import: Redis losing it changes nothing.
    let () = other.query(&redis::cmd("FLUSHALL")).await;
    let what = "node c's day after FLUSHALL";
    time_until(what, REBUILT, || today(&c), |t| t.as_ref() == Some(&shown)).await;
}

#[actix_web::test]
async fn a_retired_nodes_reading_times_and_peaks_live_on_in_the_node_that_took_its_file() {
    let _serial = one_at_a_time().await;
    let Some(redis) = Redis::start().await else {
        return;
    };
    let mut nodes = Node::start_many(&redis, &["a", "b"], &FLUSH).await;
    // One reader, on node b alone: node a never served the post, so no record but b's holds
    // its reading or its peak.
    let reader = nodes[1].join().await;
    leave(&nodes[1], &reader, 100).await;
    drop(reader);
    let read = |t: &Option<serde_json::Value>| {
        t.as_ref()
            .is_some_and(|t| t["post"]["reads"] == 1 && t["site"]["peak"] == 1)
    };
    time_until(
        "node b's reading on node a",
        SETTLE,
        || today(&nodes[0]),
        read,
    )
    .await;
    let shown = today(&nodes[0]).await.expect("history");

    let mut b = nodes.pop().expect("node b");
    b.server.signal("TERM");
    b.server.wait(SETTLE).await;
    // Redis loses node b's part before node b is retired: only its file holds its readings.
    let () = redis.query(&redis::cmd("FLUSHALL")).await;
    let gone = |t: &Option<serde_json::Value>| t.as_ref().is_some_and(|t| t["post"]["views"] == 0);
    time_until(
        "node a rebuilt without node b",
        SETTLE,
        || today(&nodes[0]),
        gone,
    )
    .await;
    let db = b.server.db();
    let db = db.to_str().expect("utf-8");
    let a = format!("http://{}", nodes[0].addr());
    let dir = b.server.into_dir();
    run(dir.path(), &["retire", "--db", db, "--url", &a])
        .quiet()
        .await
        .success();
    let what = "node a's day once it took node b's file";
    time_until(
        what,
        SETTLE,
        || today(&nodes[0]),
        |t| t.as_ref() == Some(&shown),
    )
    .await;
    let () = redis.query(&redis::cmd("FLUSHALL")).await;
    all_show(&nodes, &shown, "FLUSHALL").await;
}

/// Each script and pipeline of reading times and peaks is of one key group (the site's peaks
/// of group 0): on a Redis Cluster, where a group is one hash slot, none is refused with
/// `CROSSSLOT`, and the post's group and the site's are on masters of their own.
#[actix_web::test]
async fn on_a_redis_cluster_reading_times_and_peaks_of_two_nodes_show_on_both() {
    let _serial = one_at_a_time().await;
    let Some(cluster) = RedisCluster::start().await else {
        return;
    };
    let masters = cluster.masters().await;
    let mut nodes = Vec::new();
    for (name, &master) in ["a", "b"].iter().zip(&masters) {
        nodes.push(Node::start_on(cluster.node(master, name), name, &FLUSH).await);
    }
    let shown = read_on_both(&nodes).await;
    assert_eq!(shown["post"]["views"], 2, "{shown}");
}
