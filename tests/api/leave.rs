//! Departures: the `sendBeacon` leave (`POST /api/v1/leave/{slug}`) and streams closing.

use std::time::{Duration, Instant};

use testkit::*;

/// Waits until `n` streams from `client` fit under `--ip-stream-limit n` again, i.e. until
/// the server let go of every earlier stream from that address. The probes are bots, so they
/// change no number. A departure is queued to its post before its place is given back, so a
/// count asked after this answers with the departure applied.
async fn await_places_given_back(app: &TestApp, slug: &str, client: &str, n: usize) {
    let deadline = Instant::now() + LIVE_DROP;
    let mut probes = Vec::new();
    while probes.len() < n {
        let probe = app
            .open(
                Req::connect(slug, &token())
                    .client_ip(client)
                    .header("User-Agent", BOT_UA),
            )
            .await;
        if probe.status == 200 {
            probes.push(probe);
            continue;
        }
        assert_eq!(probe.status, 429);
        assert!(
            Instant::now() < deadline,
            "streams from {client} still held after {LIVE_DROP:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    for probe in probes {
        probe.reset();
    }
}

fn only_counts(events: &[SseEvent], want: Counts) -> bool {
    events
        .iter()
        .filter_map(SseEvent::counts)
        .all(|c| c == want)
}

#[actix_web::test]
async fn a_beacon_leave_lowers_live_at_once_and_the_later_stream_drop_changes_nothing() {
    let app = spawn_app_configured(|c| c.limits.ip_streams = 1).await;
    let leaver_ip = ip(1);
    let mut watcher = app
        .join_as("alpha", Req::connect("alpha", &token()).client_ip(&ip(2)))
        .await;
    let leaver = app
        .join_as(
            "alpha",
            Req::connect("alpha", &token()).client_ip(&leaver_ip),
        )
        .await;
    watcher.stream.await_counts(counts(2, 2), PROPAGATION).await;

    let res = app.leave("alpha", &leaver.id).await;
    assert_eq!(res.status, 204, "{res:?}");
    assert!(res.body.is_empty());
    watcher.stream.await_counts(counts(1, 2), PROPAGATION).await;
    assert_eq!(app.counts("alpha").await, counts(1, 2));

    // The page goes away: its stream drops after the beacon.
    leaver.stream.close();
    await_places_given_back(&app, "alpha", &leaver_ip, 1).await;
    assert_eq!(
        app.counts("alpha").await,
        counts(1, 2),
        "live lowered twice"
    );
    let later = watcher.stream.events_within(PROPAGATION).await;
    assert!(only_counts(&later, counts(1, 2)), "watcher saw {later:?}");
}

#[actix_web::test]
async fn a_second_beacon_for_the_same_reader_changes_nothing() {
    let app = spawn_app().await;
    let mut watcher = app.join("alpha").await;
    let leaver = app.join("alpha").await;

    for _ in 0..3 {
        assert_eq!(app.leave("alpha", &leaver.id).await.status, 204);
    }

    watcher.stream.await_counts(counts(1, 2), PROPAGATION).await;
    assert_eq!(app.counts("alpha").await, counts(1, 2));
}

#[actix_web::test]
async fn a_beacon_takes_every_stream_of_its_reader_off_live_and_their_drops_change_nothing() {
    let app = spawn_app_configured(|c| c.limits.ip_streams = 2).await;
    let tab_ip = ip(3);
    let tok = token();
    let mut watcher = app
        .join_as("alpha", Req::connect("alpha", &token()).client_ip(&ip(4)))
        .await;
    let a = app
        .join_as("alpha", Req::connect("alpha", &tok).client_ip(&tab_ip))
        .await;
    let b = app
        .join_as("alpha", Req::connect("alpha", &tok).client_ip(&tab_ip))
        .await;
    assert_eq!(b.first, counts(3, 2));

    assert_eq!(app.leave("alpha", &tok).await.status, 204);
    watcher.stream.await_counts(counts(1, 2), PROPAGATION).await;

    a.stream.close();
    b.stream.reset();
    await_places_given_back(&app, "alpha", &tab_ip, 2).await;
    assert_eq!(app.counts("alpha").await, counts(1, 2));
}

#[actix_web::test]
async fn a_reader_back_after_its_beacon_is_live_again_and_its_old_stream_dropping_changes_nothing()
{
    // A back/forward-cache restore: pagehide sent the beacon, pageshow reopens with the same id.
    let app = spawn_app_configured(|c| c.limits.ip_streams = 2).await;
    let tab_ip = ip(5);
    let tok = token();
    let mut watcher = app
        .join_as("alpha", Req::connect("alpha", &token()).client_ip(&ip(6)))
        .await;
    let old = app
        .join_as("alpha", Req::connect("alpha", &tok).client_ip(&tab_ip))
        .await;
    assert_eq!(app.leave("alpha", &tok).await.status, 204);
    watcher.stream.await_counts(counts(1, 2), PROPAGATION).await;

    let restored = app
        .join_as("alpha", Req::connect("alpha", &tok).client_ip(&tab_ip))
        .await;
    assert_eq!(restored.first, counts(2, 2), "live again, not a new view");

    // The old stream's drop arrives late: it was already off live.
    old.stream.reset();
    await_places_given_back(&app, "alpha", &tab_ip, 1).await;
    assert_eq!(app.counts("alpha").await, counts(2, 2));

    // The restored stream is live: its drop lowers live.
    restored.stream.close();
    watcher.stream.await_counts(counts(1, 2), LIVE_DROP).await;
}

#[actix_web::test]
async fn a_beacon_for_an_unknown_reader_id_is_answered_204_and_changes_nothing() {
    let app = spawn_app().await;
    let mut watcher = app.join("alpha").await;

    let unknown = app.leave("alpha", &token()).await;
    let asleep = app.leave("beta", &token()).await;

    assert_eq!(unknown.status, 204, "{unknown:?}");
    assert_eq!(asleep.status, 204, "a post nobody reads: {asleep:?}");
    assert_eq!(app.counts("alpha").await, counts(1, 1));
    assert_eq!(app.counts("beta").await, counts(0, 0));
    assert_eq!(app.totals().await, rows(&[("alpha", 1)]));
    let events = watcher.stream.events_within(PROPAGATION).await;
    assert!(only_counts(&events, counts(1, 1)), "watcher saw {events:?}");
}

#[actix_web::test]
async fn a_malformed_beacon_is_answered_400_json_and_changes_nothing() {
    let app = spawn_app().await;
    let reader = app.join("alpha").await;

    let bodies: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"abcdefghijklmno".to_vec(),
        "a".repeat(65).into_bytes(),
        b"abcdefghijklmnop!".to_vec(),
        b"abcdefgh ijklmnop".to_vec(),
        format!("{}\n{}", reader.id, token()).into_bytes(),
        vec![0xff; 20],
        // Exactly at the size limit: not too large, just not a reader id.
        "a".repeat(1024).into_bytes(),
    ];
    for body in bodies {
        let res = app
            .send(Req::post("/api/v1/leave/alpha", body.clone()))
            .await;
        assert_eq!(
            res.status,
            400,
            "body {:?}: {res:?}",
            String::from_utf8_lossy(&body)
        );
        res.assert_json_error(400);
    }

    assert_eq!(app.counts("alpha").await, counts(1, 1));
}

