//! What presence tells the owner, for the whole cluster: the pulse and the whole site (`*`)
//! sum every node's readers, and a post taking off alerts once, from one node.

use std::time::Duration;

use crate::support::*;
use testkit::*;

/// The site's newest minute on `node`'s pulse.
async fn pulse_now(node: &Node) -> u64 {
    let res = node.server.send(Req::get("/api/v1/pulse?minutes=1")).await;
    assert_eq!(res.status, 200, "{}: {res:?}", node.name);
    res.json()["minutes"][0]["live"].as_u64().expect("live")
}

#[actix_web::test]
async fn the_pulse_and_the_whole_site_count_the_readers_of_every_node() {
    let _serial = one_at_a_time().await;
    let Some(redis) = Redis::start().await else {
        return;
    };
    let nodes = Node::start_many(&redis, &["a", "b"], &[]).await;
    let _on_a = nodes[0].join().await;
    let _on_b = nodes[1].server.join("beta").await;
    let _also_b = nodes[1].server.join("beta").await;
    await_value("the site's readers on a's pulse", 3, SETTLE, || {
        pulse_now(&nodes[0])
    })
    .await;

    let watch = Req::get("/api/v1/watch?slug=*").header("Accept", "text/event-stream");
    let mut site = SseClient::open(nodes[0].addr(), watch).await;
    assert_eq!(site.status, 200);
    loop {
        let ev = site.next_event().await;
        if ev.data.is_some() && tagged(&ev) == t("*", 3, 3) {
            break;
        }
    }
}

#[actix_web::test]
async fn a_post_reaching_n_readers_across_nodes_alerts_once_from_one_node() {
    let _serial = one_at_a_time().await;
    let Some(redis) = Redis::start().await else {
        return;
    };
    let hook = Receiver::start(&[]).await;
    let flags = ["--alert-url", hook.url.as_str(), "--alert-live", "2"];
    let nodes = Node::start_many(&redis, &["a", "b"], &flags).await;
    // One reader on each node: both see 2 over the cluster, and both would alert.
    let _on_a = nodes[0].join().await;
    let _on_b = nodes[1].join().await;
    for node in &nodes {
        await_value("alpha's live over the cluster", 2, SETTLE, || async {
            node.counts().await.live
        })
        .await;
    }
    // Another post taking off afterwards: its alert is the next to arrive, not alpha's again.
    let _beta_a = nodes[0].server.join("beta").await;
    let _beta_b = nodes[0].server.join("beta").await;
    let got = hook.await_requests(2, Duration::from_secs(5)).await;
    let slugs: Vec<&str> = got
        .iter()
        .map(|r| r.body["slug"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(slugs, ["alpha", "beta"]);
}
