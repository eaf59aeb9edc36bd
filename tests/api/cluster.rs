//! Cluster mode with a real `redis-server`: nodes are `Application`s in this test process on
//! one Redis. Views are counted once across nodes, live readers are merged, and views counted
//! while Redis is paused or gone reach it exactly once.

use std::time::{Duration, Instant};

use testkit::*;

/// The contract: a change on one node reaches readers on every node within 1 s.
const ACROSS_NODES: Duration = Duration::from_secs(1);
/// The contract: `redis: down` within 2 s of Redis failing.
const DOWN_WITHIN: Duration = Duration::from_secs(2);
/// Redis back: the outbox is replayed within a few heartbeats.
const REPLAYED_WITHIN: Duration = Duration::from_secs(10);

/// A Redis and nodes `a` and `b` on it; `None` without `redis-server` (the test is skipped).
async fn two_nodes() -> Option<(Redis, TestApp, TestApp)> {
    let redis = Redis::start().await?;
    let a = redis.node("a").spawn(|_| {}).await;
    let b = redis.node("b").spawn(|_| {}).await;
    Some((redis, a, b))
}

async fn await_stat(app: &TestApp, field: &str, want: serde_json::Value, within: Duration) {
    await_value(field, want, within, || async {
        app.stats().await[field].clone()
    })
    .await;
}

async fn await_outbox_empty(app: &TestApp) {
    await_value("outbox pending", Some(0.0), REPLAYED_WITHIN, || {
        app.metric("viewcounter_outbox_pending")
    })
    .await;
}

#[actix_web::test]
async fn a_reader_counted_on_one_node_is_not_counted_again_on_another() {
    let Some((redis, a, b)) = two_nodes().await else {
        return;
    };
    let id = token();

    let first = a.join_as("alpha", Req::connect("alpha", &id)).await;
    assert_eq!(first.first.total, 1);
    let mut watcher = b.join("alpha").await;
    assert_eq!(watcher.first.total, 2);
    // A quiet post broadcasts a change at once (then coalesces): let it become quiet.
    watcher
        .stream
        .events_within(Duration::from_millis(700))
        .await;
    // The same page view reconnecting to another node (a balancer moved it).
    let again = b.join_as("alpha", Req::connect("alpha", &id)).await;
    assert_eq!(again.first.total, 2, "counted on a within the window");
    assert_eq!(redis.total("alpha").await, 2);
    let seen = watcher.stream.events_within(PROPAGATION).await;
    assert!(
        seen.iter().filter_map(|e| e.counts()).all(|c| c.total == 2),
        "a view another node counted was shown, then taken back: {seen:?}"
    );

    let other = b.join("alpha").await;
    assert_eq!(other.first.total, 3);
    assert_eq!(redis.total("alpha").await, 3);
    assert_eq!(b.totals().await, rows(&[("alpha", 3)]), "read from Redis");
    assert_eq!(a.totals().await, rows(&[("alpha", 3)]));
}

#[actix_web::test]
async fn readers_on_every_node_see_the_same_live_and_total() {
    let Some((_redis, a, b)) = two_nodes().await else {
        return;
    };
    await_stat(&a, "nodes", 2.into(), ACROSS_NODES * 3).await;

    let mut on_b = b.join("beta").await;
    assert_eq!(on_b.first, counts(1, 1));
    let started = Instant::now();
    let mut on_a = a.join("beta").await;
    on_b.stream.await_counts(counts(2, 2), ACROSS_NODES).await;
    on_a.stream.await_counts(counts(2, 2), ACROSS_NODES).await;
    assert!(started.elapsed() < ACROSS_NODES * 2);

    on_a.stream.close();
    on_b.stream.await_counts(counts(1, 2), ACROSS_NODES).await;
    assert_eq!(b.stats().await["redis"], "ok");
}

#[actix_web::test]
async fn a_stopped_node_leaves_the_others_live_at_once() {
    let Some(redis) = Redis::start().await else {
        return;
    };
    let mut a = redis.node("a").spawn(|_| {}).await;
    let b = redis.node("b").spawn(|_| {}).await;
    let _on_a = a.join("gamma").await;
    let mut on_b = b.join("gamma").await;
    on_b.stream
        .await_counts(counts(2, 2), ACROSS_NODES * 3)
        .await;

    let stopping = tokio::spawn(async move { a.stop().await });
    on_b.stream.await_counts(counts(1, 2), ACROSS_NODES).await;
    await_stat(&b, "nodes", 1.into(), ACROSS_NODES).await;
    stopping.await.expect("stop task").expect("a stops cleanly");
}

