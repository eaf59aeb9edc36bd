//! `GET /api/v1/connect/{slug}`: the stream, its first event, and the counting rules of a view.

use std::time::{Duration, Instant};

use testkit::*;

#[actix_web::test]
async fn the_first_event_comes_at_once_with_the_reader_id_and_exact_numbers() {
    // The contract's 100 ms is a latency figure, measured by the benchmark (churn: open →
    // first event p50 of a few ms). Here the bound only has to catch a first event that
    // waits for something: a coalesced broadcast (250 ms) after another join, or a heartbeat.
    let app = spawn_app_configured(|c| c.heartbeat = Duration::from_secs(3600)).await;
    let _earlier = app.join("alpha").await;
    let tok = token();

    let started = Instant::now();
    let mut stream = app.open(Req::connect("alpha", &tok)).await;
    assert_eq!(stream.status, 200);
    let first = stream.next_event().await;
    let elapsed = started.elapsed();

    assert_eq!(
        first.raw,
        format!("retry: 2000\nid: {tok}\ndata: {{\"live\":2,\"total\":2}}\n\n")
    );
    assert!(
        elapsed < Duration::from_secs(2),
        "first event after {elapsed:?}"
    );
}

#[actix_web::test]
async fn the_stream_is_an_uncompressed_uncached_unbuffered_event_stream() {
    let app = spawn_app().await;

    let stream = app
        .open(Req::connect("alpha", &token()).header("Accept-Encoding", "gzip, deflate, br"))
        .await;

    assert_eq!(stream.status, 200);
    let ct = stream.header("content-type").unwrap_or_default();
    assert!(ct.starts_with("text/event-stream"), "content-type {ct:?}");
    assert_eq!(stream.header("cache-control"), Some("no-store"));
    assert_eq!(stream.header("x-accel-buffering"), Some("no"));
    assert_eq!(stream.header("content-encoding"), None);
    assert_eq!(stream.header("content-length"), None);
}

#[actix_web::test]
async fn a_second_reader_is_counted_and_the_first_reader_is_told() {
    let app = spawn_app().await;

    let mut first = app.join("alpha").await;
    assert_eq!(first.first, counts(1, 1));
    let second = app.join("alpha").await;
    assert_eq!(second.first, counts(2, 2));

    first.stream.await_counts(counts(2, 2), PROPAGATION).await;
    assert_eq!(app.counts("alpha").await, counts(2, 2));
    assert_eq!(app.counts("beta").await, counts(0, 0), "posts are separate");
}

#[actix_web::test]
async fn without_a_view_token_the_server_issues_a_valid_reader_id() {
    let app = spawn_app().await;

    let a = app
        .join_as("alpha", Req::get("/api/v1/connect/alpha"))
        .await;
    let b = app
        .join_as("alpha", Req::get("/api/v1/connect/alpha"))
        .await;

    for id in [&a.id, &b.id] {
        assert!((16..=64).contains(&id.len()), "{id:?}");
        assert!(
            id.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'),
            "{id:?}"
        );
    }
    assert_ne!(a.id, b.id, "each stream without a token is a new reader");
    assert_eq!(b.first, counts(2, 2));
}

#[actix_web::test]
async fn a_reconnect_with_the_same_view_token_within_the_window_is_not_counted_twice() {
    let app = spawn_app().await;
    let tok = token();

    let first = app.join_as("alpha", Req::connect("alpha", &tok)).await;
    assert_eq!(
        (first.id.as_str(), first.first),
        (tok.as_str(), counts(1, 1))
    );
    first.stream.close();
    app.await_counts("alpha", counts(0, 1), LIVE_DROP).await;

    let again = app.join_as("alpha", Req::connect("alpha", &tok)).await;
    assert_eq!(again.id, tok);
    assert_eq!(again.first, counts(1, 1), "live again, but no second view");
}

#[actix_web::test]
async fn a_reconnect_with_last_event_id_is_not_counted_twice() {
    let app = spawn_app().await;

    // EventSource without ?view=: the server picks the id and the browser sends it back.
    let first = app
        .join_as("alpha", Req::get("/api/v1/connect/alpha"))
        .await;
    assert_eq!(first.first, counts(1, 1));
    let id = first.id.clone();
    first.stream.reset();
    app.await_counts("alpha", counts(0, 1), LIVE_DROP).await;

    let again = app
        .join_as(
            "alpha",
            Req::get("/api/v1/connect/alpha").header("Last-Event-ID", &id),
        )
        .await;
    assert_eq!(again.id, id, "the reconnect keeps its reader id");
    assert_eq!(again.first, counts(1, 1));
}

