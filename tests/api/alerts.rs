//! Alerts when a post takes off (`design.md`, "What presence tells the owner"): `--alert-url`
//! with `--alert-live N`, against a real webhook receiver on loopback.

use std::time::{Duration, Instant};

use viewcounter::alerts::{ATTEMPT_TIMEOUT, AlertSettings, RETRY_AFTER};

use testkit::*;

/// A delivery that works arrives well within this.
const SOON: Duration = Duration::from_secs(3);

async fn alerting(receivers: &[&Receiver], live: u64) -> TestApp {
    let urls = receivers.iter().map(|r| r.url.clone()).collect();
    spawn_app_configured(move |c| c.alerts = Some(AlertSettings { urls, live })).await
}

/// The slugs of the messages received, in order.
fn slugs(got: &[Received]) -> Vec<String> {
    got.iter()
        .map(|r| r.body["slug"].as_str().unwrap_or("?").to_owned())
        .collect()
}

#[actix_web::test]
async fn a_post_reaching_n_readers_posts_one_json_message_with_its_numbers_to_each_url() {
    let (one, two) = (Receiver::start(&[]).await, Receiver::start(&[]).await);
    let app = alerting(&[&one, &two], 2).await;
    let _r1 = app.join("alpha").await;
    let _r2 = app.join("alpha").await;
    for receiver in [&one, &two] {
        let got = receiver.await_requests(1, SOON).await;
        assert_eq!(got[0].content_type.as_deref(), Some("application/json"));
        let body = &got[0].body;
        assert_eq!(body["slug"], "alpha");
        assert_eq!(
            (body["live"].as_u64(), body["total"].as_u64()),
            (Some(2), Some(2))
        );
        let text = body["text"].as_str().expect("text for Slack");
        assert!(text.contains("alpha"), "{text}");
        assert_eq!(body["content"], body["text"], "content for Discord");
    }
}

#[actix_web::test]
async fn a_post_alerts_once_an_hour_however_often_it_reaches_n_again() {
    let hook = Receiver::start(&[]).await;
    let app = alerting(&[&hook], 2).await;
    let _a1 = app.join("alpha").await;
    let a2 = app.join("alpha").await;
    hook.await_requests(1, SOON).await;
    // Down to 1, then up to 2 again: a second crossing.
    assert_eq!(app.leave("alpha", &a2.id).await.status, 204);
    app.await_counts("alpha", Counts { live: 1, total: 2 }, SOON)
        .await;
    let _a3 = app.join("alpha").await;
    // Another post reaching 2 after it: its message is the next one to arrive.
    let _b1 = app.join("beta").await;
    let _b2 = app.join("beta").await;
    let got = hook.await_requests(2, SOON).await;
    assert_eq!(slugs(&got), ["alpha", "beta"]);
}

#[actix_web::test]
async fn a_receiver_answering_500_gets_the_message_again_and_nothing_after_its_2xx() {
    let hook = Receiver::start(&[Answer::Status(500)]).await;
    let app = alerting(&[&hook], 1).await;
    let _a = app.join("alpha").await;
    let got = hook.await_requests(2, RETRY_AFTER[0] + SOON).await;
    assert_eq!(slugs(&got), ["alpha", "alpha"]);
    assert_eq!(got[0].body, got[1].body, "the same message");
    assert_eq!(got[1].answer, Answer::Ok);
    // The next message to arrive is another post's, not alpha's a third time.
    let _b = app.join("beta").await;
    let got = hook.await_requests(3, SOON).await;
    assert_eq!(slugs(&got), ["alpha", "alpha", "beta"]);
}

#[actix_web::test]
async fn a_hanging_receiver_is_given_up_on_after_5_s_retried_and_counting_goes_on_meanwhile() {
    let hook = Receiver::start(&[Answer::Hang]).await;
    let app = alerting(&[&hook], 3).await;
    let mut readers = Vec::new();
    for _ in 0..3 {
        readers.push(app.join("alpha").await);
    }
    let first = hook.await_requests(1, SOON).await;

    // While the receiver holds the alert's request, readers come and are counted as ever
    // (fewer than 3 on gamma: no alert of their own).
    let started = Instant::now();
    for _ in 0..2 {
        readers.push(app.join("gamma").await);
    }
    app.await_counts("gamma", Counts { live: 2, total: 2 }, SOON)
        .await;
    let counting = started.elapsed();
    assert!(counting < ATTEMPT_TIMEOUT, "counting waited {counting:?}");
    assert_eq!(hook.received().len(), 1, "still the one hanging request");

    let got = hook
        .await_requests(2, ATTEMPT_TIMEOUT + RETRY_AFTER[0] + SOON)
        .await;
    let gap = got[1].at - first[0].at;
    assert!(gap >= ATTEMPT_TIMEOUT, "retried after {gap:?}");
    assert_eq!(got[1].body, got[0].body);
    assert_eq!(got[1].answer, Answer::Ok);
}

#[actix_web::test]
async fn an_https_webhook_gets_the_message_verified_against_the_systems_roots() {
    let certs = tempfile::tempdir().expect("temp dir");
    let hook = Receiver::start_https(&[], certs.path()).await;
    let ca = certs.path().join("ca.crt");
    // rustls-native-certs reads SSL_CERT_FILE as the system's roots.
    let dir = tempfile::tempdir().expect("temp dir");
    write_slugs(&dir.path().join("slugs.txt"), DEFAULT_SLUGS);
    let server = BinServer::start_with_env(
        dir,
        &["serve"],
        &["--alert-url", &hook.url, "--alert-live", "1"],
        &[("SSL_CERT_FILE", ca.to_str().expect("a UTF-8 path"))],
    )
    .await;
    let _reader = server.join("alpha").await;
    let got = hook.await_requests(1, SOON).await;
    assert_eq!(got[0].body["slug"], "alpha");
    assert_eq!(got[0].content_type.as_deref(), Some("application/json"));
}
