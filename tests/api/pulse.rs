//! The pulse (`design.md`, "What presence tells the owner"): readers minute by minute, the
//! most at once in each minute, for the site and per post, over `GET /api/v1/pulse` and as
//! `event: pulse` on the admin stream when a minute closes.

use std::time::Duration;

use testkit::*;

/// 2026-12-07T10:00:00Z, a minute's start.
const MINUTE_START: u64 = 1_796_637_600;
const WITHIN: Duration = Duration::from_secs(3);

/// `GET target`, asserting 200: `(at, live)` per minute, oldest first.
async fn pulse(app: &TestApp, target: &str) -> Vec<(String, u64)> {
    let res = app.send(Req::get(target)).await;
    assert_eq!(res.status, 200, "{target}: {res:?}");
    assert_eq!(res.header("cache-control"), Some("no-store"));
    res.json()["minutes"]
        .as_array()
        .expect("minutes")
        .iter()
        .map(|m| {
            let at = m["at"].as_str().expect("at").to_owned();
            (at, m["live"].as_u64().expect("live"))
        })
        .collect()
}

fn lives(minutes: &[(String, u64)]) -> Vec<u64> {
    minutes.iter().map(|(_, live)| *live).collect()
}

#[actix_web::test]
async fn a_minute_keeps_the_most_readers_it_had_at_once_even_a_peak_no_broadcast_showed() {
    let (app, clock) = spawn_app_at(MINUTE_START + 5, |_| {}).await;
    let _beta = app.join("beta").await;
    let _a1 = app.join("alpha").await;
    let _a2 = app.join("alpha").await;
    // A third reader who leaves at once: within one coalescing interval, so the readers'
    // broadcasts may never show 3, but the minute had 3 at once.
    let a3 = app.join("alpha").await;
    assert_eq!(app.leave("alpha", &a3.id).await.status, 204);
    app.await_counts("alpha", Counts { live: 2, total: 3 }, WITHIN)
        .await;

    clock.set_unix(MINUTE_START + 65);
    let site = pulse(&app, "/api/v1/pulse?minutes=3").await;
    assert_eq!(lives(&site), [0, 4, 3], "{site:?}");
    assert_eq!(site[1].0, "2026-12-07T10:00:00+00:00");
    assert_eq!(site[2].0, "2026-12-07T10:01:00+00:00");
    assert_eq!(
        lives(&pulse(&app, "/api/v1/pulse/alpha?minutes=3").await),
        [0, 3, 2]
    );
    assert_eq!(
        lives(&pulse(&app, "/api/v1/pulse/beta?minutes=3").await),
        [0, 1, 1]
    );
    assert_eq!(
        lives(&pulse(&app, "/api/v1/pulse/gamma?minutes=2").await),
        [0, 0]
    );
}

#[actix_web::test]
async fn the_pulse_is_sixty_minutes_by_default_and_shows_instants_in_the_servers_zone() {
    let (app, _clock) = spawn_app_at(MINUTE_START + 5, |c| {
        c.timezone = jiff::tz::TimeZone::get("Europe/Paris").unwrap();
    })
    .await;
    let site = pulse(&app, "/api/v1/pulse").await;
    assert_eq!(site.len(), 60);
    assert_eq!(
        site[59].0, "2026-12-07T11:00:00+01:00",
        "the minute under way last"
    );
    assert_eq!(site[0].0, "2026-12-07T10:01:00+01:00");
    assert_eq!(pulse(&app, "/api/v1/pulse?minutes=1440").await.len(), 1440);
}

#[actix_web::test]
async fn a_bad_number_of_minutes_or_an_unknown_post_is_refused() {
    let app = spawn_app().await;
    for bad in ["0", "1441", "ten", "-1"] {
        for target in [
            format!("/api/v1/pulse?minutes={bad}"),
            format!("/api/v1/pulse/alpha?minutes={bad}"),
        ] {
            let res = app.send(Req::get(&target)).await;
            let reason = res.assert_json_error(400);
            assert!(reason.contains("minutes"), "{target}: {reason}");
        }
    }
    app.send(Req::get("/api/v1/pulse/not-listed"))
        .await
        .assert_json_error(404);
    app.send(Req::get("/api/v1/pulse/..%2Fx"))
        .await
        .assert_json_error(400);
}

#[actix_web::test]
async fn the_pulse_follows_the_admin_rule() {
    let app =
        spawn_app_configured(|c| c.admin_token = Some("pulse-tests-admin-token".into())).await;
    for target in ["/api/v1/pulse", "/api/v1/pulse/alpha"] {
        app.send(Req::get(target)).await.assert_json_error(401);
        let ok = Req::get(target).header("Authorization", "Bearer pulse-tests-admin-token");
        assert_eq!(app.send(ok).await.status, 200, "{target}");
    }
}

#[actix_web::test]
async fn the_admin_stream_sends_the_sites_minute_as_it_closes() {
    let (app, clock) = spawn_app_at(MINUTE_START + 50, |_| {}).await;
    let _r1 = app.join("alpha").await;
    let _r2 = app.join("beta").await;
    let mut board = app
        .open(Req::get("/api/v1/admin/stream").header("Accept", "text/event-stream"))
        .await;
    assert_eq!(board.status, 200);

    clock.set_unix(MINUTE_START + 60);
    loop {
        let ev = match board.next_event_within(WITHIN).await {
            Ok(Some(ev)) => ev,
            other => panic!("no pulse event: {other:?}"),
        };
        if ev.raw.lines().any(|l| l == "event: pulse") {
            let json: serde_json::Value =
                serde_json::from_str(ev.data.as_deref().expect("data")).expect("JSON");
            assert_eq!(json["at"], "2026-12-07T10:00:00+00:00");
            assert_eq!(json["live"], 2);
            break;
        }
    }
}
