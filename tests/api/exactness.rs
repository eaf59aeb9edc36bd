//! Exactness under hostile or broken clients (design.md): live and total stay exact whatever a
//! client does, on every path (direct streams, actix-web, shared streams). Aborted requests,
//! per-IP budgets that IPv6 or shared streams could walk around, fetches that are not an
//! EventSource, bodies that never come, forwarded admin requests, one client filling
//! `--allow-any-slug`, and beacons that arrive after their reader came back.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use testkit::*;

/// The contract gives a body 5 s after its head; this is that and slack for a busy machine.
const BODY_DEADLINE: Duration = Duration::from_secs(8);

// ---------------------------------------------------------------------------------------------
// Local helpers.

/// `{"slug":…,"live":…,"total":…}` of a shared stream's event.
#[derive(Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Tagged {
    slug: String,
    live: u64,
    total: u64,
}

fn tagged(ev: &SseEvent) -> Option<Tagged> {
    let data = ev.data.as_deref()?;
    Some(
        serde_json::from_str(data).unwrap_or_else(|e| panic!("not a tagged event ({e}): {data:?}")),
    )
}

fn t(slug: &str, live: u64, total: u64) -> Tagged {
    Tagged {
        slug: slug.to_owned(),
        live,
        total,
    }
}

/// Opens a shared stream (`req` is its GET) and reads past its `retry:` preamble.
async fn open_shared(app: &TestApp, req: Req) -> SseClient {
    let mut stream = app.open(req).await;
    assert_eq!(stream.status, 200, "shared stream: {:?}", stream.headers);
    let preamble = stream.next_event().await;
    assert!(
        preamble.retry.is_some() && preamble.data.is_none(),
        "{preamble:?}"
    );
    stream
}

fn shared_get(sid: &str) -> Req {
    Req::get(format!("/api/v1/shared/{sid}")).header("Accept", "text/event-stream")
}

fn shared_join(sid: &str, slug: &str, body: &str) -> Req {
    Req::post(format!("/api/v1/shared/{sid}/join/{slug}"), body)
}

fn shared_leave(sid: &str, slug: &str, body: &str) -> Req {
    Req::post(format!("/api/v1/shared/{sid}/leave/{slug}"), body)
}

fn leave(slug: &str, body: &str) -> Req {
    Req::post(format!("/api/v1/leave/{slug}"), body)
}

/// A connect carrying a page-show number: `?view=TOKEN&show=N`.
fn connect_show(slug: &str, tok: &str, show: &str) -> Req {
    Req::get(format!("/api/v1/connect/{slug}?view={tok}&show={show}"))
        .header("Accept", "text/event-stream")
}

/// Reads shared-stream events until `want` arrives, or fails at the deadline naming what came.
async fn await_tagged(stream: &mut SseClient, want: Tagged, within: Duration) {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match stream.next_event_within(left).await {
            Ok(Some(ev)) => match tagged(&ev) {
                Some(got) if got == want => return,
                Some(got) => seen.push(got),
                None => {}
            },
            Ok(None) => panic!("shared stream ended waiting for {want:?}; seen {seen:?}"),
            Err(e) => panic!("{e}: waiting for {want:?}; seen {seen:?}"),
        }
    }
}

/// Opens a stream request that must be refused with `status` (a JSON error, nothing streamed).
async fn assert_refused(app: &TestApp, req: Req, status: u16) -> Response {
    let what = format!("{req:?}");
    let stream = app.open(req).await;
    assert_eq!(
        stream.status, status,
        "{what}: answered {} {:?}",
        stream.status, stream.headers
    );
    let res = stream.into_response().await;
    res.assert_json_error(status);
    res
}

/// The `Retry-After` of a refusal, in seconds (at least 1).
fn retry_after(res: &Response) -> u64 {
    let secs = res
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("Retry-After in seconds: {res:?}"));
    assert!(secs >= 1, "{res:?}");
    secs
}

/// An address of the documentation prefix `2001:db8:1:{net}::/64`.
fn v6(net: u32, host: u32) -> String {
    format!("2001:db8:1:{net:x}::{host:x}")
}