#[actix_web::test]
async fn a_paused_redis_stalls_no_join_and_the_view_counts_once() {
    let Some(redis) = Redis::start().await else {
        return;
    };
    let a = redis.node("a").spawn(|_| {}).await;
    let mut watcher = a.join("alpha").await;
    assert_eq!(redis.total("alpha").await, 1);

    redis.pause();
    let started = Instant::now();
    let joined = a.join("alpha").await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "the join waited {:?}",
        started.elapsed()
    );
    assert_eq!(joined.first.total, 2, "counted here meanwhile");
    await_stat(&a, "redis", "down".into(), DOWN_WITHIN).await;
    // Streams go on: the reader already there sees the newcomer.
    watcher.stream.await_counts(counts(2, 2), PROPAGATION).await;

    // Redis now runs the timed-out call late, and the outbox replays the same view.
    redis.resume();
    await_stat(&a, "redis", "ok".into(), DOWN_WITHIN).await;
    await_outbox_empty(&a).await;
    assert_eq!(
        redis.total("alpha").await,
        2,
        "the late call and the replay are one view"
    );
    assert_eq!(a.counts("alpha").await, counts(2, 2));
}

#[actix_web::test]
async fn views_counted_while_redis_is_gone_reach_it_exactly_once() {
    let Some((mut redis, a, b)) = two_nodes().await else {
        return;
    };
    redis.kill_9();
    await_stat(&a, "redis", "down".into(), DOWN_WITHIN).await;

    let mut readers = Vec::new();
    for n in 0..5 {
        let node = if n % 2 == 0 { &a } else { &b };
        readers.push(node.join("beta").await);
    }
    let shared = token();
    // One reader on both nodes while Redis is gone: each counts it, Redis takes it once.
    readers.push(a.join_as("beta", Req::connect("beta", &shared)).await);
    readers.push(b.join_as("beta", Req::connect("beta", &shared)).await);
    assert!(a.metric("viewcounter_outbox_pending").await >= Some(3.0));

    redis.restart().await;
    await_outbox_empty(&a).await;
    await_outbox_empty(&b).await;
    assert_eq!(
        redis.total("beta").await,
        6,
        "5 readers and the one seen on both nodes"
    );
    a.await_counts("beta", counts(7, 6), ACROSS_NODES * 3).await;
    b.await_counts("beta", counts(7, 6), ACROSS_NODES * 3).await;
    assert_eq!(a.metric("viewcounter_redis_up").await, Some(1.0));
    assert_eq!(a.metric("viewcounter_cluster_nodes").await, Some(2.0));
}

#[actix_web::test]
async fn a_node_starts_without_redis_and_joins_when_it_comes() {
    let Some(mut redis) = Redis::start().await else {
        return;
    };
    redis.kill_9();
    let a = redis.node("a").spawn(|_| {}).await;
    assert_eq!(a.stats().await["redis"], "down");
    let reader = a.join("alpha").await;
    assert_eq!(reader.first, counts(1, 1));

    redis.restart().await;
    await_stat(&a, "redis", "ok".into(), DOWN_WITHIN * 2).await;
    await_outbox_empty(&a).await;
    assert_eq!(redis.total("alpha").await, 1);
}

#[actix_web::test]
async fn export_with_redis_and_an_import_through_a_node_speak_for_the_whole_cluster() {
    let Some((redis, a, b)) = two_nodes().await else {
        return;
    };
    let mut on_a = a.join("alpha").await;
    let mut on_b = b.join("beta").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let url = redis.url();

    let RunOutput {
        status,
        stdout: out,
        stderr: err,
    } = run(dir.path(), &["export", "--redis", &url]).await;
    assert!(status.success(), "{err}");
    assert_eq!(out, "slug,total\nalpha,1\nbeta,1\n", "both nodes' views");

    let file = dir.path().join("totals.csv");
    std::fs::write(&file, "slug,total\nbeta,40\ngamma,7\n").expect("write the import");
    let file = file.display().to_string();
    let RunOutput {
        status,
        stdout: _,
        stderr: err,
    } = run(dir.path(), &["import", "--redis", &url, &file]).await;
    assert!(!status.success());
    assert!(err.contains("import --url"), "refused, saying how: {err}");
    assert_eq!(redis.total("beta").await, 1, "nothing written");

    let node = format!("http://{}", a.addr);
    let RunOutput {
        status,
        stdout: out,
        stderr: err,
    } = run(dir.path(), &["import", "--url", &node, "--dry-run", &file]).await;
    assert!(status.success(), "{err}");
    assert!(out.contains("beta: 1 -> 40"), "{out}");
    assert_eq!(redis.total("beta").await, 1, "a dry run writes nothing");

    let RunOutput {
        status,
        stdout: _,
        stderr: err,
    } = run(dir.path(), &["import", "--url", &node, &file]).await;
    assert!(status.success(), "{err}");
    // The reader on b sees the imported total: every node is told.
    on_b.stream.await_counts(counts(1, 40), ACROSS_NODES).await;
    assert_eq!(
        a.totals().await,
        rows(&[("alpha", 1), ("beta", 40), ("gamma", 7)])
    );

    // Through a running node: its own readers see the import once, not twice.
    let res = a
        .send(Req::import(
            "/api/v1/import?mode=set",
            "slug,total\nalpha,10\n",
        ))
        .await;
    assert_eq!(res.status, 200, "{res:?}");
    on_a.stream.await_counts(counts(1, 10), ACROSS_NODES).await;
    let later = on_a.stream.events_within(PROPAGATION).await;
    assert!(
        later
            .iter()
            .filter_map(|e| e.counts())
            .all(|c| c == counts(1, 10)),
        "{later:?}"
    );
    assert_eq!(redis.total("alpha").await, 10);

    let RunOutput {
        status,
        stdout: _,
        stderr: err,
    } = run(dir.path(), &["export", "--redis", "http://nowhere"]).await;
    assert!(!status.success());
    assert!(err.contains("--redis"), "{err}");
}

