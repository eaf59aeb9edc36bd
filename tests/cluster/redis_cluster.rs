//! `--redis` given a master of a Redis Cluster (three masters, a replica each, on loopback):
//! the node finds it is one, counts each view in one hash slot (its post's key group), and
//! after a master is killed with -9 and its replica promoted, every node is exact again within
//! 10 s: nothing lost (a replica may miss its master's last writes: the records rebuild them),
//! nothing doubled.

use std::time::{Duration, Instant};

use viewcounter::cluster::keys::{Group, post_channel};

use crate::support::*;
use testkit::*;

/// The contract: exact within 10 s of a Redis Cluster failover.
const AFTER_FAILOVER: Duration = Duration::from_secs(10);

/// Posts of other key groups than [`SLUG`]'s, so several masters count.
const OTHERS: [&str; 3] = ["beta", "gamma", "2024/05/my_post.html"];

/// Three nodes, each given another master's URL.
async fn nodes_on(cluster: &RedisCluster) -> Vec<Node> {
    let masters = cluster.masters().await;
    assert_eq!(masters.len(), 3, "three masters");
    let mut nodes = Vec::new();
    for (name, &master) in ["a", "b", "c"].iter().zip(&masters) {
        nodes.push(Node::start_on(cluster.node(master, name), name, &[]).await);
    }
    nodes
}

/// `n` views of `slug` from fresh readers, on each node in turn.
async fn views_of(nodes: &[Node], slug: &str, n: usize) {
    for i in 0..n {
        nodes[i % nodes.len()]
            .server
            .join(slug)
            .await
            .stream
            .reset();
    }
}

#[actix_web::test]
async fn three_nodes_on_a_redis_cluster_count_every_view_once_and_every_node_reads_the_same_totals()
{
    let _serial = one_at_a_time().await;
    let Some(cluster) = RedisCluster::start().await else {
        return;
    };
    let nodes = nodes_on(&cluster).await;
    for node in &nodes {
        let stats = node.stats().await;
        assert_eq!(stats["redis_mode"], "cluster", "{}: {stats}", node.name);
    }
    let mut load = Load::new();
    for n in 0..150 {
        load.tick().await;
        load.join(&nodes, n);
    }
    let total = load.finish().await.len() as u64;
    for (i, slug) in OTHERS.iter().enumerate() {
        views_of(&nodes, slug, 3 + i).await;
    }
    let mut want = vec![(SLUG, total)];
    want.extend(OTHERS.iter().enumerate().map(|(i, s)| (*s, 3 + i as u64)));
    let took = nodes_exact(&nodes, &want, Instant::now(), SETTLE).await;
    figure("Redis Cluster: every node's totals and days exact", took);
    // Readers see the same total on every node.
    for node in &nodes {
        assert_eq!(node.counts().await.total, total, "node {}", node.name);
        assert_eq!(node.stat("rebuilds").await, 1, "node {}", node.name);
    }
}

#[actix_web::test]
async fn a_redis_cluster_master_killed_under_load_and_its_replica_promoted_leaves_every_node_exact_within_10_s()
 {
    let _serial = one_at_a_time().await;
    let Some(mut cluster) = RedisCluster::start().await else {
        return;
    };
    let nodes = nodes_on(&cluster).await;
    let key = Group::of(SLUG).totals();
    let victim = cluster.master_of(&key).await;
    let mut load = Load::new();
    let mut killed = None;
    for n in 0..400 {
        load.tick().await;
        if n == 150 {
            cluster.kill_9(victim);
            killed = Some(Instant::now());
        }
        load.join(&nodes, n);
    }
    let killed = killed.expect("killed during the load");
    let counted = load.finish().await;
    let total = counted.len() as u64;
    // Its replica took its slots (the load took longer than the failover).
    cluster.serving(Some((victim, &key))).await;
    let took = nodes_exact(&nodes, &[(SLUG, total)], killed, AFTER_FAILOVER).await;
    figure(
        "Redis Cluster: master kill -9 under 100 joins/s to every node's totals and days exact",
        took,
    );
    // Readers see it too, on every node, within the bound.
    let left = || AFTER_FAILOVER.saturating_sub(killed.elapsed());
    for node in &nodes {
        let what = format!("readers' total on node {}", node.name);
        time_until(&what, left(), || node.counts(), |c| c.total == total).await;
    }
    figure(
        "Redis Cluster: master kill -9 under 100 joins/s to readers' totals exact on every node",
        killed.elapsed(),
    );
    for node in &nodes {
        let what = format!("outbox of node {}", node.name);
        let pending = || node.metric("viewcounter_outbox_pending");
        time_until(&what, SETTLE, pending, |p| *p == Some(0.0)).await;
    }
    // Nothing counted twice, late: the totals stay. (A read that timed out on a loaded
    // machine says nothing either way; every node must still answer some.)
    let still = Instant::now() + Duration::from_millis(1500);
    let mut answered = vec![0; nodes.len()];
    while Instant::now() < still {
        for (node, answered) in nodes.iter().zip(&mut answered) {
            if let Some(totals) = node.totals_if_any().await {
                assert_eq!(totals, rows(&[(SLUG, total)]), "node {}", node.name);
                *answered += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        answered.iter().all(|&n| n > 0),
        "reads answered: {answered:?}"
    );
}

/// The `redis` crate's cluster client sends a `SUBSCRIBE` of several channels to the master of
/// the first one's slot and an `UNSUBSCRIBE` to the master of its own first channel's: posts
/// woken together and put to sleep one by one must still leave no subscription behind on
/// any member (`PUBSUB NUMSUB` summed over the members).
#[actix_web::test]
async fn on_a_redis_cluster_a_node_unsubscribes_from_every_post_that_went_to_sleep() {
    let _serial = one_at_a_time().await;
    let Some(cluster) = RedisCluster::start().await else {
        return;
    };
    // No dedupe memory: a post with no reader left goes to sleep after its idle grace.
    let node = Node::start_on(
        cluster.node(0, "a"),
        "a",
        &["--dedupe-window", "0s", "--allow-any-slug"],
    )
    .await;
    // Posts of many key groups, woken at once: their channels are subscribed in bursts.
    let slugs: Vec<String> = (0..24).map(|i| format!("post-{i}")).collect();
    let readers =
        futures_util::future::join_all(slugs.iter().map(|slug| node.server.join(slug))).await;
    for slug in &slugs {
        let channel = post_channel(slug);
        time_until(
            &format!("{slug}: subscribed once"),
            SETTLE,
            || cluster.subscribers(&channel),
            |n| *n == 1,
        )
        .await;
    }
    drop(readers);
    time_until(
        "every post asleep",
        SETTLE * 2,
        || node.stat("posts_awake"),
        |n| *n == 0,
    )
    .await;
    for slug in &slugs {
        let channel = post_channel(slug);
        time_until(
            &format!("{slug}: unsubscribed on every member"),
            SETTLE,
            || cluster.subscribers(&channel),
            |n| *n == 0,
        )
        .await;
    }
}
