//! The owner's dashboard (`design.md`, "The owner and the index page"): `/admin`, its login
//! and session cookie, the admin rule the cookie opens (reads only), the one stream that keeps
//! the table live (`/api/v1/admin/stream`), and the all-posts history the chart reads.

use std::time::{Duration, Instant};

use testkit::*;

const ADMIN: &str = "dashboard-tests-admin-token";
/// The contract: a reader arriving shows on the dashboard within a second.
const ARRIVAL: Duration = Duration::from_secs(1);

fn with_token(c: &mut Config) {
    c.admin_token = Some(ADMIN.into());
}

/// The login form as a browser posts it.
fn login_form(token: &str) -> Req {
    let body: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("token", token)
        .finish();
    Req::post("/admin/login", body).header("Content-Type", "application/x-www-form-urlencoded")
}

/// Logs in with the right token; the cookie as a browser would send it back (`name=value`).
async fn log_in(app: &TestApp) -> String {
    let res = app.send(login_form(ADMIN)).await;
    assert_eq!(res.status, 303, "{res:?}");
    let set = res.header("set-cookie").expect("a session cookie");
    set.split(';').next().expect("name=value").to_owned()
}

fn with_cookie(req: Req, cookie: &str) -> Req {
    req.header("Cookie", cookie)
}

/// The `event:` field of an event, if named.
fn event_name(ev: &SseEvent) -> Option<&str> {
    ev.raw.lines().find_map(|l| l.strip_prefix("event: "))
}

/// Reads events until one is a snapshot; its JSON.
async fn next_snapshot(stream: &mut SseClient) -> serde_json::Value {
    loop {
        let ev = stream.next_event().await;
        if event_name(&ev) == Some("snapshot") {
            return serde_json::from_str(ev.data.as_deref().expect("data")).expect("JSON");
        }
    }
}

/// One post's row in a snapshot: (live, today, total).
fn row_of(snapshot: &serde_json::Value, slug: &str) -> Option<(u64, u64, u64)> {
    snapshot["posts"]
        .as_array()?
        .iter()
        .find(|p| p["slug"] == slug)
        .map(|p| {
            let n = |k: &str| p[k].as_u64().expect("a number");
            (n("live"), n("today"), n("total"))
        })
}

/// Reads row events until `slug` shows (live, today, total) = `want`; panics at `within`.
/// Every row seen of that slug on the way, `want` last.
async fn await_row(
    stream: &mut SseClient,
    slug: &str,
    want: (u64, u64, u64),
    within: Duration,
) -> Vec<(u64, u64, u64)> {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ev = match stream.next_event_within(left).await {
            Ok(Some(ev)) => ev,
            other => panic!("{other:?} waiting for {slug} {want:?}; seen {seen:?}"),
        };
        let Some(data) = ev.data.as_deref() else {
            continue;
        };
        let json: serde_json::Value = serde_json::from_str(data).expect("JSON");
        let row = match event_name(&ev) {
            Some("snapshot") => row_of(&json, slug),
            None if json["slug"] == slug => {
                let n = |k: &str| json[k].as_u64().expect("a number");
                Some((n("live"), n("today"), n("total")))
            }
            _ => None,
        };
        if let Some(row) = row {
            seen.push(row);
            if row == want {
                return seen;
            }
        }
    }
}

async fn open_admin_stream(app: &TestApp, cookie: Option<&str>) -> SseClient {
    let req = Req::get("/api/v1/admin/stream").header("Accept", "text/event-stream");
    let req = match cookie {
        Some(c) => with_cookie(req, c),
        None => req,
    };
    let stream = app.open(req).await;
    assert_eq!(stream.status, 200, "{:?}", stream.headers);
    stream
}

// ---------------------------------------------------------------------------------------------
// Login and the cookie.