#[actix_web::test]
async fn a_node_without_readers_of_a_post_reports_its_readers_elsewhere() {
    let Some((_redis, a, b)) = two_nodes().await else {
        return;
    };
    let _on_a = a.join("gamma").await;

    // b has no actor for gamma: count, counts and top read the cluster.
    b.await_counts("gamma", counts(1, 1), ACROSS_NODES * 2)
        .await;
    let res = b
        .send(Req::get("/api/v1/counts?slug=gamma&slug=alpha"))
        .await;
    assert_eq!(res.status, 200, "{res:?}");
    assert_eq!(
        res.json(),
        serde_json::json!([
            {"slug": "gamma", "live": 1, "total": 1},
            {"slug": "alpha", "live": 0, "total": 0},
        ])
    );
    let top = b.send(Req::get("/api/v1/top?by=live")).await.json();
    assert_eq!(top[0]["slug"], "gamma", "{top}");
    assert_eq!(top[0]["live"], 1, "{top}");
    assert_eq!(b.stat("posts_awake").await, 0, "nothing woken on b");
}

#[actix_web::test]
async fn a_node_that_stops_renewing_its_presence_leaves_live_within_5_s() {
    let Some(redis) = Redis::start().await else {
        return;
    };
    let a = redis.node("a").spawn(|_| {}).await;
    let mut reader = a.join("alpha").await;
    // A node as a killed one leaves it: a presence written once, never renewed.
    let mut conn = redis.connection().await;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as u64;
    redis::pipe()
        .atomic()
        .hset_multiple("vc:node:ghost", &[("", "1"), ("alpha", "3")])
        .pexpire("vc:node:ghost", 3000)
        .zadd("vc:nodes", "ghost", now_ms)
        .query_async::<()>(&mut conn)
        .await
        .expect("write the ghost's presence");
    let written = Instant::now();
    reader
        .stream
        .await_counts(counts(4, 1), ACROSS_NODES * 2)
        .await;
    await_stat(&a, "nodes", 2.into(), ACROSS_NODES).await;

    reader
        .stream
        .await_counts(counts(1, 1), Duration::from_secs(5))
        .await;
    assert!(
        written.elapsed() <= Duration::from_secs(5),
        "{:?}",
        written.elapsed()
    );
    await_stat(&a, "nodes", 1.into(), ACROSS_NODES).await;
}

#[actix_web::test]
async fn without_a_dedupe_window_a_late_call_and_its_replay_still_count_once() {
    let Some(redis) = Redis::start().await else {
        return;
    };
    let a = redis
        .node("a")
        .spawn(|c| c.flush.dedupe_window = Duration::ZERO)
        .await;
    let id = token();
    let first = a.join_as("alpha", Req::connect("alpha", &id)).await;
    assert_eq!(first.first.total, 1);
    redis.pause();
    let again = a.join_as("alpha", Req::connect("alpha", &id)).await;
    assert_eq!(again.first.total, 2, "no window: every stream is a view");
    redis.resume();
    await_stat(&a, "redis", "ok".into(), DOWN_WITHIN).await;
    await_outbox_empty(&a).await;
    assert_eq!(
        redis.total("alpha").await,
        2,
        "the op id, not the marker, made the replay a no-op"
    );
}