#[actix_web::test]
async fn two_streams_of_one_page_view_are_one_view_and_two_live() {
    let app = spawn_app().await;
    let tok = token();

    let _a = app.join_as("alpha", Req::connect("alpha", &tok)).await;
    let b = app.join_as("alpha", Req::connect("alpha", &tok)).await;

    assert_eq!(b.first, counts(2, 1));
}

#[actix_web::test]
async fn a_view_token_is_counted_once_per_post() {
    let app = spawn_app().await;
    let tok = token();

    let a = app.join_as("alpha", Req::connect("alpha", &tok)).await;
    let b = app.join_as("beta", Req::connect("beta", &tok)).await;

    assert_eq!(a.first, counts(1, 1));
    assert_eq!(b.first, counts(1, 1));
}

#[actix_web::test]
async fn a_view_token_counts_again_once_a_short_dedupe_window_has_expired() {
    let window = Duration::from_secs(1);
    let app = spawn_app_configured(|c| c.flush.dedupe_window = Duration::from_secs(1)).await;
    let tok = token();

    // The view is counted after `started` and before its first event arrives: a join before
    // `started + window` is inside the window, one after `answered + window` is past it.
    let started = Instant::now();
    let first = app.join_as("alpha", Req::connect("alpha", &tok)).await;
    let answered = Instant::now();
    assert_eq!(first.first, counts(1, 1));
    first.stream.close();
    app.await_counts("alpha", counts(0, 1), LIVE_DROP).await;
    let within = app.join_as("alpha", Req::connect("alpha", &tok)).await;
    assert!(
        started.elapsed() < window,
        "test too slow to check the window"
    );
    assert_eq!(within.first, counts(1, 1), "inside the window: not counted");
    within.stream.close();
    app.await_counts("alpha", counts(0, 1), LIVE_DROP).await;

    // The passing of the window is what is under test here.
    tokio::time::sleep((window + Duration::from_millis(100)).saturating_sub(answered.elapsed()))
        .await;
    let after = app.join_as("alpha", Req::connect("alpha", &tok)).await;
    assert_eq!(after.first, counts(1, 2), "after the window: counted again");

    // And a Last-Event-ID reconnect right after is inside the new window.
    let via_header = app
        .join_as(
            "alpha",
            Req::get("/api/v1/connect/alpha").header("Last-Event-ID", &tok),
        )
        .await;
    assert_eq!(via_header.first, counts(2, 2));
}

#[actix_web::test]
async fn a_malformed_view_token_is_refused_with_400_and_counts_nothing() {
    let app = spawn_app().await;
    let too_long = "a".repeat(65);

    for bad in [
        "",
        "abcdefghijklmno",
        too_long.as_str(),
        "abcdefghijklmnop!",
        "abcdefgh%20ijklmnop",
        "abcdefghijklmnop.",
    ] {
        let res = app
            .send(Req::get(format!("/api/v1/connect/alpha?view={bad}")))
            .await;
        res.assert_json_error(400);
    }

    assert_eq!(app.counts("alpha").await, counts(0, 0));
    assert_eq!(app.totals().await, rows(&[]));
}

#[actix_web::test]
async fn the_longest_and_shortest_view_tokens_are_accepted() {
    let app = spawn_app().await;

    let short = app
        .join_as("alpha", Req::connect("alpha", "abcdefghijklmnop"))
        .await;
    let long = "Z_-9".repeat(16);
    let long = app.join_as("alpha", Req::connect("alpha", &long)).await;

    assert_eq!(short.first, counts(1, 1));
    assert_eq!(long.first, counts(2, 2));
}

