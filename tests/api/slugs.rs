//! Which posts exist: malformed slugs (400), unknown slugs (404), the allow-list file and its
//! reloads, and `--allow-any-slug --max-slugs`. Refusals never count or create anything.

use std::time::{Duration, Instant};

use testkit::*;

/// `--allow-any-slug --max-slugs {max}` (and the default `--ip-new-post-rate 10`).
fn any_slug(max: u64) -> Posts {
    Posts::Any {
        max,
        new_per_hour: 10,
    }
}

/// Every kind of malformed slug in the contract, as it appears in the request target.
fn malformed() -> Vec<(String, &'static str)> {
    let cases: &[(&str, &str)] = &[
        ("", "empty"),
        ("a%20b", "percent-encoded space"),
        ("a+b", "plus"),
        ("hello!", "exclamation mark"),
        ("a@b", "at sign"),
        ("a~b", "tilde"),
        ("a:b", "colon"),
        ("a%00b", "NUL"),
        ("a%0Ab", "newline"),
        ("a%2Fb", "percent-encoded slash"),
        ("a%2fb", "percent-encoded slash, lower case"),
        ("%C3%A9t%C3%A9", "percent-encoded unicode"),
        ("/a", "leading slash"),
        ("a/", "trailing slash"),
        ("a//b", "double slash"),
        (".", "dot segment"),
        ("..", "dot-dot segment"),
        ("./a", "leading dot segment"),
        ("a/./b", "inner dot segment"),
        ("a/../b", "inner dot-dot segment"),
        ("a/..", "trailing dot-dot segment"),
        ("%2E%2E", "percent-encoded dot-dot"),
    ];
    let mut all: Vec<(String, &'static str)> =
        cases.iter().map(|&(s, why)| (s.to_owned(), why)).collect();
    all.push(("x".repeat(201), "201 bytes"));
    all.push((
        format!("{}/{}", "a".repeat(100), "b".repeat(100)),
        "201 bytes with a slash",
    ));
    all
}

/// The three slug endpoints, as a page would call them.
fn requests(slug: &str) -> [Req; 3] {
    [
        Req::connect(slug, &token()),
        Req::get(format!("/api/v1/count/{slug}")),
        Req::post(format!("/api/v1/leave/{slug}"), token()),
    ]
}

#[actix_web::test]
async fn every_kind_of_malformed_slug_is_refused_with_400_json_and_creates_nothing() {
    let app = spawn_app().await;

    for (slug, why) in malformed() {
        for req in requests(&slug) {
            let res = app.send(req.clone()).await;
            assert!(
                res.status == 400
                    && res
                        .header("content-type")
                        .is_some_and(|c| c.starts_with("application/json")),
                "{why} {slug:?} {req:?}: {res:?}"
            );
            let message = res.assert_json_error(400);
            assert!(message.contains("slug"), "{why}: {message:?}");
        }
    }

    assert_eq!(app.totals().await, rows(&[]));
    assert_eq!(app.posts_awake().await, 0, "no actor was started");
    assert_eq!(app.counts("alpha").await, counts(0, 0));
}

#[actix_web::test]
async fn a_slug_of_raw_unicode_bytes_is_refused_with_400_and_creates_nothing() {
    // Browsers percent-encode non-ASCII paths (covered above); raw bytes in the request
    // line are refused by the HTTP parser itself, before the app (so no JSON body).
    let app = spawn_app().await;

    for req in requests("caf\u{e9}") {
        let res = app.send(req.clone()).await;
        assert_eq!(res.status, 400, "{req:?}: {res:?}");
    }

    assert_eq!(app.totals().await, rows(&[]));
}

#[actix_web::test]
async fn an_unknown_slug_is_refused_with_404_json_and_creates_nothing() {
    let app = spawn_app().await;
    let unlisted_max = "z".repeat(200);

    for slug in [
        "delta",
        "Alpha",
        "alpha/more",
        "2024/05/other.html",
        &unlisted_max,
    ] {
        for req in requests(slug) {
            let res = app.send(req.clone()).await;
            res.assert_json_error(404);
        }
    }

    assert_eq!(app.totals().await, rows(&[]));
    assert_eq!(app.posts_awake().await, 0, "no actor was started");
}

#[actix_web::test]
async fn slugs_of_one_and_of_200_bytes_with_dots_and_slashes_are_served() {
    let longest = format!("{}/{}.html", "y".repeat(100), "z".repeat(94));
    assert_eq!(longest.len(), 200);
    let app = spawn_app_configured_with_slugs(&["a", "x_y-z.v2/a.b", &longest], |_| {}).await;

    for slug in ["a", "x_y-z.v2/a.b", &longest] {
        let r = app.join(slug).await;
        assert_eq!(r.first, counts(1, 1), "{slug}");
    }

    let mut want = vec![
        ("a".to_owned(), 1),
        ("x_y-z.v2/a.b".to_owned(), 1),
        (longest, 1),
    ];
    want.sort();
    assert_eq!(app.totals().await, want);
}

#[actix_web::test]
async fn a_change_to_the_allow_list_file_is_picked_up_without_a_restart() {
    let app = spawn_app().await;
    app.send(Req::get("/api/v1/count/delta"))
        .await
        .assert_json_error(404);

    std::fs::write(
        app.slugs_file(),
        "# edited while running\nbeta\n\n  delta   # new post\ngamma\n",
    )
    .unwrap();

    // The server looks at the file on its own; poll with a deadline.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let res = app.send(Req::get("/api/v1/count/delta")).await;
        if res.status == 200 {
            break;
        }
        res.assert_json_error(404);
        assert!(Instant::now() < deadline, "new allow-list not picked up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = app.join("delta").await;
    assert_eq!(r.first, counts(1, 1));
    // The same reload dropped alpha.
    app.send(Req::connect("alpha", &token()))
        .await
        .assert_json_error(404);
    assert_eq!(app.totals().await, rows(&[("delta", 1)]));
}

#[actix_web::test]
async fn sighup_reloads_the_allow_list_even_when_the_file_looks_unchanged() {
    let server = BinServer::start(&[]).await;
    assert_eq!(server.counts("gamma").await, counts(0, 0));
    server
        .send(Req::get("/api/v1/count/delta"))
        .await
        .assert_json_error(404);

    // Same size and same modification time, swapped in atomically: only SIGHUP can tell.
    let path = server.slugs_file();
    let before = std::fs::read_to_string(&path).unwrap();
    let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
    let after = before.replace("gamma", "delta");
    assert_eq!(before.len(), after.len());
    let staged = path.with_extension("staged");
    std::fs::write(&staged, &after).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&staged)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    std::fs::rename(&staged, &path).unwrap();
    assert_eq!(
        server.send(Req::get("/api/v1/count/delta")).await.status,
        404,
        "premise: the change is invisible to the file watcher"
    );

    server.signal("HUP");

    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let res = server.send(Req::get("/api/v1/count/delta")).await;
        if res.status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "SIGHUP did not reload: {res:?}\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server
        .send(Req::get("/api/v1/count/gamma"))
        .await
        .assert_json_error(404);
    assert!(server.child.id().is_some(), "the server survives SIGHUP");
}

#[actix_web::test]
async fn with_allow_any_slug_and_max_slugs_2_a_third_new_post_is_404() {
    let app = spawn_app_configured(|c| c.posts = any_slug(2)).await;

    let one = app.join("one").await;
    let two = app.join("blog/two.html").await;
    assert_eq!((one.first, two.first), (counts(1, 1), counts(1, 1)));
    app.send(Req::connect("three", &token()))
        .await
        .assert_json_error(404);

    // Posts that exist keep counting.
    let again = app.join("one").await;
    assert_eq!(again.first, counts(2, 2));
    assert_eq!(
        app.totals().await,
        rows(&[("blog/two.html", 1), ("one", 2)])
    );
    // Still malformed is malformed.
    app.send(Req::connect("a//b", &token()))
        .await
        .assert_json_error(400);
}

#[actix_web::test]
async fn with_allow_any_slug_the_cap_survives_a_restart() {
    let app = spawn_app_configured(|c| c.posts = any_slug(2)).await;
    let one = app.join("one").await;
    let two = app.join("two").await;
    drop((one, two));
    let dir = app.stop_and_keep_dir().await;

    let app = spawn_app_configured_in(dir, |c| c.posts = any_slug(2)).await;

    app.send(Req::connect("three", &token()))
        .await
        .assert_json_error(404);
    assert_eq!(app.join("two").await.first, counts(1, 2));
}

#[actix_web::test]
async fn refused_and_counted_nothing_requests_do_not_use_up_the_max_slugs_cap() {
    let app = spawn_app_configured(|c| c.posts = any_slug(1)).await;

    for (slug, _) in malformed() {
        for req in requests(&slug) {
            assert_eq!(app.send(req).await.status, 400);
        }
    }
    for n in 0..20 {
        let res = app
            .send(Req::get(format!("/api/v1/count/unseen-{n}")))
            .await;
        assert_eq!(res.status, 200, "{res:?}");
        assert_eq!(res.json_as::<Counts>(), counts(0, 0));
        let res = app
            .send(Req::post(format!("/api/v1/leave/unseen-{n}"), token()))
            .await;
        assert_eq!(res.status, 204, "{res:?}");
    }

    let r = app.join("the-only-post").await;
    assert_eq!(r.first, counts(1, 1));
    assert_eq!(app.totals().await, rows(&[("the-only-post", 1)]));
}

/// A new post admitted under `--max-slugs` whose stream counted no view (a bot, or the view
/// rate) gives its place back once its actor sleeps, so crawlers cannot fill the cap.
#[actix_web::test]
async fn a_post_only_a_bot_visited_gives_its_place_under_max_slugs_back() {
    let app = spawn_app_configured(|c| c.posts = any_slug(1)).await;
    let mut bot = app
        .open(Req::connect("crawled-only", &token()).header("User-Agent", BOT_UA))
        .await;
    assert_eq!(bot.status, 200);
    assert_eq!(bot.next_event().await.counts(), Some(counts(0, 0)));
    bot.reset();
    assert_eq!(app.totals().await, rows(&[]), "the bot created no row");

    // The bot's post sleeps after its idle grace (5 s); then its place must be free again.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut attempt = app.open(Req::connect("a-real-post", &token())).await;
        if attempt.status == 200 {
            assert_eq!(attempt.next_event().await.counts(), Some(counts(1, 1)));
            break;
        }
        let res = attempt.into_response().await;
        res.assert_json_error(404);
        assert!(
            Instant::now() < deadline,
            "a post without a view still holds the only place under --max-slugs 1"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
