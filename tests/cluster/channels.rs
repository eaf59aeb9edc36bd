//! A live change reaches only the nodes that serve its post (design.md "Beyond one machine",
//! "Presence costs follow change, not size"): each post has its channel, `vc:{ch}:p:SLUG`, which
//! a node subscribes to while the post is awake there, and every post's (`PSUBSCRIBE
//! vc:{ch}:p:*`) only while someone there watches the whole site. Observed from Redis itself:
//! `PUBSUB NUMSUB` counts the nodes subscribed to a post's channel (one connection each),
//! `PUBSUB NUMPAT` those following every post.

use std::time::Instant;

use viewcounter::cluster::keys::post_channel;

use crate::support::*;
use testkit::*;

/// The connections subscribed to `slug`'s channel: one per node that hears its changes.
async fn listeners(redis: &Redis, slug: &str) -> u64 {
    let got: (String, u64) = redis
        .query(redis::cmd("PUBSUB").arg("NUMSUB").arg(post_channel(slug)))
        .await;
    got.1
}

/// The connections following every post's channel.
async fn whole_site_listeners(redis: &Redis) -> u64 {
    redis.query(redis::cmd("PUBSUB").arg("NUMPAT")).await
}

/// Waits until `n` connections follow every post's channel.
async fn whole_site_listeners_become(redis: &Redis, n: u64, what: &str) {
    time_until(
        what,
        SETTLE,
        || whole_site_listeners(redis),
        |got| *got == n,
    )
    .await;
}

#[actix_web::test]
async fn a_posts_changes_reach_only_the_nodes_serving_it_within_a_second_and_its_sleep_unsubscribes()
 {
    let _serial = one_at_a_time().await;
    let Some(redis) = Redis::start().await else {
        return;
    };
    // No dedupe memory: a post with no reader left goes to sleep after its idle grace.
    let nodes = Node::start_many(&redis, &["a", "b", "c"], &["--dedupe-window", "0s"]).await;
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let mut on_a = a.join().await;
    let on_b = b.join().await;
    let _beta_on_c = c.server.join("beta").await;
    assert_eq!(listeners(&redis, SLUG).await, 2, "alpha: a and b only");
    assert_eq!(listeners(&redis, "beta").await, 1, "beta: c only");
    assert_eq!(whole_site_listeners(&redis).await, 0);

    // A change on b reaches a's reader within a second, though c hears nothing of alpha.
    let changed = Instant::now();
    let also_on_b = b.join().await;
    let seen = seen_at(&mut on_a, counts(3, 3), changed, PRESENCE).await;
    figure("a change on b seen by a reader on a", seen);

    // c serves alpha for a moment to answer a read of it, and lets go of it.
    assert_eq!(
        c.counts().await,
        counts(3, 3),
        "c reads alpha's readers elsewhere"
    );
    time_until(
        "c lets go of alpha",
        SETTLE,
        || listeners(&redis, SLUG),
        |n| *n == 2,
    )
    .await;

    // b's readers leave: once alpha sleeps on b, b no longer hears of it.
    on_b.stream.close();
    also_on_b.stream.close();
    on_a.stream.await_counts(counts(1, 3), PRESENCE * 2).await;
    time_until(
        "alpha asleep on b",
        SETTLE,
        || listeners(&redis, SLUG),
        |n| *n == 1,
    )
    .await;
    assert_eq!(b.stat("posts_awake").await, 0);
}

