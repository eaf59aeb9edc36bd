//! The binary's command line: `VIEWCOUNTER_*` variables, `serve` as the default, and clear
//! refusals (never a panic) of bad configurations and of files it cannot use.

use std::time::{Duration, Instant};

use testkit::*;

fn serve_args<'a>(db: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["serve", "--listen", "127.0.0.1:0", "--db", db];
    args.extend_from_slice(extra);
    args
}

#[actix_web::test]
async fn flags_can_be_given_as_viewcounter_environment_variables() {
    let dir = tempfile::tempdir().unwrap();
    write_slugs(&dir.path().join("slugs.txt"), DEFAULT_SLUGS);
    let server = BinServer::start_with_env(
        dir,
        &["serve"],
        &[],
        &[
            ("VIEWCOUNTER_ALLOW_ANY_SLUG", "true"),
            ("VIEWCOUNTER_MAX_SLUGS", "1"),
            ("VIEWCOUNTER_IP_STREAM_LIMIT", "1"),
            ("VIEWCOUNTER_ADMIN_TOKEN", "env-token-0123456789"),
            (
                "VIEWCOUNTER_ALLOW_ORIGIN",
                "https://a.example,https://b.example",
            ),
            ("VIEWCOUNTER_HEARTBEAT", "200ms"),
        ],
    )
    .await;

    // --allow-any-slug --max-slugs 1
    let mut first = join(
        server.addr,
        "not-on-any-list",
        Req::connect("not-on-any-list", &token())
            .client_ip(&ip(1))
            .origin("https://b.example"),
    )
    .await;
    assert_eq!(first.first, counts(1, 1));
    assert_eq!(
        first.stream.header("access-control-allow-origin"),
        Some("https://b.example"),
        "--allow-origin, comma separated"
    );
    server
        .send(Req::connect("a-second-post", &token()).client_ip(&ip(2)))
        .await
        .assert_json_error(404);
    // --ip-stream-limit 1
    server
        .send(Req::connect("not-on-any-list", &token()).client_ip(&ip(1)))
        .await
        .assert_json_error(429);
    // --admin-token
    server
        .send(Req::get("/api/v1/totals"))
        .await
        .assert_json_error(401);
    let totals = server
        .send(Req::get("/api/v1/totals").header("Authorization", "Bearer env-token-0123456789"))
        .await;
    assert_eq!(parse_rows(&totals.text()), rows(&[("not-on-any-list", 1)]));
    // --heartbeat 200ms
    let started = Instant::now();
    let beat = first.stream.next_event().await;
    assert!(beat.is_heartbeat(), "{beat:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[actix_web::test]
async fn serve_is_what_the_binary_does_without_a_subcommand() {
    let dir = tempfile::tempdir().unwrap();
    write_slugs(&dir.path().join("slugs.txt"), DEFAULT_SLUGS);

    let server = BinServer::start_with_env(dir, &[], &[], &[]).await;

    assert_eq!(server.join("alpha").await.first, counts(1, 1));
}

#[actix_web::test]
async fn an_invalid_configuration_is_refused_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("never.redb");
    let db_s = db.display().to_string();

    for (extra, mentions) in [
        (
            &["--flush-after", "5s", "--flush-max-wait", "1s"][..],
            "--flush-max-wait",
        ),
        (&["--allow-origin", "blog.example"][..], "--allow-origin"),
        (
            &["--allow-origin", "https://blog.example/path"][..],
            "--allow-origin",
        ),
        (&["--admin-token", ""][..], "--admin-token"),
        (&["--heartbeat", "soon"][..], "--heartbeat"),
        (&["--ip-stream-limit", "-1"][..], "-1"),
    ] {
        let out = run(dir.path(), &serve_args(&db_s, extra)).await;
        assert!(
            matches!(out.status.code(), Some(1 | 2)),
            "{extra:?}: exit {:?}: {}",
            out.status,
            out.stderr
        );
        assert!(
            !out.stderr.contains("panicked"),
            "{extra:?}: {}",
            out.stderr
        );
        assert!(
            out.stderr.contains(mentions),
            "{extra:?}: names the problem: {}",
            out.stderr
        );
        assert!(
            !out.stdout.contains("listening"),
            "{extra:?}: {}",
            out.stdout
        );
    }
}

#[actix_web::test]
async fn an_admin_token_shorter_than_16_characters_stops_the_server_saying_how_to_make_one() {
    let dir = tempfile::tempdir().unwrap();
    write_slugs(&dir.path().join("slugs.txt"), DEFAULT_SLUGS);
    let db = dir.path().join("never.redb");
    let db_s = db.display().to_string();
    let slugs = dir.path().join("slugs.txt").display().to_string();

    let flag = run(
        dir.path(),
        &serve_args(
            &db_s,
            &["--slugs", &slugs, "--admin-token", "hunter2-hunter2"],
        ),
    )
    .await;
    let env = run(dir.path(), &serve_args(&db_s, &["--slugs", &slugs]))
        .env(&[("VIEWCOUNTER_ADMIN_TOKEN", "short")])
        .await;

    for out in [&flag, &env] {
        assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
        assert!(
            out.stderr.contains("--admin-token") && out.stderr.contains("openssl rand -hex 16"),
            "says how to make one: {}",
            out.stderr
        );
        assert!(
            !out.stderr.contains("hunter2"),
            "the token is not shown: {}",
            out.stderr
        );
        assert!(!out.stdout.contains("listening"), "{}", out.stdout);
    }
    assert!(!db.exists(), "refused before the db is created");
}

/// A typo in `--allow-origin` is refused before the redb file is created, so it leaves no
/// empty database (or directories) behind.
#[actix_web::test]
async fn a_refused_configuration_creates_no_database_file() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("data").join("never.redb");
    let db_s = db.display().to_string();

    for extra in [
        &["--flush-after", "5s", "--flush-max-wait", "1s"][..],
        &["--admin-token", ""][..],
        &["--allow-origin", "blog.example"][..],
    ] {
        let out = run(dir.path(), &serve_args(&db_s, extra)).await;
        assert_eq!(out.status.code(), Some(1), "{extra:?}: {}", out.stderr);
        assert!(!db.exists(), "refusing {extra:?} created {}", db.display());
    }
}

