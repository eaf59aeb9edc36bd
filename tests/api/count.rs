//! `GET /api/v1/count/{slug}`: the numbers, counting nothing.

use testkit::*;

#[actix_web::test]
async fn count_answers_the_numbers_as_json_and_counts_no_view() {
    let app = spawn_app().await;

    for _ in 0..5 {
        let res = app.send(Req::get("/api/v1/count/alpha")).await;
        assert_eq!(res.status, 200, "{res:?}");
        let ct = res.header("content-type").unwrap_or_default();
        assert!(ct.starts_with("application/json"), "{res:?}");
        assert_eq!(res.header("cache-control"), Some("no-store"));
        assert_eq!(res.json_as::<Counts>(), counts(0, 0));
    }
    assert_eq!(app.totals().await, rows(&[]), "no row from a count");

    let mut reader = app.join("alpha").await;
    for _ in 0..5 {
        assert_eq!(app.counts("alpha").await, counts(1, 1));
    }
    let events = reader.stream.events_within(PROPAGATION).await;
    assert!(
        events.iter().all(|e| e.counts().is_none()),
        "a count changed something: {events:?}"
    );
    assert_eq!(app.totals().await, rows(&[("alpha", 1)]));
}

#[actix_web::test]
async fn count_of_a_post_nobody_reads_any_more_keeps_its_total() {
    let app = spawn_app().await;
    let a = app.join("alpha").await;
    let b = app.join("alpha").await;

    a.stream.close();
    b.stream.reset();

    app.await_counts("alpha", counts(0, 2), LIVE_DROP).await;
}

#[actix_web::test]
async fn count_is_not_a_view_for_a_browser_with_a_reader_id_either() {
    let app = spawn_app().await;

    let res = app
        .send(
            Req::get(format!("/api/v1/count/alpha?view={}", token()))
                .header("Last-Event-ID", token()),
        )
        .await;

    assert_eq!(res.status, 200);
    assert_eq!(res.json_as::<Counts>(), counts(0, 0));
    assert_eq!(app.counts("alpha").await, counts(0, 0));
}