#[actix_web::test]
async fn the_right_token_gets_a_strict_http_only_session_cookie_that_opens_the_dashboard() {
    let app = spawn_app_configured(with_token).await;

    let form = app.send(Req::get("/admin")).await;
    assert_eq!(form.status, 200, "{form:?}");
    assert!(form.text().contains(r#"name="token""#), "the login form");
    assert!(form.text().contains(r#"action="admin/login""#), "{form:?}");
    assert!(
        !form.text().contains(r#"id="rows""#),
        "no dashboard before login"
    );

    let res = app.send(login_form(ADMIN)).await;
    assert_eq!(res.status, 303, "{res:?}");
    assert_eq!(res.header("location"), Some("../admin"));
    let set = res.header("set-cookie").expect("Set-Cookie");
    let attrs: Vec<&str> = set.split(';').map(str::trim).collect();
    assert!(attrs[0].starts_with("viewcounter_admin="), "{set}");
    for want in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=604800"] {
        assert!(attrs.contains(&want), "{want} missing: {set}");
    }
    assert!(!attrs.contains(&"Secure"), "plain HTTP: no Secure: {set}");

    let cookie = attrs[0];
    let page = app.send(with_cookie(Req::get("/admin"), cookie)).await;
    assert_eq!(page.status, 200, "{page:?}");
    assert!(page.text().contains(r#"id="rows""#), "the dashboard");
    assert!(page.text().contains("admin/logout"), "a logout button");
    assert!(
        page.header("content-security-policy")
            .is_some_and(|p| p.contains("frame-ancestors 'none'")),
        "{page:?}"
    );
}

#[actix_web::test]
async fn the_cookie_is_secure_when_a_trusted_proxy_says_the_browser_spoke_https() {
    let app = spawn_app_configured(with_token).await;
    let https = login_form(ADMIN)
        .client_ip("203.0.113.7")
        .header("X-Forwarded-Proto", "https");
    let res = app.send(https).await;
    assert_eq!(res.status, 303, "{res:?}");
    assert!(res.header("set-cookie").unwrap().contains("; Secure"));

    // The same header from a peer that is not a trusted proxy is not believed.
    let untrusted = spawn_app_configured(|c| {
        with_token(c);
        c.trusted_proxies = trusted_proxies(&["10.0.0.0/8"]);
    })
    .await;
    let res = untrusted
        .send(login_form(ADMIN).header("X-Forwarded-Proto", "https"))
        .await;
    assert_eq!(res.status, 303, "{res:?}");
    assert!(!res.header("set-cookie").unwrap().contains("Secure"));
}

#[actix_web::test]
async fn a_wrong_token_gets_a_clear_401_and_the_eleventh_in_a_minute_a_429() {
    let app = spawn_app_configured(with_token).await;
    let from = |ip: &str, token: &str| login_form(token).client_ip(ip);

    for i in 0..10 {
        let res = app.send(from("203.0.113.7", "not-the-token")).await;
        assert_eq!(res.status, 401, "try {i}: {res:?}");
        assert!(res.text().contains("Wrong token"), "{res:?}");
        // Answered at /admin/login: its links lead back up, to the same files as /admin's.
        assert!(res.text().contains(r#"action="../admin/login""#), "{res:?}");
        assert!(res.text().contains(r#"href="../admin/dashboard.css""#));
        assert!(res.header("set-cookie").is_none(), "{res:?}");
    }
    // An empty form guesses nothing and takes nothing.
    let empty = app.send(from("203.0.113.8", "")).await;
    assert_eq!(empty.status, 400, "{empty:?}");
    assert!(empty.text().contains("Enter the admin token"), "{empty:?}");

    // Even the right token waits: otherwise guessing would go on at full speed.
    let limited = app.send(from("203.0.113.7", ADMIN)).await;
    assert_eq!(limited.status, 429, "{limited:?}");
    let wait: u64 = limited
        .header("retry-after")
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("a Retry-After in seconds: {limited:?}"));
    assert!((1..=6).contains(&wait), "one try back within 6 s: {wait}");
    assert!(
        limited.text().contains(&format!("Wait {wait} seconds")),
        "{limited:?}"
    );
    assert!(limited.header("set-cookie").is_none());

    // Another client has its own tries.
    let other = app.send(from("198.51.100.1", ADMIN)).await;
    assert_eq!(other.status, 303, "{other:?}");
}

#[actix_web::test]
async fn the_cookie_opens_every_admin_get_and_no_post() {
    let app = spawn_app_configured(with_token).await;
    let _reader = app.join("alpha").await;
    let cookie = log_in(&app).await;

    for path in [
        "/api/v1/totals",
        "/api/v1/stats",
        "/api/v1/history/alpha?days=7",
        "/api/v1/history?days=7",
        "/api/v1/daily",
        "/metrics",
    ] {
        let without = app.send(Req::get(path)).await;
        assert_eq!(without.status, 401, "{path} without: {without:?}");
        let forged = app
            .send(with_cookie(
                Req::get(path),
                "viewcounter_admin=9999999999.00ff",
            ))
            .await;
        assert_eq!(forged.status, 401, "{path} forged: {forged:?}");
        let with = app.send(with_cookie(Req::get(path), &cookie)).await;
        assert_eq!(with.status, 200, "{path} with the cookie: {with:?}");
    }
    let stream = open_admin_stream(&app, Some(&cookie)).await;
    drop(stream);

    // A change needs the bearer token: the cookie is what a forged form would carry.
    let import = || Req::import("/api/v1/import?mode=add", "slug,total\nalpha,5\n");
    let res = app.send(with_cookie(import(), &cookie)).await;
    res.assert_json_error(401);
    let res = app
        .send(import().header("Authorization", format!("Bearer {ADMIN}")))
        .await;
    assert_eq!(res.status, 200, "{res:?}");
}

#[actix_web::test]
async fn a_session_ends_with_its_week_and_with_a_new_token() {
    let (app, clock) = spawn_app_at(1_772_884_800, with_token).await;
    let cookie = log_in(&app).await;
    let totals = || with_cookie(Req::get("/api/v1/totals"), &cookie);
    assert_eq!(app.send(totals()).await.status, 200);

    clock.set_unix(clock.now_unix() + 7 * 24 * 3600 + 1);
    app.send(totals()).await.assert_json_error(401);
    let page = app.send(with_cookie(Req::get("/admin"), &cookie)).await;
    assert!(
        page.text().contains(r#"name="token""#),
        "the login form again"
    );

    // Restarted (on the same clock) with the same token, a session lives on; with another,
    // it ends.
    let fresh = log_in(&app).await;
    let dir = app.stop_and_keep_dir().await;
    let same_clock = clock.clone();
    let app = spawn_app_configured_in(dir, move |c| {
        with_token(c);
        c.clock = same_clock;
    })
    .await;
    let totals = || with_cookie(Req::get("/api/v1/totals"), &fresh);
    assert_eq!(
        app.send(totals()).await.status,
        200,
        "kept across a restart"
    );
    let dir = app.stop_and_keep_dir().await;
    let app = spawn_app_configured_in(dir, move |c| {
        c.admin_token = Some("a-new-admin-token-0123".into());
        c.clock = clock;
    })
    .await;
    app.send(totals()).await.assert_json_error(401);
}

#[actix_web::test]
async fn logout_clears_the_cookie() {
    let app = spawn_app_configured(with_token).await;
    let res = app.send(Req::post("/admin/logout", "")).await;
    assert_eq!(res.status, 303, "{res:?}");
    let set = res.header("set-cookie").expect("Set-Cookie");
    assert!(set.starts_with("viewcounter_admin=;"), "{set}");
    assert!(set.contains("Max-Age=0"), "{set}");
}

// ---------------------------------------------------------------------------------------------
// Without a token: loopback only.

#[actix_web::test]
async fn without_a_token_loopback_needs_no_login_and_anyone_else_is_told_how_to_set_one() {
    let app = spawn_app().await;

    let local = app.send(Req::get("/admin")).await;
    assert_eq!(local.status, 200, "{local:?}");
    assert!(local.text().contains(r#"id="rows""#), "the dashboard");
    assert!(!local.text().contains("admin/logout"), "no session to end");
    let stream = open_admin_stream(&app, None).await;
    drop(stream);

    // Through a proxy (forwarding headers), whatever address it names: not the owner.
    for ip in ["203.0.113.7", "127.0.0.1"] {
        let remote = app.send(Req::get("/admin").client_ip(ip)).await;
        assert_eq!(remote.status, 403, "{remote:?}");
        assert!(remote.text().contains("--admin-token"), "{remote:?}");
        let login = app.send(login_form("anything").client_ip(ip)).await;
        assert_eq!(login.status, 403, "{login:?}");
        assert!(login.header("set-cookie").is_none());
        let stream = app
            .send(Req::get("/api/v1/admin/stream").client_ip(ip))
            .await;
        stream.assert_json_error(401);
    }
}

#[actix_web::test]
async fn with_a_token_loopback_logs_in_like_everyone() {
    let app = spawn_app_configured(with_token).await;
    let page = app.send(Req::get("/admin")).await;
    assert!(page.text().contains(r#"name="token""#), "{page:?}");
    app.send(Req::get("/api/v1/admin/stream"))
        .await
        .assert_json_error(401);
}

// ---------------------------------------------------------------------------------------------
// The admin stream.

#[actix_web::test]
async fn the_admin_stream_starts_with_every_post_then_carries_arrivals_and_departures() {
    let app = spawn_app_configured(with_token).await;
    let first = app.join("alpha").await;
    let cookie = log_in(&app).await;

    let mut stream = open_admin_stream(&app, Some(&cookie)).await;
    assert_eq!(stream.header("cache-control"), Some("no-store"));
    assert_eq!(stream.header("x-accel-buffering"), Some("no"));
    let snapshot = next_snapshot(&mut stream).await;
    assert_eq!(row_of(&snapshot, "alpha"), Some((1, 1, 1)), "{snapshot}");
    // Listed posts nobody read yet are there, at zero.
    assert_eq!(row_of(&snapshot, "beta"), Some((0, 0, 0)), "{snapshot}");
    assert_eq!(
        snapshot["posts"].as_array().map(Vec::len),
        Some(DEFAULT_SLUGS.len())
    );

    let arrived = Instant::now();
    let beta = app.join("beta").await;
    await_row(&mut stream, "beta", (1, 1, 1), ARRIVAL).await;
    let took = arrived.elapsed();
    assert!(took < ARRIVAL, "a reader showed after {took:?}");

    first.stream.close();
    await_row(&mut stream, "alpha", (0, 1, 1), LIVE_DROP).await;
    beta.stream.close();
    await_row(&mut stream, "beta", (0, 1, 1), LIVE_DROP).await;
    // A returning reader id counts no view: today and total stay. (The row alpha's reader
    // left with its reading time may come first, still at 0 live: when the writer took it
    // is the writer's business.)
    let again = app.join_as("alpha", Req::connect("alpha", &first.id)).await;
    let rows = await_row(&mut stream, "alpha", (1, 1, 1), ARRIVAL).await;
    assert!(
        rows.iter()
            .all(|&(_, today, total)| (today, total) == (1, 1)),
        "{rows:?}"
    );
    // A new reader counts on both.
    let new = app.join("alpha").await;
    await_row(&mut stream, "alpha", (2, 2, 2), ARRIVAL).await;
    drop((again, new));
}

/// The direct layer answers the dashboard's stream as it answers every stream: the same head
/// (close-delimited, never chunked), its first event, its rows, heartbeats between (and the
/// retry hint when the server stops, below). It takes no place in the limits.
#[actix_web::test]
async fn the_admin_stream_has_the_head_and_the_life_of_every_stream() {
    let app = spawn_app_configured(|c| {
        c.heartbeat = Duration::from_millis(200);
        c.origins = origins(&["https://blog.example"]);
    })
    .await;
    let req = Req::get("/api/v1/admin/stream").origin("https://blog.example");
    let mut stream = app.open(req).await;
    assert_eq!(stream.status, 200, "{:?}", stream.headers);
    assert_eq!(stream.header("content-type"), Some("text/event-stream"));
    assert_eq!(stream.header("cache-control"), Some("no-store"));
    assert_eq!(stream.header("x-accel-buffering"), Some("no"));
    assert_eq!(
        stream.header("access-control-allow-origin"),
        Some("https://blog.example")
    );
    assert_eq!(stream.header("transfer-encoding"), None);
    assert_eq!(stream.header("connection"), Some("close"));

    let first = stream.next_event().await;
    assert_eq!(first.retry, Some(2000), "{first:?}");
    let snapshot = next_snapshot(&mut stream).await;
    assert_eq!(row_of(&snapshot, "alpha"), Some((0, 0, 0)), "{snapshot}");

    let reader = app.join("alpha").await;
    await_row(&mut stream, "alpha", (1, 1, 1), ARRIVAL).await;
    let quiet = stream.events_within(Duration::from_millis(700)).await;
    assert!(quiet.iter().any(SseEvent::is_heartbeat), "{quiet:?}");
    assert_eq!(app.stat("direct_streams").await, 1, "the reader's only");
    assert_eq!(app.stat("streams").await, 1, "the reader's only");
    drop(reader);
}

/// Refused on the socket, as every stream is, with the answer and headers of the other admin
/// routes, and on the same budget of failed authentications.
#[actix_web::test]
async fn the_admin_stream_refuses_with_www_authenticate_and_retry_after_from_the_shared_budget() {
    let app = spawn_app_configured(with_token).await;
    let stream = || Req::get("/api/v1/admin/stream").header("Accept", "text/event-stream");
    let bearer = |req: Req, token: &str| req.header("Authorization", format!("Bearer {token}"));

    let none = app.send(stream()).await;
    none.assert_json_error(401);
    assert_eq!(none.header("www-authenticate"), Some("Bearer"), "{none:?}");
    assert_eq!(none.header("connection"), Some("close"), "{none:?}");

    let guesser = "203.0.113.44";
    for i in 0..10 {
        let res = app
            .send(bearer(stream(), "not-the-token").client_ip(guesser))
            .await;
        res.assert_json_error(401);
        assert_eq!(res.header("www-authenticate"), Some("Bearer"), "try {i}");
    }
    let right = app.send(bearer(stream(), ADMIN).client_ip(guesser)).await;
    right.assert_json_error(429);
    let wait: u64 = right
        .header("retry-after")
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("Retry-After in seconds: {right:?}"));
    assert!((1..=6).contains(&wait), "one try back within 6 s: {wait}");
    let totals = bearer(Req::get("/api/v1/totals"), ADMIN).client_ip(guesser);
    app.send(totals).await.assert_json_error(429);

    let mut other = app
        .open(bearer(stream(), ADMIN).client_ip("203.0.113.45"))
        .await;
    assert_eq!(other.status, 200, "{:?}", other.headers);
    next_snapshot(&mut other).await;
}

/// Without a token the stream is the owner's at the machine: a loopback peer naming a loopback
/// host, never a page on a rebinding name or a request through a proxy.
#[actix_web::test]
async fn without_a_token_the_admin_stream_refuses_a_rebinding_host() {
    let app = spawn_app().await;
    let port = app.addr.port();
    for host in [format!("localhost:{port}"), format!("[::1]:{port}")] {
        let req = Req::get("/api/v1/admin/stream").header("Host", &host);
        let mut stream = app.open(req).await;
        assert_eq!(stream.status, 200, "{host}: {:?}", stream.headers);
        next_snapshot(&mut stream).await;
    }
    for host in ["rebind.attacker.example", "localhost.attacker.example:8080"] {
        let req = Req::get("/api/v1/admin/stream").header("Host", host);
        app.send(req).await.assert_json_error(401);
    }
    let proxied = Req::get("/api/v1/admin/stream").client_ip("127.0.0.1");
    app.send(proxied).await.assert_json_error(401);
}

#[actix_web::test]
async fn today_stays_right_across_an_import_and_a_new_day() {
    let (app, clock) = spawn_app_at(1_772_927_940, |_| {}).await; // 2026-03-07T23:59:00Z
    let _reader = app.join("alpha").await;
    let mut stream = open_admin_stream(&app, None).await;
    let snapshot = next_snapshot(&mut stream).await;
    assert_eq!(snapshot["day"], "2026-03-07");
    assert_eq!(row_of(&snapshot, "alpha"), Some((1, 1, 1)));

    // 100 views imported to the all-time total are not today's.
    let res = app
        .send(Req::import(
            "/api/v1/import?mode=add",
            "slug,total\nalpha,100\n",
        ))
        .await;
    assert_eq!(res.status, 200, "{res:?}");
    let after_import = next_snapshot(&mut stream).await;
    assert_eq!(row_of(&after_import, "alpha"), Some((1, 1, 101)));
    // The import's own broadcast to alpha's readers changes nothing shown.
    let quiet = stream.events_within(Duration::from_millis(400)).await;
    assert!(
        quiet.iter().all(|e| e.data.is_none()),
        "no row after the import's snapshot: {quiet:?}"
    );

    // Midnight: the next change comes with a new day, where alpha has one view so far.
    clock.set_unix(1_772_928_005); // 2026-03-08T00:00:05Z
    let _second = app.join("alpha").await;
    let next_day = next_snapshot(&mut stream).await;
    assert_eq!(next_day["day"], "2026-03-08");
    assert_eq!(row_of(&next_day, "alpha"), Some((2, 1, 102)), "{next_day}");
}

#[actix_web::test]
async fn a_post_the_snapshot_did_not_have_arrives_with_its_numbers() {
    let app = spawn_app_configured(|c| {
        c.posts = Posts::Any {
            max: 100,
            new_per_hour: 10,
        }
    })
    .await;
    let mut stream = open_admin_stream(&app, None).await;
    let snapshot = next_snapshot(&mut stream).await;
    assert_eq!(snapshot["posts"], serde_json::json!([]));

    let _reader = app.join("brand-new").await;
    await_row(&mut stream, "brand-new", (1, 1, 1), ARRIVAL).await;
}

// ---------------------------------------------------------------------------------------------
// All posts' history.

#[actix_web::test]
async fn the_history_of_all_posts_sums_every_post_per_day() {
    let (app, clock) = spawn_app_at(1_772_884_800, |_| {}).await; // 2026-03-07T12:00:00Z
    for slug in ["alpha", "beta", "beta"] {
        drop(app.join(slug).await);
    }
    clock.set_unix(1_772_971_200); // 2026-03-08T12:00:00Z
    drop(app.join("gamma").await);

    let res = app.send(Req::get("/api/v1/history?days=3")).await;
    assert_eq!(res.status, 200, "{res:?}");
    assert_eq!(res.header("cache-control"), Some("no-store"));
    // The days' views; their presence fields are `presence.rs`'s.
    let days: Vec<(String, u64)> = res.json()["days"]
        .as_array()
        .expect("days")
        .iter()
        .map(|d| {
            (
                d["day"].as_str().expect("a day").to_owned(),
                d["views"].as_u64().expect("views"),
            )
        })
        .collect();
    assert_eq!(
        days,
        rows(&[("2026-03-06", 0), ("2026-03-07", 3), ("2026-03-08", 1)])
    );
    let default = app.send(Req::get("/api/v1/history")).await;
    assert_eq!(default.json()["days"].as_array().map(Vec::len), Some(30));
    for bad in ["0", "367", "x", "-1"] {
        app.send(Req::get(format!("/api/v1/history?days={bad}")))
            .await
            .assert_json_error(400);
    }
    app.send(Req::get("/api/v1/history").client_ip("203.0.113.7"))
        .await
        .assert_json_error(401);
}

#[actix_web::test]
async fn a_post_read_while_it_leaves_the_allow_list_keeps_its_numbers() {
    let app = spawn_app().await;
    let reader = app.join("alpha").await;
    write_slugs(&app.slugs_file(), &["beta"]);
    await_value("alpha refused once unlisted", 404, READ_TIMEOUT, || async {
        app.send(Req::get("/api/v1/count/alpha")).await.status
    })
    .await;

    let mut stream = open_admin_stream(&app, None).await;
    let snapshot = next_snapshot(&mut stream).await;
    assert_eq!(row_of(&snapshot, "alpha"), Some((1, 1, 1)), "{snapshot}");
    assert_eq!(row_of(&snapshot, "gamma"), None, "{snapshot}");
    reader.stream.close();
    let rows = await_row(&mut stream, "alpha", (0, 1, 1), LIVE_DROP).await;
    assert_eq!(rows, [(0, 1, 1)], "its total is not today's");
}

#[actix_web::test]
async fn the_admin_stream_ends_with_a_retry_hint_when_the_server_stops() {
    let mut app = spawn_app().await;
    let mut stream = open_admin_stream(&app, None).await;
    next_snapshot(&mut stream).await;
    let stopped = actix_web::rt::spawn(async move { app.stop().await });
    let last = stream.read_to_end(STOP_TIMEOUT).await;
    assert!(
        last.last().is_some_and(|e| e.retry.is_some()),
        "a retry hint last: {last:?}"
    );
    stopped.await.expect("joined").expect("a graceful stop");
}

// ---------------------------------------------------------------------------------------------
// Cluster mode (a real `redis-server`; skipped without one).

#[actix_web::test]
async fn in_cluster_mode_the_board_shows_readers_and_views_of_every_node() {
    let Some(redis) = Redis::start().await else {
        return;
    };
    let a = redis.node("a").spawn(|_| {}).await;
    let b = redis.node("b").spawn(|_| {}).await;
    let early = b.join("gamma").await;

    // A post asleep on a, read on b since before the stream opened.
    let mut stream = open_admin_stream(&a, None).await;
    let snapshot = next_snapshot(&mut stream).await;
    if row_of(&snapshot, "gamma") != Some((1, 1, 1)) {
        // b's presence may not have reached a yet: it arrives as a row.
        await_row(&mut stream, "gamma", (1, 1, 1), ARRIVAL * 3).await;
    }
    // A reader arriving on b shows on a's board, and leaves it.
    let arrived = Instant::now();
    let reader = b.join("beta").await;
    await_row(&mut stream, "beta", (1, 1, 1), ARRIVAL).await;
    assert!(arrived.elapsed() < ARRIVAL, "after {:?}", arrived.elapsed());
    reader.stream.close();
    await_row(&mut stream, "beta", (0, 1, 1), LIVE_DROP).await;
    drop(early);
}
