//! Numbers are bounded: a total or a day's views is at most 9,223,372,036,854,775,807
//! (`i64::MAX`, what Redis holds). An import row above it is refused naming its line, nothing
//! written; adding stops there, in a post's memory, the writer, the file and Redis alike, and
//! readers are shown exactly that number, never a wrapped one.

use std::path::Path;
use std::time::Duration;

use serde_json::json;

use testkit::*;
use viewcounter::cluster::keys::Group;

/// The largest count, written out: what every layer stops at.
const MAX: u64 = 9_223_372_036_854_775_807;

/// `POST /api/v1/import?{query}` as `viewcounter import` sends it.
fn import(query: &str, file: &str) -> Req {
    Req::post(format!("/api/v1/import?{query}"), file).header("X-Viewcounter-Import", "1")
}

/// `GET /api/v1/totals` as its raw body: the numbers as JSON writes them.
async fn raw_totals(addr: std::net::SocketAddr) -> String {
    let res = send(addr, Req::get("/api/v1/totals")).await;
    assert_eq!(res.status, 200, "{res:?}");
    res.text()
}

#[actix_web::test]
async fn an_import_row_above_the_largest_count_is_refused_naming_its_line_and_nothing_is_written() {
    let app = spawn_app().await;
    let res = app.send(import("mode=set", "slug,total\nalpha,5\n")).await;
    assert_eq!(res.status, 200, "{res:?}");

    let refused = [
        (
            "mode=set",
            "slug,total\nbeta,7\ngamma,9223372036854775808\n",
            "line 3",
        ),
        (
            "mode=add",
            "slug,total\nbeta,7\ngamma,18446744073709551615\n",
            "line 3",
        ),
        (
            "mode=add",
            r#"[{"slug":"beta","total":7},{"slug":"gamma","total":9223372036854775808}]"#,
            "element 2",
        ),
        // Each day fits; their sum, the post's total, does not: refused where it goes over.
        (
            "mode=set",
            "slug,day,views\nbeta,2026-12-01,7\nbeta,2026-12-02,9223372036854775801\n",
            "line 3",
        ),
    ];
    for (query, file, place) in refused {
        let res = app.send(import(query, file)).await;
        let message = res.assert_json_error(400);
        assert!(message.contains(place), "{file}: {message}");
        assert!(message.contains("9223372036854775807"), "{file}: {message}");
    }
    // The good row before the bad one was not applied either.
    assert_eq!(app.totals().await, rows(&[("alpha", 5)]));
    let daily = app.send(Req::get("/api/v1/daily")).await;
    assert_eq!(daily.json(), json!([]), "no day written: {daily:?}");
}

#[actix_web::test]
async fn import_add_past_the_largest_count_stops_there_and_readers_see_exactly_it() {
    let mut app = spawn_app().await;
    let mut first = app.join("alpha").await;
    assert_eq!(first.first, counts(1, 1));

    let res = app
        .send(import(
            "mode=add",
            "slug,total\nalpha,9223372036854775807\n",
        ))
        .await;
    assert_eq!(res.status, 200, "{res:?}");
    assert_eq!(res.json()["changed"], json!([["alpha", 1, MAX]]));
    first.stream.await_counts(counts(1, MAX), PROPAGATION).await;

    // One more view: counted, and the total stays where it is, for every reader.
    let second = app.join("alpha").await;
    assert_eq!(second.first, counts(2, MAX), "not 0, not 2^63");
    first.stream.await_counts(counts(2, MAX), PROPAGATION).await;
    assert_eq!(
        raw_totals(app.addr).await,
        r#"[{"slug":"alpha","total":9223372036854775807}]"#
    );

    // Adding more changes nothing; a number past the largest is refused outright.
    let res = app
        .send(import(
            "mode=add",
            "slug,total\nalpha,9223372036854775807\n",
        ))
        .await;
    assert_eq!(res.status, 200, "{res:?}");
    assert_eq!(
        (
            res.json()["changed"].clone(),
            res.json()["unchanged"].clone()
        ),
        (json!([]), json!(1))
    );
    let res = app
        .send(import(
            "mode=add",
            "slug,total\nalpha,18446744073709551615\n",
        ))
        .await;
    res.assert_json_error(400);
    assert_eq!(app.counts("alpha").await, counts(2, MAX));

    // What the file holds once the view is written.
    drop((first, second));
    app.stop().await.expect("graceful stop");
    let stored = viewcounter::storage::store::read_totals_offline(&app.db()).expect("read the db");
    assert_eq!(stored, rows(&[("alpha", MAX)]));
}

