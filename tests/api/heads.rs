//! Request heads that would hold a worker: one that never ends, one that never stops growing.

use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use testkit::*;

#[actix_web::test]
async fn a_peer_that_never_finishes_its_request_line_is_dropped_and_holds_no_worker() {
    let app = spawn_app().await;
    let mut stalled = Vec::new();
    let opened = Instant::now();
    // More stalled peers than the server has workers.
    for _ in 0..8 {
        let mut conn = TcpStream::connect(app.addr).await.unwrap();
        conn.write_all(b"GET /api/v1/connect/alpha?view=")
            .await
            .unwrap();
        stalled.push(conn);
    }

    // Meanwhile everyone else is served as usual.
    let reader = app.join("alpha").await;
    assert_eq!(reader.first, counts(1, 1));

    for conn in &mut stalled {
        let answer = read_until_closed(conn, Duration::from_secs(10))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let after = opened.elapsed();
        assert!(
            after >= Duration::from_secs(3),
            "dropped after {after:?}: too eager"
        );
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
            "{answer:?}"
        );
    }
    assert_eq!(
        app.counts("alpha").await,
        counts(1, 1),
        "a stalled head counts nothing"
    );
}

#[actix_web::test]
async fn a_request_head_that_keeps_growing_is_refused_and_counts_nothing() {
    let app = spawn_app().await;
    let mut conn = TcpStream::connect(app.addr).await.unwrap();
    let mut head = format!(
        "GET /api/v1/connect/alpha?view={} HTTP/1.1\r\nHost: x\r\nUser-Agent: {BROWSER_UA}\r\n",
        token()
    );
    // 256 KiB of headers: twice what the server buffers for a head.
    for i in 0..4096 {
        head.push_str(&format!("X-Filler-{i}: {}\r\n", "a".repeat(50)));
    }
    head.push_str("\r\n");
    // The server may close while we are still writing; that is a refusal too.
    let _ = conn.write_all(head.as_bytes()).await;
    let answer = read_until_closed(&mut conn, Duration::from_secs(10))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        answer.is_empty()
            || answer.starts_with("HTTP/1.1 431")
            || answer.starts_with("HTTP/1.1 400"),
        "{}",
        answer.lines().next().unwrap_or_default()
    );
    assert_eq!(app.counts("alpha").await, counts(0, 0));
}
