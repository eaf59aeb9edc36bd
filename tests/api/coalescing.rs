//! Coalesced broadcasts: a reader gets the newest state, a few events per second at most,
//! and every change within 500 ms; a quiet post tells its readers at once.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use futures_util::future::join_all;

use testkit::*;

const EXISTING: u64 = 3;
const BURST: u64 = 200;

#[actix_web::test]
async fn a_burst_of_200_joins_reaches_each_existing_reader_as_a_handful_of_events_ending_on_the_exact_numbers()
 {
    let app = spawn_app_configured(|c| {
        c.limits.ip_streams = 0;
        c.limits.ip_views_per_minute = 0;
    })
    .await;
    let mut existing = Vec::new();
    for _ in 0..EXISTING {
        existing.push(app.join("alpha").await);
    }
    for r in &mut existing {
        r.stream
            .await_counts(counts(EXISTING, EXISTING), PROPAGATION)
            .await;
    }

    let started = Instant::now();
    let joined = join_all((0..BURST).map(|_| app.join("alpha"))).await;
    let burst = started.elapsed();

    // Each join was counted once, in some order: first numbers EXISTING+1 ..= EXISTING+BURST.
    let firsts: BTreeSet<u64> = joined
        .iter()
        .map(|r| {
            assert_eq!(r.first.live, r.first.total, "nobody left: {:?}", r.first);
            r.first.total
        })
        .collect();
    assert_eq!(
        firsts,
        (EXISTING + 1..=EXISTING + BURST).collect::<BTreeSet<_>>()
    );

    let want = counts(EXISTING + BURST, EXISTING + BURST);
    // At most one broadcast per 250 ms while the burst lasted, plus the one after it.
    let bound = (burst.as_millis() / 250) as usize + 2;
    for (i, r) in existing.iter_mut().enumerate() {
        let seen = r.stream.await_counts(want, PROPAGATION).await;
        assert!(
            seen.len() <= 15 && seen.len() <= bound,
            "reader {i} got {} events for a burst of {burst:?}: {seen:?}",
            seen.len()
        );
        for pair in seen.windows(2) {
            assert!(
                pair[0].total <= pair[1].total,
                "never an older state after a newer one: {seen:?}"
            );
        }
    }

    // And it stays there: nothing else arrives.
    for r in &mut existing {
        let after = r.stream.events_within(Duration::from_millis(600)).await;
        assert!(
            after.iter().filter_map(SseEvent::counts).all(|c| c == want),
            "after the final numbers: {after:?}"
        );
    }
    assert_eq!(app.counts("alpha").await, want);
}

#[actix_web::test]
async fn a_change_on_a_quiet_post_is_sent_at_once() {
    let app = spawn_app().await;
    let mut watcher = app.join("alpha").await;
    // Let the post be quiet for longer than the broadcast interval.
    assert!(
        watcher
            .stream
            .events_within(Duration::from_millis(300))
            .await
            .is_empty()
    );

    let started = Instant::now();
    let _reader = app.join("alpha").await;
    watcher.stream.await_counts(counts(2, 2), PROPAGATION).await;

    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_millis(150),
        "a change on a quiet post took {elapsed:?}"
    );
}

#[actix_web::test]
async fn a_departure_right_after_a_join_reaches_readers_as_the_newest_state() {
    let app = spawn_app().await;
    let mut watcher = app.join("alpha").await;

    let reader = app.join("alpha").await;
    reader.stream.reset();

    // The join went out at once; the departure falls inside the interval and follows it.
    let seen = watcher.stream.await_counts(counts(1, 2), LIVE_DROP).await;
    assert!(seen.len() <= 2, "{seen:?}");
}
