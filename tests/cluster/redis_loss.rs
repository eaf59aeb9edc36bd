//! Redis lost or stalled: nodes keep serving streams and answering joins, count views locally
//! into the outbox of their `--db` file, and add them to Redis exactly once when it is back.
//!
//! How a client knows its view counted: every limit is off and every join of the load brings a
//! reader id never seen before from a browser, so by the counting rules each join answered
//! `200` with a first event carrying its reader id is one counted view (the first event is the
//! post's answer to the join; a join that fails before it undoes itself). So the views the
//! clients saw counted are the joins so answered, and the final total must be exactly that.

use std::time::{Duration, Instant};

use crate::support::*;
use testkit::*;

/// The load: 100 joins a second ([`Load`]), spread over the nodes in turn.
const LOAD_JOINS: usize = 600;
/// Redis is killed once this many joins were sent, and restarted at the second mark.
const KILL_AT: usize = 150;
const RESTART_AT: usize = 350;
/// After the numbers agree, they must stay put for this long: no replay lands twice.
const STILL: Duration = Duration::from_millis(1500);

/// Every node and Redis hold `total`, and every node's outbox is empty: the time it took.
async fn replayed(nodes: &[Node], redis: &Redis, total: u64, within: Duration) -> Duration {
    let started = Instant::now();
    for node in nodes {
        let what = format!("total on node {}", node.name);
        time_until(&what, within, || node.counts(), |c| c.total == total).await;
        let what = format!("outbox of node {}", node.name);
        let pending = || node.metric("viewcounter_outbox_pending");
        time_until(&what, within, pending, |p| *p == Some(0.0)).await;
    }
    time_until("vc:totals", within, || redis.total(SLUG), |t| *t == total).await;
    started.elapsed()
}