#[actix_web::test]
async fn a_beacon_over_1_kib_is_answered_413_and_changes_nothing() {
    let app = spawn_app().await;
    let reader = app.join("alpha").await;
    // The reader's own id padded with white space: only the size makes it wrong.
    let padded = |len: usize| format!("{:<len$}", reader.id).into_bytes();

    let declared = app
        .send(Req::post("/api/v1/leave/alpha", padded(1025)))
        .await;
    let streamed = app
        .send(Req::post("/api/v1/leave/alpha", padded(4096)).chunked())
        .await;

    declared.assert_json_error(413);
    streamed.assert_json_error(413);
    assert_eq!(app.counts("alpha").await, counts(1, 1));
}

#[actix_web::test]
async fn a_clean_client_close_lowers_live_within_2_s() {
    let app = spawn_app().await;
    let mut watcher = app.join("alpha").await;
    let reader = app.join("alpha").await;
    watcher.stream.await_counts(counts(2, 2), PROPAGATION).await;

    let closed = Instant::now();
    reader.stream.close();

    watcher.stream.await_counts(counts(1, 2), LIVE_DROP).await;
    assert!(closed.elapsed() <= LIVE_DROP);
}

#[actix_web::test]
async fn a_reset_client_close_lowers_live_within_2_s() {
    let app = spawn_app().await;
    let mut watcher = app.join("alpha").await;
    let reader = app.join("alpha").await;
    watcher.stream.await_counts(counts(2, 2), PROPAGATION).await;

    reader.stream.reset();

    watcher.stream.await_counts(counts(1, 2), LIVE_DROP).await;
}

#[actix_web::test]
async fn when_every_client_has_closed_live_is_0_within_2_s() {
    let app = spawn_app().await;
    let mut readers = Vec::new();
    for slug in ["alpha", "beta", "alpha", "beta", "alpha"] {
        readers.push(app.join(slug).await);
    }
    assert_eq!(app.counts("alpha").await, counts(3, 3));

    for (i, r) in readers.into_iter().enumerate() {
        if i % 2 == 0 {
            r.stream.close();
        } else {
            r.stream.reset();
        }
    }

    app.await_counts("alpha", counts(0, 3), LIVE_DROP).await;
    app.await_counts("beta", counts(0, 2), LIVE_DROP).await;
}
