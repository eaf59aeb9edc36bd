//! Managed Redis (design.md "Beyond one machine"): a node reaches a Redis that wants TLS from a
//! private CA and an ACL user, as hosted services do, and tells what Redis it found: version,
//! mode and persistence, in its log and in `/api/v1/stats`.

use crate::support::*;
use testkit::*;

/// The ACL user of the hosted-like Redis: everything but `CONFIG`.
const USER: &str = "counter";
const PASSWORD: &str = "a-long-acl-password";

#[actix_web::test]
async fn a_node_counts_through_a_redis_that_wants_tls_from_a_private_ca_and_an_acl_user() {
    let _serial = one_at_a_time().await;
    let Some(redis) = Redis::start_tls_as(USER, PASSWORD).await else {
        return;
    };
    let ca = redis.ca_file();
    let ca = ca.to_str().expect("a UTF-8 path");
    let node = Node::start(&redis, "a", &["--redis-ca", ca]).await;
    time_until("redis ok", SETTLE, || node.redis_state(), |s| s == "ok").await;

    let _reader = node.join().await;
    time_until(
        "the view in Redis",
        SETTLE,
        || redis.total(SLUG),
        |t| *t == 1,
    )
    .await;
    let stats = node.stats().await;
    assert!(
        stats["redis_version"]
            .as_str()
            .is_some_and(|v| v.starts_with(|c: char| c.is_ascii_digit())),
        "{stats}"
    );
    assert_eq!(stats["redis_mode"], "standalone", "{stats}");
    // The ACL user may not run CONFIG (hosted Redis refuse it too), and there is no
    // append-only file to see in INFO: the node says it cannot tell, not a guess.
    assert_eq!(stats["redis_persistence"], "unknown", "{stats}");
    assert!(
        !node.server.log().contains(PASSWORD),
        "the password stays out of the log"
    );
}

#[actix_web::test]
async fn without_the_private_ca_a_node_refuses_the_certificate_says_why_and_still_counts() {
    let _serial = one_at_a_time().await;
    let Some(redis) = Redis::start_tls_as(USER, PASSWORD).await else {
        return;
    };
    let node = Node::start(&redis, "a", &[]).await;
    let mut reader = node.join().await;
    reader.stream.await_counts(counts(1, 1), SETTLE).await;
    time_until(
        "the certificate named in the log",
        SETTLE,
        || std::future::ready(node.server.log()),
        |log| log.contains("Redis unavailable") && log.contains("certificate"),
    )
    .await;
    assert_eq!(node.redis_state().await, "down");
    assert_eq!(redis.total(SLUG).await, 0, "nothing reached Redis");
}

#[actix_web::test]
async fn an_import_through_a_node_and_export_reach_a_tls_redis_with_the_ca() {
    let _serial = one_at_a_time().await;
    let Some(redis) = Redis::start_tls_as(USER, PASSWORD).await else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let (url, ca) = (redis.url(), redis.ca_file());
    let ca = ca.to_str().expect("a UTF-8 path");
    let node = Node::start(&redis, "a", &["--redis-ca", ca]).await;
    std::fs::write(dir.path().join("totals.csv"), "slug,total\nalpha,42\n").expect("write");
    let node_url = format!("http://{}", node.addr());
    run(dir.path(), &["import", "--url", &node_url, "totals.csv"])
        .quiet()
        .await
        .success();
    assert_eq!(redis.total("alpha").await, 42);
    let exported = run(dir.path(), &["export", "--redis", &url, "--redis-ca", ca])
        .quiet()
        .await
        .success();
    assert_eq!(exported, "slug,total\nalpha,42\n");
}

#[actix_web::test]
async fn stats_tell_an_append_only_redis_from_debians_default_snapshots() {
    let _serial = one_at_a_time().await;
    let (Some(aof), Some(debian)) = (Redis::start().await, Redis::start_debian_default().await)
    else {
        return;
    };
    for (redis, persistence) in [(&aof, "aof"), (&debian, "rdb")] {
        let node = Node::start(redis, "a", &[]).await;
        let what = format!("redis_persistence {persistence}");
        time_until(
            &what,
            SETTLE,
            || node.stats(),
            |s| s["redis_persistence"] == persistence,
        )
        .await;
        let log = node.server.log();
        assert!(log.contains(&format!("persistence={persistence}")), "{log}");
        assert_eq!(
            log.contains("Redis keeps no append-only file"),
            persistence == "rdb",
            "the warning is for a Redis without one: {log}"
        );
    }
}

#[actix_web::test]
async fn a_ca_file_beside_a_url_without_tls_or_that_holds_no_certificate_stops_the_server() {
    let dir = tempfile::tempdir().expect("temp dir");
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "not a certificate\n").expect("write");
    let empty = empty.to_str().expect("a UTF-8 path");
    for (url, ca, says) in [
        ("redis://127.0.0.1:1/0", empty, "rediss://"),
        ("rediss://127.0.0.1:1/0", empty, "no PEM certificate"),
        (
            "rediss://127.0.0.1:1/0",
            "/nonexistent/ca.pem",
            "/nonexistent/ca.pem",
        ),
    ] {
        let out = run(dir.path(), &["serve", "--redis", url, "--redis-ca", ca])
            .quiet()
            .await;
        assert_eq!(out.status.code(), Some(1), "{url} {ca}: {}", out.stderr);
        assert!(out.stderr.contains(says), "{url} {ca}: {}", out.stderr);
    }
}