/// The numbers stay at `total` for [`STILL`]: nothing counted twice, late.
async fn stays(nodes: &[Node], redis: &Redis, total: u64) {
    let until = Instant::now() + STILL;
    while Instant::now() < until {
        assert_eq!(redis.total(SLUG).await, total, "vc:totals moved");
        for node in nodes {
            assert_eq!(node.counts().await.total, total, "node {} moved", node.name);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[actix_web::test]
async fn redis_killed_and_restarted_under_100_joins_a_second_ends_with_every_view_the_clients_saw_counted_once()
 {
    let _serial = one_at_a_time().await;
    let Some(mut redis) = Redis::start().await else {
        return;
    };
    let nodes = Node::start_many(&redis, &["a", "b", "c"], &[]).await;
    let mut load = Load::new();
    let (mut killed, mut restarted) = (None, None);
    for n in 0..LOAD_JOINS {
        load.tick().await;
        if n == KILL_AT {
            redis.kill_9();
            killed = Some(Instant::now());
        }
        if n == RESTART_AT {
            redis.restart().await;
            restarted = Some(Instant::now());
        }
        load.join(&nodes, n);
    }
    let counted = load.finish().await;
    let total = counted.len() as u64;
    figures(
        "join answered, Redis killed and restarted meanwhile",
        counted.iter().map(|a| a.took).collect(),
    );
    if let (Some(killed), Some(restarted)) = (killed, restarted) {
        figure("Redis down (kill -9 to restarted)", restarted - killed);
    }

    let took = replayed(&nodes, &redis, total, SETTLE).await;
    figure(
        "after the load, every node and Redis at the counted total, outboxes empty",
        took,
    );
    stays(&nodes, &redis, total).await;
    assert_eq!(redis.day_views(SLUG).await, total, "views per day in redis");
    for node in &nodes {
        assert_eq!(
            node.totals().await,
            rows(&[(SLUG, total)]),
            "totals of node {}",
            node.name
        );
    }

    // Counted while Redis was gone, its dedupe marker reached Redis with the replay: the same
    // reader on another node is still not a new view.
    for answer in counted.iter().skip(KILL_AT).step_by(10).take(20) {
        let other = &nodes[(answer.node + 1) % nodes.len()];
        let again = join(other.addr(), SLUG, reconnect(&answer.id)).await;
        assert_eq!(
            again.first.total, total,
            "{} counted again on {}",
            answer.id, other.name
        );
        again.stream.reset();
    }
    stays(&nodes, &redis, total).await;
}

#[actix_web::test]
async fn redis_paused_keeps_streams_beating_and_joins_answered_and_stats_say_down_then_ok() {
    let _serial = one_at_a_time().await;
    let Some(redis) = Redis::start().await else {
        return;
    };
    let beat = Duration::from_millis(500);
    let nodes = Node::start_many(&redis, &["a", "b"], &["--heartbeat", "500ms"]).await;
    let mut readers = vec![nodes[0].join().await, nodes[1].join().await];
    all_see(&mut readers, counts(2, 2), Instant::now(), SETTLE).await;
    for node in &nodes {
        time_until("redis ok", SETTLE, || node.redis_state(), |s| s == "ok").await;
    }

    let paused = Instant::now();
    redis.pause();
    let window = Duration::from_secs(4);
    let down = async {
        for node in &nodes {
            let what = format!("node {}: redis down", node.name);
            time_until(&what, SETTLE, || node.redis_state(), |s| s == "down").await;
        }
        paused.elapsed()
    };
    let beats =
        futures_util::future::join_all(readers.iter_mut().map(|r| longest_silence(r, window)));
    let joins = joins_meanwhile(&nodes, window);
    let (down, silences, joined) = futures_util::future::join3(down, beats, joins).await;

    figure("SIGSTOP of Redis to stats saying down on every node", down);
    assert!(
        down <= REDIS_DOWN,
        "stats said down after {down:?} (contract: {REDIS_DOWN:?})"
    );
    let silence = silences.into_iter().max().unwrap_or_default();
    figure(
        "longest silence on a stream while Redis was paused (heartbeat 500ms)",
        silence,
    );
    assert!(
        silence <= 2 * beat,
        "a stream was silent for {silence:?} with Redis paused"
    );
    let slowest = joined.iter().max().copied().unwrap_or_default();
    figures("join answered while Redis was paused", joined.clone());
    assert!(
        slowest <= Duration::from_secs(1),
        "a join took {slowest:?} with Redis paused"
    );

    let resumed = Instant::now();
    redis.resume();
    for node in &nodes {
        let what = format!("node {}: redis ok again", node.name);
        time_until(&what, SETTLE, || node.redis_state(), |s| s == "ok").await;
    }
    figure(
        "SIGCONT of Redis to stats saying ok on every node",
        resumed.elapsed(),
    );
    let total = 2 + joined.len() as u64;
    replayed(&nodes, &redis, total, SETTLE).await;
    figure(
        "SIGCONT of Redis to every view counted meanwhile in Redis",
        resumed.elapsed(),
    );
    stays(&nodes, &redis, total).await;
}

/// Reads a stream for `window`: the longest time without an event (heartbeat or numbers).
async fn longest_silence(reader: &mut Reader, window: Duration) -> Duration {
    let until = Instant::now() + window;
    let mut last = Instant::now();
    let mut longest = Duration::ZERO;
    while Instant::now() < until {
        let left = until.saturating_duration_since(Instant::now());
        match reader.stream.next_event_within(left).await {
            Ok(Some(_)) => {
                longest = longest.max(last.elapsed());
                last = Instant::now();
            }
            Ok(None) => panic!("the stream ended while Redis was paused"),
            Err(_) => break,
        }
    }
    longest.max(last.elapsed())
}

/// A fresh join every 200 ms for `window`, on the nodes in turn: how long each took to answer.
async fn joins_meanwhile(nodes: &[Node], window: Duration) -> Vec<Duration> {
    let until = Instant::now() + window;
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut took = Vec::new();
    let mut n = 0;
    while Instant::now() < until {
        tick.tick().await;
        let node = &nodes[n % nodes.len()];
        n += 1;
        let started = Instant::now();
        let joined = tokio::time::timeout(
            JOIN_ANSWER,
            try_join(node.addr(), SLUG, Req::connect(SLUG, &token())),
        );
        match joined.await {
            Ok(Ok(reader)) => reader.stream.reset(),
            Ok(Err(e)) => panic!("node {}: a join failed with Redis paused: {e}", node.name),
            Err(_) => panic!(
                "node {}: a join unanswered after {JOIN_ANSWER:?} with Redis paused",
                node.name
            ),
        }
        took.push(started.elapsed());
    }
    took
}

/// Redis lost its data (here `FLUSHALL`): a post asleep on a node is woken by a reader before
/// the node rebuilt its part. It waits for the rebuild and starts from the whole total, never
/// from what is left in Redis (nothing): readers do not see a total drop.
#[actix_web::test]
async fn a_post_woken_after_redis_lost_its_data_starts_from_its_whole_total() {
    let _serial = one_at_a_time().await;
    let Some(redis) = Redis::start().await else {
        return;
    };
    let node = Node::start(&redis, "a", &[]).await;
    // In the node's record and in Redis, the post asleep (an import wakes nothing).
    let file = format!("slug,total\n{SLUG},5\n");
    let res = node
        .server
        .send(Req::import("/api/v1/import?mode=add", file))
        .await;
    assert_eq!(res.status, 200, "{res:?}");
    time_until(
        "the import in Redis",
        SETTLE,
        || redis.total(SLUG),
        |t| *t == 5,
    )
    .await;
    let () = redis.query(&redis::cmd("FLUSHALL")).await;
    let reader = node.join().await;
    assert_eq!(reader.first.total, 6, "the first total a reader saw");
}