#[actix_web::test]
async fn the_offline_import_refuses_a_count_above_the_largest_and_adds_up_to_it_at_most() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("numbers.redb");
    let db = db.to_str().expect("a UTF-8 path");
    let file = dir.path().join("import.csv");
    let file = file.to_str().expect("a UTF-8 path");

    std::fs::write(file, "slug,total\nalpha,5\nbeta,9223372036854775808\n").expect("write");
    let RunOutput {
        status,
        stdout: _,
        stderr: err,
    } = run(dir.path(), &["import", "--db", db, file]).quiet().await;
    assert!(!status.success(), "refused");
    assert!(
        err.contains("line 3") && err.contains("9223372036854775807"),
        "{err}"
    );
    assert!(!Path::new(db).exists(), "nothing written, not even a file");

    // Three posts at the largest count: their sum does not fit a u64, and is no reason to fail.
    let at_max = "slug,total\nalpha,9223372036854775807\nbeta,9223372036854775807\ngamma,9223372036854775807\n";
    std::fs::write(file, at_max).expect("write");
    for _ in 0..2 {
        // `success` fails showing stderr: a panic (main's overflow in the summary) exits 101.
        let out = run(dir.path(), &["import", "--db", db, "--mode", "add", file])
            .quiet()
            .await
            .success();
        assert!(
            out.starts_with("import") && out.contains("posts changed"),
            "{out}"
        );
    }
    std::fs::write(file, "slug,total\nalpha,1\n").expect("write");
    let out = run(dir.path(), &["import", "--db", db, "--mode", "add", file])
        .quiet()
        .await
        .success();
    assert!(
        out.contains("0 posts changed") && out.contains("1 unchanged"),
        "{out}"
    );

    let out = run(dir.path(), &["export", "--db", db])
        .quiet()
        .await
        .success();
    assert_eq!(
        out,
        "slug,total\nalpha,9223372036854775807\nbeta,9223372036854775807\ngamma,9223372036854775807\n"
    );
}

// ---------------------------------------------------------------------------------------------
// Cluster mode: counts live in Redis, whose HINCRBY stops at the same number.

/// Today as the node's calendar has it (`YYYY-MM-DD`).
async fn today(app: &TestApp) -> String {
    let res = app.send(Req::get("/api/v1/history/alpha?days=1")).await;
    assert_eq!(res.status, 200, "{res:?}");
    res.json()["days"][0]["day"]
        .as_str()
        .expect("a day")
        .to_owned()
}

/// Every key Redis holds that matches `pattern`, with its string value.
/// The ops' decisions Redis keeps (2 bits an op in the `vc:{gN}:ops:…` chunks: 2 counted, 1 a
/// duplicate, 0 no op there), counted by value.
async fn decisions(redis: &Redis) -> [usize; 4] {
    let names: Vec<String> = redis.query(redis::cmd("KEYS").arg("vc:*:ops:*")).await;
    let mut seen = [0; 4];
    for name in names {
        let bits: Vec<u8> = redis.query(redis::cmd("GET").arg(&name)).await;
        for byte in bits {
            for shift in [6, 4, 2, 0] {
                seen[usize::from(byte >> shift & 3)] += 1;
            }
        }
    }
    seen
}

async fn hget(redis: &Redis, key: &str, field: &str) -> Option<String> {
    redis.query(redis::cmd("HGET").arg(key).arg(field)).await
}

#[actix_web::test]
async fn a_post_at_the_largest_count_in_redis_goes_on_counting_views_without_failing() {
    let Some(redis) = Redis::start().await else {
        return;
    };
    let a = redis.node("a").spawn(|_| {}).await;
    let b = redis.node("b").spawn(|_| {}).await;
    // The total and today's views both at the largest count.
    let today = today(&a).await;
    let file = format!("slug,day,views\nalpha,{today},9223372036854775807\n");
    let res = a.send(import("mode=set", &file)).await;
    assert_eq!(res.status, 200, "{res:?}");
    assert_eq!(redis.total("alpha").await, MAX);

    let reader = a.join("alpha").await;
    assert_eq!(
        reader.first,
        counts(1, MAX),
        "the stream opens with the numbers"
    );
    let elsewhere = b.join("alpha").await;
    assert_eq!(elsewhere.first.total, MAX);

    // Redis decided both views (none waits in an outbox) and stays up.
    assert_eq!(a.stats().await["redis"], "ok");
    assert_eq!(b.stats().await["redis"], "ok");
    assert_eq!(a.metric("viewcounter_outbox_pending").await, Some(0.0));
    assert_eq!(b.metric("viewcounter_outbox_pending").await, Some(0.0));
    assert_eq!(redis.total("alpha").await, MAX);
    let day = Group::of("alpha").day(today.replace('-', "").parse().expect("a day"));
    assert_eq!(
        hget(&redis, &day, "alpha").await.as_deref(),
        Some("9223372036854775807")
    );
    // Each view's op says it was counted: the script ran to its end both times.
    let decided = decisions(&redis).await;
    assert_eq!((decided[2], decided[1]), (2, 0), "{decided:?}");
    assert_eq!(a.totals().await, rows(&[("alpha", MAX)]));
}

