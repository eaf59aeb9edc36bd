//! `GET /api/v1/totals`: every post's all-time views, sorted, with unwritten views included.

use testkit::*;

#[actix_web::test]
async fn totals_are_sorted_by_slug_and_include_views_not_yet_written() {
    // Nothing is written for an hour: every number here comes from memory.
    let app = spawn_app_configured(never_flush).await;
    let mut open = Vec::new();
    for slug in [
        "gamma",
        "alpha",
        "2024/05/my_post.html",
        "alpha",
        "gamma",
        "gamma",
    ] {
        open.push(app.join(slug).await);
    }

    let res = app.send(Req::get("/api/v1/totals")).await;

    assert_eq!(res.status, 200, "{res:?}");
    assert!(
        res.header("content-type")
            .unwrap_or_default()
            .starts_with("application/json")
    );
    assert_eq!(
        parse_rows(&res.text()),
        rows(&[("2024/05/my_post.html", 1), ("alpha", 2), ("gamma", 3)])
    );
}

#[actix_web::test]
async fn totals_of_a_server_without_views_are_an_empty_array() {
    let app = spawn_app().await;

    let res = app.send(Req::get("/api/v1/totals")).await;

    assert_eq!(res.status, 200);
    assert_eq!(res.json(), serde_json::json!([]));
}

#[actix_web::test]
async fn totals_are_answered_401_without_the_configured_bearer_token_and_200_with_it() {
    let app = spawn_app_configured(|c| c.admin_token = Some("s3cret-admin-token".into())).await;
    let _r = app.join("alpha").await;

    for req in [
        Req::get("/api/v1/totals"),
        Req::get("/api/v1/totals").header("Authorization", "Bearer wrong-token"),
        Req::get("/api/v1/totals").header("Authorization", "Bearer s3cret-admin-toke"),
        Req::get("/api/v1/totals").header("Authorization", "Bearer s3cret-admin-token-and-more"),
        Req::get("/api/v1/totals").header("Authorization", "Basic czNjcmV0LWFkbWluLXRva2Vu"),
        Req::get("/api/v1/totals").header("Authorization", "s3cret-admin-token"),
    ] {
        let res = app.send(req.clone()).await;
        res.assert_json_error(401);
        assert!(res.body.len() < 200, "no totals leak: {res:?}");
    }

    let ok = app
        .send(Req::get("/api/v1/totals").header("Authorization", "Bearer s3cret-admin-token"))
        .await;
    assert_eq!(ok.status, 200, "{ok:?}");
    assert_eq!(parse_rows(&ok.text()), rows(&[("alpha", 1)]));
}

#[actix_web::test]
async fn without_a_token_totals_are_answered_to_loopback_clients_only() {
    let app = spawn_app().await;
    let _r = app.join("alpha").await;

    // Behind the (trusted, loopback) proxy, a remote client.
    let remote = app
        .send(Req::get("/api/v1/totals").client_ip("203.0.113.7"))
        .await;
    let local = app.send(Req::get("/api/v1/totals")).await;

    remote.assert_json_error(401);
    assert_eq!(local.status, 200, "{local:?}");
    assert_eq!(parse_rows(&local.text()), rows(&[("alpha", 1)]));
}
