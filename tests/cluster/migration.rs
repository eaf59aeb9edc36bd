//! Moving a standalone server's totals into a cluster, as the README says:
//! `export --db old.redb --daily > days.csv`, `export --db old.redb > totals.csv`, then
//! `import --url http://NODE days.csv` and `import --url http://NODE totals.csv` (through a
//! node, whose record keeps them); after which every node counts on from them and
//! `export --redis` reads them back.

use crate::support::*;
use testkit::*;

/// The single node's history: two posts with totals, views on two days.
const DAILY: &str = "slug,day,views\nalpha,2026-11-02,70\nalpha,2026-11-03,50\nbeta,2026-11-03,7\n";

#[actix_web::test]
async fn totals_and_days_exported_from_a_redb_file_and_imported_through_a_node_are_where_every_node_counts_on()
 {
    let _serial = one_at_a_time().await;
    let Some(redis) = Redis::start().await else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("single.redb");
    let db = db.to_str().expect("utf-8 path");
    run(dir.path(), &["import", "--db", db, "-"])
        .stdin(DAILY)
        .quiet()
        .await
        .success();
    let totals = run(dir.path(), &["export", "--db", db])
        .quiet()
        .await
        .success();
    let daily = run(dir.path(), &["export", "--db", db, "--daily"])
        .quiet()
        .await
        .success();
    assert_eq!(
        totals, "slug,total\nalpha,120\nbeta,7\n",
        "the single node's export"
    );

    std::fs::write(dir.path().join("days.csv"), &daily).expect("write days.csv");
    std::fs::write(dir.path().join("totals.csv"), &totals).expect("write totals.csv");
    let url = redis.url();
    let nodes = Node::start_many(&redis, &["a", "b"], &[]).await;
    let node_url = format!("http://{}", nodes[0].addr());
    for file in ["days.csv", "totals.csv"] {
        run(dir.path(), &["import", "--url", &node_url, file])
            .quiet()
            .await
            .success();
    }
    assert_eq!(redis.total("alpha").await, 120);
    assert_eq!(redis.day_views("alpha").await, 120);
    assert_eq!(
        run(dir.path(), &["export", "--redis", &url])
            .quiet()
            .await
            .success(),
        totals
    );
    assert_eq!(
        run(dir.path(), &["export", "--redis", &url, "--daily"])
            .quiet()
            .await
            .success(),
        daily
    );

    assert_eq!(nodes[1].server.counts("beta").await, counts(0, 7));
    let reader = nodes[0].join().await;
    assert_eq!(
        reader.first.total, 121,
        "the cluster counts on from the imported total"
    );
    for node in &nodes {
        let what = format!("alpha on node {}", node.name);
        time_until(&what, SETTLE, || node.counts(), |c| c.total == 121).await;
    }
    let after = run(dir.path(), &["export", "--redis", &url])
        .quiet()
        .await
        .success();
    assert_eq!(after, "slug,total\nalpha,121\nbeta,7\n");
}