#[actix_web::test]
async fn a_node_follows_every_post_only_while_someone_there_watches_the_whole_site() {
    let _serial = one_at_a_time().await;
    let Some(redis) = Redis::start().await else {
        return;
    };
    let nodes = Node::start_many(&redis, &["a", "b"], &[]).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let _on_b = b.server.join("beta").await;
    assert_eq!(whole_site_listeners(&redis).await, 0);

    // The owner's live board on a: a follows every post, and shows b's readers of beta.
    let board = Req::get("/api/v1/admin/stream").header("Accept", "text/event-stream");
    let stream = SseClient::open(a.addr(), board).await;
    assert_eq!(stream.status, 200);
    whole_site_listeners_become(&redis, 1, "a follows every post").await;
    assert_eq!(
        listeners(&redis, "beta").await,
        1,
        "beta's own channel: b only"
    );
    stream.close();
    whole_site_listeners_become(&redis, 0, "a stops following every post").await;

    // A watcher of `*` (public), twice: a passing one must not leave a following every post.
    for round in 1..=2 {
        let watch = Req::get("/api/v1/watch?slug=*").header("Accept", "text/event-stream");
        let mut stream = SseClient::open(a.addr(), watch).await;
        assert_eq!(stream.status, 200);
        stream.next_event().await;
        whole_site_listeners_become(&redis, 1, &format!("round {round}: a follows every post"))
            .await;
        stream.close();
        whole_site_listeners_become(
            &redis,
            0,
            &format!("round {round}: a stops following every post"),
        )
        .await;
    }
}

/// Redis dropping a node's connection (a restart, a proxy's idle timeout, `CLIENT KILL`) takes
/// its subscriptions with it: the node subscribes again, one channel per command, and its
/// readers hear the other nodes' changes as before.
#[actix_web::test]
async fn a_node_whose_connection_redis_dropped_subscribes_again_and_hears_the_others() {
    let _serial = one_at_a_time().await;
    let Some(redis) = Redis::start().await else {
        return;
    };
    let nodes = Node::start_many(&redis, &["a", "b"], &[]).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let mut on_a = a.join().await;
    assert_eq!(listeners(&redis, SLUG).await, 1, "alpha: a only");
    let killed: u64 = redis
        .query(redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("pubsub"))
        .await;
    assert_eq!(killed, 2, "each node's connection");
    time_until(
        "a subscribes to alpha again",
        SETTLE,
        || listeners(&redis, SLUG),
        |n| *n == 1,
    )
    .await;
    let changed = Instant::now();
    let _on_b = b.join().await;
    let seen = seen_at(&mut on_a, counts(2, 2), changed, PRESENCE).await;
    figure("after the drop, a change on b seen by a reader on a", seen);
}

/// The calls Redis has served of `command` (`INFO commandstats`).
async fn calls_of(redis: &Redis, command: &str) -> u64 {
    let info: String = redis.query(redis::cmd("INFO").arg("commandstats")).await;
    // `cmdstat_subscribe:calls=12,usec=…`; a command never run has no line.
    info_field(&info, &format!("cmdstat_{command}"))
        .and_then(|stats| {
            stats
                .strip_prefix("calls=")?
                .split(',')
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// A read of a post asleep here (`/count`) gives the other nodes' readers of it with one
/// read of their presence: it subscribes to nothing, so it unsubscribes from nothing either.
#[actix_web::test]
async fn a_read_of_a_post_asleep_here_counts_the_other_nodes_readers_without_subscribing() {
    let _serial = one_at_a_time().await;
    let Some(redis) = Redis::start().await else {
        return;
    };
    let nodes = Node::start_many(&redis, &["a", "b"], &[]).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let _on_b = b.join().await;
    let subscribes = calls_of(&redis, "subscribe").await;
    let unsubscribes = calls_of(&redis, "unsubscribe").await;
    time_until(
        "b's reader, read on a",
        SETTLE,
        || a.counts(),
        |c| c.live == 1,
    )
    .await;
    assert_eq!(a.counts().await, counts(1, 1));
    assert_eq!(listeners(&redis, SLUG).await, 1, "alpha: b only");
    assert_eq!(
        (
            calls_of(&redis, "subscribe").await - subscribes,
            calls_of(&redis, "unsubscribe").await - unsubscribes
        ),
        (0, 0),
        "subscribes and unsubscribes during the reads"
    );
}
