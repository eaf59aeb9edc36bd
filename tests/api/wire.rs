//! A stream's connection, whichever layer answers it: plain stream requests are served
//! straight on the socket, everything else by actix-web. Both must look the same to readers.

use std::time::Duration;

use testkit::*;

#[actix_web::test]
async fn a_stream_request_whose_head_arrives_in_pieces_is_served_and_counted() {
    let app = spawn_app().await;

    let mut stream = SseClient::open_in_pieces(
        app.addr,
        Req::connect("alpha", &token()),
        4,
        Duration::from_millis(50),
    )
    .await;

    assert_eq!(stream.status, 200);
    assert_eq!(stream.next_event().await.counts(), Some(counts(1, 1)));
}

#[actix_web::test]
async fn a_stream_request_with_an_8_kib_cookie_is_served_and_counted() {
    let app = spawn_app().await;
    let cookie = format!("session={}", "c".repeat(8192));

    let mut stream = app
        .open(Req::connect("alpha", &token()).header("Cookie", cookie))
        .await;

    assert_eq!(stream.status, 200);
    assert_eq!(stream.next_event().await.counts(), Some(counts(1, 1)));
}

#[actix_web::test]
async fn answers_other_than_streams_close_their_connection_so_each_stream_gets_a_fresh_one() {
    let app = spawn_app().await;

    // Asked with keep-alive, as a browser loads the script before it opens the stream.
    let script = app.open(Req::get("/counter.js")).await;

    assert_eq!(script.status, 200);
    assert_eq!(script.header("connection"), Some("close"));
    assert!(
        script.closes_within(Duration::from_secs(5)).await,
        "the connection stayed open"
    );
}

#[actix_web::test]
async fn bytes_a_reader_sends_after_its_request_do_not_disturb_its_stream() {
    let app = spawn_app().await;
    let mut first = app.join("alpha").await;

    first
        .stream
        .send_raw(b"GET /api/v1/count/alpha HTTP/1.1\r\nHost: x\r\n\r\nnoise")
        .await;
    let _second = app.join("alpha").await;

    first
        .stream
        .await_counts(counts(2, 2), Duration::from_secs(5))
        .await;
}

#[actix_web::test]
async fn a_stream_from_a_listed_origin_and_one_from_the_page_itself_look_alike() {
    let app = spawn_app_configured(|c| c.origins = origins(&["http://blog.test"])).await;
    let own = app.origin();

    let listed = app
        .open(Req::connect("alpha", &token()).origin("http://blog.test"))
        .await;
    let same = app.open(Req::connect("alpha", &token()).origin(&own)).await;

    for (stream, allow) in [(&listed, Some("http://blog.test")), (&same, None)] {
        assert_eq!(stream.status, 200);
        assert_eq!(stream.header("content-type"), Some("text/event-stream"));
        assert_eq!(stream.header("cache-control"), Some("no-store"));
        assert_eq!(stream.header("x-accel-buffering"), Some("no"));
        assert_eq!(stream.header("access-control-allow-origin"), allow);
        let vary = stream.header("vary").unwrap_or_default();
        assert!(vary.contains("Origin"), "vary {vary:?}");
    }
}

#[actix_web::test]
async fn an_http_1_0_reader_is_served_until_it_closes() {
    let app = spawn_app().await;
    let mut stream = SseClient::open_raw(
        app.addr,
        format!(
            "GET /api/v1/connect/alpha?view={} HTTP/1.0\r\nUser-Agent: {BROWSER_UA}\r\n\r\n",
            token()
        ),
    )
    .await;

    assert_eq!(stream.status, 200);
    assert_eq!(stream.next_event().await.counts(), Some(counts(1, 1)));
    stream.close();
    app.await_counts("alpha", counts(0, 1), Duration::from_secs(5))
        .await;
}