#[actix_web::test]
async fn a_total_one_below_the_largest_count_reaches_it_exactly_on_every_node() {
    let Some(redis) = Redis::start().await else {
        return;
    };
    let a = redis.node("a").spawn(|_| {}).await;
    let b = redis.node("b").spawn(|_| {}).await;
    let res = a
        .send(import(
            "mode=set",
            "slug,total\nalpha,9223372036854775806\n",
        ))
        .await;
    assert_eq!(res.status, 200, "{res:?}");
    let mut on_b = b.join("alpha").await;
    assert_eq!(on_b.first, counts(1, MAX));
    let on_a = a.join("alpha").await;
    assert_eq!(on_a.first.total, MAX);
    on_b.stream
        .await_counts(counts(2, MAX), Duration::from_secs(1))
        .await;
    assert_eq!(redis.total("alpha").await, MAX);
    assert_eq!(a.stats().await["redis"], "ok");
}

#[actix_web::test]
async fn an_import_into_redis_saturates_or_writes_nothing_and_never_marks_redis_down() {
    let Some(redis) = Redis::start().await else {
        return;
    };
    let a = redis.node("a").spawn(|_| {}).await;
    let res = a
        .send(import(
            "mode=set",
            "slug,total\nalpha,5\nbeta,9223372036854775800\n",
        ))
        .await;
    assert_eq!(res.status, 200, "{res:?}");

    // The second row goes past the largest count: it stops there, the first is added.
    let res = a
        .send(import("mode=add", "slug,total\nalpha,3\nbeta,100\n"))
        .await;
    assert_eq!(res.status, 200, "{res:?}");
    assert_eq!(
        (redis.total("alpha").await, redis.total("beta").await),
        (8, MAX)
    );
    assert_eq!(a.stats().await["redis"], "ok");

    // A row above the largest count: refused, nothing applied; a retry is refused the same.
    for _ in 0..2 {
        let res = a
            .send(import(
                "mode=add",
                "slug,total\nalpha,3\nbeta,9223372036854775808\n",
            ))
            .await;
        let message = res.assert_json_error(400);
        assert!(message.contains("line 3"), "{message}");
        assert_eq!(
            (redis.total("alpha").await, redis.total("beta").await),
            (8, MAX)
        );
        assert_eq!(a.stats().await["redis"], "ok");
    }

    // Redis answering that a post's total is not a number is a refusal, not Redis gone.
    let _: () = redis
        .query(
            redis::cmd("HSET")
                .arg(Group::of("gamma").totals())
                .arg("gamma")
                .arg("lots"),
        )
        .await;
    let res = a
        .send(import("mode=add", "slug,total\nalpha,1\ngamma,1\n"))
        .await;
    assert_ne!(res.status, 200, "{res:?}");
    assert_eq!(redis.total("alpha").await, 8, "nothing applied");
    assert_eq!(a.stats().await["redis"], "ok");
    // And the node goes on answering from Redis.
    let res = a.send(import("mode=add", "slug,total\nalpha,1\n")).await;
    assert_eq!(res.status, 200, "{res:?}");
    assert_eq!(redis.total("alpha").await, 9);
}

/// `POST /api/v1/import/sessions{suffix}` as `viewcounter import` sends it.
fn session(suffix: &str, body: &str) -> Req {
    Req::import(format!("/api/v1/import/sessions{suffix}"), body)
}

/// Opens an import session on `app` adding its numbers: `/{id}`.
async fn open_session(app: &TestApp) -> String {
    let res = app.send(session("?mode=add", "")).await;
    assert_eq!(res.status, 201, "{res:?}");
    format!("/{}", res.json()["id"].as_str().expect("an id"))
}

#[actix_web::test]
async fn an_import_in_pieces_through_a_cluster_node_reaches_redis_all_at_its_commit_or_not_at_all()
{
    let Some(redis) = Redis::start().await else {
        return;
    };
    let a = redis.node("a").spawn(|_| {}).await;
    let id = open_session(&a).await;
    for piece in ["slug,total\nalpha,3\n", "slug,total\nbeta,4\n"] {
        let res = a.send(session(&id, piece)).await;
        assert_eq!(res.status, 200, "{res:?}");
    }
    assert_eq!(redis.total("alpha").await, 0, "nothing before the commit");
    let res = a.send(session(&format!("{id}/commit"), "")).await;
    assert_eq!(res.status, 200, "{res:?}");
    assert_eq!(
        (redis.total("alpha").await, redis.total("beta").await),
        (3, 4)
    );

    // Redis refusing the import script at the commit (a total that is not a count): none of
    // the pieces is applied.
    let _: () = redis
        .query(
            redis::cmd("HSET")
                .arg(Group::of("gamma").totals())
                .arg("gamma")
                .arg("lots"),
        )
        .await;
    let id = open_session(&a).await;
    for piece in ["slug,total\nalpha,1\n", "slug,total\ngamma,1\n"] {
        let res = a.send(session(&id, piece)).await;
        assert_eq!(res.status, 200, "{res:?}");
    }
    let res = a.send(session(&format!("{id}/commit"), "")).await;
    assert_ne!(res.status, 200, "{res:?}");
    assert_eq!(redis.total("alpha").await, 3, "nothing applied");
    assert_eq!(a.stats().await["redis"], "ok");
}
