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
            let what = format!("join {n}: a reader on node {node}");
            dips.extend(downs(&what, counts(n - 1, n - 1), &seen));
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

/// Where `seen` (after `from`) goes down, in live or total: one line each.
fn downs(who: &str, from: Counts, seen: &[Counts]) -> Vec<String> {
    let mut last = from;
    let mut downs = Vec::new();
    for &c in seen {
        if c.live < last.live || c.total < last.total {
            downs.push(format!("{who} saw {last:?} then {c:?}"));
        }
        last = c;
    }
    downs
}

/// A count call that outlasts `--redis-timeout` sends its view to the outbox, and the post
/// shows it as unconfirmed; the script still runs in Redis once Redis gets to it, and its
/// announcement reaches every node. The node that sent it must not then show it twice (the
/// announced total plus the unconfirmed view) and take one back once the outbox replays it.
/// Redis is stopped (SIGSTOP) while a reader joins, so the call times out, and continued: the
/// script runs late, deterministically. Then a peer's live change, published after it, and
/// Redis stopped again (no replay can run): once a's readers see that live, a has heard the
/// late announcement too, and its total must be the views counted, no more.
#[actix_web::test]
async fn a_view_whose_count_times_out_and_runs_late_in_redis_never_takes_a_total_down() {
    let _serial = one_at_a_time().await;
    let Some(redis) = Redis::start().await else {
        return;
    };
    // A peer of no reader yet: every heartbeat from now on keeps it.
    probe(&redis, 1, None).await;
    let nodes = Node::start_many(&redis, &["a", "b"], &[]).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let mut on_a = a.join().await;
    let mut on_b = b.join().await;
    assert_eq!(on_b.first, counts(2, 2), "first event on b");
    on_a.stream.await_counts(counts(2, 2), SETTLE).await;

    // The count of the third view times out (the join answers after --redis-timeout) while
    // its script waits in Redis's socket; continued, Redis runs it and announces it.
    redis.pause();
    let mut late = a.join().await;
    redis.resume();
    assert_eq!(
        late.first,
        counts(3, 3),
        "first event of the late view on a"
    );
    time_until(
        "the late view in redis",
        SETTLE,
        || redis.total(SLUG),
        |t| *t == 3,
    )
    .await;
    probe(&redis, 2, Some(1)).await;
    redis.pause();
    let mut seen = Vec::new();
    for reader in [&mut on_a, &mut late] {
        let probed = |c: &Counts| c.live == 4;
        let with_probe = reader
            .stream
            .await_counts_that("the probe's reader", probed, SETTLE)
            .await;
        assert_eq!(
            with_probe.last().copied(),
            Some(counts(4, 3)),
            "a reader on a once a heard the late view's announcement (seen {with_probe:?})"
        );
        seen.push(with_probe);
    }
    redis.resume();

    // The outbox replays the view (a no-op in Redis); the probe leaves.
    let pending = || a.metric("viewcounter_outbox_pending");
    time_until("outbox of node a", SETTLE, pending, |p| *p == Some(0.0)).await;
    probe_leaves(&redis).await;
    let want = counts(3, 3);
    let mut dips = Vec::new();
    let [mut on_a_seen, mut late_seen] = [seen.remove(0), seen.remove(0)];
    on_a_seen.extend(on_a.stream.await_counts(want, SETTLE).await);
    late_seen.extend(late.stream.await_counts(want, SETTLE).await);
    let on_b_seen = on_b.stream.await_counts(want, SETTLE).await;
    for (who, from, seen) in [
        ("the first reader on a", counts(2, 2), on_a_seen),
        ("the late reader on a", counts(3, 3), late_seen),
        ("the reader on b", counts(2, 2), on_b_seen),
    ] {
        dips.extend(downs(who, counts(0, from.total), &totals(&seen)));
    }
    assert!(dips.is_empty(), "totals went down: {dips:#?}");
    cluster_agrees(&nodes, &redis, want, SETTLE).await;
    for node in &nodes {
        assert_eq!(
            node.totals().await,
            rows(&[(SLUG, 3)]),
            "node {}",
            node.name
        );
    }
    assert_eq!(redis.day_views(SLUG).await, 3, "views per day in redis");
}

