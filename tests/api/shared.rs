//! Shared streams: one connection carrying the readers of many tabs (`/api/v1/shared/...`).

use std::time::Duration;

use testkit::*;

async fn join(app: &TestApp, sid: &str, slug: &str, reader: &str) -> Response {
    app.send(Req::post(
        format!("/api/v1/shared/{sid}/join/{slug}"),
        reader,
    ))
    .await
}

#[actix_web::test]
async fn readers_joined_to_a_shared_stream_are_counted_and_get_their_numbers_on_it() {
    let app = spawn_app().await;
    let sid = token();
    let mut stream = open_shared(&app, &sid).await;

    let (tab1, tab2) = (token(), token());
    assert_eq!(join(&app, &sid, "alpha", &tab1).await.status, 204);
    assert_eq!(tagged(&stream.next_event().await), t("alpha", 1, 1));
    assert_eq!(join(&app, &sid, "beta", &tab2).await.status, 204);
    assert_eq!(tagged(&stream.next_event().await), t("beta", 1, 1));

    // Another reader of alpha elsewhere: the shared stream hears about it.
    let _other = app.join("alpha").await;
    await_tagged(&mut stream, t("alpha", 2, 2)).await;
    assert_eq!(app.counts("beta").await, counts(1, 1));
}

#[actix_web::test]
async fn joining_the_same_reader_twice_changes_nothing() {
    let app = spawn_app().await;
    let sid = token();
    let mut stream = open_shared(&app, &sid).await;
    let tab = token();
    assert_eq!(join(&app, &sid, "alpha", &tab).await.status, 204);
    assert_eq!(join(&app, &sid, "alpha", &tab).await.status, 204);
    assert_eq!(tagged(&stream.next_event().await), t("alpha", 1, 1));
    assert_eq!(app.counts("alpha").await, counts(1, 1));
}

#[actix_web::test]
async fn a_detached_reader_leaves_live_and_the_others_stay() {
    let app = spawn_app().await;
    let sid = token();
    let _stream = open_shared(&app, &sid).await;
    let (tab1, tab2) = (token(), token());
    join(&app, &sid, "alpha", &tab1).await;
    join(&app, &sid, "alpha", &tab2).await;
    app.await_counts("alpha", counts(2, 2), PROPAGATION).await;

    let res = app
        .send(Req::post(
            format!("/api/v1/shared/{sid}/leave/alpha"),
            tab1.as_str(),
        ))
        .await;
    assert_eq!(res.status, 204);
    app.await_counts("alpha", counts(1, 2), PROPAGATION).await;
    // A beacon for the same reader afterwards changes nothing more.
    app.leave("alpha", &tab1).await;
    app.await_counts("alpha", counts(1, 2), PROPAGATION).await;
}

#[actix_web::test]
async fn when_the_shared_stream_drops_every_reader_on_it_departs() {
    let app = spawn_app().await;
    let sid = token();
    let stream = open_shared(&app, &sid).await;
    for slug in ["alpha", "alpha", "beta"] {
        assert_eq!(join(&app, &sid, slug, &token()).await.status, 204);
    }
    app.await_counts("alpha", counts(2, 2), PROPAGATION).await;
    stream.close();
    app.await_counts("alpha", counts(0, 2), LIVE_DROP).await;
    app.await_counts("beta", counts(0, 1), LIVE_DROP).await;
}

#[actix_web::test]
async fn a_new_leader_rejoining_the_same_readers_counts_no_view_twice() {
    let app = spawn_app().await;
    let tabs = [token(), token()];
    let first = open_shared(&app, &token()).await;
    let sid = token();
    let mut second = open_shared(&app, &sid).await;
    drop(first);
    for tab in &tabs {
        assert_eq!(join(&app, &sid, "alpha", tab).await.status, 204);
    }
    await_tagged(&mut second, t("alpha", 2, 2)).await;
    second.close();
    app.await_counts("alpha", counts(0, 2), LIVE_DROP).await;

    let sid = token();
    let mut third = open_shared(&app, &sid).await;
    for tab in &tabs {
        assert_eq!(join(&app, &sid, "alpha", tab).await.status, 204);
    }
    await_tagged(&mut third, t("alpha", 2, 2)).await;
}

#[actix_web::test]
async fn joining_a_stream_that_is_not_open_is_404_and_counts_nothing() {
    let app = spawn_app().await;
    let res = join(&app, &token(), "alpha", &token()).await;
    let message = res.assert_json_error(404);
    assert!(message.contains("shared"), "{message}");
    assert_eq!(app.counts("alpha").await, counts(0, 0));
    assert_eq!(app.totals().await, rows(&[]));
}

#[actix_web::test]
async fn bad_input_on_shared_streams_is_refused_and_counts_nothing() {
    let app = spawn_app().await;
    let sid = token();
    let _stream = open_shared(&app, &sid).await;
    app.send(Req::get("/api/v1/shared/short"))
        .await
        .assert_json_error(400);
    join(&app, &sid, "a//b", &token())
        .await
        .assert_json_error(400);
    join(&app, &sid, "unlisted", &token())
        .await
        .assert_json_error(404);
    join(&app, &sid, "alpha", "not a reader id")
        .await
        .assert_json_error(400);
    let big = "x".repeat(2000);
    join(&app, &sid, "alpha", &big).await.assert_json_error(413);
    let foreign = Req::post(format!("/api/v1/shared/{sid}/join/alpha"), token())
        .origin("https://elsewhere.example");
    app.send(foreign).await.assert_json_error(403);
    assert_eq!(app.totals().await, rows(&[]));
    assert_eq!(app.counts("alpha").await, counts(0, 0));
}

#[actix_web::test]
async fn a_shared_stream_carries_at_most_64_readers() {
    let app = spawn_app_configured(|c| c.limits.ip_views_per_minute = 0).await;
    let sid = token();
    let _stream = open_shared(&app, &sid).await;
    for _ in 0..64 {
        assert_eq!(join(&app, &sid, "alpha", &token()).await.status, 204);
    }
    let res = join(&app, &sid, "alpha", &token()).await;
    res.assert_json_error(429);
    assert!(res.header("retry-after").is_some());
    app.await_counts("alpha", counts(64, 64), Duration::from_secs(2))
        .await;
}

#[actix_web::test]
async fn a_shared_stream_path_without_an_id_is_no_stream_route_and_counts_nothing() {
    // Found by the direct_head fuzz target: the direct layer took `/shared/` (an empty id) as a
    // stream request and refused it as a bad id, where actix-web's `{sid}` never matches an
    // empty segment. Now both say there is no such route.
    let app = spawn_app().await;
    let res = app.send(Req::get("/api/v1/shared/")).await;
    assert_eq!(res.status, 404, "{res:?}");
    assert_eq!(app.stat("streams").await, 0);
}
