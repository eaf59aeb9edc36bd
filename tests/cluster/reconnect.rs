//! Dedupe is the cluster's: a reader id counted on one node is not counted again on another
//! within the dedupe window, whether it comes back as `Last-Event-ID` or as `?view=`.

use std::time::Instant;

use crate::support::*;
use testkit::*;

#[actix_web::test]
async fn a_reader_counted_on_a_that_reconnects_to_b_within_the_dedupe_window_is_not_counted() {
    let _serial = one_at_a_time().await;
    let Some(redis) = Redis::start().await else {
        return;
    };
    let nodes = Node::start_many(&redis, &["a", "b", "c"], &[]).await;
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);

    let first = a.join().await;
    assert_eq!(first.first, counts(1, 1));
    let id = first.id.clone();
    first.stream.close();

    // An EventSource's automatic reconnect: no `?view=`, the id as `Last-Event-ID`.
    let by_header = Req::get(format!("/api/v1/connect/{SLUG}"))
        .header("Accept", "text/event-stream")
        .header("Last-Event-ID", &id);
    let again = join(b.addr(), SLUG, by_header).await;
    assert_eq!(again.id, id, "the reconnect keeps its reader id");
    assert_eq!(again.first.total, 1, "a reconnect to b is not a new view");

    // The script reopening its stream on another node: the same `?view=`.
    let by_query = join(c.addr(), SLUG, Req::connect(SLUG, &id)).await;
    assert_eq!(
        by_query.first.total, 1,
        "the same page view on c is not a new view"
    );

    // The control: b and c do count a reader id they have not seen anywhere.
    let fresh = b.join().await;
    assert_eq!(fresh.first.total, 2, "a fresh reader id on b is counted");

    let mut open = vec![again, by_query, fresh];
    all_see(&mut open, counts(3, 2), Instant::now(), SETTLE).await;
    cluster_agrees(&nodes, &redis, counts(3, 2), SETTLE).await;
}
