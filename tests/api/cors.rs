//! Origins: `--allow-origin` pages get CORS headers; other cross-origin pages are refused before
//! anything is counted; same-origin and Origin-less requests count.

use testkit::*;

const BLOG: &str = "https://blog.example";

#[actix_web::test]
async fn a_disallowed_origin_is_refused_with_403_and_counts_nothing() {
    let app = spawn_app_configured(|c| c.origins = origins(&[BLOG])).await;
    let mut reader = app.join("alpha").await;
    let wrong_port = format!("http://127.0.0.1:{}", closed_port());

    for origin in [
        "https://evil.example",
        "http://blog.example",
        "https://blog.example:8443",
        "https://sub.blog.example",
        "null",
        wrong_port.as_str(),
    ] {
        let connect = app
            .send(Req::connect("alpha", &token()).origin(origin))
            .await;
        connect.assert_json_error(403);
        assert_eq!(connect.header("access-control-allow-origin"), None);
        // A beacon from that page cannot take a reader away either.
        app.send(Req::post("/api/v1/leave/alpha", reader.id.clone()).origin(origin))
            .await
            .assert_json_error(403);
        app.send(Req::get("/api/v1/count/alpha").origin(origin))
            .await
            .assert_json_error(403);
    }

    assert_eq!(app.counts("alpha").await, counts(1, 1));
    assert_eq!(app.totals().await, rows(&[("alpha", 1)]));
    let events = reader.stream.events_within(PROPAGATION).await;
    assert!(events.iter().all(|e| e.counts().is_none()), "{events:?}");
}

#[actix_web::test]
async fn an_allowed_origin_is_served_and_counted_with_access_control_allow_origin() {
    let app =
        spawn_app_configured(|c| c.origins = origins(&[BLOG, "http://other.example:8080"])).await;

    let mut stream = app.open(Req::connect("alpha", &token()).origin(BLOG)).await;
    assert_eq!(stream.status, 200);
    assert_eq!(stream.header("access-control-allow-origin"), Some(BLOG));
    let first = stream.next_event().await;
    assert_eq!(first.counts(), Some(counts(1, 1)));

    let second = app
        .join_as(
            "alpha",
            Req::connect("alpha", &token()).origin("http://other.example:8080"),
        )
        .await;
    assert_eq!(second.first, counts(2, 2));

    let beacon = app
        .send(Req::post("/api/v1/leave/alpha", second.id.clone()).origin(BLOG))
        .await;
    assert_eq!(beacon.status, 204, "{beacon:?}");
    assert_eq!(beacon.header("access-control-allow-origin"), Some(BLOG));
    let count = app.send(Req::get("/api/v1/count/alpha").origin(BLOG)).await;
    assert_eq!(count.status, 200);
    assert_eq!(count.header("access-control-allow-origin"), Some(BLOG));
    assert_eq!(count.json_as::<Counts>(), counts(1, 2));
}

#[actix_web::test]
async fn a_preflight_from_an_allowed_origin_is_answered_and_one_from_elsewhere_is_not() {
    let app = spawn_app_configured(|c| c.origins = origins(&[BLOG])).await;
    let preflight = |origin: &str| {
        Req::options("/api/v1/leave/alpha")
            .origin(origin)
            .header("Access-Control-Request-Method", "POST")
            .header("Access-Control-Request-Headers", "content-type")
    };

    let allowed = app.send(preflight(BLOG)).await;
    let refused = app.send(preflight("https://evil.example")).await;

    assert!(allowed.status < 300, "{allowed:?}");
    assert_eq!(allowed.header("access-control-allow-origin"), Some(BLOG));
    assert!(
        allowed
            .header("access-control-allow-methods")
            .is_some_and(|m| m.contains("POST")),
        "{allowed:?}"
    );
    assert_eq!(
        refused.header("access-control-allow-origin"),
        None,
        "{refused:?}"
    );
    assert_eq!(app.totals().await, rows(&[]));
}

#[actix_web::test]
async fn a_same_origin_page_counts_and_its_beacon_is_accepted() {
    // No --allow-origin: only same-origin and Origin-less requests count.
    let app = spawn_app().await;
    let own = app.origin();
    let mut watcher = app.join("alpha").await;

    let reader = app
        .join_as("alpha", Req::connect("alpha", &token()).origin(&own))
        .await;
    assert_eq!(reader.first, counts(2, 2));

    // Browsers send Origin on every POST, same-origin beacons included.
    let beacon = app
        .send(Req::post("/api/v1/leave/alpha", reader.id.clone()).origin(&own))
        .await;
    assert_eq!(beacon.status, 204, "{beacon:?}");
    watcher.stream.await_counts(counts(1, 2), PROPAGATION).await;

    app.send(Req::connect("alpha", &token()).origin(BLOG))
        .await
        .assert_json_error(403);
    assert_eq!(app.counts("alpha").await, counts(1, 2));
}