/// Writes `bytes` on a connection of its own, half-closes it (FIN) at once, waits until the
/// server has answered something or closed, then closes it for good.
async fn send_and_half_close(addr: SocketAddr, bytes: &[u8]) {
    let mut conn = TcpStream::connect(addr).await.expect("connect");
    conn.write_all(bytes).await.expect("write the request");
    conn.shutdown().await.expect("half-close");
    let mut buf = [0u8; 4096];
    if tokio::time::timeout(READ_TIMEOUT, conn.read(&mut buf))
        .await
        .is_err()
    {
        panic!("a half-closed request was neither answered nor closed within {READ_TIMEOUT:?}");
    }
}

/// A POST head announcing a 500-byte body that never follows.
fn head_without_its_body(addr: SocketAddr, target: &str) -> String {
    format!(
        "POST {target} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: {BROWSER_UA}\r\n\
         Content-Type: text/plain;charset=UTF-8\r\nContent-Length: 500\r\n\r\n"
    )
}

/// A connection that sent `head` and nothing more.
async fn stalled(addr: SocketAddr, head: &str) -> TcpStream {
    let mut conn = TcpStream::connect(addr).await.expect("connect");
    conn.write_all(head.as_bytes()).await.expect("write head");
    conn
}

// ---------------------------------------------------------------------------------------------
// Nothing outlives an aborted request.

#[actix_web::test]
async fn connects_half_closed_right_after_the_head_leave_no_live_reader() {
    let app = spawn_app_configured(|c| c.workers = 1).await;
    // The post is awake and read: a join is answered at once, while the client goes.
    let watcher = app.join("alpha").await;
    for _ in 0..20 {
        // Origin = own origin: before the direct layer owned every stream, actix-web served
        // these and dropped the handler at the half-close, after the join.
        let req = Req::connect("alpha", &token()).origin(&app.origin());
        send_and_half_close(app.addr, &req.to_bytes(app.addr)).await;
    }

    // Whether they were counted as views is the server's choice; live readers they are not.
    await_value("live readers of alpha", 1, LIVE_DROP, || async {
        app.counts("alpha").await.live
    })
    .await;
    await_value("streams held", 1, LIVE_DROP, || app.stat("streams")).await;
    let total = app.counts("alpha").await.total;
    assert!((1..=21).contains(&total), "total {total}");
    watcher.stream.close();
    app.await_counts("alpha", counts(0, total), LIVE_DROP).await;
}

#[actix_web::test]
async fn a_shared_join_half_closed_after_its_body_holds_no_slot_and_the_real_join_counts() {
    let slugs = ["post-0", "post-1", "post-2", "post-3", "post-4"];
    let app = spawn_app_configured_with_slugs(&slugs, |c| c.workers = 1).await;
    let sid = token();
    let mut stream = open_shared(&app, shared_get(&sid)).await;
    let readers: Vec<String> = slugs.iter().map(|_| token()).collect();

    for (slug, reader) in slugs.iter().zip(&readers) {
        let aborted = shared_join(&sid, slug, reader).origin(&app.origin());
        send_and_half_close(app.addr, &aborted.to_bytes(app.addr)).await;
    }
    for (slug, reader) in slugs.iter().zip(&readers) {
        let real = shared_join(&sid, slug, reader).origin(&app.origin());
        let res = app.send(real).await;
        assert_eq!(res.status, 204, "real join of {slug}: {res:?}");
    }

    // Each reader is on the stream: its numbers came (from whichever join attached it).
    for slug in slugs {
        await_tagged(&mut stream, t(slug, 1, 1), PROPAGATION).await;
    }
    for slug in slugs {
        assert_eq!(app.counts(slug).await, counts(1, 1), "{slug}");
    }
}

// ---------------------------------------------------------------------------------------------
// Per-IP budgets cannot be walked around.

#[actix_web::test]
async fn ten_ipv6_addresses_of_one_64_share_one_stream_budget_and_another_64_has_its_own() {
    let app = spawn_app_configured(|c| c.limits.ip_streams = 1).await;
    let first = app
        .join_as(
            "alpha",
            Req::connect("alpha", &token()).client_ip(&v6(2, 1)),
        )
        .await;
    assert_eq!(first.first, counts(1, 1));

    for host in 2..=10 {
        let req = Req::connect("alpha", &token()).client_ip(&v6(2, host));
        let res = assert_refused(&app, req, 429).await;
        retry_after(&res);
    }
    assert_eq!(app.counts("alpha").await, counts(1, 1), "a refusal counted");

    let other = app
        .join_as(
            "alpha",
            Req::connect("alpha", &token()).client_ip(&v6(3, 1)),
        )
        .await;
    assert_eq!(other.first, counts(2, 2), "another /64 is another client");
}