#[actix_web::test]
async fn bots_and_requests_without_a_user_agent_get_numbers_but_are_not_counted() {
    let app = spawn_app().await;
    let mut reader = app.join("alpha").await;
    assert_eq!(reader.first, counts(1, 1));

    let googlebot = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)";
    let requests = [
        Req::connect("alpha", &token()).header("User-Agent", BOT_UA),
        Req::connect("alpha", &token()).header("User-Agent", googlebot),
        Req::connect("alpha", &token()).without("User-Agent"),
        Req::connect("alpha", &token()).header("User-Agent", " "),
    ];
    let mut bots = Vec::new();
    for req in requests {
        let mut bot = app.open(req).await;
        assert_eq!(bot.status, 200, "bots are served");
        let first = bot.next_event().await;
        assert_eq!(first.counts(), Some(counts(1, 1)), "numbers, not counted");
        assert!(first.id.is_some());
        bots.push(bot);
    }

    assert_eq!(app.counts("alpha").await, counts(1, 1));
    // Nothing changed, so the reader is told nothing.
    let events = reader.stream.events_within(PROPAGATION).await;
    assert!(
        events.iter().all(|e| e.counts().is_none()),
        "reader saw {events:?}"
    );
    // And a bot leaving does not lower live.
    for bot in bots {
        bot.reset();
    }
    let events = reader.stream.events_within(PROPAGATION).await;
    assert!(
        events.iter().all(|e| e.counts().is_none()),
        "reader saw {events:?}"
    );
    assert_eq!(app.counts("alpha").await, counts(1, 1));
}

#[actix_web::test]
async fn with_count_bots_a_bot_is_counted() {
    let app = spawn_app_configured(|c| c.count_bots = true).await;

    let bot = app
        .join_as(
            "alpha",
            Req::connect("alpha", &token()).header("User-Agent", BOT_UA),
        )
        .await;

    assert_eq!(bot.first, counts(1, 1));
}

#[actix_web::test]
async fn heartbeat_comments_arrive_at_the_heartbeat_interval() {
    let app = spawn_app_configured(|c| c.heartbeat = Duration::from_millis(200)).await;
    let mut reader = app.join("alpha").await;

    let started = Instant::now();
    let mut beats = 0;
    while beats < 3 {
        let ev = reader.stream.next_event().await;
        assert!(ev.is_heartbeat(), "only heartbeats on a quiet post: {ev:?}");
        assert_eq!(ev.raw, ":\n\n");
        beats += 1;
    }
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "3 heartbeats took {:?}",
        started.elapsed()
    );
}

#[actix_web::test]
async fn beyond_the_per_ip_stream_limit_the_answer_is_429_with_retry_after_and_nothing_is_counted()
{
    let app = spawn_app_configured(|c| c.limits.ip_streams = 2).await;
    let a = ip(1);
    let b = ip(2);

    let first = app
        .join_as("alpha", Req::connect("alpha", &token()).client_ip(&a))
        .await;
    let _second = app
        .join_as("alpha", Req::connect("alpha", &token()).client_ip(&a))
        .await;
    let refused = app
        .send(Req::connect("alpha", &token()).client_ip(&a))
        .await;
    refused.assert_json_error(429);
    let retry_after: u64 = refused
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("Retry-After in seconds: {refused:?}"));
    assert!(retry_after >= 1);
    assert_eq!(
        app.counts("alpha").await,
        counts(2, 2),
        "the refusal counted"
    );

    // The limit is per client address, and per address across posts.
    let other = app
        .join_as("alpha", Req::connect("alpha", &token()).client_ip(&b))
        .await;
    assert_eq!(other.first, counts(3, 3));
    app.send(Req::connect("beta", &token()).client_ip(&a))
        .await
        .assert_json_error(429);
    assert_eq!(app.counts("beta").await, counts(0, 0));

    // A stream that closes gives its place back.
    first.stream.reset();
    let deadline = Instant::now() + LIVE_DROP;
    let again = loop {
        let mut attempt = app
            .open(Req::connect("alpha", &token()).client_ip(&a))
            .await;
        if attempt.status == 200 {
            let ev = attempt.next_event().await;
            break ev.counts().expect("first event");
        }
        assert_eq!(attempt.status, 429);
        assert!(Instant::now() < deadline, "place not given back");
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    assert_eq!(again, counts(3, 4));
}

