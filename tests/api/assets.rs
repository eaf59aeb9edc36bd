//! The embedded web side and the health check: `/`, `/counter.js`, `/healthz`.

use testkit::*;

#[actix_web::test]
async fn the_demo_page_embeds_the_script_and_links_demo_posts() {
    let app = spawn_app().await;

    let res = app.send(Req::get("/")).await;

    assert_eq!(res.status, 200);
    assert!(
        res.header("content-type")
            .unwrap_or_default()
            .starts_with("text/html"),
        "{res:?}"
    );
    let html = res.text();
    assert!(html.contains("counter.js"), "embeds the script");
    assert!(html.contains("data-viewcounter"), "has counter elements");
    assert!(html.contains("hello-world"), "links a demo post");
}

#[actix_web::test]
async fn the_script_is_javascript_cacheable_and_revalidates_with_its_etag() {
    let app = spawn_app().await;

    let res = app.send(Req::get("/counter.js")).await;

    assert_eq!(res.status, 200);
    assert!(
        res.header("content-type")
            .unwrap_or_default()
            .contains("javascript"),
        "{res:?}"
    );
    let cache = res.header("cache-control").unwrap_or_default();
    assert!(
        cache.contains("max-age=") && !cache.contains("no-store") && !cache.contains("no-cache"),
        "cacheable: {cache:?}"
    );
    assert!(
        res.text().contains("EventSource"),
        "it is the counter script"
    );
    let etag = res.header("etag").expect("an ETag").to_owned();

    let again = app
        .send(Req::get("/counter.js").header("If-None-Match", &etag))
        .await;
    assert_eq!(again.status, 304, "{again:?}");
    assert!(again.body.is_empty());
}

#[actix_web::test]
async fn healthz_answers_200() {
    let app = spawn_app().await;

    let res = app.send(Req::get("/healthz").without("User-Agent")).await;

    assert_eq!(res.status, 200, "{res:?}");
}

#[actix_web::test]
async fn an_unknown_path_is_a_json_404() {
    let app = spawn_app().await;

    for path in [
        "/nope",
        "/api/v1/nope",
        "/api/v2/connect/alpha",
        "/api/v1/connect",
    ] {
        app.send(Req::get(path)).await.assert_json_error(404);
    }
}