#[actix_web::test]
async fn with_ipv6_prefix_128_each_address_is_a_client_and_with_48_a_whole_site_is_one() {
    let app = spawn_app_configured(|c| {
        c.limits.ip_streams = 1;
        c.limits.ipv6_prefix = 128;
    })
    .await;
    let mut open = Vec::new();
    for host in 1..=10 {
        let reader = app
            .join_as(
                "alpha",
                Req::connect("alpha", &token()).client_ip(&v6(2, host)),
            )
            .await;
        open.push(reader);
    }
    assert_eq!(app.counts("alpha").await, counts(10, 10));

    let site = spawn_app_configured(|c| {
        c.limits.ip_streams = 1;
        c.limits.ipv6_prefix = 48;
    })
    .await;
    let _first = site
        .join_as(
            "alpha",
            Req::connect("alpha", &token()).client_ip(&v6(2, 1)),
        )
        .await;
    let res = assert_refused(
        &site,
        Req::connect("alpha", &token()).client_ip(&v6(3, 1)),
        429,
    )
    .await;
    retry_after(&res);
    let elsewhere = site
        .join_as(
            "alpha",
            Req::connect("alpha", &token()).client_ip("2001:db8:2::1"),
        )
        .await;
    assert_eq!(elsewhere.first, counts(2, 2));
}

#[test]
fn ipv6_prefix_takes_32_to_128_and_refuses_anything_else() {
    use viewcounter::cli::ServeArgs;
    let parse = |n: &str| ServeArgs::from_args(["--ipv6-prefix", n]).map(|_| ());
    for good in ["32", "48", "64", "128"] {
        if let Err(e) = parse(good) {
            panic!("--ipv6-prefix {good} refused: {e}");
        }
    }
    for bad in ["31", "129", "0", "-1", "x"] {
        assert!(parse(bad).is_err(), "--ipv6-prefix {bad} accepted");
    }
}

#[actix_web::test]
async fn ten_ipv6_addresses_of_one_64_share_one_view_rate_and_another_64_has_its_own() {
    let app = spawn_app_configured(|c| c.limits.ip_views_per_minute = 1).await;
    for host in 1..=10 {
        let reader = app
            .join_as(
                "alpha",
                Req::connect("alpha", &token()).client_ip(&v6(2, host)),
            )
            .await;
        assert_eq!(
            reader.first.total,
            1,
            "view from {} counted: the /64 is one client",
            v6(2, host)
        );
        reader.stream.close();
    }
    app.await_counts("alpha", counts(0, 1), LIVE_DROP).await;

    let other = app
        .join_as(
            "alpha",
            Req::connect("alpha", &token()).client_ip(&v6(3, 1)),
        )
        .await;
    assert_eq!(other.first.total, 2, "another /64 is another client");
}

