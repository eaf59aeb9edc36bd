//! Watching posts without counting them: `GET /api/v1/watch?slug=…` and the watched posts of a
//! shared stream (`POST /api/v1/shared/{sid}/watch`), for index pages.

use std::time::Duration;

use viewcounter::posts::post::IDLE_GRACE;

use testkit::*;

/// Long enough for an idle post to be put to sleep once nothing holds it.
const ASLEEP: Duration = Duration::from_secs(15);

/// `GET /api/v1/watch?slug=A&slug=B…`.
fn watch(slugs: &[&str]) -> Req {
    let query: Vec<String> = slugs.iter().map(|s| format!("slug={s}")).collect();
    Req::get(format!("/api/v1/watch?{}", query.join("&"))).header("Accept", "text/event-stream")
}

/// `POST /api/v1/shared/{sid}/watch` with its number and slugs.
fn shared_watch(sid: &str, seq: u64, slugs: &[&str]) -> Req {
    let body = std::iter::once(seq.to_string())
        .chain(slugs.iter().map(|s| s.to_string()))
        .collect::<Vec<_>>()
        .join("\n");
    Req::post(format!("/api/v1/shared/{sid}/watch"), body)
}

fn no_tagged_event_of(events: &[SseEvent], slug: &str) -> bool {
    events
        .iter()
        .filter(|ev| ev.data.is_some())
        .all(|ev| tagged(ev).slug != slug)
}

#[actix_web::test]
async fn a_watch_sends_each_posts_numbers_at_once_then_every_change_and_counts_nothing() {
    let app = spawn_app().await;
    let _reader = app.join("alpha").await;
    let mut watching = open_tagged(&app, watch(&["alpha", "beta", "gamma"])).await;
    assert_eq!(watching.header("cache-control"), Some("no-store"));
    assert_eq!(
        next_tagged(&mut watching, 3).await,
        [t("alpha", 1, 1), t("beta", 0, 0), t("gamma", 0, 0)]
    );

    // A reader arriving elsewhere reaches the watcher; the watch itself counted nothing.
    let _other = app.join("beta").await;
    assert_eq!(next_tagged(&mut watching, 1).await, [t("beta", 1, 1)]);
    assert_eq!(app.counts("alpha").await, counts(1, 1));
    assert_eq!(app.counts("gamma").await, counts(0, 0));
    assert_eq!(app.totals().await, rows(&[("alpha", 1), ("beta", 1)]));
}

/// Issue 21: a watch started between two coalesced broadcasts showed the older one first (and
/// the real numbers up to 250 ms later); readers start from the post's state, so must a watch.
#[actix_web::test]
async fn a_watchs_first_event_is_the_posts_state_even_between_two_broadcasts() {
    let app = spawn_app().await;
    // The first join is broadcast at once; the second, within the coalescing interval, waits.
    let _a = app.join("gamma").await;
    let b = app.join("gamma").await;
    assert_eq!(b.first.total, 2, "both counted");
    let mut watching = open_tagged(&app, watch(&["gamma"])).await;
    assert_eq!(next_tagged(&mut watching, 1).await, [t("gamma", 2, 2)]);
}

#[actix_web::test]
async fn a_watch_stream_keeps_its_heartbeat() {
    let app = spawn_app_configured(|c| c.heartbeat = Duration::from_millis(200)).await;
    let mut watching = open_tagged(&app, watch(&["alpha"])).await;
    assert_eq!(next_tagged(&mut watching, 1).await, [t("alpha", 0, 0)]);
    assert!(watching.next_event().await.is_heartbeat());
}

#[actix_web::test]
async fn unknown_posts_are_left_out_of_a_watch_and_nothing_is_made_for_them() {
    let app = spawn_app().await;
    let mut watching = open_tagged(&app, watch(&["unlisted", "alpha", "alpha"])).await;
    assert_eq!(next_tagged(&mut watching, 1).await, [t("alpha", 0, 0)]);
    let _reader = app.join("alpha").await;
    // The next event is alpha's change: nothing was sent for the unlisted post.
    assert_eq!(next_tagged(&mut watching, 1).await, [t("alpha", 1, 1)]);
    assert_eq!(app.posts_awake().await, 1);
}

#[actix_web::test]
async fn with_any_slug_a_watch_wakes_only_posts_that_have_views_and_stores_nothing() {
    let app = spawn_app_configured_with_slugs(&[], |c| {
        c.posts = Posts::Any {
            max: 10,
            new_per_hour: 0,
        }
    })
    .await;
    let _reader = app.join("read").await;
    let mut watching = open_tagged(&app, watch(&["never-read", "read"])).await;
    assert_eq!(next_tagged(&mut watching, 1).await, [t("read", 1, 1)]);
    assert_eq!(app.posts_awake().await, 1, "never-read was not woken");
    assert_eq!(app.totals().await, rows(&[("read", 1)]));
    // A post that gets its first reader later is a new watch away.
    let _late = app.join("never-read").await;
    let events = watching.events_within(PROPAGATION).await;
    assert!(no_tagged_event_of(&events, "never-read"), "{events:?}");
}