#[actix_web::test]
async fn a_second_server_on_a_held_db_is_refused_with_a_clear_message() {
    let server = BinServer::start(&[]).await;
    let _r = server.join("alpha").await;
    let db = server.db().display().to_string();

    let out = run(server.dir.path(), &serve_args(&db, &[])).await;

    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    assert!(
        out.stderr.contains("held by another process"),
        "{}",
        out.stderr
    );
    assert_eq!(
        server.counts("alpha").await,
        counts(1, 1),
        "first server unharmed"
    );
}

#[actix_web::test]
async fn a_file_that_is_not_a_viewcounter_database_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("notes.redb");
    let junk = b"my precious notes, not a database\n".repeat(100);
    std::fs::write(&db, &junk).unwrap();
    let db_s = db.display().to_string();

    let serve = run(dir.path(), &serve_args(&db_s, &[])).await;
    let exported = run(
        dir.path(),
        &[
            "export",
            "--db",
            &db_s,
            // Not --url, which would read no file: the server looked for at --listen.
            "--listen",
            &format!("127.0.0.1:{}", closed_port()),
        ],
    )
    .await;

    for out in [&serve, &exported] {
        assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
        assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
        assert!(out.stderr.contains("notes.redb"), "{}", out.stderr);
    }
    assert!(
        serve.stderr.contains("not a viewcounter database"),
        "{}",
        serve.stderr
    );
    assert_eq!(std::fs::read(&db).unwrap(), junk, "the file was changed");
}
