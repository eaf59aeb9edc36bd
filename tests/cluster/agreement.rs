//! Merged presence and shared totals: every reader of a post sees the same numbers, whichever
//! node serves it, and a change on one node reaches readers on every other within 1 s.

use std::time::{Duration, Instant};

use crate::support::*;
use testkit::*;

/// Readers joined one at a time, on the nodes in turn.
const JOINS: u64 = 9;

#[actix_web::test]
async fn readers_on_every_node_agree_on_live_and_total_and_a_join_on_a_reaches_c_within_a_second() {
    let _serial = one_at_a_time().await;
    let Some(redis) = Redis::start().await else {
        return;
    };
    let nodes = Node::start_many(&redis, &["a", "b", "c"], &[]).await;
    let mut readers: Vec<Reader> = Vec::new();
    let mut served_by: Vec<usize> = Vec::new();
    let mut elsewhere = Vec::new();
    let mut dips = Vec::new();
    for n in 1..=JOINS {
        let on = (n as usize - 1) % nodes.len();
        let joined = Instant::now();
        let reader = nodes[on].join().await;
        // Everything before this join had reached every node, so the joining node knows it:
        // its first event is already the merged live and the cluster's total.
        assert_eq!(
            reader.first,
            counts(n, n),
            "first event of join {n} on node {}",
            nodes[on].name
        );
        let want = counts(n, n);
        let waits = futures_util::future::join_all(readers.iter_mut().map(|r| async move {
            let seen = r.stream.await_counts(want, SETTLE).await;
            (joined.elapsed(), seen)
        }))
        .await;
        for ((took, seen), &node) in waits.into_iter().zip(&served_by) {
            if node != on {
                elsewhere.push(took);
            }
            // Only joins happen here: no reader may see its live or total go down on the way.
            let mut last = counts(n - 1, n - 1);
            for c in seen {
                if c.live < last.live || c.total < last.total {
                    dips.push(format!(
                        "join {n}: a reader on node {node} saw {last:?} then {c:?}"
                    ));
                }
                last = c;
            }
        }
        readers.push(reader);
        served_by.push(on);
    }
    let slowest = elsewhere.iter().max().copied().unwrap_or_default();
    figures(
        "a join on one node seen by readers on the others",
        elsewhere,
    );
    assert!(
        slowest <= PRESENCE,
        "a join reached a reader on another node after {slowest:?} (contract: {PRESENCE:?})"
    );
    assert!(
        dips.is_empty(),
        "numbers went down while readers only joined: {dips:#?}"
    );
    let want = counts(JOINS, JOINS);
    cluster_agrees(&nodes, &redis, want, SETTLE).await;
    for node in &nodes {
        assert_eq!(
            node.totals().await,
            rows(&[(SLUG, JOINS)]),
            "node {}",
            node.name
        );
    }
    assert_eq!(redis.day_views(SLUG).await, JOINS, "views per day in redis");
}

#[actix_web::test]
async fn a_reader_leaving_node_c_leaves_live_on_a_within_a_second() {
    let _serial = one_at_a_time().await;
    let Some(redis) = Redis::start().await else {
        return;
    };
    let nodes = Node::start_many(&redis, &["a", "b", "c"], &[]).await;
    let mut on_a = vec![nodes[0].join().await];
    let on_c = nodes[2].join().await;
    all_see(&mut on_a, counts(2, 2), Instant::now(), SETTLE).await;
    let left = Instant::now();
    on_c.stream.close();
    let took = all_see(&mut on_a, counts(1, 2), left, SETTLE).await;
    figure("a reader closing on c leaves live on a", took);
    assert!(took <= PRESENCE, "live fell on a after {took:?}");
    // Agreement holds without readers, too: the count endpoints of every node.
    cluster_agrees(&nodes, &redis, counts(1, 2), Duration::from_secs(2)).await;
}