#[actix_web::test]
async fn the_per_ip_stream_limit_counts_each_member_of_a_shared_stream() {
    let app = spawn_app_configured(|c| c.limits.ip_streams = 2).await;
    let client = ip(40);
    let sid = token();
    let _stream = open_shared(&app, shared_get(&sid).client_ip(&client)).await;
    let (r1, r2, r3) = (token(), token(), token());

    for reader in [&r1, &r2] {
        let res = app
            .send(shared_join(&sid, "alpha", reader).client_ip(&client))
            .await;
        assert_eq!(res.status, 204, "{res:?}");
    }
    let refused = app
        .send(shared_join(&sid, "alpha", &r3).client_ip(&client))
        .await;
    refused.assert_json_error(429);
    retry_after(&refused);
    assert_eq!(
        app.counts("alpha").await,
        counts(2, 2),
        "the refusal counted"
    );

    // Two members are two readers: no room for a stream of its own either.
    let res = assert_refused(
        &app,
        Req::connect("gamma", &token()).client_ip(&client),
        429,
    )
    .await;
    retry_after(&res);
    assert_eq!(app.counts("gamma").await, counts(0, 0));
    // Another client is not held back.
    let other = app
        .join_as("beta", Req::connect("beta", &token()).client_ip(&ip(41)))
        .await;
    assert_eq!(other.first, counts(1, 1));

    // One member leaves: its place is given back.
    let res = app
        .send(shared_leave(&sid, "alpha", &r1).client_ip(&client))
        .await;
    assert_eq!(res.status, 204, "{res:?}");
    app.await_counts("alpha", counts(1, 2), PROPAGATION).await;
    let deadline = Instant::now() + LIVE_DROP;
    loop {
        let mut attempt = app
            .open(Req::connect("gamma", &token()).client_ip(&client))
            .await;
        if attempt.status == 200 {
            assert_eq!(attempt.next_event().await.counts(), Some(counts(1, 1)));
            break;
        }
        assert_eq!(attempt.status, 429);
        assert!(
            Instant::now() < deadline,
            "the departed member's place not given back within {LIVE_DROP:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Only an EventSource-style fetch counts.

#[actix_web::test]
async fn a_stream_fetched_as_an_image_a_frame_a_page_or_a_script_is_refused_and_counts_nothing() {
    let app = spawn_app().await;
    let sid = token();
    let _stream = open_shared(&app, shared_get(&sid)).await;

    for dest in ["image", "iframe", "document", "script"] {
        // The direct layer's path, and actix-web's (same-origin, with Origin).
        let plain = Req::connect("alpha", &token()).header("Sec-Fetch-Dest", dest);
        assert_refused(&app, plain, 403).await;
        let same_origin = Req::connect("alpha", &token())
            .origin(&app.origin())
            .header("Sec-Fetch-Site", "same-origin")
            .header("Sec-Fetch-Dest", dest);
        assert_refused(&app, same_origin, 403).await;
        assert_refused(
            &app,
            shared_get(&token()).header("Sec-Fetch-Dest", dest),
            403,
        )
        .await;
        app.send(shared_join(&sid, "alpha", &token()).header("Sec-Fetch-Dest", dest))
            .await
            .assert_json_error(403);
    }
    assert_eq!(app.counts("alpha").await, counts(0, 0));
    assert_eq!(app.totals().await, rows(&[]));
    assert_eq!(app.stat("streams").await, 1, "only the shared stream");

    // No Sec-Fetch-* at all (an old browser, a proxy that strips them): counted as before.
    let reader = app.join("alpha").await;
    assert_eq!(reader.first, counts(1, 1));
}

#[actix_web::test]
async fn a_cross_site_or_same_site_fetch_counts_only_with_an_allowed_origin() {
    let blog = "https://blog.example";
    let app = spawn_app_configured(|c| c.origins = origins(&[blog])).await;
    let sid = token();
    let _stream = open_shared(&app, shared_get(&sid)).await;

    let refused: [(&str, Option<&str>); 3] = [
        ("cross-site", None),
        ("same-site", None),
        ("cross-site", Some("https://elsewhere.example")),
    ];
    for (site, origin) in refused {
        let fetch = |req: Req| {
            let req = req
                .header("Sec-Fetch-Site", site)
                .header("Sec-Fetch-Mode", "cors")
                .header("Sec-Fetch-Dest", "empty");
            match origin {
                Some(o) => req.origin(o),
                None => req,
            }
        };
        assert_refused(&app, fetch(Req::connect("alpha", &token())), 403).await;
        assert_refused(&app, fetch(shared_get(&token())), 403).await;
        app.send(fetch(shared_join(&sid, "alpha", &token())))
            .await
            .assert_json_error(403);
    }
    // An allowed origin, but fetched as an image.
    let image = Req::connect("alpha", &token())
        .origin(blog)
        .header("Sec-Fetch-Site", "cross-site")
        .header("Sec-Fetch-Dest", "image");
    assert_refused(&app, image, 403).await;
    assert_eq!(app.counts("alpha").await, counts(0, 0));
    assert_eq!(app.totals().await, rows(&[]));

    // The blog's own EventSource and beacon-style join: counted.
    let eventsource = |req: Req| {
        req.origin(blog)
            .header("Sec-Fetch-Site", "cross-site")
            .header("Sec-Fetch-Mode", "cors")
            .header("Sec-Fetch-Dest", "empty")
    };
    let reader = app
        .join_as("alpha", eventsource(Req::connect("alpha", &token())))
        .await;
    assert_eq!(reader.first, counts(1, 1));
    let res = app
        .send(eventsource(shared_join(&sid, "alpha", &token())))
        .await;
    assert_eq!(res.status, 204, "{res:?}");
    assert_eq!(app.counts("alpha").await, counts(2, 2));
}

#[actix_web::test]
async fn a_same_origin_eventsource_fetch_counts_and_the_same_fetch_as_a_navigation_does_not() {
    let app = spawn_app().await;
    let eventsource = |req: Req| {
        req.header("Sec-Fetch-Site", "same-origin")
            .header("Sec-Fetch-Mode", "cors")
            .header("Sec-Fetch-Dest", "empty")
    };
    // Without Origin (a same-origin GET) and with it.
    let a = app
        .join_as("alpha", eventsource(Req::connect("alpha", &token())))
        .await;
    assert_eq!(a.first, counts(1, 1));
    let b = app
        .join_as(
            "alpha",
            eventsource(Req::connect("alpha", &token())).origin(&app.origin()),
        )
        .await;
    assert_eq!(b.first, counts(2, 2));

    // The same URL opened in the address bar.
    let navigation = Req::connect("alpha", &token())
        .header("Sec-Fetch-Site", "same-origin")
        .header("Sec-Fetch-Mode", "navigate")
        .header("Sec-Fetch-Dest", "document");
    assert_refused(&app, navigation, 403).await;
    assert_eq!(app.counts("alpha").await, counts(2, 2));
}

// ---------------------------------------------------------------------------------------------
// Bodies have a deadline; a stream client sends nothing.

#[actix_web::test]
async fn a_beacon_or_join_whose_body_never_comes_is_closed_within_5_s_of_its_head() {
    let app = spawn_app().await;
    let sid = token();
    let _stream = open_shared(&app, shared_get(&sid)).await;
    let reader = app.join("alpha").await;

    let targets = [
        "/api/v1/leave/alpha".to_owned(),
        format!("/api/v1/shared/{sid}/join/alpha"),
    ];
    let started = Instant::now();
    let mut conns = Vec::new();
    for target in &targets {
        conns.push(stalled(app.addr, &head_without_its_body(app.addr, target)).await);
    }
    for (target, conn) in targets.iter().zip(&mut conns) {
        let answer = read_until_closed(conn, BODY_DEADLINE)
            .await
            .unwrap_or_else(|e| panic!("{target}: {e}"));
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
            "{target}: {answer:?}"
        );
    }
    assert!(started.elapsed() <= BODY_DEADLINE);
    assert_eq!(app.counts("alpha").await, counts(1, 1));
    drop(reader);
}

#[actix_web::test]
async fn more_stalled_bodies_than_open_files_do_not_keep_the_server_from_answering() {
    const FILES: u64 = 128;
    const STALLED: usize = 150;
    let server = BinServer::start_with_open_files(FILES, &["--max-streams", "16"]).await;
    let head = head_without_its_body(server.addr, "/api/v1/leave/alpha");
    let mut conns = Vec::new();
    for _ in 0..STALLED {
        conns.push(stalled(server.addr, &head).await);
    }

    let mut health = stalled(
        server.addr,
        &format!(
            "GET /healthz HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            server.addr
        ),
    )
    .await;
    let within = Duration::from_secs(20);
    let answer = read_until_closed(&mut health, within)
        .await
        .unwrap_or_else(|e| panic!("/healthz behind {STALLED} stalled bodies: {e}"));
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "/healthz: {answer:?}; log:\n{}",
        server.log()
    );
    drop(conns);
}

#[actix_web::test]
async fn a_stream_client_that_sends_more_than_1_kib_after_its_head_is_disconnected() {
    let app = spawn_app().await;
    let mut views = 0;
    // The direct layer's stream, then actix-web's (same-origin, with Origin).
    let requests = [
        ("direct", Req::connect("alpha", &token())),
        (
            "actix-web",
            Req::connect("alpha", &token()).origin(&app.origin()),
        ),
    ];
    for (path, req) in requests {
        let mut reader = app.join_as("alpha", req).await;
        views += 1;
        assert_eq!(reader.first, counts(1, views), "{path}");

        // A few stray bytes are no reason to drop a reader: it still hears of changes.
        reader.stream.send_raw(&b"\r\n".repeat(32)).await;
        let other = app.join("alpha").await;
        views += 1;
        reader
            .stream
            .await_counts(counts(2, views), PROPAGATION)
            .await;
        other.stream.close();
        reader
            .stream
            .await_counts(counts(1, views), LIVE_DROP)
            .await;

        reader.stream.send_raw(&[b'x'; 2048]).await;
        assert!(
            reader.stream.closes_within(READ_TIMEOUT).await,
            "{path} stream still open {READ_TIMEOUT:?} after 2 KiB from its client"
        );
        app.await_counts("alpha", counts(0, views), LIVE_DROP).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Admin without a token: direct loopback connections only.

#[actix_web::test]
async fn admin_answers_without_a_token_only_direct_loopback_requests_and_forwarded_ones_with_it() {
    let app = spawn_app().await;
    let _reader = app.join("alpha").await;
    for target in ["/api/v1/totals", "/api/v1/stats"] {
        let direct = app.send(Req::get(target)).await;
        assert_eq!(direct.status, 200, "{target} from loopback: {direct:?}");

        // Forwarded by a proxy on this host: the client may be anyone, whatever it names.
        for (name, value) in [
            ("X-Forwarded-For", "127.0.0.1"),
            ("X-Forwarded-For", "::1"),
            ("Forwarded", "for=127.0.0.1"),
            ("Forwarded", "for=\"[::1]\""),
        ] {
            let res = app.send(Req::get(target).header(name, value)).await;
            assert_eq!(res.status, 401, "{target} with {name}: {value}: {res:?}");
            res.assert_json_error(401);
        }
    }

    // With a token, a forwarded request carrying it is answered, from wherever it comes.
    let app = spawn_app_configured(|c| c.admin_token = Some("s3cret-admin-token".into())).await;
    for target in ["/api/v1/totals", "/api/v1/stats"] {
        let with = Req::get(target)
            .header("Authorization", "Bearer s3cret-admin-token")
            .client_ip("203.0.113.5");
        let res = app.send(with).await;
        assert_eq!(res.status, 200, "{target}: {res:?}");
        app.send(Req::get(target).client_ip("127.0.0.1"))
            .await
            .assert_json_error(401);
    }
}

// ---------------------------------------------------------------------------------------------
// `--allow-any-slug` cannot be filled by one client.

#[actix_web::test]
async fn with_any_slug_one_client_creates_at_most_ip_new_post_rate_posts_and_others_still_can() {
    let any_slug = |c: &mut Config| {
        c.posts = Posts::Any {
            max: 5,
            new_per_hour: 2,
        }
    };
    let app = spawn_app_configured_with_slugs(&[], any_slug).await;
    let (a, b, c) = (ip(50), ip(51), ip(52));
    let from = |slug: &str, client: &str| Req::connect(slug, &token()).client_ip(client);
    let mut open = Vec::new();

    for slug in ["junk-1", "junk-2"] {
        let reader = app.join_as(slug, from(slug, &a)).await;
        assert_eq!(reader.first, counts(1, 1), "{slug}");
        open.push(reader);
    }
    // Enough attempts to fill the cap of 5 if nothing stopped them.
    for slug in ["junk-3", "junk-4", "junk-5"] {
        let res = assert_refused(&app, from(slug, &a), 429).await;
        retry_after(&res);
    }
    // An existing post is no new post.
    let again = app.join_as("junk-1", from("junk-1", &a)).await;
    assert_eq!(again.first, counts(2, 2));
    open.push(again);
    let genuine = app.join_as("genuine", from("genuine", &b)).await;
    assert_eq!(genuine.first, counts(1, 1));
    open.push(genuine);
    let stored = rows(&[("genuine", 1), ("junk-1", 2), ("junk-2", 1)]);
    assert_eq!(app.totals().await, stored);

    drop(open);
    let app = spawn_app_configured_in(app.stop_and_keep_dir().await, any_slug).await;
    assert_eq!(app.totals().await, stored, "rows kept across the restart");
    let another = app
        .join_as("another-genuine", from("another-genuine", &c))
        .await;
    assert_eq!(another.first, counts(1, 1), "the cap still has room");
}

// ---------------------------------------------------------------------------------------------
// A leave ends only what it was sent for: `TOKEN N` names the page show.

#[actix_web::test]
async fn a_beacon_of_an_earlier_page_show_does_not_take_off_the_reopened_stream() {
    let app = spawn_app().await;
    let tok = token();
    let first = app.join_as("alpha", connect_show("alpha", &tok, "1")).await;
    assert_eq!(
        (first.id.as_str(), first.first),
        (tok.as_str(), counts(1, 1))
    );
    first.stream.close();
    app.await_counts("alpha", counts(0, 1), LIVE_DROP).await;

    // Back from the back/forward cache: the same page view, its second show.
    let restored = app.join_as("alpha", connect_show("alpha", &tok, "2")).await;
    assert_eq!(restored.first, counts(1, 1), "live again, not a new view");

    // The first show's pagehide beacon, arriving late.
    let res = app.send(leave("alpha", &format!("{tok} 1"))).await;
    assert_eq!(res.status, 204, "{res:?}");
    assert_eq!(
        app.counts("alpha").await,
        counts(1, 1),
        "the beacon of show 1 took off show 2"
    );

    let res = app.send(leave("alpha", &format!("{tok} 2"))).await;
    assert_eq!(res.status, 204, "{res:?}");
    assert_eq!(app.counts("alpha").await, counts(0, 1));
    drop(restored);
}

#[actix_web::test]
async fn a_beacon_of_an_earlier_page_show_does_not_take_off_a_shared_stream_member() {
    let app = spawn_app().await;
    let sid = token();
    let mut stream = open_shared(&app, shared_get(&sid)).await;
    let tok = token();

    let res = app
        .send(shared_join(&sid, "alpha", &format!("{tok} 1")))
        .await;
    assert_eq!(res.status, 204, "{res:?}");
    await_tagged(&mut stream, t("alpha", 1, 1), PROPAGATION).await;
    let res = app
        .send(shared_leave(&sid, "alpha", &format!("{tok} 1")))
        .await;
    assert_eq!(res.status, 204, "{res:?}");
    app.await_counts("alpha", counts(0, 1), PROPAGATION).await;

    let res = app
        .send(shared_join(&sid, "alpha", &format!("{tok} 2")))
        .await;
    assert_eq!(res.status, 204, "{res:?}");
    await_tagged(&mut stream, t("alpha", 1, 1), PROPAGATION).await;
    assert_eq!(app.counts("alpha").await, counts(1, 1));

    // The first show's beacon, late, by the plain leave route.
    let res = app.send(leave("alpha", &format!("{tok} 1"))).await;
    assert_eq!(res.status, 204, "{res:?}");
    assert_eq!(
        app.counts("alpha").await,
        counts(1, 1),
        "the beacon of show 1 took off show 2"
    );

    // The second show's own beacon does end it.
    let res = app.send(leave("alpha", &format!("{tok} 2"))).await;
    assert_eq!(res.status, 204, "{res:?}");
    assert_eq!(app.counts("alpha").await, counts(0, 1));
}

#[actix_web::test]
async fn a_stream_without_a_show_number_is_show_0_and_a_bare_token_beacon_ends_it() {
    let app = spawn_app().await;
    let tok = token();
    let legacy = app.join_as("alpha", Req::connect("alpha", &tok)).await;
    assert_eq!(legacy.first, counts(1, 1));

    let res = app.send(leave("alpha", &format!("{tok} 3"))).await;
    assert_eq!(res.status, 204, "{res:?}");
    assert_eq!(
        app.counts("alpha").await,
        counts(1, 1),
        "show 3 took off show 0"
    );
    let res = app.send(leave("alpha", &tok)).await;
    assert_eq!(res.status, 204, "{res:?}");
    assert_eq!(app.counts("alpha").await, counts(0, 1));
    drop(legacy);

    // `show=0` said out loud is the same show, and `TOKEN 0` the same beacon.
    let explicit = app.join_as("alpha", connect_show("alpha", &tok, "0")).await;
    assert_eq!(explicit.first, counts(1, 1));
    let res = app.send(leave("alpha", &format!("{tok} 0"))).await;
    assert_eq!(res.status, 204, "{res:?}");
    assert_eq!(app.counts("alpha").await, counts(0, 1));
    drop(explicit);
}

#[actix_web::test]
async fn a_malformed_show_number_is_refused_with_400_and_changes_nothing() {
    let app = spawn_app().await;
    let sid = token();
    let _stream = open_shared(&app, shared_get(&sid)).await;
    let tok = token();
    let reader = app
        .join_as("alpha", connect_show("alpha", &tok, "4294967295"))
        .await;
    assert_eq!(
        reader.first,
        counts(1, 1),
        "the largest u32 is a show number"
    );

    for bad in ["x", "-1", "1.5", "4294967296"] {
        assert_refused(&app, connect_show("alpha", &token(), bad), 400).await;
    }
    // `1 2` is a leave's show and visible milliseconds; a join has no time.
    let res = app
        .send(shared_join(&sid, "alpha", &format!("{tok} 1 2")))
        .await;
    res.assert_json_error(400);
    for bad in ["x", "1 2 3", "1 x", "-1", "4294967296"] {
        let body = format!("{tok} {bad}");
        for req in [
            leave("alpha", &body),
            shared_join(&sid, "alpha", &body),
            shared_leave(&sid, "alpha", &body),
        ] {
            let what = format!("{req:?}");
            let res = app.send(req).await;
            assert_eq!(res.status, 400, "{what}: {res:?}");
            res.assert_json_error(400);
        }
    }
    assert_eq!(app.counts("alpha").await, counts(1, 1));

    // A well-formed one of another show: accepted, and it ends nothing.
    let res = app.send(leave("alpha", &format!("{tok} 7"))).await;
    assert_eq!(res.status, 204, "{res:?}");
    assert_eq!(app.counts("alpha").await, counts(1, 1));
    drop(reader);
}

// ---------------------------------------------------------------------------------------------
// Streams take the lean direct path.

#[actix_web::test]
async fn every_stream_is_answered_by_the_direct_layer_whatever_its_head() {
    let app = spawn_app().await;
    assert_eq!(app.stat("direct_streams").await, 0);
    let many_headers = (0..60).fold(Req::connect("alpha", &token()), |req, i| {
        req.header(&format!("X-Extra-{i}"), "1")
    });
    let heads = [
        ("plain", Req::connect("alpha", &token())),
        (
            "same-origin",
            Req::connect("alpha", &token()).origin(&app.origin()),
        ),
        ("60 headers", many_headers),
        (
            "a 8 KiB cookie",
            Req::connect("alpha", &token()).header("Cookie", "c".repeat(8192)),
        ),
        (
            "a percent-escaped slug",
            Req::get(format!("/api/v1/connect/%61lpha?view={}", token())),
        ),
    ];
    let mut held = Vec::new();
    for (i, (what, req)) in heads.into_iter().enumerate() {
        let reader = app.join_as("alpha", req).await;
        let n = i as u64 + 1;
        assert_eq!(reader.first, counts(n, n), "{what}");
        // Delimited by the connection's close, not chunked as actix-web would.
        assert_eq!(reader.stream.header("transfer-encoding"), None, "{what}");
        assert_eq!(reader.stream.header("connection"), Some("close"), "{what}");
        assert_eq!(app.stat("direct_streams").await, n, "{what}");
        held.push(reader);
    }
    for reader in held {
        reader.stream.close();
    }
    await_value("direct streams", 0, LIVE_DROP, || {
        app.stat("direct_streams")
    })
    .await;
}

#[actix_web::test]
async fn a_stream_refused_by_the_direct_layer_is_the_json_error_actix_web_would_send() {
    let app = spawn_app_configured(|c| c.origins = origins(&["https://blog.example"])).await;
    let refused = app
        .send(Req::connect("no-such-post", &token()).origin("https://blog.example"))
        .await;
    refused.assert_json_error(404);
    assert_eq!(refused.header("connection"), Some("close"));
    assert_eq!(refused.header("cache-control"), Some("no-store"));
    assert_eq!(
        refused.header("access-control-allow-origin"),
        Some("https://blog.example")
    );
    let busy = spawn_app_configured(|c| c.limits.max_streams = Some(1)).await;
    let _one = busy.join("alpha").await;
    let full = busy.send(Req::connect("alpha", &token())).await;
    full.assert_json_error(503);
    assert!(full.header("retry-after").is_some(), "{full:?}");
    assert_eq!(busy.stat("direct_streams").await, 1);
}