#[actix_web::test]
async fn a_watch_of_more_than_100_posts_or_a_malformed_slug_is_400_and_opens_nothing() {
    let app = spawn_app().await;
    let many: Vec<String> = (0..101).map(|i| format!("post-{i}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let hundred = app.open(watch(&many[..100])).await;
    assert_eq!(hundred.status, 200, "100 posts may be watched");
    drop(hundred);
    for refused in [
        watch(&many),
        watch(&["alpha", "a//b"]),
        watch(&["../etc"]),
        Req::get("/api/v1/watch"),
        Req::get("/api/v1/watch?slug="),
    ] {
        let res = app.open(refused).await.into_response().await;
        let message = res.assert_json_error(400);
        assert!(message.contains("slug"), "{message}");
    }
    assert_eq!(app.posts_awake().await, 0);
    assert_eq!(app.totals().await, rows(&[]));
}

#[actix_web::test]
async fn watch_streams_obey_the_origin_fetch_and_stream_limits() {
    let app = spawn_app_configured(|c| c.limits.ip_streams = 2).await;
    let foreign = watch(&["alpha"]).origin("https://elsewhere.example");
    let res = app.open(foreign).await.into_response().await;
    res.assert_json_error(403);
    let image = watch(&["alpha"]).header("Sec-Fetch-Dest", "image");
    app.open(image)
        .await
        .into_response()
        .await
        .assert_json_error(403);

    // A watch is a stream of its client like a reader's.
    let _reader = app.join("alpha").await;
    let _watching = open_tagged(&app, watch(&["alpha"])).await;
    let res = app.open(watch(&["beta"])).await.into_response().await;
    res.assert_json_error(429);
    assert!(res.header("retry-after").is_some());
    assert_eq!(app.counts("alpha").await, counts(1, 1));

    let full = spawn_app_configured(|c| c.limits.max_streams = Some(1)).await;
    let _one = open_tagged(&full, watch(&["alpha"])).await;
    let res = full.open(watch(&["alpha"])).await.into_response().await;
    res.assert_json_error(503);
}

#[actix_web::test]
async fn a_watched_post_stays_awake_at_zero_live_and_sleeps_once_nobody_watches() {
    let app = spawn_app().await;
    let watching = open_tagged(&app, watch(&["beta"])).await;
    app.await_posts_awake(1, PROPAGATION).await;
    // Longer than an idle post is kept: the watcher holds it.
    tokio::time::sleep(IDLE_GRACE + Duration::from_secs(1)).await;
    assert_eq!(app.posts_awake().await, 1, "asleep while watched");
    assert_eq!(app.counts("beta").await, counts(0, 0));
    watching.close();
    app.await_posts_awake(0, ASLEEP).await;
    assert_eq!(app.totals().await, rows(&[]));
}

// ---------------------------------------------------------------------------------------------
// The whole site, `*`.

#[actix_web::test]
async fn watching_star_follows_everyone_reading_any_post_and_all_views_and_counts_nothing() {
    let app = spawn_app().await;
    let alpha = app.join("alpha").await;
    let _beta = app.join("beta").await;
    let _beta2 = app.join("beta").await;
    let mut site = open_tagged(&app, watch(&["*", "gamma"])).await;
    assert_eq!(
        next_tagged(&mut site, 2).await,
        [t("*", 3, 3), t("gamma", 0, 0)]
    );

    assert_eq!(app.leave("alpha", &alpha.id).await.status, 204);
    await_tagged(&mut site, t("*", 2, 3)).await;
    let _gamma = app.join("gamma").await;
    await_tagged(&mut site, t("*", 3, 4)).await;
    assert_eq!(
        app.totals().await,
        rows(&[("alpha", 1), ("beta", 2), ("gamma", 1)]),
        "the watch counted nothing and made no post"
    );

    // A second watcher starts from the sums as they are.
    let mut again = open_tagged(&app, watch(&["*"])).await;
    assert_eq!(next_tagged(&mut again, 1).await, [t("*", 3, 4)]);

    // `*` is a name for watches only: no post has it.
    for target in [
        "/api/v1/count/*",
        "/api/v1/counts?slug=*",
        "/api/v1/watch?slug=*/x",
        "/api/v1/watch?slug=**",
    ] {
        let res = app.send(Req::get(target)).await;
        assert_eq!(res.status, 400, "{target}: {res:?}");
    }
    let res = app.send(Req::connect("*", &token())).await;
    assert_eq!(res.status, 400, "{res:?}");
}

#[actix_web::test]
async fn a_shared_stream_carries_the_whole_site_when_a_tab_watches_star() {
    let app = spawn_app().await;
    let _reader = app.join("beta").await;
    let sid = token();
    let mut stream = open_shared(&app, &sid).await;
    let res = app.send(shared_watch(&sid, 1, &["*"])).await;
    assert_eq!(res.status, 204, "{res:?}");
    assert_eq!(next_tagged(&mut stream, 1).await, [t("*", 1, 1)]);
    let _other = app.join("alpha").await;
    await_tagged(&mut stream, t("*", 2, 2)).await;
}

// ---------------------------------------------------------------------------------------------
// The watched posts of a shared stream.

#[actix_web::test]
async fn a_shared_stream_carries_its_watched_posts_beside_its_readers_and_counts_them_not() {
    let app = spawn_app().await;
    let sid = token();
    let mut stream = open_shared(&app, &sid).await;
    let join = Req::post(format!("/api/v1/shared/{sid}/join/alpha"), token());
    assert_eq!(app.send(join).await.status, 204);
    assert_eq!(next_tagged(&mut stream, 1).await, [t("alpha", 1, 1)]);

    let res = app.send(shared_watch(&sid, 1, &["beta", "gamma"])).await;
    assert_eq!(res.status, 204, "{res:?}");
    assert_eq!(
        next_tagged(&mut stream, 2).await,
        [t("beta", 0, 0), t("gamma", 0, 0)]
    );
    let _reader = app.join("beta").await;
    await_tagged(&mut stream, t("beta", 1, 1)).await;
    assert_eq!(app.counts("gamma").await, counts(0, 0));
    assert_eq!(app.totals().await, rows(&[("alpha", 1), ("beta", 1)]));
}

#[actix_web::test]
async fn a_newer_watch_set_replaces_the_older_and_one_arriving_late_changes_nothing() {
    let app = spawn_app().await;
    let sid = token();
    let mut stream = open_shared(&app, &sid).await;
    assert_eq!(app.send(shared_watch(&sid, 2, &["beta"])).await.status, 204);
    assert_eq!(next_tagged(&mut stream, 1).await, [t("beta", 0, 0)]);
    // Number 1, sent before number 2, arrives after it.
    assert_eq!(
        app.send(shared_watch(&sid, 1, &["gamma"])).await.status,
        204
    );
    let _gamma = app.join("gamma").await;
    let _beta = app.join("beta").await;
    await_tagged(&mut stream, t("beta", 1, 1)).await;
    let events = stream.events_within(PROPAGATION).await;
    assert!(no_tagged_event_of(&events, "gamma"), "{events:?}");

    // Watching nothing: beta's changes no longer come.
    assert_eq!(app.send(shared_watch(&sid, 3, &[])).await.status, 204);
    let _again = app.join("beta").await;
    app.await_counts("beta", counts(2, 2), PROPAGATION).await;
    let events = stream.events_within(PROPAGATION).await;
    assert!(no_tagged_event_of(&events, "beta"), "{events:?}");
}

#[actix_web::test]
async fn a_shared_watch_leaves_unknown_posts_out_and_refuses_bad_bodies() {
    let app = spawn_app().await;
    let sid = token();
    let mut stream = open_shared(&app, &sid).await;
    let res = app
        .send(shared_watch(&sid, 1, &["unlisted", "alpha"]))
        .await;
    assert_eq!(res.status, 204);
    assert_eq!(next_tagged(&mut stream, 1).await, [t("alpha", 0, 0)]);

    let watch_body = |body: &str| Req::post(format!("/api/v1/shared/{sid}/watch"), body);
    for bad in ["", "alpha\nbeta", "0\nalpha", "2\na//b"] {
        app.send(watch_body(bad)).await.assert_json_error(400);
    }
    let many: Vec<String> = (0..201).map(|i| format!("post-{i}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    app.send(shared_watch(&sid, 5, &many))
        .await
        .assert_json_error(400);
    let huge = format!("6\n{}", "x".repeat(64 * 1024));
    app.send(watch_body(&huge)).await.assert_json_error(413);
    app.send(shared_watch(&token(), 1, &["alpha"]))
        .await
        .assert_json_error(404);
    let foreign = shared_watch(&sid, 7, &["beta"]).origin("https://elsewhere.example");
    app.send(foreign).await.assert_json_error(403);
    // None of them changed what the stream watches: beta's reader is not sent.
    let _beta = app.join("beta").await;
    let _alpha = app.join("alpha").await;
    await_tagged(&mut stream, t("alpha", 1, 1)).await;
    let events = stream.events_within(PROPAGATION).await;
    assert!(no_tagged_event_of(&events, "beta"), "{events:?}");
    assert_eq!(app.totals().await, rows(&[("alpha", 1), ("beta", 1)]));
}

#[actix_web::test]
async fn the_posts_a_shared_stream_watched_sleep_once_it_closes() {
    let app = spawn_app().await;
    let sid = token();
    let stream = open_shared(&app, &sid).await;
    let res = app.send(shared_watch(&sid, 1, &["beta", "gamma"])).await;
    assert_eq!(res.status, 204);
    assert_eq!(app.posts_awake().await, 2);
    stream.close();
    app.await_posts_awake(0, ASLEEP).await;
    assert_eq!(app.totals().await, rows(&[]));
}