/// Views counted while Redis is down wait in the outbox, shown as unconfirmed; once Redis
/// answers, the replay runs their scripts, and each announces its new total to every node, the
/// one replaying it too. That node's readers must not see the announced total plus the still
/// unconfirmed view, then one less once the replay tells the post.
#[actix_web::test]
async fn views_replayed_from_the_outbox_never_take_a_readers_total_down() {
    let _serial = one_at_a_time().await;
    let Some(redis) = Redis::start().await else {
        return;
    };
    let nodes = Node::start_many(&redis, &["a", "b"], &[]).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let mut on_a = a.join().await;
    let mut on_b = b.join().await;
    assert_eq!(on_b.first, counts(2, 2), "first event on b");
    let mut seen = on_a.stream.await_counts(counts(2, 2), SETTLE).await;

    redis.pause();
    time_until(
        "node a: redis down",
        SETTLE,
        || a.redis_state(),
        |s| s == "down",
    )
    .await;
    // Redis known down: these go to the outbox without a call.
    let mut meanwhile = Vec::new();
    for _ in 0..3 {
        meanwhile.push(a.join().await);
    }
    let all_five = |c: &Counts| c.total == 5;
    seen.extend(
        on_a.stream
            .await_counts_that("the views meanwhile", all_five, SETTLE)
            .await,
    );
    redis.resume();

    let pending = || a.metric("viewcounter_outbox_pending");
    time_until("outbox of node a", SETTLE, pending, |p| *p == Some(0.0)).await;
    let want = counts(5, 5);
    seen.extend(on_a.stream.await_counts(want, SETTLE).await);
    let on_b_seen = on_b.stream.await_counts(want, SETTLE).await;
    let mut dips = downs("the reader on a", counts(0, 2), &totals(&seen));
    dips.extend(downs("the reader on b", counts(0, 2), &totals(&on_b_seen)));
    assert!(dips.is_empty(), "totals went down: {dips:#?}");
    cluster_agrees(&nodes, &redis, want, SETTLE).await;
    for node in &nodes {
        assert_eq!(
            node.totals().await,
            rows(&[(SLUG, 5)]),
            "node {}",
            node.name
        );
    }
    drop(meanwhile);
}

/// A peer named `probe`, as a node writes itself (see `cluster::presence`): its place in
/// `vc:nodes` (so heartbeats keep it) and its presence hash at `version` (written whole once,
/// at version 1), with `live` readers of the post; with `live`, also its announcement on the
/// post's channel, which every node serving the post hears after what was published before it.
async fn probe(redis: &Redis, version: u64, live: Option<u64>) {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as u64;
    let _: u64 = redis
        .query(redis::cmd("ZADD").arg("vc:nodes").arg(now_ms).arg("probe"))
        .await;
    let mut hset = redis::cmd("HSET");
    let sum = live.unwrap_or(0);
    hset.arg("vc:node:probe")
        .arg("")
        .arg(version)
        .arg("#s")
        .arg(sum)
        .arg("#r")
        .arg(1);
    if let Some(live) = live {
        hset.arg(SLUG).arg(live);
    }
    let _: u64 = redis.query(&hset).await;
    if let Some(live) = live {
        let event = format!("l probe {SLUG} {live} {version} {sum}");
        let channel = viewcounter::cluster::keys::post_channel(SLUG);
        let _: u64 = redis
            .query(redis::cmd("PUBLISH").arg(channel).arg(event))
            .await;
        // Redis answers the publisher and writes the message to subscribers in the same pass
        // of its event loop, in no set order: a stop right after the answer may catch it
        // before the subscribers' writes. The next command is answered on the next pass.
        let _: String = redis.query(&redis::cmd("PING")).await;
    }
}

/// The probe leaves, as a node that stops.
async fn probe_leaves(redis: &Redis) {
    let _: u64 = redis
        .query(redis::cmd("ZREM").arg("vc:nodes").arg("probe"))
        .await;
    let _: u64 = redis.query(redis::cmd("DEL").arg("vc:node:probe")).await;
    let _: u64 = redis
        .query(
            redis::cmd("PUBLISH")
                .arg(viewcounter::cluster::keys::EVENTS)
                .arg("g probe"),
        )
        .await;
}

/// The totals alone (a probe's live comes and goes in this test).
fn totals(seen: &[Counts]) -> Vec<Counts> {
    seen.iter().map(|c| counts(0, c.total)).collect()
}