#[actix_web::test]
async fn at_the_stream_capacity_the_answer_is_503_with_retry_after_and_nothing_is_counted() {
    let app = spawn_app_configured(|c| c.limits.max_streams = Some(2)).await;

    let _a = app
        .join_as("alpha", Req::connect("alpha", &token()).client_ip(&ip(1)))
        .await;
    let b = app
        .join_as("beta", Req::connect("beta", &token()).client_ip(&ip(2)))
        .await;
    let refused = app
        .send(Req::connect("gamma", &token()).client_ip(&ip(3)))
        .await;

    refused.assert_json_error(503);
    assert!(
        refused
            .header("retry-after")
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|s| s >= 1),
        "{refused:?}"
    );
    assert_eq!(app.counts("gamma").await, counts(0, 0));
    assert_eq!(
        app.totals().await,
        rows(&[("alpha", 1), ("beta", 1)]),
        "no row for the refused post"
    );

    // Room again once a stream goes.
    b.stream.reset();
    let deadline = Instant::now() + LIVE_DROP;
    loop {
        let mut attempt = app
            .open(Req::connect("gamma", &token()).client_ip(&ip(3)))
            .await;
        if attempt.status == 200 {
            assert_eq!(attempt.next_event().await.counts(), Some(counts(1, 1)));
            break;
        }
        assert_eq!(attempt.status, 503);
        assert!(Instant::now() < deadline, "capacity not given back");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[actix_web::test]
async fn beyond_the_view_rate_the_stream_is_served_but_the_total_does_not_move() {
    let app = spawn_app_configured(|c| c.limits.ip_views_per_minute = 3).await;
    let a = ip(7);

    let mut seen = Vec::new();
    let mut open = Vec::new();
    for _ in 0..5 {
        let r = app
            .join_as("alpha", Req::connect("alpha", &token()).client_ip(&a))
            .await;
        seen.push(r.first);
        open.push(r.stream);
    }
    assert_eq!(
        seen,
        [
            counts(1, 1),
            counts(2, 2),
            counts(3, 3),
            counts(4, 3),
            counts(5, 3)
        ],
        "served and live, but only 3 views counted"
    );

    // The rate is per address and per post.
    let other_ip = app
        .join_as("alpha", Req::connect("alpha", &token()).client_ip(&ip(8)))
        .await;
    assert_eq!(other_ip.first, counts(6, 4));
    let other_post = app
        .join_as("beta", Req::connect("beta", &token()).client_ip(&a))
        .await;
    assert_eq!(other_post.first, counts(1, 1));
}

#[actix_web::test]
async fn an_untrusted_peer_cannot_choose_its_client_address_with_x_forwarded_for() {
    // Loopback is no longer a trusted proxy: its X-Forwarded-For is ignored.
    let app = spawn_app_configured(|c| {
        c.trusted_proxies = trusted_proxies(&["10.0.0.0/8"]);
        c.limits.ip_streams = 1;
    })
    .await;

    let _first = app
        .join_as(
            "alpha",
            Req::connect("alpha", &token()).client_ip("198.51.100.1"),
        )
        .await;
    let spoofed = app
        .send(Req::connect("alpha", &token()).client_ip("198.51.100.2"))
        .await;

    spoofed.assert_json_error(429);
    assert_eq!(app.counts("alpha").await, counts(1, 1));
}

/// The view-rate bucket is charged only for views that count, so reconnects (EventSource
/// retries, back/forward restores) do not use up an address's counted views per minute.
#[actix_web::test]
async fn reconnects_that_count_no_view_do_not_use_up_the_view_rate() {
    let app = spawn_app_configured(|c| c.limits.ip_views_per_minute = 3).await;
    let office = ip(9);
    let tok = token();

    let first = app
        .join_as("alpha", Req::connect("alpha", &tok).client_ip(&office))
        .await;
    assert_eq!(first.first, counts(1, 1));
    let mut open = vec![first.stream];
    for _ in 0..3 {
        // The same page view reconnecting: not a view.
        let again = app
            .join_as("alpha", Req::connect("alpha", &tok).client_ip(&office))
            .await;
        assert_eq!(again.first.total, 1);
        open.push(again.stream);
    }

    // One counted view so far from this address: a second reader's view is within 3/min.
    let colleague = app
        .join_as("alpha", Req::connect("alpha", &token()).client_ip(&office))
        .await;
    assert_eq!(colleague.first, counts(5, 2));
}

#[actix_web::test]
async fn a_fragment_in_the_request_target_is_no_part_of_the_slug_or_the_query() {
    // Found by the direct_head fuzz target: the stream took a fragment for part of the slug
    // (or of the reader id), where actix-web, whose routes answer the reader's beacons, drops it.
    let app = spawn_app().await;
    let req = Req::get(format!("/api/v1/connect/alpha?view={}#x", token()))
        .header("Accept", "text/event-stream");
    let reader = join(app.addr, "alpha", req).await;
    assert_eq!(reader.first, counts(1, 1));
    assert_eq!(app.counts("alpha").await, counts(1, 1));
}
