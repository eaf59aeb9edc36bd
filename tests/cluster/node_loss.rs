//! A node lost: its readers leave everyone's live (SIGTERM: within 1 s, since it deletes its
//! presence before it exits; kill -9: within 5 s, when its presence key expires), and when they
//! reconnect to another node they are not counted again.

use std::time::{Duration, Instant};

use crate::support::*;
use testkit::*;

/// Readers on the node that is lost, and on each of the two that stay.
const ON_LOST: u64 = 3;
const ON_EACH_OTHER: u64 = 1;

#[derive(Clone, Copy, Debug)]
enum Loss {
    Sigterm,
    Kill9,
}

impl std::fmt::Display for Loss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Loss::Sigterm => "SIGTERM",
            Loss::Kill9 => "kill -9",
        })
    }
}

#[actix_web::test]
async fn a_node_stopped_by_sigterm_leaves_everyones_live_within_a_second_and_its_readers_are_not_counted_again()
 {
    node_lost(Loss::Sigterm, PRESENCE).await;
}

#[actix_web::test]
async fn a_node_killed_with_sigkill_leaves_everyones_live_within_five_seconds_and_its_readers_are_not_counted_again()
 {
    node_lost(Loss::Kill9, NODE_EXPIRY).await;
}

async fn node_lost(how: Loss, bound: Duration) {
    let _serial = one_at_a_time().await;
    let Some(redis) = Redis::start().await else {
        return;
    };
    let mut nodes = Node::start_many(&redis, &["a", "b", "c"], &[]).await;
    let mut staying = vec![nodes[0].join().await, nodes[1].join().await];
    let mut lost_readers = Vec::new();
    for _ in 0..ON_LOST {
        lost_readers.push(nodes[2].join().await);
    }
    let all = ON_LOST + 2 * ON_EACH_OTHER;
    all_see(&mut staying, counts(all, all), Instant::now(), SETTLE).await;
    all_see(&mut lost_readers, counts(all, all), Instant::now(), SETTLE).await;

    let mut lost = nodes.pop().expect("node c");
    let gone = Instant::now();
    match how {
        Loss::Sigterm => lost.server.signal("TERM"),
        Loss::Kill9 => lost.server.child.start_kill().expect("SIGKILL"),
    }
    let took = all_see(&mut staying, counts(2 * ON_EACH_OTHER, all), gone, SETTLE).await;
    figure(
        &format!("{how} of a node: its readers gone from live on the others"),
        took,
    );
    assert!(
        took <= bound,
        "after {how} of a node its readers left live on the others in {took:?} (contract: {bound:?})"
    );
    let exit = lost.server.wait(STOP_TIMEOUT).await;
    if let Loss::Sigterm = how {
        assert!(exit.success(), "a SIGTERM is a clean exit: {exit:?}");
    }

    // Its readers come back, as their EventSources do, on the nodes still there.
    let mut back = Vec::new();
    for (n, reader) in lost_readers.into_iter().enumerate() {
        let to = &nodes[n % nodes.len()];
        let again = join(to.addr(), SLUG, reconnect(&reader.id)).await;
        assert_eq!(
            again.first.total, all,
            "a reader of the lost node counted again on {}",
            to.name
        );
        back.push(again);
    }
    staying.append(&mut back);
    all_see(&mut staying, counts(all, all), Instant::now(), SETTLE).await;
    cluster_agrees(&nodes, &redis, counts(all, all), SETTLE).await;
}
